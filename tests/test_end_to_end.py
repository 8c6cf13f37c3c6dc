"""LoRA on real BBC headlines with the embedded MiniLM, on CPU: well above chance (0.2)."""

from __future__ import annotations

from lora_bench.grid import resolve
from lora_bench.runner import run


def test_lora_on_bbc_headlines_learns_the_topics(tmp_path):
    spec = resolve({"model": "minilm-l6", "method": "lora", "rank": 8, "targets": "qv", "n": 50, "seed": 0,
                    "latency_rounds": 5})
    progress: list[str] = []
    info = run(spec, tmp_path / "adapter", progress.append)
    assert info["metrics"]["accuracy"] > 0.6
    assert info["metrics"]["macro_f1"] > 0.6
    assert info["model"]["pooling"] == "mean"
    # length-grouped batches padded per batch: about a third padding at batch 32 (padding every
    # headline to max_length 64 would make it about 0.8)
    assert info["training"]["padding_fraction"] < 0.4
    assert any(m.startswith("epoch 5/5") for m in progress)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
