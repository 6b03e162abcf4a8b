"""Sending jobs to the workers by task name (the API never imports the worker)."""

from functools import lru_cache

from celery import Celery

from models.broker import TRAIN_TASK, celery_config
from models.settings import get_settings


@lru_cache
def _producer() -> Celery:
    app = Celery("unfreeze-api")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue_training(job_id: str) -> None:
    _producer().send_task(TRAIN_TASK, args=[job_id], queue=get_settings().queue,
                          retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})
