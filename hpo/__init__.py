"""hpo: hyperparameter optimisation for image classification on Optuna, timm and PyTorch.

The Python API behind the ``hpo`` command::

    from hpo import load_spec, run_study
    result = run_study(load_spec("digits"))
    print(result.study.best_value)
"""

from hpo.config import StudySpec, load_spec
from hpo.errors import ConfigError, DataError, HpoError, StorageError
from hpo.run import RunResult, run_study
from hpo.space import trial_config
from hpo.train.config import TrainConfig

__all__ = [
    "ConfigError",
    "DataError",
    "HpoError",
    "RunResult",
    "StorageError",
    "StudySpec",
    "TrainConfig",
    "load_spec",
    "run_study",
    "trial_config",
]
