"""The ``hpo`` command: a thin layer over the Python API; HpoErrors become one line and exit 2.

Each module registers its commands on :data:`hpo.cli.app.app`, in the order ``hpo --help`` lists them.
"""

from __future__ import annotations

import importlib
import sys

from hpo.cli.app import app

# Imported in the order `hpo --help` lists their commands: the search, what it found, the checks.
for _module in ("search", "results", "checks"):
    importlib.import_module(f"hpo.cli.{_module}")

__all__ = ["app", "main"]


def main() -> None:
    from hpo.settings import load_env

    load_env()  # first: libraries read their own variables (HF_HOME...) as they are imported
    # Quieter Optuna: hpo prints its own per-trial lines.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sys.exit(app())
