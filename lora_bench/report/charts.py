"""The charts sections share: learning-curve style line charts and forest plots over the slices of
a study, named by what tells the slices apart, with the seed-noise band."""

from __future__ import annotations

import math
from typing import Any, Callable

from . import svg
from .cells import Cell
from .study import SliceStudy, main_study
from .text import ci, q



def shared_words(names: list[str]) -> tuple[str, list[str]]:
    """Words every name has, and the names without them: a legend shows only what tells series apart."""
    if len(names) < 2:
        return "", names
    common = [w for w in names[0].split() if all(w in n.split() for n in names[1:])]
    short = [" ".join(w for w in n.split() if w not in common) or n for n in names]
    return " ".join(common), short


def chart_series(studies: list[SliceStudy], limit: int) -> tuple[str, list[tuple[SliceStudy, str]]]:
    """The slices a chart shows (most levels, then best), named by what differs between them."""
    chosen = sorted(studies, key=lambda s: (-len(s.levels), -s.best.mean))[:limit]
    common, names = shared_words([s.context for s in chosen])
    return (f" · {common}" if common and common != "all experiments" else ""), list(zip(chosen, names))


def line_chart(studies: list[SliceStudy], metric: str, title: str, x_label: str, band: Any, limit: int = 8) -> str:
    suffix, chosen = chart_series(studies, limit)
    series = [(name, [svg.Point(float(lv), c.mean, c.lo, c.hi, f"{s.context} · {c.label}: {metric} {q(c.mean)}"
                                f"{ci(c.lo, c.hi)} ({c.interval})") for lv, c in zip(s.levels, s.cells)])
              for s, name in chosen]
    return svg.line_chart(series, x_label, f"{metric} (95% CI)", title + suffix, log_x=True, band=band)


def forest_chart(studies: list[SliceStudy], title: str, rows: list[str], value: Callable[[Cell], float],
                 x_label: str, row_of: Callable[[Cell], str] = lambda c: c.label, with_ci: bool = True) -> str:
    suffix, chosen = chart_series(studies, 6)
    series = []
    for s, name in chosen:
        data = {}
        for c in s.cells:
            v = value(c)
            if math.isfinite(v):
                lo, hi = (c.lo, c.hi) if with_ci else (math.nan, math.nan)
                data[row_of(c)] = svg.Point(v, 0, lo, hi, f"{s.context} · {c.label}: {v:.4g}{ci(lo, hi)}")
        series.append((name, data))
    return svg.dot_chart(rows, series, x_label, title + suffix)


def noise_band(studies: list[SliceStudy]) -> tuple[float, float, str] | None:
    s = main_study(studies)
    if s.noise is None:
        return None
    top = s.best.mean
    return top - s.noise, top, f"seed noise below the best ({s.noise:.3f} SD)"
