"""Greedy decoding, reference perplexity and generation speed.

Per batch of left-padded prompts the prompt is run once: its key/value cache first scores the
reference (teacher-forced: the perplexity of the reference under the model), is cropped back to
the prompt, and then decodes greedily. One prefill serves both measurements.

Speed: time to first token (the prefill plus the first argmax) and decode tokens/s at batch 1, and
generated tokens/s at a larger batch; each decodes a fixed number of tokens (stops ignored), so
models that stop early are not timed on shorter work.
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from typing import Any, Callable

import torch
from pytest_benchmark.stats import Stats
from torch import nn

from ..train import autocast_for
from .data import GenExample
from .prompts import Formatter
from .train import positions

WARMUP = 2


def _pad_left(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row)
        mask[i, length - len(row):] = 1
    return ids.to(device), mask.to(device)


def _pad_right(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids.to(device), mask.to(device)


def _cache_keyword(model: nn.Module) -> str:
    """`cache` (transformers >= 5.2x) or `past_key_values` (before): the keyword the base model's forward takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def crop(cache: Any, length: int) -> bool:
    """Cut a key/value cache back to its first `length` positions (a negative count: both APIs)."""
    if not hasattr(cache, "crop") or not hasattr(cache, "get_seq_length"):
        return False
    extra = int(cache.get_seq_length()) - length
    if extra > 0:
        cache.crop(-extra)
    return int(cache.get_seq_length()) == length


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def prefill(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].float(), _cache_of(out)


@torch.no_grad()
def decode_steps(model: nn.Module, first: torch.Tensor, cache: Any, mask: torch.Tensor, steps: int,
                 pad_id: int, done: Callable[[int, list[int]], bool] | None = None) -> list[list[int]]:
    """Greedy continuation from a prefilled cache: `steps` tokens at most per row; a row stops when
    `done(row, ids)` says so (never, for timing)."""
    batch = first.shape[0]
    keyword = _cache_keyword(model)
    start_pos = mask.sum(-1)
    token = first
    generated: list[list[int]] = [[] for _ in range(batch)]
    finished = [False] * batch
    for step in range(steps):
        for row in range(batch):
            if not finished[row]:
                generated[row].append(int(token[row]))
                if done is not None and done(row, generated[row]):
                    finished[row] = True
        if all(finished) or step == steps - 1:
            break
        feed = torch.where(torch.tensor(finished, device=token.device), torch.full_like(token, pad_id), token)
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=mask.device)], dim=1)
        out = model(input_ids=feed[:, None], attention_mask=mask, position_ids=(start_pos + step)[:, None],
                    use_cache=True, **{keyword: cache})
        cache = _cache_of(out)
        token = out.logits[:, -1].float().argmax(-1)
    return generated


@torch.no_grad()
def generate_and_score(model: nn.Module, formatter: Formatter, examples: list[GenExample], device: torch.device,
                       batch_size: int, max_new_tokens: int,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Greedy replies and per-example reference negative log-likelihood (summed) and token counts."""
    model.eval()
    tokenizer = formatter.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [formatter.encode(e) for e in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    keyword = _cache_keyword(model)
    replies: list[str] = [""] * len(examples)
    reply_ids: list[list[int]] = [[] for _ in examples]
    nll = [0.0] * len(examples)
    counts = [0] * len(examples)
    start = time.perf_counter()
    for b, at in enumerate(range(0, len(order), batch_size)):
        chunk = order[at:at + batch_size]
        ids, mask = _pad_left([encoded[i][0] for i in chunk], pad_id, device)
        with autocast_for(device):
            last, cache = prefill(model, ids, mask)
            refs, ref_mask = _pad_right([encoded[i][1] for i in chunk], pad_id, device)
            out = model(input_ids=refs, attention_mask=torch.cat([mask, ref_mask], dim=1),
                        position_ids=mask.sum(-1, keepdim=True) + torch.arange(refs.shape[1], device=device),
                        use_cache=True, **{keyword: cache})
            logits = torch.cat([last[:, None], out.logits[:, :-1].float()], dim=1)
            losses = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), refs.reshape(-1),
                                                 reduction="none").view(refs.shape) * ref_mask
            cache = _cache_of(out)
            if not crop(cache, ids.shape[1]):  # a cache that cannot be cut back: prefill again
                last, cache = prefill(model, ids, mask)
            rows = decode_steps(model, last.argmax(-1), cache, mask, max_new_tokens, pad_id,
                                lambda row, got: formatter.stopped(got))
        for j, i in enumerate(chunk):
            reply_ids[i] = rows[j]
            replies[i] = formatter.finish(rows[j])
            nll[i] = float(losses[j].sum())
            counts[i] = int(ref_mask[j].sum())
        if progress is not None and (b + 1) % 4 == 0:
            progress(f"generated {min(at + batch_size, len(order))}/{len(order)} ({time.perf_counter() - start:.0f} s)")
    total_nll, total_tokens = sum(nll), sum(counts)
    return {
        "replies": replies,
        "reply_tokens": [len(r) for r in reply_ids],
        "nll": nll,
        "ref_tokens": counts,
        "loss": total_nll / max(total_tokens, 1),
        "perplexity": math.exp(total_nll / max(total_tokens, 1)),
        "seconds": time.perf_counter() - start,
    }


def _stats(samples: list[float]) -> dict[str, Any]:
    stats = Stats()
    for s in samples:
        stats.update(s)
    summary = {k: v for k, v in stats.as_dict().items() if isinstance(v, (int, float))}
    data = sorted(samples)
    p95 = statistics.quantiles(data, n=20, method="inclusive")[-1] if len(data) > 1 else data[0]
    return {"unit": "s", "warmup": WARMUP, "stats": summary, "median_ms": stats.median * 1e3, "p95_ms": p95 * 1e3}


@torch.no_grad()
def measure_speed(model: nn.Module, formatter: Formatter, examples: list[GenExample], device: torch.device,
                  rounds: int, new_tokens: int, batch: int) -> dict[str, Any]:
    """Time to first token and decode tokens/s at batch 1 (warmed up, `rounds` prompts), and
    generated tokens/s for one batch of `batch` prompts; `new_tokens` decoded each time."""
    model.eval()
    tokenizer = formatter.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = [formatter.prompt_ids(e) for e in examples[:max(rounds, batch, 1)]]
    ttft, decode_rates = [], []
    for i in range(WARMUP + rounds):
        ids, mask = _pad_left([prompts[i % len(prompts)]], pad_id, device)
        _sync(device)
        start = time.perf_counter()
        with autocast_for(device):
            last, cache = prefill(model, ids, mask)
            first = last.argmax(-1)
            _sync(device)
            first_at = time.perf_counter()
            decode_steps(model, first, cache, mask, new_tokens, pad_id)
        _sync(device)
        end = time.perf_counter()
        if i >= WARMUP:
            ttft.append(first_at - start)
            decode_rates.append((new_tokens - 1) / max(end - first_at, 1e-9))
    rows = [prompts[i % len(prompts)] for i in range(batch)]
    ids, mask = _pad_left(rows, pad_id, device)
    _sync(device)
    start = time.perf_counter()
    with autocast_for(device):
        last, cache = prefill(model, ids, mask)
        decode_steps(model, last.argmax(-1), cache, mask, new_tokens, pad_id)
    _sync(device)
    seconds = time.perf_counter() - start
    latency = _stats(ttft)
    return {
        **latency,
        "measures": "time to first token at batch 1 (prefill + first greedy token)",
        "prompt_tokens_mean": statistics.mean(len(p) for p in prompts[:max(rounds, 1)]),
        "new_tokens": new_tokens,
        "ttft_ms_median": latency["median_ms"],
        "decode_tokens_per_second_batch1": statistics.median(decode_rates),
        "batch": batch,
        "throughput_tokens_per_second": batch * new_tokens / seconds,
        "throughput_prompts_per_second": batch / seconds,
    }
