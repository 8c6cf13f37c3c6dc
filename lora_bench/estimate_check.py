"""`lora-bench estimate-check RUN...`: the current memory estimator against the GPU peaks that stored
records measured. Each record keeps the prediction made at run time beside
`torch.cuda.max_memory_allocated`; this predicts again from the record's spec (and the padded batch
shape the run priced) with the estimator as it is now, so a change to lora_bench.estimate can be
checked against every GPU run kept, without a GPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .data import find_task
from .estimate import MemoryEstimate, estimate_classification
from .schema import AXES, ExperimentSpec, SpecError, check_value

TOLERANCE = 0.10


def repredict(record: dict[str, Any]) -> MemoryEstimate:
    """The current estimator's prediction for a stored record's experiment."""
    spec = ExperimentSpec.from_dict(record["run_info"]["spec"])
    if find_task(spec.task).type == "causal-lm":
        from .causal_lm import estimate

        return estimate(spec)
    priced = record["train_info"]["memory_estimate"]["prediction"]
    return estimate_classification(spec, len(record["meta_info"]["data"]["labels"]), priced["seq_len"],
                                   priced["batch_size"])


def check(paths: list[Path]) -> list[dict[str, Any]]:
    """One row per record with a measured GPU peak: measured, stored prediction, current prediction."""
    rows = []
    for path in paths:
        record = json.loads(path.read_text())
        estimate = (record.get("train_info") or {}).get("memory_estimate") or {}
        if record.get("status") != "ok" or not estimate.get("measured_gib") or not estimate.get("prediction"):
            continue
        try:  # an axis value since removed from the schema names a setup the estimator no longer knows
            for key, value in record["run_info"]["spec"].items():
                if AXES.get(key) == "choice" and value is not None:
                    check_value(key, value)
        except SpecError as exc:
            print(f"{record['test_id']}: not checked ({exc})")
            continue
        measured = estimate["measured_gib"]
        now = repredict(record).peak_gib
        rows.append({"test_id": record["test_id"], "measured_gib": measured,
                     "stored_gib": estimate["prediction"]["peak_gib"], "current_gib": now,
                     "stored_error": estimate["prediction"]["peak_gib"] / measured - 1,
                     "current_error": now / measured - 1})
    return rows


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("estimate-check", help="the current memory estimator against stored GPU peaks")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (their records/*.json)")


def run(args: argparse.Namespace) -> int:
    """Prints each record's errors; exits 1 when a current prediction is off by more than 10%."""
    paths = [p for run_dir in args.runs for p in sorted((run_dir / "records").glob("*.json"))]
    rows = check(paths)
    for row in rows:
        print(f"{row['test_id'][:96]:96s} measured {row['measured_gib']:7.2f} GiB  "
              f"at run time {row['stored_error']:+7.1%}  now {row['current_error']:+7.1%}")
    within = sum(abs(r["current_error"]) <= TOLERANCE for r in rows)
    stored = sum(abs(r["stored_error"]) <= TOLERANCE for r in rows)
    print(f"{len(rows)} records with a GPU peak: within {TOLERANCE:.0%} at run time {stored}, now {within}")
    return 0 if rows and within == len(rows) else 1
