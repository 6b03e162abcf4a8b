"""What a training step costs with the frozen prefix run apart: head-only and half-frozen steps against a
plain forward pass and a full training step, through the engine's own chain split (and one head-only step with
the model called whole, which autograd already treats the same way).

resnet18 and resnet50 with random weights on random 64x64 images, batch 32, on the CPU. Prints one
table and writes it into docs/benchmarks.md.  Usage: `make bench-prefix` (about a minute on 2 CPU cores).
"""

import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.report import publish
from worker.engine.architectures import ARCHITECTURES, layer_groups
from worker.engine.chains import forward_steps, split
from worker.engine.freezing import set_train_mode, unfreeze
from worker.engine.weights import build_model

BATCH, SIZE, REPEATS = 32, 64, 8


def median_seconds(step: Callable[[], None]) -> float:
    step()  # warm-up
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def trainable(name: str, unfrozen: list[str]) -> tuple[torch.nn.Module, list, torch.optim.Optimizer]:
    """A fresh model with `unfrozen` groups trainable, its forward chain, and an optimizer."""
    arch = ARCHITECTURES[name]
    model = build_model(arch, num_classes=10, weights=None, seed=0)
    groups = layer_groups(model, arch)
    optimizer = torch.optim.AdamW(unfreeze(groups, unfrozen, lr=1e-3, lr_decay=1.5, weight_decay=0.0,
                                           train_bn=False))
    set_train_mode(model, groups, unfrozen, train_bn=False)
    return model, forward_steps(model, arch), optimizer


def forward_seconds(name: str, images: torch.Tensor) -> float:
    """Median seconds of an eval-mode forward pass without autograd."""
    model = build_model(ARCHITECTURES[name], num_classes=10, weights=None, seed=0).eval()

    @torch.no_grad()
    def forward_only() -> None:
        model(images)

    return median_seconds(forward_only)


def step_seconds(name: str, unfrozen: list[str], images: torch.Tensor, targets: torch.Tensor, *,
                 whole: bool = False) -> float:
    """Median seconds of one optimizer step with `unfrozen` trainable: through the chain split, or the whole
    model called as one (`whole`)."""
    model, steps, optimizer = trainable(name, unfrozen)
    forward = model if whole else split(steps)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(images), targets).backward()
        optimizer.step()

    return median_seconds(step)


def main() -> int:
    torch.manual_seed(0)
    images, targets = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (BATCH,))
    rows = ["| model | forward only (no grad, eval) | head-only step, model whole | head-only step, split | "
            "top half trains, split | full step |", "|---|---|---|---|---|---|"]
    for name in ("resnet18", "resnet50"):
        forward = forward_seconds(name, images)
        everything = list(ARCHITECTURES[name].group_names)
        timings = [step_seconds(name, ["head"], images, targets, whole=True),
                   step_seconds(name, ["head"], images, targets),
                   step_seconds(name, ["head", "layer4", "layer3"], images, targets),
                   step_seconds(name, everything, images, targets)]
        cells = [f"{forward * 1000:.0f} ms (1.00×)", *(f"{t * 1000:.0f} ms ({t / forward:.2f}×)" for t in timings)]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
               f"torch {torch.__version__}, cpu")
    publish("prefix-benchmark", f"{machine}; batch {BATCH} of {SIZE}×{SIZE} images, median of {REPEATS} steps after "
            "one warm-up; × = relative to the forward pass", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
