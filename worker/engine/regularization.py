"""Regularization that is not a loss term: dropout on the head's input, and gradient-norm clipping."""

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle


class InputDropout:
    """A forward pre-hook that drops out a module's first input while the module is in train mode."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (F.dropout(args[0], self.p, training=module.training), *args[1:])


def add_head_dropout(model: nn.Module, head_layer: str, p: float) -> RemovableHandle | None:
    """Dropout with probability `p` on the input of the module at `head_layer` (train mode only); none for p = 0.

    A hook rather than a wrapping module, so the state dict keeps torchvision's own keys.
    """
    if p <= 0:
        return None
    return model.get_submodule(head_layer).register_forward_pre_hook(InputDropout(p))


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None) -> None:
    """Scale the gradients of `params` so that their total 2-norm is at most `max_norm`; nothing for None."""
    if max_norm is not None:
        nn.utils.clip_grad_norm_(params, max_norm)
