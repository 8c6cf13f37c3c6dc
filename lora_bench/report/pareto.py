"""Quality against cost: which configurations no other one beats on both (the Pareto frontier),
and the best configuration that fits a memory budget."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Memory sizes people buy GPUs in (GiB); budgets shown are those between the cheapest and dearest run.
GPU_SIZES_GIB = (4, 6, 8, 12, 16, 24, 32, 40, 48, 80, 96, 141, 192)


def frontier(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """True for each point that no other point dominates (cost <= and quality >=, one of them strictly).
    Points with a missing quality or cost are never on the frontier."""
    q, c = np.asarray(quality, float), np.asarray(cost, float)
    valid = ~(np.isnan(q) | np.isnan(c))
    out = np.zeros(len(q), dtype=bool)
    qv, cv = q[valid], c[valid]
    no_worse = (cv[None, :] <= cv[:, None]) & (qv[None, :] >= qv[:, None])
    better = (cv[None, :] < cv[:, None]) | (qv[None, :] > qv[:, None])
    out[valid] = ~(no_worse & better).any(axis=1)
    return out


def best_under(points: pd.DataFrame, cost: str, limit: float, quality: str) -> pd.Series | None:
    """The highest-quality configuration whose cost is at most `limit`; the cheaper one on a tie."""
    fits = points[(points[cost] <= limit) & points[quality].notna()]
    if fits.empty:
        return None
    return fits.sort_values([quality, cost], ascending=[False, True]).iloc[0]


def memory_budgets(costs: pd.Series) -> list[float]:
    """Budgets worth asking about: the GPU sizes between the smallest and largest peak measured, or,
    when fewer than two lie there, rounded quartiles of the peaks."""
    values = costs.dropna().to_numpy(dtype=float)
    if len(values) == 0:
        return []
    lo, hi = values.min(), values.max()
    sizes = [float(s) for s in GPU_SIZES_GIB if lo <= s < hi] + [float(s) for s in GPU_SIZES_GIB if s >= hi][:1]
    if len(sizes) >= 2:
        return sizes
    return sorted({_round_up(q) for q in np.quantile(values, [0.25, 0.5, 0.75, 1.0])})


def _round_up(value: float, digits: int = 2) -> float:
    if value <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return round(math.ceil(value / scale - 1e-9) * scale, 10)
