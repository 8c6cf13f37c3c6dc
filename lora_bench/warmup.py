"""Untimed warm-up runs before experiments whose whole-run time a target compares.

Each experiment runs in a fresh process, yet the first run of a configuration on a machine can be
seconds slower: kernels and library pages load from disk on first use and stay cached machine-wide. On
2 x H200 (perf run of 2026-11-28) the first CUDA-graphs run of a configuration spent 3.6 s in its
first steps and 1.9 s in evaluation, against 1.3 s and 0.3 s for the same configuration later: the
Qwen2.5-1.5B end-to-end ratio read 0.132 instead of 0.038, depending only on queue order. Like
pytest-benchmark's warm-up rounds, a short copy of the experiment (`WARMUP_STEPS` optimizer steps,
full evaluation) runs first, once per configuration and worker, on both sides of the comparison; its
time is kept in the record (`run_info.warmup`), so the first-use cost stays visible."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from . import record as rec
from .isolate import run_isolated
from .perf_targets import WHOLE_RUN_TIMES
from .schema import ExperimentSpec

WARMUP_STEPS = 3   # cuda_graphs.WARMUP eager steps, then one captured: the graphed path runs too


def warmed_ids(targets: list[Any], specs: dict[str, dict[str, Any]]) -> set[str]:
    """The test ids that a target compares by whole-run time (steady-state step times and latency
    leave their own warm-up steps and rounds out already)."""
    timed = [target for target in targets if target.metric in WHOLE_RUN_TIMES]
    return {test_id for test_id, spec in specs.items() if any(target.compares(spec) for target in timed)}


def warmup_spec(spec: ExperimentSpec) -> ExperimentSpec:
    """The short copy: same model, recipe, data and shapes; seed 0, so seeds of one configuration
    share it; `WARMUP_STEPS` optimizer steps (head-only fitting runs whole); one latency round."""
    short = {"seed": 0, "latency_rounds": 1}
    if spec.method != "head":  # head-only fitting has no steps to cut (schema.HEAD_DROPPED_AXES)
        short["max_steps"] = min(spec.max_steps or WARMUP_STEPS, WARMUP_STEPS)
    return ExperimentSpec.from_dict({**spec.to_dict(), **short})


class Warmups:
    """One warm-up per configuration in this process (a worker keeps its own: each pins one GPU)."""

    def __init__(self, run_id: str, say: Callable[[str], None]):
        self.run_id, self.say = run_id, say
        self.done: dict[str, dict[str, Any]] = {}

    def before(self, spec: ExperimentSpec, label: str) -> dict[str, Any]:
        """Runs the warm-up of `spec`'s configuration unless this process ran it (then `shared`);
        returns what the experiment's record keeps of it."""
        warm = warmup_spec(spec)
        if warm.spec_hash in self.done:
            return {**self.done[warm.spec_hash], "shared": True}
        data = rec.data_info(warm)
        record = rec.new_record(warm, f"warmup-{warm.spec_hash[:8]}", self.run_id, "warmup", data)
        self.say(f"{label}: warm-up, untimed")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="lora-bench-warmup-") as tmp:
            result = run_isolated(record, Path(tmp) / "warmup.json", Path(tmp) / "adapter", spec.timeout_s,
                                  lambda message: None)
        info = {"spec_hash": warm.spec_hash, "steps": warm.max_steps, "status": result["status"],
                "reason": result["reason"], "seconds": time.perf_counter() - start}
        if result["status"] != "ok":
            self.say(f"{label}: warm-up {result['status']}: {result['reason']}")
        self.done[warm.spec_hash] = info
        return {**info, "shared": False}
