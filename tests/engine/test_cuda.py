"""The CUDA path: bf16 autocast, float32 weights, frozen groups untouched, and a checkpoint that resumes.

Skipped without a GPU. Where one is lent (the device tool), run `python -m pytest tests/engine/test_cuda.py` and
`python -m bench.cuda` there.
"""

import math

import pytest
import torch

from worker.engine.checkpoint import Checkpointer, load_checkpoint
from worker.engine.config import Stage
from worker.engine.trainer import precision_context

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
STAGES = [Stage(("head",), 2, 1e-3), Stage(("layer4", "layer3"), 3, 1e-3)]


def test_the_precision_context_is_bf16_autocast_on_cuda():
    layer = torch.nn.Linear(4, 4).to(CUDA)

    with precision_context(CUDA)():
        out = layer(torch.randn(2, 4, device=CUDA))

    assert out.dtype == torch.bfloat16, "matmuls run in bf16 under the context"
    assert layer.weight.dtype == torch.float32, "the weights stay float32"


def test_a_staged_fit_on_cuda_learns_and_leaves_frozen_groups_alone(trainer_for, new_loaders):
    trainer, recorder = trainer_for(STAGES, device=CUDA)
    frozen = [p for g in trainer.groups if g.name in ("stem", "layer1", "layer2") for p in g.parameters()]
    before = [p.detach().clone() for p in frozen]

    result = trainer.fit(*new_loaders())

    assert all(p.is_cuda and p.dtype == torch.float32 for p in trainer.model.parameters()), "float32 on the GPU"
    assert all(math.isfinite(m["train_loss"]) and math.isfinite(m["val_loss"]) for m in recorder.metrics)
    assert all(torch.equal(a, b) for a, b in zip(before, frozen, strict=True)), "frozen groups unchanged"
    assert result.best["value"] < recorder.metrics[0]["val_loss"], "validation loss improved on the first epoch's"
    assert result.result["val_accuracy"] > 0.45, "above chance (1/3) on three digit classes (0.6 on the CPU)"


def test_a_cuda_checkpoint_resumes_on_cuda(trainer_for, new_loaders, tmp_path):
    path = tmp_path / "checkpoint.pt"
    trainer, full = trainer_for(STAGES, device=CUDA, callbacks=[Checkpointer(path)], max_epochs=3)
    trainer.fit(*new_loaders())

    resumed_trainer, resumed = trainer_for(STAGES, device=CUDA)
    result = resumed_trainer.fit(*new_loaders(), resume=load_checkpoint(path))

    assert [m["epoch"] for m in resumed.metrics] == [4, 5], "the fit continues after the checkpoint's epoch 3"
    assert result.epochs == 5 and result.stopped_reason == "completed"
