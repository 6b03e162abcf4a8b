"""The job request as clients send it, validated at the edge; defaults are the documented ones."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Monitor = Literal["val_loss", "val_accuracy", "val_f1"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageSpec(_Strict):
    unfreeze: list[str] = Field(min_length=1, description="Groups this stage adds to the trainable set.")
    epochs: int | None = Field(None, gt=0, le=10_000, description="Defaults to strategy.epochs_per_stage.")
    lr: float | None = Field(None, gt=0, le=10, description="Head learning rate; defaults to strategy.lr.")


StrategyType = Literal["gradual", "explicit", "full", "head_only", "lp_ft", "chain_thaw", "auto"]
Schedule = Literal["constant", "cosine", "one_cycle", "slanted_triangular"]


class Strategy(_Strict):
    type: StrategyType = "gradual"
    epochs_per_stage: int = Field(3, gt=0, le=10_000)
    groups_per_stage: int = Field(2, gt=0)
    lr: float = Field(1e-3, gt=0, le=10)
    lr_decay: float = Field(1.5, ge=1, le=100, description="Group k places below the head trains at lr / lr_decay**k.")
    train_bn: bool = False
    stages: list[StageSpec] | None = None
    schedule: Schedule = Field("constant", description="Learning-rate schedule within each stage.")
    warmup_frac: float = Field(0.1, ge=0, lt=1, description="Linear warm-up share of a stage (cosine).")
    finetune_lr: float | None = Field(None, gt=0, le=10, description="lp_ft: head rate of the full stage; "
                                      "defaults to lr / 10.")

    @model_validator(mode="after")
    def _stages_match_type(self) -> "Strategy":
        if self.type == "explicit" and not self.stages:
            raise ValueError("strategy.type 'explicit' needs strategy.stages, a list of {unfreeze, epochs, lr}")
        if self.type != "explicit" and self.stages:
            raise ValueError(f"strategy.stages is only used with type 'explicit', not '{self.type}'")
        return self


class EarlyStopping(_Strict):
    monitor: Monitor = "val_loss"
    mode: Literal["min", "max"] | None = Field(None, description="Defaults to min for val_loss, max otherwise.")
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _default_mode(self) -> "EarlyStopping":
        if self.mode is None:
            self.mode = "min" if self.monitor == "val_loss" else "max"
        return self


class Hyperparameters(_Strict):
    batch_size: int = Field(32, ge=2, le=4096, description="At least 2: BatchNorm trains on batch statistics.")
    image_size: int | None = Field(None, ge=16, le=1024, description="Defaults to the architecture's native size.")
    max_epochs: int = Field(30, gt=0, le=10_000)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only.")
    nesterov: bool = Field(True, description="sgd only.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the head's input.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    augment: bool = Field(False, description="Random resized crops (scale 0.7-1) on training images.")
    hflip: bool = Field(False, description="Random horizontal flips on training images (not for digits or text).")


class JobRequest(_Strict):
    dataset_id: str
    base_model: str
    weights: str | None = "DEFAULT"
    strategy: Strategy = Field(default_factory=Strategy)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    validation_split: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)
