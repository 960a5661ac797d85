"""Finding, reading, overriding and validating study files (and the other YAML hpo reads)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hpo.config.spec import StudySpec
from hpo.errors import ConfigError, HpoError, did_you_mean

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"


def find_study_file(study: str | Path) -> Path:
    """A path, or a name in ./studies/ or the studies/ folder shipped beside the package."""
    path = Path(study).expanduser()
    if path.is_file():
        return path
    for folder in (Path("studies"), STUDIES_DIR):
        candidate = folder / f"{study}.yaml"
        if candidate.is_file():
            return candidate
    names = sorted({p.stem for d in (Path("studies"), STUDIES_DIR) if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(
        f"study {str(study)!r} not found: give a path to a YAML file or one of: {', '.join(names) or '(none)'}"
    )


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """``a.b.c=value``: the value is read as YAML (numbers, booleans, lists)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.path=value, e.g. --set cv.folds=3")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a section of the study file")
        node = child
    try:
        node[leaf] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({e.problem})") from e


def parse_spec(raw: Any, source: str = "study file", overrides: Sequence[str] = ()) -> StudySpec:
    """Validate a study mapping after applying ``--set`` overrides to a copy of it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level (name:, data:, search: ...)")
    raw = copy.deepcopy(raw)
    for assignment in overrides:
        apply_override(raw, assignment)
    _validate(raw, source, shape_only=True)  # the file's shape: a typo is reported before torch loads
    spec = _validate(raw, source, shape_only=False)
    spec._raw = raw
    return spec


def _validate(raw: dict[str, Any], source: str, shape_only: bool) -> StudySpec:
    try:
        return StudySpec.model_validate(raw, context={"shape_only": shape_only})
    except ValidationError as e:
        errors = e.errors()
        # An unknown key first: a typo (serach:) also leaves its key missing, and the typo is the news.
        first = next((error for error in errors if error["type"] == "extra_forbidden"), errors[0])
        location = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        cause = first.get("ctx", {}).get("error")
        if first["type"] == "extra_forbidden" and (known := _known_keys(first["loc"][:-1])):
            message = f"unknown key{did_you_mean(first['loc'][-1], known)}; use one of: {', '.join(known)}"
        if isinstance(cause, ConfigError):  # already names its key
            location, message = "", str(cause)
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        prefix = f"{location}: " if location else ""
        raise ConfigError(f"{source}: {prefix}{message}{more}") from None


def _known_keys(location: tuple[Any, ...]) -> list[str]:
    """The keys the study file allows at ``location`` (a section's fields), or [] if unknown."""
    model: Any = StudySpec
    for part in location:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def read_yaml(path: Path, what: str, error: type[HpoError] = ConfigError) -> Any:
    """A YAML file's content; an unreadable file or bad syntax is one line naming the place.
    ``what`` says what the file should be, e.g. "a file written by hpo export"."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e}); give {what}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', None) or e}); fix the syntax") from None


def load_spec(study: str | Path, overrides: Sequence[str] = ()) -> StudySpec:
    """Find, read, override and validate a study file."""
    path = find_study_file(study)
    return parse_spec(read_yaml(path, "a study file"), str(path), overrides)


def load_spec_or_stored(study: str, overrides: Sequence[str], stored: Callable[[], dict[str, Any]]) -> StudySpec:
    """The study file when this machine has it; else the spec the study was created with, as
    kept in its storage (``stored``), so a worker can join from a machine without the file."""
    try:
        find_study_file(study)
    except ConfigError:
        return parse_spec(stored(), f"study {study!r} (from storage)", overrides)
    return load_spec(study, overrides)


def load_params_file(path: Path) -> list[dict[str, Any]]:
    """Trial parameters to enqueue: one mapping, or a list of mappings (YAML)."""
    raw = read_yaml(path, "a YAML mapping of parameter: value, or a list of them")
    trials = raw if isinstance(raw, list) else [raw]
    if not trials or not all(isinstance(t, dict) and t for t in trials):
        raise ConfigError(f"{path}: expected a mapping of parameter: value, or a list of them")
    return trials
