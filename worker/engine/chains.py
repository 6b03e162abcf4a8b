"""Each architecture's forward pass as a chain of steps, so the frozen prefix and the trainable suffix run apart.

`forward_steps(model, arch)` spells out torchvision's own `forward` as an ordered list of steps: running them in
turn computes what `model(x)` computes, with the same modules (their own hooks fire; hooks on the model or on the
containers the chain unrolls do not). `split(steps)` cuts the chain before the first step that holds a trainable
parameter, and the prefix runs under `torch.no_grad()`.

Autograd records nothing for a frozen prefix anyway; the cut is what a cache of prefix outputs needs. Such a cache
is valid while the prefix stays frozen and deterministic (every prefix module in eval mode: BatchNorm, dropout,
stochastic depth; no augmentation) and while the suffix does not write into its input (EfficientNet's and MNASNet's
heads start with an in-place Dropout, so a cache must hand out copies).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from worker.engine.architectures import Architecture


@dataclass(frozen=True)
class Step:
    """One call of the forward pass, and the modules or tensors whose parameters it uses."""

    name: str  # torchvision's path for a module step; a short description for a functional one
    run: Callable[[Tensor], Tensor]
    owns: tuple[nn.Module | nn.Parameter, ...] = ()  # what holds the parameters the step uses

    def parameters(self) -> list[nn.Parameter]:
        return [p for o in self.owns for p in ([o] if isinstance(o, nn.Parameter) else o.parameters())]


def _module(model: nn.Module, path: str) -> Step:
    module = model.get_submodule(path)
    return Step(path, module, (module,))


def _modules(model: nn.Module, *paths: str) -> list[Step]:
    return [_module(model, path) for path in paths]


def _children(model: nn.Module, path: str) -> list[Step]:
    """One step per child of the container at `path` ("" for the model itself), in order."""
    prefix = f"{path}." if path else ""
    return [_module(model, prefix + name) for name, _ in model.get_submodule(path).named_children()]


def _fn(name: str, run: Callable[[Tensor], Tensor]) -> Step:
    return Step(name, run)


_FLATTEN = _fn("flatten", lambda x: torch.flatten(x, 1))
_GLOBAL_MEAN = _fn("mean over H, W", lambda x: x.mean([2, 3]))


def _vit(model: nn.Module) -> list[Step]:
    """torchvision's VisionTransformer.forward and Encoder.forward, unrolled."""
    encoder = model.encoder

    def embed(x: Tensor) -> Tensor:
        x = model._process_input(x)
        return torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)

    return [Step("conv_proj + class_token", embed, (model.conv_proj, model.class_token)),
            Step("encoder.pos_embedding", lambda x: x + encoder.pos_embedding, (encoder.pos_embedding,)),
            *_modules(model, "encoder.dropout"), *_children(model, "encoder.layers"), *_modules(model, "encoder.ln"),
            _fn("class token", lambda x: x[:, 0]), *_modules(model, "heads")]


def _steps_by_family(model: nn.Module, family: str) -> list[Step] | None:
    def m(*paths: str) -> list[Step]:
        return _modules(model, *paths)

    match family:
        case "resnet" | "resnext" | "wide_resnet":
            return [*m("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"),
                    _FLATTEN, *m("fc")]
        case "mobilenet_v2":
            return [*_children(model, "features"), _fn("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 1)),
                    _FLATTEN, *m("classifier")]
        case "mobilenet_v3" | "efficientnet" | "efficientnet_v2" | "vgg" | "alexnet":
            return [*_children(model, "features"), *m("avgpool"), _FLATTEN, *m("classifier")]
        case "convnext":
            return [*_children(model, "features"), *m("avgpool", "classifier")]
        case "regnet":
            return [*m("stem"), *_children(model, "trunk_output"), *m("avgpool"), _FLATTEN, *m("fc")]
        case "densenet":
            return [*_children(model, "features"), _fn("relu", lambda x: F.relu(x, inplace=True)),
                    _fn("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 1)), _FLATTEN, *m("classifier")]
        case "squeezenet":
            return [*_children(model, "features"), *m("classifier"), _FLATTEN]
        case "shufflenet_v2":
            return [*m("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"), _GLOBAL_MEAN, *m("fc")]
        case "mnasnet":
            return [*_children(model, "layers"), _GLOBAL_MEAN, *m("classifier")]
        case "maxvit":
            return [*m("stem"), *_children(model, "blocks"), *m("classifier")]
        case "swin" | "swin_v2":
            return [*_children(model, "features"), *m("norm", "permute", "avgpool", "flatten", "head")]
        case "vit":
            return _vit(model)
    return None


def forward_steps(model: nn.Module, arch: Architecture) -> list[Step]:
    """The model's forward pass as steps, input to output.

    Any other model (the generic grouping) is split into its children when it is an `nn.Sequential`, and is
    otherwise one step: its prefix is then empty and the whole model runs with autograd.
    """
    steps = _steps_by_family(model, arch.family)
    if steps is None:
        steps = _children(model, "") if isinstance(model, nn.Sequential) else [Step(arch.name, model, (model,))]
    return steps


def _run(steps: Sequence[Step], x: Tensor) -> Tensor:
    for step in steps:
        x = step.run(x)
    return x


@dataclass(frozen=True)
class Split:
    """A chain cut in two: `prefix` holds no trainable parameter, `suffix` starts at the first one that does."""

    prefix: tuple[Step, ...]
    suffix: tuple[Step, ...]

    @torch.no_grad()
    def run_prefix(self, x: Tensor) -> Tensor:
        return _run(self.prefix, x)

    def run_suffix(self, features: Tensor) -> Tensor:
        return _run(self.suffix, features)

    def __call__(self, x: Tensor) -> Tensor:
        return self.run_suffix(self.run_prefix(x))


def split(steps: Sequence[Step]) -> Split:
    """Cut `steps` before the first step with a parameter that requires grad (after all of them if none does)."""
    cut = next((i for i, s in enumerate(steps) if any(p.requires_grad for p in s.parameters())), len(steps))
    return Split(tuple(steps[:cut]), tuple(steps[cut:]))
