"""The forward chain split into a frozen prefix and a trainable suffix: where it is cut, that the prefix runs
without autograd, and that training the suffix on cached prefix outputs is training the model (resnet18, whose
frozen prefix is deterministic in the engine's train mode; see chains.py for what a cache needs elsewhere).

test_architectures.py checks every architecture's chain against its groups and each family's chain against the
model's own forward.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks

from worker.engine.architectures import ARCHITECTURES, generic_architecture, layer_groups
from worker.engine.chains import forward_steps, split
from worker.engine.freezing import set_train_mode, unfreeze
from worker.engine.weights import build_model

RESNET18 = ARCHITECTURES["resnet18"]
IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
TARGETS = torch.tensor([0, 1, 2, 1])


def resnet18_with(unfrozen: list[str]) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = build_model(RESNET18, num_classes=3, weights=None, seed=0)
    groups = layer_groups(model, RESNET18)
    optimizer = torch.optim.AdamW(unfreeze(groups, unfrozen, lr=1e-3, lr_decay=1.5, weight_decay=0.0, train_bn=False))
    set_train_mode(model, groups, unfrozen, train_bn=False)
    return model, optimizer


@pytest.mark.parametrize(("unfrozen", "first"), [
    (["head"], "fc"), (["head", "layer4"], "layer4"), (["head", "layer2"], "layer2"),
    (["head", "layer4", "layer3", "layer2", "layer1", "stem"], "conv1"),
], ids=["head", "layer4", "layer2 alone below the head", "everything"])
def test_the_cut_follows_the_lowest_trainable_group(unfrozen, first):
    model, _ = resnet18_with(unfrozen)

    chain = split(forward_steps(model, RESNET18))

    assert chain.suffix[0].name == first, f"with {unfrozen} unfrozen the suffix starts at {first}"
    assert not any(p.requires_grad for s in chain.prefix for p in s.parameters()), "the prefix is all frozen"


def test_with_train_bn_the_first_batchnorm_ends_the_prefix():
    model = build_model(RESNET18, num_classes=3, weights=None, seed=0)
    unfreeze(layer_groups(model, RESNET18), ["head"], lr=1e-3, lr_decay=1.5, weight_decay=0.0, train_bn=True)

    chain = split(forward_steps(model, RESNET18))

    assert [s.name for s in chain.prefix] == ["conv1"], "bn1's weights train, so only conv1 stays in the prefix"


@pytest.mark.parametrize(("unfrozen", "grad_in_layer1"), [(["head", "layer4"], False), (["head", "layer1"], True)],
                         ids=["layer1 in the prefix", "layer1 trains"])
def test_the_prefix_runs_with_autograd_off(unfrozen, grad_in_layer1):
    model, _ = resnet18_with(unfrozen)
    seen: list[bool] = []
    model.layer1.register_forward_pre_hook(lambda *_: seen.append(torch.is_grad_enabled()))

    split(forward_steps(model, RESNET18))(IMAGES)

    assert seen == [grad_in_layer1], "autograd is off exactly while the frozen prefix runs"


def test_a_head_only_forward_keeps_no_activation_map_for_backward():
    model, _ = resnet18_with(["head"])
    chain = split(forward_steps(model, RESNET18))
    saved: list[torch.Size] = []

    with saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        logits = chain(IMAGES)

    assert logits.requires_grad, "the head's output has a graph"
    assert saved and all(len(shape) <= 2 for shape in saved), \
        f"only the head's input and weight are kept, no feature map of the backbone: {saved}"


def test_training_the_suffix_on_cached_prefix_outputs_equals_training_the_model():
    through_model, model_optimizer = resnet18_with(["head", "layer4"])
    on_cache, cache_optimizer = resnet18_with(["head", "layer4"])
    chain = split(forward_steps(on_cache, RESNET18))
    cached = chain.run_prefix(IMAGES)  # computed once, reused every step

    for _ in range(3):
        for forward, optimizer, inputs in ((through_model, model_optimizer, IMAGES),
                                           (chain.run_suffix, cache_optimizer, cached)):
            optimizer.zero_grad()
            F.cross_entropy(forward(inputs), TARGETS).backward()
            optimizer.step()

    trained = {k: v for k, v in through_model.state_dict().items() if k.startswith(("layer4", "fc"))}
    assert trained and all(torch.allclose(on_cache.state_dict()[k], v, atol=1e-6) for k, v in trained.items()), \
        "layer4 and the head end up the same, whether the frozen prefix ran every step or once"


def test_a_generic_sequential_is_cut_between_its_children():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3))
    arch = generic_architecture(model, "plain", max_groups=2)
    groups = layer_groups(model, arch)
    unfreeze(groups, ["head"], lr=1e-3, lr_decay=1.5, weight_decay=0.0, train_bn=False)

    chain = split(forward_steps(model, arch))

    assert [s.name for s in chain.suffix] == ["5"], "only the Linear head runs with autograd"
    assert torch.equal(chain(IMAGES), model(IMAGES)), "the children in turn are the model"


def test_any_other_model_runs_whole():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Conv2d(3, 3, 1), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head((x + self.body(x)).mean((2, 3)))

    model = Residual()
    arch = generic_architecture(model, "residual", max_groups=1)
    unfreeze(layer_groups(model, arch), ["head"], lr=1e-3, lr_decay=1.5, weight_decay=0.0, train_bn=False)

    chain = split(forward_steps(model, arch))

    assert chain.prefix == (), "a forward the engine cannot see into is never cut"
    assert [s.name for s in chain.suffix] == ["residual"], "the whole model is one step"
    assert torch.equal(chain(IMAGES), model(IMAGES)), "and that step is the model"
