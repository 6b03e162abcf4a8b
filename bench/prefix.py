"""What a training step costs with the frozen prefix run apart: head-only and half-frozen steps against a
plain forward pass and a full training step, through the engine's own chain split.

resnet18 and resnet50 with random weights on random 64x64 images, batch 32, on the CPU. Prints one
table and writes it into docs/benchmarks.md.  Usage: `make bench-prefix` (about a minute on 2 CPU cores).
"""

import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from worker.engine.architectures import ARCHITECTURES, layer_groups
from worker.engine.chains import forward_steps, split
from worker.engine.freezing import set_train_mode, unfreeze
from worker.engine.weights import build_model

BATCH, SIZE, REPEATS = 32, 64, 8
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- prefix-benchmark -->", "<!-- /prefix-benchmark -->"


def median_seconds(step: Callable[[], None]) -> float:
    step()  # warm-up
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def training_step(name: str, unfrozen: list[str] | None, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Median seconds of one optimizer step with `unfrozen` groups trainable (None: a no-grad eval forward)."""
    arch = ARCHITECTURES[name]
    model = build_model(arch, num_classes=10, weights=None, seed=0)
    groups = layer_groups(model, arch)
    if unfrozen is None:
        model.eval()

        @torch.no_grad()
        def forward_only() -> None:
            model(images)

        return median_seconds(forward_only)
    optimizer = torch.optim.AdamW(unfreeze(groups, unfrozen, lr=1e-3, lr_decay=1.5, weight_decay=0.0,
                                           train_bn=False))
    set_train_mode(model, groups, unfrozen, train_bn=False)
    forward = split(forward_steps(model, arch))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(images), targets).backward()
        optimizer.step()

    return median_seconds(step)


def main() -> int:
    torch.manual_seed(0)
    images, targets = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (BATCH,))
    rows = ["| model | forward only (no grad, eval) | head-only step | top half trains | full step |",
            "|---|---|---|---|---|"]
    for name in ("resnet18", "resnet50"):
        forward = training_step(name, None, images, targets)
        cells = [f"{forward * 1000:.0f} ms (1.00×)"]
        for unfrozen in (["head"], ["head", "layer4", "layer3"], list(ARCHITECTURES[name].group_names)):
            seconds = training_step(name, unfrozen, images, targets)
            cells.append(f"{seconds * 1000:.0f} ms ({seconds / forward:.2f}×)")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
               f"torch {torch.__version__}, cpu")
    table = "\n".join([f"Measured {time.strftime('%Y-%m-%d')} on {machine}; batch {BATCH} of {SIZE}×{SIZE} images, "
                       f"median of {REPEATS} steps after one warm-up; × = relative to the forward pass.", "", *rows])
    print("\n" + table)
    text = DOCS.read_text()
    block = f"{START}\n{table}\n{END}"
    text = re.sub(f"{START}.*?{END}", block, text, flags=re.S) if START in text else text + "\n" + block + "\n"
    DOCS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
