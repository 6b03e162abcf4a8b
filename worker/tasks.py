"""The Celery task: a thin adapter that loads the job row, runs the engine and records the outcome."""

import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

from models import job_state
from models.broker import TRAIN_TASK
from models.settings import get_settings
from models.storage import checkpoint_path, dataset_dir, job_dir, model_path
from models.tables import Job
from worker.celery import app
from worker.engine.architectures import ARCHITECTURES, layer_groups
from worker.engine.chains import forward_steps
from worker.engine.checkpoint import Checkpointer, load_checkpoint
from worker.engine.data import Sample, image_datasets, make_loaders, split_per_class
from worker.engine.regularization import add_head_dropout
from worker.engine.trainer import INTERRUPTED, FitResult, Trainer, TrainingDiverged
from worker.engine.weights import (WeightsError, build_model, load_model_file, model_file_preprocessing,
                                   preprocessing, save_model_file)
from worker.job_config import fit_config
from worker.lease import WORKER_NAME, LeaseKeeper
from worker.reporter import DatabaseReporter
from worker.retry import in_transaction

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
    settings = get_settings()
    attempt = in_transaction(lambda s: job_state.claim(s, job_id, worker=WORKER_NAME, lease_s=settings.lease_seconds,
                                                       max_attempts=settings.max_attempts))
    if attempt is None:
        log.info("job %s is not claimable (ended, or held by a live worker); skipping this delivery", job_id)
        return
    inputs = in_transaction(lambda s: _inputs(s.get(Job, job_id)))
    with LeaseKeeper(job_id, lease_s=settings.lease_seconds) as lease:
        try:
            outcome = run(inputs, lease=lease, attempt=attempt)
        except (WeightsError, TrainingDiverged) as exc:
            finished = _finish(job_id, job_state.FAILED, f"job failed: {exc}", error=str(exc))
        except Exception as exc:
            log.exception("job %s failed", job_id)
            error = f"training failed: {type(exc).__name__}: {exc}"
            finished = _finish(job_id, job_state.FAILED, f"job failed: {error}", error=error)
        else:
            if outcome.stopped_reason == "lease_lost":
                log.warning("job %s is held by another worker now; leaving it", job_id)
                return
            if outcome.stopped_reason == "cancelled":
                finished = _finish(job_id, job_state.CANCELLED, "job cancelled", stopped_reason="cancelled")
            else:
                finished = _finish(job_id, job_state.SUCCEEDED, f"job succeeded ({outcome.stopped_reason})",
                        event_data={"epochs": outcome.epochs, "best": outcome.best}, progress=1.0,
                        stopped_reason=outcome.stopped_reason, result=outcome.result, best=outcome.best)
    if finished:  # a job another worker took over keeps its checkpoint
        checkpoint_path(job_id).unlink(missing_ok=True)


def _inputs(job: Job) -> JobInputs:
    return JobInputs(job.id, job.base_model, job.weights, job.spec, job.dataset_id)


def _finish(job_id: str, status: str, message: str, **values: Any) -> bool:
    return in_transaction(lambda s: job_state.finish(s, job_id, status, message, worker=WORKER_NAME, **values))


def run(inputs: JobInputs, *, lease: LeaseKeeper, attempt: int = 1) -> FitResult:
    """Train the job's model with the engine (resuming from its checkpoint after a crash) and write the model."""
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

    init_state, weights = None, inputs.weights
    if weights and weights.startswith("job:"):
        init_state, meta = load_model_file(model_path(weights.removeprefix("job:")))
        prep, weights = model_file_preprocessing(meta, image_size), None
    else:
        prep = preprocessing(arch.name, weights, image_size)
    model = build_model(arch, num_classes=len(classes), weights=weights, init_state=init_state, seed=config.seed,
                        allow_download=settings.allow_downloads)
    hp = inputs.spec["hyperparameters"]
    add_head_dropout(model, arch.head_layer, hp.get("dropout", 0.0))  # a hook: the model file's keys stay the same

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_set, val_set = image_datasets(train_samples, val_samples, preprocessing=prep,
                                        augment=hp.get("augment", False), hflip=hp.get("hflip", False))
    train_loader, val_loader = make_loaders(train_set, val_set,
                                            batch_size=config.batch_size, seed=config.seed,
                                            workers=settings.loader_workers, pin_memory=device.type == "cuda")
    checkpoint = checkpoint_path(inputs.job_id)
    resume = load_checkpoint(checkpoint) if attempt > 1 else None
    if attempt > 1:
        from_epoch = resume["progress"]["epoch"] if resume else 0
        in_transaction(lambda s: job_state.add_event(
            s, inputs.job_id, "resumed", f"attempt {attempt} resumes after epoch {from_epoch}",
            {"from_epoch": from_epoch, "attempt": attempt, "worker": WORKER_NAME}))
    # The reporter writes an epoch's metrics row before the checkpoint marks the epoch done.
    callbacks = [DatabaseReporter(inputs.job_id, config.planned_epochs, lease), Checkpointer(checkpoint)]
    trainer = Trainer(model=model, groups=layer_groups(model, arch), config=config, num_classes=len(classes),
                      device=device, callbacks=callbacks, steps=forward_steps(model, arch))
    outcome = trainer.fit(train_loader, val_loader, resume=resume)
    if outcome.stopped_reason not in INTERRUPTED:
        job_dir(inputs.job_id).mkdir(parents=True, exist_ok=True)
        save_model_file(trainer.model, model_path(inputs.job_id), arch=arch.name, classes=classes,
                        prep=prep)
        outcome = replace(outcome, result={**outcome.result, "classes": classes})
    return outcome
