"""The engine callback that writes progress to the job row, metrics and events, and turns what the lease
keeper learned (a cancel request, a lost lease) into the trainer's stop flag at batch boundaries."""

from typing import Any

from models import job_state
from worker.engine.callbacks import Callback
from worker.engine.trainer import Trainer
from worker.lease import WORKER_NAME, LeaseKeeper
from worker.retry import in_transaction


class DatabaseReporter(Callback):
    def __init__(self, job_id: str, planned_epochs: int, lease: LeaseKeeper) -> None:
        self.job_id = job_id
        self.planned_epochs = max(planned_epochs, 1)
        self.lease = lease

    def on_event(self, trainer: Trainer, type: str, message: str, data: dict[str, Any]) -> None:
        def write(session) -> None:
            job_state.add_event(session, self.job_id, type, message, data)
            if type == "stage_started":
                job_state.set_stage(session, self.job_id, data["stage"], worker=WORKER_NAME)

        in_transaction(write)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        progress = min(1.0, trainer.epoch / self.planned_epochs)
        in_transaction(lambda s: job_state.record_epoch(s, self.job_id, metrics, worker=WORKER_NAME,
                                                        progress=progress, best=trainer.best.as_dict()))

    def on_batch_end(self, trainer: Trainer) -> None:
        if self.lease.lost.is_set():
            trainer.stop = "lease_lost"
        elif self.lease.cancel_requested.is_set():
            trainer.stop = "cancelled"
