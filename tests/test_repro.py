"""Reproducibility: seeds and deterministic mode (two CPU runs of one spec are identical), verify
(exact on CPU, per-metric tolerances on a GPU, failing on drift and naming the metric), compare
(deltas, noise floors, thresholds, a planted regression) and the environment diff."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from lora_bench import determinism
from lora_bench.compare import Thresholds, compare_records, compare_runs, noise_floors
from lora_bench.grid import resolve
from lora_bench.runner import run
from lora_bench.storage import RunStore
from lora_bench.verify import (TOLERANCES, check_run, env_diff, environment, grid_for_verify, parse_overrides,
                               verify_records)


@pytest.fixture
def deterministic_mode():
    yield
    torch.use_deterministic_algorithms(False)


def tiny_spec(tiny_bert: Path, task: Path, **overrides):
    return resolve({"model": str(tiny_bert), "task": str(task), "method": "lora", "targets": "qv", "rank": 4,
                    "n": 10, "seed": 0, "epochs": 2, "batch_size": 8, "latency_rounds": 2, **overrides})


def as_record(spec, train_info: dict, test_id: str = "tiny-lora-s0", device: str = "cpu", run_id: str = "r") -> dict:
    """The parts of a record that verify and compare read."""
    return {"test_id": test_id, "status": "ok", "reason": None, "key": "k",
            "run_info": {"run_id": run_id, "spec": spec.to_dict(), "spec_hash": spec.spec_hash, "finished": "t"},
            "train_info": train_info,
            "meta_info": {"versions": {"torch": torch.__version__, "peft": "0.21.2"}, "git": {"commit": "a" * 40},
                          "device": {"type": device, "name": "x86_64" if device == "cpu" else "NVIDIA H200"},
                          "host": {"python": "3.11.7"}}}


def run_in_process(spec, tmp_path: Path, name: str, deterministic: bool) -> dict:
    """runner.run in this process. The flag goes both ways: configure() here (for a runner that
    does not call it) and the environment, which determinism.requested() reads inside the runner."""
    saved = os.environ.get(determinism.ENV_FLAG)
    os.environ[determinism.ENV_FLAG] = "1" if deterministic else "0"
    try:
        info_det = determinism.configure(spec.seed, deterministic)
        info = run(spec, tmp_path / name, lambda m: None)
    finally:
        if saved is None:
            os.environ.pop(determinism.ENV_FLAG, None)
        else:
            os.environ[determinism.ENV_FLAG] = saved
    info.setdefault("determinism", info_det)
    return info


# ------------------------------------------------------------------------------------------ determinism


def test_configure_seeds_everything_and_switches_deterministic_mode(deterministic_mode):
    import random

    import numpy as np

    got = determinism.configure(7, True)
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    determinism.configure(7, True)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a
    assert got["deterministic"] and got["deterministic_algorithms"] and torch.are_deterministic_algorithms_enabled()
    assert got["seeded"][:3] == ["python", "numpy", "torch"] and got["seed"] == 7
    assert got["cudnn_benchmark"] is False and "seed*1000 + epoch" in got["data_order"]
    assert determinism.configure(7, False)["deterministic_algorithms"] is False


def test_requested_follows_the_spec_axis_or_the_environment(monkeypatch):
    class Spec:
        deterministic = True

    monkeypatch.delenv(determinism.ENV_FLAG, raising=False)
    assert determinism.requested(Spec()) and not determinism.requested(None)
    monkeypatch.setenv(determinism.ENV_FLAG, "1")
    assert determinism.requested(None)


@pytest.fixture(scope="module")
def three_runs(tiny_bert, tmp_path_factory):
    """Two runs of one tiny LoRA spec in deterministic mode, and one with a planted learning-rate change."""
    from .conftest import write_csv_task

    tmp = tmp_path_factory.mktemp("determinism")
    task = write_csv_task(tmp)
    spec = tiny_spec(tiny_bert, task)
    planted = tiny_spec(tiny_bert, task, lr=spec.lr * 20)
    try:
        first = run_in_process(spec, tmp, "a", True)
        second = run_in_process(spec, tmp, "b", True)
        changed = run_in_process(planted, tmp, "c", True)
    finally:
        torch.use_deterministic_algorithms(False)
    return spec, planted, first, second, changed


def test_two_cpu_runs_of_one_spec_give_identical_metrics_and_predictions(three_runs):
    spec, _, first, second, _ = three_runs
    assert first["metrics"] == second["metrics"]
    assert first["predictions"] == second["predictions"]
    assert first["training"]["loss_curve"] == second["training"]["loss_curve"]
    assert first["determinism"]["deterministic_algorithms"] is True


def test_verify_finds_zero_differences_between_the_two_runs(three_runs):
    spec, _, first, second, _ = three_runs
    result = verify_records([as_record(spec, first)], [as_record(spec, second)], "A", "B")
    assert result.ok, result.table()
    assert result.result_differences == [] and result.modes == {"tiny-lora-s0": "cpu"}
    assert result.values_compared > 15
    assert "0 differences in results, 0 failures" in result.table()


def test_verify_fails_on_a_planted_learning_rate_change_naming_the_metric(three_runs):
    spec, planted, first, _, changed = three_runs
    result = verify_records([as_record(spec, first)], [as_record(planted, changed)], "A", "C")
    assert not result.ok
    drifted = {d.metric for d in result.differences if d.failed}
    assert "metrics.loss" in drifted and "training.loss_curve" in drifted
    assert any(f.startswith("tiny-lora-s0: metrics.loss drifted (result): stored ") and "tolerance exact" in f
               for f in result.failures)
    assert any("spec differs from the stored one: lr 0.001 -> 0.02" in n for n in result.notes)
    table = result.table()
    assert "DRIFT" in table and "metrics.loss" in table


# ------------------------------------------------------------------------------------------ verify


@pytest.fixture
def spec(tiny_bert, csv_task):
    return tiny_spec(tiny_bert, csv_task)


def train_info(accuracy=0.8, loss=0.5, peak=1.0, seconds=10.0, p95=5.0, predictions=None) -> dict:
    predictions = predictions if predictions is not None else [0, 1, 2, 0, 1, 2, 0, 1, 2, 0] * 20
    return {"metrics": {"accuracy": accuracy, "macro_f1": accuracy - 0.01, "weighted_f1": accuracy, "loss": loss,
                        "prediction_entropy": 1.0, "val_accuracy": accuracy, "val_macro_f1": accuracy, "val_loss": loss},
            "predictions": {"test": predictions, "test_labels": predictions, "val": predictions[:20]},
            "training": {"optimizer_steps": 10, "tokens": 500, "loss_curve": [[1, 1.0], [10, loss]]},
            "params": {"trainable": 100, "total": 1000},
            "latency": {"p95_ms": p95},
            "resources": {"peak_memory_gib": peak, "train_seconds": seconds, "adapter_bytes": 4000}}


def test_gpu_records_get_per_metric_tolerances(spec):
    old = as_record(spec, train_info(), device="cuda")
    within = as_record(spec, train_info(accuracy=0.805, loss=0.51, seconds=11.0), device="cuda")
    result = verify_records([old], [within])
    assert result.ok, result.table()
    assert result.modes == {"tiny-lora-s0": "gpu"}
    assert {d.metric for d in result.result_differences} >= {"metrics.accuracy", "metrics.loss"}
    assert "within tolerance" in result.table()
    beyond = as_record(spec, train_info(accuracy=0.75), device="cuda")
    failed = verify_records([old], [beyond])
    assert any("metrics.accuracy drifted" in f and "±0.01" in f for f in failed.failures)


def test_cpu_results_are_exact_but_measurements_have_tolerances(spec):
    old = as_record(spec, train_info())
    noisy = as_record(spec, train_info(seconds=14.0, p95=6.0, peak=1.05))
    result = verify_records([old], [noisy])
    assert result.ok and result.result_differences == []
    assert "3 differ within their tolerances" in result.table()
    slower = verify_records([old], [as_record(spec, train_info(seconds=45.0, p95=60.0))])
    assert slower.ok and "not judged on CPU" in slower.table()
    bigger = verify_records([old], [as_record(spec, train_info(peak=1.2))])
    assert [d.metric for d in bigger.differences if d.failed] == ["resources.peak_memory_gib"]
    gpu_old, gpu_new = as_record(spec, train_info(), device="cuda"), as_record(spec, train_info(seconds=20.0), device="cuda")
    assert [d.metric for d in verify_records([gpu_old], [gpu_new]).differences if d.failed] == ["resources.train_seconds"]
    fast, jitter = (as_record(spec, train_info(p95=p95), device="cuda") for p95 in (2.0, 3.5))
    assert verify_records([fast], [jitter]).ok  # +75%, but within the 2 ms floor
    one_prediction = list(train_info()["predictions"]["test"])
    one_prediction[3] = 2
    changed = verify_records([old], [as_record(spec, train_info(predictions=one_prediction))])
    assert any("predictions.test drifted" in f and "1 changed" in f for f in changed.failures)


def test_verify_reports_status_changes_and_unmatched_experiments(spec):
    old = [as_record(spec, train_info()), as_record(spec, train_info(), test_id="other")]
    new = as_record(spec, None)
    new.update(status="failed", reason="out of memory: CUDA")
    result = verify_records(old, [new])
    assert result.failures == ["tiny-lora-s0: status ok in the stored run, failed re-run (out of memory: CUDA)"]
    assert any("1 stored experiment(s) not re-run" in n for n in result.notes)
    nothing = verify_records(old, [as_record(spec, train_info(), test_id="new-one")])
    assert not nothing.ok and "nothing to verify" in nothing.failures[0]


def test_tolerances_table_and_overrides(spec):
    assert TOLERANCES["metrics.accuracy"].cpu == 0 and TOLERANCES["metrics.accuracy"].gpu > 0
    assert TOLERANCES["resources.peak_memory_gib"].kind == "rel"
    assert parse_overrides(["accuracy=0.05", "resources.train_seconds:300%"], "--x") == {
        "accuracy": 0.05, "resources.train_seconds": 3.0}
    with pytest.raises(ValueError, match="not NAME=VALUE"):
        parse_overrides(["accuracy"], "--x")
    old, new = as_record(spec, train_info()), as_record(spec, train_info(accuracy=0.79))
    assert not verify_records([old], [new]).ok
    assert verify_records([old], [new], overrides={"accuracy": 0.02, "weighted_f1": 0.02, "macro_f1": 0.02,
                                                   "val_accuracy": 0.02, "val_macro_f1": 0.02}).ok


def test_environment_diff_names_versions_device_and_commit(spec):
    old = as_record(spec, train_info())
    new = copy.deepcopy(old)
    new["meta_info"]["versions"]["peft"] = "0.22.0"
    new["meta_info"]["git"]["commit"] = "b" * 40
    rows = {key: (a, b, changed) for key, a, b, changed in env_diff(environment([old]), environment([new]))}
    assert rows["versions.peft"] == ("0.21.2", "0.22.0", True)
    assert rows["git.commit"][2] is True and rows["device.type"] == ("cpu", "cpu", False)
    assert "versions.torch" not in rows  # unchanged entries are left out, commit and device always shown
    table = verify_records([old], [new], "A", "B").table()
    assert "versions.peft" in table and "CHANGED" in table and "bbbbbbbbbbbb" in table


# ------------------------------------------------------------------------------------------ compare


def seeds(spec, values: list[float], peak=1.0, seconds=10.0) -> list[dict]:
    out = []
    for seed, acc in enumerate(values):
        s = type(spec).from_dict({**spec.to_dict(), "seed": seed})
        out.append(as_record(s, train_info(accuracy=acc, peak=peak, seconds=seconds), test_id=f"tiny-lora-s{seed}"))
    return out


def test_compare_reports_deltas_and_passes_within_noise(spec):
    old = seeds(spec, [0.80, 0.84, 0.82])
    new = seeds(spec, [0.79, 0.845, 0.82], peak=1.02, seconds=12.0)
    result = compare_records(old, new, old_name="night-1", new_name="night-2")
    assert result.ok, result.table()
    change = result.change("tiny-lora-s0", "metrics.accuracy")
    assert change.delta == pytest.approx(-0.01) and not change.failed
    assert result.change("tiny-lora-s0", "resources.peak_memory_gib").relative == pytest.approx(0.02)
    table = result.table()
    assert "0.800 -> 0.790 -0.010" in table and "1 -> 1.02 +2.0%" in table and "10 -> 12 +20.0%" in table


def test_compare_fails_on_a_planted_regression(spec):
    old = seeds(spec, [0.80, 0.82])
    new = seeds(spec, [0.70, 0.82], peak=1.2)
    result = compare_records(old, new, old_name="A", new_name="B")
    assert not result.ok
    failed = {(c.experiment, c.metric) for c in result.changes if c.failed}
    assert ("tiny-lora-s0", "metrics.accuracy") in failed
    assert ("tiny-lora-s0", "resources.peak_memory_gib") in failed and ("tiny-lora-s1", "resources.peak_memory_gib") in failed
    assert ("tiny-lora-s1", "metrics.accuracy") not in failed
    messages = "\n".join(result.failures)
    assert "tiny-lora-s0: metrics.accuracy dropped 0.1000 (0.8 -> 0.7), beyond its noise floor 0.0141" in messages
    assert "resources.peak_memory_gib grew +20.0% (1 -> 1.2), beyond the threshold +5%" in messages
    assert " !" in result.table()


def test_noise_floor_from_seeds_or_a_fixed_margin(spec):
    th = Thresholds()
    floors = noise_floors(seeds(spec, [0.80, 0.82, 0.84]), th)
    key = next(k for k in floors if k[1] == "metrics.accuracy")
    assert floors[key][0] == pytest.approx(0.02) and "over 3 seeds" in floors[key][1]
    single = noise_floors(seeds(spec, [0.8]), th)
    assert all(v[0] == th.quality_margin for v in single.values())
    same = noise_floors(seeds(spec, [0.8, 0.8]), th)
    assert all(v[0] == th.quality_floor for v in same.values())


def test_compare_thresholds_are_configurable(spec):
    th = Thresholds.from_options(["memory=25%", "time:10%", "quality_margin=0.2", "time_abs=0"])
    assert (th.memory, th.time, th.quality_margin, th.time_abs_s) == (0.25, 0.10, 0.2, 0.0)
    with pytest.raises(ValueError, match="unknown threshold 'speed'"):
        Thresholds.from_options(["speed=1"])
    old, new = seeds(spec, [0.8]), seeds(spec, [0.75], peak=1.2, seconds=12.0)
    assert not compare_records(old, new).ok
    result = compare_records(old, new, Thresholds.from_options(["memory=25%", "quality_margin=0.1", "time=30%"]))
    assert result.ok, result.table()
    slower = compare_records(old, new, th)
    assert [c.metric for c in slower.changes if c.failed] == ["resources.train_seconds"]


def test_compare_a_failed_experiment_and_the_environment(spec):
    old = seeds(spec, [0.8])
    new = copy.deepcopy(old)
    new[0].update(status="failed", reason="out of memory: CUDA", train_info=None)
    new[0]["meta_info"]["versions"]["torch"] = "2.14.0"
    result = compare_records(old, new, old_name="A", new_name="B")
    assert result.failures == ["tiny-lora-s0: ok in A, failed now (out of memory: CUDA)"]
    assert "versions.torch" in result.table() and "2.14.0" in result.table()


# ------------------------------------------------------------------------------------------ run folders


def test_check_run_compare_runs_and_grid_for_verify_read_run_folders(spec, tmp_path):
    store = RunStore.create(tmp_path / "reports", "old-run")
    record = as_record(spec, train_info(), run_id="old-run")
    store.write_record(record)
    grid_text = "name: tiny\naxes:\n  method: lora\n"
    store.write_run_info({"run_id": "old-run", "grid": {"name": "tiny", "path": "/somewhere/tiny-grid.yaml",
                                                        "text": grid_text}})
    assert check_run(store.dir, [copy.deepcopy(record)]).ok
    assert compare_runs(str(store.dir), [copy.deepcopy(record)]).ok
    path = grid_for_verify(store.dir)
    assert path.read_text() == grid_text and path.name == "tiny-grid.yaml"
    (store.dir / "run.json").write_text(json.dumps({"grid": {}}))
    with pytest.raises(FileNotFoundError, match="holds no grid text"):
        grid_for_verify(store.dir)
