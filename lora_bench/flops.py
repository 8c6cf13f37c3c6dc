"""Model-FLOPs utilisation: the FLOPs a training token needs by the model's arithmetic, over the
GPU's dense bf16 peak from its datasheet. Padding tokens never count.

For a frozen base each matmul weight costs 4 FLOPs per token (forward, and the backward pass to
its input); a trained weight 6 (its own gradient too). Causal attention adds 6 * layers * seq * d
(scores and values, forward and backward, halved by the mask); bidirectional attention 12x.
"""

from __future__ import annotations

from typing import Any

# dense bf16 tensor-core peak, TFLOP/s, from each vendor datasheet (no sparsity)
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
               "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0,
               "RTX 3090": 71.0, "T4": 65.0, "V100": 125.0}


def peak_tflops(device_name: str | None) -> float | None:
    """The table's entry whose key the device's name contains, longest key first; None if unknown."""
    if not device_name:
        return None
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_TFLOPS[key]
    return None


def matmul_parameters(model: Any) -> dict[str, int]:
    """Weights of the matmuls a token passes through, frozen and trained apart; embeddings
    (a lookup, no FLOPs) are left out, an LM head is a matmul and counts."""
    import torch

    frozen = trained = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (not isinstance(weight, torch.Tensor) or isinstance(module, torch.nn.Embedding) or weight.dim() != 2
                or hasattr(module, "base_layer")):  # peft's wrapper reports its base layer's weight: count it once
            continue
        numel = logical_numel(module, weight)
        if weight.requires_grad:
            trained += numel
        else:
            frozen += numel
    return {"frozen": frozen, "trained": trained}


def logical_numel(module: Any, weight: Any) -> int:
    """A packed 4-bit weight stores two values per byte: count the matrix it stands for."""
    shape = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if all(isinstance(x, int) for x in shape):
        return shape[0] * shape[1]
    return weight.numel()


def flops_per_token(matmuls: dict[str, int], layers: int, width: int, seq_len: float, causal: bool) -> float:
    attention = (6 if causal else 12) * layers * seq_len * width
    return 4 * matmuls["frozen"] + 6 * matmuls["trained"] + attention


def utilisation(tokens_per_second: float, per_token: float, device_name: str | None) -> dict[str, Any]:
    peak = peak_tflops(device_name)
    achieved = tokens_per_second * per_token / 1e12
    return {"achieved_tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None,
            "flops_per_token": per_token, "device": device_name}


def model_utilisation(model: Any, config: Any, tokens_per_second: float, seq_len: float, causal: bool,
                      device_name: str | None) -> dict[str, Any]:
    """`utilisation` of a model whose config gives its layers and width, at a mean sequence length."""
    per_token = flops_per_token(matmul_parameters(model), config.num_hidden_layers, config.hidden_size, seq_len,
                                causal)
    return utilisation(tokens_per_second, per_token, device_name)
