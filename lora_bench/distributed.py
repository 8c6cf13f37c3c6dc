"""`devices: N` (N > 1): one experiment as one multi-process FSDP job.

Runs inside the experiment's own process (`child.py`), in place of `runner.run`: it starts
`python -m torch.distributed.run --standalone --nproc_per_node N -m lora_bench.fsdp_worker`,
echoes the job's output into the experiment's log, forwards rank 0's progress, and folds the
ranks' results into one `train_info`: peak memory per device (`resources.per_device`, the largest
as `resources.peak_memory_gib`) and throughput summed over the ranks. With CUDA the job needs N
visible GPUs, one process each (NCCL); without CUDA it runs N CPU processes over gloo, which is
how the CPU tests exercise the same code.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import torch

from .fsdp_worker import PROGRESS
from .schema import ExperimentSpec
from .train import NonFiniteLoss

Progress = Callable[[str], None]
OUTPUT_TAIL = 40   # lines of the job's output quoted when it fails without saying why
# A rank's error type -> the exception raised here, so the record's reason reads as on one device.
ERRORS: dict[str, type[Exception]] = {"OutOfMemoryError": torch.cuda.OutOfMemoryError, "MemoryError": MemoryError,
                                      "NonFiniteLoss": NonFiniteLoss}


def check_devices(devices: int) -> str:
    """The device type the job runs on; raises when CUDA is there but has fewer GPUs than asked for."""
    if not torch.cuda.is_available():
        return "cpu"
    have = torch.cuda.device_count()
    if have < devices:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RuntimeError(f"devices: {devices} needs {devices} GPUs, this machine has {have}" + (
            f" visible (CUDA_VISIBLE_DEVICES={visible}; a pytest-xdist worker sees one GPU: run experiments "
            "with devices > 1 without -n)" if visible is not None else ""))
    return "cuda"


def _die_with_parent() -> None:
    """torchrun gets SIGTERM when this experiment process dies (a timeout kills it), and stops its
    workers; otherwise they would hold the GPUs on."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def launch(spec: ExperimentSpec, work: Path, adapter_dir: Path, progress: Progress) -> list[dict[str, Any]]:
    """Run the job; returns each rank's result, rank 0 first."""
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec.to_dict()))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.devices}",
               "-m", "lora_bench.fsdp_worker", str(spec_path), str(work), str(adapter_dir)]
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=_die_with_parent)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line)
            if line.startswith(PROGRESS):
                progress(line[len(PROGRESS):].rstrip())
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    sys.stdout.flush()
    errors = sorted(work.glob("rank*.error.json"))
    if errors:
        error = json.loads(errors[0].read_text())
        rank = errors[0].name.removeprefix("rank").removesuffix(".error.json")
        raise ERRORS.get(error["type"], RuntimeError)(f"rank {rank} of {spec.devices}: {error['type']}: {error['message']}")
    if code != 0:
        raise RuntimeError(f"the FSDP job (torchrun, {spec.devices} processes) exited with code {code}: "
                           + "".join(tail)[-2000:])
    return [json.loads((work / f"rank{k}.json").read_text()) for k in range(spec.devices)]


def combine(ranks: list[dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
    """One `train_info` from the ranks': rank 0's evaluation, latency and loss curve; memory per
    device; examples and tokens summed over the ranks, over the slowest rank's training time."""
    lead = ranks[0]
    per_device = [r["resources"] for r in ranks]
    seconds = max(d["train_seconds"] for d in per_device)
    examples = sum(d["examples_seen"] for d in per_device)
    tokens = sum(d["tokens"] for d in per_device)
    training = {**lead["training"], "train_seconds": seconds, "examples_seen": examples, "tokens": tokens,
                "examples_per_second": examples / seconds, "tokens_per_second": tokens / seconds,
                "loss_curve_rank": 0}
    peak = max(per_device, key=lambda d: d["peak_memory_gib"])
    resources: dict[str, Any] = {"peak_memory_gib": peak["peak_memory_gib"], "peak_memory_kind": peak["peak_memory_kind"],
                                 "peak_memory_device": peak["device"]}
    if "peak_reserved_gib" in peak:
        resources["peak_reserved_gib"] = max(d["peak_reserved_gib"] for d in per_device)
    saved = lead["saved_bytes"]
    resources.update({
        "process_peak_rss_gib": max(d["process_peak_rss_gib"] for d in per_device),
        "total_peak_memory_gib": sum(d["peak_memory_gib"] for d in per_device),
        "per_device": per_device,
        "train_seconds": seconds,
        "examples_per_second": training["examples_per_second"],
        "tokens_per_second": training["tokens_per_second"],
        "adapter_bytes": saved,
        "adapter_mb": saved / 1e6 if saved is not None else None,
        "wall_seconds": wall_seconds,
    })
    shared = {k: v for k, v in lead.items() if k not in ("rank", "resources", "training", "saved_bytes")}
    return {**shared, "training": training, "resources": resources}


def run(spec: ExperimentSpec, adapter_dir: Path, progress: Progress) -> dict[str, Any]:
    start = time.perf_counter()
    kind = check_devices(spec.devices)
    progress(f"launching {spec.devices} processes on {kind} (torchrun, FSDP)")
    with tempfile.TemporaryDirectory(prefix="lb-fsdp-") as work:
        ranks = launch(spec, Path(work), adapter_dir, progress)
    return combine(ranks, time.perf_counter() - start)
