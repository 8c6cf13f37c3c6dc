"""Determinism on a GPU: two runs of one spec in deterministic mode agree exactly; a run without it
stays within the GPU column of `verify.TOLERANCES`. Runs only where CUDA is available (CI has none).

On the GPU machine, without the embedded-model packages, point it at a local MiniLM folder:
    LORA_BENCH_GPU_MODEL=.device/models/minilm pytest tests/test_repro_gpu.py -s
"""

from __future__ import annotations

import os

import pytest
import torch

from lora_bench import determinism
from lora_bench.grid import resolve
from lora_bench.provenance import meta_info
from lora_bench.runner import run
from lora_bench.verify import verify_records

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def record(spec, info: dict) -> dict:
    return {"test_id": "gpu-lora", "status": "ok", "reason": None,
            "run_info": {"run_id": "r", "spec": spec.to_dict(), "spec_hash": spec.spec_hash, "finished": "t"},
            "train_info": info, "meta_info": meta_info(torch.device("cuda"))}


def one_run(spec, tmp_path, name: str, deterministic: bool, monkeypatch) -> dict:
    monkeypatch.setenv(determinism.ENV_FLAG, "1" if deterministic else "0")  # read inside the runner
    det = determinism.configure(spec.seed, deterministic)
    info = run(spec, tmp_path / name, lambda m: None)
    info.setdefault("determinism", det)
    return info


def test_deterministic_gpu_runs_agree_and_others_stay_within_tolerance(tmp_path, monkeypatch):
    model = os.environ.get("LORA_BENCH_GPU_MODEL", "minilm-l6")
    spec = resolve({"model": model, "task": "bbc-topic", "method": "lora", "rank": 8, "targets": "qv", "n": 250,
                    "seed": 0, "latency_rounds": 10})
    try:
        first = one_run(spec, tmp_path, "a", True, monkeypatch)
        second = one_run(spec, tmp_path, "b", True, monkeypatch)
        free = one_run(spec, tmp_path, "c", False, monkeypatch)
    finally:
        torch.use_deterministic_algorithms(False)
    assert first["determinism"]["cublas_workspace_config"] == determinism.CUBLAS_WORKSPACE
    exact = verify_records([record(spec, first)], [record(spec, second)], "deterministic-1", "deterministic-2")
    print("\n" + exact.table())
    assert exact.ok and exact.modes == {"gpu-lora": "gpu"}
    assert first["metrics"] == second["metrics"] and first["predictions"] == second["predictions"]
    loose = verify_records([record(spec, first)], [record(spec, free)], "deterministic", "nondeterministic")
    print("\n" + loose.table())
    assert loose.ok, loose.table()
