"""The optimizer of one stage, over the parameter groups `freezing.unfreeze` returns."""

import torch

OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(kind: str, param_groups: list[dict], *, momentum: float = 0.9,
                   nesterov: bool = True) -> torch.optim.Optimizer:
    """AdamW (its default betas and eps) or SGD with `momentum` (Nesterov's where `nesterov` and momentum > 0).

    Each group brings its own rate and weight decay; `momentum` and `nesterov` only apply to SGD.
    """
    if kind == "adamw":
        return torch.optim.AdamW(param_groups)
    if kind == "sgd":
        return torch.optim.SGD(param_groups, momentum=momentum, nesterov=nesterov and momentum > 0)
    raise ValueError(f"unknown optimizer '{kind}'; expected one of {', '.join(OPTIMIZERS)}")
