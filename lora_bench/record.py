"""The result record: run info (the resolved spec and its hash), train info (metrics, curves,
predictions, resources, status) and meta info (versions, git, host, device, data).

`record.schema.json` documents the layout; later features add fields and never rename them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from typing import Any

from . import data, provenance
from .schema import SCHEMA_VERSION, ExperimentSpec

STATUSES = ("ok", "failed", "skipped")  # skipped: cannot run here (e.g. no bitsandbytes), with the reason


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def data_info(spec: ExperimentSpec) -> dict[str, Any]:
    """Exactly which examples an experiment trains and is tested on, with their hashes."""
    if data.find_task(spec.task).type == "generation":
        from .generation import generation_data_info

        return generation_data_info(spec)
    if data.find_task(spec.task).type == "causal-lm":
        from .causal_lm import random_tokens_info

        return random_tokens_info(spec)
    task = data.load_task(spec.task)
    train = task.sample(spec.n, spec.seed)
    return {
        "task": task.task.name,
        "task_file": str(task.task.path),
        "labels": task.labels,
        "n_per_class": spec.n,
        "n_train": len(train),
        "n_val": len(task.val),
        "n_test": len(task.test),
        "train_hash": data.examples_hash(train),
        "val_hash": data.examples_hash(task.val),
        "test_hash": data.examples_hash(task.test),
        "split": task.task.split,
        "dedup": task.stats,
    }


def record_key(spec: ExperimentSpec, data: dict[str, Any], device_class: str) -> str:
    """What makes a stored result reusable: same spec, data, library source, key versions, device class."""
    versions = provenance.versions()
    parts = {"spec": spec.spec_hash, "data": [data["train_hash"], data["test_hash"], data["val_hash"]],
             "source": provenance.source_hash(), "versions": {k: versions[k] for k in provenance.KEY_PACKAGES},
             "device": device_class}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def new_record(spec: ExperimentSpec, test_id: str, run_id: str, key: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "test_id": test_id,
        "key": key,
        "status": None,
        "reason": None,
        "run_info": {"run_id": run_id, "spec": spec.to_dict(), "spec_hash": spec.spec_hash, "started": now(),
                     "finished": None, "attempt": secrets.token_hex(8)},
        "train_info": None,
        "meta_info": {"data": data},
        "budgets": {"limits": dict(spec.budgets), "violations": [], "over_budget": False},
    }


def finish(record: dict[str, Any], status: str, reason: str | None, train_info: dict[str, Any] | None,
           meta: dict[str, Any]) -> dict[str, Any]:
    assert status in STATUSES
    record["status"], record["reason"], record["train_info"] = status, reason, train_info
    record["run_info"]["finished"] = now()
    record["meta_info"].update(meta)
    return record
