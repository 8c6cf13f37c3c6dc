"""Verify: re-run a stored run's experiments and check that every recorded result comes back.

`check_run(stored_run_dir, new_records)` (what `pytest bench --lb-verify RUN` calls at the end of
the re-run) and `verify_records(stored, new)` pair records by test id and compare, per experiment:

- results: every number under `train_info.metrics` (accuracy, F1s, loss, entropy, val_*), the
  test and validation predictions example by example, the loss curve, and the counts that follow
  from the spec (optimizer steps, tokens, trainable and total parameters, adapter bytes);
- measurements: peak memory, training time and p95 latency at batch 1.

Tolerances come from one table, `TOLERANCES`: results are exact when both records ran on CPU
(CPU runs of one spec with the same torch build and thread count are bit-identical); on a GPU
each metric has its own tolerance. Measurements are never exact; they get loose relative
tolerances (use `lora_bench.compare` to judge regressions in them). Every difference in a result
is listed; a difference beyond its tolerance is a failure naming the experiment, the metric, both
values and the tolerance. The environments of the two runs are diffed and shown.

No torch import: this runs in the pytest parent process and on stored records alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budgets import value_at
from .storage import RunStore


@dataclass(frozen=True)
class Tolerance:
    """`kind`: abs (|new - old|), rel (|new - old| / |old|), frac (share of predictions that changed);
    `cpu` / `gpu`: the limit when both records ran on CPU / otherwise (0 means exact, inf not judged);
    `floor`: an absolute change (in the metric's unit) that never fails, for timing jitter."""

    kind: str
    cpu: float
    gpu: float
    floor: float = 0.0

    def limit(self, mode: str) -> float:
        return self.cpu if mode == "cpu" else self.gpu

    def describe(self, mode: str) -> str:
        limit = self.limit(mode)
        if limit == 0:
            return "exact"
        if math.isinf(limit):
            return f"not judged on {mode.upper()}"
        text = {"abs": f"±{limit:g}", "rel": f"±{limit:.0%}", "frac": f"≤{limit:.1%} changed"}[self.kind]
        return text + (f" (and ±{self.floor:g})" if self.floor else "")

    def fails(self, diff: float, absolute: float, mode: str) -> bool:
        return diff > self.limit(mode) and absolute > self.floor


# Results (must come back) and measurements (machine-dependent), with their tolerances.
# GPU tolerances are starting points for bf16 autocast and nondeterministic CUDA kernels on the same
# kind of GPU and the same software; the val split is small (tens of examples), so its tolerances
# are looser. Override any of them with --lb-verify-tolerance NAME=VALUE.
TOLERANCES: dict[str, Tolerance] = {
    "metrics.accuracy": Tolerance("abs", 0.0, 0.01),
    "metrics.macro_f1": Tolerance("abs", 0.0, 0.015),
    "metrics.weighted_f1": Tolerance("abs", 0.0, 0.015),
    "metrics.loss": Tolerance("rel", 0.0, 0.05),
    "metrics.prediction_entropy": Tolerance("rel", 0.0, 0.05),
    "metrics.val_accuracy": Tolerance("abs", 0.0, 0.03),
    "metrics.val_macro_f1": Tolerance("abs", 0.0, 0.04),
    "metrics.val_loss": Tolerance("rel", 0.0, 0.05),
    "metrics.*": Tolerance("rel", 0.0, 0.05),        # any other metric a task type records
    "predictions.test": Tolerance("frac", 0.0, 0.01),
    "predictions.val": Tolerance("frac", 0.0, 0.03),
    "training.loss_curve": Tolerance("abs", 0.0, 0.05),  # the largest |Δ| over the stored points
    "training.optimizer_steps": Tolerance("abs", 0.0, 0.0),
    "training.tokens": Tolerance("abs", 0.0, 0.0),
    "params.trainable": Tolerance("abs", 0.0, 0.0),
    "params.total": Tolerance("abs", 0.0, 0.0),
    "resources.adapter_bytes": Tolerance("abs", 0.0, 0.0),
    # measurements
    "resources.peak_memory_gib": Tolerance("rel", 0.10, 0.02),  # CPU: process peak RSS; GPU: allocated
    # CPU timings on a shared machine swing by an order of magnitude (p95 of a tiny model: 1 ms one
    # run, 15 ms the next): shown, not judged, on CPU; judge them with --lb-compare's thresholds
    "resources.train_seconds": Tolerance("rel", math.inf, 0.25, floor=2.0),
    "latency.p95_ms": Tolerance("rel", math.inf, 0.50, floor=2.0),
}
MEASUREMENTS = ("resources.peak_memory_gib", "resources.train_seconds", "latency.p95_ms")
RESULTS = ("predictions.test", "predictions.val", "training.loss_curve", "training.optimizer_steps",
           "training.tokens", "params.trainable", "params.total", "resources.adapter_bytes")


# ---------------------------------------------------------------------------------------------
# shared with compare: reading runs, looking values up, environments


def open_run(run: str | Path, root: str | Path = "reports") -> RunStore:
    """A run folder by path, or a run id (or `latest`) under `root`."""
    path = Path(run)
    if path.is_dir() and (path / "records").is_dir():
        return RunStore(path.resolve().parent, path.resolve().name)
    return RunStore.open(Path(root), str(run))


def by_test_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record per test id (a resumed run may hold a failed attempt and its rerun)."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: (r["run_info"].get("finished") or "", r["status"] == "ok")):
        out[r["test_id"]] = r
    return out


def device_mode(a: dict[str, Any], b: dict[str, Any]) -> str:
    """`cpu` when both records ran on CPU, else `gpu`."""
    types = {(r.get("meta_info") or {}).get("device", {}).get("type") for r in (a, b)}
    return "cpu" if types == {"cpu"} else "gpu"


def environment(records: list[dict[str, Any]], run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat `name -> value` of what a run ran on: package versions, device, git, Python, host."""
    meta: dict[str, Any] = {}
    for r in records:
        if (r.get("meta_info") or {}).get("versions"):
            meta = r["meta_info"]
            if r.get("status") == "ok":
                break
    run_info = run_info or {}
    env: dict[str, Any] = {}
    for name, version in sorted((meta.get("versions") or run_info.get("versions") or {}).items()):
        env[f"versions.{name}"] = version
    device = meta.get("device") or {}
    for key in ("type", "name", "cuda", "capability", "total_memory_gib", "threads"):
        if key in device:
            env[f"device.{key}"] = device[key]
    git = meta.get("git") or run_info.get("git") or {}
    env["git.commit"] = git.get("commit")
    env["git.dirty"] = git.get("dirty")
    host = meta.get("host") or run_info.get("host") or {}
    for key in ("python", "hostname", "platform", "cpu_count"):
        env[f"host.{key}"] = host.get(key)
    env["source_hash"] = meta.get("source_hash")
    modes = {value_at(r.get("train_info"), "determinism.deterministic") for r in records if r.get("train_info")}
    env["deterministic"] = ", ".join(sorted(str(m) for m in modes)) if modes else None
    return env


ALWAYS_SHOWN = ("git.commit", "device.type", "device.name")


def env_diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any, bool]]:
    """(name, old, new, changed) for every changed entry, plus commit and device always."""
    rows = []
    for key in sorted(set(old) | set(new), key=lambda k: (k not in ALWAYS_SHOWN, k)):
        changed = old.get(key) != new.get(key)
        if changed or key in ALWAYS_SHOWN:
            rows.append((key, old.get(key), new.get(key), changed))
    return rows


def env_lines(old: dict[str, Any], new: dict[str, Any], old_name: str, new_name: str) -> list[str]:
    rows = env_diff(old, new)
    changed = sum(1 for r in rows if r[3])
    out = [f"environment: {changed} difference{'s' if changed != 1 else ''}"
           f"{' (same versions, device and commit)' if not changed else ''}"]
    width = max([len(r[0]) for r in rows] + [12])
    out.append(f"  {'':<{width}}  {old_name:<28}  {new_name}")
    for key, a, b, diff in rows:
        out.append(f"  {key:<{width}}  {_short(a):<28}  {_short(b)}{'   CHANGED' if diff else ''}")
    return out


def _short(value: Any) -> str:
    text = "-" if value is None else str(value)
    if len(text) == 40 and all(c in "0123456789abcdef" for c in text):  # a git commit
        return text[:12]
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):  # a sha256
        return text[:12]
    return text if len(text) <= 28 else text[:25] + "..."


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# verify


@dataclass
class Difference:
    """One compared value of one experiment that differs (within its tolerance or not)."""

    experiment: str
    metric: str
    old: Any
    new: Any
    diff: float | None
    tolerance: str
    failed: bool
    measurement: bool = False

    def message(self) -> str:
        what = "measurement" if self.measurement else "result"
        return (f"{self.experiment}: {self.metric} drifted ({what}): stored {fmt(self.old)}, "
                f"re-run {fmt(self.new)} (diff {fmt(self.diff)}; tolerance {self.tolerance})")


@dataclass
class VerifyResult:
    stored_run: str
    new_run: str
    modes: dict[str, str] = field(default_factory=dict)           # test id -> cpu | gpu
    differences: list[Difference] = field(default_factory=list)   # every difference found
    problems: list[str] = field(default_factory=list)             # status changes, nothing to verify
    notes: list[str] = field(default_factory=list)                # spec changes, unmatched experiments
    compared: int = 0
    values_compared: int = 0
    env: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return self.problems + [d.message() for d in self.differences if d.failed]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def result_differences(self) -> list[Difference]:
        return [d for d in self.differences if not d.measurement]

    def table(self) -> str:
        return "\n".join(self.lines())

    def lines(self) -> list[str]:
        modes = sorted(set(self.modes.values()))
        mode_text = {"cpu": "results exact (both on CPU)", "gpu": "GPU tolerances"}
        head = (f"lora-bench verify: {self.compared} experiment{'s' if self.compared != 1 else ''} of stored run "
                f"{self.stored_run} re-run as {self.new_run}; {self.values_compared} values compared "
                f"({'; '.join(mode_text[m] for m in modes) or 'nothing compared'}): "
                f"{len(self.result_differences)} differences in results, "
                f"{len(self.failures)} failure{'s' if len(self.failures) != 1 else ''}")
        out = [head]
        shown = [d for d in self.differences if not d.measurement or d.failed]
        if shown:
            rows = [("experiment", "metric", "stored", "re-run", "diff", "tolerance", "")]
            rows += [(d.experiment, d.metric, fmt(d.old), fmt(d.new), fmt(d.diff), d.tolerance,
                      "DRIFT" if d.failed else "within tolerance") for d in shown]
            out += _columns(rows)
        measured = [d for d in self.differences if d.measurement and not d.failed]
        if measured:
            out.append(f"measurements (peak memory, train time, p95 latency): {len(measured)} differ within their "
                       f"tolerances (timing is not judged on CPU)")
        out += [f"note: {n}" for n in self.notes]
        out += [f"FAILED: {p}" for p in self.failures]
        out += self.env
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"stored_run": self.stored_run, "new_run": self.new_run, "ok": self.ok, "compared": self.compared,
                "values_compared": self.values_compared, "modes": self.modes, "failures": self.failures,
                "notes": self.notes, "differences": [d.__dict__ for d in self.differences]}


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def tolerance_for(metric: str, overrides: dict[str, float] | None = None) -> Tolerance:
    tol = TOLERANCES.get(metric) or (TOLERANCES["metrics.*"] if metric.startswith("metrics.") else None)
    if tol is None:
        raise KeyError(metric)
    if overrides:
        for key in (metric, metric.rsplit(".", 1)[-1]):
            if key in overrides:
                return Tolerance(tol.kind, overrides[key], overrides[key], tol.floor)
    return tol


def _number_diff(a: Any, b: Any, kind: str) -> float | None:
    """The difference of two numbers by the tolerance kind; None when they are equal."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        return math.inf
    a, b = float(a), float(b)
    if a == b or (math.isnan(a) and math.isnan(b)):
        return None
    if kind == "rel":
        return abs(b - a) / abs(a) if a else math.inf
    return abs(b - a)


def _compare_value(metric: str, a: Any, b: Any, tol: Tolerance) -> tuple[float | None, Any, Any]:
    """(diff, old shown, new shown); diff None when identical."""
    if metric.startswith("predictions."):
        if a is None and b is None:
            return None, a, b
        if a is None or b is None or len(a) != len(b):
            return math.inf, _len(a), _len(b)
        changed = sum(x != y for x, y in zip(a, b))
        if not changed:
            return None, f"{len(a)} predictions", f"{len(b)} predictions"
        return changed / len(a), f"{len(a)} predictions", f"{changed} changed"
    if metric == "training.loss_curve":
        if a == b:
            return None, a, b
        if a is None or b is None or len(a) != len(b):
            return math.inf, _len(a), _len(b)
        worst = max(abs(float(x[1]) - float(y[1])) for x, y in zip(a, b))
        steps_differ = any(x[0] != y[0] for x, y in zip(a, b))
        return (math.inf if steps_differ else worst), f"{len(a)} points", f"max |Δ| {worst:.3g}"
    return _number_diff(a, b, tol.kind), a, b


def _len(x: Any) -> str:
    return "-" if x is None else f"{len(x)} values"


def verify_records(stored: list[dict[str, Any]], new: list[dict[str, Any]], stored_name: str = "stored",
                   new_name: str = "new", overrides: dict[str, float] | None = None,
                   stored_run_info: dict[str, Any] | None = None,
                   new_run_info: dict[str, Any] | None = None) -> VerifyResult:
    """Pair records by test id and compare every result and measurement (see the module doc)."""
    result = VerifyResult(stored_name, new_name)
    old_by, new_by = by_test_id(stored), by_test_id(new)
    matched = [t for t in new_by if t in old_by]
    not_rerun = sorted(set(old_by) - set(new_by))
    extra = sorted(set(new_by) - set(old_by))
    if not_rerun:
        result.notes.append(f"{len(not_rerun)} stored experiment(s) not re-run (deselected?): "
                            + ", ".join(not_rerun[:5]) + (" ..." if len(not_rerun) > 5 else ""))
    if extra:
        result.notes.append(f"{len(extra)} experiment(s) not in the stored run: "
                            + ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    if not matched:
        result.problems.append(f"nothing to verify: no experiment of {new_name} is in stored run {stored_name}")
    for test_id in matched:
        a, b = old_by[test_id], new_by[test_id]
        mode = device_mode(a, b)
        result.modes[test_id] = mode
        result.compared += 1
        spec_a, spec_b = a["run_info"]["spec"], b["run_info"]["spec"]
        changed = [k for k in sorted(set(spec_a) | set(spec_b)) if k != "budgets" and spec_a.get(k) != spec_b.get(k)]
        if changed:
            result.notes.append(f"{test_id}: spec differs from the stored one: "
                                + ", ".join(f"{k} {fmt(spec_a.get(k))} -> {fmt(spec_b.get(k))}" for k in changed))
        if a["status"] != b["status"]:
            why = f" ({b['reason']})" if b.get("reason") else ""
            result.problems.append(f"{test_id}: status {a['status']} in the stored run, {b['status']} re-run{why}")
            continue
        if a["status"] != "ok":
            result.notes.append(f"{test_id}: {a['status']} in both runs")
            continue
        ti_a, ti_b = a["train_info"], b["train_info"]
        metrics = sorted(set(ti_a.get("metrics", {})) | set(ti_b.get("metrics", {})))
        for metric in [f"metrics.{m}" for m in metrics] + list(RESULTS) + list(MEASUREMENTS):
            old, new_value = value_at(ti_a, metric), value_at(ti_b, metric)
            if metric in RESULTS and old is None and new_value is None:
                continue  # not recorded by this version or this method
            tol = tolerance_for(metric, overrides)
            diff, shown_old, shown_new = _compare_value(metric, old, new_value, tol)
            result.values_compared += 1
            if diff is None:
                continue
            absolute = _number_diff(old, new_value, "abs") if isinstance(old, (int, float)) else math.inf
            result.differences.append(Difference(test_id, metric, shown_old, shown_new, diff, tol.describe(mode),
                                                 failed=tol.fails(diff, absolute or 0.0, mode),
                                                 measurement=metric in MEASUREMENTS))
    result.env = env_lines(environment(stored, stored_run_info), environment(new, new_run_info),
                           f"stored {stored_name}", f"re-run {new_name}")
    return result


def check_run(stored_run_dir: str | Path, new_records: list[dict[str, Any]], new_name: str = "this run",
              overrides: dict[str, float] | None = None, new_run_info: dict[str, Any] | None = None) -> VerifyResult:
    """Verify a re-run (`new_records`, e.g. the bench session's results) against a stored run folder."""
    store = open_run(stored_run_dir)
    return verify_records(store.records(), new_records, store.run_id, new_name, overrides,
                          store.read_run_info(), new_run_info)


def grid_for_verify(run_dir: str | Path) -> Path:
    """The stored run's grid, written from its `run.json` (`grid.text`) to a temporary YAML file
    named like the original (so a grid without a `name:` keeps its name)."""
    store = open_run(run_dir)
    info = store.read_run_info()
    grid = info.get("grid") or {}
    if not grid.get("text"):
        raise FileNotFoundError(f"--lb-verify: {store.dir / 'run.json'} holds no grid text")
    stem = Path(grid.get("path") or "grid.yaml").stem
    folder = Path(tempfile.mkdtemp(prefix=f"lb-verify-{store.run_id}-"))
    path = folder / f"{stem}.yaml"
    path.write_text(grid["text"])
    return path


def stored_deterministic(run_dir: str | Path) -> bool:
    """Whether the stored run's experiments ran in deterministic mode (recorded per experiment)."""
    store = open_run(run_dir)
    return any(value_at(r.get("train_info"), "determinism.deterministic") for r in store.records())


def parse_overrides(values: list[str], option: str) -> dict[str, float]:
    """NAME=VALUE or NAME:VALUE, VALUE a number or a percentage (5% = 0.05)."""
    out: dict[str, float] = {}
    for item in values:
        sep = "=" if "=" in item else ":"
        name, found, value = item.partition(sep)
        if not found or not name.strip():
            raise ValueError(f"{option}: {item!r} is not NAME=VALUE")
        value = value.strip()
        try:
            number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
        except ValueError:
            raise ValueError(f"{option} {name}: {value!r} is not a number or a percentage") from None
        if number < 0:
            raise ValueError(f"{option} {name}: {value!r} must not be negative")
        out[name.strip()] = number
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m lora_bench.verify STORED NEW`: compare two stored runs without re-running."""
    parser = argparse.ArgumentParser(prog="python -m lora_bench.verify", description=main.__doc__)
    parser.add_argument("stored")
    parser.add_argument("new")
    parser.add_argument("--tolerance", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    new = open_run(args.new)
    result = check_run(args.stored, new.records(), new.run_id, parse_overrides(args.tolerance, "--tolerance"),
                       new.read_run_info())
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

