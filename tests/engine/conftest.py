"""Engine fixtures: a small folder of real scikit-learn digit images and a resnet18 trainer on the CPU.

Images are 32 px, three classes of 30 training and 10 validation images, so an epoch takes well under
a second. Nothing here touches a database, a broker or a web server.
"""

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from scripts.digits import digit_images, few_shot, write_folder
from worker.engine.architectures import ARCHITECTURES, layer_groups
from worker.engine.callbacks import Callback
from worker.engine.chains import forward_steps
from worker.engine.config import EarlyStoppingConfig, FitConfig, Stage
from worker.engine.data import ImageFiles, Preprocessing, Sample, eval_transform, make_loaders
from worker.engine.trainer import Trainer
from worker.engine.weights import IMAGENET_MEAN, IMAGENET_STD, build_model

CLASSES = ("0", "1", "2")
IMAGE_SIZE = 32
TRAIN_PER_CLASS = 30
VAL_PER_CLASS = 10
BATCH_SIZE = 32


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they slow down ~10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digit_samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Sample]]:
    """Training and validation samples of digits 0-2, written once per session as PNG files."""
    root = tmp_path_factory.mktemp("digits")
    train, rest = few_shot(digit_images(int(c) for c in CLASSES), per_class=TRAIN_PER_CLASS, seed=0)
    write_folder(root / "train", train)
    write_folder(root / "val", {name: items[:VAL_PER_CLASS] for name, items in rest.items()})
    return {split: [Sample(path, CLASSES.index(path.parent.name)) for path in sorted((root / split).glob("*/*.png"))]
            for split in ("train", "val")}


@pytest.fixture
def new_loaders(digit_samples: dict[str, list[Sample]]) -> Callable[[], tuple[DataLoader, DataLoader]]:
    """Fresh loaders on every call: the training loader's shuffling generator advances as it is used."""
    transform = eval_transform(Preprocessing(IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD))

    def loaders(seed: int = 0, batch_size: int = BATCH_SIZE) -> tuple[DataLoader, DataLoader]:
        return make_loaders(ImageFiles(digit_samples["train"], transform), ImageFiles(digit_samples["val"], transform),
                            batch_size=batch_size, seed=seed)

    return loaders


class Recorder(Callback):
    """Records events and epoch metrics; with `snapshots`, the model's state at every epoch and stage end."""

    def __init__(self, *, snapshots: bool = False) -> None:
        self.snapshots = snapshots
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.metrics: list[dict[str, Any]] = []
        self.epoch_states: dict[int, dict[str, torch.Tensor]] = {}
        self.stage_ends: list[dict[str, Any]] = []  # stage, best epoch and (with snapshots) the model's state

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.metrics.append(metrics)
        if self.snapshots:
            self.epoch_states[trainer.epoch] = _copy_state(trainer.model)

    def on_stage_end(self, trainer: Trainer) -> None:
        self.stage_ends.append({"stage": trainer.stage_number, "best_epoch": trainer.best.epoch, "state": None})

    # The state a stage leaves behind is read at the next hook after every callback's on_stage_end, so it
    # does not depend on whether this callback runs before or after the built-in BestWeights.
    def on_stage_start(self, trainer: Trainer) -> None:
        self._state_after_stage_end(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._state_after_stage_end(trainer)

    def _state_after_stage_end(self, trainer: Trainer) -> None:
        if self.snapshots and self.stage_ends and self.stage_ends[-1]["state"] is None:
            self.stage_ends[-1]["state"] = _copy_state(trainer.model)

    def on_event(self, trainer: Trainer, type: str, message: str, data: dict[str, Any]) -> None:
        self.events.append((type, data))

    def events_of(self, type: str) -> list[dict[str, Any]]:
        return [data for t, data in self.events if t == type]

    def epochs_per_stage(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for m in self.metrics:
            counts[m["stage"]] = counts.get(m["stage"], 0) + 1
        return counts


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trainer_for() -> Callable[..., tuple[Trainer, Recorder]]:
    """A Trainer (CPU unless `device`) of a freshly built resnet18 for a plan of stages, with a Recorder as its
    first extra callback."""

    def make(stages: Sequence[Stage], *, early_stopping: EarlyStoppingConfig = EarlyStoppingConfig(patience=10),
             max_epochs: int = 30, train_bn: bool = False, seed: int = 0, snapshots: bool = False,
             callbacks: Sequence[Callback] = (), device: torch.device = torch.device("cpu"),
             **options: Any) -> tuple[Trainer, Recorder]:
        arch = ARCHITECTURES["resnet18"]
        model = build_model(arch, num_classes=len(CLASSES), weights=None, seed=seed)
        config = FitConfig(stages=tuple(stages), early_stopping=early_stopping, train_bn=train_bn,
                           batch_size=BATCH_SIZE, max_epochs=max_epochs, seed=seed, **options)
        recorder = Recorder(snapshots=snapshots)
        trainer = Trainer(model=model, groups=layer_groups(model, arch), config=config, num_classes=len(CLASSES),
                          device=device, callbacks=[recorder, *callbacks],
                          steps=forward_steps(model, arch))
        return trainer, recorder

    return make
