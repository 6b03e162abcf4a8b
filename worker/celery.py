"""The Celery app: `celery -A worker worker` finds it here. One training process per GPU."""

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from models.broker import celery_config, send_training
from models.settings import get_settings

app = Celery("unfreeze", include=["worker.tasks"])
app.conf.update(celery_config(get_settings()), worker_pool="solo", worker_concurrency=1)

_reaper = None


def resend_training(job_id: str) -> None:
    send_training(app, job_id, get_settings())


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    global _reaper
    from worker.lease import Reaper

    _reaper = Reaper(get_settings(), resend_training)
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    if _reaper is not None:
        _reaper.stop()
