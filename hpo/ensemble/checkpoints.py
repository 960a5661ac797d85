"""An ensemble's fold models: read from the study's artifact store (kept by the study) or from
the files `hpo train --config ensemble.yaml` wrote, each checked against its SHA-256."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from hpo.ensemble import Ensemble, Member
from hpo.records.artifacts import open_artifact_store
from hpo.settings import settings


def artifact_store(ensemble: Ensemble):  # noqa: ANN201 - an optuna ArtifactStore
    """The store its kept checkpoints are in: ``HPO_ARTIFACTS`` where set (the store mounted
    elsewhere on this machine), else the one `hpo ensemble` read."""
    return open_artifact_store(settings().artifacts or ensemble.artifacts)


def read_checkpoint(ensemble: Ensemble, entry: dict, store=None) -> bytes:  # noqa: ANN001
    """One checkpoint's bytes, whole: raises LookupError naming what is wrong (missing, damaged)."""
    where = entry.get("file") or f"artifact {entry.get('artifact_id')}"
    try:
        if entry.get("file"):
            content = Path(entry["file"]).read_bytes()
        else:
            with (store or artifact_store(ensemble)).open_reader(entry["artifact_id"]) as reader:
                content = reader.read()
    except Exception as e:  # a file or artifact gone: the store raises its own types
        raise LookupError(f"fold {entry.get('fold')}: {where} is missing ({type(e).__name__})") from None
    if hashlib.sha256(content).hexdigest() != entry.get("sha256"):
        raise LookupError(f"fold {entry.get('fold')}: {where} is damaged (its SHA-256 differs)")
    return content


def problems(ensemble: Ensemble) -> dict[int, str]:
    """Members that cannot be predicted with as they are, by trial: no fold models, or one that
    is missing or damaged."""
    found: dict[int, str] = {}
    store = None
    for member in ensemble.members:
        if not member.checkpoints:
            found[member.trial.trial] = "no fold models kept"
            continue
        if store is None and any("artifact_id" in c for c in member.checkpoints):
            store = artifact_store(ensemble)
        for entry in member.checkpoints:
            try:
                read_checkpoint(ensemble, entry, store)
            except LookupError as e:
                found[member.trial.trial] = str(e)
                break
    return found


def member_checkpoints(ensemble: Ensemble, member: Member) -> list[tuple[str, io.BytesIO]]:
    """(a name, the bytes) of each of a member's fold checkpoints."""
    return [(f"trial{member.trial.trial}-fold{entry['fold']}", io.BytesIO(read_checkpoint(ensemble, entry)))
            for entry in member.checkpoints]
