"""The `compile` axis of the lora-bench recipe: what cuts a training step's overhead.

- `layers`: torch.compile on each transformer layer (regional compilation: every layer shares one
  compiled graph, so compiling costs seconds, not minutes), dynamic shapes allowed; undone before
  evaluation, whose shapes differ;
- `graphs`: the training step replayed from CUDA graphs (lora_bench.cuda_graphs), which removes the
  per-kernel launch cost that dominates small models. Graphs need fixed shapes, so batches are
  padded to a bucket of `BUCKET` tokens (`padded_length`), one graph per bucket.
Not both: inductor's seeded random ops cannot be captured by hand (on an H200 the capture failed with
"Offset increment outside graph capture"), and compiled layers already keep a 1.5B model's GPU 95% busy.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .schema import COMPILE_MODES, ExperimentSpec

BUCKET = 32


def layer_stack(model: nn.Module) -> nn.ModuleList:
    """The longest ModuleList of the model: its decoder or encoder layers."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError("compile: layers: the model has no layer list to compile")
    return max(lists, key=len)


def mode_of(spec: ExperimentSpec) -> str:
    """The compile mode an experiment runs with: only the lora-bench recipe compiles or captures."""
    return spec.compile if spec.recipe == "lora-bench" else "off"


def uses_graphs(mode: str) -> bool:
    return mode == "graphs"


def compile_model(model: nn.Module, mode: str) -> Callable[[], None]:
    """Compiles the layers in place when `mode` asks for it and returns what undoes it (CUDA graphs
    are the training loop's part)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile: {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    if mode != "layers":
        return lambda: None
    layers = list(layer_stack(model))
    for layer in layers:
        layer.compile(dynamic=True)
    return lambda: [setattr(layer, "_compiled_call_impl", None) for layer in layers] and None


def padded_length(ids: list[list[int]], max_length: int) -> int:
    """The batch's longest text rounded up to a bucket, so CUDA graphs are reused across batches."""
    return bucketed(max(len(x) for x in ids), max_length)


def bucketed(length: int, max_length: int) -> int:
    """`length` tokens rounded up to a bucket of BUCKET, at most `max_length`."""
    return min(max_length, -(-length // BUCKET) * BUCKET)
