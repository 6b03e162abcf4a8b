"""Layer groups of every supported architecture, and the catalogue the API serves."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import torch.nn as nn
import torchvision

from worker.engine.architectures import ARCHITECTURES, layer_groups
from worker.engine.catalogue import catalogue

SERVED_CATALOGUE = Path(__file__).resolve().parents[2] / "models" / "catalogue.json"


@pytest.mark.parametrize("name", list(ARCHITECTURES), ids=list(ARCHITECTURES))
def test_layer_groups_cover_every_parameter_exactly_once(name):
    arch = ARCHITECTURES[name]
    model = torchvision.models.get_model(name, weights=None)

    groups = layer_groups(model, arch)

    assert [g.name for g in groups] == list(arch.group_names), "groups come in the architecture's order"
    assert groups[-1].name == "head", "the last group is the head"
    assert len(set(arch.group_names)) == len(arch.group_names), "group names are unique"
    owners = Counter(id(p) for g in groups for p in g.parameters())
    not_once = [n for n, p in model.named_parameters() if owners[id(p)] != 1]
    assert not_once == [], "every parameter is in exactly one group"
    assert len(owners) == len(list(model.parameters())), "groups hold no parameter from outside the model"
    head_layer = model.get_submodule(arch.head_layer)
    assert isinstance(head_layer, nn.Linear), "head_layer names the final Linear"
    assert {id(p) for p in head_layer.parameters()} <= {id(p) for p in groups[-1].parameters()}, \
        "head_layer lies inside the head group"


RESNET18 = ARCHITECTURES["resnet18"]


@pytest.mark.parametrize(("groups", "match"), [
    (tuple(g for g in RESNET18.groups if g[0] != "layer2"), r"resnet18: parameters in no layer group: layer2\.0\."),
    (RESNET18.groups[:-1] + (("head", ("fc", "layer4")),), r"resnet18: a parameter is in both 'layer4' and 'head'"),
], ids=["a module in no group", "a module in two groups"])
def test_layer_groups_reject_incomplete_or_overlapping_groups(groups, match):
    arch = dataclasses.replace(RESNET18, groups=groups)
    model = torchvision.models.get_model("resnet18", weights=None)

    with pytest.raises(ValueError, match=match):
        layer_groups(model, arch)


def test_served_catalogue_is_in_step_with_the_engine():
    served = json.loads(SERVED_CATALOGUE.read_text())

    assert served == json.loads(json.dumps(catalogue())), \
        "models/catalogue.json matches the engine (regenerate: python -m worker.engine.catalogue > models/catalogue.json)"
