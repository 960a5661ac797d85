"""hpo: hyperparameter optimisation for image classification on Optuna, timm and PyTorch.

The Python API behind the ``hpo`` command::

    from hpo import load_spec, run_study
    result = run_study(load_spec("digits"))
    print(result.study.best_value)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo.config import StudySpec, load_spec, trial_config
    from hpo.errors import ConfigError, DataError, HpoError, StorageError
    from hpo.run import RunResult, run_study
    from hpo.train.config import TrainConfig

__all__ = ["ConfigError", "DataError", "HpoError", "RunResult", "StorageError", "StudySpec", "TrainConfig",
           "load_spec", "run_study", "trial_config"]
# Each name imported from its module on first use (PEP 562): `hpo --help` then answers without
# importing torch, timm and albumentations, which take seconds.
_HOMES = {
    "StudySpec": "hpo.config", "load_spec": "hpo.config", "trial_config": "hpo.config",
    "ConfigError": "hpo.errors", "DataError": "hpo.errors", "HpoError": "hpo.errors", "StorageError": "hpo.errors",
    "RunResult": "hpo.run", "run_study": "hpo.run",
    "TrainConfig": "hpo.train.config",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'hpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
