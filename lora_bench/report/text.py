"""Numbers and sentences: table cells (with a sort value and a hover text) and the phrases findings
are built from, so every section words an interval, a test or a plateau the same way."""

from __future__ import annotations

import math
from typing import Any, Callable

import pandas as pd

from . import stats
from .cells import Cell, Comparison
from .study import MARGIN, PLATEAU, SliceStudy

TableCell = Any  # str, or (text, sort value[, hover text]) for a sortable cell
FACTOR_WORDS = {"rank": "rank", "n_train": "training set"}


def q(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.3f}"


def ci(lo: float, hi: float) -> str:
    return "" if not (math.isfinite(lo) and math.isfinite(hi)) else f" [{lo:.3f}, {hi:.3f}]"


def est(cell: Cell) -> tuple[str, float]:
    return f"{q(cell.mean)}{ci(cell.lo, cell.hi)}", cell.mean


def signed(v: float) -> str:
    if not math.isfinite(v):
        return "–"
    return "0.000" if round(v, 3) == 0 else f"{v:+.3f}".replace("-", "−")


def num(v: float, unit: str = "", digits: int = 3) -> tuple[str, float]:
    if v is None or not math.isfinite(v):
        return "–", math.nan
    text = (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}" if unit == "GiB" and abs(v) < 100
            else f"{v:.{digits}g}")
    return f"{text}{' ' + unit if unit else ''}", v


def diff_cell(c: Comparison) -> TableCell:
    """The difference with its interval; hovering tells where the interval comes from."""
    return f"{signed(c.diff)}{ci(c.lo, c.hi)}", c.diff, f"interval: {c.interval}"


def equivalence_cell(c: Comparison | None) -> TableCell:
    eq = c.equivalence if c is not None else None
    if eq is None:
        return "–"
    if eq.reason is not None:
        return "–", math.nan, eq.reason
    return ("equivalent" if eq.shown else "not shown", float(eq.shown),
            f"{eq.method}: 90% interval [{eq.lo:.3f}, {eq.hi:.3f}] against ±{eq.margin:.3g}")


def test_cell(t: stats.TestResult) -> TableCell:
    """`McNemar p=0.003 (Holm 0.012)`; a test not run says so, and hovering gives the reason."""
    if not t.ran:
        return f"{t.test}: not run", math.inf, t.reason
    p = t.p_holm if t.p_holm is not None else t.p
    holm = f" (Holm {stats.fmt_p(t.p_holm)})" if t.p_holm is not None else ""
    return f"{t.test} {stats.p_text(t.p)}{holm}", p, t.n


def comparison_row(c: Comparison) -> list[TableCell]:
    noise = "–" if c.within_noise is None else ("inside" if c.within_noise else "beyond")
    effect = "–" if c.test.effect is None else f"{c.test.effect_name} {c.test.effect:+.2f}"
    if math.isfinite(c.hedges_g):
        effect += f"; g {c.hedges_g:+.2f}"
    return [diff_cell(c), test_cell(c.test), effect, equivalence_cell(c), noise]


COMPARISON_COLUMNS = ["Δ vs reference [95% CI]", "test", "effect size", f"equivalent (±{MARGIN:g})?",
                      "vs noise floor"]


def settled(c: Comparison) -> bool:
    """Whether the finding can say more than the number: a test ran, or the gap is inside the noise or equivalent."""
    return bool(c.test.ran or c.within_noise or (c.equivalence is not None and c.equivalence.shown))


def gap_phrase(c: Comparison) -> str:
    """`0.012 lower (inside the seed noise)` / `0.101 lower [0.08, 0.12] (McNemar p<0.001)`."""
    word = "lower" if c.diff < 0 else "higher"
    text = f"{abs(c.diff):.3f} {word}"
    if math.isfinite(c.lo) and math.isfinite(c.hi):
        lo, hi = sorted((abs(c.lo), abs(c.hi))) if c.lo * c.hi > 0 else (c.lo, c.hi)
        text += f" [{lo:.3f}, {hi:.3f}]"
    if c.within_noise:
        return text + " (inside the seed-to-seed noise)"
    if c.equivalence is not None and c.equivalence.shown:
        return text + f" (equivalent within ±{c.equivalence.margin:.3g})"
    if c.test.ran:
        return text + f" ({c.test.test} {stats.describe_p(c.test)})"
    return text


def gaps_sentence(comps: list[Comparison]) -> str:
    """Each gap to the reference, then once the reason the untested ones were not tested."""
    text = "; ".join(f"{c.a.label} is {gap_phrase(c)}" for c in comps)
    untested = sorted({str(c.test.reason) for c in comps if not settled(c)})
    return text + (f" (not tested: {'; '.join(untested)})" if untested else "")


def nothing_to_compare(values: pd.Series, what: str, missing: str) -> str:
    """Why a section has no comparison: one level only, or levels that never met on equal terms."""
    levels = sorted(values.dropna().unique())
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in levels)
    if len(levels) == 0:
        return f"No {what} recorded in these experiments: no {missing}."
    if len(levels) == 1:
        return f"Only one {what} ran ({shown}): no {missing}."
    return f"{what.capitalize()}s {shown} ran, but never two with everything else equal: no {missing}."


def interval_text(p: stats.Plateau, name: Callable[[Any], str]) -> str:
    if p.interval is None:
        return "no interval: one seed and no predictions at some level"
    lo, hi = p.interval
    return f"{name(lo)} only" if lo == hi else f"{name(lo)}–{name(hi)}"


def plateau_phrase(s: SliceStudy, name: Callable[[Any], str]) -> str:
    p = s.plateau
    assert p is not None
    factor, best = FACTOR_WORDS.get(s.factor, s.factor), f"{q(p.best)} at {name(p.best_level)}"
    if p.level == s.levels[-1]:
        text = (f"has not plateaued: only the largest {factor} tried, {name(p.level)}, is within {PLATEAU:.0%} "
                f"of the best, {q(p.best)}")
    elif p.level == s.levels[0]:
        text = (f"has plateaued already at the smallest {factor} tried, {name(p.level)}, within {PLATEAU:.0%} "
                f"of the best ({best})")
    else:
        text = f"plateaus at {name(p.level)}, the smallest {factor} within {PLATEAU:.0%} of the best ({best})"
    text += f" (95% interval: {interval_text(p, name)})"
    chk = s.plateau_check
    if chk is not None and chk.equivalence is not None and chk.equivalence.reason is None:
        text += ("; equivalent to the best within that 1% margin" if chk.equivalence.shown
                 else "; equivalence to the best within 1% is not shown")
    return text
