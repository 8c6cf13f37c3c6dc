"""Causal-LM training with the loss on the target tokens only.

Batches are padded on the left to their longest sequence (dynamic padding), so every row ends at
the last position: the LM head is then applied to the last `max target + 1` positions only
(`logits_to_keep`), which on a small model is a fifth of the compute it would be over the whole
prompt. Labels are -100 on the prompt and on padding. Position ids follow the attention mask, so a
left-padded row sees the positions it would see alone. Batch order is the core's seeded
length-grouped order; the schedule, autocast and the non-finite stop are the core's too.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from ..schema import ExperimentSpec
from ..train import NonFiniteLoss, autocast_for, length_grouped_batches, linear_schedule, param_groups, thin_curve

IGNORE = -100
Progress = Callable[[str], None]


def build_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids`, `attention_mask`, `position_ids` and `labels` (-100 on prompt and padding)."""
    length = max(len(p) + len(t) for p, t in pairs)
    input_ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    labels = torch.full((len(pairs), length), IGNORE, dtype=torch.long)
    for i, (prompt, target) in enumerate(pairs):
        start = length - len(prompt) - len(target)
        input_ids[i, start:] = torch.tensor(prompt + target)
        mask[i, start:] = 1
        labels[i, length - len(target):] = torch.tensor(target)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
            "position_ids": positions(mask).to(device), "labels": labels.to(device)}


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def target_loss(model: nn.Module, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the target tokens of a left-padded batch, the LM head on the last positions only."""
    labels = batch["labels"]
    keep = int((labels != IGNORE).sum(-1).max()) + 1
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=keep, use_cache=False)
    logits = out.logits[:, -keep:-1].float()
    wanted = labels[:, labels.shape[1] - keep + 1:]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), wanted.reshape(-1),
                                       ignore_index=IGNORE, reduction=reduction)


def train(model: nn.Module, pairs: list[tuple[list[int], list[int]]], pad_id: int, spec: ExperimentSpec,
          device: torch.device, progress: Progress, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    assert spec.epochs is not None and spec.lr is not None and spec.grad_accum is not None
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay or 0.0)
    lengths = [len(p) + len(t) for p, t in pairs]
    scheduler, total_steps = linear_schedule(optimizer, len(pairs), spec)
    model.train()
    curve: list[tuple[int, float]] = []
    tokens = target_tokens = padded = step = seen = 0
    start = time.perf_counter()
    for epoch in range(spec.epochs):
        if step >= total_steps:
            break
        batches = length_grouped_batches(lengths, spec.batch_size, spec.seed * 1000 + epoch)
        epoch_loss, done = 0.0, 0
        for i, order in enumerate(batches):
            if step >= total_steps:
                break
            batch = build_batch([pairs[j] for j in order], pad_id, device)
            with autocast_for(device):
                loss = target_loss(model, batch)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss became {float(loss)} at epoch {epoch + 1}, optimizer step {step}")
            (loss / spec.grad_accum).backward()
            tokens += int(batch["attention_mask"].sum())
            target_tokens += int((batch["labels"] != IGNORE).sum())
            padded += batch["attention_mask"].numel()
            epoch_loss += float(loss.detach())
            done += 1
            seen += len(order)
            if (i + 1) % spec.grad_accum == 0 or i + 1 == len(batches):
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                curve.append((step, float(loss.detach())))
                if step % 10 == 0:
                    progress(f"step {step}/{total_steps}: loss {float(loss.detach()):.4f} ({time.perf_counter() - start:.0f} s)")
        progress(f"epoch {epoch + 1}/{spec.epochs}: mean target loss {epoch_loss / max(done, 1):.4f} "
                 f"({time.perf_counter() - start:.1f} s)")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "train_seconds": seconds,
        "optimizer_steps": step,
        "examples_per_second": seen / seconds,
        "examples_seen": seen,
        "tokens_per_second": tokens / seconds,
        "tokens": tokens,
        "target_tokens": target_tokens,
        "padding_fraction": 1 - tokens / max(padded, 1),
        "loss": "cross-entropy on target tokens only (prompt and padding masked)",
        "loss_curve": thin_curve(curve),
        "optimizer": type(optimizer).__name__.lower(),
        "param_groups": param_groups(optimizer),
    }
