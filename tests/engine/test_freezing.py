"""The one unfreezing helper: requires_grad, the optimizer's groups and rates, and BatchNorm mode."""

import pytest
import torch
import torch.nn as nn
import torchvision

from worker.engine.architectures import ARCHITECTURES, LayerGroup, layer_groups
from worker.engine.freezing import group_lrs, set_train_mode, unfreeze

RESNET18 = ARCHITECTURES["resnet18"]
ALL_GROUPS = RESNET18.group_names  # stem, layer1, layer2, layer3, layer4, head
LR, LR_DECAY, WEIGHT_DECAY = 1e-2, 2.6, 1e-4


@pytest.fixture
def resnet18() -> tuple[nn.Module, list[LayerGroup]]:
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=3)
    return model, layer_groups(model, RESNET18)


def rate(name: str) -> float:
    """lr / lr_decay**k, k being the group's places below the head."""
    return LR / LR_DECAY ** (len(ALL_GROUPS) - 1 - ALL_GROUPS.index(name))


def batchnorm_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for m in module.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters(recurse=False)]


@pytest.mark.parametrize("unfrozen", [("head",), ("layer4", "head"), ("layer2", "head"), ALL_GROUPS],
                         ids=["head", "layer4+head", "layer2+head (gap)", "all"])
def test_only_unfrozen_groups_reach_the_optimizer_at_their_rates(resnet18, unfrozen):
    model, groups = resnet18

    param_groups = unfreeze(groups, unfrozen, lr=LR, lr_decay=LR_DECAY, weight_decay=WEIGHT_DECAY, train_bn=False)

    in_optimizer = [id(p) for pg in param_groups for p in pg["params"]]
    expected = {id(p) for g in groups if g.name in unfrozen for p in g.parameters()}
    assert len(in_optimizer) == len(set(in_optimizer)), "no parameter is in two optimizer groups"
    assert set(in_optimizer) == expected, "the optimizer holds exactly the unfrozen groups' parameters"
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected, \
        "requires_grad is True exactly for the unfrozen groups' parameters"
    owner = {id(p): g.name for g in groups for p in g.parameters()}
    assert all(owner[id(p)] == pg["name"] for pg in param_groups for p in pg["params"]), \
        "each optimizer group is named after the layer group its parameters belong to"
    optimizer = torch.optim.AdamW(param_groups)
    assert group_lrs(optimizer) == pytest.approx({name: rate(name) for name in unfrozen}), \
        "each unfrozen group trains at lr / lr_decay**(places below the head)"


def test_no_weight_decay_on_biases_and_batchnorm_weights(resnet18):
    model, groups = resnet18

    param_groups = unfreeze(groups, ALL_GROUPS, lr=LR, lr_decay=LR_DECAY, weight_decay=WEIGHT_DECAY, train_bn=False)

    decay_of = {id(p): pg["weight_decay"] for pg in param_groups for p in pg["params"]}
    no_decay = {id(p) for p in batchnorm_params(model)} | {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
    wrong = {n: decay_of[id(p)] for n, p in model.named_parameters()
             if decay_of[id(p)] != (0.0 if id(p) in no_decay else WEIGHT_DECAY)}
    assert wrong == {}, "weight decay is 0 for biases and BatchNorm weights and weight_decay for the rest"


def test_train_bn_adds_batchnorm_of_frozen_groups_at_their_rate(resnet18):
    model, groups = resnet18

    param_groups = unfreeze(groups, ("head",), lr=LR, lr_decay=LR_DECAY, weight_decay=WEIGHT_DECAY, train_bn=True)

    lr_of = {id(p): pg["lr"] for pg in param_groups for p in pg["params"]}
    expected = {id(p): rate("head") for p in model.fc.parameters()}
    for group in groups[:-1]:
        expected |= {id(p): rate(group.name) for m in group.modules for p in batchnorm_params(m)}
    assert lr_of == pytest.approx(expected), \
        "the optimizer holds the head and the frozen groups' BatchNorm parameters, each at its group's rate"
    assert {id(p) for p in model.parameters() if p.requires_grad} == set(expected), \
        "requires_grad is True for the head and all BatchNorm parameters only"
    assert not model.layer1[0].conv1.weight.requires_grad, "convolutions of frozen groups stay frozen"


@pytest.mark.parametrize(("train_bn", "training_bn"), [
    (False, {"layer4", "head"}),
    (True, {"stem", "layer1", "layer2", "layer3", "layer4", "head"}),
], ids=["frozen BatchNorm in eval", "train_bn: all BatchNorm in train"])
def test_set_train_mode_keeps_batchnorm_of_frozen_groups_in_eval(resnet18, train_bn, training_bn):
    model, groups = resnet18
    model.eval()

    set_train_mode(model, groups, ["layer4", "head"], train_bn=train_bn)

    mode = {g.name: {m.training for mod in g.modules for m in mod.modules() if isinstance(m, nn.BatchNorm2d)}
            for g in groups if g.name != "head"}  # resnet's head has no BatchNorm
    assert mode == {name: {name in training_bn} for name in mode}, "BatchNorm modes per group"
    assert model.training and model.fc.training, "the model itself is in train mode"
