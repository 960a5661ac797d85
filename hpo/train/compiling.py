"""torch.compile for a trial's training forward, with one graph per trial, not per fold."""

from __future__ import annotations

import torch
from torch import nn

from hpo.errors import ConfigError
from hpo.settings import settings
from hpo.train.config import TrainConfig


def compile_backend() -> str:
    backend = settings().compile_backend
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(f"HPO_COMPILE_BACKEND={backend!r}: not a torch.compile backend; use one of"
                          f" {', '.join(torch._dynamo.list_backends())}, or unset it")
    return backend


_compiled_for: tuple | None = None  # what torch's compile caches hold graphs of (see compiled)


def compiled(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The model's training forward, ``torch.compile``-d in ``cfg.compile`` (off: the model as it
    is). ``HPO_COMPILE_BACKEND`` picks another backend than inductor (aot_eager checks the graph
    without generating code).

    One graph per trial (two with a freezing strategy that unfreezes): shapes are static, the
    folds reuse it (a new model of the same config and shapes meets the same guards), and
    evaluation, whose last batch changes from fold to fold, runs uncompiled. The caches are
    emptied when another config comes: each shape a worker's trials sample is one more cache
    entry of the backbone's ``forward``, and past ``recompile_limit`` (8) torch runs it
    eagerly, silently. BENCHMARKS.md tells what dynamic shapes did to CUDA graphs."""
    if cfg.compile == "off":
        return model
    global _compiled_for
    backend = compile_backend()
    key = (cfg, tuple(p.shape for p in model.parameters()), next(model.parameters()).device)
    if key != _compiled_for:
        torch.compiler.reset()
        _compiled_for = key
    return torch.compile(model, mode=None if cfg.compile == "default" else cfg.compile, backend=backend,
                         dynamic=False)
