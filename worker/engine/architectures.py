"""Supported torchvision architectures and their layer groups, ordered from input to output.

A group is a list of torchvision paths (`layer4`, `features.9`, or a parameter such as ViT's `class_token`), so
groups use torchvision's own names. The last group, `head`, is the classifier; `head_layer` is its final layer
(a Linear, or SqueezeNet's 1x1 Conv2d) that is replaced to fit the dataset's classes. `generic_architecture`
groups any other classifier by parameter count. docs/architectures.md describes every family's groups.
"""

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torchvision
from torch.overrides import TorchFunctionMode

Groups = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    groups: Groups
    head_layer: str
    image_size: int = 224
    min_image_size: int = 1  # the smallest square input its downsampling takes (convs, pools, patches)
    # Keyword arguments torchvision's builder needs besides num_classes (ViT is built for one image size).
    builder_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.groups)


def _native_size(name: str) -> int:
    """The crop size of the evaluation transforms of torchvision's DEFAULT weights for `name`."""
    return torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0]


def _arch(name: str, family: str, groups: Groups, head_layer: str, **kwargs: Any) -> Architecture:
    return Architecture(name=name, family=family, groups=groups, head_layer=head_layer,
                        image_size=_native_size(name), **kwargs)


def _seq(prefix: str, indices: Iterable[int]) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}" for i in indices)


def _resnet(name: str, family: str) -> Architecture:
    """ResNet, ResNeXt and Wide ResNet: the stem, torchvision's four `layerN` stages, and `fc`."""
    groups = (("stem", ("conv1", "bn1")), *((f"layer{k}", (f"layer{k}",)) for k in range(1, 5)), ("head", ("fc",)))
    return _arch(name, family, groups, "fc")


def _mobilenet(name: str, family: str, stages: tuple[range, ...], head_layer: str) -> Architecture:
    """`features` by output stride: 1/2, 1/4, 1/8, 1/16, 1/32 (the last 1x1 conv included); the head is the whole
    classifier (for v3 its pretrained hidden layer, and the new layer to classes)."""
    groups = (("stem", _seq("features", stages[0])),
              *((f"stage{k}", _seq("features", r)) for k, r in enumerate(stages[1:], start=1)),
              ("head", ("classifier",)))
    return _arch(name, family, groups, head_layer)


def _efficientnet(name: str, family: str, stages: int) -> Architecture:
    """`features.0` is the stem, `features.1` … are the MBConv stages; the final 1x1 conv joins the last one."""
    groups = (("stem", ("features.0",)),
              *((f"stage{k}", (f"features.{k}",)) for k in range(1, stages)),
              (f"stage{stages}", (f"features.{stages}", f"features.{stages + 1}")),
              ("head", ("classifier",)))
    return _arch(name, family, groups, "classifier.1")


def _four_stages(name: str, family: str, first: str, head: tuple[str, ...], head_layer: str, *,
                 min_image_size: int) -> Architecture:
    """ConvNeXt and Swin: `features.0` embeds, then four stages of (downsampling +) blocks."""
    groups = ((first, ("features.0",)), ("stage1", ("features.1",)),
              *((f"stage{k}", (f"features.{2 * k - 2}", f"features.{2 * k - 1}")) for k in range(2, 5)),
              ("head", head))
    return _arch(name, family, groups, head_layer, min_image_size=min_image_size)


def _regnet(name: str) -> Architecture:
    groups = (("stem", ("stem",)), *((f"block{k}", (f"trunk_output.block{k}",)) for k in range(1, 5)),
              ("head", ("fc",)))
    return _arch(name, "regnet", groups, "fc")


def _densenet(name: str) -> Architecture:
    """Each dense block with the transition after it; the final norm5 with the last block."""
    groups = (("stem", ("features.conv0", "features.norm0")),
              *((f"denseblock{k}", (f"features.denseblock{k}", f"features.transition{k}")) for k in range(1, 4)),
              ("denseblock4", ("features.denseblock4", "features.norm5")),
              ("head", ("classifier",)))
    return _arch(name, "densenet", groups, "classifier", min_image_size=29)


# VGG's convolutions per block (between max-pools) in configurations A, B, D and E.
_VGG_BLOCKS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


def _vgg(name: str) -> Architecture:
    """Five convolutional blocks split at the max-pools (each conv is conv+ReLU, or conv+BN+ReLU); head = classifier."""
    batch_norm = name.endswith("_bn")
    width = 3 if batch_norm else 2
    groups, index = [], 0
    for k, convs in enumerate(_VGG_BLOCKS[name.removesuffix("_bn")], start=1):
        paths = []
        for _ in range(convs):
            paths += [f"features.{index}", *([f"features.{index + 1}"] if batch_norm else [])]
            index += width
        index += 1  # the max-pool
        groups.append((f"block{k}", tuple(paths)))
    return _arch(name, "vgg", (*groups, ("head", ("classifier",))), "classifier.6", min_image_size=32)


_VIT_LAYERS = {"vit_b_16": 12, "vit_b_32": 12, "vit_l_16": 24, "vit_l_32": 24, "vit_h_14": 32}


def _vit(name: str) -> Architecture:
    """Patch embedding (with the class token and position embedding), the encoder in four equal stages, and the
    head with the encoder's final LayerNorm. Built for its native image size, which its weights require."""
    layers = _VIT_LAYERS[name]
    per_stage = layers // 4
    groups = (("patch_embed", ("conv_proj", "class_token", "encoder.pos_embedding")),
              *((f"stage{k + 1}", tuple(f"encoder.layers.encoder_layer_{i}"
                                        for i in range(k * per_stage, (k + 1) * per_stage)))
                for k in range(4)),
              ("head", ("encoder.ln", "heads")))
    return _arch(name, "vit", groups, "heads.head", min_image_size=_native_size(name),
                 builder_kwargs=(("image_size", _native_size(name)),))


def _squeezenet(name: str, stages: tuple[range, ...], *, min_image_size: int) -> Architecture:
    """The first conv, then the Fire modules between max-pools; the head's last layer is a 1x1 Conv2d."""
    groups = (("stem", ("features.0",)), *((f"stage{k}", _seq("features", r)) for k, r in enumerate(stages, start=1)),
              ("head", ("classifier",)))
    return _arch(name, "squeezenet", groups, "classifier.1", min_image_size=min_image_size)


def _shufflenet(name: str) -> Architecture:
    groups = (("stem", ("conv1",)), ("stage2", ("stage2",)), ("stage3", ("stage3",)), ("stage4", ("stage4",)),
              ("conv5", ("conv5",)), ("head", ("fc",)))
    return _arch(name, "shufflenet_v2", groups, "fc")


def _mnasnet(name: str) -> Architecture:
    """`layers` by output stride, as for the MobileNets; the final 1x1 conv joins the last stage."""
    groups = (("stem", _seq("layers", (0, 1, 3, 4, 6, 7))), ("stage1", ("layers.8",)), ("stage2", ("layers.9",)),
              ("stage3", ("layers.10", "layers.11")), ("stage4", _seq("layers", (12, 13, 14, 15))),
              ("head", ("classifier",)))
    return _arch(name, "mnasnet", groups, "classifier.1")


_ALEXNET = _arch("alexnet", "alexnet",
                 (("block1", ("features.0",)), ("block2", ("features.3",)),
                  ("block3", ("features.6", "features.8", "features.10")), ("head", ("classifier",))),
                 "classifier.6", min_image_size=63)

_MAXVIT_T = _arch("maxvit_t", "maxvit",
                  (("stem", ("stem",)), *((f"stage{k + 1}", (f"blocks.{k}",)) for k in range(4)),
                   ("head", ("classifier",))),
                  "classifier.5", min_image_size=224)

# GoogLeNet and Inception v3 are left out: built without weights they return auxiliary outputs in training mode,
# and their pretrained weights expect `transform_input=True`, which a plain torchvision build does not set.
_ALL = (
    *(_resnet(f"resnet{d}", "resnet") for d in (18, 34, 50, 101, 152)),
    *(_resnet(n, "resnext") for n in ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")),
    *(_resnet(n, "wide_resnet") for n in ("wide_resnet50_2", "wide_resnet101_2")),
    _mobilenet("mobilenet_v2", "mobilenet_v2", (range(0, 2), range(2, 4), range(4, 7), range(7, 14), range(14, 19)),
               "classifier.1"),
    _mobilenet("mobilenet_v3_large", "mobilenet_v3",
               (range(0, 2), range(2, 4), range(4, 7), range(7, 13), range(13, 17)), "classifier.3"),
    _mobilenet("mobilenet_v3_small", "mobilenet_v3",
               (range(0, 1), range(1, 2), range(2, 4), range(4, 9), range(9, 13)), "classifier.3"),
    *(_efficientnet(f"efficientnet_b{i}", "efficientnet", 7) for i in range(8)),
    _efficientnet("efficientnet_v2_s", "efficientnet_v2", 6),
    _efficientnet("efficientnet_v2_m", "efficientnet_v2", 7),
    _efficientnet("efficientnet_v2_l", "efficientnet_v2", 7),
    *(_four_stages(f"convnext_{s}", "convnext", "stem", ("classifier",), "classifier.2", min_image_size=32)
      for s in ("tiny", "small", "base", "large")),
    *(_regnet(f"regnet_{kind}_{size}") for kind, sizes in (
        ("x", ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")),
        ("y", ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf", "128gf"))) for size in sizes),
    *(_densenet(f"densenet{d}") for d in (121, 161, 169, 201)),
    *(_vgg(f"vgg{d}{bn}") for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    *(_vit(n) for n in _VIT_LAYERS),
    *(_four_stages(f"swin_{s}", "swin", "patch_embed", ("norm", "head"), "head", min_image_size=4)
      for s in ("t", "s", "b")),
    *(_four_stages(f"swin_v2_{s}", "swin_v2", "patch_embed", ("norm", "head"), "head", min_image_size=4)
      for s in ("t", "s", "b")),
    _squeezenet("squeezenet1_0", (range(3, 6), range(7, 11), range(12, 13)), min_image_size=21),
    _squeezenet("squeezenet1_1", (range(3, 5), range(6, 8), range(9, 13)), min_image_size=17),
    *(_shufflenet(f"shufflenet_v2_{w}") for w in ("x0_5", "x1_0", "x1_5", "x2_0")),
    *(_mnasnet(f"mnasnet{w}") for w in ("0_5", "0_75", "1_0", "1_3")),
    _ALEXNET,
    _MAXVIT_T,
)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in _ALL}


class _IntegersOnCpu(TorchFunctionMode):
    """Keeps integer tensors made by torch.arange and torch.tensor on the CPU under `torch.device("meta")`:
    RegNet's builder computes its stage widths with them and reads them back with `.tolist()`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.arange, torch.tensor) and kwargs.get("device") is None:
            if not func(*args, **{**kwargs, "device": "meta"}).is_floating_point():
                kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


def meta_model(arch: Architecture, **kwargs: Any) -> nn.Module:
    """The architecture's torchvision model with its parameters on the meta device: every shape and parameter
    count, but no memory and no initialisation, so even vit_h_14 builds in a fraction of a second."""
    with torch.device("meta"), _IntegersOnCpu():
        return torchvision.models.get_model(arch.name, weights=None, **dict(arch.builder_kwargs), **kwargs)


@dataclass(frozen=True)
class LayerGroup:
    name: str
    modules: tuple[nn.Module, ...]
    tensors: tuple[nn.Parameter, ...] = ()  # parameters held outside any listed module (ViT's class_token)

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()] + list(self.tensors)


def _module_or_parameter(model: nn.Module, path: str) -> nn.Module | nn.Parameter:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return model.get_parameter(path)


def layer_groups(model: nn.Module, arch: Architecture) -> list[LayerGroup]:
    """The model's layer groups, checked to cover every parameter exactly once."""
    groups = []
    for name, paths in arch.groups:
        found = [_module_or_parameter(model, path) for path in paths]
        groups.append(LayerGroup(name, tuple(m for m in found if isinstance(m, nn.Module)),
                                 tuple(p for p in found if not isinstance(p, nn.Module))))
    owner: dict[int, str] = {}
    for group in groups:
        for p in group.parameters():
            if id(p) in owner:
                raise ValueError(f"{arch.name}: a parameter is in both '{owner[id(p)]}' and '{group.name}'")
            owner[id(p)] = group.name
    missing = [n for n, p in model.named_parameters() if id(p) not in owner]
    if missing:
        raise ValueError(f"{arch.name}: parameters in no layer group: {', '.join(missing[:5])}")
    return groups


def generic_architecture(model: nn.Module, name: str, *, max_groups: int = 5, image_size: int = 224) -> Architecture:
    """Layer groups for any other classifier, by parameter count (the rule is in docs/architectures.md).

    The head is the last Linear or Conv2d in registration order; the rest is cut into up to `max_groups`
    contiguous groups `group1` … of about equal parameter count.
    """
    head = _generic_head(model, name)
    units = _generic_units(model, head, max_groups=max_groups)
    bounds = _balanced_bounds([size for _, size in units], min(max_groups, len(units)))
    groups = tuple((f"group{k}", tuple(path for path, _ in units[start:end]))
                   for k, (start, end) in enumerate(itertools.pairwise(bounds), start=1))
    return Architecture(name=name, family="generic", groups=(*groups, ("head", (head,))), head_layer=head,
                        image_size=image_size)


def _generic_head(model: nn.Module, name: str) -> str:
    paths = [path for path, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and path]
    if not paths:
        raise ValueError(f"{name}: no Linear or Conv2d layer to use as the classification head")
    return paths[-1]


Part = tuple[str, nn.Module | nn.Parameter]


def _count(obj: nn.Module | nn.Parameter) -> int:
    return obj.numel() if isinstance(obj, nn.Parameter) else sum(p.numel() for p in obj.parameters())


def _parts(path: str, module: nn.Module) -> list[Part]:
    """A module's own parameters, then its children that hold parameters, in registration order."""
    prefix = f"{path}." if path else ""
    own = [(prefix + n, p) for n, p in module.named_parameters(recurse=False)]
    return own + [(prefix + n, c) for n, c in module.named_children() if _count(c)]


def _generic_units(model: nn.Module, head: str, *, max_groups: int) -> list[tuple[str, int]]:
    """The parts of the model outside the head as (path, parameter count), in registration order.

    Starting from the model's parts, a part is replaced by its own parts while it contains the head, while it
    holds more than half of the parameters outside the head, or, while there are fewer than `max_groups` parts,
    when it is the largest part that has children.
    """
    units = _parts("", model)
    body = _count(model) - _count(model.get_submodule(head))

    def divisible(obj: nn.Module | nn.Parameter) -> bool:
        return isinstance(obj, nn.Module) and any(_count(c) for c in obj.children())

    def next_split() -> int | None:
        body_units = [(i, path, obj) for i, (path, obj) in enumerate(units) if path != head]
        for i, path, obj in body_units:
            if head.startswith(f"{path}.") or (divisible(obj) and 2 * _count(obj) > body):
                return i
        divisible_units = [(i, obj) for i, _, obj in body_units if divisible(obj)]
        if len(body_units) < max_groups and divisible_units:
            return max(divisible_units, key=lambda unit: _count(unit[1]))[0]
        return None

    while (i := next_split()) is not None:
        units[i:i + 1] = _parts(*units[i])
    return [(path, _count(obj)) for path, obj in units if path != head]


def _balanced_bounds(sizes: list[int], k: int) -> list[int]:
    """Bounds [0, …, len(sizes)] that cut `sizes` into k non-empty contiguous runs with the least sum of squared
    run totals, i.e. runs as equal as the sizes allow."""
    n = len(sizes)
    total = [0, *itertools.accumulate(sizes)]
    best: list[list[float]] = [[0.0] + [float("inf")] * n]  # best[g][end]: least cost of sizes[:end] in g runs
    back: list[list[int]] = [[0] * (n + 1)]
    for g in range(1, k + 1):
        row, came = [float("inf")] * (n + 1), [0] * (n + 1)
        for end in range(g, n + 1):
            for start in range(g - 1, end):
                cost = best[g - 1][start] + (total[end] - total[start]) ** 2
                if cost < row[end]:
                    row[end], came[end] = cost, start
        best.append(row)
        back.append(came)
    bounds = [n]
    for g in range(k, 0, -1):
        bounds.append(back[g][bounds[-1]])
    return bounds[::-1]
