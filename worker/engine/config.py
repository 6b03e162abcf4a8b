"""Frozen configuration of one fit, converted once from the service's job spec.

Defaults equal the job request's (models/spec.py), for anyone driving the engine directly.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    """One unfreezing stage: the groups it adds, its epoch budget and the rate of its top trained group.

    `train` is the exact set trained in the stage (None: every group unfrozen so far); an `auto` stage
    picks the groups it adds when it starts, from their relative gradient norms.
    """

    unfreeze: tuple[str, ...]
    epochs: int
    lr: float
    train: tuple[str, ...] | None = None
    auto: bool = False


@dataclass(frozen=True)
class EarlyStoppingConfig:
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    stop_unfreezing: bool = True  # end the plan when a whole stage fails to improve (not for chain-thaw)


@dataclass(frozen=True)
class FitConfig:
    stages: tuple[Stage, ...]
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    lr_decay: float = 1.5
    train_bn: bool = False
    batch_size: int = 32
    max_epochs: int = 30
    weight_decay: float = 1e-4
    seed: int = 0
    schedule: str = "constant"  # per-stage learning-rate schedule, see schedules.SCHEDULES
    warmup_frac: float = 0.1  # cosine: the share of each stage's steps spent warming up
    optimizer: str = "adamw"  # or "sgd"
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only (and only with momentum > 0)
    label_smoothing: float = 0.0  # training loss only
    grad_clip: float | None = None  # max total gradient norm of the trainable parameters
    groups_per_stage: int = 2  # auto: how many top-ranked groups each decision unfreezes down to
    probe_batches: int = 4  # auto: training batches over which gradient norms are measured

    @property
    def planned_epochs(self) -> int:
        return min(self.max_epochs, sum(s.epochs for s in self.stages))
