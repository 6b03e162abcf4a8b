"""The engine callback that writes progress to the job row, metrics and events, and reads cancellation."""

import time
from typing import Any

from models import job_state
from models.db import session_scope
from worker.engine.callbacks import Callback
from worker.engine.trainer import Trainer

CANCEL_POLL_S = 0.5


class DatabaseReporter(Callback):
    def __init__(self, job_id: str, planned_epochs: int) -> None:
        self.job_id = job_id
        self.planned_epochs = max(planned_epochs, 1)
        self._next_poll = 0.0

    def on_event(self, trainer: Trainer, type: str, message: str, data: dict[str, Any]) -> None:
        with session_scope() as session:
            job_state.add_event(session, self.job_id, type, message, data)
            if type == "stage_started":
                job_state.set_stage(session, self.job_id, data["stage"])

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        with session_scope() as session:
            job_state.record_epoch(session, self.job_id, metrics, progress=min(1.0, trainer.epoch / self.planned_epochs),
                                   best=trainer.best.as_dict())

    def on_batch_end(self, trainer: Trainer) -> None:
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + CANCEL_POLL_S
        with session_scope() as session:
            if job_state.is_cancel_requested(session, self.job_id):
                trainer.stop = "cancelled"
