"""Classification quality: logits over a split, then accuracy, macro/weighted F1 and loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
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


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    predictions = logits.argmax(-1).numpy()
    truth = labels.numpy()
    return {
        "accuracy": float(accuracy_score(truth, predictions)),
        "macro_f1": float(f1_score(truth, predictions, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(truth, predictions, average="weighted", zero_division=0)),
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
