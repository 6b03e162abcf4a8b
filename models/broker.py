"""Celery configuration shared by the API (which only sends) and the worker (which consumes)."""

from typing import Any

from celery import Celery

from models.settings import Settings

TRAIN_TASK = "unfreeze.train"
_SEND_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
VISIBILITY_TIMEOUT_S = 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_default_queue": settings.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        # A worker that loses the broker stops its late-ack tasks instead of racing a redelivered copy.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
    }
    if settings.broker_url.startswith(("redis", "rediss")):
        # Unacknowledged messages come back after this long. Training outlives it easily; the duplicate it
        # produces is harmless because claims are conditional on the job row (and its lease).
        config["broker_transport_options"] = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    if settings.broker_url.startswith("filesystem"):
        folder = settings.broker_folder
        folder.mkdir(parents=True, exist_ok=True)
        config["broker_transport_options"] = {"data_folder_in": str(folder), "data_folder_out": str(folder),
                                              "control_folder": str(folder / "control")}
        # The filesystem transport has no fanout exchange for remote control.
        config["worker_enable_remote_control"] = False
    return config


def send_training(app: Celery, job_id: str, settings: Settings) -> None:
    """Queue the job's training task by name (the API sends new jobs, the reaper re-sends recovered ones)."""
    app.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue, retry=True, retry_policy=_SEND_RETRY)
