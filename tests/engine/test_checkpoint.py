"""A fit resumed from an epoch's checkpoint continues exactly as the uninterrupted fit did."""

import shutil

import pytest
import torch

from worker.engine.callbacks import Callback
from worker.engine.checkpoint import Checkpointer, load_checkpoint
from worker.engine.config import EarlyStoppingConfig, Stage

TIMING = ("duration_s", "samples_per_s")


class KeepEveryCheckpoint(Callback):
    """Copies the checkpoint the Checkpointer just wrote, one file per epoch."""

    def __init__(self, path):
        self.path = path

    def on_epoch_end(self, trainer, metrics):
        shutil.copy(self.path, self.path.with_name(f"epoch{trainer.epoch}.pt"))


def comparable(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


@pytest.mark.parametrize(("stages", "options"), [
    ([Stage(("head",), 2, 1e-3), Stage(("layer4",), 3, 1e-3)], {"early_stopping": EarlyStoppingConfig(patience=1)}),
    # the auto stage unfreezes everything, so it also runs the later auto stage's epoch
    ([Stage(("head",), 1, 1e-3), Stage((), 1, 1e-3, auto=True), Stage((), 1, 1e-3, auto=True)],
     {"groups_per_stage": 5}),
], ids=["staged", "auto stage taking a later stage's epochs"])
def test_resumed_fit_matches_the_uninterrupted_one(trainer_for, new_loaders, tmp_path, stages, options):
    path = tmp_path / "checkpoint.pt"
    trainer, full = trainer_for(stages, callbacks=[Checkpointer(path), KeepEveryCheckpoint(path)], **options)
    full_result = trainer.fit(*new_loaders())
    assert full_result.epochs >= 3

    for crash_after in range(1, full_result.epochs):
        resumed_trainer, resumed = trainer_for(stages, **options)
        state = load_checkpoint(tmp_path / f"epoch{crash_after}.pt")
        result = resumed_trainer.fit(*new_loaders(), resume=state)
        assert result.epochs == full_result.epochs, f"resumed after epoch {crash_after}: same number of epochs"
        assert comparable(resumed.metrics) == comparable(full.metrics[crash_after:]), \
            f"resumed after epoch {crash_after}: the same epochs follow"
        assert result.best == full_result.best and result.stopped_reason == full_result.stopped_reason
        for key, value in trainer.model.state_dict().items():
            assert torch.equal(value, resumed_trainer.model.state_dict()[key]), f"final weights differ at {key}"


def test_checkpoint_is_written_atomically_and_loads_without_pickle(trainer_for, new_loaders, tmp_path):
    path = tmp_path / "checkpoint.pt"
    trainer, _ = trainer_for([Stage(("head",), 1, 1e-3)], callbacks=[Checkpointer(path)])
    trainer.fit(*new_loaders())
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temporary file left behind"
    state = load_checkpoint(path)
    assert state["progress"]["epoch"] == 1 and state["progress"]["unfrozen"] == ["head"]
    assert load_checkpoint(tmp_path / "missing.pt") is None
