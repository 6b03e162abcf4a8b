"""Per-stage learning-rate schedules: the factor functions, and every group's rate through a real 2-stage fit."""

import shutil
from collections.abc import Sequence

import pytest
import torch

from worker.engine.architectures import ARCHITECTURES, layer_groups
from worker.engine.callbacks import Callback
from worker.engine.checkpoint import Checkpointer, load_checkpoint
from worker.engine.config import EarlyStoppingConfig, FitConfig, Stage
from worker.engine.schedules import SCHEDULES, cosine, one_cycle, schedule_factor, slanted_triangular
from worker.engine.trainer import Trainer
from worker.engine.weights import build_model

RESNET18 = ARCHITECTURES["resnet18"]
NUM_CLASSES = 3  # conftest's digits 0-2: 90 training images
BATCH_SIZE = 32  # 3 batches an epoch
LR = 1e-2
LR_DECAY = 2.6
TIMING = ("duration_s", "samples_per_s")
ONE_CYCLE_MIN = 1 / 25 / 1e4


@pytest.mark.parametrize(("kind", "step", "expected"), [
    ("constant", 0, 1.0), ("constant", 50, 1.0), ("constant", 100, 1.0),
    ("cosine", 0, 0.0),  # warm-up starts from 0 …
    ("cosine", 5, 0.5),  # … rises linearly …
    ("cosine", 10, 1.0),  # … to 1 at the end of the warm-up (10% of 100 steps)
    ("cosine", 55, 0.5),  # halfway through the cosine
    ("cosine", 100, 0.0), ("cosine", 200, 0.0),
    ("one_cycle", 0, 1 / 25),  # max / div_factor
    ("one_cycle", 29, 1.0),  # the peak, at pct_start × total - 1
    ("one_cycle", 64, (1 + ONE_CYCLE_MIN) / 2),  # halfway down
    ("one_cycle", 99, ONE_CYCLE_MIN),  # initial / final_div_factor at the last step
    ("one_cycle", 100, ONE_CYCLE_MIN),
    ("slanted_triangular", 0, 1 / 32),  # lr / ratio
    ("slanted_triangular", 5, 16.5 / 32),  # halfway up
    ("slanted_triangular", 10, 1.0),  # the peak, at cut = cut_frac × total
    ("slanted_triangular", 55, 16.5 / 32),  # halfway down
    ("slanted_triangular", 100, 1 / 32),
], ids=lambda v: str(v))
def test_factor_at_characteristic_steps(kind, step, expected):
    factor = schedule_factor(kind, total_steps=100, warmup_frac=0.1)

    assert factor(step) == pytest.approx(expected, abs=1e-12), f"{kind} at step {step} of 100"


@pytest.mark.parametrize("total", [1, 2, 6, 17, 100], ids=lambda t: f"{t} steps")
def test_one_cycle_matches_torch_one_cycle_lr(total):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.5, total_steps=total, cycle_momentum=False)
    for step in range(total):
        assert 0.5 * one_cycle(step, total) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), \
            f"step {step} of {total}"
        optimizer.step()
        if step < total - 1:
            reference.step()


def test_warmup_frac_zero_is_a_plain_cosine_and_short_stages_stay_in_range():
    assert cosine(0, 10, warmup_frac=0.0) == 1.0, "no warm-up: the cosine starts at 1"
    assert cosine(5, 10, warmup_frac=0.0) == pytest.approx(0.5)
    for total in (1, 2, 3, 7):
        for step in range(total + 1):
            for kind in SCHEDULES:
                assert 0.0 <= schedule_factor(kind, total_steps=total)(step) <= 1.0, f"{kind} {step}/{total}"
    assert slanted_triangular(6, 6) == pytest.approx(1 / 32), "a stage shorter than 1/cut_frac steps still ends low"


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
        schedule_factor("linear", total_steps=10)


def make_trainer(stages: Sequence[Stage], *, callbacks: Sequence[Callback] = (), early_stopping=None,
                 **options) -> Trainer:
    """A CPU Trainer of a fresh resnet18 with FitConfig `options` (schedule, optimizer, …)."""
    model = build_model(RESNET18, num_classes=NUM_CLASSES, weights=None, seed=0)
    config = FitConfig(stages=tuple(stages), early_stopping=early_stopping or EarlyStoppingConfig(patience=10),
                       lr_decay=LR_DECAY, batch_size=BATCH_SIZE, seed=0, **options)
    return Trainer(model=model, groups=layer_groups(model, RESNET18), config=config, num_classes=NUM_CLASSES,
                   device=torch.device("cpu"), callbacks=callbacks)


class RateRecorder(Callback):
    """Every optimizer group's (name, lr) at each stage's start (step 0) and after each batch (step 1, 2, …)."""

    def __init__(self) -> None:
        self.rates: list[tuple[int, int, list[tuple[str, float]]]] = []  # (stage, step in stage, groups)
        self.holds_trainable: dict[int, bool] = {}
        self.step = 0

    def _record(self, trainer: Trainer) -> None:
        self.rates.append((trainer.stage_number, self.step,
                           [(g["name"], g["lr"]) for g in trainer.optimizer.param_groups]))

    def on_stage_start(self, trainer: Trainer) -> None:
        self.step = 0
        in_optimizer = [id(p) for g in trainer.optimizer.param_groups for p in g["params"]]
        trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
        self.holds_trainable[trainer.stage_number] = (len(in_optimizer) == len(set(in_optimizer))
                                                      and set(in_optimizer) == trainable)
        self._record(trainer)

    def on_batch_end(self, trainer: Trainer) -> None:
        self.step += 1
        self._record(trainer)


class EpochRates(Callback):
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        self.rows.append(metrics)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_groups_rate_follows_the_schedule_through_a_two_stage_fit(new_loaders, schedule):
    stages = [Stage(("head",), 2, LR), Stage(("layer4",), 2, LR / 2)]
    recorder, epochs = RateRecorder(), EpochRates()
    trainer = make_trainer(stages, callbacks=[recorder, epochs], schedule=schedule, warmup_frac=0.3)
    train_loader, val_loader = new_loaders()
    steps_per_stage = 2 * len(train_loader)  # 2 epochs of 3 batches

    trainer.fit(train_loader, val_loader)

    assert recorder.holds_trainable == {1: True, 2: True}, \
        "each stage's optimizer holds exactly the parameters trainable in that stage"
    trained = {1: {"head"}, 2: {"head", "layer4"}}
    depth = {"head": 0, "layer4": 1}  # places below the head
    factor = schedule_factor(schedule, total_steps=steps_per_stage, warmup_frac=0.3)
    assert [(s, t) for s, t, _ in recorder.rates] == [(s, t) for s in (1, 2) for t in range(steps_per_stage + 1)], \
        "a rate reading at every step of both stages"
    for stage, step, rates in recorder.rates:
        assert {name for name, _ in rates} == trained[stage], f"stage {stage} trains {trained[stage]}"
        for name, lr in rates:
            expected = stages[stage - 1].lr / LR_DECAY ** depth[name] * factor(step)
            assert lr == pytest.approx(expected, rel=1e-9, abs=1e-15), \
                f"{schedule}: stage {stage}, step {step}, group {name}"
    for row in epochs.rows:
        step = (row["epoch"] - 2 * (row["stage"] - 1)) * len(train_loader)
        for name, lr in row["lr"].items():
            expected = stages[row["stage"] - 1].lr / LR_DECAY ** depth[name] * factor(step)
            assert lr == pytest.approx(expected, rel=1e-9, abs=1e-15), \
                f"{schedule}: the metrics row of epoch {row['epoch']} reports {name}'s rate after its last batch"


class KeepEveryCheckpoint(Callback):
    def __init__(self, path):
        self.path = path

    def on_epoch_end(self, trainer, metrics):
        shutil.copy(self.path, self.path.with_name(f"epoch{trainer.epoch}.pt"))


@pytest.mark.parametrize(("schedule", "optimizer"), [("one_cycle", "sgd")], ids=["one_cycle sgd"])
def test_resume_mid_stage_continues_the_schedule_exactly(new_loaders, tmp_path, schedule, optimizer):
    stages = [Stage(("head",), 2, 1e-2), Stage(("layer4",), 3, 1e-2)]
    options = {"schedule": schedule, "optimizer": optimizer, "early_stopping": EarlyStoppingConfig(patience=10)}
    path = tmp_path / "checkpoint.pt"
    full = EpochRates()
    trainer = make_trainer(stages, callbacks=[full, Checkpointer(path), KeepEveryCheckpoint(path)], **options)
    full_result = trainer.fit(*new_loaders())
    assert full_result.epochs == 5

    for crash_after in (1, 3):  # mid-stage 1, and mid-stage 2 (after stage 1's own schedule ended)
        resumed = EpochRates()
        resumed_trainer = make_trainer(stages, callbacks=[resumed], **options)
        state = load_checkpoint(tmp_path / f"epoch{crash_after}.pt")
        assert state["scheduler"]["last_epoch"] == crash_after * 3 - (6 if crash_after > 2 else 0), \
            "the checkpoint holds the scheduler's step within the stage"
        result = resumed_trainer.fit(*new_loaders(), resume=state)
        comparable = [[{k: v for k, v in m.items() if k not in TIMING} for m in rows]
                      for rows in (resumed.rows, full.rows[crash_after:])]
        assert comparable[0] == comparable[1], f"resumed after epoch {crash_after}: the same epochs and rates follow"
        assert result.best == full_result.best
        for key, value in trainer.model.state_dict().items():
            assert torch.equal(value, resumed_trainer.model.state_dict()[key]), f"final weights differ at {key}"
