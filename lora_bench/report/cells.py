"""Configurations as cells: the seeds of one configuration, its estimate with the right interval,
and comparisons between two cells that pick the test the samples allow (Mann-Whitney over seeds,
McNemar over paired test examples, or none, with the reason)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import stats
from .load import CONFIG_FACTORS


@dataclass
class Cell:
    """One configuration: its seed-level rows, the metric per seed, and an estimate with an interval
    from the seeds (two or more) or, with one seed, from a per-example bootstrap of its predictions."""

    label: str
    rows: pd.DataFrame
    metric: str
    values: np.ndarray
    mean: float
    lo: float
    hi: float
    interval: str
    predictions: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def seeds(self) -> int:
        return len(self.values)

    def mean_of(self, column: str) -> float:
        values = pd.to_numeric(self.rows[column], errors="coerce")
        return float(values.mean()) if values.notna().any() else math.nan

    def replicates(self) -> np.ndarray | None:
        """Bootstrap replicates of the estimate: seeds resampled, or test examples resampled with
        the shared draw `stats.bootstrap_indices` (so cells on one test set stay paired)."""
        if self.seeds >= 2:
            return stats.seed_bootstrap(self.values)
        if self.predictions and self.metric in stats.BOOTSTRAP_METRICS:
            pred, labels = next(iter(self.predictions.values()))
            return stats.metric_values(self.metric, pred, labels, stats.bootstrap_indices(len(labels)))
        return None


def make_cell(rows: pd.DataFrame, metric: str, predictions: dict[str, tuple[np.ndarray, np.ndarray]],
              label: str | None = None) -> Cell:
    rows = rows[rows[metric].notna()].sort_values("seed")
    values = rows[metric].to_numpy(dtype=float)
    preds = {int(s): predictions[u] for s, u in zip(rows["seed"].fillna(0), rows["uid"]) if u in predictions}
    label = label if label is not None else str(rows["label"].iloc[0]) if "label" in rows and len(rows) else "?"
    if len(values) >= 2:
        mean, lo, hi = stats.mean_ci(values)
        return Cell(label, rows, metric, values, mean, lo, hi, f"t, {len(values)} seeds", preds)
    if len(values) == 1 and preds and metric in stats.BOOTSTRAP_METRICS:
        pred, labels = next(iter(preds.values()))
        lo, hi = stats.percentile_ci(stats.metric_values(metric, pred, labels, stats.bootstrap_indices(len(labels))))
        return Cell(label, rows, metric, values, float(values[0]), lo, hi,
                    f"bootstrap, {len(labels)} test examples", preds)
    mean = float(values[0]) if len(values) else math.nan
    return Cell(label, rows, metric, values, mean, math.nan, math.nan,
                "none (one seed, no predictions)" if len(values) else "none (not measured)", preds)


@dataclass
class Comparison:
    """a - b: the difference with its interval, the test that fits, equivalence within a margin,
    and whether the difference lies inside the seed-to-seed noise floor."""

    a: Cell
    b: Cell
    diff: float
    lo: float
    hi: float
    interval: str
    test: stats.TestResult
    equivalence: stats.Equivalence | None
    within_noise: bool | None
    hedges_g: float = math.nan


def _paired_seeds(a: Cell, b: Cell) -> list[int]:
    """Seeds both cells ran whose predictions are on the same test examples in the same order."""
    return [s for s in sorted(set(a.predictions) & set(b.predictions))
            if len(a.predictions[s][1]) == len(b.predictions[s][1])
            and np.array_equal(a.predictions[s][1], b.predictions[s][1])]


def compare(a: Cell, b: Cell, noise: float | None, margin: float) -> Comparison:
    """Seeds first (two or more a side): Welch interval, Mann-Whitney where it can reach significance,
    TOST for equivalence. Otherwise paired predictions: bootstrap interval, McNemar, interval vs margin."""
    subject = f"{a.label} vs {b.label}"
    paired = _paired_seeds(a, b)
    test: stats.TestResult
    equivalence = None
    if a.seeds >= 2 and b.seeds >= 2:
        diff, lo, hi = stats.welch_diff_ci(a.values, b.values)
        interval = f"Welch t, {a.seeds}+{b.seeds} seeds"
        equivalence = stats.tost_seeds(a.values, b.values, margin)
        test = stats.mann_whitney(a.values, b.values, subject)
    else:
        diff, lo, hi, interval = a.mean - b.mean, math.nan, math.nan, "none"
        test = stats.not_run("Mann-Whitney U", subject, f"{a.seeds} vs {b.seeds} seeds",
                             "one seed on a side" + ("" if paired else ", and no paired predictions"))
        if paired and a.metric in stats.BOOTSTRAP_METRICS:
            seed = paired[0]
            (pa, labels), (pb, _) = a.predictions[seed], b.predictions[seed]
            idx = stats.bootstrap_indices(len(labels))
            diffs = stats.metric_values(a.metric, pa, labels, idx) - stats.metric_values(a.metric, pb, labels, idx)
            diff = float(stats.metric_values(a.metric, pa, labels)[0] - stats.metric_values(a.metric, pb, labels)[0])
            lo, hi = stats.percentile_ci(diffs)
            interval = f"paired bootstrap, {len(labels)} examples, seed {seed}"
            equivalence = stats.equivalence_from_bootstrap(diffs, margin)
    if not test.ran and paired:
        a_ok = np.concatenate([a.predictions[s][0] == a.predictions[s][1] for s in paired])
        b_ok = np.concatenate([b.predictions[s][0] == b.predictions[s][1] for s in paired])
        note = f", seed{'s' if len(paired) > 1 else ''} {', '.join(map(str, paired))}"
        test = stats.mcnemar(a_ok, b_ok, subject, note)
    within = None if noise is None or math.isnan(diff) else abs(diff) < noise
    return Comparison(a, b, diff, lo, hi, interval, test, equivalence, within, stats.hedges_g(a.values, b.values))


# ------------------------------------------------------------------------------------------------ labels

_SHORT = {"rank": lambda v: f"r{v:g}", "n_train": lambda v: f"n={v:g}", "alpha_ratio": lambda v: f"α/r={v:g}",
          "lr": lambda v: f"lr={v:g}", "epochs": lambda v: f"{v:g} ep", "batch_size": lambda v: f"b{v:g}",
          "dropout": lambda v: f"drop={v:g}", "grad_accum": lambda v: f"ga{v:g}", "max_length": lambda v: f"len{v:g}",
          "weight_decay": lambda v: f"wd={v:g}", "warmup_ratio": lambda v: f"wu={v:g}",
          "loraplus_ratio": lambda v: f"λ={v:g}"}


def describe(row: pd.Series | dict, factors: list[str] | tuple[str, ...]) -> str:
    """A short human label from some factors: `lora r8 qv lr=0.001`; missing factors are left out."""
    parts = []
    for factor in factors:
        value = row[factor] if factor in row else None
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            continue
        parts.append(_SHORT[factor](float(value)) if factor in _SHORT else str(value))
    return " ".join(parts)


def varying(df: pd.DataFrame, factors: tuple[str, ...] = CONFIG_FACTORS) -> list[str]:
    """The factors that take two or more values in `df`; a factor missing where it does not apply (the
    rank of head-only training) does not count, since the method already tells those apart."""
    return [f for f in factors if f in df and df[f].nunique() > 1]


def add_labels(df: pd.DataFrame) -> pd.DataFrame:
    """`label`: the method label plus every other factor that varies across the report."""
    factors = ["method_label", *[f for f in varying(df) if f not in ("method", "bits")]]
    order = ["model", "task", "method_label", "rank", "targets", "alpha_ratio", "n_train"]
    factors.sort(key=lambda f: order.index(f) if f in order else len(order))
    df = df.copy()
    df["label"] = [describe(row, factors) or str(row["method_label"]) for _, row in df.iterrows()]
    return df
