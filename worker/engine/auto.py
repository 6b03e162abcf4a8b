"""Choosing what to unfreeze from a measured signal: the relative gradient norm of each frozen group.

Auto-RGN (Lee et al. 2023, "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts") ranks
layers by ||grad|| / ||param||: a group whose weights the target task's loss pulls hardest, relative to
their size, is the one most worth training. Here the signal decides how deep the next stage unfreezes: the
trainable part stays a suffix of the network (see `suffix_down_to`).
"""

import math
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from worker.engine.architectures import LayerGroup


def relative_grad_norms(model: nn.Module, groups: Sequence[LayerGroup], candidates: Collection[str],
                        loader: DataLoader, *, batches: int, device: torch.device,
                        autocast: Callable[[], AbstractContextManager]) -> dict[str, float]:
    """Mean over `batches` training batches of ||dL/dθ|| / ||θ|| for each candidate group.

    Runs in eval mode (no BatchNorm statistics move) and takes gradients with `torch.autograd.grad`, so no
    parameter's `.grad` or `requires_grad` is left changed.
    """
    chosen = [g for g in groups if g.name in candidates]
    params = {g.name: g.parameters() for g in chosen}
    flags = {id(p): p.requires_grad for g in groups for p in g.parameters()}
    was_training = model.training
    model.eval()
    sums = {name: 0.0 for name in params}
    seen = 0
    try:
        for p in (p for ps in params.values() for p in ps):
            p.requires_grad_(True)
        for images, targets in loader:
            if seen >= batches:
                break
            with autocast():
                loss = F.cross_entropy(model(images.to(device)).float(), targets.to(device))
            flat = [p for ps in params.values() for p in ps]
            grads = iter(torch.autograd.grad(loss, flat, allow_unused=True))
            for name, ps in params.items():
                g2 = sum(float(g.pow(2).sum()) for g in (next(grads) for _ in ps) if g is not None)
                p2 = sum(float(p.detach().pow(2).sum()) for p in ps)
                sums[name] += math.sqrt(g2) / max(math.sqrt(p2), 1e-12)
            seen += 1
    finally:
        for g in groups:
            for p in g.parameters():
                p.requires_grad_(flags[id(p)])
        model.train(was_training)
    return {name: total / max(seen, 1) for name, total in sums.items()}


def pick(scores: dict[str, float], count: int) -> list[str]:
    """The `count` highest-scoring groups, highest first (ties: the one nearer the output, listed later)."""
    ranked = sorted(scores, key=lambda name: (scores[name], list(scores).index(name)), reverse=True)
    return ranked[:count]


def suffix_down_to(chosen: Collection[str], *, frozen: Collection[str], order: Sequence[str]) -> list[str]:
    """The `frozen` groups from the lowest (input-most) of `chosen` up to the output, output first; `order` runs
    from input to output.

    Groups left frozen above a trained one would see their inputs change and could not adapt to it, and training
    a group already needs the backward pass through every group above it; so the trainable part stays a suffix.
    """
    cut = min(order.index(name) for name in chosen)
    return [name for name in reversed(order[cut:]) if name in frozen]
