"""The study file: read once, validated once, into a frozen :class:`StudySpec`; and the one
function that turns a trial into a training config (:func:`trial_config`).

This is the only package that reads YAML. Every error is a :class:`ConfigError` naming the key.
Validation runs in two passes: the file's shape (keys, types, ranges) first, with nothing heavier
than pydantic imported, so that a typo is reported at once; then every name against its registry
(data formats, backbones, losses...), which imports them.
"""

from hpo.config.files import (
    STUDIES_DIR,
    apply_override,
    find_study_file,
    load_params_file,
    load_spec,
    load_spec_or_stored,
    parse_spec,
    read_yaml,
)
from hpo.config.sections import (
    COMPILE_MODES,
    NORMALIZATIONS,
    BudgetSpec,
    CVSpec,
    DataSpec,
    ModelsSpec,
    PrunerSpec,
    SamplerSpec,
    TrainSpec,
    WorkersSpec,
    parse_duration,
)
from hpo.config.spec import StudySpec, trial_config

__all__ = [
    "COMPILE_MODES", "NORMALIZATIONS", "STUDIES_DIR", "BudgetSpec", "CVSpec", "DataSpec", "ModelsSpec", "PrunerSpec", "SamplerSpec",
    "StudySpec", "TrainSpec", "WorkersSpec", "apply_override", "find_study_file", "load_params_file", "load_spec",
    "load_spec_or_stored", "parse_duration", "parse_spec", "read_yaml", "trial_config",
]
