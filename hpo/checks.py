"""Every check that needs more than the study file, done before any storage is touched
(:func:`prepare`): the environment, the data read and decoded, the fold plan, the choices that
depend on the data, every component built with its arguments, every (backbone, head) pair run at
the image sizes, pretrained weights and the artifact store. A mistake fails here, in one line,
not as a failed trial each time the sampler draws it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from hpo import settings
from hpo.config import StudySpec
from hpo.data import cache
from hpo.data.folds import make_fold_plan
from hpo.data.formats import load_table
from hpo.data.table import ImageTable
from hpo.errors import ConfigError, first_line
from hpo.prepare import image_sizes
from hpo.records.artifacts import artifact_location, check_artifact_store
from hpo.space import Param, Range, candidates
from hpo.train.compiling import compile_backend
from hpo.train.losses import build_loss
from hpo.train.models import (
    build_freeze,
    check_head,
    check_input_size,
    check_patches,
    create_model,
    takes_img_size,
)
from hpo.train.optim import build_optimizer, build_schedule

log = logging.getLogger(__name__)


def check_pretrained(spec: StudySpec) -> None:
    """Load every backbone's pretrained weights once before any trial: a machine without them
    (offline, empty cache) fails here with one clear error, not in every trial. A backbone
    built for the image size (ViT) loads them at the smallest and largest size searched."""
    wanted = [value for value in candidates(spec.search.pretrained) if value]
    sizes = image_sizes(spec)
    for backbone in candidates(spec.search.backbone) if wanted else []:
        for pretrained in wanted:
            for size in sorted({sizes[0], sizes[-1]}) if takes_img_size(backbone) else [None]:
                create_model(backbone, pretrained, num_classes=2, image_size=size)


def _ends(param: Param) -> tuple[Any, Any]:
    """A parameter's first and last candidate values, typed as a trial would sample them."""
    values = candidates(param)
    if isinstance(param, Range):
        values = [(int if param.integer else float)(v) for v in values]
    return values[0], values[-1]


def check_components(spec: StudySpec) -> None:
    """Every searched optimizer, scheduler, loss and freeze strategy built once with its arguments
    at each end of their ranges: a value torch refuses (momentum -5, label smoothing 1.5) fails
    here in one line, not as a failed trial each time it is sampled."""
    model = nn.Linear(2, 2)
    logits, target = torch.zeros(2, 2), torch.tensor([0, 1])

    def schedule(name: str, args: dict[str, Any]) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        plan = build_schedule(name, args, optimizer, 2, spec.budget.max_epochs)
        optimizer.step()  # as in training: the optimizer steps before its schedule does
        plan.after_batch()
        plan.after_epoch(0.5)

    builders: dict[str, Callable[[str, dict[str, Any]], object]] = {
        "optimizer": lambda name, args: build_optimizer(name, args, model, 1e-3, 0.0),
        "scheduler": schedule,
        "loss": lambda name, args: build_loss(name, args, "none", np.ones(2), torch.device("cpu"))(logits, target),
        "freeze": build_freeze,
    }
    for key, build in builders.items():
        for name, args in getattr(spec.search, key).branches.items():
            for end in (0, 1):
                values = {arg: _ends(param)[end] for arg, param in args.items()}
                try:
                    build(name, values)
                except ConfigError:
                    raise
                except Exception as e:
                    raise ConfigError(f"search.{key}: {name} refuses {values} ({type(e).__name__}: {first_line(e)});"
                                      " narrow the range of its arguments") from None


def check_input_sizes(spec: StudySpec, table: ImageTable) -> None:
    """Every (backbone, head) pair the space allows, built as a trial builds it, at the smallest
    and largest image size the study samples (and every size between when there are few), and
    every size against a patch backbone's patch: a size a backbone cannot take, would take only
    in part, or a head that does not fit its backbone fails here, not in its trials."""
    sizes = image_sizes(spec)
    key = "search.image_size" if spec.search.image_size is not None else "data.image_size"
    for backbone in candidates(spec.search.backbone):
        for head in candidates(spec.search.head):
            for size in sizes if len(sizes) <= 8 else [sizes[0], sizes[-1]]:
                check_input_size(backbone, size, head, table.factors, table.num_classes)
        check_patches(backbone, sizes, key)


def check_data_choices(spec: StudySpec, table: ImageTable) -> None:
    """Searched choices that depend on the data: a factorized head needs label factors, and
    training-label options must be the format's own (and valid)."""
    for head in candidates(spec.search.head):
        check_head(head, table.factors, table.num_classes)
    for key, param in spec.search.labels.items():
        for value in candidates(param):
            table.training_labels({key: value})


def check_images(spec: StudySpec, table: ImageTable) -> None:
    """Decode every image once, into the shared cache at the smallest size the study samples
    (the first trial at that size reads it; other sizes are built on first use): an unreadable
    file fails here, before the study exists. With the cache off, the first trial finds it."""
    if cache.cache_root() is not None:
        cache.decoded(table, min(image_sizes(spec)), tuple(spec.data.crop) if spec.data.crop else None)


def check_environment(spec: StudySpec) -> None:
    """The environment knobs a trial reads, checked before anything starts."""
    settings.check()
    if spec.train.compile != "off":
        compile_backend()
    if spec.train.augment_on == "gpu" and not torch.cuda.is_available():
        log.warning("train.augment_on: gpu, and this machine has no GPU: its trials augment in the loader"
                    " (albumentations), as with augment_on: workers")


def prepare(spec: StudySpec) -> tuple[ImageTable, np.ndarray]:
    """Everything that can fail on bad input, done before any storage is touched: environment
    knobs, the data read and decoded, the fold plan, data-dependent choices, component
    arguments, backbones at the image sizes, pretrained weights and the artifact store checked."""
    check_environment(spec)
    table = load_table(spec.data.format, spec.data.options)
    plan = make_fold_plan(table, spec.cv.folds, spec.cv.seed, spec.cv.holdout)
    check_data_choices(spec, table)
    check_components(spec)
    check_input_sizes(spec, table)
    check_pretrained(spec)
    check_images(spec, table)
    check_artifact_store(artifact_location(spec))
    return table, plan
