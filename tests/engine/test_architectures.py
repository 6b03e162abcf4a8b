"""Layer groups of every supported architecture, their heads, the generic grouping, and the catalogue the API serves.

Every architecture is checked on the meta device (shapes without memory); one small member of each family is
built on the CPU and trains one step with staged freezing.
"""

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from worker.engine.architectures import (ARCHITECTURES, Architecture, LayerGroup, generic_architecture, layer_groups,
                                         meta_model)
from worker.engine.catalogue import catalogue
from worker.engine.chains import forward_steps, split
from worker.engine.freezing import set_train_mode, unfreeze
from worker.engine.weights import replace_head

SERVED_CATALOGUE = Path(__file__).resolve().parents[2] / "models" / "catalogue.json"
NUM_CLASSES = 3


def assert_groups_cover_every_parameter_once(model: nn.Module, arch: Architecture) -> None:
    groups = layer_groups(model, arch)

    assert [g.name for g in groups] == list(arch.group_names), "groups come in the architecture's order"
    assert groups[-1].name == "head", "the last group is the head"
    assert len(set(arch.group_names)) == len(arch.group_names), "group names are unique"
    owners = Counter(id(p) for g in groups for p in g.parameters())
    not_once = [n for n, p in model.named_parameters() if owners[id(p)] != 1]
    assert not_once == [], "every parameter is in exactly one group"
    assert len(owners) == len(list(model.parameters())), "groups hold no parameter from outside the model"
    group_of = {id(p): i for i, g in enumerate(groups) for p in g.parameters()}
    in_order = [group_of[id(p)] for p in model.parameters()]
    assert in_order == sorted(in_order), \
        "the parameters, in the model's (input to output) order, go through the groups in turn"
    head_layer = model.get_submodule(arch.head_layer)
    assert isinstance(head_layer, (nn.Linear, nn.Conv2d)), "head_layer names the final Linear (or Conv2d)"
    assert {id(p) for p in head_layer.parameters()} <= {id(p) for p in groups[-1].parameters()}, \
        "head_layer lies inside the head group"


def assert_steps_follow_the_groups(model: nn.Module, arch: Architecture) -> None:
    """The forward chain uses every parameter once, and no step spans two groups: the chain can be cut at every
    group boundary."""
    steps = forward_steps(model, arch)
    owners = Counter(id(p) for s in steps for p in s.parameters())
    assert [n for n, p in model.named_parameters() if owners[id(p)] != 1] == [], "every parameter in exactly one step"
    group_of = {id(p): i for i, g in enumerate(layer_groups(model, arch)) for p in g.parameters()}
    step_groups = [sorted({group_of[id(p)] for p in s.parameters()}) for s in steps]
    assert all(len(g) <= 1 for g in step_groups), "each step lies within one group"
    in_order = [g[0] for g in step_groups if g]
    assert in_order == sorted(in_order), "steps go through the groups from input to output"


@pytest.mark.parametrize("name", list(ARCHITECTURES), ids=list(ARCHITECTURES))
def test_layer_groups_cover_every_parameter_exactly_once_and_the_head_fits_the_classes(name):
    arch = ARCHITECTURES[name]
    model = meta_model(arch)  # one build for both checks: ~80 builds are most of this file's time
    assert all(p.is_meta for p in model.parameters()), "built on the meta device, without memory"
    assert_groups_cover_every_parameter_once(model, arch)
    assert_steps_follow_the_groups(model, arch)
    old = model.get_submodule(arch.head_layer)

    replace_head(model, arch, NUM_CLASSES)

    new = model.get_submodule(arch.head_layer)
    assert type(new) is type(old), "a Linear head stays a Linear, a Conv2d head a Conv2d"
    if isinstance(new, nn.Linear):
        assert (new.in_features, new.out_features) == (old.in_features, NUM_CLASSES), "in features kept, classes out"
    else:
        assert (new.in_channels, new.out_channels) == (old.in_channels, NUM_CLASSES), "in channels kept, classes out"
        assert new.kernel_size == old.kernel_size, "the same kernel"
    assert new.weight.is_meta, "the new layer is on the old one's device"
    assert getattr(model, "num_classes", NUM_CLASSES) == NUM_CLASSES, "a num_classes attribute follows the head"
    assert_groups_cover_every_parameter_once(model, arch)


def test_every_torchvision_classifier_is_supported_except_those_with_auxiliary_outputs():
    shipped = set(torchvision.models.list_models(module=torchvision.models))

    assert set(ARCHITECTURES) <= shipped, "only torchvision's own classifiers"
    assert shipped - set(ARCHITECTURES) == {"googlenet", "inception_v3"}, \
        "every classifier but the two whose training output carries auxiliary logits"


@pytest.mark.parametrize(("name", "family", "size"), [
    ("resnet18", "resnet", 224), ("efficientnet_b1", "efficientnet", 240), ("efficientnet_b3", "efficientnet", 300),
    ("efficientnet_b7", "efficientnet", 600), ("efficientnet_v2_s", "efficientnet_v2", 384),
    ("efficientnet_v2_l", "efficientnet_v2", 480), ("swin_v2_t", "swin_v2", 256), ("vit_h_14", "vit", 518),
    ("regnet_y_128gf", "regnet", 384),
])
def test_native_image_size_follows_the_default_weights(name, family, size):
    arch = ARCHITECTURES[name]

    assert (arch.family, arch.image_size) == (family, size), "family, and the crop size of the DEFAULT weights"
    assert arch.image_size == torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0]


@pytest.mark.parametrize("name", list(ARCHITECTURES), ids=list(ARCHITECTURES))
def test_min_image_size_is_the_smallest_input_the_model_takes(name):
    arch = ARCHITECTURES[name]
    model = meta_model(arch).eval()

    def takes(size: int) -> bool:
        try:
            return model(torch.empty(2, 3, size, size, device="meta")).shape == (2, 1000)
        except (RuntimeError, ValueError, AssertionError):
            return False

    assert takes(arch.min_image_size), f"{name} takes {arch.min_image_size}x{arch.min_image_size} images"
    if arch.min_image_size > 1 and arch.family != "maxvit":  # MaxViT's 223 rounds to 224's grid; it is served at 224
        assert not takes(arch.min_image_size - 1), "and nothing smaller"


def test_vit_is_built_for_its_native_image_size():
    model = meta_model(ARCHITECTURES["vit_h_14"])

    assert model.image_size == 518, "vit_h_14's DEFAULT weights are for 518 px"
    assert model.encoder.pos_embedding.shape == (1, (518 // 14) ** 2 + 1, 1280), \
        "one position per patch, plus the class token"


def test_squeezenet_head_is_a_conv2d_for_the_classes():
    arch = ARCHITECTURES["squeezenet1_1"]
    model = torchvision.models.get_model("squeezenet1_1", weights=None)

    replace_head(model, arch, NUM_CLASSES)

    assert isinstance(model.classifier[1], nn.Conv2d) and model.classifier[1].kernel_size == (1, 1), "a 1x1 Conv2d"
    assert model.num_classes == NUM_CLASSES, "SqueezeNet's num_classes attribute follows"
    assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, NUM_CLASSES), "the model outputs one score per class"


# One small member of each family, with the smallest input it takes. ViT is built for that size; MaxViT's
# partitions need 224 px.
REPRESENTATIVES = {
    "resnet18": 32, "resnext50_32x4d": 32, "wide_resnet50_2": 32, "mobilenet_v2": 32, "mobilenet_v3_large": 32,
    "efficientnet_b0": 32, "efficientnet_v2_s": 32, "convnext_tiny": 32, "regnet_y_400mf": 32, "densenet121": 32,
    "vgg11_bn": 32, "vit_b_32": 32, "swin_t": 32, "swin_v2_t": 32, "squeezenet1_1": 32, "shufflenet_v2_x0_5": 32,
    "mnasnet0_5": 32, "alexnet": 64, "maxvit_t": 224,
}


def test_every_family_has_a_representative():
    families = {ARCHITECTURES[name].family for name in REPRESENTATIVES}

    assert families == {a.family for a in ARCHITECTURES.values()}, "each family trains one step below"


@pytest.mark.parametrize("name", list(REPRESENTATIVES), ids=list(REPRESENTATIVES))
def test_one_step_through_the_split_chain_trains_exactly_the_unfrozen_groups(name):
    arch, size = ARCHITECTURES[name], REPRESENTATIVES[name]
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **({"image_size": size} if arch.family == "vit" else {}))
    replace_head(model, arch, NUM_CLASSES)
    groups = layer_groups(model, arch)
    unfrozen = ["head", groups[-2].name]
    optimizer = torch.optim.AdamW(
        unfreeze(groups, unfrozen, lr=1e-3, lr_decay=2.6, weight_decay=0.0, train_bn=False), fused=True)
    images = torch.randn(2, 3, size, size)
    chain = split(forward_steps(model, arch))
    with torch.no_grad():
        whole, chained = model.eval()(images), chain(images)
        set_train_mode(model, groups, unfrozen, train_bn=False)
        # Train mode too (dropout, stochastic depth): the same random draws in the same order.
        whole_train = seeded(0, model, images)
        chained_train = seeded(0, chain, images)
    before = {g.name: snapshot(g) for g in groups}

    logits = chain(images)
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    optimizer.step()

    assert torch.allclose(chained, whole, rtol=1e-4, atol=1e-5), "prefix then suffix computes the model's forward"
    assert torch.allclose(chained_train, whole_train, rtol=1e-4, atol=1e-5), "in train mode as well"
    assert ids(p for s in chain.prefix for p in s.parameters()) == ids(p for g in groups[:-2] for p in g.parameters()), \
        "the prefix holds exactly the frozen groups below the lowest unfrozen one"
    assert not chain.run_prefix(images).requires_grad, "the prefix builds no autograd graph"
    assert logits.shape == (2, NUM_CLASSES), "one score per class"
    for g in groups:
        (params, buffers), (params_before, buffers_before) = snapshot(g), before[g.name]
        if g.name in unfrozen:
            assert not all(map(torch.equal, params, params_before)), f"the unfrozen group '{g.name}' trained"
        else:
            assert all(map(torch.equal, params, params_before)), f"the frozen group '{g.name}' kept its parameters"
            assert all(map(torch.equal, buffers, buffers_before)), \
                f"the frozen group '{g.name}' kept its BatchNorm statistics"
            assert all(p.grad is None for p in g.parameters()), f"the frozen group '{g.name}' got no gradient"


def seeded(seed: int, forward, images: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(seed)
    return forward(images)


def ids(params: Iterable[torch.Tensor]) -> set[int]:
    return {id(p) for p in params}


def snapshot(group: LayerGroup) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Copies of a group's parameters and of its buffers (BatchNorm statistics)."""
    return ([p.detach().clone() for p in group.parameters()],
            [b.detach().clone() for m in group.modules for b in m.buffers()])


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


class SmallCnn(nn.Module):
    """Convolutions in a dominant `features` Sequential, then a classifier with a hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        blocks = [nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())
                  for c_in, c_out in ((3, 32), (32, 32), (32, 64), (64, 64), (64, 64), (64, 64))]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class TokenMixer(nn.Module):
    """A ViT-like model: a class token held by the model itself, blocks in a ModuleList, and a 1x1 Conv2d head."""

    def __init__(self) -> None:
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(1, 1, 32))
        self.embed = nn.Conv2d(3, 32, 8, stride=8)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True) for _ in range(8))
        self.norm = nn.LayerNorm(32)
        self.head = nn.Conv2d(32, 7, 1)
        self.num_classes = 7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0])[:, :, None, None]).flatten(1)


def test_generic_groups_split_a_dominant_container_by_parameter_count():
    model = SmallCnn()

    arch = generic_architecture(model, "small_cnn")

    assert arch.head_layer == "classifier.3", "the head is the last Linear"
    assert arch.groups == (
        ("group1", ("features.0", "features.1")),
        ("group2", ("features.2",)),
        ("group3", ("features.3",)),
        ("group4", ("features.4",)),
        ("group5", ("features.5", "classifier.1")),
        ("head", ("classifier.3",)),
    ), "features is opened into its blocks; blocks and the hidden layer are cut into groups of similar size"
    assert_groups_cover_every_parameter_once(model, arch)


def test_generic_groups_keep_loose_parameters_and_a_conv2d_head():
    model = TokenMixer()

    arch = generic_architecture(model, "token_mixer", max_groups=4)
    groups = layer_groups(model, arch)

    assert arch.head_layer == "head", "the head is the last Linear or Conv2d, not a Linear inside the blocks"
    assert arch.group_names == ("group1", "group2", "group3", "group4", "head"), "up to max_groups, then the head"
    assert arch.groups[0][1][:3] == ("class_token", "embed", "blocks.0"), \
        "the model's own parameters come first, then its parts in order, the ModuleList opened into its blocks"
    assert arch.groups[-2][1][-1] == "norm", "the last group ends with the final norm"
    sizes = [sum(p.numel() for p in g.parameters()) for g in groups[:-1]]
    assert max(sizes) <= 2 * min(sizes), f"groups of similar parameter count: {sizes}"
    assert_groups_cover_every_parameter_once(model, arch)
    replace_head(model, arch, NUM_CLASSES)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, NUM_CLASSES), "a Conv2d head is replaced by a Conv2d"
    assert model.num_classes == NUM_CLASSES


def test_generic_groups_of_a_torchvision_model():
    model = meta_model(RESNET18)

    arch = generic_architecture(model, "resnet18")

    assert arch.head_layer == "fc"
    assert arch.groups == (
        ("group1", ("conv1", "bn1", "layer1")),
        ("group2", ("layer2",)),
        ("group3", ("layer3",)),
        ("group4", ("layer4.0",)),
        ("group5", ("layer4.1",)),
        ("head", ("fc",)),
    ), "layer4 holds most parameters, so it is opened into its two blocks"
    assert_groups_cover_every_parameter_once(model, arch)


def test_generic_grouping_needs_a_classifier_layer():
    model = nn.Sequential(nn.Flatten(), nn.LayerNorm(12))

    with pytest.raises(ValueError, match="no_head: no Linear or Conv2d layer to use as the classification head"):
        generic_architecture(model, "no_head")


def test_fixed_size_models_are_offered_only_weights_of_their_size():
    served = catalogue()

    assert "IMAGENET1K_SWAG_E2E_V1" not in served["vit_b_16"]["weights"], "384 px weights for a 224 px model"
    assert "IMAGENET1K_SWAG_LINEAR_V1" in served["vit_b_16"]["weights"], "224 px SWAG weights fit"
    assert "IMAGENET1K_SWAG_LINEAR_V1" not in served["vit_h_14"]["weights"], "224 px weights for a 518 px model"
    for name, model in served.items():
        if model["fixed_image_size"]:
            sizes = {torchvision.models.get_model_weights(name)[w].transforms().crop_size[0] for w in model["weights"]}
            assert sizes == {model["image_size"]}, f"{name}: every weights name it offers is for its size"


def test_served_catalogue_is_in_step_with_the_engine():
    served = json.loads(SERVED_CATALOGUE.read_text())

    assert served == json.loads(json.dumps(catalogue())), \
        "models/catalogue.json matches the engine (regenerate: python -m worker.engine.catalogue > models/catalogue.json)"
