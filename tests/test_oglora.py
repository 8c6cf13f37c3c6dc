"""OrthoGeoLoRA: orthonormal QR factors with a fixed sign, softplus singular values, the forward pass
against a hand computation, the zero-start init, the trainable-parameter closed form, save/reload
round trips, and gradients that reach Theta_A, Theta_B and u."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lora_bench.grid import resolve
from lora_bench.methods import oglora
from lora_bench.models import load_classifier
from lora_bench.resources import parameter_counts
from lora_bench.targets import resolve_targets

CPU = torch.device("cpu")
CLASSES = 3
TEXTS = ["a match and a goal", "bank profit rises", "the band played a new song on tour"]


def oglora_spec(folder, **axes):
    """resolve() refuses "oglora" until it is registered: resolve as lora, then swap the method."""
    spec = resolve({"model": "minilm-l6", "method": "lora", **axes})
    return type(spec).from_dict({**spec.to_dict(), "method": "oglora", "model": str(folder)})


def build(folder, init=None, seed=0, **axes):
    spec = oglora_spec(folder, **axes)
    torch.manual_seed(seed)
    loaded = load_classifier(str(folder), CLASSES, CPU, torch.float32)
    targets = resolve_targets(spec.targets, loaded.architecture)
    return loaded, oglora.prepare(loaded, spec, targets, init=init), spec


def layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, oglora.OGLoraLinear)}


def batch(loaded):
    return loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")


def logits(model, loaded):
    inputs = batch(loaded)
    model.eval()
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])


def perturb(model, scale=0.1):
    """Stand-in for training: move every trainable tensor."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


def head_params(hidden):
    return hidden * CLASSES + CLASSES


def by_hand_orthonormal(theta):
    """QR with diag(R) made positive, written independently of the module."""
    q, r = torch.linalg.qr(theta)
    d = torch.diagonal(r)
    return q @ torch.diag(torch.where(d < 0, -1.0, 1.0))


def test_factors_stay_orthonormal_after_a_perturbation(tiny_llama):
    _, model, _ = build(tiny_llama, targets="qkvo", rank=4)
    perturb(model, scale=1.0)
    for name, layer in layers(model).items():
        a, s, b = layer.factors("default")
        assert a.shape == (layer.in_features, 4) and b.shape == (layer.out_features, 4), name
        eye = torch.eye(4)
        assert torch.allclose(a.T @ a, eye, atol=1e-5), name
        assert torch.allclose(b.T @ b, eye, atol=1e-5), name
        assert (s > 0).all()


def test_qr_sign_is_fixed():
    torch.manual_seed(0)
    theta = torch.randn(20, 5, dtype=torch.float64)
    a = oglora.orthonormal(theta)
    r = a.T @ theta  # theta = A R: R must be upper triangular with a positive diagonal
    assert torch.allclose(torch.tril(r, -1), torch.zeros_like(r), atol=1e-12)
    assert (torch.diagonal(r) > 0).all()
    # an orthonormal input comes back unchanged, whatever signs its columns have
    flipped = a * torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(oglora.orthonormal(flipped), flipped, atol=1e-12)
    assert torch.allclose(oglora.orthonormal(a), a, atol=1e-12)
    # the map is continuous: a small change of theta moves A a little (no column sign jumps)
    nudged = oglora.orthonormal(theta + 1e-6 * torch.randn_like(theta))
    assert (nudged - a).abs().max() < 1e-4


def test_singular_values_start_at_softplus_zero(tiny_bert):
    _, model, _ = build(tiny_bert, targets="qv")
    for layer in layers(model).values():
        assert torch.equal(layer.lora_u["default"], torch.zeros(8))
        _, s, _ = layer.factors("default")
        assert torch.allclose(s, torch.full((8,), math.log(2) + 1e-6), atol=1e-7)
    u = torch.tensor([-30.0, 0.0, 3.0])
    assert torch.allclose(oglora.singular_values(u), torch.nn.functional.softplus(u) + 1e-6)


@pytest.mark.parametrize("module", ["q_proj", "k_proj"])  # 32 -> 32 and 32 -> 16
def test_forward_equals_the_hand_computation(tiny_llama, module):
    _, model, spec = build(tiny_llama, targets="qkvo", rank=4)
    perturb(model)
    model.eval()  # no dropout
    layer = next(m for n, m in layers(model).items() if n.endswith(module))
    x = torch.randn(2, 5, layer.in_features)
    a = by_hand_orthonormal(layer.lora_theta_A["default"].detach())
    b = by_hand_orthonormal(layer.lora_theta_B["default"].detach())
    s = torch.nn.functional.softplus(layer.lora_u["default"].detach()) + 1e-6
    scaling = spec.alpha / spec.rank
    expected = layer.base_layer(x) + scaling * (x @ a) @ torch.diag(s) @ b.T
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_default_init_starts_away_from_the_base(tiny_bert):
    """The study's init: the update is non-zero before any training."""
    _, model, _ = build(tiny_bert, targets="qv")
    layer = next(iter(layers(model).values()))
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert (layer(x) - layer.base_layer(x)).abs().max() > 1e-2


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
def test_zero_start_gives_exactly_the_base_output(request, fixture):
    folder = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    base_loaded = load_classifier(str(folder), CLASSES, CPU, torch.float32)
    base = logits(base_loaded.model, base_loaded)
    loaded, model, _ = build(folder, init="zero", targets="qkvo")
    assert torch.equal(logits(model, loaded), base)
    for layer in layers(model).values():  # with dropout on, too: both paths see the same dropped input
        layer.train()
        x = torch.randn(2, 4, layer.in_features)
        with torch.no_grad():
            assert torch.equal(layer(x), layer.base_layer(x))
    perturb(model)
    assert (logits(model, loaded) - base).abs().max() > 1e-4  # and it does move once trained


@pytest.mark.parametrize("init", ["random", "zero"])
@pytest.mark.parametrize("rank", [1, 4, 8])
def test_bert_qv_matches_closed_form(tiny_bert, rank, init):
    _, model, _ = build(tiny_bert, init=init, rank=rank, targets="qv")
    layers_n, hidden = 2, 32
    per_module = hidden * rank + hidden * rank + rank  # d_in r + d_out r + r
    assert parameter_counts(model)["trainable"] == layers_n * 2 * per_module + head_params(hidden)
    adapted = layers(model)
    assert len(adapted) == layers_n * 2 and all(n.endswith(("query", "value")) for n in adapted)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(("lora_theta_" in n or "lora_u" in n or "head.modules_to_save" in n) for n in trainable)
    assert all(not p.requires_grad for m in adapted.values() for p in m.base_layer.parameters())


def test_llama_qkvo_matches_closed_form(tiny_llama):
    rank = 4
    _, model, _ = build(tiny_llama, rank=rank, targets="qkvo")
    hidden, kv = 32, 16  # one key/value head of width 16: k_proj and v_proj are 32 -> 16
    square, narrow = (hidden + hidden) * rank + rank, (hidden + kv) * rank + rank  # q/o and k/v
    per_layer = 2 * square + 2 * narrow
    assert parameter_counts(model)["trainable"] == 2 * per_layer + head_params(hidden)


def test_rank_above_a_layer_width_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="rank 32"):
        build(tiny_llama, rank=32, targets="qkvo")  # k_proj has only 16 outputs


@pytest.mark.parametrize("init", ["random", "zero"])
@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
def test_save_and_reload_give_the_same_logits(request, tmp_path, fixture, init):
    folder = request.getfixturevalue(fixture)
    loaded, model, _ = build(folder, init=init, targets="qkvo")
    perturb(model)
    before = logits(model, loaded)
    oglora.save(model, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / oglora.MARKER).read_text())["init"] == init
    assert (tmp_path / "saved" / "adapter_model.safetensors").exists()
    torch.manual_seed(123)  # a different random head and adapter draw: the saved ones must replace them
    fresh = load_classifier(str(folder), CLASSES, CPU, torch.float32)
    reloaded = oglora.load(fresh, tmp_path / "saved")
    assert oglora.init_mode(reloaded) == init
    after = logits(reloaded, fresh)
    assert (before - after).abs().max() <= 1e-5


def test_load_refuses_a_folder_without_the_marker(tiny_bert, tmp_path):
    loaded = load_classifier(str(tiny_bert), CLASSES, CPU, torch.float32)
    with pytest.raises(FileNotFoundError, match="oglora"):
        oglora.load(loaded, tmp_path)


def test_merge_keeps_the_logits(tiny_bert):
    loaded, model, _ = build(tiny_bert, init="zero", targets="qv")
    perturb(model)
    before = logits(model, loaded)
    model.base_model.merge_adapter()
    assert torch.allclose(logits(model, loaded), before, atol=1e-5)
    model.base_model.unmerge_adapter()
    assert torch.allclose(logits(model, loaded), before, atol=1e-5)


@pytest.mark.parametrize("init", ["random", "zero"])
def test_gradients_reach_the_adapter_and_training_lowers_the_loss(tiny_llama, init):
    loaded, model, _ = build(tiny_llama, init=init, rank=4, targets="qkvo")
    inputs = batch(loaded)
    labels = torch.tensor([0, 1, 2])

    def loss_value():
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return torch.nn.functional.cross_entropy(out, labels)

    model.train()
    loss_value().backward()
    for name, layer in layers(model).items():
        for group in (layer.lora_theta_A, layer.lora_theta_B, layer.lora_u):
            grad = group["default"].grad
            assert grad is not None and grad.abs().sum() > 0, name
        assert all(p.grad is None for p in layer.base_layer.parameters())
    theta_before = {n: m.lora_theta_A["default"].detach().clone() for n, m in layers(model).items()}
    model.eval()
    with torch.no_grad():
        start = float(loss_value())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(15):
        model.train()
        optimizer.zero_grad()
        loss_value().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        end = float(loss_value())
    assert end < start
    assert all(not torch.equal(theta_before[n], m.lora_theta_A["default"]) for n, m in layers(model).items())
