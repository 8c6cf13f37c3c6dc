"""Experiments into one flat table: stored run folders (records plus run provenance) or someone
else's results table (`import_csv`), so every later step reads the same columns either way."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .. import perf_targets
from ..budgets import lookup
from ..schema import ADAPTER_METHODS, BUDGETS, METHODS, SpecError

# The factors that make one configuration; two experiments that agree on all of them differ only by seed.
CONFIG_FACTORS = ("model", "task", "method", "bits", "rank", "alpha_ratio", "targets", "n_train", "dropout", "lr",
                  "epochs", "batch_size", "grad_accum", "max_length", "weight_decay", "warmup_ratio",
                  "loraplus_ratio")
QUALITY_METRICS = ("accuracy", "macro_f1", "weighted_f1", "loss", "val_accuracy", "val_macro_f1", "val_loss")
RESOURCE_COLUMNS = ("peak_memory_gib", "train_seconds", "examples_per_second", "tokens_per_second", "adapter_mb",
                    "wall_seconds", "latency_p95_ms", "latency_median_ms", "trainable_params", "total_params")
SPEC_COLUMNS = ("model", "task", "method", "bits", "rank", "alpha", "dropout", "targets", "n", "seed", "lr", "epochs",
                "batch_size", "grad_accum", "max_length", "weight_decay", "warmup_ratio", "loraplus_ratio")

# The origin study's table: column -> field. Fields ending in a unit are converted (see UNIT_FIELDS).
ORIGIN_MAPPING = {"dataset": "task", "model": "model", "method": "method", "modules": "targets", "rank": "rank",
                  "time": "train_minutes", "gpu": "peak_memory_gb", "loss": "loss", "f1": "macro_f1",
                  "accuracy": "accuracy", "pst_dataset": "n_train"}
# field with a unit -> (column it fills, factor to that column's unit)
UNIT_FIELDS = {"train_minutes": ("train_seconds", 60.0), "train_hours": ("train_seconds", 3600.0),
               "peak_memory_gb": ("peak_memory_gib", 1e9 / 2**30), "peak_memory_mb": ("peak_memory_gib", 1e6 / 2**30)}
IMPORT_FIELDS = (set(SPEC_COLUMNS) | set(QUALITY_METRICS) | set(RESOURCE_COLUMNS) | set(UNIT_FIELDS)
                 | {"n_train", "status", "reason", "device", "run"})


@dataclass
class Experiments:
    """All experiments of a report: one flattened row each, the runs they came from, and the
    per-example test predictions (uid -> (predicted, true)) that paired statistics need."""

    frame: pd.DataFrame
    runs: list[dict[str, Any]]
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)   # lora_bench.perf_targets verdicts


def load_runs(run_dirs: list[Path]) -> Experiments:
    """Every record of the given run folders (a folder holding `records/`, or a root holding run
    folders, such as `reports/tune`), merged, with each run's provenance."""
    rows, runs, predictions, every, declared = [], [], {}, [], {}
    for run_dir in expand_run_dirs(run_dirs):
        info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
        run_name = info.get("run_id") or run_dir.name
        records = [json.loads(p.read_text()) for p in sorted((run_dir / "records").glob("*.json"))]
        every += records
        declared.update({t.name: t for t in grid_targets(info)})
        for record in records:
            row = record_row(record, run_name)
            row["shard"] = info.get("shard")
            row["ran_on"] = ran_on(row["host"], row["shard"], row["worker"], row["cuda_devices"])
            rows.append(row)
            preds = (record.get("train_info") or {}).get("predictions") or {}
            if preds.get("test") is not None and preds.get("test_labels") is not None:
                predictions[row["uid"]] = (np.asarray(preds["test"]), np.asarray(preds["test_labels"]))
        runs.append(_run_provenance(run_name, run_dir, info, records))
    verdicts = [perf_targets.evaluate(t, every) for t in declared.values()]
    return Experiments(finish_frame(pd.DataFrame(rows)), runs, predictions, targets=verdicts)


def grid_targets(info: dict[str, Any]) -> list[perf_targets.Target]:
    """The ratio targets the run's grid declared (its text is kept in run.json)."""
    text = (info.get("grid") or {}).get("text")
    if not text:
        return []
    try:
        return perf_targets.parse_targets((yaml.safe_load(text) or {}).get("targets"), strict=False)
    except (yaml.YAMLError, SpecError, AttributeError):
        return []


def expand_run_dirs(run_dirs: list[Path]) -> list[Path]:
    """Run folders, and the run folders inside a folder of runs (`reports/shard-*` after sharding)."""
    out = []
    for d in map(Path, run_dirs):
        if (d / "records").is_dir():
            out.append(d)
        elif d.is_dir() and any((c / "records").is_dir() for c in d.iterdir()):
            out.extend(sorted(c for c in d.iterdir() if (c / "records").is_dir()))
        else:
            raise FileNotFoundError(f"{d}: not a run folder (no records/ inside it or in its subfolders)")
    return out


def record_row(record: dict[str, Any], run_name: str) -> dict[str, Any]:
    """One record as one flat row; metrics and resources stay missing where not measured."""
    spec = record["run_info"]["spec"]
    info = record.get("train_info") or {}
    meta = record.get("meta_info") or {}
    data = meta.get("data") or {}
    spec_hash = record["run_info"].get("spec_hash", "")
    row: dict[str, Any] = {"uid": f"{run_name}/{record['test_id']}-{spec_hash[:8]}", "run": run_name,
                           "test_id": record["test_id"], "status": record["status"], "reason": record.get("reason")}
    for key in SPEC_COLUMNS:
        row[key] = spec.get(key)
    row["targets"] = targets_label(spec.get("targets"))
    row["n_train"] = data.get("n_train")
    row["n_test"] = data.get("n_test")
    row["test_hash"] = data.get("test_hash")
    metrics = info.get("metrics") or {}
    for key in QUALITY_METRICS:
        row[key] = metrics.get(key)
    resources = info.get("resources") or {}
    for key in ("peak_memory_gib", "peak_memory_kind", "train_seconds", "examples_per_second", "tokens_per_second",
                "adapter_mb", "wall_seconds", "pipeline_seconds"):
        row[key] = resources.get(key)
    row["recipe"], row["compile"] = spec.get("recipe", "lora-bench"), spec.get("compile", "off")
    training = info.get("training") or {}
    row["step_ms"] = training.get("step_ms_median")
    row["mfu"] = (training.get("utilisation") or {}).get("mfu")
    estimate = info.get("memory_estimate") or {}
    row["predicted_peak_gib"] = (estimate.get("prediction") or {}).get("peak_gib")
    row["estimate_error"] = estimate.get("relative_error")
    latency = info.get("latency") or {}
    row["latency_p95_ms"], row["latency_median_ms"] = latency.get("p95_ms"), latency.get("median_ms")
    inference = info.get("inference") or {}
    row["base_latency_ms"] = (inference.get("base_latency") or {}).get("median_ms")
    row["merged_latency_ms"] = (((inference.get("merged") or {}).get("latency")) or {}).get("median_ms")
    row["merged_base_ratio"] = (inference.get("merged") or {}).get("latency_ratio")   # timed in alternation
    params = info.get("params") or {}
    row["trainable_params"], row["total_params"] = params.get("trainable"), params.get("total")
    row.update(_provenance_columns(meta))
    row["started"], row["finished"] = record["run_info"].get("started"), record["run_info"].get("finished")
    budgets = record.get("budgets") or {}
    failed = {v["budget"]: v.get("message", v["budget"]) for v in budgets.get("violations") or []}
    row["over_budget"] = bool(budgets.get("over_budget")) if record["status"] == "ok" else None
    row["violations"] = "; ".join(failed.values()) or None
    for name, limit in (budgets.get("limits") or {}).items():
        if record["status"] != "ok" or name not in BUDGETS:
            continue
        measured = lookup(info, BUDGETS[name][1])
        row[f"budget_{name}"] = "fail" if name in failed else ("pass" if measured is not None else "unmeasured")
        row[f"limit_{name}"] = limit
    return row


def _provenance_columns(meta: dict[str, Any]) -> dict[str, Any]:
    device = meta.get("device") or {}
    versions = meta.get("versions") or {}
    git = meta.get("git") or {}
    host = meta.get("host") or {}
    return {"device": device_label(device), "host": host.get("hostname"), "worker": host.get("worker"),
            "cuda_devices": host.get("cuda_visible_devices"), "git_commit": (git.get("commit") or "")[:10] or None, "git_dirty": git.get("dirty"),
            **{f"v_{k}": versions.get(k) for k in ("torch", "transformers", "peft", "bitsandbytes")}}


def ran_on(host: str | None, shard: str | None, worker: str | None, cuda_devices: str | None) -> str | None:
    """`node17 · shard 2/4 · gw1 · GPU 1`: where an experiment ran, for merged shards and xdist workers."""
    parts = [host, f"shard {shard}" if shard else None, worker, f"GPU {cuda_devices}" if cuda_devices else None]
    return " · ".join(p for p in parts if p) or None


def device_label(device: dict[str, Any]) -> str | None:
    """`cuda: NVIDIA H100 80GB HBM3` or `cpu: x86_64 (2 threads)`: what a resource figure was measured on."""
    if not device:
        return None
    if "type" not in device:
        return str(device.get("class") or device.get("name") or "unknown device")
    label = f"{device['type']}: {device.get('name', '?')}"
    return label + (f" ({device['threads']} threads)" if device.get("type") == "cpu" and device.get("threads") else "")


def _run_provenance(run_name: str, run_dir: Path, info: dict[str, Any],
                    records: list[dict[str, Any]]) -> dict[str, Any]:
    devices = sorted({d for r in records if (d := device_label((r.get("meta_info") or {}).get("device") or {}))})
    commits = sorted({f"{(g.get('commit') or 'no commit')[:10]}{' (dirty)' if g.get('dirty') else ''}"
                      for r in records if (g := (r.get("meta_info") or {}).get("git"))})
    return {"run": run_name, "source": str(run_dir), "grid": (info.get("grid") or {}).get("name"),
            "started": info.get("started"), "finished": info.get("finished"),
            "host": (info.get("host") or {}).get("hostname"), "python": (info.get("host") or {}).get("python"),
            "platform": (info.get("host") or {}).get("platform"), "shard": info.get("shard"),
            "workers": info.get("workers"), "devices": ", ".join(devices) or None,
            "commits": ", ".join(commits) or None, "records": len(records),
            "failed": sum(r["status"] != "ok" for r in records),
            **{f"versions.{k}": v for k, v in (info.get("versions") or {}).items()}}


def targets_label(targets: Any) -> str | None:
    """One label per target-module set: `["qv"]` -> `qv`, `q+v` -> `qv`, `["query", "value"]` -> `query+value`."""
    if targets is None or (isinstance(targets, float) and math.isnan(targets)) or targets == "":
        return None
    parts = list(targets) if isinstance(targets, (list, tuple)) else re.split(r"\s*[+,;/ ]\s*", str(targets).strip())
    parts = [p.strip().lower() for p in parts if p.strip()]
    if parts and all(len(p) == 1 and p in "qkvo" for p in parts):
        return "".join(sorted(parts, key="qkvo".index))
    if parts in (["all"], ["all-linear"], ["all_linear"]):
        return "all-linear"
    return "+".join(parts)


def finish_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Derived columns every analysis uses: method label (`qlora-nf4`), alpha/rank, config key, order."""
    if df.empty:
        df = pd.DataFrame(columns=["uid", "run", "test_id", "status", "reason", *SPEC_COLUMNS])
    for col in (*SPEC_COLUMNS, *QUALITY_METRICS, *RESOURCE_COLUMNS, "n_train", "over_budget", "device", "finished",
                "reason", "violations", "peak_memory_kind"):
        if col not in df.columns:
            df[col] = None
    for col in ("rank", "alpha", "dropout", "n", "seed", "lr", "epochs", "batch_size", "grad_accum", "max_length",
                "weight_decay", "warmup_ratio", "loraplus_ratio", "n_train", *QUALITY_METRICS, *RESOURCE_COLUMNS):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["bits"] = df["bits"].fillna("16").astype(str)
    df["method_label"] = [method_label(m, b) for m, b in zip(df["method"], df["bits"])]
    df["alpha_ratio"] = (df["alpha"] / df["rank"]).round(6)
    df["config"] = [config_key(row) for row in df[list(CONFIG_FACTORS)].itertuples(index=False)]
    return df.reset_index(drop=True)


def config_key(values: tuple) -> str:
    return "|".join("-" if _missing(v) else f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def method_label(method: Any, bits: str) -> str:
    """`lora` at 16 bits, `qlora-nf4` over a 4-bit base, `lora-8bit` over an 8-bit one."""
    method = str(method)
    if method in ADAPTER_METHODS and bits.startswith("4-"):
        return f"q{method}-{bits[2:]}"
    if bits == "8":
        return f"{method}-8bit"
    return method


def parse_mapping(items: list[str]) -> dict[str, str]:
    """`--map column=field` pairs; an empty field ignores the column."""
    out = {}
    for item in items:
        column, sep, target = item.partition("=")
        if not sep or not column.strip():
            raise ValueError(f"--map {item!r}: expected column=field")
        target = target.strip()
        if target and target not in IMPORT_FIELDS:
            raise ValueError(f"--map {item!r}: unknown field {target!r}; fields: {', '.join(sorted(IMPORT_FIELDS))}")
        out[column.strip()] = target
    return out


_METHOD_RE = re.compile(r"^(q)?(lora\+|lora-plus|loraplus|rslora|rs-lora|dora|pissa|olora|oglora|orthogeolora|lora)"
                        r"(?:[\s_-]*(nf4|fp4|int8|8bit|8-bit|8))?(?:[\s_-]*(dq|double))?$")


def parse_method(text: Any) -> tuple[str, str | None]:
    """The origin study's method names to (method, bits): `QLoRA nf4` -> (lora, 4-nf4), `baseline` -> head;
    bits is None where the name says nothing about them."""
    raw = str(text).strip()
    name = raw.lower()
    if name in ("baseline", "head", "head-only", "linear probe", "frozen"):
        return "head", "16"
    if name in ("full", "fft", "full fine-tuning", "full-ft", "full ft", "finetune", "fine-tuning"):
        return "full", "16"
    match = _METHOD_RE.match(name)
    if not match:
        return raw, None
    q, base, fmt, dq = match.groups()
    aliases = {"lora+": "loraplus", "lora-plus": "loraplus", "rs-lora": "rslora", "orthogeolora": "oglora"}
    method = aliases.get(base, base)
    if fmt in ("int8", "8bit", "8-bit", "8"):
        return method, "8"
    if q or fmt:
        return method, f"4-{fmt or 'nf4'}" + ("-dq" if dq else "")
    return method, None


def import_csv(path: Path, mapping: dict[str, str] | None = None) -> Experiments:
    """Someone else's results table as experiments. The origin study's columns map by default
    (`ORIGIN_MAPPING`); `mapping` overrides column -> field. Rows of one configuration without a
    seed column count as its seeds 0, 1, ... in table order, and the notes say so."""
    path = Path(path)
    table = pd.read_csv(path)
    mapping = {**{k: v for k, v in ORIGIN_MAPPING.items() if k in table.columns}, **(mapping or {})}
    missing = [c for c, field in mapping.items() if field and c not in table.columns]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(map(repr, missing))}; columns: {', '.join(table.columns)}")
    notes = [f"Imported from {path.name}: {len(table)} rows; columns mapped "
             + ", ".join(f"{c}→{f}" for c, f in mapping.items() if f) + "."]
    df = pd.DataFrame(index=table.index)
    for column, target in mapping.items():
        if not target:
            continue
        values = table[column]
        if target in UNIT_FIELDS:
            target, factor = UNIT_FIELDS[target]
            values = pd.to_numeric(values, errors="coerce") * factor
        df[target] = values
    for metric in ("accuracy", "macro_f1", "weighted_f1", "val_accuracy", "val_macro_f1"):
        if metric in df and pd.to_numeric(df[metric], errors="coerce").max() > 1.0:
            df[metric] = pd.to_numeric(df[metric], errors="coerce") / 100.0
            notes.append(f"{metric} was given in percent: divided by 100.")
    parsed = [parse_method(m) for m in df.get("method", pd.Series(["?"] * len(df), index=df.index))]
    df["method"] = [m for m, _ in parsed]
    given = df["bits"] if "bits" in df else pd.Series([None] * len(df), index=df.index)
    df["bits"] = [b if b else ("16" if pd.isna(g) else str(g)) for (_, b), g in zip(parsed, given)]
    unknown = sorted({m for m in df["method"] if m not in METHODS})
    if unknown:
        notes.append(f"Methods outside lora-bench's schema kept as written: {', '.join(unknown)}.")
    if "targets" in df:
        df["targets"] = [targets_label(t) for t in df["targets"]]
    for col in ("rank", "targets"):
        if col in df:
            df.loc[df["method"].isin(["head", "full"]), col] = None
    for col, default in (("status", "ok"), ("run", path.stem), ("device", None)):
        df[col] = df[col] if col in df else default
    df["peak_memory_kind"] = "imported"
    df = finish_frame(df)
    if df["seed"].isna().all():
        df["seed"] = df.groupby("config").cumcount().astype(float)
        if (df["seed"] > 0).any():
            notes.append("No seed column: repeated rows of one configuration are taken as its seeds, in table order.")
    df["test_id"] = [f"{path.stem}-row{i + 1}" for i in range(len(df))]
    df["uid"] = df["test_id"]
    df["finished"] = [f"{i:08d}" for i in range(len(df))]
    runs = [{"run": path.stem, "source": str(path), "records": len(df), "failed": int((df["status"] != "ok").sum())}]
    return Experiments(df, runs, {}, notes)
