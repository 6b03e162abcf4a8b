"""Supported torchvision architectures and their layer groups, ordered from input to output.

A group is a list of torchvision module paths (`layer4`, `features.9`), so groups use torchvision's own
names. The last group is the classification head; `head_layer` is the final Linear that is replaced to
fit the dataset's classes.
"""

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    head_layer: str
    image_size: int = 224

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.groups)


def _resnet(name: str) -> Architecture:
    return Architecture(
        name=name,
        family="resnet",
        groups=(
            ("stem", ("conv1", "bn1")),
            ("layer1", ("layer1",)),
            ("layer2", ("layer2",)),
            ("layer3", ("layer3",)),
            ("layer4", ("layer4",)),
            ("head", ("fc",)),
        ),
        head_layer="fc",
    )


# MobileNetV3-Small's `features` grouped by output stride: 1/2, 1/4, 1/8, 1/16, 1/32 (the last 1x1 conv
# included); the head is the whole classifier (pretrained 576->1024 layer, new 1024->classes layer).
_MOBILENET_V3_SMALL = Architecture(
    name="mobilenet_v3_small",
    family="mobilenet_v3",
    groups=(
        ("stem", ("features.0",)),
        ("stage1", ("features.1",)),
        ("stage2", ("features.2", "features.3")),
        ("stage3", tuple(f"features.{i}" for i in range(4, 9))),
        ("stage4", tuple(f"features.{i}" for i in range(9, 13))),
        ("head", ("classifier",)),
    ),
    head_layer="classifier.3",
)

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (_resnet("resnet18"), _resnet("resnet34"), _resnet("resnet50"), _MOBILENET_V3_SMALL)
}


@dataclass(frozen=True)
class LayerGroup:
    name: str
    modules: tuple[nn.Module, ...]

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]


def layer_groups(model: nn.Module, arch: Architecture) -> list[LayerGroup]:
    """The model's layer groups, checked to cover every parameter exactly once."""
    groups = [LayerGroup(name, tuple(model.get_submodule(path) for path in paths)) for name, paths in arch.groups]
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
