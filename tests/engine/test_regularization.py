"""Optimizers, label smoothing, gradient clipping, head dropout, augmentation and top-5 accuracy."""

import math
from collections.abc import Sequence
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from worker.engine.architectures import ARCHITECTURES, layer_groups
from worker.engine.callbacks import Callback
from worker.engine.config import EarlyStoppingConfig, FitConfig, Stage
from worker.engine.data import Preprocessing, eval_transform, image_datasets, train_transform
from worker.engine.freezing import unfreeze
from worker.engine.loop import evaluate
from worker.engine.metrics import top_k_correct
from worker.engine.optim import make_optimizer
from worker.engine.regularization import add_head_dropout
from worker.engine.trainer import Trainer
from worker.engine.weights import IMAGENET_MEAN, IMAGENET_STD, build_model

RESNET18 = ARCHITECTURES["resnet18"]
BATCH_SIZE = 32
LR = 1e-2
CPU = torch.device("cpu")

PLAIN_32 = Preprocessing(32, IMAGENET_MEAN, IMAGENET_STD)


def make_trainer(stages: Sequence[Stage], *, num_classes: int = 3, callbacks: Sequence[Callback] = (),
                 **options) -> Trainer:
    """A CPU Trainer of a fresh resnet18 with FitConfig `options` (optimizer, label_smoothing, grad_clip, …)."""
    model = build_model(RESNET18, num_classes=num_classes, weights=None, seed=0)
    config = FitConfig(stages=tuple(stages), early_stopping=EarlyStoppingConfig(patience=10), batch_size=BATCH_SIZE,
                       seed=0, **options)
    return Trainer(model=model, groups=layer_groups(model, RESNET18), config=config, num_classes=num_classes,
                   device=CPU, callbacks=callbacks)


def head_and_layer4_param_groups() -> list[dict]:
    model = build_model(RESNET18, num_classes=3, weights=None, seed=0)
    return unfreeze(layer_groups(model, RESNET18), ["layer4", "head"], lr=LR, lr_decay=2.6, weight_decay=1e-4,
                    train_bn=False)


# Optimizers


def test_sgd_gets_momentum_and_nesterov_and_keeps_each_groups_rate_and_decay():
    param_groups = head_and_layer4_param_groups()
    expected = [(g["name"], g["lr"], g["weight_decay"]) for g in param_groups]

    optimizer = make_optimizer("sgd", param_groups, momentum=0.8, nesterov=True)

    assert isinstance(optimizer, torch.optim.SGD)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == expected, \
        "the groups of `unfreeze` keep their names, discriminative rates and weight decay (0 for biases and norms)"
    assert {(g["momentum"], g["nesterov"]) for g in optimizer.param_groups} == {(0.8, True)}


def test_sgd_without_momentum_is_plain_sgd_and_adamw_is_the_default_kind():
    plain = make_optimizer("sgd", head_and_layer4_param_groups(), momentum=0.0, nesterov=True)
    assert {(g["momentum"], g["nesterov"]) for g in plain.param_groups} == {(0.0, False)}, \
        "Nesterov needs momentum, so none is asked of torch without it"
    assert isinstance(make_optimizer("adamw", head_and_layer4_param_groups()), torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        make_optimizer("adam", head_and_layer4_param_groups())


def test_a_fit_trains_with_the_configured_optimizer(new_loaders):
    trainer = make_trainer([Stage(("head",), 1, LR)], optimizer="sgd", momentum=0.5, nesterov=False)

    trainer.fit(*new_loaders())

    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert {(g["momentum"], g["nesterov"]) for g in trainer.optimizer.param_groups} == {(0.5, False)}
    assert all("momentum_buffer" in s for s in trainer.optimizer.state.values()), "momentum was used"


# Label smoothing


def val_cross_entropy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(x), y, reduction="sum") for x, y in loader]
    return float(sum(losses)) / len(loader.dataset)


class FirstEpochLoss(Callback):
    """The first epoch's training loss, as the metrics row reports it."""

    def __init__(self) -> None:
        self.train_loss: float | None = None

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        self.train_loss = self.train_loss if self.train_loss is not None else metrics["train_loss"]


def test_label_smoothing_changes_the_training_loss_but_not_the_eval_loss(new_loaders):
    runs = {}
    for smoothing in (0.0, 0.3):
        record = FirstEpochLoss()
        trainer = make_trainer([Stage(("head",), 1, LR)], label_smoothing=smoothing, callbacks=[record])
        train_loader, val_loader = new_loaders()
        result = trainer.fit(train_loader, val_loader)
        runs[smoothing] = record.train_loss
        assert result.result["val_loss"] == pytest.approx(val_cross_entropy(trainer.model, val_loader), rel=1e-5), \
            f"with label_smoothing {smoothing}, val_loss is the plain cross-entropy of the final model"
        assert "val_top5_accuracy" not in result.result, "no top-5 accuracy with 3 classes"

    assert runs[0.3] != pytest.approx(runs[0.0], rel=1e-3), "label smoothing changes the training loss"


# Gradient clipping


class GradNorms(Callback):
    """The total gradient norm of the optimizer's parameters after every batch (what the step used)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_batch_end(self, trainer: Trainer) -> None:
        grads = [p.grad for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(math.sqrt(sum(float(g.pow(2).sum()) for g in grads)))


def test_grad_clip_bounds_the_total_gradient_norm(new_loaders):
    clip = 0.05
    norms = {}
    for grad_clip in (None, clip):
        record = GradNorms()
        make_trainer([Stage(("layer4", "head"), 1, LR)], grad_clip=grad_clip, callbacks=[record]).fit(*new_loaders())
        norms[grad_clip] = record.norms

    assert max(norms[None]) > clip, "without clipping the gradients are larger than the clip (the test bites)"
    assert max(norms[clip]) <= clip * (1 + 1e-4), "with clipping every step's total gradient norm is at most grad_clip"


# Head dropout


@pytest.mark.parametrize("arch_name", ["resnet18", "mobilenet_v3_small"])
def test_head_dropout_is_active_in_train_mode_only_and_keeps_the_state_dict_keys(arch_name):
    arch = ARCHITECTURES[arch_name]
    plain = build_model(arch, num_classes=3, weights=None, seed=0)
    model = build_model(arch, num_classes=3, weights=None, seed=0)
    handle = add_head_dropout(model, arch.head_layer, 0.5)
    images = torch.randn(4, 3, 32, 32)

    assert handle is not None and add_head_dropout(plain, arch.head_layer, 0.0) is None, "p = 0 adds no hook"
    assert list(model.state_dict()) == list(plain.state_dict()), "the state dict keeps torchvision's keys"
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(images), model(images)), "eval mode: the same input gives the same output"
        plain.eval()
        assert torch.equal(model(images), plain(images)), "eval mode: dropout is inert"
        for m in (model, plain):  # train mode, with torchvision's own dropout layers (MobileNet's) held in eval
            m.train()
            for sub in m.modules():
                if isinstance(sub, torch.nn.Dropout):
                    sub.eval()
        assert torch.equal(plain(images), plain(images)), "train mode without the hook is deterministic (the control)"
        assert not torch.equal(model(images), model(images)), "train mode: dropout changes the output"


# Augmentation


@pytest.fixture
def digit_image(digit_samples) -> Image.Image:
    with Image.open(digit_samples["train"][0].path) as img:
        return img.convert("RGB")


def draws(transform, image: Image.Image, n: int = 12) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [transform(image) for _ in range(n)]


def test_without_augmentation_training_images_are_the_eval_images(digit_image):
    plain = train_transform(PLAIN_32, augment=False, hflip=False)

    assert torch.equal(plain(digit_image), eval_transform(PLAIN_32)(digit_image))


def test_augment_gives_random_crops_of_the_full_size(digit_image):
    images = draws(train_transform(PLAIN_32, augment=True), digit_image)

    assert {tuple(x.shape) for x in images} == {(3, 32, 32)}, "crops are resized to image_size"
    assert len({x.sum().item() for x in images}) > 1, "crops differ from draw to draw"


def test_hflip_gives_the_eval_image_or_its_mirror(digit_image):
    centred = eval_transform(PLAIN_32)(digit_image)
    images = draws(train_transform(PLAIN_32, hflip=True), digit_image)

    flipped = [torch.equal(x, centred.flip(-1)) for x in images]
    assert all(f or torch.equal(x, centred) for f, x in zip(flipped, images)), "only flips, no other change"
    assert any(flipped) and not all(flipped), "some draws are flipped and some are not"


def test_augmentation_changes_training_images_but_not_validation_ones(digit_samples):
    train, val = image_datasets(digit_samples["train"][:1], digit_samples["val"][:1], preprocessing=PLAIN_32,
                                augment=True, hflip=True)
    torch.manual_seed(0)

    assert not all(torch.equal(train[0][0], train[0][0]) for _ in range(4)), "training images vary"
    assert all(torch.equal(val[0][0], val[0][0]) for _ in range(4)), "validation images do not"
    with Image.open(digit_samples["val"][0].path) as img:
        centred = eval_transform(PLAIN_32)(img.convert("RGB"))
    assert torch.equal(val[0][0], centred), "validation keeps the eval transform"


# Top-5 accuracy


def test_top5_accuracy_on_a_hand_made_case():
    # 7 classes; the target ranks 1st, 4th, 5th and 6th in its row: 3 of the 4 are in the top 5.
    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5, 6],  # target 0: rank 1
        [6.0, 5, 4, 3, 2, 1, 0],  # target 3: rank 4
        [6.0, 5, 4, 3, 2, 1, 0],  # target 4: rank 5
        [6.0, 5, 4, 3, 2, 1, 0],  # target 5: rank 6
    ])
    targets = torch.tensor([0, 3, 4, 5])

    assert int(top_k_correct(logits, targets, 5)) == 3
    loss, cm, top5 = evaluate(torch.nn.Identity(), [(logits[:2], targets[:2]), (logits[2:], targets[2:])],
                              num_classes=7, device=CPU, autocast=nullcontext)
    assert top5 == pytest.approx(0.75), "top-5 accuracy over the batches"
    assert int(cm.trace()) == 1 and loss == pytest.approx(F.cross_entropy(logits, targets).item())
    _, _, none = evaluate(torch.nn.Identity(), [(logits[:, :5], torch.tensor([0, 3, 4, 1]))], num_classes=5,
                          device=CPU, autocast=nullcontext)
    assert none is None, "no top-5 accuracy with 5 classes or fewer"


def test_the_final_result_reports_top5_accuracy_with_more_than_5_classes():
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 3, 32, 32, generator=gen), torch.arange(24) % 6)
    loaders = (DataLoader(data, batch_size=12, shuffle=True, generator=torch.Generator().manual_seed(0)),
               DataLoader(data, batch_size=24))

    result = make_trainer([Stage(("head",), 1, LR)], num_classes=6).fit(*loaders).result

    assert 0.0 <= result["val_accuracy"] <= result["val_top5_accuracy"] <= 1.0
