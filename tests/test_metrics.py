"""Classification metrics against values worked out by hand."""

import numpy as np
import pytest
import torch

from lora_bench.evaluate import f1_scores, metrics_from_logits


def test_f1_by_hand():
    truth = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    macro, weighted = f1_scores(truth, predicted, 3)
    per_class = [2 * 1 / (2 + 2), 2 * 2 / (3 + 2), 2 * 1 / (1 + 2)]  # 2TP / (predicted + actual)
    assert macro == pytest.approx(np.mean(per_class))
    assert weighted == pytest.approx(np.mean(per_class))  # equal supports


def test_weighted_f1_weights_by_support_and_macro_skips_absent_classes():
    truth = np.array([0, 0, 0, 1])
    predicted = np.array([0, 0, 0, 0])
    macro, weighted = f1_scores(truth, predicted, 3)
    f1_0 = 2 * 3 / (4 + 3)
    assert macro == pytest.approx((f1_0 + 0.0) / 2)
    assert weighted == pytest.approx(f1_0 * 3 / 4)


def test_metrics_from_logits():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    m = metrics_from_logits(logits, torch.tensor([0, 1, 1]))
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["predictions"] == [0, 1, 0] and m["labels"] == [0, 1, 1]
    assert m["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1]))))
