"""Learning-rate schedules within a stage, as a factor of each group's base rate at a batch step.

Every schedule is a pure function `factor(step, total)` of the step within the stage (0 … total, stepped once
per batch). A `LambdaLR` applies the one factor to every optimizer group, so each group keeps its
discriminative rate: lr_group(t) = base_lr_group × factor(t).
"""

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "cosine", "one_cycle", "slanted_triangular")


def constant(step: int, total: int) -> float:
    return 1.0


def cosine(step: int, total: int, *, warmup_frac: float = 0.1) -> float:
    """Linear warm-up from 0 to 1 over the first `warmup_frac × total` steps, then a cosine from 1 to 0 at `total`."""
    t = min(step, total)
    warmup = warmup_frac * total
    if t < warmup:
        return t / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / max(total - warmup, 1e-12)))


def one_cycle(step: int, total: int, *, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> float:
    """Smith's 1cycle as torch's `OneCycleLR` (cosine annealing, two phases) computes it, divided by its max_lr:
    1/div_factor up to 1 over `pct_start` of the stage, then down to 1/(div_factor × final_div_factor) at step
    total - 1, where it stays."""
    t = min(step, total - 1)
    initial, final = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)
    phases = ((float(pct_start * total) - 1, initial, 1.0), (total - 1, 1.0, final))  # (last step, from, to)
    phase_start = 0.0
    for phase_end, begin, finish in phases:
        if t <= phase_end or phase_end == total - 1:
            pct = (t - phase_start) / (phase_end - phase_start)
            return finish + (begin - finish) / 2.0 * (math.cos(math.pi * pct) + 1)
        phase_start = phase_end
    raise AssertionError("the last phase always matches")


def slanted_triangular(step: int, total: int, *, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """ULMFiT's slanted triangular rates (Howard & Ruder 2018): a linear rise from 1/ratio to 1 over the first
    `cut_frac` of the stage, then a linear decay back to 1/ratio at `total`.

    `cut = cut_frac × total` is not rounded down, so short stages work and the decay ends exactly at `total`;
    where it is a whole number this is the paper's ⌊total · cut_frac⌋.
    """
    t = min(step, total)
    cut = cut_frac * total
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return (1 + p * (ratio - 1)) / ratio


def schedule_factor(kind: str, *, total_steps: int, warmup_frac: float = 0.1) -> Callable[[int], float]:
    """The factor of schedule `kind` as a function of the step, for a stage of `total_steps` batches."""
    total = max(total_steps, 1)
    if kind == "constant":
        return lambda step: constant(step, total)
    if kind == "cosine":
        return lambda step: cosine(step, total, warmup_frac=warmup_frac)
    if kind == "one_cycle":
        return lambda step: one_cycle(step, total)
    if kind == "slanted_triangular":
        return lambda step: slanted_triangular(step, total)
    raise ValueError(f"unknown learning-rate schedule '{kind}'; expected one of {', '.join(SCHEDULES)}")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, *, total_steps: int,
                   warmup_frac: float = 0.1) -> LambdaLR:
    """A per-batch scheduler over one stage; it sets every group's rate to its base rate × factor(0) at once."""
    return LambdaLR(optimizer, schedule_factor(kind, total_steps=total_steps, warmup_frac=warmup_frac))
