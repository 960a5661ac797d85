"""Environment knobs read as numbers, checked where they are read and before a study starts."""

from __future__ import annotations

import os

from hpo.errors import ConfigError


def env_int(name: str, minimum: int) -> int | None:
    """A whole-number environment knob (unset or empty: None)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigError(f"{name}={value!r}: expected a whole number >= {minimum}; fix it or unset it")
    return number


def limit_threads() -> None:
    """``HPO_THREADS`` caps this process's torch CPU threads: `hpo run --workers N` sets it per
    worker; set it by hand where other jobs share the cores."""
    if threads := env_int("HPO_THREADS", 1):
        import torch

        torch.set_num_threads(threads)
