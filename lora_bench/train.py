"""The training loop of the `lora-bench` and `plain` recipes: a fixed data order per seed,
gradient accumulation, per-step timing and a stop on a non-finite loss.

`lora-bench` takes length-grouped batches padded to their longest text under bf16 autocast, and
compiles on request; `plain` takes shuffled batches without autocast, as a straightforward loop would."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import LengthGroupedSampler

from .compiling import compile_model, mode_of, padded_length, uses_graphs
from .cuda_graphs import GraphedSteps, make_capturable, pad_rows
from .data import Example
from .recipes import compute_dtypes
from .schema import ExperimentSpec

Progress = Callable[[str], None]
CURVE_POINTS = 200      # the stored loss curve keeps at most this many (step, loss) points
WARMUP_STEPS = 5        # steady-state step time leaves out this many first steps (compilation, allocator)


class NonFiniteLoss(RuntimeError):
    """Training diverged: the record says at which step."""


def autocast_for(device: torch.device, dtype: torch.dtype | None = torch.bfloat16,
                 cache: bool = True) -> contextlib.AbstractContextManager:
    """`cache=False` under CUDA-graph capture, which must not keep autocast's cast weights."""
    if device.type == "cuda" and dtype is not None and (dtype != torch.bfloat16 or torch.cuda.is_bf16_supported()):
        return torch.autocast("cuda", dtype=dtype, cache_enabled=cache)
    return contextlib.nullcontext()


def encode(tokenizer: Any, examples: list[Example], max_length: int) -> list[list[int]]:
    return tokenizer([e.text for e in examples], truncation=True, max_length=max_length)["input_ids"]


def collate(tokenizer: Any, ids: list[list[int]], device: torch.device, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pads to the longest sequence of this batch, or to `pad_to` (the origin study's fixed 256)."""
    if pad_to is None:
        batch = tokenizer.pad({"input_ids": ids}, padding="longest", return_tensors="pt")
    else:
        batch = tokenizer.pad({"input_ids": ids}, padding="max_length", max_length=pad_to, return_tensors="pt")
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def pad_target(spec: ExperimentSpec) -> int | None:
    return spec.max_length if spec.padding == "max_length" else None


def shuffled_batches(count: int, batch_size: int, seed: int) -> list[list[int]]:
    """A DataLoader's `shuffle=True` order, cut into batches (the plain recipe)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """transformers' LengthGroupedSampler order (random mega-batches, each sorted by length), cut into batches."""
    generator = torch.Generator().manual_seed(seed)
    order = list(LengthGroupedSampler(batch_size, lengths=lengths, generator=generator))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def linear_schedule(optimizer: torch.optim.Optimizer, examples: int,
                    spec: ExperimentSpec) -> tuple[torch.optim.lr_scheduler.LambdaLR, int]:
    """Linear warmup and decay over the run's optimizer steps (epochs of `examples`, capped by
    `max_steps`); returns the scheduler and that step count."""
    assert spec.epochs is not None and spec.grad_accum is not None
    total_steps = math.ceil(math.ceil(examples / spec.batch_size) / spec.grad_accum) * spec.epochs
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)
    warmup = round(total_steps * (spec.warmup_ratio or 0.0))
    return get_linear_schedule_with_warmup(optimizer, warmup, total_steps), total_steps


def param_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """What the record keeps of the optimizer's groups: their sizes and peak learning rates (the
    scheduler's `initial_lr`; a number even where CUDA graphs keep the rate in a tensor)."""
    return [{"params": sum(p.numel() for p in g["params"]), "lr": float(g.get("initial_lr", g["lr"]))}
            for g in optimizer.param_groups]


def train(model: nn.Module, tokenizer: Any, examples: list[Example], spec: ExperimentSpec,
          device: torch.device, progress: Progress, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """AdamW over the trainable parameters unless the method brings its own `optimizer` (LoRA+).

    Under CUDA graphs (`compile: graphs`) batches are padded to length buckets and to the full batch
    size (padded rows weigh 0 in the loss), and micro-steps and optimizer steps replay captured graphs."""
    assert spec.epochs is not None and spec.lr is not None and spec.grad_accum is not None
    ids = encode(tokenizer, examples, spec.max_length)
    labels = torch.tensor([e.label for e in examples])
    lengths = [len(x) for x in ids]
    compile_mode = mode_of(spec)
    graphed = uses_graphs(compile_mode)
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        fused = device.type == "cuda" and spec.recipe == "lora-bench"
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay or 0.0, fused=fused)
    if graphed:
        make_capturable(optimizer, device)
    scheduler, total_steps = linear_schedule(optimizer, len(ids), spec)
    model.train()
    autocast = compute_dtypes(spec, device.type)[1]
    uncompile = compile_model(model, compile_mode)

    def weighted_loss(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
        with autocast_for(device, autocast, cache=not graphed):
            logits = model(input_ids=input_ids, attention_mask=attention_mask)
        losses = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        return (losses * weights).sum() / weights.sum()

    graphs = GraphedSteps(weighted_loss, optimizer, device, 1 / spec.grad_accum) if graphed else None
    curve: list[tuple[int, float]] = []
    step_seconds: list[float] = []
    tokens = padded = step = seen = 0
    start = step_start = time.perf_counter()
    for epoch in range(spec.epochs):
        if step >= total_steps:
            break
        if spec.recipe == "plain":
            batches = shuffled_batches(len(ids), spec.batch_size, spec.seed * 1000 + epoch)
        else:
            batches = length_grouped_batches(lengths, spec.batch_size, spec.seed * 1000 + epoch)
        epoch_loss = 0.0
        for i, batch in enumerate(batches):
            if step >= total_steps:
                break
            chunk = [ids[j] for j in batch]
            pad_to = pad_target(spec) or (padded_length(chunk, spec.max_length) if graphed else None)
            inputs = collate(tokenizer, chunk, device, pad_to)
            tokens += int(inputs["attention_mask"].sum())
            padded += inputs["attention_mask"].numel()
            if graphs is not None:
                rows, weights = pad_rows({**inputs, "labels": labels[batch].to(device)}, spec.batch_size)
                loss = graphs.backward(**rows, weights=weights.to(device))
            else:
                with autocast_for(device, autocast):
                    logits = model(**inputs)
                loss = nn.functional.cross_entropy(logits.float(), labels[batch].to(device))
                (loss / spec.grad_accum).backward()
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss became {float(loss)} at epoch {epoch + 1}, optimizer step {step}")
            epoch_loss += float(loss.detach())
            seen += len(batch)
            if (i + 1) % spec.grad_accum == 0 or i + 1 == len(batches):
                if graphs is not None:
                    graphs.step()
                else:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                curve.append((step, float(loss.detach())))   # float() waits for the GPU: steps are timed whole
                now = time.perf_counter()
                step_seconds.append(now - step_start)
                step_start = now
        progress(f"epoch {epoch + 1}/{spec.epochs}: mean loss {epoch_loss / max(i + 1, 1):.4f} "
                 f"({time.perf_counter() - start:.1f} s)")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    uncompile()
    steady = step_seconds[WARMUP_STEPS:] or step_seconds
    return {
        "step_ms_median": 1000 * float(torch.tensor(steady).median()) if steady else None,
        "first_steps_seconds": sum(step_seconds[:WARMUP_STEPS]),
        "recipe": {"name": spec.recipe, "compile": compile_mode,
                   "autocast": str(autocast).removeprefix("torch.") if autocast else None,
                   "batches": "shuffled" if spec.recipe == "plain" else "length-grouped",
                   **({"cuda_graphs": graphs.info()} if graphs is not None else {})},
        "train_seconds": seconds,
        "optimizer_steps": step,
        "examples_per_second": seen / seconds,
        "examples_seen": seen,
        "tokens_per_second": tokens / seconds,
        "tokens": tokens,
        "padding_fraction": 1 - tokens / max(padded, 1),
        "loss_curve": thin_curve(curve),
        "optimizer": type(optimizer).__name__.lower() + (" (fused)" if optimizer.defaults.get("fused") else ""),
        "param_groups": param_groups(optimizer),
    }


def thin_curve(curve: list[tuple[int, float]]) -> list[list[float]]:
    stride = max(1, math.ceil(len(curve) / CURVE_POINTS))
    kept = curve[::stride]
    if curve and kept[-1] != curve[-1]:
        kept.append(curve[-1])
    return [[s, v] for s, v in kept]
