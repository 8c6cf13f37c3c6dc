"""Recipes, the fused loss, FLOPs accounting, memory fitting and ratio targets (issue 7), on CPU."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from lora_bench import causal_lm, flops, memory_fit, perf_targets
from lora_bench.compiling import padded_length
from lora_bench.estimate import MemoryEstimate
from lora_bench.grid import resolve
from lora_bench.runner import run
from lora_bench.schema import SpecError


def test_fused_chunked_cross_entropy_matches_the_plain_loss_and_gradients(monkeypatch):
    monkeypatch.setattr(causal_lm, "CHUNK_TOKENS", 7)   # several chunks and a ragged last one
    torch.manual_seed(0)
    hidden = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (30,))
    fused = causal_lm.ChunkedLinearCE.apply(hidden, weight, labels)
    fused.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, labels)
    plain.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)   # logits are taken in fp32
    assert torch.allclose(grads[0], hidden.grad) and torch.allclose(grads[1], weight.grad)


def causal_spec(model: Path, recipe: str, compile_mode: str = "off") -> object:
    return resolve({"model": str(model), "task": "random-tokens", "method": "lora", "rank": 4, "alpha": 8,
                    "targets": "all-linear", "n": 4, "batch_size": 2, "max_length": 16, "max_steps": 3,
                    "lr": 1e-3, "recipe": recipe, "compile": compile_mode, "latency_rounds": 2})


def test_causal_lm_recipes_train_the_same_model_the_same_way(tiny_llama):
    variants = {"plain": ("plain", "off"), "lora-bench": ("lora-bench", "off"), "graphs": ("lora-bench", "graphs")}
    results = {name: run(causal_spec(tiny_llama, *v), Path(tempfile.mkdtemp()), lambda m: None)
               for name, v in variants.items()}
    plain, fused, graphed = (results[r]["training"]["loss_curve"] for r in variants)
    assert [s for s, _ in plain] == [1, 2, 3]
    assert [v for _, v in fused] == pytest.approx([v for _, v in plain], rel=1e-4)
    assert [v for _, v in graphed] == pytest.approx([v for _, v in plain], rel=1e-4)   # eager on CPU
    assert results["graphs"]["training"]["recipe"]["cuda_graphs"]["eager_reason"]
    for result in results.values():
        assert result["quality"].startswith("not applicable")
        assert result["training"]["tokens_per_second"] > 0
        assert result["memory_estimate"]["prediction"]["peak_gib"] > 0
    assert "fused" in results["lora-bench"]["training"]["recipe"]["loss"]


def test_naive_recipe_trains_with_trainer_and_pads_every_text(tiny_bert, csv_task):
    spec = resolve({"model": str(tiny_bert), "task": str(csv_task), "method": "lora", "n": 8, "epochs": 1,
                    "recipe": "naive", "batch_size": 4, "max_length": 32, "padding": "max_length",
                    "latency_rounds": 2})
    result = run(spec, Path(tempfile.mkdtemp()), lambda m: None)
    training = result["training"]
    assert training["recipe"]["trainer"] is True
    assert training["optimizer_steps"] == 6            # 24 examples in batches of 4
    assert training["padding_fraction"] > 0.5          # short texts padded to 32 tokens
    assert result["resources"]["pipeline_seconds"] >= training["train_seconds"]
    assert 0 <= result["metrics"]["accuracy"] <= 1


def test_plain_recipe_shuffles_instead_of_grouping_by_length(tiny_bert, csv_task):
    spec = resolve({"model": str(tiny_bert), "task": str(csv_task), "method": "lora", "n": 8, "epochs": 1,
                    "recipe": "plain", "latency_rounds": 2})
    result = run(spec, Path(tempfile.mkdtemp()), lambda m: None)
    assert result["training"]["recipe"] == {"name": "plain", "compile": "off", "autocast": None, "batches": "shuffled"}
    assert result["inference"]["base_latency"]["median_ms"] > 0


def test_graph_buckets_round_lengths_up():
    assert padded_length([[1] * 5, [1] * 9], 256) == 32
    assert padded_length([[1] * 33], 256) == 64
    assert padded_length([[1] * 300], 256) == 256


def test_flops_count_a_peft_weight_once_and_know_the_gpus(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    before = flops.matmul_parameters(base)["frozen"] + flops.matmul_parameters(base)["trained"]
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    counts = flops.matmul_parameters(model)
    assert counts["frozen"] == before
    assert counts["trained"] == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert flops.peak_tflops("some CPU") is None
    assert flops.utilisation(1000.0, 1e9, "NVIDIA H200")["mfu"] == pytest.approx(1e12 / 989e12)


def fake_prediction(spec: object) -> MemoryEstimate:
    gib = 2.0 * spec.batch_size   # 2 GiB per example of the micro-batch
    return MemoryEstimate(0, 0, 0, 0, gib, 0, gib, spec.batch_size, 32)


def test_fit_skips_an_experiment_predicted_over_the_budget(monkeypatch):
    spec = resolve({"model": "minilm-l6", "batch_size": 16})
    monkeypatch.setenv("LORA_BENCH_FIT", "skip")
    monkeypatch.setenv("LORA_BENCH_MEMORY_GIB", "10")
    with pytest.raises(memory_fit.OverMemoryBudget, match="predicted peak 32.00 GiB .* over the memory budget of 10.00"):
        memory_fit.fit(spec, 5, 32, torch.device("cpu"), lambda m: None, predict=fake_prediction)
    monkeypatch.setenv("LORA_BENCH_FIT", "off")
    assert memory_fit.fit(spec, 5, 32, torch.device("cpu"), lambda m: None, predict=fake_prediction).spec == spec


def test_fit_picks_the_largest_micro_batch_that_fits(monkeypatch):
    spec = resolve({"model": "minilm-l6", "batch_size": 16, "grad_accum": 1})
    monkeypatch.setenv("LORA_BENCH_FIT", "batch")
    monkeypatch.setenv("LORA_BENCH_MEMORY_GIB", "10")
    fitted = memory_fit.fit(spec, 5, 32, torch.device("cpu"), lambda m: None, predict=fake_prediction)
    assert (fitted.spec.batch_size, fitted.spec.grad_accum) == (4, 4)   # 8 GiB <= 10; the effective batch stays 16
    assert fitted.adjusted == {"batch_size": [16, 4], "grad_accum": [1, 4]}
    report = fitted.report(9.0)
    assert report["relative_error"] == pytest.approx(8.0 / 9.0 - 1)


def record(spec: dict, value: float, status: str = "ok") -> dict:
    return {"status": status, "test_id": str(spec), "run_info": {"spec": spec},
            "train_info": {"resources": {"seconds": value}}, "meta_info": {"device": {"name": "GPU X"}}}


def test_targets_compare_group_means_and_say_why():
    [target] = perf_targets.parse_targets([{"name": "speed", "metric": "resources.seconds", "where": {"model": "m"},
                                            "baseline": {"recipe": "naive"}, "candidate": {"recipe": "lora-bench"},
                                            "max_ratio": 0.5}])
    records = [record({"model": "m", "recipe": "naive", "seed": s}, v) for s, v in ((0, 10.0), (1, 12.0))]
    records += [record({"model": "m", "recipe": "lora-bench", "seed": 0}, 4.0),
                record({"model": "other", "recipe": "lora-bench"}, 100.0),
                record({"model": "m", "recipe": "lora-bench", "seed": 1}, 1.0, status="failed")]
    verdict = perf_targets.evaluate(target, records)
    assert verdict["ratio"] == pytest.approx(4.0 / 11.0) and verdict["passed"] is True
    assert verdict["devices"] == ["GPU X"]
    missed = perf_targets.evaluate(target, records[:2] + [record({"model": "m", "recipe": "lora-bench"}, 9.0)])
    assert missed["passed"] is False and "limit <= 0.5" in missed["reason"]
    assert perf_targets.evaluate(target, records[:2])["passed"] is None


def test_within_spread_compares_the_difference_with_the_seed_range():
    [target] = perf_targets.parse_targets([{"name": "quality", "metric": "resources.seconds", "baseline": {"recipe": "naive"},
                                            "candidate": {"recipe": "lora-bench"}, "within_spread": True}])
    base = [record({"recipe": "naive", "seed": s}, v) for s, v in ((0, 0.80), (1, 0.76))]
    assert perf_targets.evaluate(target, base + [record({"recipe": "lora-bench"}, 0.77)])["passed"] is True
    assert perf_targets.evaluate(target, base + [record({"recipe": "lora-bench"}, 0.60)])["passed"] is False


@pytest.mark.parametrize("entry,field", [
    ({"name": "x", "metric": "m", "baseline": {}, "candidate": {}}, "targets[0]"),
    ({"name": "x", "metric": "m", "baseline": {"recipe": "fast"}, "candidate": {}, "max_ratio": 1}, "targets[0].baseline.recipe"),
    ({"name": "x", "metric": "m", "baseline": {"colour": 1}, "candidate": {}, "max_ratio": 1}, "targets[0].baseline.colour"),
    ({"name": "x", "metric": "m", "baseline": {}, "candidate": {}, "max_ratio": -1}, "targets[0].max_ratio"),
    ({"metric": "m", "baseline": {}, "candidate": {}, "max_ratio": 1}, "targets[0].name"),
])
def test_a_malformed_target_names_its_field(entry, field):
    with pytest.raises(SpecError) as err:
        perf_targets.parse_targets([entry])
    assert err.value.key == field


def test_a_finished_runs_grid_reads_back_values_the_schema_has_since_dropped():
    entry = {"name": "x", "metric": "m", "baseline": {}, "candidate": {"compile": "retired-mode"}, "max_ratio": 1}
    with pytest.raises(SpecError):
        perf_targets.parse_targets([entry])
    [target] = perf_targets.parse_targets([entry], strict=False)
    assert target.candidate == {"compile": "retired-mode"}


def test_lb_fit_skips_an_experiment_over_the_memory_budget(pytester, tiny_bert):
    grid = pytester.path / "g.yaml"
    grid.write_text(f"axes: {{model: {tiny_bert}, method: lora, n: 5, epochs: 1, latency_rounds: 2}}\n")
    pytester.makeconftest('pytest_plugins = ("lora_bench.plugin",)')
    pytester.makepyfile(test_x="""
import pytest
@pytest.mark.lb_task_type("classification")
def test_c(lb_experiment):
    lb_experiment.assert_ok(lb_experiment.run())
""")
    result = pytester.runpytest_subprocess("--lb-grid", str(grid), "--lb-out", str(pytester.path / "r"),
                                           "--lb-fit", "skip", "--lb-memory-gib", "0.000001", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*predicted peak * GiB*over the memory budget of 0.00 GiB*"])


def test_a_target_may_compare_two_fields_of_the_same_records():
    [target] = perf_targets.parse_targets([{"name": "merged", "metric": "resources.merged", "baseline_metric":
                                            "resources.seconds", "baseline": {}, "candidate": {}, "max_ratio": 1.02}])
    rows = [record({"seed": s}, v) for s, v in ((0, 10.0), (1, 10.0))]
    for r, merged in zip(rows, (10.1, 10.3)):
        r["train_info"]["resources"]["merged"] = merged
    verdict = perf_targets.evaluate(target, rows)
    assert verdict["ratio"] == pytest.approx(1.02) and verdict["metric"] == "resources.merged / resources.seconds"


def test_compiled_layers_share_one_graph_because_training_keeps_no_kv_cache():
    """A KV cache in the forward pass would make every decoder layer compile on its own (the cache's
    per-layer state is guarded); without it the layers after the first reuse one graph."""
    from torch._dynamo.utils import counters
    from transformers import AutoModel, LlamaConfig

    from lora_bench.compiling import layer_stack
    from lora_bench.models import SequenceClassifier

    torch._dynamo.reset()
    counters.clear()
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                         num_attention_heads=2, num_key_value_heads=1)
    model = SequenceClassifier(AutoModel.from_config(config), 3, "last")
    layers = layer_stack(model)
    assert len(layers) == 5
    for layer in layers:
        layer.compile(backend="eager")
    ids = torch.randint(0, 50, (2, 8))
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).sum().backward()
    assert counters["stats"]["unique_graphs"] <= 2
    for layer in layers:
        layer._compiled_call_impl = None


def test_merged_and_a_rebuilt_base_are_timed_side_by_side(tiny_bert, csv_task, monkeypatch):
    """On a GPU; here the CPU stands in for it (on a CPU the copy is refused: it would count in the peak)."""
    from lora_bench import runner

    spec = resolve({"model": str(tiny_bert), "task": str(csv_task), "method": "lora", "n": 8, "epochs": 1,
                    "latency_rounds": 3})
    refused = run(spec, Path(tempfile.mkdtemp()), lambda m: None)["inference"]["merged"]
    assert refused["base_latency"] == {"not_measured": runner.base_copy(None, spec, torch.device("cpu"))}
    assert refused["latency_ratio"] is None
    copy = runner.base_copy
    monkeypatch.setattr(runner, "base_copy", lambda model, spec, device: copy(model, spec, torch.device("cuda")))
    merged = run(spec, Path(tempfile.mkdtemp()), lambda m: None)["inference"]["merged"]
    assert merged["kind"] == "exact merge"
    assert merged["base_latency"]["stats"]["rounds"] == merged["latency"]["stats"]["rounds"] == 3
    assert merged["latency_ratio"] == pytest.approx(merged["latency"]["median_ms"] / merged["base_latency"]["median_ms"])


def test_interleaved_timing_alternates_the_calls_round_by_round():
    from lora_bench.latency import time_interleaved

    order = []
    out = time_interleaved({"a": lambda i: order.append(("a", i)), "b": lambda i: order.append(("b", i))},
                           rounds=2, device=torch.device("cpu"), warmup=1)
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert out["a"]["stats"]["rounds"] == out["b"]["stats"]["rounds"] == 2


def test_no_base_copy_for_quantized_or_oversized_bases(monkeypatch):
    from lora_bench import runner

    model, gpu = torch.nn.Linear(64, 64), torch.device("cuda")
    quantized = resolve({"model": "minilm-l6", "method": "lora", "bits": "4-nf4"})
    assert runner.base_copy(model, quantized, gpu).startswith("quantized base")
    plain = resolve({"model": "minilm-l6", "method": "lora"})
    assert set(runner.base_copy(model, plain, gpu)) == {"weight", "bias"}
    assert runner.base_copy(model, plain, torch.device("cpu")).startswith("on a CPU")
    monkeypatch.setattr(runner, "BASE_COPY_LIMIT", 1024)
    assert runner.base_copy(model, plain, gpu).startswith("base of 0.0 GiB: above")


def test_classification_in_cuda_graphs_prices_its_length_bucket(tiny_bert, csv_task):
    """Graph steps pad every batch to a 32-token bucket: the estimate prices that length (eager on CPU)."""
    from lora_bench.compiling import BUCKET

    spec = resolve({"model": str(tiny_bert), "task": str(csv_task), "method": "lora", "n": 8, "epochs": 1,
                    "batch_size": 4, "max_length": 64, "compile": "graphs", "latency_rounds": 2})
    result = run(spec, Path(tempfile.mkdtemp()), lambda m: None)
    priced = result["memory_estimate"]["prediction"]["seq_len"]
    assert priced == BUCKET or priced == 64, priced
    assert result["training"]["recipe"]["cuda_graphs"]["eager_reason"]
