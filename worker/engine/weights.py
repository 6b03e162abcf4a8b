"""Building a torchvision model with its starting weights, and the safetensors model file."""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file, save_file

from worker.engine.architectures import Architecture
from worker.engine.data import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(Exception):
    """Starting weights that cannot be used; the message says what to do."""


def cached_weights_path(arch: str, weights: str) -> Path:
    """Where torchvision's hub cache (under TORCH_HOME) keeps the file of these weights."""
    enum = torchvision.models.get_model_weights(arch)[weights]
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(enum.url).path).name


def torchvision_state_dict(arch: str, weights: str, *, allow_download: bool) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's named weights, read from the cache; downloaded only if allowed."""
    try:
        enum = torchvision.models.get_model_weights(arch)[weights]
    except KeyError:
        raise WeightsError(f"{arch} has no torchvision weights named '{weights}'") from None
    path = cached_weights_path(arch, weights)
    if not path.exists() and not allow_download:
        raise WeightsError(
            f"the {arch} weights '{weights}' are not in torchvision's cache: put {path.name} at {path} "
            "(TORCH_HOME sets the folder), or set UNFREEZE_ALLOW_DOWNLOADS=true to let the worker download it"
        )
    try:
        return enum.get_state_dict(progress=False)
    except Exception as exc:  # network failures and corrupt cache files surface as many types
        raise WeightsError(f"could not load the {arch} weights '{weights}' from {path}: {exc}") from exc


def preprocessing(arch: str, weights: str | None, image_size: int) -> Preprocessing:
    """The evaluation preprocessing of torchvision's named `weights` (`weights.transforms()`: mean, std,
    interpolation, and the resize margin around the crop, kept in proportion at `image_size`); ImageNet's
    statistics and no margin for a randomly initialised model."""
    if weights is None:
        return Preprocessing(image_size, IMAGENET_MEAN, IMAGENET_STD)
    try:
        preset = torchvision.models.get_model_weights(arch)[weights].transforms()
    except KeyError:
        raise WeightsError(f"{arch} has no torchvision weights named '{weights}'") from None
    return Preprocessing(image_size, tuple(preset.mean), tuple(preset.std),
                         resize_ratio=preset.resize_size[0] / preset.crop_size[0],
                         interpolation=preset.interpolation.value)


def model_file_preprocessing(metadata: Mapping[str, str], image_size: int) -> Preprocessing:
    """The preprocessing an earlier job's model was trained with, at `image_size` (files written before the
    resize margin was recorded have none)."""
    ratio = float(metadata.get("resize_ratio", 1.0))
    return Preprocessing(image_size, tuple(json.loads(metadata["mean"])), tuple(json.loads(metadata["std"])),
                         resize_ratio=ratio, interpolation=metadata.get("interpolation", "bilinear"))


def replace_head(model: nn.Module, arch: Architecture, num_classes: int) -> None:
    """Swap the final layer (a Linear, or a Conv2d as in SqueezeNet) for a new one with `num_classes` outputs.

    The new layer is initialised from the current RNG, on the old one's device and dtype (the meta device too).
    A `num_classes` attribute of the model (SqueezeNet, ViT, Swin) is updated to match.
    """
    parent_path, _, child = arch.head_layer.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = parent.get_submodule(child)
    like = {"device": old.weight.device, "dtype": old.weight.dtype, "bias": old.bias is not None}
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, **like)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, stride=old.stride, padding=old.padding,
                        dilation=old.dilation, padding_mode=old.padding_mode, **like)
    else:
        raise TypeError(f"{arch.name}: the head layer '{arch.head_layer}' is a {type(old).__name__}, "
                        "not a Linear or Conv2d")
    setattr(parent, child, new)
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes


def build_model(
    arch: Architecture,
    *,
    num_classes: int,
    weights: str | None,
    init_state: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    allow_download: bool = False,
) -> nn.Module:
    """A torchvision model with a new head for `num_classes`.

    Starts from torchvision's named `weights`, from `init_state` (a state dict of the same architecture,
    e.g. an earlier job's model), or from random initialisation when both are None.
    """
    torch.manual_seed(seed)
    built = dict(arch.builder_kwargs)  # e.g. ViT's image size, fixed by its position embedding
    if init_state is not None:
        head_weight = init_state[f"{arch.head_layer}.weight"]
        model = torchvision.models.get_model(arch.name, weights=None, num_classes=head_weight.shape[0], **built)
        model.load_state_dict(init_state)
    elif weights is not None:
        model = torchvision.models.get_model(arch.name, weights=None, **built)
        model.load_state_dict(torchvision_state_dict(arch.name, weights, allow_download=allow_download))
    else:
        model = torchvision.models.get_model(arch.name, weights=None, num_classes=num_classes, **built)
        return model
    torch.manual_seed(seed)
    replace_head(model, arch, num_classes)
    return model


def save_model_file(model: nn.Module, path: Path, *, arch: str, classes: list[str], prep: Preprocessing) -> None:
    """Write the model's state dict (torchvision key names) as safetensors, atomically, with what a client needs
    to use it: the classes in output order and the preprocessing."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "arch": arch,
        "classes": json.dumps(classes),
        "image_size": str(prep.crop_size),
        "resize_size": str(prep.resize),
        "resize_ratio": repr(prep.resize_ratio),  # exact, so a chain of jobs does not compound rounding
        "interpolation": prep.interpolation,
        "mean": json.dumps(list(prep.mean)),
        "std": json.dumps(list(prep.std)),
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write (a full disk), nothing half-written stays


def load_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a safetensors model file (never a pickle)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata
