"""Training policies as small callbacks around the loop: best weights and early stopping.

The trainer calls the hooks in `HOOKS`, in list order; a callback changes the run only through the
trainer's flags (`end_stage`, `stop`) and reports through `trainer.emit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from worker.engine.config import EarlyStoppingConfig

if TYPE_CHECKING:
    from worker.engine.trainer import Trainer

HOOKS = ("on_fit_start", "on_stage_start", "on_batch_end", "on_epoch_end", "on_stage_end", "on_fit_end", "on_event")


class Callback:
    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_stage_start(self, trainer: Trainer) -> None: ...
    def on_batch_end(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...
    def on_stage_end(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def on_event(self, trainer: Trainer, type: str, message: str, data: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def improves(value: float, reference: float | None, *, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `reference` by more than `min_delta` in direction `mode`."""
    if reference is None:
        return True
    return value < reference - min_delta if mode == "min" else value > reference + min_delta


def stage_should_stop(wait: int, patience: int) -> tuple[bool, str | None]:
    return (True, "early_stopped") if wait >= patience else (False, None)


def unfreezing_should_stop(*, stage_index: int, improved_in_stage: bool, stages_left: int) -> tuple[bool, str | None]:
    """Stop unfreezing when a later stage failed to beat the stages before it."""
    if stage_index > 0 and stages_left > 0 and not improved_in_stage:
        return True, "no_improvement"
    return False, None


class BestWeights(Callback):
    """Keeps a copy of the best weights and restores them at the end of every stage."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.best.epoch == trainer.epoch:
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}

    def on_stage_end(self, trainer: Trainer) -> None:
        if self.state is None:
            return
        trainer.model.load_state_dict(self.state)
        best = trainer.best
        trainer.emit("best_restored", f"restored the weights of epoch {best.epoch} "
                     f"({best.monitor} {best.value:.4f}, stage {best.stage})", **best.as_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state["state"]


class EarlyStopping(Callback):
    """Ends a stage after `patience` epochs without an improvement of `min_delta`; stops unfreezing when a
    whole stage fails to improve on the stages before it."""

    def __init__(self, config: EarlyStoppingConfig) -> None:
        self.config = config
        self.reference: float | None = None
        self.wait = 0
        self.improved_in_stage = False

    def on_stage_start(self, trainer: Trainer) -> None:
        self.wait = 0
        self.improved_in_stage = False

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        c = self.config
        value = metrics[c.monitor]
        if improves(value, self.reference, mode=c.mode, min_delta=c.min_delta):
            self.reference, self.wait, self.improved_in_stage = value, 0, True
        else:
            self.wait += 1
        stop, reason = stage_should_stop(self.wait, c.patience)
        if stop:
            trainer.end_stage = reason
            trainer.emit("early_stopped", f"{c.monitor} did not improve by more than {c.min_delta} for {c.patience} "
                         f"epoch(s); stage {trainer.stage_number} ends at epoch {trainer.epoch}",
                         stage=trainer.stage_number, epoch=trainer.epoch, monitor=c.monitor,
                         best=self.reference, patience=c.patience)

    def on_stage_end(self, trainer: Trainer) -> None:
        stop, reason = unfreezing_should_stop(stage_index=trainer.stage_index, improved_in_stage=self.improved_in_stage,
                                              stages_left=trainer.stages_left)
        if stop and self.config.stop_unfreezing and trainer.stop is None:
            trainer.stop = reason
            trainer.emit("unfreezing_stopped", f"stage {trainer.stage_number} did not improve {self.config.monitor} "
                         f"on the stages before it; unfreezing stops and the best model is kept",
                         stage=trainer.stage_number, monitor=self.config.monitor, best=self.reference)

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "wait": self.wait, "improved_in_stage": self.improved_in_stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference, self.wait, self.improved_in_stage = state["reference"], state["wait"], state["improved_in_stage"]
