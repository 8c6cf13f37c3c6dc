"""The study's seven questions, one section each: a finding in one sentence computed from the data,
a chart, the numbers, and the tests behind them (with the reason for any test not run)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import pareto, stats, svg
from .cells import compare, make_cell
from .charts import forest_chart, line_chart, noise_band
from .load import Experiments
from .study import (LABEL_ORDER, Context, SliceStudy, build_context, groups_by, level_name, main_study,
                    sort_levels, study_factor, study_tests)
from .text import (COMPARISON_COLUMNS, TableCell, ci, comparison_row, diff_cell, equivalence_cell, est, gaps_sentence,
                   interval_text, nothing_to_compare, num, plateau_phrase, q, signed)
from ..schema import BUDGETS

NO_DEVICE = "device not recorded"
COST_WORDS = {"peak_memory_gib": "memory", "train_seconds": "time", "latency_p95_ms": "latency"}
COSTS = (("peak_memory_gib", "peak memory (GiB)", "GiB"), ("train_seconds", "training time (s)", "s"),
         ("latency_p95_ms", "latency p95, batch 1 (ms)", "ms"))


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[TableCell]]


@dataclass
class Section:
    """What the page shows for one question; `data` keeps the structured results behind it."""

    id: str
    number: int
    title: str
    question: str
    finding: str
    chart: str = ""
    tables: list[Table] = field(default_factory=list)
    tests: list[stats.TestResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def no_quality(ctx: Context, section_id: str, number: int, title: str, question: str) -> Section:
    if ctx.ok.empty:
        return Section(section_id, number, title, question, "No experiment finished, so there is nothing to compare.")
    return Section(section_id, number, title, question,
                   "No quality metric was recorded in these experiments, so there is nothing to compare.")


def level_table(studies: list[SliceStudy], ctx: Context, factor_title: str, extra: list[tuple[str, str, str]]
                ) -> Table:
    columns = ["slice", factor_title, "seeds", f"{ctx.metric_name} [95% CI]", "interval from",
               *[title for _, title, _ in extra]]
    rows = []
    for s in studies:
        for c in s.cells:
            rows.append([s.context, c.label, (str(c.seeds), c.seeds), est(c), c.interval,
                         *[num(c.mean_of(col), unit) for col, _, unit in extra]])
    return Table(f"{ctx.metric_name.capitalize()} per level, per slice", columns, rows)


def comparison_table(studies: list[SliceStudy], caption: str) -> Table:
    rows = [[s.context, c.a.label, c.b.label, *comparison_row(c)] for s in studies for c in s.comparisons]
    return Table(caption, ["slice", "level", "reference", *COMPARISON_COLUMNS], rows)


def tests_notes(tests: list[stats.TestResult]) -> list[str]:
    reasons = Counter(f"{t.test}: {t.reason}" for t in tests if not t.ran)
    return [f"{text}{f' (×{n})' if n > 1 else ''}" for text, n in reasons.items()]


# ------------------------------------------------------------------------------------------------ 1 methods

def section_methods(ctx: Context) -> Section:
    title, question = "Methods", "LoRA and its variants vs full fine-tuning vs the head-only baseline"
    if not ctx.metric:
        return no_quality(ctx, "methods", 1, title, question)
    base = ctx.ok[(ctx.ok["bits"] == "16") & ctx.ok[ctx.metric].notna()]
    slice_cols = ["model", "task", "n_train"]
    groups = [g for _, g in base.groupby(slice_cols, sort=False, dropna=False)
              if g["method"].nunique() >= 2]
    if not groups:
        methods = sorted(base["method"].dropna().unique())
        return Section("methods", 1, title, question,
                       f"Only {', '.join(methods) or 'no method'} ran at 16 bits on any one model, task and data size: "
                       "no methods to compare.")
    picked_on = ctx.select_metric.replace("_", " ") if ctx.select_metric else ""
    studies = []
    for group in groups:
        context = ctx.label(group.iloc[0], tuple(f for f in LABEL_ORDER if f not in slice_cols))
        cells = []
        for method in sort_levels("method_label", list(group["method"].unique())):
            rows = group[group["method"] == method]
            best_config = rows.groupby("config")[ctx.select_metric].mean().idxmax()
            chosen = rows[rows["config"] == best_config]
            label = ctx.label(chosen.iloc[0], ("model", "task", "n_train"))
            cells.append(make_cell(chosen, ctx.metric, ctx.ex.predictions, label))
        noise = ctx.noise_of(group.iloc[0])
        best = max(cells, key=lambda c: c.mean)
        comps = [compare(c, best, noise, ctx.margin) for c in cells if c is not best]
        studies.append(SliceStudy(context, "method", [c.label for c in cells], cells, [], comps, group.iloc[0],
                                  noise=noise))
    tests = stats.holm(study_tests(studies))
    main = main_study(studies)
    best = main.best
    gaps = gaps_sentence(sorted(main.comparisons, key=lambda c: -c.diff))
    finding = (f"On {ctx.where(main.row, main.context)}, {best.label} scores best ({ctx.metric_name} "
               f"{q(best.mean)}{ci(best.lo, best.hi)})" + (f"; {gaps}" if gaps else "") + ".")
    method_rows = sort_levels("method_label", sorted({str(c.rows.iloc[0]["method"]) for s in studies for c in s.cells}))
    chart = forest_chart(studies, "Best configuration per method", method_rows, lambda c: c.mean,
                         f"{ctx.metric_name} (95% CI)", row_of=lambda c: str(c.rows.iloc[0]["method"]))
    table = Table(f"Best configuration per method (picked on {picked_on}), against the best method of its slice",
                  ["slice", "configuration", "seeds", f"{ctx.metric_name} [95% CI]", "macro F1", "trainable params",
                   "peak GiB", "train s", *COMPARISON_COLUMNS], [])
    for s in studies:
        for c in s.cells:
            comp = next((x for x in s.comparisons if x.a is c), None)
            table.rows.append([s.context, c.label, (str(c.seeds), c.seeds), est(c), num(c.mean_of("macro_f1")),
                               num(c.mean_of("trainable_params")), num(c.mean_of("peak_memory_gib")),
                               num(c.mean_of("train_seconds")),
                               *(comparison_row(comp) if comp else ["reference", "", "", "", ""])])
    notes = tests_notes(tests)
    if ctx.select_metric == ctx.metric:
        notes.append(f"No validation scores: the best configuration per method was picked on test {ctx.metric_name}, "
                     "which flatters every method a little.")
    return Section("methods", 1, title, question, finding, chart, [table], tests, notes, {"studies": studies})


# ------------------------------------------------------------------------------------------------ 2 rank

def section_rank(ctx: Context) -> Section:
    title, question = "Rank", "How much does the LoRA rank matter, and where does quality plateau?"
    if not ctx.metric:
        return no_quality(ctx, "rank", 2, title, question)
    studies = study_factor(ctx, "rank", ordered=True)
    anovas, heat = [], ""
    adapters = ctx.ok[ctx.ok["rank"].notna() & ctx.ok[ctx.metric].notna()]
    grids = [g for g in (groups_by(adapters, ("rank", "n_train")) if len(adapters) else [])
             if g["rank"].nunique() >= 2 and g["n_train"].nunique() >= 2]
    for g in grids:
        anovas += stats.anova_two_way(g, ctx.metric, "rank", "n_train", ctx.label(g.iloc[0], ("rank", "n_train")))
    if grids:
        g = max(grids, key=len)
        means = g.groupby(["n_train", "rank"])[ctx.metric].mean()
        heat = svg.heatmap(sorted(g["n_train"].unique()), sorted(g["rank"].unique()),
                           {(n, r): v for (n, r), v in means.items()}, "training examples", "rank",
                           f"Rank × data size · {ctx.label(g.iloc[0], ('rank', 'n_train'))}",
                           y_names={r: f"r{r:g}" for r in g["rank"].unique()})
    tests = stats.holm(study_tests(studies) + anovas)
    if not studies:
        return Section("rank", 2, title, question, nothing_to_compare(adapters["rank"], "rank", "rank effect"))
    main = main_study(studies)
    effect = next((t for t in main.tests if t.test == "Kruskal-Wallis"), None)
    anova_rank = [t for t in anovas if t.ran and t.subject.endswith(": rank")]
    if anova_rank:
        effect = anova_rank[0]
    verdict = ""
    if effect is not None and effect.ran:
        verdict = (f"; the rank effect is {'significant' if effect.significant else 'not significant'} "
                   f"({effect.test} {stats.describe_p(effect)}, {effect.effect_name} {effect.effect:.2f})")
    finding = (f"For {ctx.where(main.row, main.context)}, {ctx.metric_name} "
               f"{plateau_phrase(main, lambda r: f'r{r:g}')}{verdict}.")
    chart = line_chart(studies, ctx.metric_name, "Quality by rank", "rank (log scale)", noise_band(studies)) + heat
    plateau_table = Table("Practical plateau: smallest rank within 99% of the best",
                          ["slice", "plateau rank", "95% interval", "best rank", "best", "plateau vs best",
                           "equivalence (±1% of best)"],
                          [[s.context, f"r{s.plateau.level:g}", interval_text(s.plateau, lambda r: f"r{r:g}"),
                            f"r{s.plateau.best_level:g}", q(s.plateau.best),
                            diff_cell(s.plateau_check) if s.plateau_check else "same level",
                            equivalence_cell(s.plateau_check)] for s in studies])
    tables = [plateau_table, level_table(studies, ctx, "rank", [("trainable_params", "trainable params", ""),
                                                                ("peak_memory_gib", "peak", "GiB"),
                                                                ("train_seconds", "train", "s")])]
    return Section("rank", 2, title, question, finding, chart, tables, tests, tests_notes(tests),
                   {"studies": studies, "anova": anovas})


# ------------------------------------------------------------------------------------------------ 3 targets

def section_targets(ctx: Context) -> Section:
    title, question = "Target modules", "Which modules should the adapter wrap?"
    if not ctx.metric:
        return no_quality(ctx, "targets", 3, title, question)
    studies = study_factor(ctx, "targets", ordered=False)
    tests = stats.holm(study_tests(studies))
    if not studies:
        return Section("targets", 3, title, question,
                       nothing_to_compare(ctx.ok["targets"], "target-module set", "comparison of target modules"))
    main = main_study(studies)
    best = main.best
    gaps = gaps_sentence(main.comparisons)
    params = best.mean_of("trainable_params")
    finding = (f"For {ctx.where(main.row, main.context)}, adapting {best.label} scores best ({ctx.metric_name} "
               f"{q(best.mean)}{ci(best.lo, best.hi)}"
               + (f", {num(params)[0]} trainable parameters" if math.isfinite(params) else "") + f"); {gaps}.")
    rows = sort_levels("targets", sorted({lv for s in studies for lv in s.levels}))
    chart = forest_chart(studies, "Quality by target modules", rows, lambda c: c.mean,
                         f"{ctx.metric_name} (95% CI)")
    tables = [level_table(studies, ctx, "targets", [("trainable_params", "trainable params", ""),
                                                    ("peak_memory_gib", "peak", "GiB"),
                                                    ("train_seconds", "train", "s")]),
              comparison_table(studies, "Each target set against the best of its slice")]
    return Section("targets", 3, title, question, finding, chart, tables, tests, tests_notes(tests),
                   {"studies": studies})


# ------------------------------------------------------------------------------------------------ 4 quantization

def cost_twins(ctx: Context) -> list[tuple[str, str, dict[str, float]]]:
    """(slice, bits, cost ratios against the 16-bit twin) for every quantized configuration that has one;
    costs need no quality metric, so weightless shapes get them too."""
    rows = ctx.ok
    out = []
    for group in groups_by(rows, ("bits",)) if len(rows) else []:
        ref = group[group["bits"] == "16"]
        if ref.empty or group["bits"].nunique() < 2:
            continue
        context = ctx.label(group.iloc[0], ("bits",), "method")
        for bits, sub in group[group["bits"] != "16"].groupby("bits"):
            out.append((context, str(bits), {col: sub[col].mean() / ref[col].mean() if ref[col].mean() else math.nan
                                             for col, _, _ in COSTS}))
    return out


def section_quantization(ctx: Context) -> Section:
    title, question = "Quantization", "What does a quantized base cost in quality, and what does it save?"
    quantized = ctx.ok[ctx.ok["bits"] != "16"]
    if quantized.empty:
        return Section("quantization", 4, title, question,
                       "No quantized experiments in these runs (16-bit only): nothing to compare.")
    twins = cost_twins(ctx)
    if not twins:
        return Section("quantization", 4, title, question,
                       f"{len(quantized)} quantized experiments ran, but none has a 16-bit twin with every other "
                       "factor equal: no like-for-like comparison.")
    studies = study_factor(ctx, "bits", ordered=False, reference="16") if ctx.metric else []
    tests = stats.holm(study_tests(studies))
    ratios = Table("Cost against the 16-bit twin (ratio of means over seeds)",
                   ["slice", "precision", *[f"{name.split(' (')[0]} ratio" for _, name, _ in COSTS]],
                   [[context, level_name("bits", bits), *[num(r[col], "×") for col, _, _ in COSTS]]
                    for context, bits, r in twins])
    context, bits, r0 = twins[0]
    quality = "no quality metric recorded"
    if studies:
        s0 = main_study(studies)
        c0 = s0.comparisons[0]
        context, bits = s0.context, s0.levels[s0.cells.index(c0.a)]
        r0 = next(r for c, b, r in twins if c == context and b == bits)
        eq = c0.equivalence
        quality = f"{ctx.metric_name} changes by {signed(c0.diff)}{ci(c0.lo, c0.hi)}"
        if eq is not None and eq.shown:
            quality += f", equivalent within ±{eq.margin:g}"
        elif c0.within_noise:
            quality += f", inside the seed-to-seed noise (equivalence within ±{ctx.margin:g} not shown)"
        elif c0.test.ran:
            quality += f" ({c0.test.test} {stats.describe_p(c0.test)})"
    costs = ", ".join(f"{name.split(' (')[0]} ×{r0[col]:.2f}" for col, name, _ in COSTS if math.isfinite(r0[col]))
    where = ctx.where(quantized.iloc[0], context)
    finding = (f"For {where}, {level_name('bits', bits)} against 16-bit: {quality}; cost ratios "
               f"{costs or 'not measured'}.")
    levels = sort_levels("bits", sorted(set(ctx.ok["bits"])))
    rows = [level_name("bits", b) for b in levels]
    chart, tables = "", [ratios]
    if studies:
        chart = (forest_chart(studies, "Quality by base precision", rows, lambda c: c.mean,
                              f"{ctx.metric_name} (95% CI)")
                 + forest_chart(studies, "Peak memory by base precision", rows,
                                lambda c: c.mean_of("peak_memory_gib"), "peak memory (GiB)", with_ci=False))
        tables = [comparison_table(studies, "Quality against the 16-bit twin"), ratios,
                  level_table(studies, ctx, "precision", [(col, name.split(" (")[0], unit)
                                                          for col, name, unit in COSTS])]
    else:
        series = [(f"{c} · {level_name('bits', b)}", {"peak memory ratio": svg.Point(r["peak_memory_gib"], 0)})
                  for c, b, r in twins if math.isfinite(r["peak_memory_gib"])]
        chart = svg.dot_chart(["peak memory ratio"], series, "peak memory against 16-bit (×)",
                              "Peak memory of the quantized twin")
    return Section("quantization", 4, title, question, finding, chart, tables, tests, tests_notes(tests),
                   {"studies": studies, "twins": twins})


# ------------------------------------------------------------------------------------------------ 5 data size

def section_size(ctx: Context) -> Section:
    title, question = "Training-set size", "How much labelled data is enough, per method?"
    if not ctx.metric:
        return no_quality(ctx, "size", 5, title, question)
    studies = study_factor(ctx, "n_train", ordered=True)
    tests = stats.holm(study_tests(studies))
    if not studies:
        return Section("size", 5, title, question,
                       nothing_to_compare(ctx.ok["n_train"], "training-set size", "learning curve"))
    main = main_study(studies)
    first, last = main.cells[0], main.cells[-1]
    finding = (f"For {ctx.where(main.row, main.context)}, {ctx.metric_name} goes from {q(first.mean)} at "
               f"{main.levels[0]:g} to {q(last.mean)} at {main.levels[-1]:g} training examples and "
               f"{plateau_phrase(main, lambda n: f'n={n:g}')}.")
    chart = line_chart(studies, ctx.metric_name, "Learning curves", "training examples (log scale)",
                       noise_band(studies), limit=10)
    plateau_table = Table("Practical plateau: smallest training set within 99% of the best",
                          ["curve", "plateau n", "95% interval", "best n", "best", "equivalence (±1% of best)"],
                          [[s.context, f"{s.plateau.level:g}", interval_text(s.plateau, lambda n: f"{n:g}"),
                            f"{s.plateau.best_level:g}", q(s.plateau.best),
                            equivalence_cell(s.plateau_check) if s.plateau_check else "same level"] for s in studies])
    tables = [plateau_table, level_table(studies, ctx, "training examples", [("train_seconds", "train", "s"),
                                                                             ("peak_memory_gib", "peak", "GiB")])]
    return Section("size", 5, title, question, finding, chart, tables, tests, tests_notes(tests),
                   {"studies": studies})


# ------------------------------------------------------------------------------------------------ 6 Pareto

def config_points(ctx: Context, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: means over seeds of quality and costs."""
    cols = [c for c in (ctx.metric, "peak_memory_gib", "train_seconds", "latency_p95_ms", "trainable_params",
                        "rank", "n_train") if c]
    if rows.empty:
        return pd.DataFrame(columns=["config", *cols, "label", "method_label", "bits", "model", "task", "seeds"])
    agg = rows.groupby("config")[cols].mean()
    first = rows.groupby("config")[["label", "method_label", "bits", "model", "task"]].first()
    seeds = rows.groupby("config").size().rename("seeds")
    return agg.join(first).join(seeds).reset_index()


def section_pareto(ctx: Context) -> Section:
    title, question = "Quality vs resources", "Which configurations are worth their memory, time and latency?"
    rows = ctx.ok[ctx.ok[ctx.metric].notna()] if ctx.metric else ctx.ok.iloc[0:0]
    if rows.empty:
        return costs_only(ctx, title, question)
    device = rows["device"].fillna(NO_DEVICE)
    groups = sorted(rows.groupby([rows["task"].fillna("task not recorded"), device]),
                    key=lambda kv: -kv[1]["config"].nunique())
    (task, dev), main_rows = groups[0]
    points = config_points(ctx, main_rows)
    costs = [(col, name, unit) for col, name, unit in COSTS if points[col].notna().any()]
    fronts = {col: pareto.frontier(points[ctx.metric].to_numpy(), points[col].to_numpy()) for col, _, _ in costs}
    on_any = np.logical_or.reduce(list(fronts.values())) if fronts else np.zeros(len(points), bool)
    numbered = points[on_any].sort_values(ctx.metric, ascending=False)
    number = {config: i + 1 for i, config in enumerate(numbered["config"])}
    charts = []
    for col, name, unit in costs:
        pts = [svg.ScatterPoint(r[col], r[ctx.metric], str(number.get(r["config"], "")), r["method_label"], bool(m),
                                f"{r['label']}: {ctx.metric_name} {q(r[ctx.metric])}, {r[col]:.4g} {unit}")
               for (_, r), m in zip(points.iterrows(), fronts[col]) if pd.notna(r[col])]
        charts.append(svg.pareto_chart(pts, name, ctx.metric_name, f"{ctx.metric_name} vs {name.split(' (')[0]}",
                                       log_x=True, width=540))
    front_table = Table(f"Pareto-optimal configurations (the numbers in the charts), {task}"
                        + (f" on {dev}" if dev != NO_DEVICE else ""),
                        ["#", "configuration", "seeds", ctx.metric_name, *[n for _, n, _ in costs],
                         "frontier of"],
                        [[(str(number[r["config"]]), number[r["config"]]), r["label"], (str(r["seeds"]), r["seeds"]),
                          num(r[ctx.metric]), *[num(r[col], unit, 4) for col, _, unit in costs],
                          ", ".join(COST_WORDS[col] for col, _, _ in costs if fronts[col][points.index.get_loc(i)])]
                         for i, r in numbered.iterrows()])
    tables = [front_table]
    budget_rows, previous = [], None
    for limit in pareto.memory_budgets(points["peak_memory_gib"]):
        best = pareto.best_under(points, "peak_memory_gib", limit, ctx.metric)
        if best is not None and best["config"] != previous:  # a larger budget that buys nothing better is left out
            previous = best["config"]
            budget_rows.append([(f"≤ {limit:g} GiB", limit), best["label"], num(best[ctx.metric]),
                                num(best["peak_memory_gib"], "GiB"), num(best["train_seconds"], "s")])
    if budget_rows:
        tables.insert(0, Table("Best configuration under a memory budget",
                               ["budget", "configuration", ctx.metric_name, "peak", "train"], budget_rows))
    spearman = spearman_matrix(ctx, points)
    tests = stats.holm([t for row in spearman for t in row[1:]])
    if any(t.ran for row in spearman for t in row[1:]):
        cols = [t.subject.split(" ~ ")[1] for t in spearman[0][1:]]
        tables.append(Table("Spearman correlations over configurations (ρ, Holm-corrected p)", ["factor", *cols],
                            [[row[0], *[(f"ρ={t.statistic:+.2f} ({stats.fmt_p(t.p_holm)})", t.statistic) if t.ran
                                        else ("–", math.nan, t.reason) for t in row[1:]]]
                             for row in spearman if any(t.ran for t in row[1:])]))
    best = points.loc[points[ctx.metric].idxmax()]
    tolerance = max(ctx.noise_of(main_rows.iloc[0]) or 0.0, ctx.margin)
    near = points[points[ctx.metric] >= best[ctx.metric] - tolerance]
    finding = f"On {task}" + (f", measured on {dev}, " if dev != NO_DEVICE else ", ")
    if "peak_memory_gib" in fronts:
        finding += (f"{int(fronts['peak_memory_gib'].sum())} of {len(points)} configurations are Pareto-optimal "
                    "on peak memory")
    else:
        finding += f"no peak memory was recorded for the {len(points)} configurations"
    if near["peak_memory_gib"].notna().any() and pd.notna(best["peak_memory_gib"]):
        cheap = near.loc[near["peak_memory_gib"].idxmin()]
        if cheap["config"] == best["config"]:
            finding += (f"; the best, {best['label']} ({q(best[ctx.metric])}), is also the leanest within "
                        f"{tolerance:.3f} of it ({best['peak_memory_gib']:.2f} GiB)")
        else:
            finding += (f"; {cheap['label']} comes within {tolerance:.3f} of the best {ctx.metric_name} "
                        f"({q(cheap[ctx.metric])} vs {q(best[ctx.metric])} for {best['label']}) at "
                        f"{cheap['peak_memory_gib']:.2f} GiB instead of {best['peak_memory_gib']:.2f} GiB")
    finding += "."
    notes = []
    if len(groups) > 1:
        notes.append(f"Shown: {task} on {dev}. Costs are compared only within one task and device; also present: "
                     + ", ".join(f"{t} on {d} ({g['config'].nunique()} configurations)" for (t, d), g in groups[1:]))
    if "process_peak_rss" in set(main_rows["peak_memory_kind"].dropna()):
        notes.append("Peak memory on CPU is the process's peak resident set size, not GPU memory.")
    return Section("pareto", 6, title, question, finding, "".join(charts),
                   tables, tests, notes + tests_notes(tests), {"points": points, "frontiers": fronts})


def costs_only(ctx: Context, title: str, question: str) -> Section:
    """Without a quality metric there is no frontier; the configurations by what they cost still help."""
    points = config_points(ctx, ctx.ok).sort_values("peak_memory_gib")
    costs = [(col, name, unit) for col, name, unit in COSTS if points[col].notna().any()]
    if not costs:
        return no_quality(ctx, "pareto", 6, title, question)
    leanest = [f"the {word} is {points.loc[points[col].idxmin(), 'label']} ({points[col].min():.3g} {unit})"
               for (col, _, unit), word in zip(costs, ("leanest", "fastest to train", "fastest to answer"))]
    table = Table("Configurations by cost (means over seeds)", ["configuration", "seeds", *[n for _, n, _ in costs]],
                  [[r["label"], (str(r["seeds"]), r["seeds"]), *[num(r[col], unit, 4) for col, _, unit in costs]]
                   for _, r in points.iterrows()])
    return Section("pareto", 6, title, question,
                   "No quality metric was recorded, so there is no Pareto frontier; " + ", ".join(leanest) + ".",
                   tables=[table])


def spearman_matrix(ctx: Context, points: pd.DataFrame) -> list[list[Any]]:
    """Factors (rank, data size, trainable parameters, bits) against quality and costs, over configurations."""
    points = points.assign(bits_per_weight=[float(str(b).split("-")[0]) for b in points["bits"]])
    factors = [("rank", "rank"), ("n_train", "training examples"), ("trainable_params", "trainable params"),
               ("bits_per_weight", "bits per weight")]
    metrics = [(ctx.metric, ctx.metric_name), *[(c, n.split(" (")[0]) for c, n, _ in COSTS]]
    metrics = [(c, n) for c, n in metrics if points[c].notna().sum() >= 3]
    out = []
    for col, name in factors:
        if points[col].nunique() < 2 or not metrics:
            continue
        out.append([name, *[stats.spearman(points[col], points[m], f"{name} ~ {mname}") for m, mname in metrics]])
    return out


# ------------------------------------------------------------------------------------------------ 7 budgets, provenance

PROVENANCE_SKIP = ("run", "source", "started", "finished", "records", "failed", "shard", "workers")
KEY_VERSIONS = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "numpy", "pandas")


def section_runs(ctx: Context) -> Section:
    title, question = "Budgets, failures and provenance", "What passed, what failed and why, and where it ran"
    frame = ctx.ex.frame
    total, n_ok = len(frame), int((frame["status"] == "ok").sum())
    failed = frame[frame["status"] == "failed"]
    skipped = frame[~frame["status"].isin(["ok", "failed"])]
    over = frame[frame["over_budget"] == True]  # noqa: E712 (column holds True/False/None)
    budget_cols = sorted(c for c in frame.columns if c.startswith("budget_"))
    budget_rows, chart_rows, counts = [], ["experiments"], {"experiments": [n_ok, len(failed), len(skipped)]}
    for col in budget_cols:
        name = col.removeprefix("budget_")
        values = frame[col].value_counts()
        limits = sorted(frame[f"limit_{name}"].dropna().unique()) if f"limit_{name}" in frame else []
        unit = BUDGETS.get(name, ("", "", ""))[2]
        budget_rows.append([name, ", ".join(f"{v:g}{unit}" for v in limits), (str(int(values.sum())), values.sum()),
                            (str(values.get("pass", 0)), values.get("pass", 0)),
                            (str(values.get("fail", 0)), values.get("fail", 0)),
                            (str(values.get("unmeasured", 0)), values.get("unmeasured", 0))])
        chart_rows.append(name)
        counts[name] = [int(values.get("pass", 0)), int(values.get("fail", 0)), int(values.get("unmeasured", 0))]
    chart = svg.stacked_bars(chart_rows, [("ok / passed", "#59a14f"), ("failed", "#e15759"),
                                          ("skipped / not measured", "#c9ccd1")], counts, "Experiments and budgets")
    reasons = Counter(str(r).split("\n")[0][:80] for r in failed["reason"].fillna("no reason recorded"))
    skip_reasons = Counter(str(r).split("\n")[0][:80] for r in skipped["reason"].fillna("no reason recorded"))
    runs = ctx.ex.runs
    differing = differing_fields(runs)
    finding = f"{n_ok} of {total} experiments finished"
    finding += (f"; {len(failed)} failed ({'; '.join(f'{n}× {r}' for r, n in reasons.most_common(2))})"
                if len(failed) else ", none failed")
    if len(skipped):
        finding += f"; {len(skipped)} skipped ({'; '.join(f'{n}× {r}' for r, n in skip_reasons.most_common(2))})"
    if budget_cols:
        by_budget = Counter(c.removeprefix("budget_") for c in budget_cols for x in frame[c] if x == "fail")
        finding += (f"; {len(over)} over budget (most often {by_budget.most_common(1)[0][0]})" if len(over)
                    else "; all within budget")
    else:
        finding += "; no budgets recorded"
    if len(runs) > 1:
        finding += (f"; the {len(runs)} merged runs differ in {', '.join(differing[:4])}"
                    + (" and more" if len(differing) > 4 else "") if differing
                    else f"; the {len(runs)} merged runs share versions, devices and commits")
    finding += "."
    tables = []
    if budget_rows:
        tables.append(Table("Budgets", ["budget", "limit", "checked", "passed", "failed", "not measured"], budget_rows))
    if len(over):
        tables.append(Table("Over budget (records kept)", ["experiment", "run", "violations"],
                            [[r["test_id"], r["run"], r["violations"] or ""] for _, r in over.iterrows()]))
    if len(failed) or len(skipped):
        tables.append(Table("Failed and skipped experiments", ["experiment", "run", "status", "reason"],
                            [[r["test_id"], r["run"], r["status"], str(r["reason"] or "no reason recorded")]
                             for _, r in pd.concat([failed, skipped]).iterrows()]))
    columns = ["run", "source", "grid", "host", "shard", "workers", "devices", "commits", "started", "finished",
               "records", "failed"]
    present = [c for c in columns if any(run.get(c) not in (None, "") for run in runs)]
    tables.append(Table("Runs", present, [[str(run.get(c, "") if run.get(c) is not None else "–") for c in present]
                                          for run in runs]))
    if len(runs) > 1 and differing:
        tables.append(Table("What differs between the merged runs", ["field", *[r["run"] for r in runs]],
                            [[f, *[str(r.get(f, "–")) for r in runs]] for f in differing]))
    notes = list(ctx.ex.notes)
    if ctx.duplicates:
        notes.append(f"{ctx.duplicates} records repeat a configuration and seed already present; the latest one "
                     "of each is analysed.")
    if len(runs) == 1:
        notes.append("One run: no differences between runs to show.")
    if any(r.get("shard") or r.get("workers") for r in runs):
        notes.append("Where the runs ran: " + "; ".join(where_ran(r) for r in runs) + ".")
    packages = [k for k in ("python", *[f"versions.{p}" for p in KEY_VERSIONS]) if any(r.get(k) for r in runs)]
    if packages:
        tables.append(Table("Versions per run", ["run", *[k.removeprefix("versions.") for k in packages]],
                            [[r["run"], *[str(r.get(k) or "–") for k in packages]] for r in runs]))
    return Section("runs", 7, title, question, finding, chart, tables, [], notes,
                   {"failed": len(failed), "over_budget": len(over), "differing": differing})


def where_ran(run: dict[str, Any]) -> str:
    """`run A: shard 1/2 on node17 with 2 pytest-xdist workers, 9 experiments`."""
    text = f"run {run['run']}: " + (f"shard {run['shard']} on " if run.get("shard") else "on ") + str(run.get("host") or "?")
    if run.get("workers"):
        text += f" with {run['workers']} pytest-xdist workers"
    return text + f", {run.get('records', 0)} experiments"


def differing_fields(runs: list[dict[str, Any]]) -> list[str]:
    """Provenance fields (versions, host, devices, commits, platform) that are not the same in every run."""
    keys = sorted({k for r in runs for k in r if k not in PROVENANCE_SKIP})
    return [k for k in keys if len({str(r.get(k)) for r in runs}) > 1]


def section_performance(ctx: Context) -> Section:
    from .performance import section_performance as build

    return build(ctx)


SECTIONS = (section_methods, section_rank, section_targets, section_quantization, section_size, section_pareto,
            section_runs, section_performance)


def build_sections(ex: Experiments) -> tuple[Context, list[Section]]:
    ctx = build_context(ex)
    return ctx, [build(ctx) for build in SECTIONS]
