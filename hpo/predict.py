"""`hpo predict`: saved final models on new images -> a submission CSV.

Inputs are a folder of images (every image under it, sorted; ImageID = its path relative to the
folder) or a competition eval folder: ``info.csv`` with an ``ImageID`` column and ``images/``;
then the rows keep the listing's order and its ``ans`` column is filled. Predictions are the
softmax averaged over every model in the folder (the fold ensemble) and, with TTA, over the
horizontally flipped image too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from hpo.config import read_yaml
from hpo.data.images import IMAGE_EXTENSIONS, read_rgb
from hpo.data.prefetch import to_input
from hpo.data.table import resize_image
from hpo.errors import DataError
from hpo.files import write_whole
from hpo.final import MANIFEST, check_config
from hpo.train.checkpoint import load_checkpoint
from hpo.train.config import TrainConfig
from hpo.train.loop import autocast_for
from hpo.train.models import create_model, to_device

LISTING, LISTING_ID, ANSWER = "info.csv", "ImageID", "ans"


@dataclass
class LoadedModel:
    name: str
    config: TrainConfig
    model: nn.Module
    weight: float = 1.0  # its share of the vote (an ensemble member's weight over its folds)


@dataclass(frozen=True)
class Inputs:
    ids: list[str]
    paths: list[Path]
    rows: list[dict[str, str]] | None = None  # the eval listing's rows, in order
    columns: list[str] | None = None


def load_source(source: Path, device: torch.device) -> tuple[list[LoadedModel], list[str], np.ndarray | None]:
    """Every model a `hpo train` run saved in ``source`` (a folder), or an ensemble's fold models
    (``source``: the file `hpo ensemble` wrote); the class names; the ensemble's offsets."""
    from hpo.ensemble import is_ensemble_file

    if is_ensemble_file(source):
        return load_ensemble(Path(source), device)
    models, classes = load_models(Path(source), device)
    return models, classes, None


def load_ensemble(path: Path, device: torch.device) -> tuple[list[LoadedModel], list[str], np.ndarray | None]:
    """An ensemble's members' fold models, each weighted by its member's weight over its folds."""
    from hpo.ensemble import read_ensemble
    from hpo.ensemble.checkpoints import member_checkpoints, problems

    ensemble = read_ensemble(path)
    if found := problems(ensemble):
        listed = "; ".join(f"trial {trial}: {why}" for trial, why in sorted(found.items()))
        raise DataError(f"--model {path}: {len(found)} member(s) cannot predict ({listed}); train them with"
                        f" hpo train --config {path}")
    fix = f"train it again with hpo train --config {path}"
    models = []
    for member in ensemble.members:
        for name, content in member_checkpoints(ensemble, member):
            loaded = _load_model(Path(name), device, content, fix)
            loaded.weight = member.weight / len(member.checkpoints)
            models.append(loaded)
    offsets = np.asarray(ensemble.offsets, dtype=np.float64) if ensemble.offsets else None
    return models, list(ensemble.classes), offsets


def load_models(folder: Path, device: torch.device) -> tuple[list[LoadedModel], list[str]]:
    """Every model a `hpo train` run saved in ``folder``, and the class names."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"--model {folder}: no {MANIFEST}; give the folder hpo train wrote (its --out)")
    damaged = f"--model {folder}: {MANIFEST} is damaged"
    manifest = read_yaml(manifest_path, "the folder hpo train wrote", DataError)
    try:
        files, classes = [entry["file"] for entry in manifest["models"]], list(manifest["classes"])
    except (KeyError, TypeError) as e:
        raise DataError(f"{damaged} ({type(e).__name__}: {e}); train again with hpo train") from None
    if not files:
        raise DataError(f"{damaged}: it lists no model; train again with hpo train")
    return [_load_model(folder / name, device) for name in files], classes


def load_kept_model(store, artifact_id: str, device: torch.device) -> LoadedModel:  # noqa: ANN001
    """A fold model the study kept in its artifact store (hpo.records.models), by its id."""
    with store.open_reader(artifact_id) as reader:
        return _load_model(Path(artifact_id), device, io.BytesIO(reader.read()))


def _load_model(path: Path, device: torch.device, source: Path | BinaryIO | None = None,
                fix: str = "train again with hpo train") -> LoadedModel:
    """The model of a checkpoint (``source``: its bytes, when not read from ``path``)."""
    try:  # a damaged file raises many types (unpickling, zip, key errors); all mean the same here
        cfg, classes, state, factors = load_checkpoint(source if source is not None else path)
    except Exception as e:
        raise DataError(f"--model: cannot load {path} ({type(e).__name__}: {e}); {fix}") from None
    check_config(cfg, str(path))
    model = create_model(cfg.backbone, False, len(classes), cfg.head, factors, cfg.image_size)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        reason = str(e).splitlines()[1 if len(str(e).splitlines()) > 1 else 0].strip()
        raise DataError(f"--model: {path} does not fit its own config ({reason}); {fix}") from None
    return LoadedModel(Path(path).name, cfg, to_device(model, device).eval())


def find_inputs(data: Path) -> Inputs:
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"--data {data}: no such folder; give a folder of images or an eval folder with {LISTING}")
    listing = data / LISTING
    if listing.is_file():
        with listing.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows, columns = list(reader), list(reader.fieldnames or [])
        if LISTING_ID not in columns:
            raise DataError(f"{listing}: no {LISTING_ID} column; the eval listing needs {LISTING_ID},{ANSWER}")
        images = data / "images" if (data / "images").is_dir() else data
        paths = [images / r[LISTING_ID] for r in rows]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} image(s) of {listing} missing, e.g. {missing[0]}; restore them")
        columns = columns if ANSWER in columns else [*columns, ANSWER]
        return Inputs([r[LISTING_ID] for r in rows], paths, rows, columns)
    paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(data).parts))
    if not paths:
        raise DataError(f"--data {data}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return Inputs([str(p.relative_to(data)) for p in paths], paths)


def _batches(paths: list[Path], batch_size: int, threads: int = 8) -> Iterator[list[np.ndarray]]:
    def read(path: Path) -> np.ndarray:
        try:
            return read_rgb(path)
        except Exception as e:  # PIL raises several types for corrupt files
            raise DataError(f"cannot read {path} ({e}); replace the file") from e

    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(paths), batch_size):
            yield list(pool.map(read, paths[start : start + batch_size]))


@torch.inference_mode()
def predict_probabilities(
    models: list[LoadedModel],
    paths: list[Path],
    device: torch.device,
    tta: bool = False,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Softmax probabilities (N, classes), averaged over models by their weights (and over flips
    with ``tta``)."""
    autocast, _ = autocast_for(device)
    outputs = []
    for images in _batches(paths, batch_size):
        total = None
        for loaded in models:
            cfg = loaded.config
            mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
            std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
            batch = torch.from_numpy(np.stack([resize_image(im, cfg.image_size, cfg.crop) for im in images]))
            x = to_input(batch, device, mean, std)
            views = [x, torch.flip(x, dims=[3])] if tta else [x]
            for view in views:
                with autocast():
                    probs = loaded.model(view).float().softmax(1)
                probs = probs * loaded.weight
                total = probs if total is None else total + probs
        outputs.append((total / (sum(m.weight for m in models) * (2 if tta else 1))).cpu().numpy())
        if on_batch:
            on_batch(len(images))
    return np.concatenate(outputs)


def write_submission(inputs: Inputs, predicted: np.ndarray, path: Path, classes: list[str] | None = None) -> Path:
    """The CSV: the eval listing with ``ans`` filled (its order kept), or ImageID,ans. ``classes``
    writes class names instead of class indices."""
    answers = [classes[i] if classes else str(int(i)) for i in predicted]
    buffer = io.StringIO(newline="")
    if inputs.rows is not None:
        writer = csv.DictWriter(buffer, fieldnames=inputs.columns)
        writer.writeheader()
        writer.writerows({**row, ANSWER: answer} for row, answer in zip(inputs.rows, answers, strict=True))
    else:
        rows = csv.writer(buffer)
        rows.writerow([LISTING_ID, ANSWER])
        rows.writerows(zip(inputs.ids, answers, strict=True))
    return write_whole(path, buffer.getvalue())


@dataclass(frozen=True)
class Prediction:
    """What `hpo predict` wrote: the inputs in their order, the averaged probabilities, the
    class names, and how many models voted."""

    inputs: Inputs
    probabilities: np.ndarray
    classes: list[str]
    models: int
    offsets: np.ndarray | None = None  # an ensemble's per-class offsets to the log-probabilities

    @property
    def predicted(self) -> np.ndarray:
        from hpo.ensemble.selection import decide

        return decide(self.probabilities, self.offsets)

    def counts(self) -> dict[str, int]:
        """Predictions per class, the classes predicted at least once."""
        found = np.bincount(self.predicted, minlength=len(self.classes))
        return {self.classes[i]: int(n) for i, n in enumerate(found) if n}


def predict_folder(
    model: Path,
    data: Path,
    output: Path,
    tta: bool = False,
    batch_size: int = 64,
    class_names: bool = False,
    device: torch.device | None = None,
    on_start: Callable[[int, int, torch.device], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Prediction:
    """The models `hpo train` saved in ``model`` (a folder), or an ensemble's (``model``: the file
    `hpo ensemble` wrote), soft-voting on the images of ``data``; the submission CSV written
    whole to ``output``. ``on_start(images, models, device)`` hears them
    before the first batch, ``on_batch(n)`` each batch."""
    from hpo.system import pick_device

    device = device or pick_device()
    models, classes, offsets = load_source(model, device)
    inputs = find_inputs(data)
    if on_start is not None:
        on_start(len(inputs.ids), len(models), device)
    probabilities = predict_probabilities(models, inputs.paths, device, tta, batch_size, on_batch)
    result = Prediction(inputs, probabilities, classes, len(models), offsets)
    write_submission(inputs, result.predicted, output, classes if class_names else None)
    return result

