"""Atomic per-epoch checkpoints: the trainer's whole state, written to a temporary file and renamed."""

import os
from pathlib import Path
from typing import Any

import torch

from worker.engine.callbacks import Callback


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two writers never share a temporary file
    torch.save(state, tmp)
    os.replace(tmp, path)  # a reader sees the old checkpoint or the new one, never half of one


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None; tensors and plain values only (never an arbitrary pickle)."""
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


class Checkpointer(Callback):
    """Saves the trainer's state at every epoch end, after the other callbacks have seen the epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        save_checkpoint(trainer.state_dict(), self.path)
