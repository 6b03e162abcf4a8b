"""The Celery task: a thin adapter that loads the job row, runs the engine and records the outcome."""

import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

from models import job_state
from models.broker import TRAIN_TASK
from models.db import session_scope
from models.settings import get_settings
from models.storage import dataset_dir, job_dir, model_path
from models.tables import Dataset, Job
from worker.celery import app
from worker.engine.architectures import ARCHITECTURES, layer_groups
from worker.engine.config import EarlyStoppingConfig, FitConfig, Stage
from worker.engine.data import ImageFiles, Sample, eval_transform, make_loaders, split_per_class
from worker.engine.trainer import FitResult, Trainer
from worker.engine.weights import (IMAGENET_MEAN, IMAGENET_STD, WeightsError, build_model, load_model_file,
                                   save_model_file)
from worker.reporter import DatabaseReporter

log = logging.getLogger("unfreeze.worker")


@dataclass(frozen=True)
class JobInputs:
    """What the engine needs from the job and dataset rows, read in one short transaction."""

    job_id: str
    base_model: str
    weights: str | None
    spec: dict[str, Any]
    dataset_id: str


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> None:
    with session_scope() as session:
        if not job_state.claim(session, job_id):
            log.info("job %s is not queued (cancelled, or delivered twice); skipping", job_id)
            return
        job = session.get(Job, job_id)
        inputs = JobInputs(job.id, job.base_model, job.weights, job.spec, job.dataset_id)
    try:
        outcome = run(inputs)
    except WeightsError as exc:
        _finish(job_id, job_state.FAILED, f"job failed: {exc}", error=str(exc))
    except Exception as exc:
        log.exception("job %s failed", job_id)
        error = f"training failed: {type(exc).__name__}: {exc}"
        _finish(job_id, job_state.FAILED, f"job failed: {error}", error=error)
    else:
        if outcome.stopped_reason == "cancelled":
            _finish(job_id, job_state.CANCELLED, "job cancelled", stopped_reason="cancelled")
        else:
            _finish(job_id, job_state.SUCCEEDED, f"job succeeded ({outcome.stopped_reason})",
                    event_data={"epochs": outcome.epochs, "best": outcome.best}, progress=1.0,
                    stopped_reason=outcome.stopped_reason, result=outcome.result, best=outcome.best)


def _finish(job_id: str, status: str, message: str, **values: Any) -> None:
    with session_scope() as session:
        job_state.finish(session, job_id, status, message, **values)


def fit_config(spec: dict[str, Any]) -> FitConfig:
    strategy, hp = spec["strategy"], spec["hyperparameters"]
    return FitConfig(
        stages=tuple(Stage(tuple(s["unfreeze"]), s["epochs"], s["lr"]) for s in strategy["plan"]),
        early_stopping=EarlyStoppingConfig(**spec["early_stopping"]),
        lr_decay=strategy["lr_decay"], train_bn=strategy["train_bn"], batch_size=hp["batch_size"],
        max_epochs=hp["max_epochs"], weight_decay=hp["weight_decay"], seed=spec["seed"],
    )


def run(inputs: JobInputs) -> FitResult:
    """Train the job's model with the engine and write the best model file."""
    settings = get_settings()
    arch = ARCHITECTURES[inputs.base_model]
    config = fit_config(inputs.spec)
    image_size = inputs.spec["hyperparameters"]["image_size"]

    root = dataset_dir(inputs.dataset_id)
    manifest = json.loads((root / "manifest.json").read_text())
    classes: list[str] = manifest["classes"]
    samples = {split: [Sample(root / s["path"], classes.index(s["class"])) for s in manifest["samples"]
                       if s["split"] == split] for split in ("train", "val")}
    if samples["val"]:
        train_samples, val_samples = samples["train"], samples["val"]
    else:
        train_samples, val_samples = split_per_class(samples["train"], inputs.spec["validation_split"], config.seed)

    init_state, mean, std, weights = None, IMAGENET_MEAN, IMAGENET_STD, inputs.weights
    if weights and weights.startswith("job:"):
        init_state, meta = load_model_file(model_path(weights.removeprefix("job:")))
        mean, std, weights = tuple(json.loads(meta["mean"])), tuple(json.loads(meta["std"])), None
    model = build_model(arch, num_classes=len(classes), weights=weights, init_state=init_state, seed=config.seed,
                        allow_download=settings.allow_downloads)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transform = eval_transform(image_size, mean, std)
    train_loader, val_loader = make_loaders(ImageFiles(train_samples, transform), ImageFiles(val_samples, transform),
                                            batch_size=config.batch_size, seed=config.seed,
                                            workers=settings.loader_workers, pin_memory=device.type == "cuda")
    trainer = Trainer(model=model, groups=layer_groups(model, arch), config=config, num_classes=len(classes),
                      device=device, callbacks=[DatabaseReporter(inputs.job_id, config.planned_epochs)])
    outcome = trainer.fit(train_loader, val_loader)
    if outcome.stopped_reason != "cancelled":
        job_dir(inputs.job_id).mkdir(parents=True, exist_ok=True)
        save_model_file(trainer.model, model_path(inputs.job_id), arch=arch.name, classes=classes,
                        image_size=image_size, mean=mean, std=std)
        outcome = replace(outcome, result={**outcome.result, "classes": classes})
    return outcome
