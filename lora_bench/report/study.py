"""Slices and studies: the experiments a report reads (one per configuration and seed), grouped so
that one factor varies while every other is held fixed, and each level estimated and compared.

A *slice* holds every factor fixed but the one studied (and the seed), so levels are compared on
equal terms and other configurations are never taken as replicates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from .cells import Cell, Comparison, add_labels, compare, describe, make_cell, varying
from .load import CONFIG_FACTORS, Experiments, config_key
from ..schema import BITS, METHODS

MARGIN = 0.01  # equivalence margin for quality (absolute; one point of accuracy)
PLATEAU = 0.99  # the plateau is the smallest level reaching this fraction of the best quality
LABEL_ORDER = ("model", "task", "method_label", "rank", "targets", "alpha_ratio", "n_train", "lr", "batch_size",
               "epochs", "dropout", "grad_accum", "max_length", "weight_decay", "warmup_ratio", "loraplus_ratio")
TARGET_ORDER = ("q", "k", "v", "o", "qv", "qk", "kv", "qkv", "qkvo", "all-linear")
BITS_NAMES = {"16": "16-bit", "8": "8-bit", "4-nf4": "4-bit NF4", "4-fp4": "4-bit FP4", "4-nf4-dq": "4-bit NF4 + DQ",
              "4-fp4-dq": "4-bit FP4 + DQ"}


@dataclass
class Context:
    """The experiments every section reads: all rows, the usable ones (finished, one per config and
    seed), the quality metric, the metric used to pick a best configuration, and the noise floors."""

    ex: Experiments
    ok: pd.DataFrame
    metric: str | None
    select_metric: str | None
    noise: dict[tuple[str, str], tuple[float | None, int]]
    duplicates: int
    varying: list[str]
    margin: float = MARGIN

    @property
    def metric_name(self) -> str:
        return (self.metric or "quality").replace("_", " ")

    def noise_of(self, row: pd.Series) -> float | None:
        return self.noise.get((str(row["model"]), str(row["task"])), (None, 0))[0]

    def label(self, row: pd.Series, exclude: tuple[str, ...] = (), method: str = "method_label") -> str:
        """The factors that vary across the whole report, minus those a section holds fixed or studies;
        `method="method"` names the method without its bits (for slices across bit widths)."""
        factors = [method if f == "method_label" else f for f in LABEL_ORDER
                   if (f in self.varying or (f == "method_label" and "method" in self.varying)) and f not in exclude]
        return describe(row, factors) or "all experiments"

    def where(self, row: pd.Series, context: str) -> str:
        """`minilm-l6 / bbc-topic, lora qv n=1250`: the model and task a finding speaks of, then its slice."""
        scope = " / ".join(str(row[f]) for f in ("model", "task") if f not in self.varying and pd.notna(row[f]))
        return ", ".join(p for p in (scope, "" if context == "all experiments" else context) if p) or "all experiments"


def build_context(ex: Experiments, margin: float = MARGIN) -> Context:
    frame = ex.frame
    done = frame[frame["status"] == "ok"].sort_values("finished", na_position="first")
    ok = done.drop_duplicates(["config", "seed"], keep="last")
    metric = next((m for m in ("accuracy", "macro_f1", "weighted_f1") if m in ok and ok[m].notna().any()), None)
    select = metric
    if metric and f"val_{metric}" in ok and ok.loc[ok[metric].notna(), f"val_{metric}"].notna().all():
        select = f"val_{metric}"
    ok = add_labels(ok) if len(ok) else ok.assign(label=[])
    noise = {}
    if metric:
        for (model, task), group in ok.groupby(["model", "task"], dropna=False):
            noise[(str(model), str(task))] = stats.noise_floor(group, metric)
    return Context(ex, ok, metric, select, noise, len(done) - len(ok), varying(ok, (*CONFIG_FACTORS, "method_label")),
                   margin)


def level_name(factor: str, value: Any) -> str:
    if factor == "rank":
        return f"r{value:g}"
    if factor == "n_train":
        return f"n={value:g}"
    if factor == "bits":
        return BITS_NAMES.get(str(value), str(value))
    return str(value)


@dataclass
class SliceStudy:
    """One factor studied within one slice: a cell per level, the tests across levels, comparisons,
    and for ordered factors the plateau with its interval."""

    context: str
    factor: str
    levels: list[Any]
    cells: list[Cell]
    tests: list[stats.TestResult]
    comparisons: list[Comparison]
    row: pd.Series | None = None
    plateau: stats.Plateau | None = None
    plateau_check: Comparison | None = None
    noise: float | None = None

    def cell(self, level: Any) -> Cell:
        return self.cells[self.levels.index(level)]

    @property
    def best(self) -> Cell:
        return max(self.cells, key=lambda c: c.mean)


def groups_by(df: pd.DataFrame, free: tuple[str, ...]) -> list[pd.DataFrame]:
    """Groups of `df` equal in every configuration factor except `free` (and the seed). When the rank is
    free, alpha may follow it (a fixed alpha/rank) or stay put (a fixed alpha); mixed rules are split."""
    keys = [f for f in CONFIG_FACTORS if f not in (*free, "alpha_ratio")]
    out = []
    for _, group in df.groupby([config_key(t) for t in df[keys].itertuples(index=False)], sort=False):
        if "rank" in free and group["alpha_ratio"].nunique() > 1 and group["alpha"].nunique() == 1:
            out.append(group)
        else:
            out += [g for _, g in group.groupby("alpha_ratio", sort=False, dropna=False)]
    return out


def slices(ctx: Context, factor: str) -> list[tuple[str, pd.DataFrame]]:
    """Groups of experiments equal in every factor but `factor` (and the seed), with two or more levels."""
    df = ctx.ok[ctx.ok[ctx.metric].notna() & ctx.ok[factor].notna()] if ctx.metric else ctx.ok.iloc[0:0]
    out = []
    for group in groups_by(df, (factor,)) if len(df) else []:
        if group[factor].nunique() >= 2:
            row = group.iloc[0]
            label = ctx.label(row, (factor,), "method" if factor == "bits" else "method_label")
            if factor == "rank" and group["alpha_ratio"].nunique() > 1:
                label += f" α={row['alpha']:g}"
            out.append((label, group))
    return out


def sort_levels(factor: str, levels: list[Any]) -> list[Any]:
    if factor == "targets":
        return sorted(levels, key=lambda t: (TARGET_ORDER.index(t) if t in TARGET_ORDER else 99, str(t).count("+"), t))
    if factor == "bits":
        return sorted(levels, key=lambda b: BITS.index(b) if b in BITS else 99)
    if factor == "method_label":
        return sorted(levels, key=lambda m: (METHODS.index(m.split("-")[0].lstrip("q")) if m.split("-")[0].lstrip("q")
                                             in METHODS else 99, m))
    return sorted(levels)


def study_factor(ctx: Context, factor: str, ordered: bool, reference: Any = None) -> list[SliceStudy]:
    """Each slice where `factor` takes two or more levels: Kruskal-Wallis and Levene across levels over
    seeds; for an ordered factor Spearman and the plateau (smallest level within 99% of the best,
    checked for equivalence with the best); for a categorical one, each level against `reference`
    (or the best level)."""
    assert ctx.metric is not None
    out = []
    for context, group in slices(ctx, factor):
        levels = sort_levels(factor, list(group[factor].dropna().unique()))
        cells = [make_cell(group[group[factor] == lv], ctx.metric, ctx.ex.predictions, level_name(factor, lv))
                 for lv in levels]
        noise = ctx.noise_of(group.iloc[0])
        subject = f"{factor.replace('_', ' ')} · {context}"
        seeds = {c.label: c.values for c in cells}
        tests = [stats.kruskal(seeds, subject), stats.levene(seeds, subject)]
        study = SliceStudy(context, factor, levels, cells, tests, [], group.iloc[0], noise=noise)
        if ordered:
            tests.append(stats.spearman(group[factor], group[ctx.metric], subject))
            reps = [c.replicates() for c in cells]
            boot = None if any(r is None for r in reps) else np.column_stack(reps)
            study.plateau = stats.plateau(levels, [c.mean for c in cells], boot, PLATEAU)
            best = study.cell(study.plateau.best_level)
            if study.plateau.level != study.plateau.best_level:
                study.plateau_check = compare(study.cell(study.plateau.level), best, noise,
                                              (1 - PLATEAU) * abs(best.mean))
        else:
            ref = study.cell(reference) if reference in levels else study.best
            study.comparisons = [compare(c, ref, noise, ctx.margin) for c in cells if c is not ref]
        out.append(study)
    return out


def study_tests(studies: list[SliceStudy]) -> list[stats.TestResult]:
    tests = []
    for s in studies:
        tests += s.tests + [c.test for c in s.comparisons]
        if s.plateau_check is not None:
            tests.append(s.plateau_check.test)
    return tests


def main_study(studies: list[SliceStudy]) -> SliceStudy:
    """The slice a finding speaks of: the most levels, then the most data, the most seeds, the best quality."""
    def key(s: SliceStudy) -> tuple:
        n = s.row["n_train"] if s.row is not None and s.factor != "n_train" else math.nan
        return len(s.levels), -math.inf if pd.isna(n) else n, sum(c.seeds for c in s.cells), s.best.mean
    return max(studies, key=key)
