"""Each method's trainable parameters against its closed form, target-module sets resolved per
architecture, and save/reload round trips that give the same logits."""

from __future__ import annotations

import pytest
import torch

from lora_bench.grid import resolve
from lora_bench.methods import method_module
from lora_bench.models import load_classifier
from lora_bench.resources import parameter_counts
from lora_bench.targets import resolve_targets

CPU = torch.device("cpu")
CLASSES = 3


def build(folder, method, **axes):
    spec = resolve({"model": "minilm-l6", "method": method, **axes})
    spec = type(spec).from_dict({**spec.to_dict(), "model": str(folder)})
    torch.manual_seed(0)
    loaded = load_classifier(str(folder), CLASSES, CPU, torch.float32)
    targets = resolve_targets(spec.targets, loaded.architecture) if spec.targets else None
    return loaded, method_module(method).prepare(loaded, spec, targets), targets


def head_params(hidden: int) -> int:
    return hidden * CLASSES + CLASSES


def test_pooling_follows_the_checkpoint(tiny_bert, tiny_llama):
    assert load_classifier(str(tiny_bert), CLASSES, CPU, torch.float32).pooling == "mean"
    assert load_classifier(str(tiny_llama), CLASSES, CPU, torch.float32).pooling == "last"


@pytest.mark.parametrize("architecture, named, expected", [
    ("bert", "qv", ["query", "value"]),
    ("bert", "qkvo", ["query", "key", "value", "attention.output.dense"]),
    ("llama", "qkvo", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    ("qwen3", "all-linear", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
])
def test_module_sets_resolve_per_architecture(architecture, named, expected):
    assert resolve_targets((named,), architecture) == expected


def test_head_only_trains_the_head(tiny_bert):
    _, model, _ = build(tiny_bert, "head")
    counts = parameter_counts(model)
    assert counts["trainable"] == head_params(32)


def test_full_trains_everything(tiny_bert):
    _, model, _ = build(tiny_bert, "full")
    counts = parameter_counts(model)
    assert counts["trainable"] == counts["total"]


@pytest.mark.parametrize("rank", [1, 4, 8])
def test_lora_on_bert_qv_matches_closed_form(tiny_bert, rank):
    _, model, targets = build(tiny_bert, "lora", rank=rank, targets="qv")
    layers, hidden = 2, 32
    # r x (d_in + d_out) for query and value in each layer, plus the head
    assert parameter_counts(model)["trainable"] == layers * 2 * rank * (hidden + hidden) + head_params(hidden)
    adapted = {n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert len(adapted) == layers * 2 and all(n.split(".lora_A")[0].endswith(("query", "value")) for n in adapted)


def test_lora_on_llama_qkvo_matches_closed_form(tiny_llama):
    rank = 4
    _, model, _ = build(tiny_llama, "lora", rank=rank, targets="qkvo")
    hidden, kv = 32, 16  # one key/value head of width 16
    per_layer = rank * ((hidden + hidden) + (hidden + kv) + (hidden + kv) + (hidden + hidden))
    assert parameter_counts(model)["trainable"] == 2 * per_layer + head_params(hidden)


@pytest.mark.parametrize("method", ["rslora", "pissa", "olora", "loraplus"])
def test_variants_with_lora_shaped_adapters_match_lora_counts(tiny_bert, method):
    rank = 4
    _, model, _ = build(tiny_bert, method, rank=rank, targets="qv")
    assert parameter_counts(model)["trainable"] == 2 * 2 * rank * (32 + 32) + head_params(32)


def test_dora_adds_one_magnitude_per_output_feature(tiny_llama):
    rank = 4
    _, model, _ = build(tiny_llama, "dora", rank=rank, targets="qkvo")
    hidden, kv = 32, 16
    lora = rank * ((hidden + hidden) + (hidden + kv) + (hidden + kv) + (hidden + hidden))
    magnitudes = hidden + kv + kv + hidden
    assert parameter_counts(model)["trainable"] == 2 * (lora + magnitudes) + head_params(hidden)


def test_rslora_scales_by_square_root_of_rank(tiny_bert):
    _, model, _ = build(tiny_bert, "rslora", rank=16, alpha=32, targets="qv")
    scalings = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)}
    assert scalings == {32 / 4}


def test_loraplus_gives_b_a_larger_learning_rate(tiny_bert):
    from lora_bench.methods import lora

    _, model, _ = build(tiny_bert, "loraplus", lr=1e-3, loraplus_ratio=8)
    spec = resolve({"model": "minilm-l6", "method": "loraplus", "lr": 1e-3, "loraplus_ratio": 8})
    optimizer = lora.make_optimizer(model, spec)
    lrs = {g["lr"] for g in optimizer.param_groups if g["params"]}
    assert lrs == {1e-3, 8e-3}


def _logits(model, loaded):
    batch = loaded.tokenizer(["a match and a goal", "bank profit rises"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def _perturb(model):
    """Stand-in for training: move every trainable tensor (LoRA's B starts at zero)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)


@pytest.mark.parametrize("method", ["head", "full", "lora", "dora", "rslora", "pissa", "olora", "loraplus", "oglora"])
@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
def test_save_and_reload_give_the_same_logits(request, tmp_path, method, fixture):
    folder = request.getfixturevalue(fixture)
    loaded, model, _ = build(folder, method, targets="qkvo")
    _perturb(model)
    before = _logits(model, loaded)
    method_module(method).save(model, tmp_path / "saved")
    torch.manual_seed(123)  # a different random head: the saved one must replace it
    fresh = load_classifier(str(folder), CLASSES, CPU, torch.float32)
    reloaded = method_module(method).load(fresh, tmp_path / "saved")
    after = _logits(reloaded, fresh)
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
