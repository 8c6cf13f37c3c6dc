"""The experiment schema shared by grids, records and every later feature.

One `ExperimentSpec` is one experiment: every axis resolved, every default filled in. Later
features register implementations of the values named here; they never rename a field.
This module imports no torch, so collection stays fast and offline.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1

METHODS = ("head", "full", "lora", "dora", "rslora", "pissa", "olora", "loraplus", "oglora")
ADAPTER_METHODS = frozenset(METHODS[2:])
BITS = ("16", "8", "4-nf4", "4-fp4", "4-nf4-dq", "4-fp4-dq")
TARGET_SETS = ("qv", "qkv", "qkvo", "all-linear")
PADDINGS = ("longest", "max_length")  # pad each batch to its longest text, or every text to max_length
# How an experiment trains: lora-bench's own loop; `plain`, a straightforward peft + transformers
# loop; `naive`, the origin study's pipeline (Trainer, batch 4, every text padded to 256, fp16).
RECIPES = ("lora-bench", "plain", "naive")
# step overhead in the lora-bench recipe (lora_bench.compiling): off; `layers`, each decoder/encoder
# layer compiled once (regional compilation, seconds); `graphs`, the training step captured into CUDA
# graphs per padded length.
COMPILE_MODES = ("off", "layers", "graphs")

# Budget name -> ("max" | "min", record metric path, unit shown in messages)
BUDGETS: dict[str, tuple[str, str, str]] = {
    "max_peak_gib": ("max", "resources.peak_memory_gib", "GiB"),
    "max_latency_p95_ms": ("max", "latency.p95_ms", "ms"),
    "max_train_seconds": ("max", "resources.train_seconds", "s"),
    "max_adapter_mb": ("max", "resources.adapter_mb", "MB"),
    "min_accuracy": ("min", "metrics.accuracy", ""),
    "min_macro_f1": ("min", "metrics.macro_f1", ""),
    "min_chrf": ("min", "metrics.chrf", ""),
    "min_chrf_gain": ("min", "metrics.chrf_delta_low", ""),  # lower bound of tuned-minus-base chrF (bootstrap)
}

# Axes that only adapter methods have; for head and full they drop out of the combinations.
ADAPTER_AXES = ("rank", "alpha", "dropout", "targets")
# Axes of one method only: they drop out of every other method's combinations.
METHOD_AXES = {"loraplus_ratio": "loraplus", "oglora_init": "oglora"}
OGLORA_INITS = ("random", "zero")  # the study's random orthonormal start, or an update that starts at zero
# Axes that head-only training does not use (its head is fitted to convergence on cached features).
HEAD_DROPPED_AXES = ("epochs", "lr", "grad_accum", "warmup_ratio", "weight_decay", "grad_checkpointing", "max_steps")

# Every axis a grid may set, with its type and allowed range (checked by `_check_value`).
AXES: dict[str, str] = {
    "model": "str",
    "task": "str",
    "method": "choice",
    "bits": "choice",
    "rank": "int>=1",
    "alpha": "alpha",
    "dropout": "float[0,1)",
    "targets": "targets",
    "n": "int>=1",
    "seed": "int>=0",
    "epochs": "int>=1",
    "lr": "float(0,1]",
    "batch_size": "int>=1",
    "grad_accum": "int>=1",
    "max_length": "int>=8",
    "weight_decay": "float[0,1)",
    "warmup_ratio": "float[0,1)",
    "latency_rounds": "int>=1",
    "timeout_s": "int>=1",
    "loraplus_ratio": "float[1,1000]",
    "padding": "choice",
    "grad_checkpointing": "bool",
    "kbit_prepare": "bool",
    "max_steps": "int>=1",
    "oglora_init": "choice",
    "recipe": "choice",
    "compile": "choice",
    "devices": "int>=1",
}
# Axes whose value may be null (no limit).
OPTIONAL_AXES = frozenset({"max_steps"})


class SpecError(ValueError):
    """A bad value for one field: names the field, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}: {value!r} is not allowed; {allowed}")


@dataclass(frozen=True)
class ExperimentSpec:
    """One fully resolved experiment. `None` marks an axis that does not apply to the method."""

    model: str
    task: str
    method: str
    bits: str
    n: int
    seed: int
    rank: int | None
    alpha: float | None
    dropout: float | None
    targets: tuple[str, ...] | None
    epochs: int | None
    lr: float | None
    batch_size: int
    grad_accum: int | None
    max_length: int
    weight_decay: float | None
    warmup_ratio: float | None
    latency_rounds: int
    timeout_s: int
    loraplus_ratio: float | None = None
    padding: str = "longest"
    grad_checkpointing: bool | None = False
    kbit_prepare: bool | None = None
    max_steps: int | None = None
    oglora_init: str | None = None
    recipe: str = "lora-bench"
    compile: str = "off"
    devices: int = 1
    budgets: dict[str, float] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets) if self.targets is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentSpec:
        d = dict(d)
        if d.get("targets") is not None:
            d["targets"] = tuple(d["targets"])
        return cls(**d)

    @property
    def spec_hash(self) -> str:
        """sha256 of the resolved spec without budgets: budgets judge a result, they don't change it."""
        d = self.to_dict()
        d.pop("budgets")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @property
    def quantized(self) -> bool:
        return self.bits != "16"

    def method_label(self) -> str:
        """`lora`, or `qlora-nf4`/`qdora-fp4-dq` for an adapter over a 4-bit base."""
        if self.bits.startswith("4-") and self.method in ADAPTER_METHODS:
            return f"q{self.method}-{self.bits[2:]}"
        return self.method

    def targets_label(self) -> str:
        assert self.targets is not None
        return "+".join(self.targets)


def model_label(model: str) -> str:
    """A short lowercase name for ids: `Qwen/Qwen3-0.6B` -> `qwen3-0.6b`, `shape:x` -> `shape-x`."""
    if model.startswith("shape:"):
        return "shape-" + model[len("shape:"):]
    return model.rstrip("/").split("/")[-1].lower().replace("_", "-")


def test_id(spec: ExperimentSpec, varying: tuple[str, ...] = ()) -> str:
    """`minilm-l6-bbc-topic-lora-r8-qv-16-n250-s0`; axes in `varying` outside the fixed id parts
    (lr, epochs, alpha ...) are appended so every combination of one grid has its own id."""
    parts = [model_label(spec.model), spec.task.rsplit("/", 1)[-1].removesuffix(".yaml"), spec.method_label()]
    if spec.rank is not None:
        parts += [f"r{spec.rank}", spec.targets_label()]
    if not (spec.bits.startswith("4-") and spec.method in ADAPTER_METHODS):
        parts.append({"16": "16", "8": "8"}.get(spec.bits, spec.bits[2:]))
    parts += [f"n{spec.n}", f"s{spec.seed}"]
    fixed = {"model", "task", "method", "bits", "rank", "targets", "n", "seed", "budgets"}
    short = {"alpha": "a", "dropout": "d", "epochs": "e", "lr": "lr", "batch_size": "b", "grad_accum": "ga",
             "max_length": "len", "weight_decay": "wd", "warmup_ratio": "wu", "latency_rounds": "lat",
             "timeout_s": "to", "loraplus_ratio": "lpr", "padding": "pad", "grad_checkpointing": "gc",
             "kbit_prepare": "kp", "max_steps": "steps", "oglora_init": "init",
             "recipe": "", "compile": "compile-", "devices": "gpu"}
    for key in varying:
        if key in fixed:
            continue
        value = getattr(spec, key)
        if value is not None:
            parts.append(_id_token(short.get(key, key), value))
    return "-".join(parts)


def _id_token(short: str, value: Any) -> str:
    if isinstance(value, bool):
        return short if value else f"no{short}"
    return f"{short}{_fmt({'max_length': 'max'}.get(value, value))}"


def marker_kwargs(spec: ExperimentSpec) -> dict[str, Any]:
    """Keyword arguments of the `lb(...)` marker, for exact `-m "lb(method='lora')"` selection."""
    kw: dict[str, Any] = {"model": spec.model, "task": spec.task, "method": spec.method,
                          "bits": spec.bits, "n": spec.n, "seed": spec.seed}
    if spec.rank is not None:
        kw["rank"] = spec.rank
        kw["targets"] = spec.targets_label()
    return kw


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def eval_alpha(expr: Any, rank: int) -> float:
    """`alpha` is a number or an arithmetic expression of `rank` such as `2*rank`."""
    if isinstance(expr, bool):
        raise SpecError("alpha", expr, "a positive number or an expression of rank such as '2*rank'")
    if isinstance(expr, (int, float)):
        value = float(expr)
    else:
        try:
            value = float(_eval_node(ast.parse(str(expr), mode="eval").body, rank))
        except (SyntaxError, ValueError, ZeroDivisionError):
            raise SpecError("alpha", expr, "a positive number or an expression of rank such as '2*rank'") from None
    if not value > 0:
        raise SpecError("alpha", expr, "alpha must be > 0")
    return value


def _eval_node(node: ast.AST, rank: int) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id == "rank":
        return rank
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval_node(node.left, rank), _eval_node(node.right, rank))
    raise ValueError("unsupported expression")


def check_value(key: str, value: Any) -> Any:
    """Validate one axis value by its type in `AXES`; returns it normalised (bits as str ...)."""
    if key not in AXES:
        raise SpecError(key, value, f"unknown key; allowed keys: {', '.join(AXES)}")
    kind = AXES[key]
    if value is None and key in OPTIONAL_AXES:
        return None
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise SpecError(key, value, "a non-empty string")
        return value
    if kind == "choice":
        allowed = {"method": METHODS, "bits": BITS, "padding": PADDINGS, "oglora_init": OGLORA_INITS,
                   "recipe": RECIPES, "compile": COMPILE_MODES}[key]
        value = str(value)
        if value not in allowed:
            raise SpecError(key, value, f"allowed: {', '.join(allowed)}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise SpecError(key, value, "true or false")
        return value
    if kind == "targets":
        if isinstance(value, str):
            if value in TARGET_SETS:
                return (value,)
            value = [v.strip() for v in value.split("+")]
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
            raise SpecError(key, value, f"a module set ({', '.join(TARGET_SETS)}) or a list of module names")
        return tuple(value)
    if kind == "alpha":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SpecError(key, value, "a positive number or an expression of rank such as '2*rank'")
        eval_alpha(value, 8)
        return value
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(key, value, f"an integer {kind[3:]}")
        low = int(kind.split(">=")[1])
        if value < low:
            raise SpecError(key, value, f"an integer {kind[3:]}")
        return value
    if kind.startswith("float"):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise SpecError(key, value, f"a number in {kind[5:]}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(key, value, f"a number in {kind[5:]}")
        lo_open, hi_open = kind[5] == "(", kind[-1] == ")"
        lo, hi = (float(x) for x in kind[6:-1].split(","))
        if (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi):
            raise SpecError(key, value, f"a number in {kind[5:]}")
        return float(value)
    raise AssertionError(kind)


def check_budgets(budgets: Any, where: str = "budgets") -> dict[str, float]:
    if not isinstance(budgets, dict):
        raise SpecError(where, budgets, "a mapping of budget name to limit")
    out = {}
    for name, limit in budgets.items():
        if name not in BUDGETS:
            raise SpecError(f"{where}.{name}", limit, f"allowed budgets: {', '.join(BUDGETS)}")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise SpecError(f"{where}.{name}", limit, "a number")
        out[name] = float(limit)
    return out
