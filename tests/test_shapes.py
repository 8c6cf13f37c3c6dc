"""Weightless `shape:` models: published configs, random weights, realistic input lengths;
resources measured, quality recorded as not applicable."""

from __future__ import annotations

import json

import pytest
import torch

from lora_bench.catalog import parse_model
from lora_bench.grid import load_grid, resolve
from lora_bench.models import load_classifier
from lora_bench.runner import run


@pytest.mark.parametrize("name, millions", [("qwen2.5-1.5b", 1543.7), ("qwen3-0.6b", 596.0), ("llama-3.2-1b", 1235.8),
                                            ("smollm2-135m", 134.5), ("qwen2.5-7b", 7070.6)])
def test_shape_configs_give_the_published_sizes(name, millions):
    from transformers import AutoModel

    from lora_bench.models import shape_config

    with torch.device("meta"):
        model = AutoModel.from_config(shape_config(parse_model(f"shape:{name}")))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)


def test_thesis_grids_collect_offline():
    thesis = load_grid("thesis")
    assert len(thesis.specs) == 2 * 4 * (1 + 3 * 3 * 4)
    assert {s.model for s in thesis.specs} == {"Qwen/Qwen3-0.6B", "Qwen/Qwen2.5-1.5B"}
    shape = load_grid("thesis-shape")
    assert {s.padding for s in shape.specs} == {"max_length", "longest"}
    assert all(s.max_steps == 40 for s in shape.specs if s.method == "lora")
    assert "shape-qwen2.5-1.5b-synthetic-headlines-qlora-nf4-r16-qkvo-n300-s0-padmax" in shape.ids


def test_a_shape_trains_and_records_no_quality(tmp_path):
    spec = resolve({"model": "shape:smollm2-135m", "task": "synthetic-headlines", "method": "lora", "n": 20,
                    "max_steps": 2, "batch_size": 4, "max_length": 24, "padding": "max_length",
                    "latency_rounds": 2})
    info = run(spec, tmp_path / "adapter", lambda m: None)
    assert info["quality"] == "not applicable: weightless shape"
    assert set(info["metrics"].values()) == {None}
    assert info["training"]["optimizer_steps"] == 2
    assert info["training"]["padding_fraction"] > 0.3  # padded to 32 tokens, headlines are shorter
    assert info["resources"]["tokens_per_second"] > 0
    assert info["model"]["source"] == "shape:smollm2-135m" and info["model"]["pooling"] == "last"


def test_a_quantized_shape_goes_through_bitsandbytes(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_BENCH_CACHE", str(tmp_path / "cache"))
    loaded = load_classifier("shape:smollm2-135m", 4, torch.device("cpu"), torch.bfloat16, "4-nf4")
    assert type(loaded.model.backbone.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    saved = next((tmp_path / "cache" / "shapes").glob("smollm2-135m-*"))
    assert json.loads((saved / "config.json").read_text())["hidden_size"] == 576
