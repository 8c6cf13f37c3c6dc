"""Quantized bases through bitsandbytes and transformers: 8-bit (LLM.int8) and 4-bit NF4/FP4,
with or without double quantization, bf16 compute.

Memory-honest by default: peft's `prepare_model_for_kbit_training` upcasts every non-quantized
weight (embeddings included) to fp32 and turns on gradient checkpointing, which made QLoRA use more
memory than LoRA in the origin study. lora-bench only freezes the base and keeps the unquantized
weights in the compute dtype, unless the grid asks for peft's preparation (`kbit_prepare: true`);
the record says which was done."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from .schema import BITS

IMPLEMENTED_BITS = frozenset(BITS)
PENDING_NOTE = "not implemented"


class QuantizationUnavailable(RuntimeError):
    """bitsandbytes cannot run here; the experiment is skipped with this reason, never run in 16-bit."""


@contextmanager
def no_hub_kernels() -> Iterator[None]:
    """bitsandbytes' CPU backend tries `kernels.get_kernel(...)`, a Hub download, at import time:
    hide the `kernels` package for that import so it takes its built-in path, offline."""
    saved = sys.modules.get("kernels", None)
    had = "kernels" in sys.modules
    sys.modules["kernels"] = None  # type: ignore[assignment]
    level = logging.getLogger("bitsandbytes").level
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.getLogger("bitsandbytes").setLevel(level)
        if had:
            sys.modules["kernels"] = saved  # type: ignore[assignment]
        else:
            del sys.modules["kernels"]


def import_bitsandbytes() -> Any:
    try:
        with no_hub_kernels():
            import bitsandbytes
    except Exception as exc:  # ImportError, or a missing native library
        raise QuantizationUnavailable(f"bitsandbytes cannot run here: {type(exc).__name__}: {exc}") from None
    return bitsandbytes


def bnb_config(bits: str, compute_dtype: Any) -> Any:
    """The transformers `BitsAndBytesConfig` for a `bits` value (None for 16)."""
    if bits == "16":
        return None
    import_bitsandbytes()
    from transformers import BitsAndBytesConfig

    if bits == "8":
        return BitsAndBytesConfig(load_in_8bit=True)
    quant_type = bits.split("-")[1]
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=bits.endswith("-dq"),
                              bnb_4bit_compute_dtype=compute_dtype)


def frozen_weight_bytes(model: Any) -> dict[str, int]:
    """Bytes the frozen weights really occupy: packed 4-bit or int8 storage plus quantization
    statistics (absmax, and the second-level state of double quantization)."""
    stored = stats = 0
    for param in model.parameters():
        if param.requires_grad:
            continue
        stored += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        if state is not None:
            stats += _state_bytes(state)
        scb = getattr(param, "SCB", None)
        if scb is not None:
            stats += scb.numel() * scb.element_size()
    return {"frozen_weight_bytes": stored + stats, "quantization_state_bytes": stats}


def _state_bytes(state: Any) -> int:
    total = 0
    for name in ("absmax", "code"):
        tensor = getattr(state, name, None)
        if tensor is not None:
            total += tensor.numel() * tensor.element_size()
    nested = getattr(state, "state2", None)
    return total + (_state_bytes(nested) if nested is not None else 0)


def logical_parameters(model: Any) -> int:
    """Parameter count with packed 4-bit tensors counted by their unpacked shape."""
    total = 0
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        if state is not None and getattr(state, "shape", None) is not None:
            n = 1
            for dim in state.shape:
                n *= dim
            total += n
        else:
            total += param.numel()
    return total
