"""The report as files: a self-contained `index.html` (CSS, JS and SVG inline, nothing fetched) and
`results.csv` with one row per experiment."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from .datacard_section import DataCardView, build_datacards
from .load import Experiments, import_csv, load_runs
from .sections import Table, build_sections
from .study import MARGIN, PLATEAU, Context
from .stats import BOOTSTRAP_ROUNDS, fmt_p

TEMPLATES = Path(__file__).with_name("templates")

# (column, header, unit-or-format) for the table of all experiments; columns empty everywhere are dropped.
EXPERIMENT_COLUMNS = (("test_id", "experiment", None), ("run", "run", None), ("status", "status", None),
                      ("model", "model", None), ("task", "task", None), ("method_label", "method", None),
                      ("rank", "rank", "int"), ("targets", "targets", None), ("n", "n/class", "int"),
                      ("n_train", "n train", "int"), ("seed", "seed", "int"), ("lr", "lr", "g"),
                      ("batch_size", "batch", "int"), ("epochs", "epochs", "int"), ("accuracy", "accuracy", "q"),
                      ("macro_f1", "macro F1", "q"), ("val_accuracy", "val acc", "q"), ("loss", "loss", "q"),
                      ("recipe", "recipe", None), ("peak_memory_gib", "peak GiB", "g"),
                      ("predicted_peak_gib", "predicted GiB", "g"), ("train_seconds", "train s", "g"),
                      ("pipeline_seconds", "train+eval s", "g"), ("step_ms", "step ms", "g"), ("mfu", "MFU", "q"),
                      ("latency_p95_ms", "p95 ms", "g"), ("trainable_params", "trainable", "int"),
                      ("adapter_mb", "adapter MB", "g"), ("device", "device", None), ("ran_on", "ran on", None),
                      ("over_budget", "over budget", None), ("violations", "budget violations", None),
                      ("reason", "failure", None))
CSV_DROP = ("config", "label")

METHOD_NOTES = (
    "Several seeds: the mean with a 95% t interval over seeds. One seed: a 95% percentile interval from "
    f"{BOOTSTRAP_ROUNDS} bootstrap resamples of the test examples (its stored predictions); other configurations "
    "are never taken as replicates.",
    "Comparisons: with four or more seeds a side, Mann-Whitney U (rank-biserial effect size, Hedges' g beside it); "
    "with fewer, McNemar's exact test on the paired test predictions of the shared seeds. Differences carry a Welch "
    "interval over seeds or a paired bootstrap interval.",
    "Across levels of a factor: Kruskal-Wallis (epsilon²) and Levene (ratio of seed SDs) need three seeds per level; "
    "Spearman needs five points and three distinct values; the two-way ANOVA rank × data size (partial η²) needs "
    "every combination, and two seeds in every cell for the interaction. A test that lacks its samples is not run, "
    "and the table says why.",
    "Holm's correction is applied over all tests of a section; 'significant' means Holm-adjusted p < 0.05.",
    f"'No effect' is claimed only by equivalence: TOST over seeds, or the 90% paired-bootstrap interval inside the "
    f"margin (±{MARGIN:g} {{metric}}). A non-significant p-value is never read as 'no effect'.",
    f"Plateau: the smallest rank (or training-set size) whose mean reaches {PLATEAU:.0%} of the best mean; its 95% "
    "interval comes from bootstrap replicates of every level (seeds or test examples resampled).",
    "Noise floor: the pooled seed-to-seed standard deviation of configurations run with two or more seeds; a "
    "difference smaller than it is flagged 'inside noise floor'.",
)


def render_report(run_dirs: list[Path], out_dir: Path) -> Path:
    """Render the report of one or more run folders (merged) into `out_dir`; returns index.html's path."""
    ex = load_runs([Path(d) for d in run_dirs])
    names = ", ".join(r["run"] for r in ex.runs)
    return write_report(ex, Path(out_dir), f"lora-bench report: {names}" if len(ex.runs) == 1
                        else f"lora-bench report: {len(ex.runs)} runs merged")


def render_imported(csv: Path, mapping: dict[str, str], out_dir: Path) -> Path:
    """Render the report of someone else's results table (see `load.import_csv`); returns index.html's path."""
    ex = import_csv(Path(csv), mapping)
    return write_report(ex, Path(out_dir), f"lora-bench report: {Path(csv).name} (imported)")


def write_report(ex: Experiments, out_dir: Path, title: str) -> Path:
    ctx, sections = build_sections(ex)
    for section in sections:
        section.tables = [_prune(t) for t in section.tables]
    datacards = _datacards(ex)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(
        enabled_extensions=("html", "j2"), default_for_string=True), trim_blocks=True, lstrip_blocks=True)
    env.filters["sortkey"] = _sortkey
    columns = [(c, h, f) for c, h, f in EXPERIMENT_COLUMNS if c in ex.frame and ex.frame[c].notna().any()]
    rows = [{"status": r["status"], "cells": [_format(r[c], f) for c, _, f in columns]}
            for _, r in ex.frame.sort_values(["status", "test_id"], ascending=[False, True]).iterrows()]
    html = env.get_template("report.html.j2").render(
        title=title, subtitle=_subtitle(ex), cards=_cards(ctx), sections=sections, datacards=datacards,
        method_notes=[n.replace("{metric}", ctx.metric_name) for n in METHOD_NOTES],
        experiment_columns=[h for _, h, _ in columns], experiment_rows=rows, fmt=_fmt, fmt_p=fmt_p,
        statuses=sorted(ex.frame["status"].dropna().unique()),
        footer=f"Generated by lora-bench on {dt.datetime.now().astimezone().isoformat(timespec='seconds')} from "
              + "; ".join(str(r.get("source", r["run"])) for r in ex.runs) + ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = ex.frame.drop(columns=[c for c in CSV_DROP if c in ex.frame])
    _write_text(out_dir / "results.csv", table.to_csv(index=False))
    if any(d.card for d in datacards):
        _write_text(out_dir / "datacards.json", json.dumps([d.card for d in datacards if d.card], indent=1,
                                                           ensure_ascii=False, default=str))
    index = out_dir / "index.html"
    _write_text(index, html)
    return index


def _datacards(ex: Experiments) -> list[DataCardView]:
    """The data card of every task (datacard_section); a failure here costs the cards, never the report."""
    try:
        return build_datacards(ex)
    except Exception as exc:
        return [DataCardView("data", "Data", f"No data cards: {type(exc).__name__}: {exc}.")]


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file so a reader never sees half a report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be opened and shared
    os.replace(tmp, path)


def _prune(table: Table) -> Table:
    """Drop the columns no row fills (an imported table without parameter counts, say)."""
    def empty(cell: Any) -> bool:
        return (cell[0] if isinstance(cell, tuple) else cell) in ("", "–", None)
    if not table.rows:
        return table
    keep = [i for i in range(len(table.columns)) if not all(empty(row[i]) for row in table.rows)]
    return Table(table.caption, [table.columns[i] for i in keep], [[row[i] for i in keep] for row in table.rows])


def _sortkey(value: Any) -> str:
    if value is None or isinstance(value, str):
        return ""
    v = float(value)
    return "" if math.isnan(v) else "1e308" if v == math.inf else "-1e308" if v == -math.inf else repr(v)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _format(value: Any, kind: str | None) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ("–", math.nan) if kind else ""
    if kind == "int":
        return (f"{value:,.0f}", float(value))
    if kind == "q":
        return (f"{value:.3f}", float(value))
    if kind == "g":
        return (f"{value:.4g}", float(value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _subtitle(ex: Experiments) -> str:
    frame = ex.frame
    parts = [f"{len(frame)} experiments from {len(ex.runs)} run{'s' if len(ex.runs) != 1 else ''}"]
    for col, word in (("model", "models"), ("task", "tasks")):
        values = sorted(frame[col].dropna().astype(str).unique())
        if values:
            parts.append(f"{word}: {', '.join(values)}")
    return " · ".join(parts)


def _cards(ctx: Context) -> list[tuple[str, str]]:
    frame = ctx.ex.frame
    skipped = int((~frame["status"].isin(["ok", "failed"])).sum())
    cards = [("experiments", str(len(frame))), ("finished", str(int((frame["status"] == "ok").sum()))),
             ("failed", str(int((frame["status"] == "failed").sum()))),
             ("over budget", str(int((frame["over_budget"] == True).sum()))),  # noqa: E712
             *([("skipped", str(skipped))] if skipped else []),
             ("configurations", str(ctx.ok["config"].nunique())),
             ("methods", ", ".join(sorted(ctx.ok["method_label"].dropna().unique())) or "–"),
             ("quality metric", ctx.metric_name if ctx.metric else "none recorded")]
    for (model, task), (sd, k) in sorted(ctx.noise.items()):
        if sd is not None:
            cards.append((f"noise floor {model} · {task} (SD over seeds, {k} configs)", f"{sd:.4f}"))
    if ctx.metric and not any(sd is not None for sd, _ in ctx.noise.values()):
        cards.append(("noise floor", "unknown: one seed per configuration"))
    devices = sorted(frame["device"].dropna().astype(str).unique())
    if devices:
        cards.append(("devices", ", ".join(devices)))
    return cards
