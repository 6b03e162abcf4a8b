"""Staged unfreezing: a short loop over stages and epochs, with policies as callbacks."""

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from worker.engine.architectures import LayerGroup
from worker.engine.auto import pick, relative_grad_norms, suffix_down_to
from worker.engine.callbacks import BestWeights, Callback, EarlyStopping, improves
from worker.engine.chains import Step, split
from worker.engine.config import FitConfig, Stage
from worker.engine.freezing import group_lrs, set_train_mode, unfreeze
from worker.engine.loop import evaluate, train_one_epoch
from worker.engine.metrics import summarize
from worker.engine.optim import make_optimizer
from worker.engine.schedules import make_scheduler


class TrainingDiverged(Exception):
    """The loss stopped being a number; the message says what to change."""


# Stop reasons that end a fit mid-epoch, with no final model: a user's cancel, or another worker owning the job.
INTERRUPTED = ("cancelled", "lease_lost")


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
                 device: torch.device, callbacks: Sequence[Callback] = (), steps: Sequence[Step] | None = None) -> None:
        """`steps` is the model's forward as a chain (`chains.forward_steps`), so each stage runs its frozen prefix
        without autograd; without it the model runs whole."""
        self.model = model.to(device)
        self.groups = list(groups)
        self.steps = list(steps) if steps is not None else [Step(type(model).__name__, self.model, (self.model,))]
        self.config = config
        self.num_classes = num_classes
        self.device = device
        self.autocast = precision_context(device)
        # Policies first: given callbacks see each stage's end after the best weights are back.
        self.policies: list[Callback] = [BestWeights(), EarlyStopping(config.early_stopping)]
        self.callbacks: list[Callback] = [*self.policies, *callbacks]
        es = config.early_stopping
        self.best = Best(monitor=es.monitor, mode=es.mode)
        self.stage_index = -1
        self.epoch = 0
        self.epoch_in_stage = 0
        self.unfrozen: list[str] = []  # every group unfrozen so far, in the order they were
        self.training: list[str] = []  # the groups the current stage trains
        self._train_loader: DataLoader | None = None
        self._resumed_optimizer: dict | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._resumed_scheduler: dict | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # the stage's per-batch schedule
        self.end_stage: str | None = None  # set by a callback to end the current stage
        self.stop: str | None = None  # set by a callback (or the budget) to end the fit, with the reason

    @property
    def stage_number(self) -> int:
        return self.stage_index + 1

    @property
    def stages_left(self) -> int:
        """Later stages that still have something to do (auto stages have nothing once every group trains)."""
        return 0 if self._only_empty_auto_stages_after(self.stage_index) else len(self.config.stages) - self.stage_number

    def _only_empty_auto_stages_after(self, index: int) -> bool:
        return len(self.unfrozen) == len(self.groups) and all(s.auto for s in self.config.stages[index + 1:])

    def emit(self, type: str, message: str, **data: Any) -> None:
        self._call("on_event", type, message, data)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _decide(self, stage: Stage, train_loader: DataLoader) -> list[str]:
        """Auto stages: measure the frozen groups' relative gradient norms; unfreeze down to the highest."""
        names = [g.name for g in self.groups]
        frozen = [name for name in names if name not in self.unfrozen]
        if not frozen:
            return []
        scores = relative_grad_norms(self.model, self.groups, frozen, train_loader, batches=self.config.probe_batches,
                                     device=self.device, autocast=self.autocast)
        chosen = pick(scores, self.config.groups_per_stage)
        added = suffix_down_to(chosen, frozen=frozen, order=names)
        self.emit("unfreeze_decision", f"stage {self.stage_number}: unfreezing {', '.join(added)}; the highest "
                  f"relative gradient norms of {len(frozen)} frozen group(s) are "
                  f"{', '.join(f'{n} {scores[n]:.3g}' for n in chosen)}, and the groups above them train too",
                  stage=self.stage_number, chosen=chosen, unfreeze=added, relative_grad_norm=scores,
                  probe_batches=self.config.probe_batches)
        return added

    def _stage_epochs(self, index: int, stage: Stage) -> int:
        """A stage's epoch budget. An auto stage that leaves nothing frozen also takes the epochs of the auto
        stages after it, which would have nothing to unfreeze."""
        if stage.auto and self._only_empty_auto_stages_after(index):
            return stage.epochs + sum(s.epochs for s in self.config.stages[index + 1:])
        return stage.epochs

    def _after_batch(self) -> bool:
        self._call("on_batch_end")
        return self.stop in INTERRUPTED

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this fit after the last finished epoch (see `fit(resume=...)`)."""
        loader_gen = getattr(self._train_loader, "generator", None)
        return {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "progress": {"stage_index": self.stage_index, "epoch": self.epoch, "epoch_in_stage": self.epoch_in_stage,
                         "unfrozen": list(self.unfrozen), "training": list(self.training),
                         "end_stage": self.end_stage, "stop": self.stop},
            "best": self.best.as_dict(),
            "policies": [cb.state_dict() for cb in self.policies],
            "rng": {"torch": torch.get_rng_state(), "loader": loader_gen.get_state() if loader_gen else None,
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        p = state["progress"]
        self.stage_index, self.epoch, self.epoch_in_stage = p["stage_index"], p["epoch"], p["epoch_in_stage"]
        self.unfrozen, self.training = list(p["unfrozen"]), list(p["training"])
        self.end_stage, self.stop = p["end_stage"], p["stop"]
        self.best.value, self.best.stage, self.best.epoch = (state["best"][k] for k in ("value", "stage", "epoch"))
        for cb, cb_state in zip(self.policies, state["policies"], strict=True):
            cb.load_state_dict(cb_state)
        self._resumed_optimizer = state["optimizer"]
        self._resumed_scheduler = state.get("scheduler")
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if state["rng"]["loader"] is not None and getattr(self._train_loader, "generator", None) is not None:
            self._train_loader.generator.set_state(state["rng"]["loader"])

    def fit(self, train_loader: DataLoader, val_loader: DataLoader, *, resume: dict[str, Any] | None = None) -> FitResult:
        """Run the plan; with `resume` (a `state_dict()` saved at an epoch end), continue from there."""
        torch.manual_seed(self.config.seed)  # dropout and other in-model randomness
        self._train_loader = train_loader
        if resume is not None:
            self._load_state_dict(resume)
        first_stage = max(self.stage_index, 0)
        self._call("on_fit_start")
        for index, stage in enumerate(self.config.stages):
            if index < first_stage:
                continue
            resuming = resume is not None and index == first_stage
            if not resuming and self.epoch >= self.config.max_epochs:
                self.stop = self.stop or "max_epochs"
            if self.stop:
                break
            self._run_stage(index, stage, train_loader, val_loader, resuming=resuming)
        self.stop = self.stop or "completed"
        result = None
        if self.stop not in INTERRUPTED:
            val_loss, cm, top5 = evaluate(self.model, val_loader, num_classes=self.num_classes,
                                          device=self.device, autocast=self.autocast)
            result = {"val_loss": val_loss, **_prefixed(summarize(cm)),
                      **({"val_top5_accuracy": top5} if top5 is not None else {}), "confusion_matrix": cm.tolist()}
        self._call("on_fit_end")
        return FitResult(self.stop, self.epoch, self.best.as_dict(), result)

    def _run_stage(self, index: int, stage: Stage, train_loader: DataLoader, val_loader: DataLoader, *,
                   resuming: bool = False) -> None:
        c = self.config
        if not resuming:
            self.stage_index, self.end_stage, self.epoch_in_stage = index, None, 0
            added = self._decide(stage, train_loader) if stage.auto else list(stage.unfreeze)
            if stage.auto and not added:
                return  # nothing left to unfreeze
            self.unfrozen += [g for g in added if g not in self.unfrozen]
            self.training = list(stage.train) if stage.train is not None else list(self.unfrozen)
            stage = replace(stage, unfreeze=tuple(added))
        stage = replace(stage, epochs=self._stage_epochs(index, stage))
        params = unfreeze(self.groups, self.training, lr=stage.lr, lr_decay=c.lr_decay,
                          weight_decay=c.weight_decay, train_bn=c.train_bn)
        self.optimizer = make_optimizer(c.optimizer, params, momentum=c.momentum, nesterov=c.nesterov)
        # Built before the saved states load: the scheduler sets the rates, then both states restore them.
        self.scheduler = make_scheduler(self.optimizer, c.schedule, total_steps=stage.epochs * len(train_loader),
                                        warmup_frac=c.warmup_frac)
        if resuming:
            self.optimizer.load_state_dict(self._resumed_optimizer)
            if self._resumed_scheduler is not None:
                self.scheduler.load_state_dict(self._resumed_scheduler)
        else:
            self.emit("stage_started", f"stage {self.stage_number}/{len(c.stages)}: unfreezing "
                      f"{', '.join(stage.unfreeze) or 'nothing new'}; training {', '.join(self.training)}",
                      stage=self.stage_number, unfreeze=list(stage.unfreeze), unfrozen_groups=list(self.training),
                      epochs=stage.epochs,
                      lr={g["name"]: g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups})
            self._call("on_stage_start")
        forward = split(self.steps)
        while self.epoch_in_stage < stage.epochs and not (self.end_stage or self.stop):
            if self.epoch >= c.max_epochs:
                self.stop = self.stop or "max_epochs"
                break
            started = time.perf_counter()
            set_train_mode(self.model, self.groups, self.training, train_bn=c.train_bn)
            stats = train_one_epoch(forward, train_loader, self.optimizer, device=self.device,
                                    autocast=self.autocast, should_stop=self._after_batch, scheduler=self.scheduler,
                                    label_smoothing=c.label_smoothing, grad_clip=c.grad_clip)
            if stats.interrupted:
                return
            val_loss, cm, _ = evaluate(self.model, val_loader, num_classes=self.num_classes,
                                       device=self.device, autocast=self.autocast)
            if not (math.isfinite(stats.loss) and math.isfinite(val_loss)):
                raise TrainingDiverged(f"the loss became {stats.loss if not math.isfinite(stats.loss) else val_loss} "
                                       f"in epoch {self.epoch + 1} (stage {self.stage_number}); lower strategy.lr "
                                       "or set hyperparameters.grad_clip")
            self.epoch += 1
            self.epoch_in_stage += 1
            summary = summarize(cm)
            metrics = {
                "stage": self.stage_number, "epoch": self.epoch, "unfrozen_groups": list(self.training),
                "lr": group_lrs(self.optimizer), "train_loss": stats.loss, "train_accuracy": stats.accuracy,
                "val_loss": val_loss, "val_accuracy": summary["accuracy"], "val_precision": summary["precision"],
                "val_recall": summary["recall"], "val_f1": summary["f1"],
                "duration_s": time.perf_counter() - started, "samples_per_s": stats.samples / max(stats.seconds, 1e-9),
            }
            self.best.update(metrics[c.early_stopping.monitor], stage=self.stage_number, epoch=self.epoch)
            self._call("on_epoch_end", metrics)
        self._call("on_stage_end")


def _prefixed(summary: dict[str, Any]) -> dict[str, Any]:
    return {"val_accuracy": summary["accuracy"], "val_precision": summary["precision"],
            "val_recall": summary["recall"], "val_f1": summary["f1"], "per_class": summary["per_class"]}
