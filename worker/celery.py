"""The Celery app: `celery -A worker worker` finds it here. One training process per GPU."""

from celery import Celery

from models.broker import celery_config
from models.settings import get_settings

app = Celery("unfreeze", include=["worker.tasks"])
app.conf.update(celery_config(get_settings()), worker_pool="solo", worker_concurrency=1)
