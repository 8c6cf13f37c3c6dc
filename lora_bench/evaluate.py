"""Classification quality: logits over a split, then accuracy, macro/weighted F1 and loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Example
from .train import autocast_for, collate, encode

EVAL_BATCH = 64


@torch.no_grad()
def run_batched(fn: Any, tokenizer: Any, examples: list[Example], max_length: int,
                device: torch.device, pad_to: int | None = None) -> torch.Tensor:
    """`fn(input_ids, attention_mask)` over examples sorted by length, returned in the original order."""
    ids = encode(tokenizer, examples, max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    outputs: list[torch.Tensor] = []
    for start in range(0, len(order), EVAL_BATCH):
        chunk = order[start:start + EVAL_BATCH]
        with autocast_for(device):
            outputs.append(fn(**collate(tokenizer, [ids[i] for i in chunk], device, pad_to)).float().cpu())
    stacked = torch.cat(outputs)
    result = torch.empty_like(stacked)
    result[torch.tensor(order)] = stacked
    return result


def evaluate(model: nn.Module, tokenizer: Any, examples: list[Example], max_length: int,
             device: torch.device, pad_to: int | None = None) -> dict[str, Any]:
    model.eval()
    logits = run_batched(model, tokenizer, examples, max_length, device, pad_to)
    labels = torch.tensor([e.label for e in examples])
    return metrics_from_logits(logits, labels)


def f1_scores(truth: np.ndarray, predictions: np.ndarray, classes: int) -> tuple[float, float]:
    """Macro and support-weighted F1 over `classes` (a class never predicted nor present scores 0)."""
    f1 = np.zeros(classes)
    support = np.bincount(truth, minlength=classes)
    for c in range(classes):
        tp = np.sum((predictions == c) & (truth == c))
        denominator = np.sum(predictions == c) + support[c]
        f1[c] = 2 * tp / denominator if denominator else 0.0
    present = support > 0
    macro = float(f1[present].mean()) if present.any() else 0.0
    weighted = float((f1 * support).sum() / support.sum()) if support.sum() else 0.0
    return macro, weighted


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    predictions = logits.argmax(-1).numpy()
    truth = labels.numpy()
    macro, weighted = f1_scores(truth, predictions, logits.shape[1])
    return {
        "accuracy": float((predictions == truth).mean()),
        "macro_f1": macro,
        "weighted_f1": weighted,
        "loss": float(nn.functional.cross_entropy(logits, labels)),
        "predictions": predictions.astype(int).tolist(),
        "labels": truth.astype(int).tolist(),
        "n": int(len(truth)),
        "prediction_entropy": _entropy(np.bincount(predictions, minlength=logits.shape[1])),
    }


def _entropy(counts: np.ndarray) -> float:
    """Entropy of the predicted-class distribution: near 0 when a model collapsed onto one class."""
    p = counts / max(counts.sum(), 1)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())
