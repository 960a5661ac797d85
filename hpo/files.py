"""Output files written whole or not at all."""

from __future__ import annotations

from pathlib import Path

from hpo.errors import ConfigError


def write_whole(path: Path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it into place: a crash or a full disk never
    leaves a half-written file under the real name."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the path of a file to write (inside it, say)")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)
    return path
