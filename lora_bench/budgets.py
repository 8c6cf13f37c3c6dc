"""Resource and quality budgets: each limit against the measured value of one record."""

from __future__ import annotations

from typing import Any

from .schema import BUDGETS


def value_at(train_info: dict[str, Any] | None, path: str) -> Any:
    """A record's `train_info` value at a dotted path (`resources.peak_memory_gib`); None where missing."""
    node: Any = train_info
    for part in path.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    return node


def lookup(train_info: dict[str, Any], path: str) -> float | None:
    """The number at `path`, for budgets and ratio targets."""
    value = value_at(train_info, path)
    return None if value is None else float(value)


def violations(train_info: dict[str, Any], limits: dict[str, float]) -> list[dict[str, Any]]:
    """Budgets the record breaks, each with a message naming the budget, the limit and the value."""
    out = []
    for name, limit in sorted(limits.items()):
        kind, path, unit = BUDGETS[name]
        measured = lookup(train_info, path)
        if measured is None:
            continue  # not measured for this experiment (e.g. quality of a weightless shape)
        if (kind == "max" and measured > limit) or (kind == "min" and measured < limit):
            word = "at most" if kind == "max" else "at least"
            out.append({"budget": name, "limit": limit, "measured": measured,
                        "message": f"budget {name}: {word} {limit:g}{unit}, measured {measured:.4g}{unit}"})
    return out
