"""The stored job spec (normalized request plus resolved plan) as the engine's frozen configuration."""

from typing import Any

from worker.engine.config import EarlyStoppingConfig, FitConfig, Stage


def fit_config(spec: dict[str, Any]) -> FitConfig:
    strategy, hp = spec["strategy"], spec["hyperparameters"]
    return FitConfig(
        stages=tuple(Stage(tuple(s["unfreeze"]), s["epochs"], s["lr"],
                           train=None if s.get("train") is None else tuple(s["train"]), auto=s.get("auto", False))
                     for s in strategy["plan"]),
        early_stopping=EarlyStoppingConfig(**spec["early_stopping"],
                                           stop_unfreezing=strategy["type"] != "chain_thaw"),
        groups_per_stage=strategy["groups_per_stage"],
        lr_decay=strategy["lr_decay"], train_bn=strategy["train_bn"], batch_size=hp["batch_size"],
        max_epochs=hp["max_epochs"], weight_decay=hp["weight_decay"], seed=spec["seed"],
        schedule=strategy.get("schedule", "constant"), warmup_frac=strategy.get("warmup_frac", 0.1),
        optimizer=hp.get("optimizer", "adamw"), momentum=hp.get("momentum", 0.9), nesterov=hp.get("nesterov", True),
        label_smoothing=hp.get("label_smoothing", 0.0), grad_clip=hp.get("grad_clip"),
    )
