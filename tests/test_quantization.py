"""Quantized bases on CPU through bitsandbytes: 4-bit NF4/FP4 (with double quantization) and
8-bit load, train and save; frozen bytes are what storage really takes; never a silent 16-bit."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from lora_bench import quantization
from lora_bench.grid import resolve
from lora_bench.methods import method_module
from lora_bench.models import load_classifier
from lora_bench.runner import prepare_base
from lora_bench.targets import resolve_targets

CPU = torch.device("cpu")


def quantized(folder, bits, method="lora", **axes):
    spec = resolve({"model": "minilm-l6", "method": method, "bits": bits, "targets": "qkvo", **axes})
    spec = type(spec).from_dict({**spec.to_dict(), "model": str(folder)})
    torch.manual_seed(0)
    loaded = load_classifier(str(folder), 3, CPU, torch.bfloat16, bits)
    return spec, loaded


@pytest.mark.parametrize("bits, layer", [("4-nf4", "Linear4bit"), ("4-fp4-dq", "Linear4bit"), ("8", "Linear8bitLt")])
def test_quantized_lora_trains_on_cpu(tiny_llama64, bits, layer):
    spec, loaded = quantized(tiny_llama64, bits)
    assert type(loaded.model.backbone.layers[0].mlp.up_proj).__name__ == layer
    base = prepare_base(loaded, spec)
    assert base == {"kbit_prepare": False, "upcast_to_fp32": 0, "grad_checkpointing": False}
    model = method_module("lora").prepare(loaded, spec, resolve_targets(spec.targets, "llama"))
    batch = loaded.tokenizer(["a match and a goal", "bank profit"], padding=True, return_tensors="pt")
    loss = torch.nn.functional.cross_entropy(model(**batch), torch.tensor([0, 1]))
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
    assert spec.method_label() == ("qlora-" + bits[2:] if bits.startswith("4") else "lora")


def test_frozen_bytes_are_the_packed_storage(tiny_llama64):
    full = load_classifier(str(tiny_llama64), 3, CPU, torch.bfloat16)
    _, nf4 = quantized(tiny_llama64, "4-nf4")
    for loaded in (full, nf4):
        loaded.model.requires_grad_(False)
    dense = quantization.frozen_weight_bytes(full.model)["frozen_weight_bytes"]
    packed = quantization.frozen_weight_bytes(nf4.model)
    linear = sum(m.weight.numel() for m in full.model.backbone.layers.modules() if isinstance(m, torch.nn.Linear))
    # each quantized weight goes from 2 bytes (bf16) to half a byte, plus its absmax statistics
    saved = dense - packed["frozen_weight_bytes"] + packed["quantization_state_bytes"]
    assert saved == pytest.approx(linear * 1.5, rel=0.01)
    assert quantization.logical_parameters(nf4.model) == sum(p.numel() for p in full.model.parameters())


def test_peft_kbit_preparation_is_recorded(tiny_llama64):
    spec, loaded = quantized(tiny_llama64, "4-nf4", kbit_prepare=True)
    done = prepare_base(loaded, spec)
    assert done["kbit_prepare"] and done["upcast_to_fp32"] > 0
    assert loaded.model.backbone.embed_tokens.weight.dtype == torch.float32


def test_qlora_adapter_reloads_onto_a_fresh_quantized_base(tiny_llama64, tmp_path):
    spec, loaded = quantized(tiny_llama64, "4-nf4")
    lora = method_module("lora")
    model = lora.prepare(loaded, spec, resolve_targets(spec.targets, "llama"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    batch = loaded.tokenizer(["a match and a goal", "bank profit"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():  # bitsandbytes takes another kernel when autograd records
        before = model(**batch)
    lora.save(model, tmp_path / "adapter")
    _, fresh = quantized(tiny_llama64, "4-nf4")
    reloaded = lora.load(fresh, tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        after = reloaded(**batch)
    assert torch.allclose(before, after, atol=1e-3), (before - after).abs().max()


def test_hub_kernels_are_hidden_while_bitsandbytes_imports():
    with quantization.no_hub_kernels():
        with pytest.raises(ImportError):
            import kernels  # noqa: F401
    assert sys.modules.get("kernels", "absent") != None  # noqa: E711  (restored afterwards)


def test_missing_bitsandbytes_skips_with_the_reason_never_16_bit(tmp_path, monkeypatch):
    from lora_bench import record as rec
    from lora_bench.child import child_main

    def unavailable():
        raise quantization.QuantizationUnavailable("bitsandbytes cannot run here: ImportError: no module")

    monkeypatch.setattr(quantization, "import_bitsandbytes", unavailable)
    spec = resolve({"model": "minilm-l6", "method": "lora", "bits": "4-nf4"})
    record = rec.new_record(spec, "t", "run", "key", rec.data_info(spec))

    class Pipe:
        def send(self, message):
            pass

        def close(self):
            pass

    child_main({"record": record, "record_path": str(tmp_path / "r.json"), "adapter_dir": str(tmp_path / "a")}, Pipe())
    stored = json.loads((tmp_path / "r.json").read_text())
    assert stored["status"] == "skipped"
    assert stored["reason"] == "bitsandbytes cannot run here: ImportError: no module"
    assert stored["train_info"] is None


def test_the_runner_trains_qlora_on_cpu_without_an_eval_pass_first(tiny_llama64, csv_task, tmp_path):
    """bitsandbytes repacks 4-bit weights for CPU inference on the first eval forward, after which
    they no longer train: the base model's latency is not measured before training there."""
    from lora_bench.runner import run

    spec = resolve({"model": str(tiny_llama64), "task": str(csv_task), "method": "lora", "bits": "4-nf4",
                    "n": 5, "epochs": 1, "latency_rounds": 2})
    result = run(spec, tmp_path / "adapter", lambda message: None)
    assert result["training"]["optimizer_steps"] >= 1
    assert "not_measured" in result["inference"]["base_latency"]
