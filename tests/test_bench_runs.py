"""Whole bench runs of a tiny grid in a real pytest process: records on disk, budgets that fail
with their numbers, selection by marker, and a sweep killed midway then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from .conftest import ROOT, bench, records, run, write_grid


@pytest.fixture
def tiny_grid(tmp_path, tiny_bert, csv_task) -> Path:
    return write_grid(tmp_path, f"""
        name: tiny
        axes:
          model: {tiny_bert}
          task: {csv_task}
          method: [head, lora]
          targets: qkvo
          n: 10
          seed: [0, 1]
          epochs: 2
          latency_rounds: 3
        """)


def test_a_run_leaves_one_complete_record_per_experiment(tmp_path, tiny_grid):
    out = tmp_path / "reports"
    result = run(bench(tiny_grid, out))
    assert result.returncode == 0, result.stdout[-3000:]
    found = records(out)
    assert len(found) == 4 and all(r["status"] == "ok" for r in found)
    record = next(r for r in found if r["run_info"]["spec"]["method"] == "lora")
    assert record["schema_version"] == 1
    assert record["meta_info"]["data"]["n_train"] == 30 and record["meta_info"]["data"]["n_per_class"] == 10
    assert len(record["train_info"]["predictions"]["test"]) == record["meta_info"]["data"]["n_test"]
    assert record["train_info"]["latency"]["stats"]["rounds"] == 3
    assert record["train_info"]["resources"]["peak_memory_kind"] == "process_peak_rss"
    assert record["train_info"]["resources"]["adapter_bytes"] > 0
    assert record["meta_info"]["git"]["commit"]
    assert record["meta_info"]["versions"]["peft"]
    schema = json.loads((ROOT / "lora_bench" / "record.schema.json").read_text())
    for r in found:
        jsonschema.validate(r, schema)
    run_info = json.loads(next(out.glob("*/run.json")).read_text())
    report = next(out.glob("*/index.html"))
    assert "lora-bench report" in report.read_text() and (report.parent / "results.csv").exists()
    assert f"report: {os.path.relpath(report, ROOT)}" in result.stdout
    assert run_info["counts"] == {"ok": 4, "failed": 0, "skipped": 0, "over_budget": 0, "reused": 0}


def test_marker_selection_is_exact(tmp_path, tiny_grid):
    result = run(bench(tiny_grid, tmp_path / "r", "--co", "-q", "-m", "lb(method='lora') and lb(seed=1)"))
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    assert len(ids) == 1 and "-lora-r8-qkvo-16-n10-s1" in ids[0]
    by_keyword = run(bench(tiny_grid, tmp_path / "r", "--co", "-q", "-k", "head"))
    assert len([line for line in by_keyword.stdout.splitlines() if "::" in line]) == 2


def test_an_experiment_over_budget_fails_and_keeps_its_record(tmp_path, tiny_grid):
    out = tmp_path / "reports"
    result = run(bench(tiny_grid, out, "-k", "head and s0", "--lb-budget", "max_latency_p95_ms=0.0001"))
    assert result.returncode == 1
    assert "over budget (record kept): budget max_latency_p95_ms: at most 0.0001ms, measured" in result.stdout
    (record,) = records(out)
    assert record["status"] == "ok" and record["budgets"]["over_budget"]
    assert record["budgets"]["violations"][0]["budget"] == "max_latency_p95_ms"


def test_a_killed_sweep_resumes_with_only_what_was_missing(tmp_path, tiny_grid):
    out = tmp_path / "reports"
    proc = subprocess.Popen(bench(tiny_grid, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while len(records(out)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {r["test_id"] for r in records(out) if r["status"] == "ok"}
    assert 2 <= len(done) < 4

    result = run(bench(tiny_grid, out, "--lb-resume"))
    assert result.returncode == 0, result.stdout[-3000:]
    reused = {line.split("] ")[1].split(":")[0] for line in result.stdout.splitlines() if ": reused from" in line}
    started = {line.split("] ")[1].split(":")[0] for line in result.stdout.splitlines() if line.endswith(": starting")}
    assert reused == done
    assert started and not (started & done) and len(started | done) == 4
    assert len(list(out.iterdir())) == 2  # the run folder and LATEST: no second run was made

