"""The one place that freezes and unfreezes: requires_grad, BatchNorm mode, and the optimizer's groups."""

from collections.abc import Collection, Sequence

import torch
import torch.nn as nn

from worker.engine.architectures import LayerGroup

_NORM = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def discriminative_lr(groups: Sequence[LayerGroup], name: str, *, lr: float, lr_decay: float,
                      top: str | None = None) -> float:
    """The top trained group (the head, unless a group trains alone) gets `lr`; the group k places below it
    gets `lr / lr_decay**k`."""
    names = [g.name for g in groups]
    k = names.index(top or names[-1]) - names.index(name)
    return lr / lr_decay**max(k, 0)


def _norm_params(group: LayerGroup) -> list[nn.Parameter]:
    return [p for m in group.modules for sub in m.modules() if isinstance(sub, _NORM) for p in sub.parameters(recurse=False)]


def unfreeze(
    groups: Sequence[LayerGroup],
    unfrozen: Collection[str],
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    train_bn: bool,
) -> list[dict]:
    """Make exactly the `unfrozen` groups trainable and return the optimizer's parameter groups.

    With `train_bn`, normalization layers of frozen groups train too (their group's rate). Biases and
    normalization weights get no weight decay. Each optimizer group is tagged with its layer group's name.
    """
    param_groups: list[dict] = []
    top = max(unfrozen, key=[g.name for g in groups].index) if unfrozen else None
    for group in groups:
        params = group.parameters() if group.name in unfrozen else (_norm_params(group) if train_bn else [])
        trainable = {id(p) for p in params}
        for p in group.parameters():
            p.requires_grad_(id(p) in trainable)
        if not params:
            continue
        group_lr = discriminative_lr(groups, group.name, lr=lr, lr_decay=lr_decay, top=top)
        # Biases, normalization weights and free-standing tensors (ViT's class token, position embedding).
        no_decay_ids = {id(p) for p in [*_norm_params(group), *group.tensors]}
        decay = [p for p in params if p.ndim > 1 and id(p) not in no_decay_ids]
        no_decay = [p for p in params if p.ndim <= 1 or id(p) in no_decay_ids]
        for subset, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if subset:
                param_groups.append({"params": subset, "lr": group_lr, "weight_decay": wd, "name": group.name})
    return param_groups


def set_train_mode(model: nn.Module, groups: Sequence[LayerGroup], unfrozen: Collection[str], *, train_bn: bool) -> None:
    """Train mode, except BatchNorm in frozen groups, which stays in eval so its running statistics hold."""
    model.train()
    if train_bn:
        return
    for group in groups:
        if group.name not in unfrozen:
            for m in group.modules:
                for sub in m.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate of each named layer group in the optimizer."""
    return {g["name"]: g["lr"] for g in optimizer.param_groups}
