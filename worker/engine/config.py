"""Frozen configuration of one fit, converted once from the service's job spec."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    """One unfreezing stage: the groups it adds, its epoch budget and the head's learning rate."""

    unfreeze: tuple[str, ...]
    epochs: int
    lr: float


@dataclass(frozen=True)
class EarlyStoppingConfig:
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 2
    min_delta: float = 0.0


@dataclass(frozen=True)
class FitConfig:
    stages: tuple[Stage, ...]
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    lr_decay: float = 2.6
    train_bn: bool = False
    batch_size: int = 32
    max_epochs: int = 30
    weight_decay: float = 1e-4
    seed: int = 0

    @property
    def planned_epochs(self) -> int:
        return min(self.max_epochs, sum(s.epochs for s in self.stages))
