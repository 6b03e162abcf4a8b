"""The offline transfer benchmark of ../shared/bench/TASK.md, run through the engine the worker uses.

resnet18 pretrained from scratch on scikit-learn's digits 0-4, fine-tuned on digits 5-9 with 30 images per
class, seeds 0-2, a 12-epoch budget, batch 32. Every strategy runs with its defaults (epochs per stage set
to fit the budget), plus the job defaults a user gets with nothing but a dataset and a base model, next to
a bare PyTorch full fine-tune in the same run so times compare. Prints one table and writes it into
docs/benchmarks.md.  Usage: `make bench` (about 6 minutes on 2 CPU cores).
"""

import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from bench.report import publish
from models.plan import resolve_plan
from models.spec import EarlyStopping, Hyperparameters, Strategy
from worker.engine.architectures import ARCHITECTURES, layer_groups
from worker.engine.callbacks import Callback
from worker.engine.chains import forward_steps
from worker.engine.regularization import add_head_dropout
from worker.engine.trainer import Trainer
from worker.engine.weights import build_model
from worker.job_config import fit_config

SEEDS = (0, 1, 2)
BUDGET = 12
ARCH = ARCHITECTURES["resnet18"]

# name -> (strategy fields, early-stopping fields); epochs per stage chosen so each plan fits 12 epochs.
METHODS = {
    "job defaults (gradual, 3 ep/stage, 2 groups/stage)": ({}, {}),
    "gradual, 1 group/stage (ULMFiT's pace)": ({"type": "gradual", "groups_per_stage": 1}, {}),
    "full": ({"type": "full", "epochs_per_stage": 12}, {}),
    "head_only": ({"type": "head_only", "epochs_per_stage": 12}, {}),
    "lp_ft (6 + 6)": ({"type": "lp_ft", "epochs_per_stage": 6}, {}),
    "chain_thaw (1 ep/step)": ({"type": "chain_thaw", "epochs_per_stage": 1}, {}),
    "auto (RGN, 3 ep/stage, 2 groups/decision)": ({"type": "auto"}, {}),
}


def task_tensors():
    """TASK.md's preprocessing: x/16, bilinear to 32x32, three channels, (x - 0.5) / 0.5."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - 0.5) / 0.5, torch.tensor(digits.target)


def pretrain(x, y) -> dict[str, torch.Tensor]:
    idx = np.flatnonzero(y.numpy() < 5)
    train_idx, held_idx = train_test_split(idx, test_size=0.2, stratify=y.numpy()[idx], random_state=0)
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    xs, ys = x[train_idx], y[train_idx]
    for _ in range(8):
        model.train()
        for b in torch.randperm(len(xs), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xs[b]), ys[b]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[held_idx]).argmax(1) == y[held_idx]).float().mean().item()
    print(f"base model (digits 0-4, 8 epochs): held-out accuracy {acc:.4f}")
    return model.state_dict()


def target_split(y, seed: int):
    rng = np.random.RandomState(seed)
    labels = y.numpy()
    train = np.concatenate([rng.choice(np.sort(np.flatnonzero(labels == c)), 30, replace=False) for c in range(5, 10)])
    val = np.setdiff1d(np.flatnonzero(labels >= 5), train)
    return train, val


@dataclass
class Run:
    best_acc: float
    epochs: int
    seconds: float


class Accuracies(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_epoch_end(self, trainer, metrics) -> None:
        self.values.append(metrics["val_accuracy"])


def job_spec(strategy: dict, early: dict, seed: int) -> dict:
    """The spec a job would store for these choices, normalized and planned as the API does."""
    spec = Strategy(**strategy)
    return {"strategy": {**spec.model_dump(mode="json"), "plan": resolve_plan(spec, list(ARCH.group_names))},
            "early_stopping": EarlyStopping(**early).model_dump(mode="json"),
            "hyperparameters": Hyperparameters(batch_size=32, max_epochs=BUDGET, image_size=32).model_dump(mode="json"),
            "seed": seed}


def run_engine(base, x, y, seed: int, strategy: dict, early: dict) -> Run:
    train_idx, val_idx = target_split(y, seed)
    spec = job_spec(strategy, early, seed)
    config = fit_config(spec)  # the worker's own conversion
    started = time.perf_counter()
    model = build_model(ARCH, num_classes=5, weights=None, init_state=base, seed=seed)
    add_head_dropout(model, ARCH.head_layer, spec["hyperparameters"]["dropout"])
    accs = Accuracies()
    trainer = Trainer(model=model, groups=layer_groups(model, ARCH), config=config, num_classes=5,
                      device=torch.device("cpu"), callbacks=[accs], steps=forward_steps(model, ARCH))
    train = TensorDataset(x[train_idx], y[train_idx] - 5)
    train_loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    trainer.fit(train_loader, DataLoader(TensorDataset(x[val_idx], y[val_idx] - 5), batch_size=256))
    return Run(max(accs.values), len(accs.values), time.perf_counter() - started)


def run_bare_full(base, x, y, seed: int) -> Run:
    """Anchor (a): plain PyTorch, AdamW(1e-3) on everything, BN in train mode, 12 epochs."""
    import torchvision

    train_idx, val_idx = target_split(y, seed)
    started = time.perf_counter()
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    model.load_state_dict(base)
    torch.manual_seed(seed)
    model.fc = nn.Linear(512, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x[train_idx], y[train_idx] - 5), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    accs = []
    for _ in range(BUDGET):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            accs.append((model(x[val_idx]).argmax(1) == (y[val_idx] - 5)).float().mean().item())
    return Run(max(accs), BUDGET, time.perf_counter() - started)


def summarize(name: str, runs: list[Run]) -> str:
    accs = [r.best_acc for r in runs]
    return (f"| {name} | {statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f} | "
            f"{', '.join(f'{a:.4f}' for a in accs)} | {statistics.mean(r.epochs for r in runs):.1f} | "
            f"{statistics.mean(r.seconds for r in runs):.1f} |")


def main() -> int:
    only = sys.argv[1:]
    x, y = task_tensors()
    base = pretrain(x, y)
    rows = ["| method | best val acc (mean ± std) | per seed | mean epochs | mean wall s |", "|---|---|---|---|---|"]
    rows.append(summarize("bare PyTorch full fine-tune (anchor a)", [run_bare_full(base, x, y, s) for s in SEEDS]))
    print(rows[-1], flush=True)
    for name, (strategy, early) in METHODS.items():
        if only and not any(o in name for o in only):
            continue
        rows.append(summarize(name, [run_engine(base, x, y, s, strategy, early) for s in SEEDS]))
        print(rows[-1], flush=True)
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}, "
               f"Python {platform.python_version()}, torch {torch.__version__}")
    publish("transfer-benchmark", f"{machine}; seeds {list(SEEDS)}; budget {BUDGET} epochs, batch 32; std over seeds "
            "(ddof=1)", rows, write=not only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
