"""The pure stopping decisions behind best weights and early stopping."""

import pytest

from worker.engine.callbacks import improves, stage_should_stop, unfreezing_should_stop


@pytest.mark.parametrize(("value", "reference", "mode", "min_delta", "expected"), [
    (9.0, None, "min", 0.0, True),
    (0.5, 0.6, "min", 0.0, True),
    (0.6, 0.6, "min", 0.0, False),
    (0.7, 0.6, "min", 0.0, False),
    (0.55, 0.6, "min", 0.1, False),
    (0.45, 0.6, "min", 0.1, True),
    (0.7, 0.6, "max", 0.0, True),
    (0.6, 0.6, "max", 0.0, False),
    (0.65, 0.6, "max", 0.1, False),
    (0.75, 0.6, "max", 0.1, True),
], ids=["first value", "min lower", "min equal", "min higher", "min within delta", "min beyond delta",
        "max higher", "max equal", "max within delta", "max beyond delta"])
def test_improves(value, reference, mode, min_delta, expected):
    assert improves(value, reference, mode=mode, min_delta=min_delta) is expected, \
        f"{value} improves on {reference} ({mode}, min_delta {min_delta})"


@pytest.mark.parametrize(("wait", "patience", "expected"), [
    (0, 2, (False, None)),
    (1, 2, (False, None)),
    (2, 2, (True, "early_stopped")),
    (3, 2, (True, "early_stopped")),
    (1, 1, (True, "early_stopped")),
], ids=["just improved", "waiting", "patience used up", "past patience", "patience 1"])
def test_stage_should_stop(wait, patience, expected):
    assert stage_should_stop(wait, patience) == expected, f"stop after {wait} epochs without improvement, patience {patience}"


@pytest.mark.parametrize(("stage_index", "improved_in_stage", "stages_left", "expected"), [
    (0, False, 2, (False, None)),
    (1, True, 1, (False, None)),
    (1, False, 1, (True, "no_improvement")),
    (2, False, 0, (False, None)),
], ids=["first stage never stops unfreezing", "later stage improved", "later stage did not improve",
        "nothing left to unfreeze"])
def test_unfreezing_should_stop(stage_index, improved_in_stage, stages_left, expected):
    assert unfreezing_should_stop(stage_index=stage_index, improved_in_stage=improved_in_stage,
                                  stages_left=stages_left) == expected, "stop unfreezing only after a later stage failed"
