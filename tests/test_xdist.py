"""pytest-xdist on CPU workers: one run folder and one report for all workers, run.json written by the
controller, each record naming its worker and timed without pytest-benchmark (which xdist switches
off), a killed worker costing only its own experiment; and the GPU each worker pins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lora_bench import workers
from lora_bench.grid import load_grid
from lora_bench.provenance import WORKER_ENV

from .conftest import ROOT, bench, records, run


@pytest.mark.parametrize(("worker", "visible", "count", "device"), [
    ("gw0", None, 2, "0"), ("gw1", None, 2, "1"), ("gw3", None, 2, "1"),      # one worker per GPU, wrapping
    ("gw1", "4,5,6", 8, "5"), ("gw4", "4, 5, 6", 8, "5"),                     # the k-th of those already visible
    ("gw1", "GPU-aa,GPU-bb", 8, "GPU-bb"),                                    # UUIDs too
    ("gw0", None, 0, None), ("gw0", "", 2, None),                             # no GPU: nothing to pin
])
def test_each_worker_takes_its_own_visible_device(worker, visible, count, device):
    assert workers.device_for(worker, visible, count) == device


def test_a_worker_pins_its_gpu_and_names_itself_before_cuda_starts(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.delenv(WORKER_ENV, raising=False)
    workers.configure_process(SimpleNamespace(workerinput={"workerid": "gw1"}))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and os.environ[WORKER_ENV] == "gw1"
    workers.configure_process(SimpleNamespace())  # not a worker: an inherited name goes, the devices stay
    assert WORKER_ENV not in os.environ and os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_two_workers_write_one_run_and_one_report(tmp_path, head_grid):
    out = tmp_path / "reports"
    result = run(bench(head_grid, out, "-n", "2", "--dist", "worksteal"))
    assert result.returncode == 0, result.stdout[-3000:]
    (run_dir,) = [d for d in out.iterdir() if d.is_dir()]
    assert (out / "LATEST").read_text().strip() == run_dir.name
    found = records(out)
    assert len(found) == 4 and all(r["status"] == "ok" for r in found)
    assert {r["meta_info"]["host"]["worker"] for r in found} == {"gw0", "gw1"}
    for r in found:  # timed by lora-bench itself: pytest-benchmark is off under xdist
        assert r["train_info"]["resources"]["train_seconds"] > 0 and r["train_info"]["latency"]["p95_ms"] > 0
        assert r["train_info"]["latency"]["stats"]["rounds"] == 3
    info = json.loads((run_dir / "run.json").read_text())
    assert info["workers"] == 2 and info["host"]["worker"] is None  # the controller's, written at the end
    assert info["counts"] == {"ok": 4, "failed": 0, "skipped": 0, "over_budget": 0, "reused": 0}
    assert len(info["sessions"]) == 1 and info["finished"] == info["sessions"][0]["finished"]
    assert "-n" in info["command_line"]
    assert (run_dir / "index.html").exists() and (run_dir / "results.csv").exists()
    assert [line for line in result.stdout.splitlines() if line.startswith("report: ")] == [
        f"report: {os.path.relpath(run_dir / 'index.html', Path(__file__).resolve().parent.parent)}"]
    summary = result.stdout.split("lora-bench run ")[1]
    assert summary.startswith(f"{run_dir.name}: 4 experiments, 4 ok")
    assert all(summary.count(r["test_id"]) == 1 for r in found)


KILLER = textwrap.dedent("""
    import os
    import signal


    def pytest_runtest_setup(item):
        if os.environ.get("PYTEST_XDIST_WORKER") and item.nodeid.endswith("[" + os.environ["KILL_TEST"] + "]"):
            os.kill(os.getpid(), signal.SIGKILL)
    """)


def test_a_killed_worker_loses_only_its_experiment(tmp_path, head_grid, monkeypatch):
    (tmp_path / "kill_worker.py").write_text(KILLER)
    victim = load_grid(str(head_grid)).ids[-1]
    monkeypatch.setenv("KILL_TEST", victim)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "reports"
    result = run(bench(head_grid, out, "-n", "2", "-p", "kill_worker"))
    assert result.returncode == 1, result.stdout[-3000:]
    assert f"crashed while running 'bench/test_classification.py::test_classification[{victim}]'" in result.stdout
    found = {r["test_id"]: r for r in records(out)}
    assert len(found) == 4, sorted(found)
    assert found.pop(victim)["reason"].startswith("worker crashed: pytest-xdist worker gw")
    # xdist reschedules what was queued on the dead worker; in a race it may drop it: recorded, never lost
    lost = [r for r in found.values() if r["status"] != "ok"]
    assert all(r["reason"].startswith("not run: pytest-xdist never ran it") for r in lost) and len(lost) < 3
    (run_json,) = out.glob("*/run.json")
    assert json.loads(run_json.read_text())["counts"]["failed"] == 1 + len(lost)
    assert f"{victim}" in result.stdout.split("lora-bench run ")[1]


def test_verify_under_xdist_checks_the_whole_run_once(tmp_path, head_grid):
    """Workers hold part of the records: only the controller, which collects them all, verifies."""
    out = tmp_path / "reports"
    first = run(bench(head_grid, out, "--lb-run-id", "first"))
    assert first.returncode == 0, first.stdout[-3000:]
    again = run(bench(head_grid, out, "--lb-run-id", "again", "-n", "2", "--lb-verify", "first"))
    assert again.returncode == 0, again.stdout[-3000:]
    assert again.stdout.count("lora-bench verify: OK") == 1
    verdict = json.loads((out / "again" / "verify.json").read_text())
    assert verdict["ok"] and not verdict["failures"] and verdict["compared"] == 4


PAIRED = textwrap.dedent("""
    targets:
      - {name: ten vs five examples, metric: resources.train_seconds, where: {seed: 0},
         baseline: {n: 5}, candidate: {n: 10}, max_ratio: 1000}
    """)


def test_loadgroup_keeps_a_targets_two_sides_on_one_worker(tmp_path, head_grid):
    """A ratio is measured side by side on one GPU: with `--dist loadgroup` the experiments a target
    compares run on one worker; the others still spread."""
    grid = tmp_path / "paired.yaml"
    grid.write_text(head_grid.read_text() + PAIRED)
    out = tmp_path / "reports"
    result = run(bench(grid, out, "-n", "2", "--dist", "loadgroup"))
    assert result.returncode == 0, result.stdout[-3000:]
    found = records(out)
    assert len(found) == 4 and all(r["status"] == "ok" for r in found)
    paired = {r["meta_info"]["host"]["worker"] for r in found if r["run_info"]["spec"]["seed"] == 0}
    assert len(paired) == 1, paired
    assert {r["meta_info"]["host"]["worker"] for r in found} == {"gw0", "gw1"}
    assert "5 passed" in result.stdout  # four experiments and the target


def test_a_resumed_loadgroup_run_sends_a_group_back_to_the_worker_that_began_it(tmp_path, head_grid):
    grid = tmp_path / "paired.yaml"
    grid.write_text(head_grid.read_text() + PAIRED)
    out = tmp_path / "reports"
    first = run(bench(grid, out, "--lb-run-id", "r", "-n", "2", "--dist", "loadgroup", "-k", "n10-s1 or n5-s0"))
    assert first.returncode == 0, first.stdout[-3000:]
    began = {r["test_id"]: r["meta_info"]["host"]["worker"] for r in records(out)}
    again = run(bench(grid, out, "--lb-resume", "r", "-n", "2", "--dist", "loadgroup"))
    assert again.returncode == 0, again.stdout[-3000:]
    ran = {r["test_id"]: r["meta_info"]["host"]["worker"] for r in records(out)}
    (n5,) = [t for t in ran if t.endswith("n5-s0")]
    (n10,) = [t for t in ran if t.endswith("n10-s0")]
    assert ran[n10] == began[n5], (began, ran)


def test_a_resumed_session_under_xdist_is_in_run_json_from_its_start(tmp_path, head_grid):
    """A resumed session that is killed before it finishes still shows in run.json's sessions."""
    out = tmp_path / "reports"
    first = run(bench(head_grid, out, "--lb-run-id", "r", "-n", "2", "-k", "s0"))
    assert first.returncode == 0, first.stdout[-3000:]
    hang = tmp_path / "hang_first_test.py"
    hang.write_text("import time\n\ndef pytest_runtest_call(item):\n    time.sleep(600)\n")
    cmd = bench(head_grid, out, "--lb-resume", "r", "-n", "2", "-p", "hang_first_test")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    run_json = out / "r" / "run.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(json.loads(run_json.read_text())["sessions"]) < 2:
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    sessions = json.loads(run_json.read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["resumed"] and "finished" not in sessions[1], sessions
