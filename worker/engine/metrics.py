"""Classification metrics from a confusion matrix."""

import torch


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted classes."""
    idx = targets.to(torch.int64) * num_classes + preds.to(torch.int64)
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def top_k_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """How many rows of `logits` rank their target among their `k` highest scores (ties by `topk`'s order)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == targets.to(torch.int64).unsqueeze(1)).any(1).sum()


def summarize(cm: torch.Tensor) -> dict:
    """Accuracy, macro precision/recall/F1, and the same per class (0 where a class has no support)."""
    cm = cm.to(torch.float64)
    tp = cm.diag()
    predicted = cm.sum(0)
    actual = cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    return {
        "accuracy": float(tp.sum() / cm.sum().clamp(min=1)),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "per_class": {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
                      "support": actual.to(torch.int64).tolist()},
    }
