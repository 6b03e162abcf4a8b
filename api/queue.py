"""Sending jobs to the workers by task name (the API never imports the worker)."""

from functools import lru_cache

from celery import Celery

from models.broker import celery_config, send_training
from models.settings import get_settings


@lru_cache
def _producer() -> Celery:
    app = Celery("unfreeze-api")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue_training(job_id: str) -> None:
    send_training(_producer(), job_id, get_settings())
