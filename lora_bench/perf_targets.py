"""Ratio targets declared in a grid (`targets:`): a metric of a candidate group of experiments
over the same metric of a baseline group, both measured in one bench run on one kind of device
(lora-bench vs `naive` end to end, vs a `plain` loop for throughput and memory, NF4 vs bf16 ...).

A group is every record whose spec matches `where` plus `baseline` (or `candidate`); several seeds
are averaged. `within_spread` instead asks that the two means differ by no more than the larger
seed-to-seed range of the two groups (quality "equal within the seed spread")."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .budgets import lookup
from .schema import AXES, SpecError, check_value

# what a whole-run time is measured in: the experiments a target compares by one get warm-ups
# (lora_bench.warmup)
WHOLE_RUN_TIMES = ("resources.pipeline_seconds", "resources.train_seconds", "resources.wall_seconds",
                   "training.train_seconds")
TARGET_KEYS = ("name", "metric", "baseline_metric", "where", "baseline", "candidate", "max_ratio", "min_ratio",
               "within_spread", "also")


@dataclass(frozen=True)
class Target:
    name: str
    metric: str
    where: dict[str, Any]
    baseline: dict[str, Any]
    candidate: dict[str, Any]
    max_ratio: float | None = None
    min_ratio: float | None = None
    within_spread: bool = False
    also: dict[str, Any] = field(default_factory=dict, hash=False)
    baseline_metric: str | None = None   # another field of the same records (merged vs base latency)

    def matches(self, spec: dict[str, Any], side: str) -> bool:
        wanted = {**self.where, **(self.baseline if side == "baseline" else self.candidate)}
        return all(_same(spec.get(k), v) for k, v in wanted.items())

    def compares(self, spec: dict[str, Any]) -> bool:
        """Whether the experiment is on either side of this target."""
        return self.matches(spec, "baseline") or self.matches(spec, "candidate")


def _same(have: Any, want: Any) -> bool:
    if isinstance(have, list):
        have = tuple(have)
    return have == want


def parse_targets(raw: Any, strict: bool = True) -> list[Target]:
    """Validates a grid's `targets:` list; a bad entry raises SpecError naming it. `strict=False`
    reads back a finished run's own grid, whose axis values may since have left the schema: they
    still name what that run ran."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError("targets", raw, "a list of targets with name, metric, baseline, candidate and a ratio bound")
    out = []
    for i, entry in enumerate(raw):
        where = f"targets[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(where, entry, "a mapping")
        for key in entry:
            if key not in TARGET_KEYS:
                raise SpecError(f"{where}.{key}", entry[key], f"allowed keys: {', '.join(TARGET_KEYS)}")
        for key in ("name", "metric", "baseline", "candidate"):
            if key not in entry:
                raise SpecError(f"{where}.{key}", None, "required")
        if not any(k in entry for k in ("max_ratio", "min_ratio", "within_spread")):
            raise SpecError(where, entry["name"], "needs max_ratio, min_ratio or within_spread")
        selectors = {}
        for part in ("where", "baseline", "candidate"):
            mapping = entry.get(part) or {}
            if not isinstance(mapping, dict):
                raise SpecError(f"{where}.{part}", mapping, "a mapping of axis to value")
            selectors[part] = {k: _selector_value(f"{where}.{part}.{k}", k, v, strict) for k, v in mapping.items()}
        out.append(Target(str(entry["name"]), str(entry["metric"]), selectors["where"], selectors["baseline"],
                          selectors["candidate"], _number(entry, "max_ratio", where), _number(entry, "min_ratio", where),
                          bool(entry.get("within_spread", False)), dict(entry.get("also") or {}),
                          str(entry["baseline_metric"]) if entry.get("baseline_metric") else None))
    return out


def _selector_value(where: str, key: str, value: Any, strict: bool = True) -> Any:
    if key not in AXES:
        raise SpecError(where, value, f"an axis; allowed: {', '.join(AXES)}")
    if value is None:
        return None
    try:
        return check_value(key, value)
    except SpecError as exc:
        if not strict:
            return value
        raise SpecError(where, value, exc.allowed) from None


def _number(entry: dict[str, Any], key: str, where: str) -> float | None:
    if key not in entry:
        return None
    if isinstance(entry[key], bool) or not isinstance(entry[key], (int, float)) or entry[key] <= 0:
        raise SpecError(f"{where}.{key}", entry[key], "a positive number")
    return float(entry[key])


def metric(record: dict[str, Any], path: str) -> float | None:
    """A record's number at `path` (budgets' lookup); None where it is missing or not a number."""
    try:
        return lookup(record.get("train_info") or {}, path)
    except (TypeError, ValueError):
        return None


def evaluate(target: Target, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The target's verdict over `records` (ok ones only): values, ratio, pass or miss, and why."""
    groups: dict[str, list[dict[str, Any]]] = {"baseline": [], "candidate": []}
    for record in records:
        if record.get("status") != "ok":
            continue
        for side in groups:
            if target.matches(record["run_info"]["spec"], side):
                groups[side].append(record)
    paths = {"baseline": target.baseline_metric or target.metric, "candidate": target.metric}
    values = {side: [v for v in (metric(r, paths[side]) for r in rs) if v is not None] for side, rs in groups.items()}
    devices = sorted({(r.get("meta_info") or {}).get("device", {}).get("name") or "?" for rs in groups.values() for r in rs})
    placements = sorted({placement(r) for rs in groups.values() for r in rs})
    label = target.metric if not target.baseline_metric else f"{target.metric} / {target.baseline_metric}"
    result: dict[str, Any] = {"name": target.name, "metric": label, "baseline": values["baseline"],
                              "candidate": values["candidate"], "ids": {s: [r["test_id"] for r in rs] for s, rs in groups.items()},
                              "devices": devices, "placements": placements, "ratio": None, "passed": None, "reason": ""}
    if not values["baseline"] or not values["candidate"]:
        missing = [s for s in values if not values[s]]
        result["reason"] = f"no measured {' or '.join(missing)} experiment in these records"
        return result
    base, cand = statistics.fmean(values["baseline"]), statistics.fmean(values["candidate"])
    result.update(baseline_mean=base, candidate_mean=cand, ratio=cand / base if base else None)
    verdicts = []
    if target.max_ratio is not None:
        verdicts.append((result["ratio"] is not None and result["ratio"] <= target.max_ratio,
                         f"ratio {result['ratio']:.3f} (limit <= {target.max_ratio:g})"))
    if target.min_ratio is not None:
        verdicts.append((result["ratio"] is not None and result["ratio"] >= target.min_ratio,
                         f"ratio {result['ratio']:.3f} (limit >= {target.min_ratio:g})"))
    if target.within_spread:
        spread = max(max(v) - min(v) for v in values.values())
        result["spread"] = spread
        verdicts.append((abs(cand - base) <= spread, f"difference {cand - base:+.4f}, seed spread {spread:.4f} "
                                                     f"({len(values['baseline'])} vs {len(values['candidate'])} seeds)"))
    if target.also.get("peak"):
        peaks = {s: [metric(r, target.also["peak"]) for r in groups[s]] for s in groups}
        peak_ratio = statistics.fmean(p for p in peaks["candidate"] if p) / statistics.fmean(p for p in peaks["baseline"] if p)
        result["peak_ratio"] = peak_ratio
        verdicts.append((peak_ratio <= target.also.get("max_peak_ratio", 1.0),
                         f"peak memory ratio {peak_ratio:.3f} (limit <= {target.also.get('max_peak_ratio', 1.0):g})"))
    warmups = [r["run_info"].get("warmup") for rs in groups.values() for r in rs]
    if target.metric in WHOLE_RUN_TIMES and any(warmups):  # said, not judged: first use left out of the times
        ran = [w for w in warmups if w and not w["shared"]]
        verdicts.append((True, f"{sum(map(bool, warmups))} of {len(warmups)} runs after an untimed warm-up "
                               f"({len(ran)} warm-ups, {sum(w['seconds'] for w in ran):.1f} s)"))
    if len(placements) > 1 and not target.baseline_metric:  # said, not failed: the GPUs may be alike
        verdicts.append((True, f"measured on {len(placements)} GPUs ({', '.join(placements)}), not side by side on one"))
    result["passed"] = all(ok for ok, _ in verdicts)
    result["reason"] = "; ".join(text for _, text in verdicts)
    return result


def placement(record: dict[str, Any]) -> str:
    """Where a record ran: host, and the GPU its worker pinned where there was one."""
    host = (record.get("meta_info") or {}).get("host") or {}
    gpu = host.get("cuda_visible_devices")
    return f"{host.get('hostname') or '?'} GPU {gpu}" if gpu else (host.get("hostname") or "?")


def side_by_side_groups(targets: list[Target], specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each experiment's group: experiments that a target compares with each other share one, named
    after the first of them in test-id order, so that xdist (`--dist loadgroup`) and `--lb-shard` keep
    a ratio's two sides on one GPU. A target whose ratio lies within one record (`baseline_metric`)
    links nothing; an experiment no target links is a group of its own."""
    parent = {test_id: test_id for test_id in specs}

    def root(test_id: str) -> str:
        while parent[test_id] != test_id:
            parent[test_id] = parent[parent[test_id]]
            test_id = parent[test_id]
        return test_id

    for target in targets:
        if target.baseline_metric is not None:
            continue
        linked = sorted(t for t, spec in specs.items() if target.compares(spec))
        for test_id in linked[1:]:
            a, b = sorted((root(linked[0]), root(test_id)))
            parent[b] = a
    return {test_id: root(test_id) for test_id in specs}
