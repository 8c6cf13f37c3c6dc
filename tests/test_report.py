"""The report: its statistics on synthetic records with planted effects (fixed seeds), the Pareto
frontier, the origin study's CSV import, rendering from real-looking records and the CLI.

`write_study` writes records with the schema's fields: a planted rank effect that plateaus at r8,
a data-size effect that plateaus at n=1250, no effect of target modules, a 4-bit twin that saves
memory, one failed and one over-budget experiment."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lora_bench.report import render_imported, render_report
from lora_bench.report import stats
from lora_bench.report.cli import add_report_parser, run_report
from lora_bench.report.load import import_csv, load_runs, parse_method, targets_label
from lora_bench.report.pareto import best_under, frontier, memory_budgets
from lora_bench.report.sections import build_sections

SCHEMA = Path(__file__).resolve().parents[1] / "lora_bench" / "record.schema.json"
LABELS = np.repeat(np.arange(5), 80)  # 400 test examples, 5 classes, the same order in every record
N_PER_CLASS = {50: 250, 250: 1250, 500: 2500}  # n per class -> n_train (5 classes)
RANK_EFFECT = {2: -0.10, 4: -0.04, 8: 0.0, 16: 0.003, 32: 0.004}  # planted: plateau (99% of best) at r8
SIZE_BASE = {50: 0.78, 250: 0.875, 500: 0.88}  # planted: plateau at n=250 per class (n_train 1250)
SEED_SD = 0.004


def predictions(accuracy: float, rng: np.random.Generator) -> list[int]:
    """Predicted ids with exactly round(accuracy * 400) right, wrong ones spread over other classes."""
    correct = np.zeros(len(LABELS), bool)
    correct[rng.choice(len(LABELS), int(round(accuracy * len(LABELS))), replace=False)] = True
    wrong = (LABELS + rng.integers(1, 5, len(LABELS))) % 5
    return np.where(correct, LABELS, wrong).tolist()


def make_record(run_id: str, *, method: str = "lora", bits: str = "16", rank: int | None = 8,
                targets: list[str] | None = None, n: int = 250, seed: int = 0, accuracy: float | None = 0.85,
                peak: float = 0.6, train_s: float = 30.0, latency_ms: float = 10.0, status: str = "ok",
                reason: str | None = None, limits: dict[str, float] | None = None, model: str = "minilm-l6",
                versions: dict[str, str] | None = None, device: str = "x86_64") -> dict[str, Any]:
    """A record with every field the schema requires; quality None leaves metrics out (a weightless shape)."""
    adapter = method not in ("head", "full")
    spec = {"model": model, "task": "bbc-topic", "method": method, "bits": bits, "n": n, "seed": seed,
            "rank": rank if adapter else None, "alpha": 2.0 * rank if adapter and rank else None,
            "dropout": 0.05 if adapter else None, "targets": (targets or ["qv"]) if adapter else None,
            "epochs": None if method == "head" else 5, "lr": None if method == "head" else 1e-3, "batch_size": 16,
            "grad_accum": 1, "max_length": 64, "weight_decay": 0.01, "warmup_ratio": 0.06, "latency_rounds": 30,
            "timeout_s": 3600, "budgets": limits or {}}
    label = f"{model}-bbc-topic-{method}{f'-r{rank}' if adapter else ''}-{bits}-n{n}-s{seed}"
    spec_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    rng = np.random.default_rng(int(spec_hash[:8], 16))
    train_info = None
    violations = []
    if status == "ok":
        pred = predictions(accuracy, rng) if accuracy is not None else None
        f1 = float(stats.metric_values("macro_f1", np.array(pred), LABELS)[0]) if pred else None
        metrics = {"accuracy": float(np.mean(np.array(pred) == LABELS)) if pred else None, "macro_f1": f1,
                   "weighted_f1": f1, "loss": 0.4 if pred else None, "val_accuracy": accuracy, "val_macro_f1": f1,
                   "val_loss": 0.4 if pred else None}
        params = {"total": 22_790_794, "trainable": (rank or 0) * 9_000 + 3_845 if adapter else
                  (22_790_794 if method == "full" else 1_925), "frozen": 0, "weight_bytes": 91_163_176}
        train_info = {
            "metrics": metrics, "predictions": {"test": pred, "test_labels": LABELS.tolist() if pred else None,
                                                "val": pred[:84] if pred else None},
            "training": {"train_seconds": train_s, "loss_curve": [[1, 1.6], [2, 0.5]], "optimizer": "adamw"},
            "params": params,
            "latency": {"unit": "s", "stats": {"min": latency_ms / 1e3, "max": latency_ms / 1e3,
                                               "mean": latency_ms / 1e3, "stddev": 0.0, "median": latency_ms / 1e3,
                                               "iqr": 0.0, "rounds": 30},
                        "median_ms": latency_ms, "p95_ms": latency_ms * 1.1},
            "resources": {"peak_memory_gib": peak, "peak_memory_kind": "process_peak_rss", "train_seconds": train_s,
                          "examples_per_second": 100.0, "adapter_bytes": 300_000, "adapter_mb": 0.3,
                          "wall_seconds": train_s + 2},
            "model": {"source": "embedded", "architecture": "bert", "pooling": "mean", "weight_dtype": "float32",
                      "target_modules": ["query", "value"], "device": "cpu"}}
        if limits and "max_peak_gib" in limits and peak > limits["max_peak_gib"]:
            violations.append({"budget": "max_peak_gib", "limit": limits["max_peak_gib"], "measured": peak,
                               "message": f"budget max_peak_gib: at most {limits['max_peak_gib']:g}GiB, "
                                          f"measured {peak:.4g}GiB"})
    return {
        "schema_version": 1, "test_id": label, "key": spec_hash, "status": status, "reason": reason,
        "run_info": {"run_id": run_id, "spec": spec, "spec_hash": spec_hash, "started": "2026-11-28T03:00:00+00:00",
                     "finished": f"2026-11-28T03:{seed:02d}:00+00:00", "attempt": "0" * 16},
        "train_info": train_info,
        "meta_info": {"data": {"task": "bbc-topic",
                               "labels": ["business", "entertainment", "politics", "sport", "tech"],
                               "n_per_class": n, "n_train": N_PER_CLASS.get(n, n * 5), "n_test": len(LABELS),
                               "train_hash": "t", "test_hash": "x", "val_hash": "v"},
                      "versions": versions or {"torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2"},
                      "git": {"commit": "abc1234def", "dirty": False},
                      "host": {"hostname": "vm", "python": "3.11.7"},
                      "device": {"type": "cpu", "torch": "2.13.0+cpu", "cuda": None, "threads": 2, "name": device},
                      "source_hash": "s"},
        "budgets": {"limits": limits or {}, "violations": violations, "over_budget": bool(violations)}}


def write_run(root: Path, run_id: str, records: list[dict[str, Any]], versions: dict[str, str] | None = None) -> Path:
    folder = root / run_id
    (folder / "records").mkdir(parents=True)
    for r in records:
        (folder / "records" / f"{r['test_id']}-{r['run_info']['spec_hash'][:8]}.json").write_text(json.dumps(r))
    (folder / "run.json").write_text(json.dumps({
        "run_id": run_id, "grid": {"name": "synthetic"}, "started": "2026-11-28T03:00:00+00:00",
        "finished": "2026-11-28T04:00:00+00:00", "host": {"hostname": "vm", "python": "3.11.7"},
        "git": {"commit": "abc1234def", "dirty": False},
        "versions": versions or {"torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2"}}))
    return folder


def study_records(run_id: str = "study", seeds: int = 4) -> list[dict[str, Any]]:
    """The planted study (fixed seeds): see the module docstring."""
    rng = np.random.default_rng(12345)
    noise = lambda: float(rng.normal(0, SEED_SD))  # noqa: E731
    out = []
    for seed in range(seeds):
        for n in SIZE_BASE:
            out.append(make_record(run_id, method="head", n=n, seed=seed, accuracy=SIZE_BASE[n] - 0.2 + noise(),
                                   peak=0.3, train_s=2.0, latency_ms=8.0))
            out.append(make_record(run_id, method="full", n=n, seed=seed, accuracy=SIZE_BASE[n] + 0.03 + noise(),
                                   peak=1.2, train_s=100.0 * n / 50, latency_ms=10.0,
                                   limits={"max_peak_gib": 1.0} if n == 500 else None))
            for rank, effect in RANK_EFFECT.items():
                out.append(make_record(run_id, rank=rank, n=n, seed=seed, accuracy=SIZE_BASE[n] + effect + noise(),
                                       peak=0.6 + rank * 0.002, train_s=20.0 + n * 0.1 + rank, latency_ms=10.5))
        out.append(make_record(run_id, rank=8, targets=["qkvo"], n=250, seed=seed,
                               accuracy=SIZE_BASE[250] + noise(), peak=0.62, train_s=50.0, latency_ms=10.6))
        out.append(make_record(run_id, rank=8, bits="4-nf4", n=250, seed=seed,
                               accuracy=SIZE_BASE[250] - 0.002 + noise(), peak=0.35, train_s=75.0, latency_ms=14.0))
    out.append(make_record(run_id, rank=64, n=500, seed=0, status="failed", reason="out of memory: CUDA OOM"))
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("reports"), "study", study_records())


@pytest.fixture(scope="module")
def sections(study):
    ctx, built = build_sections(load_runs([study]))
    return ctx, {s.id: s for s in built}


# ------------------------------------------------------------------------------------------------ records, loading

def test_synthetic_records_follow_the_schema(study):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    for path in sorted((study / "records").glob("*.json"))[:20]:
        jsonschema.validate(json.loads(path.read_text()), schema)


def test_load_flattens_one_row_per_record(study):
    ex = load_runs([study.parent])  # a root of run folders works too
    assert len(ex.frame) == len(list((study / "records").glob("*.json")))
    row = ex.frame[(ex.frame["method"] == "lora") & (ex.frame["bits"] == "4-nf4")].iloc[0]
    assert row["method_label"] == "qlora-nf4" and row["targets"] == "qv" and row["n_train"] == 1250
    assert row["alpha_ratio"] == 2.0 and row["device"] == "cpu: x86_64 (2 threads)"
    failed = ex.frame[ex.frame["status"] == "failed"].iloc[0]
    assert failed["reason"].startswith("out of memory") and math.isnan(failed["accuracy"])
    assert ex.runs[0]["grid"] == "synthetic"
    assert all(len(p) == len(LABELS) == len(t) for p, t in ex.predictions.values())


# ------------------------------------------------------------------------------------------------ statistics

def test_intervals_from_seeds_and_from_examples():
    mean, lo, hi = stats.mean_ci([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82) and lo == pytest.approx(0.82 - 4.303 * 0.02 / math.sqrt(3), abs=1e-3)
    assert math.isnan(stats.mean_ci([0.8])[1])
    pred = np.array(predictions(0.85, np.random.default_rng(0)))
    lo, hi = stats.percentile_ci(stats.metric_values("accuracy", pred, LABELS, stats.bootstrap_indices(len(LABELS))))
    half = 1.96 * math.sqrt(0.85 * 0.15 / len(LABELS))
    assert lo < 0.85 < hi and (hi - lo) == pytest.approx(2 * half, rel=0.15)


def test_tests_that_lack_samples_are_not_run_and_say_why():
    mwu = stats.mann_whitney([0.8, 0.81], [0.7, 0.71], "a vs b")
    assert not mwu.ran and "cannot reach p<0.05" in mwu.reason
    assert stats.mann_whitney([0.8, 0.81, 0.82, 0.83], [0.7, 0.71, 0.72, 0.73], "a vs b").p < 0.05
    kw = stats.kruskal({"r4": [0.8, 0.81], "r8": [0.85, 0.86]}, "rank")
    assert not kw.ran and "3 seeds per level" in kw.reason
    assert not stats.spearman([1, 2, 3], [1, 2, 3], "x").ran
    assert not stats.anova_two_way(pd.DataFrame({"y": [1.0, 2.0], "a": [1, 2], "b": [1, 1]}), "y", "a", "b", "s")[0].ran


def test_holm_matches_the_step_down_rule():
    results = [stats.TestResult("t", str(i), "n", p=p) for i, p in enumerate([0.01, 0.04, 0.03, 0.5])]
    stats.holm(results + [stats.not_run("t", "x", "n", "too few")])
    assert [r.p_holm for r in results] == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_mcnemar_on_paired_predictions():
    a = np.array([True] * 90 + [False] * 10)
    b = np.array([True] * 70 + [False] * 30)
    res = stats.mcnemar(a, b, "a vs b")
    assert res.p < 0.001 and res.effect == pytest.approx(0.2)


def test_equivalence_needs_the_interval_inside_the_margin():
    rng = np.random.default_rng(1)
    same = stats.tost_seeds(0.88 + rng.normal(0, 0.002, 6), 0.88 + rng.normal(0, 0.002, 6), 0.01)
    assert same.shown and same.p < 0.05
    apart = stats.tost_seeds(0.88 + rng.normal(0, 0.002, 6), 0.86 + rng.normal(0, 0.002, 6), 0.01)
    assert not apart.shown


def test_plateau_and_its_interval_on_a_planted_curve():
    levels = [2, 4, 8, 16, 32]
    means = [0.70, 0.80, 0.885, 0.886, 0.887]
    rng = np.random.default_rng(0)
    boot = np.array(means) + rng.normal(0, 0.001, (2000, 5))
    p = stats.plateau(levels, means, boot)
    assert p.level == 8 and p.best_level == 32 and p.interval == (8, 8)
    assert stats.plateau(levels, means, None).interval is None


def test_noise_floor_is_the_pooled_seed_spread(sections):
    ctx, _ = sections
    sd, configs = ctx.noise[("minilm-l6", "bbc-topic")]
    assert configs > 20 and sd == pytest.approx(SEED_SD, rel=0.35)


def test_planted_rank_effect_is_found(sections):
    _, by_id = sections
    rank = by_id["rank"]
    studies = rank.data["studies"]
    assert len(studies) == 3  # one per data size
    for s in studies:
        kw = next(t for t in s.tests if t.test == "Kruskal-Wallis")
        assert kw.significant and kw.effect > 0.5
        rho = next(t for t in s.tests if t.test == "Spearman")
        assert rho.significant and rho.effect > 0.7
    anova = {t.subject.rsplit(": ", 1)[1]: t for t in rank.data["anova"]}
    assert anova["rank"].significant and anova["n_train"].significant
    assert anova["rank × n_train"].ran  # four seeds in every cell: the interaction is tested
    assert "significant" in rank.finding and "not significant" not in rank.finding


def test_plateau_is_where_it_was_planted(sections):
    _, by_id = sections
    for s in by_id["rank"].data["studies"]:
        assert s.plateau.level == 8 and s.plateau.interval[0] <= 8 <= s.plateau.interval[1]
    assert "plateaus at r8" in by_id["rank"].finding
    lora_r8 = next(s for s in by_id["size"].data["studies"] if s.context.startswith("lora r8 qv"))
    assert lora_r8.plateau.level == 1250 and lora_r8.plateau.best_level == 2500


def test_null_effect_is_not_found(sections):
    _, by_id = sections
    targets = by_id["targets"]
    (study,) = targets.data["studies"]
    (comp,) = study.comparisons
    assert comp.test.ran and not comp.test.significant
    assert comp.equivalence.shown  # the claim of no effect rests on equivalence, not on the p-value
    assert comp.within_noise
    assert "equivalent" in targets.finding or "noise" in targets.finding


def test_quantization_compares_with_its_16_bit_twin(sections):
    _, by_id = sections
    quant = by_id["quantization"]
    (study,) = quant.data["studies"]
    assert study.levels == ["16", "4-nf4"]
    (comp,) = study.comparisons
    assert comp.a.label == "4-bit NF4" and comp.b.label == "16-bit"
    assert "peak memory ×0.57" in quant.finding and "training time ×1.42" in quant.finding


def test_methods_section_ranks_full_lora_head(sections):
    _, by_id = sections
    methods = by_id["methods"]
    main = max(methods.data["studies"], key=lambda s: s.row["n_train"])
    assert main.best.label.startswith("full")
    head = next(c for c in main.comparisons if c.a.label.startswith("head"))
    assert head.diff == pytest.approx(-0.23, abs=0.01) and head.hi < -0.2  # far beyond its interval
    # four seeds a side: Mann-Whitney's smallest p (0.029) cannot survive Holm over the section's tests
    assert head.test.p < 0.05 and not head.test.significant


def test_single_seed_uses_examples_never_other_configurations(tmp_path):
    records = [make_record("one", rank=r, seed=0, accuracy=a) for r, a in ((4, 0.80), (8, 0.88), (16, 0.885))]
    records.append(make_record("one", method="head", rank=None, accuracy=0.60))
    ctx, built = build_sections(load_runs([write_run(tmp_path, "one", records)]))
    by_id = {s.id: s for s in built}
    (study,) = by_id["rank"].data["studies"]
    assert all(c.interval.startswith("bootstrap") for c in study.cells)
    assert study.plateau.interval is not None
    comp = by_id["methods"].data["studies"][0].comparisons[0]
    assert comp.test.test == "McNemar" and comp.test.significant and "paired bootstrap" in comp.interval
    assert ctx.noise[("minilm-l6", "bbc-topic")] == (None, 0)


# ------------------------------------------------------------------------------------------------ Pareto

def test_pareto_frontier_is_exact():
    quality = np.array([0.90, 0.85, 0.85, 0.80, 0.95, 0.70, np.nan, 0.95])
    cost = np.array([2.0, 1.0, 1.5, 1.0, 4.0, 0.5, 0.1, 4.0])
    # 0.85@1.0 beats 0.85@1.5 and 0.80@1.0; equal points (0.95@4.0 twice) are both kept; NaN never is
    assert frontier(quality, cost).tolist() == [True, True, False, False, True, True, False, True]
    rng = np.random.default_rng(7)
    q, c = rng.random(60), rng.random(60)
    brute = [not any(c[j] <= c[i] and q[j] >= q[i] and (c[j] < c[i] or q[j] > q[i]) for j in range(60))
             for i in range(60)]
    assert frontier(q, c).tolist() == brute


def test_best_under_a_budget():
    points = pd.DataFrame({"peak": [0.5, 1.0, 2.0, 4.0], "acc": [0.7, 0.85, 0.85, 0.9], "name": list("abcd")})
    assert best_under(points, "peak", 2.5, "acc")["name"] == "b"
    assert best_under(points, "peak", 0.4, "acc") is None
    assert memory_budgets(pd.Series([3.0, 9.0, 30.0])) == [4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0]
    assert memory_budgets(pd.Series([0.61, 0.62, 0.7])) == [0.62, 0.66, 0.7]


def test_pareto_section_frontier_matches_brute_force(sections):
    _, by_id = sections
    points, fronts = by_id["pareto"].data["points"], by_id["pareto"].data["frontiers"]
    q, c = points["accuracy"].to_numpy(), points["peak_memory_gib"].to_numpy()
    brute = [not any(c[j] <= c[i] and q[j] >= q[i] and (c[j] < c[i] or q[j] > q[i]) for j in range(len(q)))
             for i in range(len(q))]
    assert fronts["peak_memory_gib"].tolist() == brute
    assert set(fronts) == {"peak_memory_gib", "train_seconds", "latency_p95_ms"}


# ------------------------------------------------------------------------------------------------ rendering

def test_render_from_records(study, tmp_path):
    index = render_report([study], tmp_path / "out")
    html = index.read_text()
    for sid in ("methods", "rank", "targets", "quantization", "size", "pareto", "runs", "all-experiments"):
        assert f'id="{sid}"' in html
    assert html.count("<svg") >= 9  # forest, line + heatmap, forest, 2 forests, line, 3 scatter, bars
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "out of memory" in html and "max_peak_gib" in html
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert len(rows) == len(list((study / "records").glob("*.json")))
    assert {"test_id", "status", "accuracy", "peak_memory_gib", "method_label"} <= set(rows[0])


def test_merged_runs_show_what_differs(tmp_path):
    a = write_run(tmp_path, "gpu-a", [make_record("gpu-a", seed=s) for s in range(2)])
    newer = {"torch": "2.14.0", "transformers": "5.24.0", "peft": "0.22.0"}
    b = write_run(tmp_path, "gpu-b", [make_record("gpu-b", seed=s, versions=newer, device="other") for s in (0, 2)],
                  versions=newer)
    ctx, built = build_sections(load_runs([a, b]))
    runs = next(s for s in built if s.id == "runs")
    assert {"versions.torch", "versions.peft", "devices"} <= set(runs.data["differing"])
    assert "differ in" in runs.finding
    assert ctx.duplicates == 1  # seed 0 of one configuration ran in both: the later record is analysed


def test_records_without_quality_still_render(tmp_path):
    shape = "shape:qwen2.5-1.5b"
    records = [make_record("shapes", model=shape, rank=r, accuracy=None, peak=40.0) for r in (8, 16)]
    records.append(make_record("shapes", model=shape, bits="4-nf4", accuracy=None, peak=20.0, train_s=45.0))
    records.append(make_record("shapes", status="skipped", reason="needs a CUDA GPU"))
    index = render_report([write_run(tmp_path, "shapes", records)], tmp_path / "out")
    html = index.read_text()
    assert "No quality metric was recorded" in html and "1 skipped (1× needs a CUDA GPU)" in html
    assert "no quality metric recorded; cost ratios peak memory ×0.50, training time ×1.50" in html
    assert "so there is no Pareto frontier; the leanest is" in html


# ------------------------------------------------------------------------------------------------ import

ORIGIN_COLUMNS = ["dataset", "model", "method", "modules", "rank", "time", "gpu", "loss", "f1", "accuracy",
                  "pst_dataset"]


def write_origin_table(path: Path) -> Path:
    """A small table in the origin study's format, with its quirks: minutes, GB, `q+v`, rank empty for baseline."""
    rng = np.random.default_rng(3)
    rows = []
    for model, boost in (("Qwen3-0.6B", 0.0), ("Qwen2.5-1.5B", 0.02)):
        for size in (300, 3000, 30000):
            base = {300: 0.70, 3000: 0.84, 30000: 0.87}[size] + boost
            rows.append(["ag_news", model, "baseline", "", "", 1.0 * size / 300, 3.1, 0.9, base - 0.15, base - 0.14,
                         size])
            for rank in (4, 8, 16, 32):
                for _ in range(2):
                    acc = base + {4: -0.03, 8: 0.0, 16: 0.002, 32: 0.003}[rank] + rng.normal(0, 0.003)
                    rows.append(["ag_news", model, "LoRA", "q+v", rank, 2.0 * size / 300, 6.0 + rank * 0.01, 0.4,
                                 acc - 0.01, acc, size])
            for method, gpu, minutes in (("QLoRA nf4", 4.2, 3.4), ("QLoRA fp4", 4.2, 3.3)):
                for _ in range(2):
                    acc = base - 0.004 + rng.normal(0, 0.003)
                    rows.append(["ag_news", model, method, "q+v", 8, minutes * size / 300, gpu, 0.41, acc - 0.01,
                                 acc, size])
            rows.append(["ag_news", model, "LoRA", "q+k+v+o", 8, 2.5 * size / 300, 6.3, 0.4, base - 0.01,
                         base + 0.001, size])
            rows.append(["ag_news", model, "OGLoRA", "q+v", 8, 2.2 * size / 300, 6.1, 0.5, base - 0.05, base - 0.04,
                         size])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(ORIGIN_COLUMNS)
        writer.writerows(rows)
    return path


def test_origin_method_and_module_names():
    assert parse_method("baseline") == ("head", "16")
    assert parse_method("LoRA") == ("lora", None)
    assert parse_method("QLoRA nf4") == ("lora", "4-nf4")
    assert parse_method("QLoRA fp4") == ("lora", "4-fp4")
    assert parse_method("OGLoRA") == ("oglora", None)
    assert parse_method("QDoRA nf4 dq") == ("dora", "4-nf4-dq")
    assert targets_label("q+v") == "qv" and targets_label("q+k+v+o") == "qkvo" and targets_label(["qv"]) == "qv"


def test_import_converts_the_origin_units(tmp_path):
    ex = import_csv(write_origin_table(tmp_path / "study.csv"))
    frame = ex.frame
    base = frame[(frame["method"] == "head")].iloc[0]
    assert math.isnan(base["rank"]) and pd.isna(base["targets"]) and base["train_seconds"] == pytest.approx(60.0)
    assert base["peak_memory_gib"] == pytest.approx(3.1e9 / 2**30) and base["n_train"] == 300
    assert set(frame["method_label"]) == {"head", "lora", "qlora-nf4", "qlora-fp4", "oglora"}
    assert set(frame["targets"].dropna()) == {"qv", "qkvo"}
    assert frame.groupby("config")["seed"].max().max() == 1  # repeated rows became seeds 0 and 1
    remapped = import_csv(tmp_path / "study.csv", {"f1": "weighted_f1", "time": "train_seconds"})
    assert remapped.frame["weighted_f1"].notna().all() and remapped.frame["macro_f1"].isna().all()
    assert remapped.frame["train_seconds"].iloc[0] == pytest.approx(1.0)


def test_import_renders_every_section_its_columns_allow(tmp_path):
    index = render_imported(write_origin_table(tmp_path / "study.csv"), {}, tmp_path / "out")
    html = index.read_text()
    ctx, built = build_sections(import_csv(tmp_path / "study.csv"))
    by_id = {s.id: s for s in built}
    for sid in ("methods", "rank", "targets", "quantization", "size", "pareto"):
        assert by_id[sid].chart, sid  # every question these columns can answer gets its chart
        assert f'id="{sid}"' in html
    assert by_id["rank"].data["studies"][0].plateau.level == 8
    assert "latency" not in " ".join(t.caption for t in by_id["pareto"].tables)  # no latency column: no latency
    assert "repeated rows of one configuration are taken as its seeds" in html


# ------------------------------------------------------------------------------------------------ CLI

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lora-bench")
    add_report_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_renders_runs_and_imports(study, tmp_path, capsys):
    assert run_report(parse(["report", str(study), "--out", str(tmp_path / "a")])) == 0
    assert (tmp_path / "a" / "index.html").exists() and (tmp_path / "a" / "results.csv").exists()
    table = write_origin_table(tmp_path / "t.csv")
    assert run_report(parse(["report", "--import-csv", str(table), "--map", "f1=weighted_f1"])) == 0
    assert (tmp_path / "t-report" / "index.html").exists()
    assert run_report(parse(["report", "--import-csv", str(table), "--map", "f1=nonsense"])) == 2
    assert run_report(parse(["report", str(tmp_path / "missing")])) == 2
    err = capsys.readouterr().err
    assert "unknown field 'nonsense'" in err and "not a run folder" in err
