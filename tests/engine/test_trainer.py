"""Real staged-unfreezing fits of a 32 px resnet18 on scikit-learn digits, on the CPU."""

import pytest
import torch

from worker.engine.architectures import ARCHITECTURES
from worker.engine.callbacks import Callback
from worker.engine.config import EarlyStoppingConfig, Stage
from worker.engine.freezing import group_lrs
from worker.engine.trainer import Trainer

RESNET18 = ARCHITECTURES["resnet18"]
LR = 1e-2
LR_DECAY = 1.5  # FitConfig's default
TIMING = ("duration_s", "samples_per_s")


def group_keys(model: torch.nn.Module, group: str) -> list[str]:
    """State-dict keys (parameters and buffers) of one of resnet18's layer groups."""
    paths = dict(RESNET18.groups)[group]
    return [k for k in model.state_dict() if any(k.startswith(f"{path}.") for path in paths)]


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys=None) -> list[str]:
    return [k for k in (a if keys is None else keys) if not torch.equal(a[k], b[k])]


def test_frozen_groups_and_their_batchnorm_statistics_stay_bit_identical(trainer_for, new_loaders):
    trainer, _ = trainer_for([Stage(("head",), 2, LR), Stage(("layer4",), 1, LR)], train_bn=False)
    model = trainer.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen_keys = [k for g in ("stem", "layer1", "layer2", "layer3") for k in group_keys(model, g)]
    assert any(k.endswith("running_var") for k in frozen_keys), "the frozen keys include BatchNorm statistics"

    trainer.fit(*new_loaders())

    after = model.state_dict()
    assert differing(before, after, frozen_keys) == [], "parameters and BatchNorm statistics of frozen groups unchanged"
    assert not torch.equal(before["fc.weight"], after["fc.weight"]), "the head's weights changed"
    assert group_lrs(trainer.optimizer) == pytest.approx({"head": LR, "layer4": LR / LR_DECAY}), \
        "the last stage's optimizer has the head at lr and layer4 at lr / lr_decay"
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    expected = {id(p) for g in trainer.groups if g.name in ("head", "layer4") for p in g.parameters()}
    assert in_optimizer == expected, "the last stage's optimizer holds exactly the head and layer4 parameters"


def test_best_weights_are_restored_at_every_stage_end(trainer_for, new_loaders):
    # Stage 2's learning rate of 1.0 wrecks the model, so its epochs are worse than stage 1's best.
    trainer, recorder = trainer_for([Stage(("head",), 2, LR), Stage(("layer4",), 2, 1.0)], snapshots=True)

    result = trainer.fit(*new_loaders())

    assert [end["stage"] for end in recorder.stage_ends] == [1, 2], "both stages ended"
    for end in recorder.stage_ends:
        assert end["state"] is not None, f"the model's state after stage {end['stage']} was recorded"
        best_state = recorder.epoch_states[end["best_epoch"]]
        assert differing(best_state, end["state"]) == [], \
            f"after stage {end['stage']} the model holds the weights of the best epoch {end['best_epoch']}"
    restored = recorder.events_of("best_restored")
    assert [e["epoch"] for e in restored] == [end["best_epoch"] for end in recorder.stage_ends], \
        "one best_restored event per stage, naming the best epoch"
    assert result.best["stage"] == 1, "stage 2 (lr 1.0) never beat stage 1, so the restore is not trivial"
    assert differing(recorder.epoch_states[result.epochs], recorder.stage_ends[-1]["state"]) != [], \
        "the final model is not the last epoch's model"
    assert result.result["val_loss"] == pytest.approx(result.best["value"], rel=1e-6), \
        "the final evaluation is of the restored best model"


def test_early_stopping_ends_stages_and_stops_unfreezing(trainer_for, new_loaders):
    # No value improves on the first by 1e9, so every stage ends one epoch after its last improvement.
    plan = [Stage(("head",), 5, LR), Stage(("layer4",), 5, LR / 10), Stage(("layer3",), 5, LR / 10)]
    trainer, recorder = trainer_for(plan, early_stopping=EarlyStoppingConfig(patience=1, min_delta=1e9))

    result = trainer.fit(*new_loaders())

    assert recorder.epochs_per_stage() == {1: 2, 2: 1}, "stage 1 stops after 2 epochs, stage 2 after 1"
    assert [(e["stage"], e["epoch"]) for e in recorder.events_of("early_stopped")] == [(1, 2), (2, 3)], \
        "an early_stopped event at the end of each stage"
    assert [e["stage"] for e in recorder.events_of("unfreezing_stopped")] == [2], \
        "unfreezing stops after stage 2, which did not improve on stage 1"
    assert len(recorder.events_of("stage_started")) == 2, "stage 3 never starts"
    assert result.stopped_reason == "no_improvement"
    assert result.epochs == 3


def test_max_epochs_caps_the_run(trainer_for, new_loaders):
    plan = [Stage(("head",), 2, LR), Stage(("layer4",), 2, LR / 10), Stage(("layer3",), 2, LR / 10)]
    trainer, recorder = trainer_for(plan, max_epochs=3)

    result = trainer.fit(*new_loaders())

    assert result.stopped_reason == "max_epochs"
    assert result.epochs == 3 and len(recorder.metrics) == 3, "exactly max_epochs epochs ran"
    assert recorder.epochs_per_stage() == {1: 2, 2: 1}, "the cap cuts stage 2 short"
    assert len(recorder.events_of("stage_started")) == 2, "stage 3 never starts"
    assert recorder.events_of("unfreezing_stopped") == [], "hitting the cap is not reported as no improvement"


class CancelAfter(Callback):
    """Cancels the fit, as the service's reporter does, once `batches` batches have been trained."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.seen = 0

    def on_batch_end(self, trainer: Trainer) -> None:
        self.seen += 1
        if self.seen == self.batches:
            trainer.stop = "cancelled"


@pytest.mark.parametrize(("batches", "epochs_done"), [(1, 0), (5, 1)], ids=["first batch", "second epoch"])
def test_cancellation_ends_the_fit_after_the_current_batch(trainer_for, new_loaders, batches, epochs_done):
    cancel = CancelAfter(batches)  # 90 training images in batches of 32: 3 batches an epoch
    trainer, recorder = trainer_for([Stage(("head",), 3, LR)], callbacks=[cancel])

    result = trainer.fit(*new_loaders())

    assert cancel.seen == batches, "no batch is trained after the cancelling one"
    assert result.stopped_reason == "cancelled"
    assert result.result is None, "a cancelled fit is not evaluated"
    assert result.epochs == epochs_done and len(recorder.metrics) == epochs_done, "the interrupted epoch is not counted"


def test_same_seed_and_data_give_identical_epochs(trainer_for, new_loaders):
    runs = []
    for _ in range(2):
        trainer, recorder = trainer_for([Stage(("head",), 1, LR), Stage(("layer4",), 1, LR / 10)], seed=7)
        result = trainer.fit(*new_loaders(seed=7))
        runs.append(([{k: v for k, v in m.items() if k not in TIMING} for m in recorder.metrics], result.result))

    (metrics_a, result_a), (metrics_b, result_b) = runs
    assert len(metrics_a) == 2, "both stages ran"
    assert metrics_a == metrics_b, "per-epoch metrics are identical across runs with the same seed"
    assert result_a == result_b, "final metrics are identical across runs with the same seed"


def test_a_last_batch_of_one_image_trains(trainer_for, new_loaders):
    trainer, recorder = trainer_for([Stage(("layer4", "head"), 1, LR)])

    result = trainer.fit(*new_loaders(batch_size=89))  # 90 training images: batches of 89 and 1

    assert result.epochs == 1 and len(recorder.metrics) == 1, "the epoch completes"


def test_a_diverged_loss_stops_the_fit_with_a_message_and_records_nothing(trainer_for, new_loaders):
    from worker.engine.trainer import TrainingDiverged

    trainer, recorder = trainer_for([Stage(("head",), 2, LR)])
    with torch.no_grad():
        trainer.model.fc.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="lower strategy.lr"):
        trainer.fit(*new_loaders())
    assert recorder.metrics == [], "no NaN reaches a metrics row"
