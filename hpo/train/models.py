"""Backbones from timm's registry, and freezing strategies (one registry entry each)."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from pathlib import Path

import huggingface_hub
import numpy as np
import timm
import torch
from torch import nn

from hpo.errors import ConfigError, first_line
from hpo.registry import Registry

FREEZE: Registry[Callable[..., FreezeStrategy]] = Registry("freeze strategy")
# Classifier heads: a factory (timm backbone name, pretrained, classes, factors) -> nn.Module
# whose output is one logit (or log-probability) per class.
HEADS: Registry[Callable[..., nn.Module]] = Registry("model head")


def check_backbone(name: str, key: str = "search.backbone") -> None:
    if not timm.is_model(name):
        # By edit distance: a typo finds its model, a made-up name finds nothing.
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.75)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"{key}: unknown timm backbone {name!r}{hint}; see timm.list_models() for the names"
        )


def check_input_size(backbone: str, size: int, head: str = "single", factors: tuple[tuple[str, int], ...] = (),
                     num_classes: int = 2) -> None:
    """Run the untrained model, built as a trial builds it (backbone, ``head``, for ``size``), once
    on a ``size`` px image: some backbones need a minimum (ConvNeXt), or sizes their patches and
    windows divide; a head must fit what the backbone returns. Tried on the meta device (no
    memory, no compute); a failure there is confirmed on the CPU."""
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = create_model(backbone, False, num_classes, head, factors, size).eval()
            with torch.inference_mode():
                model(torch.zeros(1, 3, size, size, device=device))
            return
        except Exception as e:
            error = e
    reason = first_line(error, 160)
    with_head = "" if head == "single" else f" with the {head} head"
    raise ConfigError(
        f"search.backbone: {backbone}{with_head} does not run on {size} px images ({type(error).__name__}:"
        f" {reason}); search image sizes it takes or drop that backbone"
    )


def check_patches(backbone: str, sizes: list[int], key: str = "search.image_size") -> None:
    """A backbone whose stem cuts its input into non-overlapping square patches (ViT, DeiT, EVA)
    may run at a size timm builds it for that its patch does not divide, and then never see the
    last pixels of each side: refused. Stems that overlap or pad (PiT, EfficientViT, a padding
    patch embedding) see every pixel and are left alone."""
    if not takes_img_size(backbone):
        return
    with torch.device("meta"):
        embed = getattr(timm_model(backbone, False, 2, sizes[0]), "patch_embed", None)
    stem = getattr(embed, "proj", None)
    if getattr(embed, "dynamic_img_pad", False) or not isinstance(stem, nn.Conv2d):
        return
    side = stem.stride[0]
    if stem.kernel_size[0] != side or stem.padding[0] != 0:
        return
    if uncut := [size for size in sizes if size % side]:
        raise ConfigError(
            f"{key}: {backbone} cuts images into {side} px patches, and {uncut[0]} px is not a multiple of {side}"
            f" (its last {uncut[0] % side} px would never be seen); use multiples of {side} (a range: a low"
            f" that is one, and step {side})"
        )


def create_model(
    backbone: str,
    pretrained: bool | str,
    num_classes: int,
    head: str = "single",
    factors: tuple[tuple[str, int], ...] = (),
    image_size: int | None = None,
) -> nn.Module:
    """A timm backbone with the ``head`` registry entry on top; pretrained from the timm/HF
    cache or a file. Raises ConfigError when pretrained weights are asked for but cannot be
    found offline, or the head needs label factors the data does not have.
    """
    return HEADS.get(head, "search.head")(backbone, pretrained, num_classes, factors, image_size)


@functools.cache
def takes_img_size(backbone: str) -> bool:
    """Whether the architecture is built for one input size and takes timm's ``img_size`` (ViT,
    Swin, MaxViT...): it is then built for the size a trial samples, and timm resamples its
    pretrained position embeddings. CNNs take any size and refuse the argument."""
    cfg = timm.models.get_pretrained_cfg(backbone)
    size = cfg.input_size[-1] if cfg is not None and cfg.input_size else 224
    try:
        with torch.device("meta"):
            timm.create_model(backbone, pretrained=False, img_size=size)
    except TypeError as e:
        return "img_size" not in str(e)
    return True


def cached_weights(backbone: str) -> str | None:
    """The backbone's default weights file when it is already in the Hugging Face cache. Loaded
    from there, a trial needs no network: timm's hub download first asks the Hub for a newer
    version, which on a machine without internet costs its retries in every trial."""
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or not cfg.hf_hub_id or cfg.hf_hub_filename:  # a custom file name: leave it to timm
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin"):  # what timm's hub loader tries, in order
        found = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def timm_model(backbone: str, pretrained: bool | str, num_classes: int, image_size: int | None = None) -> nn.Module:
    kwargs: dict = {"num_classes": num_classes}
    if image_size is not None and takes_img_size(backbone):
        kwargs["img_size"] = image_size
    file = None
    if isinstance(pretrained, str):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"pretrained weights file {path} {'is a folder' if path.is_dir() else 'does not exist'};"
                " give an existing .pth/.safetensors file or set search.pretrained: false"
            )
        file = str(path)
    elif pretrained:
        file = cached_weights(backbone)
    if file:
        kwargs["pretrained_cfg_overlay"] = {"file": file}
    try:
        return timm.create_model(backbone, pretrained=bool(pretrained), **kwargs)
    except Exception as e:  # a damaged or foreign file raises many types (safetensors, pickle, keys)
        if not pretrained:
            raise
        if file:
            reason = first_line(e, 200)
            fix = ("give that backbone's own .pth/.safetensors weights" if isinstance(pretrained, str)
                   else "delete it from the HF cache to download it again")
            raise ConfigError(
                f"pretrained weights file {file} does not load into {backbone!r}"
                f" ({type(e).__name__}: {reason}); {fix} or set search.pretrained: false"
            ) from e
        raise ConfigError(
            f"pretrained weights for {backbone!r} are not available offline ({type(e).__name__});"
            " download them into the HF cache (HF_HOME) beforehand, set search.pretrained to a"
            " local weights file, or use pretrained: false"
        ) from e


@HEADS.register("single")
def single_head(backbone: str, pretrained: bool | str, num_classes: int, factors: tuple,
                image_size: int | None) -> nn.Module:
    """timm's own classifier: one logit per class."""
    return timm_model(backbone, pretrained, num_classes, image_size)


class FactorizedModel(nn.Module):
    """One head per label factor (mask 3, gender 2, age 3); the output is the joint
    log-probability of every class, log p(f1) + log p(f2) + ..., in label order (the label is a
    mixed-radix code of the factors, first factor most significant). Softmax and argmax over it
    give the 18-class prediction; each factor's loss is taken on its marginal (see
    :class:`hpo.train.losses.FactorizedLoss`)."""

    def __init__(self, body: nn.Module, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.body, self.sizes = body, tuple(sizes)
        self.head = nn.Linear(pooled_width(body), sum(self.sizes))

    def get_classifier(self) -> nn.Module:  # the part a frozen backbone keeps training
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.head(self.body(x)).float().split(self.sizes, dim=1)
        joint = torch.zeros((x.shape[0],) + (1,) * len(self.sizes), device=x.device)
        for axis, part in enumerate(parts):
            shape = [x.shape[0]] + [1] * len(self.sizes)
            shape[axis + 1] = self.sizes[axis]
            joint = joint + part.log_softmax(1).view(shape)
        return joint.flatten(1)


def pooled_width(body: nn.Module) -> int:
    """The width of what a timm model built without a classifier returns per image: its
    features, or the pre-logits layer some put after pooling (MobileNetV3: 1024 against 288)."""
    return getattr(body, "head_hidden_size", None) or body.num_features


@HEADS.register("factorized")
def factorized_head(backbone: str, pretrained: bool | str, num_classes: int, factors: tuple,
                    image_size: int | None) -> nn.Module:
    """One head per label factor (mask, gender, age), joined into class log-probabilities."""
    check_head("factorized", factors, num_classes)
    return FactorizedModel(timm_model(backbone, pretrained, 0, image_size), tuple(size for _, size in factors))


def check_head(head: str, factors: tuple[tuple[str, int], ...], num_classes: int) -> None:
    """A factorized head needs labels that are a code of factors (the mask format's)."""
    HEADS.get(head, "search.head")
    if head == "factorized" and (not factors or int(np.prod([n for _, n in factors])) != num_classes):
        raise ConfigError("search.head: factorized needs labels made of factors (the mask format's"
                          " mask x gender x age); use head: single for this data")


class FreezeStrategy:
    """Which parameters train at a given epoch; frozen BatchNorm layers also stop updating stats."""

    def __init__(self, frozen_until: int) -> None:
        self.frozen_until = frozen_until  # epochs with the backbone frozen (0: never frozen)

    def apply(self, model: nn.Module, epoch: int) -> bool:
        """Call after ``model.train()`` at the start of every epoch; True while frozen."""
        frozen = epoch < self.frozen_until
        head = set(map(id, model.get_classifier().parameters()))
        for param in model.parameters():
            param.requires_grad_(not frozen or id(param) in head)
        if frozen:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return frozen


@FREEZE.register("none")
def no_freeze() -> FreezeStrategy:
    """Every layer trains from the first epoch."""
    return FreezeStrategy(0)


@FREEZE.register("backbone")
def freeze_backbone() -> FreezeStrategy:
    """Train only the classifier head (linear probing), for the whole run."""
    return FreezeStrategy(10**9)


@FREEZE.register("unfreeze")
def freeze_then_unfreeze(*, after: int = 1) -> FreezeStrategy:
    """Train the head alone for ``after`` epochs, then the whole network."""
    return FreezeStrategy(after)


def build_freeze(name: str, args: dict) -> FreezeStrategy:
    return FREEZE.get(name)(**args)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model
