"""The Celery app: `celery -A worker worker` finds it here. One training process per GPU."""

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from models.broker import TRAIN_TASK, celery_config
from models.settings import get_settings

app = Celery("unfreeze", include=["worker.tasks"])
app.conf.update(celery_config(get_settings()), worker_pool="solo", worker_concurrency=1)

_reaper = None


def send_training(job_id: str) -> None:
    app.send_task(TRAIN_TASK, args=[job_id], queue=get_settings().queue)


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    global _reaper
    from worker.lease import Reaper

    _reaper = Reaper(get_settings(), send_training)
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    if _reaper is not None:
        _reaper.stop()
