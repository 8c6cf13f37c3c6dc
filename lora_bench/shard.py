"""`--lb-shard i/N`: one host's share of a grid. Every host computes the same split from the same
grid, so the N shards are disjoint and together cover it, and no host needs to talk to another.

Shards are balanced by predicted cost with greedy longest-processing-time: experiments sorted by
(cost descending, test id), each given to the shard with the least cost so far (the lowest index on
a tie). The largest shard then costs at most the mean plus the costliest experiment. Experiments that
a ratio target compares (lora_bench.perf_targets.side_by_side_groups) go to one shard together: a
ratio is only measured side by side on one machine.

The cost is `lora_bench.estimate.predicted_cost(spec)` where that exists; otherwise `proxy_cost`.
Either way it is relative: only the ratios between experiments matter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from . import catalog
from .schema import ExperimentSpec

# How much one training example costs per weight, relative to a LoRA step: head-only runs one forward
# pass over its examples (its head is fitted on cached features); full fine-tuning also computes every
# weight's gradient and AdamW update. A quantized base dequantizes its weights at every matmul.
METHOD_FACTOR = {"head": 0.4, "full": 1.5}
QUANTIZED_FACTOR = 1.3
# Per experiment, whatever the training set: loading, evaluating and timing the model, in examples.
FIXED_EXAMPLES = 100
HUB_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)([bBmM])(?![a-zA-Z])")
UNKNOWN_PARAMS = 1e9   # a hub id that names no size


def parse_shard(text: str) -> tuple[int, int]:
    """`"2/4"` -> (2, 4); anything else raises ValueError with what is allowed."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match:
        index, count = int(match.group(1)), int(match.group(2))
        if 1 <= index <= count:
            return index, count
    raise ValueError(f"--lb-shard: {text!r} is not allowed; i/N with 1 <= i <= N (e.g. 1/4)")


def parameter_count(model: str) -> float:
    """A transformer's weight count from its config (embedded, local or `shape:` model), or from the
    size a hub id names (`Qwen/Qwen3-0.6B` -> 0.6e9): good to tens of percent, which is enough here."""
    ref = catalog.parse_model(model)
    config = _config_file(ref)
    if config is not None:
        c = json.loads(config.read_text())
        hidden, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        inner = c.get("intermediate_size", 4 * hidden)
        mlp = 3 if c.get("hidden_act") == "silu" else 2   # gated MLPs (Llama, Qwen) have three matrices
        return float(vocab * hidden + layers * (4 * hidden * hidden + mlp * hidden * inner))
    match = HUB_SIZE.search(ref.value.split("/")[-1])
    if match:
        return float(match.group(1)) * (1e9 if match.group(2) in "bB" else 1e6)
    return UNKNOWN_PARAMS


def _config_file(ref: catalog.ModelRef) -> Path | None:
    if ref.kind == "shape":
        return ref.path
    if ref.kind == "embedded" and (catalog.SHAPES / f"{ref.value}.json").exists():
        return catalog.SHAPES / f"{ref.value}.json"   # embedded SmolLM2 is a GGUF file; its shape holds the config
    if ref.path is not None and (ref.path / "config.json").exists():
        return ref.path / "config.json"
    return None


def proxy_cost(spec: ExperimentSpec) -> float:
    """Weights times examples trained (n per class stands for the data size), weighted by method and
    bits, plus a fixed share per experiment."""
    examples = spec.n * (spec.epochs or 1)
    if spec.max_steps is not None:
        examples = min(examples, spec.max_steps * spec.batch_size * (spec.grad_accum or 1))
    factor = METHOD_FACTOR.get(spec.method, 1.0) * (QUANTIZED_FACTOR if spec.quantized else 1.0)
    return parameter_count(spec.model) * (examples * factor + FIXED_EXAMPLES)


def estimator() -> Callable[[ExperimentSpec], float] | None:
    try:
        from .estimate import predicted_cost
    except (ImportError, AttributeError):
        return None
    return predicted_cost


def costs(specs: list[ExperimentSpec]) -> tuple[list[float], str]:
    """Each spec's cost and where the costs came from. One source for all of them, so their ratios mean
    something: if the estimator fails on any spec, the proxy prices every one."""
    predicted = estimator()
    if predicted is not None:
        try:
            return [float(predicted(s)) for s in specs], "lora_bench.estimate.predicted_cost"
        except Exception as exc:  # a module still being written must not stop a sweep
            return [proxy_cost(s) for s in specs], f"proxy (the estimator failed: {type(exc).__name__}: {exc})"
    return [proxy_cost(s) for s in specs], "proxy"


def split(cost_by_id: dict[str, float], count: int, groups: dict[str, str] | None = None) -> list[list[str]]:
    """Greedy longest-processing-time over groups (`groups` maps a test id to its group; by default
    each experiment is its own): the test ids of each of `count` shards, costliest first. A group
    stays whole, so that the two sides of a grid's ratio target run on one host."""
    groups = groups or {t: t for t in cost_by_id}
    members: dict[str, list[str]] = {}
    for test_id in cost_by_id:
        members.setdefault(groups[test_id], []).append(test_id)
    unit_cost = group_costs(cost_by_id, groups)
    shards: list[list[str]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for unit in sorted(unit_cost, key=lambda u: (-unit_cost[u], u)):
        target = min(range(count), key=lambda k: (loads[k], k))
        shards[target].extend(members[unit])
        loads[target] += unit_cost[unit]
    return [sorted(ids, key=lambda t: (-cost_by_id[t], t)) for ids in shards]


def group_costs(cost_by_id: dict[str, float], groups: dict[str, str]) -> dict[str, float]:
    """Each group's cost: the sum of its experiments'."""
    total: dict[str, float] = {}
    for test_id, cost in cost_by_id.items():
        total[groups[test_id]] = total.get(groups[test_id], 0.0) + cost
    return total
