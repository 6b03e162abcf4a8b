"""Classification metrics from a confusion matrix, checked against values worked out by hand."""

import pytest
import torch

from worker.engine.metrics import confusion_matrix, summarize


def test_confusion_matrix_rows_are_true_classes():
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])

    cm = confusion_matrix(targets, preds, 3)

    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]], "cm[true, predicted] counts"


@pytest.mark.parametrize(("cm", "expected"), [
    (
        [[5, 1, 0], [2, 3, 1], [0, 0, 4]],
        {   # precision = diagonal / column sums, recall = diagonal / row sums, F1 per class then averaged
            "accuracy": 12 / 16,
            "precision": (5 / 7 + 3 / 4 + 4 / 5) / 3,
            "recall": (5 / 6 + 3 / 6 + 4 / 4) / 3,
            "f1": (10 / 13 + 3 / 5 + 8 / 9) / 3,
            "per_class": {"precision": [5 / 7, 3 / 4, 4 / 5], "recall": [5 / 6, 1 / 2, 1.0],
                          "f1": [10 / 13, 3 / 5, 8 / 9], "support": [6, 6, 4]},
        },
    ),
    (
        [[2, 0, 0], [0, 0, 0], [1, 0, 3]],
        {   # class 1 is never true nor predicted: it counts as 0 in the macro averages
            "accuracy": 5 / 6,
            "precision": (2 / 3 + 0 + 1) / 3,
            "recall": (1 + 0 + 3 / 4) / 3,
            "f1": (4 / 5 + 0 + 6 / 7) / 3,
            "per_class": {"precision": [2 / 3, 0.0, 1.0], "recall": [1.0, 0.0, 3 / 4],
                          "f1": [4 / 5, 0.0, 6 / 7], "support": [2, 0, 4]},
        },
    ),
], ids=["three classes", "class without support"])
def test_summarize_gives_accuracy_and_macro_averages(cm, expected):
    summary = summarize(torch.tensor(cm))

    for key in ("accuracy", "precision", "recall", "f1"):
        assert summary[key] == pytest.approx(expected[key]), key
    for key in ("precision", "recall", "f1"):
        assert summary["per_class"][key] == pytest.approx(expected["per_class"][key]), f"per-class {key}"
    assert summary["per_class"]["support"] == expected["per_class"]["support"], "per-class support is the row sums"
