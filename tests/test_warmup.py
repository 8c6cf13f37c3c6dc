"""Warm-up runs (lora_bench.warmup): which experiments get one, that seeds of one configuration share
it, and that a bench session records it beside the experiment's own timing."""

from __future__ import annotations

import textwrap

from lora_bench import cuda_graphs, perf_targets
from lora_bench.grid import load_grid
from lora_bench.schema import ExperimentSpec
from lora_bench.warmup import WARMUP_STEPS, warmed_ids, warmup_spec

from .conftest import bench, records, run, write_grid


def test_only_experiments_compared_by_whole_run_time_get_a_warmup():
    grid = load_grid("perf")
    specs = {tid: spec.to_dict() for tid, spec in zip(grid.ids, grid.specs)}
    warmed = warmed_ids(grid.targets, specs)
    end_to_end = {tid for tid, s in specs.items() if s["task"] in ("bbc-topic", "synthetic-headlines") and s["n"] in (250, 253)}
    assert warmed == end_to_end and len(warmed) == 16
    # step times (throughput, QLoRA's cost, small models) and latency leave their own warm-up out
    assert not any(specs[t]["task"] == "random-tokens" or specs[t]["recipe"] == "plain" for t in warmed)


def test_seeds_of_one_configuration_share_one_short_warmup():
    spec = load_grid("perf").specs[0]
    seeds = [ExperimentSpec.from_dict({**spec.to_dict(), "seed": s}) for s in (0, 1, 2)]
    assert len({warmup_spec(s).spec_hash for s in seeds}) == 1
    warm = warmup_spec(spec)
    assert warm.max_steps == WARMUP_STEPS == cuda_graphs.WARMUP + 1 and warm.latency_rounds == 1
    assert (warm.model, warm.recipe, warm.bits, warm.batch_size, warm.n) == (spec.model, spec.recipe, spec.bits,
                                                                              spec.batch_size, spec.n)
    other_bits = ExperimentSpec.from_dict({**spec.to_dict(), "bits": "4-nf4"})
    assert warmup_spec(other_bits).spec_hash != warm.spec_hash


TIMED = textwrap.dedent("""
    targets:
      - {name: ten vs five examples, metric: resources.train_seconds, baseline: {n: 5}, candidate: {n: 10},
         max_ratio: 1000}
    """)


def test_a_bench_session_warms_each_configuration_once_and_records_it(tmp_path, head_grid):
    grid = tmp_path / "timed.yaml"
    grid.write_text(head_grid.read_text() + TIMED)
    out = tmp_path / "reports"
    result = run(bench(grid, out, "--lb-run-id", "warm"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count("warm-up, untimed") == 2  # n 5 and n 10; their second seeds share it
    found = records(out)
    assert len(found) == 4 and all(r["status"] == "ok" for r in found)
    for n in (5, 10):
        warm = [r["run_info"]["warmup"] for r in found if r["run_info"]["spec"]["n"] == n]
        assert sorted(w["shared"] for w in warm) == [False, True]
        assert all(w["status"] == "ok" and w["seconds"] > 0 for w in warm)
        assert len({w["spec_hash"] for w in warm}) == 1
    assert not list((out / "warm" / "records").glob("warmup-*"))  # warm-ups leave no record of their own
    report = (out / "warm" / "index.html").read_text()
    assert "4 of 4 runs after an untimed warm-up (2 warm-ups" in report
    cold = run(bench(grid, out, "--lb-run-id", "cold", "--lb-no-warmup"))
    assert cold.returncode == 0, cold.stdout[-3000:]
    assert "warm-up" not in cold.stdout
    assert not any("warmup" in r["run_info"] for r in records(out) if r["run_info"]["run_id"] == "cold")


def test_warmups_run_both_recipes_for_a_few_steps(tmp_path, tiny_bert, csv_task):
    """The Trainer-based naive recipe and lora-bench's own loop both stop at the warm-up's steps."""
    grid = write_grid(tmp_path, f"""
        name: tiny-e2e
        axes:
          model: {tiny_bert}
          task: {csv_task}
          method: lora
          rank: 4
          n: 10
          batch_size: 2
          latency_rounds: 2
          recipe: [naive, lora-bench]
        targets:
          - {{name: end to end, metric: resources.pipeline_seconds, baseline: {{recipe: naive}},
             candidate: {{recipe: lora-bench}}, max_ratio: 1000}}
        """)
    out = tmp_path / "reports"
    result = run(bench(grid, out))
    assert result.returncode == 0, result.stdout[-3000:]
    found = records(out)
    assert len(found) == 2 and all(r["status"] == "ok" and r["run_info"]["warmup"]["status"] == "ok" for r in found)
    assert all(r["run_info"]["warmup"]["steps"] == WARMUP_STEPS for r in found)
    assert all(r["train_info"]["training"]["optimizer_steps"] > WARMUP_STEPS for r in found)  # the timed run is whole


def test_a_verdict_names_warmups_only_where_it_compares_whole_run_times():
    def timed(recipe: str, shared: bool) -> dict:
        warm = {"spec_hash": recipe, "steps": 3, "status": "ok", "reason": None, "seconds": 5.0, "shared": shared}
        return {"status": "ok", "test_id": recipe, "run_info": {"spec": {"recipe": recipe}, "warmup": warm},
                "train_info": {"resources": {"pipeline_seconds": 10.0 if recipe == "naive" else 1.0},
                               "training": {"step_ms_median": 2.0}}, "meta_info": {}}

    records = [timed("naive", False), timed("lora-bench", False), timed("lora-bench", True)]
    whole, steps = perf_targets.parse_targets([
        {"name": "whole", "metric": "resources.pipeline_seconds", "baseline": {"recipe": "naive"},
         "candidate": {"recipe": "lora-bench"}, "max_ratio": 0.5},
        {"name": "steps", "metric": "training.step_ms_median", "baseline": {"recipe": "naive"},
         "candidate": {"recipe": "lora-bench"}, "max_ratio": 2}])
    assert "3 of 3 runs after an untimed warm-up (2 warm-ups, 10.0 s)" in perf_targets.evaluate(whole, records)["reason"]
    assert "warm-up" not in perf_targets.evaluate(steps, records)["reason"]
