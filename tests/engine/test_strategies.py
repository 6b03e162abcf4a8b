"""Stages that train a group alone (chain-thaw) and stages that choose their groups (auto)."""

import pytest
import torch

from models.plan import resolve_plan
from models.spec import Strategy
from worker.engine.auto import pick, relative_grad_norms, suffix_down_to
from worker.engine.config import Stage
from worker.engine.freezing import discriminative_lr

GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_a_group_trained_alone_is_the_only_one_that_changes(trainer_for, new_loaders):
    # Chain-thaw's second step: after the head, layer3 trains alone at the stage's rate.
    trainer, recorder = trainer_for([Stage(("head",), 1, 1e-3), Stage(("layer3",), 1, 1e-3, train=("layer3",))])
    states = {}

    class Watch(torch.nn.Module):
        pass

    original_call = trainer._call

    def spy(hook, *args):
        if hook == "on_stage_start" and trainer.stage_index == 1:
            states["before"] = snapshot(trainer.model)
        original_call(hook, *args)
        if hook == "on_epoch_end" and trainer.stage_index == 1:
            states["after"] = snapshot(trainer.model)
            states["lrs"] = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}

    trainer._call = spy
    trainer.fit(*new_loaders())
    changed = {k.split(".")[0] for k in states["before"] if not torch.equal(states["before"][k], states["after"][k])}
    assert changed == {"layer3"}, "only the group trained alone moved (BatchNorm statistics included)"
    assert states["lrs"] == {"layer3": 1e-3}, "a group trained alone gets the stage's rate"
    assert recorder.metrics[-1]["unfrozen_groups"] == ["layer3"]


def test_discriminative_rates_count_from_the_top_trained_group(trainer_for):
    trainer, _ = trainer_for([Stage(("head",), 1, 1e-3)])
    groups = trainer.groups
    assert discriminative_lr(groups, "layer4", lr=1.0, lr_decay=2.0) == 0.5
    assert discriminative_lr(groups, "layer2", lr=1.0, lr_decay=2.0, top="layer3") == 0.5
    assert discriminative_lr(groups, "layer3", lr=1.0, lr_decay=2.0, top="layer3") == 1.0


def test_relative_grad_norms_change_nothing(trainer_for, new_loaders):
    trainer, _ = trainer_for([Stage(("head",), 1, 1e-3)])
    model = trainer.model
    train_loader, _ = new_loaders()
    for g in trainer.groups:
        for p in g.parameters():
            p.requires_grad_(g.name == "head")
    before = snapshot(model)
    model.train()
    scores = relative_grad_norms(model, trainer.groups, GROUPS[:-1], train_loader, batches=2,
                                 device=torch.device("cpu"), autocast=trainer.autocast)
    assert set(scores) == set(GROUPS[:-1]) and all(v > 0 for v in scores.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "weights and BN statistics intact"
    assert model.training, "train/eval mode restored"
    assert all(p.requires_grad == (g.name == "head") for g in trainer.groups for p in g.parameters())
    assert all(p.grad is None for p in model.parameters()), "no .grad left behind"


def test_pick_takes_the_highest_scores():
    assert pick({"stem": 0.1, "layer4": 0.5, "layer3": 0.3}, 2) == ["layer4", "layer3"]
    assert pick({"a": 0.2, "b": 0.2}, 1) == ["b"], "ties go to the group nearer the output"


def test_suffix_down_to_the_lowest_chosen_group():
    assert suffix_down_to(["layer2"], frozen=GROUPS[:-1], order=GROUPS) == ["layer4", "layer3", "layer2"], \
        "every frozen group from the chosen one up to the output, output first"
    assert suffix_down_to(["layer2", "stem"], frozen=["stem", "layer1", "layer2", "layer3"], order=GROUPS) == \
        ["layer3", "layer2", "layer1", "stem"], "the lowest chosen group sets the cut"
    assert suffix_down_to(["layer1"], frozen=["stem", "layer1", "layer3"], order=GROUPS) == ["layer3", "layer1"], \
        "groups already unfrozen are not added again"


def test_auto_stage_unfreezes_down_to_the_groups_with_the_highest_signal(trainer_for, new_loaders):
    trainer, recorder = trainer_for([Stage(("head",), 1, 1e-3), Stage((), 1, 1e-3, auto=True)])
    trainer.fit(*new_loaders())
    (decision,) = [data for type_, data in recorder.events if type_ == "unfreeze_decision"]
    scores, k = decision["relative_grad_norm"], trainer.config.groups_per_stage
    assert set(scores) == set(GROUPS[:-1]), "every frozen group is measured"
    assert decision["chosen"] == sorted(scores, key=scores.get, reverse=True)[:k], "the highest signals win"
    assert decision["unfreeze"] == suffix_down_to(decision["chosen"], frozen=GROUPS[:-1], order=GROUPS), \
        "down to the lowest chosen group"
    stage2 = [m for m in recorder.metrics if m["stage"] == 2]
    assert stage2[0]["unfrozen_groups"] == ["head", *decision["unfreeze"]]


def test_auto_measures_only_the_groups_still_frozen(trainer_for, new_loaders):
    trainer, recorder = trainer_for([Stage(("head", "layer4"), 1, 1e-3), Stage((), 1, 1e-3, auto=True)])
    trainer.fit(*new_loaders())
    (decision,) = [data for type_, data in recorder.events if type_ == "unfreeze_decision"]
    assert set(decision["relative_grad_norm"]) == {"stem", "layer1", "layer2", "layer3"}, \
        "groups unfrozen by an earlier stage are not measured again"


@pytest.mark.parametrize(("later", "unfrozen", "left"), [
    ([Stage((), 1, 1e-3, auto=True)] * 2, GROUPS, 0),
    ([Stage((), 1, 1e-3, auto=True)] * 2, ["head", "layer4"], 2),
    ([Stage((), 1, 1e-3, auto=True), Stage(("head",), 1, 1e-3, train=("head",))], GROUPS, 2),
], ids=["auto stages with nothing left to choose", "auto stages with groups still frozen", "a planned stage after"])
def test_stages_left_counts_the_later_stages_with_something_to_do(trainer_for, later, unfrozen, left):
    trainer, _ = trainer_for([Stage(("head",), 1, 1e-3), *later])
    trainer.stage_index, trainer.unfrozen = 0, list(unfrozen)
    assert trainer.stages_left == left


def test_an_auto_stage_that_leaves_nothing_frozen_takes_the_later_auto_stages_epochs(trainer_for, new_loaders):
    trainer, recorder = trainer_for([Stage(("head",), 1, 1e-3), *[Stage((), 2, 1e-3, auto=True)] * 3],
                                    groups_per_stage=len(GROUPS) - 1)

    result = trainer.fit(*new_loaders())

    decisions = [data for type_, data in recorder.events if type_ == "unfreeze_decision"]
    assert len(decisions) == 1 and decisions[0]["unfreeze"] == list(reversed(GROUPS[:-1])), \
        "measuring every frozen group, one decision unfreezes them all"
    started = [data for type_, data in recorder.events if type_ == "stage_started"]
    assert [s["epochs"] for s in started] == [1, 6], "stage 2 gets its own 2 epochs and the 4 of stages 3 and 4"
    assert recorder.epochs_per_stage() == {1: 1, 2: 6} and result.stopped_reason == "completed"


@pytest.mark.parametrize("kind", ["gradual", "full", "head_only", "lp_ft", "chain_thaw", "auto"])
def test_every_plan_names_real_groups_and_trains_the_head_first(kind):
    plan = resolve_plan(Strategy(type=kind, epochs_per_stage=2), GROUPS)
    assert plan[0]["stage"] == 1 and "head" in plan[0]["train"]
    for stage in plan:
        assert set(stage["unfreeze"]) <= set(GROUPS)
        assert stage["auto"] or set(stage["train"]) <= set(GROUPS)


def test_lp_ft_and_chain_thaw_plans():
    lp_ft = resolve_plan(Strategy(type="lp_ft", lr=1e-3), GROUPS)
    assert [s["train"] for s in lp_ft] == [["head"], ["head", "layer4", "layer3", "layer2", "layer1", "stem"]]
    assert lp_ft[1]["lr"] == pytest.approx(1e-4), "fine-tuning runs at a tenth of the probe's rate by default"
    chain = resolve_plan(Strategy(type="chain_thaw", finetune_lr=2e-4), GROUPS)
    assert [s["train"] for s in chain] == [["head"], *[[g] for g in GROUPS[:-1]], list(reversed(GROUPS))]
    assert {s["lr"] for s in chain[1:]} == {2e-4}
    auto = resolve_plan(Strategy(type="auto", groups_per_stage=2), GROUPS)
    assert [s["auto"] for s in auto] == [False, True, True, True]
