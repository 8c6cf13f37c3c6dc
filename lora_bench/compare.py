"""Compare a run with an earlier one, pytest-benchmark style: per experiment, the change in quality,
peak memory, training time and p95 latency, and a failure where a change passes its threshold.

`compare_runs(old_run_dir, new_records, thresholds)` is what `pytest bench --lb-compare RUN` calls
at the end of a run; `compare_records(old, new, thresholds)` works on record lists. Experiments are
paired by test id. A change fails when

- quality (accuracy or macro F1 on test) drops by more than its noise floor: `quality` times the
  seed-to-seed standard deviation of that configuration in the earlier run (the same spec but the
  seed), never less than `quality_floor`; where the earlier run has a single seed of it, the floor is
  `quality_margin`;
- peak memory grows by more than `memory` (5%) and by more than `memory_abs_gib`;
- training time or p95 latency grows by more than `time` / `latency` (50%: CPU timings on a shared
  machine are noisy; tighten them on a dedicated GPU runner) and by more than `time_abs_s` /
  `latency_abs_ms`;
- an experiment that was ok is now failed.

Every threshold is a field of `Thresholds` and can be set with `--lb-compare-fail NAME=VALUE`
(e.g. `memory=5%`, `time=20%`, `quality=2`). The environments of the two runs (package versions,
device, git commit, Python, host) are diffed and shown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budgets import value_at
from .verify import _columns, by_test_id, env_lines, environment, fmt, open_run, parse_overrides


@dataclass
class Thresholds:
    quality: float = 1.0          # a drop beyond this many seed-to-seed standard deviations fails
    quality_floor: float = 0.005  # the smallest noise floor, even where the seeds agree closely
    quality_margin: float = 0.02  # the noise floor of a configuration with a single seed
    memory: float = 0.05          # relative growth of peak memory that fails
    memory_abs_gib: float = 0.01  # ... and never for less than this (process RSS jitters on CPU)
    time: float = 0.50            # relative growth of training time that fails
    time_abs_s: float = 1.0
    latency: float = 0.50         # relative growth of p95 latency at batch 1 that fails
    latency_abs_ms: float = 1.0

    @classmethod
    def from_options(cls, values: list[str]) -> Thresholds:
        overrides = parse_overrides(values, "--lb-compare-fail")
        names = {f.name for f in dataclasses.fields(cls)}
        aliases = {"memory_abs": "memory_abs_gib", "time_abs": "time_abs_s", "latency_abs": "latency_abs_ms"}
        kwargs = {}
        for name, value in overrides.items():
            name = aliases.get(name, name)
            if name not in names:
                raise ValueError(f"--lb-compare-fail: unknown threshold {name!r}; known: {', '.join(sorted(names))}")
            kwargs[name] = value
        return cls(**kwargs)


QUALITY = (("metrics.accuracy", "accuracy"), ("metrics.macro_f1", "macro F1"))
COSTS = (("resources.peak_memory_gib", "peak GiB", "memory", "memory_abs_gib"),
         ("resources.train_seconds", "train s", "time", "time_abs_s"),
         ("latency.p95_ms", "p95 ms", "latency", "latency_abs_ms"))


@dataclass
class Change:
    experiment: str
    metric: str
    old: float | None
    new: float | None
    delta: float | None       # new - old
    relative: float | None    # (new - old) / old
    threshold: str
    failed: bool

    def message(self) -> str:
        if self.metric.startswith("metrics."):
            return (f"{self.experiment}: {self.metric} dropped {-(self.delta or 0):.4f} "
                    f"({fmt(self.old)} -> {fmt(self.new)}), beyond its noise floor {self.threshold}")
        return (f"{self.experiment}: {self.metric} grew {self.relative:+.1%} ({fmt(self.old)} -> {fmt(self.new)}), "
                f"beyond the threshold {self.threshold}")


@dataclass
class CompareResult:
    old_run: str
    new_run: str
    thresholds: Thresholds
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return self.problems + [c.message() for c in self.changes if c.failed]

    @property
    def ok(self) -> bool:
        return not self.failures

    def change(self, experiment: str, metric: str) -> Change | None:
        return next((c for c in self.changes if c.experiment == experiment and c.metric == metric), None)

    def lines(self) -> list[str]:
        n = len(self.experiments)
        regressions = [c for c in self.changes if c.failed]
        out = [f"lora-bench compare: {self.new_run} against {self.old_run}: {n} experiment{'s' if n != 1 else ''} "
               f"compared, {len(regressions)} regression{'s' if len(regressions) != 1 else ''}"
               + (f", {len(self.problems)} other failure{'s' if len(self.problems) != 1 else ''}"
                  if self.problems else "")]
        if self.experiments:
            header = ("experiment",) + tuple(label for _, label in QUALITY) + tuple(c[1] for c in COSTS)
            rows = [header]
            for test_id in self.experiments:
                cells = [test_id]
                for metric, _ in QUALITY:
                    c = self.change(test_id, metric)
                    cells.append(_quality_cell(c))
                for metric, *_ in COSTS:
                    c = self.change(test_id, metric)
                    cells.append(_cost_cell(c))
                rows.append(tuple(cells))
            out += _columns(rows)
            out.append("  (old -> new, change; ! marks a change past its threshold)")
        out += [f"note: {n}" for n in self.notes]
        out += [f"FAILED: {f}" for f in self.failures]
        out += self.env
        return out

    def table(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {"old_run": self.old_run, "new_run": self.new_run, "ok": self.ok,
                "thresholds": dataclasses.asdict(self.thresholds), "failures": self.failures, "notes": self.notes,
                "changes": [c.__dict__ for c in self.changes]}


def _quality_cell(c: Change | None) -> str:
    if c is None or c.old is None or c.new is None:
        return "-"
    return f"{c.old:.3f} -> {c.new:.3f} {c.delta:+.3f}{' !' if c.failed else ''}"


def _cost_cell(c: Change | None) -> str:
    if c is None or c.old is None or c.new is None:
        return "-"
    rel = f"{c.relative:+.1%}" if c.relative is not None else "new"
    return f"{c.old:.3g} -> {c.new:.3g} {rel}{' !' if c.failed else ''}"


def config_key(record: dict[str, Any]) -> str:
    """A configuration: the spec without its seed (and budgets)."""
    spec = {k: v for k, v in record["run_info"]["spec"].items() if k not in ("seed", "budgets")}
    return json.dumps(spec, sort_keys=True, default=str)


def noise_floors(records: list[dict[str, Any]], thresholds: Thresholds) -> dict[tuple[str, str], tuple[float, str]]:
    """(config key, metric) -> (floor, how it was found), from the seeds of each configuration."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r["status"] != "ok":
            continue
        for metric, _ in QUALITY:
            value = value_at(r["train_info"], metric)
            if value is not None:
                groups.setdefault((config_key(r), metric), []).append(float(value))
    floors = {}
    for key, values in groups.items():
        if len(values) >= 2:
            std = statistics.stdev(values)
            floor = max(thresholds.quality * std, thresholds.quality_floor)
            floors[key] = (floor, f"{floor:.4f} ({thresholds.quality:g} x seed std {std:.4f} over {len(values)} seeds"
                                  f"{', raised to the minimum' if floor > thresholds.quality * std else ''})")
        else:
            floors[key] = (thresholds.quality_margin, f"{thresholds.quality_margin:.4f} (one seed: fixed margin)")
    return floors


def compare_records(old: list[dict[str, Any]], new: list[dict[str, Any]], thresholds: Thresholds | None = None,
                    old_name: str = "old", new_name: str = "new", old_run_info: dict[str, Any] | None = None,
                    new_run_info: dict[str, Any] | None = None) -> CompareResult:
    thresholds = thresholds or Thresholds()
    result = CompareResult(old_name, new_name, thresholds)
    old_by, new_by = by_test_id(old), by_test_id(new)
    floors = noise_floors(list(old_by.values()), thresholds)
    result.experiments = [t for t in new_by if t in old_by]
    gone, added = sorted(set(old_by) - set(new_by)), sorted(set(new_by) - set(old_by))
    if gone:
        result.notes.append(f"{len(gone)} experiment(s) of {old_name} not in this run: " + ", ".join(gone[:5])
                            + (" ..." if len(gone) > 5 else ""))
    if added:
        result.notes.append(f"{len(added)} new experiment(s), nothing to compare with: " + ", ".join(added[:5])
                            + (" ..." if len(added) > 5 else ""))
    if not result.experiments:
        result.notes.append(f"no experiment in common with {old_name}")
    for test_id in result.experiments:
        a, b = old_by[test_id], new_by[test_id]
        if a["status"] == "ok" and b["status"] != "ok":
            result.problems.append(f"{test_id}: ok in {old_name}, {b['status']} now ({b.get('reason')})")
            continue
        if a["status"] != "ok" or b["status"] != "ok":
            result.notes.append(f"{test_id}: {a['status']} in {old_name}, {b['status']} now")
            continue
        if a["run_info"]["spec_hash"] != b["run_info"]["spec_hash"]:
            result.notes.append(f"{test_id}: the spec changed since {old_name}")
        for metric, _ in QUALITY:
            x, y = value_at(a["train_info"], metric), value_at(b["train_info"], metric)
            if x is None or y is None:
                continue
            floor, why = floors.get((config_key(a), metric), (thresholds.quality_margin, "fixed margin"))
            delta = float(y) - float(x)
            result.changes.append(Change(test_id, metric, float(x), float(y), delta, delta / x if x else None, why,
                                         failed=-delta > floor + 1e-12))
        for metric, _, rel_name, abs_name in COSTS:
            x, y = value_at(a["train_info"], metric), value_at(b["train_info"], metric)
            if x is None or y is None:
                continue
            x, y = float(x), float(y)
            rel_limit, abs_limit = getattr(thresholds, rel_name), getattr(thresholds, abs_name)
            relative = (y - x) / x if x else None
            failed = (y - x) > abs_limit and (relative is None or relative > rel_limit)
            result.changes.append(Change(test_id, metric, x, y, y - x, relative,
                                         f"+{rel_limit:.0%} (and +{abs_limit:g})", failed))
    result.env = env_lines(environment(old, old_run_info), environment(new, new_run_info),
                           f"old {old_name}", f"new {new_name}")
    return result


def compare_runs(old_run_dir: str | Path, new_records: list[dict[str, Any]], thresholds: Thresholds | None = None,
                 new_name: str = "this run", new_run_info: dict[str, Any] | None = None) -> CompareResult:
    """Compare this run's records (e.g. the bench session's results) with a stored run folder."""
    store = open_run(old_run_dir)
    return compare_records(store.records(), new_records, thresholds, store.run_id, new_name,
                           store.read_run_info(), new_run_info)


def main(argv: list[str] | None = None) -> int:
    """`python -m lora_bench.compare OLD NEW`: compare two stored runs."""
    parser = argparse.ArgumentParser(prog="python -m lora_bench.compare", description=main.__doc__)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--fail", action="append", default=[], metavar="NAME=VALUE",
                        help="a threshold, as --lb-compare-fail takes it")
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    new = open_run(args.new)
    result = compare_runs(args.old, new.records(), Thresholds.from_options(args.fail), new.run_id, new.read_run_info())
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
