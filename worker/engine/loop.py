"""One training epoch and one evaluation pass."""

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from worker.engine.metrics import confusion_matrix, top_k_correct
from worker.engine.regularization import clip_gradients


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float
    samples: int
    seconds: float
    interrupted: bool


def train_one_epoch(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    should_stop: Callable[[], bool],
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    label_smoothing: float = 0.0,
    grad_clip: float | None = None,
) -> EpochStats:
    """Train over `loader` once; `should_stop` is asked after every batch (cancellation).

    `forward` is the model, or its `chains.Split`, which runs the frozen prefix without autograd.

    The loss is cross-entropy with `label_smoothing`; gradients are clipped to a total norm of `grad_clip`
    before each step, and `scheduler` (if any) steps after every batch.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    interrupted = False
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast():
            logits = forward(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(params, grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
        if should_stop():
            interrupted = True
            break
    seconds = time.perf_counter() - start
    return EpochStats(float(loss_sum) / max(seen, 1), int(correct) / max(seen, 1), seen, seconds, interrupted)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
) -> tuple[float, torch.Tensor, float | None]:
    """Mean cross-entropy loss, the confusion matrix, and the top-5 accuracy (None with 5 classes or fewer)
    over `loader`, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    top5_correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast():
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        cm += confusion_matrix(targets, logits.argmax(1), num_classes)
        if num_classes > 5:
            top5_correct += top_k_correct(logits, targets, 5)
        seen += len(targets)
    top5_accuracy = int(top5_correct) / max(seen, 1) if num_classes > 5 else None
    return float(loss_sum) / max(seen, 1), cm.cpu(), top5_accuracy
