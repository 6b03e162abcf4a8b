"""Staged unfreezing: a short loop over stages and epochs, with policies as callbacks."""

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from worker.engine.architectures import LayerGroup
from worker.engine.callbacks import BestWeights, Callback, EarlyStopping, improves
from worker.engine.config import FitConfig, Stage
from worker.engine.freezing import group_lrs, set_train_mode, unfreeze
from worker.engine.loop import evaluate, train_one_epoch
from worker.engine.metrics import summarize


@dataclass
class Best:
    """The best monitored value so far, and where it came from (strictly better wins, as checkpoints do)."""

    monitor: str
    mode: str
    value: float | None = None
    stage: int | None = None
    epoch: int | None = None

    def update(self, value: float, *, stage: int, epoch: int) -> bool:
        if not improves(value, self.value, mode=self.mode):
            return False
        self.value, self.stage, self.epoch = value, stage, epoch
        return True

    def as_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "value": self.value, "stage": self.stage, "epoch": self.epoch}


@dataclass(frozen=True)
class FitResult:
    stopped_reason: str
    epochs: int
    best: dict[str, Any]
    result: dict[str, Any] | None  # validation metrics of the final (best) model; None when cancelled


def precision_context(device: torch.device) -> Callable[[], AbstractContextManager]:
    """bf16 autocast on CUDA, nothing elsewhere: the loop never branches on the device."""
    if device.type == "cuda":
        return partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16)
    return nullcontext


class Trainer:
    def __init__(self, *, model: nn.Module, groups: Sequence[LayerGroup], config: FitConfig, num_classes: int,
                 device: torch.device, callbacks: Sequence[Callback] = ()) -> None:
        self.model = model.to(device)
        self.groups = list(groups)
        self.config = config
        self.num_classes = num_classes
        self.device = device
        self.autocast = precision_context(device)
        # Policies first: given callbacks see each stage's end after the best weights are back.
        self.callbacks: list[Callback] = [BestWeights(), EarlyStopping(config.early_stopping), *callbacks]
        es = config.early_stopping
        self.best = Best(monitor=es.monitor, mode=es.mode)
        self.stage_index = -1
        self.epoch = 0
        self.unfrozen: list[str] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.end_stage: str | None = None  # set by a callback to end the current stage
        self.stop: str | None = None  # set by a callback (or the budget) to end the fit, with the reason

    @property
    def stage_number(self) -> int:
        return self.stage_index + 1

    @property
    def stages_left(self) -> int:
        return len(self.config.stages) - self.stage_number

    def emit(self, type: str, message: str, **data: Any) -> None:
        self._call("on_event", type, message, data)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _after_batch(self) -> bool:
        self._call("on_batch_end")
        return self.stop == "cancelled"

    def fit(self, train_loader: DataLoader, val_loader: DataLoader) -> FitResult:
        torch.manual_seed(self.config.seed)  # dropout and other in-model randomness
        self._call("on_fit_start")
        for index, stage in enumerate(self.config.stages):
            if self.epoch >= self.config.max_epochs:
                self.stop = self.stop or "max_epochs"
            if self.stop:
                break
            self._run_stage(index, stage, train_loader, val_loader)
        self.stop = self.stop or "completed"
        result = None
        if self.stop != "cancelled":
            val_loss, cm = evaluate(self.model, val_loader, num_classes=self.num_classes,
                                    device=self.device, autocast=self.autocast)
            result = {"val_loss": val_loss, **_prefixed(summarize(cm)), "confusion_matrix": cm.tolist()}
        self._call("on_fit_end")
        return FitResult(self.stop, self.epoch, self.best.as_dict(), result)

    def _run_stage(self, index: int, stage: Stage, train_loader: DataLoader, val_loader: DataLoader) -> None:
        c = self.config
        self.stage_index, self.end_stage = index, None
        self.unfrozen += [g for g in stage.unfreeze if g not in self.unfrozen]
        params = unfreeze(self.groups, self.unfrozen, lr=stage.lr, lr_decay=c.lr_decay,
                          weight_decay=c.weight_decay, train_bn=c.train_bn)
        self.optimizer = torch.optim.AdamW(params)
        self.emit("stage_started", f"stage {self.stage_number}/{len(c.stages)}: unfreezing {', '.join(stage.unfreeze)}; "
                  f"training {', '.join(self.unfrozen)}", stage=self.stage_number, unfreeze=list(stage.unfreeze),
                  unfrozen_groups=list(self.unfrozen), epochs=stage.epochs, lr=group_lrs(self.optimizer))
        self._call("on_stage_start")
        for _ in range(stage.epochs):
            if self.epoch >= c.max_epochs:
                self.stop = self.stop or "max_epochs"
                break
            started = time.perf_counter()
            set_train_mode(self.model, self.groups, self.unfrozen, train_bn=c.train_bn)
            stats = train_one_epoch(self.model, train_loader, self.optimizer, device=self.device,
                                    autocast=self.autocast, should_stop=self._after_batch)
            if stats.interrupted:
                return
            val_loss, cm = evaluate(self.model, val_loader, num_classes=self.num_classes,
                                    device=self.device, autocast=self.autocast)
            self.epoch += 1
            summary = summarize(cm)
            metrics = {
                "stage": self.stage_number, "epoch": self.epoch, "unfrozen_groups": list(self.unfrozen),
                "lr": group_lrs(self.optimizer), "train_loss": stats.loss, "train_accuracy": stats.accuracy,
                "val_loss": val_loss, "val_accuracy": summary["accuracy"], "val_precision": summary["precision"],
                "val_recall": summary["recall"], "val_f1": summary["f1"],
                "duration_s": time.perf_counter() - started, "samples_per_s": stats.samples / max(stats.seconds, 1e-9),
            }
            self.best.update(metrics[c.early_stopping.monitor], stage=self.stage_number, epoch=self.epoch)
            self._call("on_epoch_end", metrics)
            if self.end_stage or self.stop:
                break
        self._call("on_stage_end")


def _prefixed(summary: dict[str, Any]) -> dict[str, Any]:
    return {"val_accuracy": summary["accuracy"], "val_precision": summary["precision"],
            "val_recall": summary["recall"], "val_f1": summary["f1"], "per_class": summary["per_class"]}
