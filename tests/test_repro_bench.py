"""`pytest bench --lb-verify RUN` and `--lb-compare RUN` in real pytest processes on a tiny grid: a
re-run verifies with zero differences; a planted learning-rate change fails verify naming the
metric; a planted regression fails compare; the exit status says so even when every test passed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_grid

ROOT = Path(__file__).resolve().parent.parent
GRID = """
    name: tiny-repro
    axes:
      model: {model}
      task: {task}
      method: [head, lora]
      targets: qv
      rank: 4
      n: 10
      seed: 0
      epochs: 2
      lr: {lr}
      latency_rounds: 2
    """
NOISY_CPU = ("--lb-compare-fail", "time=inf", "--lb-compare-fail", "latency=inf")


def bench(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "bench"), "-p", "no:warnings", "-p", "lora_bench.plugin_repro",
           "--lb-out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def stored(tmp_path_factory, tiny_bert) -> tuple[Path, Path, Path]:
    """A first run of the tiny grid (lr 1e-3), and the folder its runs go to."""
    from .conftest import write_csv_task

    tmp = tmp_path_factory.mktemp("repro-bench")
    task = write_csv_task(tmp)
    grid = write_grid(tmp, GRID.format(model=tiny_bert, task=task, lr="1.0e-3"), "tiny-repro")
    planted = write_grid(tmp, GRID.format(model=tiny_bert, task=task, lr="2.0e-2"), "tiny-repro-lr")
    out = tmp / "reports"
    first = bench(out, "--lb-grid", str(grid), "--lb-run-id", "first", "--lb-deterministic")
    assert first.returncode == 0, first.stdout[-3000:]
    return out, planted, out / "first"


def test_a_rerun_verifies_with_zero_differences_and_compares_clean(stored):
    out, _, first = stored
    # no --lb-grid: the grid comes from first/run.json
    # timings on a shared CPU swing: only quality and memory are judged here
    result = bench(out, "--lb-verify", str(first), "--lb-compare", "first", "--lb-run-id", "again", *NOISY_CPU)
    text = result.stdout
    assert result.returncode == 0, text[-4000:]
    assert "2 experiments of stored run first re-run as again" in text
    assert "0 differences in results, 0 failures" in text
    assert "lora-bench verify: OK" in text and "lora-bench compare: OK" in text
    assert "lora-bench compare: again against first: 2 experiments compared, 0 regressions" in text
    assert "environment: 0 differences" in text
    saved = json.loads((out / "again" / "verify.json").read_text())
    assert saved["ok"] and saved["compared"] == 2
    assert (out / "again" / "compare.json").exists()


def test_a_planted_change_fails_verify_naming_the_metric_and_a_planted_regression_fails_compare(stored, tmp_path):
    out, planted_grid, first = stored
    # an earlier run that used much less memory and scored higher than what runs now
    better = tmp_path / "better"
    shutil.copytree(first, better)
    for path in (better / "records").glob("*.json"):
        record = json.loads(path.read_text())
        record["train_info"]["resources"]["peak_memory_gib"] *= 0.5
        record["train_info"]["metrics"]["accuracy"] = min(1.0, record["train_info"]["metrics"]["accuracy"] + 0.3)
        path.write_text(json.dumps(record))
    result = bench(out, "--lb-verify", str(first), "--lb-grid", str(planted_grid), "--lb-compare", str(better),
                   "--lb-run-id", "planted", *NOISY_CPU)
    text = result.stdout
    assert result.returncode == 1, text[-4000:]
    assert "2 passed" in text  # every test passed; the exit status comes from verify and compare
    assert "FAILED: " in text and "metrics.loss drifted (result): stored" in text
    assert "spec differs from the stored one: lr 0.001 -> 0.02" in text
    assert "lora-bench verify: FAILED" in text
    assert "resources.peak_memory_gib grew +" in text and "beyond the threshold +5%" in text
    assert "metrics.accuracy dropped" in text and "lora-bench compare: FAILED" in text
    assert not json.loads((out / "planted" / "verify.json").read_text())["ok"]


def test_verify_reruns_only_the_stored_experiments_and_refuses_a_missing_run(stored, tmp_path):
    out, _, first = stored
    partial = tmp_path / "partial"
    shutil.copytree(first, partial)
    for path in (partial / "records").glob("*-head-*.json"):
        path.unlink()
    listed = bench(out, "--lb-verify", str(partial), "--co", "-q")
    ids = [line for line in listed.stdout.splitlines() if "::" in line]
    assert len(ids) == 1 and "-lora-" in ids[0], listed.stdout[-2000:]
    assert "deselected" in listed.stdout  # the head experiment (and bench tests of other task types)
    missing = bench(out, "--lb-verify", str(tmp_path / "nope"), "--co", "-q")
    assert missing.returncode != 0 and "--lb-verify: no run folder" in missing.stderr
