"""Grid files: YAML that declares axes, expanded into fully resolved `ExperimentSpec`s.

A grid holds `axes` (a value or a list per axis; lists multiply), optional `include` (extra
combinations, expanded the same way on top of the grid's single-valued axes), `exclude` (partial
combinations to drop) and `budgets` (with per-method overrides under `budgets.methods`).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import catalog, data, methods, quantization, targets
from .schema import (ADAPTER_AXES, ADAPTER_METHODS, AXES, HEAD_DROPPED_AXES, METHOD_AXES, ExperimentSpec,
                     SpecError, check_budgets, check_value, eval_alpha, test_id)

GRIDS = data.FIXTURES / "grids"
GRID_KEYS = ("name", "description", "axes", "include", "exclude", "budgets", "targets")
DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


class GridError(Exception):
    """A malformed grid: the message names the file, the key, the bad value and what is allowed."""


@dataclass
class Grid:
    name: str
    path: Path
    specs: list[ExperimentSpec]
    ids: list[str]
    varying: tuple[str, ...]
    dropped: dict[str, int] = field(default_factory=dict)
    targets: list[Any] = field(default_factory=list)   # lora_bench.perf_targets.Target


def find_grid(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise GridError(f"--lb-grid: no grid file {path}")
        return path.resolve()
    candidate = GRIDS / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(p.stem for p in GRIDS.glob("*.yaml")))
        raise GridError(f"--lb-grid: unknown grid {name_or_path!r}; known grids: {known}, or a path to a YAML file")
    return candidate


@functools.lru_cache(maxsize=1)
def defaults() -> dict[str, Any]:
    return yaml.safe_load(DEFAULTS_FILE.read_text())


def load_grid(name_or_path: str) -> Grid:
    path = find_grid(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML: {exc}") from None
    try:
        return expand(raw, path)
    except SpecError as exc:
        raise GridError(f"{path}: {exc}") from None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _product(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(mapping)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(_as_list(mapping[k]) for k in keys))]


def _check_keys(mapping: Any, where: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise SpecError(where, mapping, "a mapping of axis name to a value or a list of values")
    for key, value in mapping.items():
        if key not in AXES:
            raise SpecError(f"{where}.{key}", value, f"unknown axis; allowed: {', '.join(AXES)}")
        if isinstance(value, list) and not value:
            raise SpecError(f"{where}.{key}", value, "a value or a non-empty list of values")
    return mapping


def expand(raw: Any, path: Path) -> Grid:
    if not isinstance(raw, dict):
        raise SpecError("grid", raw, f"a YAML mapping with keys {', '.join(GRID_KEYS)}")
    for key in raw:
        if key not in GRID_KEYS:
            raise SpecError(key, raw[key], f"unknown grid key; allowed: {', '.join(GRID_KEYS)}")
    axes = _check_keys(raw.get("axes") or {}, "axes")
    budgets, method_budgets = _grid_budgets(raw.get("budgets") or {})
    fixed = {k: v for k, v in axes.items() if not isinstance(v, list) or len(v) == 1}
    combos = _product(axes)
    for i, entry in enumerate(_as_list(raw.get("include") or [])):
        combos += _product({**fixed, **_check_keys(entry, f"include[{i}]")})
    excludes = [_check_keys(e, f"exclude[{i}]") for i, e in enumerate(_as_list(raw.get("exclude") or []))]

    specs: list[ExperimentSpec] = []
    seen: set[str] = set()
    dropped = {"duplicate after axis drop-out": 0, "excluded": 0, "bits not applicable to full fine-tuning": 0}
    for combo in combos:
        if combo.get("method") == "full" and str(combo.get("bits", "16")) != "16":
            dropped["bits not applicable to full fine-tuning"] += 1
            continue
        spec = resolve(combo, budgets, method_budgets)
        if any(_matches(spec, e) for e in excludes):
            dropped["excluded"] += 1
            continue
        if spec.spec_hash in seen:
            dropped["duplicate after axis drop-out"] += 1
            continue
        seen.add(spec.spec_hash)
        specs.append(spec)
    if not specs:
        raise SpecError("axes", axes, "the grid expands to no experiment")
    _check_data_sizes(specs)
    varying = _id_axes(specs)
    ids = [test_id(s, varying) for s in specs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SpecError("axes", dup, "every combination needs its own test id; two combinations share this one")
    from .perf_targets import parse_targets

    return Grid(raw.get("name", path.stem), path, specs, ids, varying, {k: v for k, v in dropped.items() if v},
                parse_targets(raw.get("targets")))


def _id_axes(specs: list[ExperimentSpec]) -> tuple[str, ...]:
    """The fewest extra axes (lr, epochs ...) whose values make every test id unique."""
    chosen: tuple[str, ...] = ()
    distinct = len({test_id(s) for s in specs})
    for key in AXES:
        if distinct == len(specs):
            break
        trial = (*chosen, key)
        count = len({test_id(s, trial) for s in specs})
        if count > distinct:
            chosen, distinct = trial, count
    return chosen


def _grid_budgets(raw: Any) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    if not isinstance(raw, dict):
        raise SpecError("budgets", raw, "a mapping of budget name to limit")
    raw = dict(raw)
    per_method = raw.pop("methods", {}) or {}
    if not isinstance(per_method, dict):
        raise SpecError("budgets.methods", per_method, "a mapping of method to budgets")
    for method in per_method:
        if method not in methods.IMPLEMENTED and method not in ADAPTER_METHODS and method != "head":
            raise SpecError(f"budgets.methods.{method}", per_method[method], "a method name")
    return check_budgets(raw), {m: check_budgets(b, f"budgets.methods.{m}") for m, b in per_method.items()}


def _matches(spec: ExperimentSpec, pattern: dict[str, Any]) -> bool:
    for key, value in pattern.items():
        have = getattr(spec, key)
        wanted = [check_value(key, v) for v in _as_list(value)]
        if key == "alpha" and spec.rank is not None:
            wanted = [eval_alpha(v, spec.rank) for v in wanted]
        if have not in wanted:
            return False
    return True


def resolve(combo: dict[str, Any], budgets: dict[str, float] | None = None,
            method_budgets: dict[str, dict[str, float]] | None = None) -> ExperimentSpec:
    """Fill every default for one combination and validate it; raises SpecError on bad input."""
    table = defaults()
    method = check_value("method", combo.get("method", "lora"))
    model = check_value("model", combo.get("model", "minilm-l6"))
    values: dict[str, Any] = dict(table["all"])
    per_model = (table.get("models") or {}).get(model) or {}
    # adapter variants (dora, rslora ...) inherit LoRA's defaults unless they set their own
    family = ["lora", method] if method in ADAPTER_METHODS and method != "lora" else [method]
    for scope in (table.get("methods") or {}, None):
        for name in family:
            values.update((scope if scope is not None else per_model).get(name) or {})
        if scope is not None:
            values.update(per_model.get("all") or {})
    values.update(combo)
    values["model"], values["method"] = model, method
    resolved = {key: check_value(key, values[key]) for key in AXES}

    if method not in methods.IMPLEMENTED:
        raise SpecError("method", method, methods.PENDING_NOTE)
    if resolved["bits"] not in quantization.IMPLEMENTED_BITS:
        raise SpecError("bits", resolved["bits"], quantization.PENDING_NOTE)
    ref = catalog.parse_model(model)
    data.find_task(resolved["task"])
    if method in ADAPTER_METHODS:
        resolved["alpha"] = eval_alpha(resolved["alpha"], resolved["rank"])
        targets.resolve_targets(resolved["targets"], ref.architecture)
    else:
        for key in ADAPTER_AXES:
            resolved[key] = None
    if method == "head":
        for key in HEAD_DROPPED_AXES:
            resolved[key] = None
    if resolved["bits"] == "16":
        resolved["kbit_prepare"] = None
    for key, owner in METHOD_AXES.items():
        if method != owner:
            resolved[key] = None
    limits = dict(budgets or {})
    limits.update((method_budgets or {}).get(method, {}))
    spec = ExperimentSpec(**resolved, budgets=limits)
    if data.find_task(spec.task).type == "generation":
        from .generation import check_generation_spec

        check_generation_spec(spec)
    if spec.compile != "off" and spec.recipe != "lora-bench":
        raise SpecError("compile", spec.compile, f"only the lora-bench recipe compiles or captures CUDA graphs; "
                        f"recipe {spec.recipe!r} takes compile: off")
    if spec.devices > 1:
        _check_multi_device(spec)
    return spec


# What an experiment over more than one device (one FSDP job, lora_bench.distributed) supports.
MULTI_DEVICE = {"method": ("full",), "recipe": ("lora-bench",), "compile": ("off",)}


def _check_multi_device(spec: ExperimentSpec) -> None:
    for key, allowed in MULTI_DEVICE.items():
        if getattr(spec, key) not in allowed:
            raise SpecError("devices", spec.devices, f"more than one device (FSDP) runs only {key} "
                            f"{' or '.join(allowed)}; this experiment has {key} {getattr(spec, key)!r}")
    if data.find_task(spec.task).type != "classification":
        raise SpecError("devices", spec.devices, f"more than one device (FSDP) runs classification tasks only; "
                        f"task {spec.task!r} is not one")


def _check_data_sizes(specs: list[ExperimentSpec]) -> None:
    for task in sorted({s.task for s in specs}):
        if data.find_task(task).type != "classification":
            continue  # generation: generation.check_generation_spec; causal-lm draws any number of sequences
        largest = max(s.n for s in specs if s.task == task)
        limit = data.max_n_per_class(task)
        if largest > limit:
            if data.find_task(task).source["kind"] == "hub":
                raise SpecError("n", largest, f"task {task!r} declares {limit} training examples per class")
            data.load_task(task).sample(largest, 0)  # raises the SpecError that names the smallest class
