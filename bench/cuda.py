"""Training throughput on a CUDA GPU: float32 against the engine's bf16 autocast, with everything or only the head
training, through the engine's chain split. resnet50 on random 224x224 images, batch 64.

Prints one table and writes it into docs/benchmarks.md. Needs a GPU: `python -m bench.cuda` where the device tool
lends one (about a minute).
"""

import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from bench.report import publish
from worker.engine.architectures import ARCHITECTURES, layer_groups
from worker.engine.chains import forward_steps, split
from worker.engine.freezing import set_train_mode, unfreeze
from worker.engine.trainer import precision_context
from worker.engine.weights import build_model

ARCH, BATCH, SIZE, WARMUP, STEPS = ARCHITECTURES["resnet50"], 64, 224, 5, 30


def images_per_second(unfrozen: list[str], autocast, device: torch.device) -> float:
    model = build_model(ARCH, num_classes=10, weights=None, seed=0).to(device)
    groups = layer_groups(model, ARCH)
    optimizer = torch.optim.AdamW(unfreeze(groups, unfrozen, lr=1e-3, lr_decay=1.5, weight_decay=0.0,
                                           train_bn=False))
    set_train_mode(model, groups, unfrozen, train_bn=False)
    forward = split(forward_steps(model, ARCH))
    images = torch.randn(BATCH, 3, SIZE, SIZE, device=device)
    targets = torch.randint(0, 10, (BATCH,), device=device)

    def step() -> None:
        with autocast():
            loss = F.cross_entropy(forward(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(WARMUP):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    torch.cuda.synchronize()
    return STEPS * BATCH / (time.perf_counter() - started)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device here; run this where the device tool lends a GPU")
        return 1
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    rows = ["| training | float32 images/s | bf16 autocast images/s | bf16 speed-up |", "|---|---|---|---|"]
    for label, unfrozen in (("everything", list(ARCH.group_names)), ("head only", ["head"])):
        fp32 = images_per_second(unfrozen, nullcontext, device)
        bf16 = images_per_second(unfrozen, precision_context(device), device)
        rows.append(f"| {label} | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.2f}× |")
        print(rows[-1], flush=True)
    publish("cuda-benchmark", f"{torch.cuda.get_device_name()}, torch {torch.__version__}; resnet50, batch {BATCH} of "
            f"{SIZE}×{SIZE} random images, {STEPS} steps after {WARMUP} warm-up", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
