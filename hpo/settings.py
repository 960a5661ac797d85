"""Every environment variable hpo reads, as one typed, checked :class:`Settings` object.

The only module that reads ``os.environ``. The command line calls :func:`load_env` first thing,
so a ``.env`` file in the current folder is in the environment before any library reads its own
variables (huggingface_hub's ``HF_HOME``, ``HF_HUB_OFFLINE``) and before any of hpo's are read.
Real environment variables win over the file.

:func:`settings` parses the environment when called (a handful of variables): a benchmark or a
test that changes a variable between two trials is seen at once. A bad value is a ConfigError
naming the variable, raised by :func:`check` before a study starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpo.errors import ConfigError

STORAGE, ARTIFACTS, CACHE = "HPO_STORAGE", "HPO_ARTIFACTS", "HPO_CACHE"
THREADS, LOADER_WORKERS, COMPILE_BACKEND = "HPO_THREADS", "HPO_LOADER_WORKERS", "HPO_COMPILE_BACKEND"
SUPERVISOR = "HPO_SUPERVISOR_PID"  # set by `hpo run` for the worker processes it starts
CUDA_DEVICES = "CUDA_VISIBLE_DEVICES"
MLFLOW_URI, WANDB_MODE = "MLFLOW_TRACKING_URI", "WANDB_MODE"  # the trackers' own, read for their defaults
CACHE_OFF = frozenset({"off", "none", "0", "false", "no"})
DEFAULT_CACHE = "~/.cache/hpo"


@dataclass(frozen=True)
class Settings:
    storage: str | None = None           # HPO_STORAGE: the study's storage URL
    artifacts: str | None = None         # HPO_ARTIFACTS: the artifact store (a folder or s3://bucket)
    cache: Path | None = Path(DEFAULT_CACHE).expanduser()  # HPO_CACHE: decoded images; None: off
    threads: int | None = None           # HPO_THREADS: torch CPU threads of this process
    loader_workers: int | None = None    # HPO_LOADER_WORKERS: DataLoader worker processes
    compile_backend: str = "inductor"    # HPO_COMPILE_BACKEND: torch.compile's backend
    supervisor_pid: int | None = None    # HPO_SUPERVISOR_PID: the `hpo run` that started this worker
    cuda_visible_devices: str | None = None
    mlflow_tracking_uri: str | None = None  # MLFLOW_TRACKING_URI: tracking.mlflow's server when the study file names none
    wandb_mode: str | None = None           # WANDB_MODE: tracking.wandb's mode when the study file names none

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        def text(name: str) -> str | None:
            return environ.get(name, "").strip() or None

        cache = text(CACHE)
        return cls(
            storage=text(STORAGE),
            artifacts=text(ARTIFACTS),
            cache=None if cache and cache.lower() in CACHE_OFF else Path(cache or DEFAULT_CACHE).expanduser(),
            threads=_whole(environ, THREADS, 1),
            loader_workers=_whole(environ, LOADER_WORKERS, 0),
            compile_backend=text(COMPILE_BACKEND) or "inductor",
            supervisor_pid=_whole(environ, SUPERVISOR, 1),
            cuda_visible_devices=environ.get(CUDA_DEVICES),
            mlflow_tracking_uri=text(MLFLOW_URI),
            wandb_mode=text(WANDB_MODE),
        )


def _whole(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
    """A whole-number variable (unset or empty: None)."""
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigError(f"{name}={value!r}: expected a whole number >= {minimum}; fix it or unset it")
    return number


def settings() -> Settings:
    """The settings as the environment holds them now."""
    return Settings.from_environ(os.environ)


def check() -> Settings:
    """Every variable parsed once, so a bad one fails before anything starts."""
    return settings()


def load_env(folder: Path | None = None) -> None:
    """Put ``./.env`` into the environment, under the variables already set."""
    from dotenv import load_dotenv

    load_dotenv((folder or Path.cwd()) / ".env", override=False)


def child_environment(**changes: str) -> dict[str, str]:
    """This process's environment with ``changes``, for a process it starts."""
    return {**os.environ, **changes}
