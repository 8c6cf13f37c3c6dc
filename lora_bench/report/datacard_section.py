"""The report's data cards: one section per task the experiments touch, for the tokenizers of the
models that ran on it (see `lora_bench.datacard`). A card that cannot be computed (a hub dataset
offline, an imported table whose task is no task file here) becomes a short note; it never stops the
report."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .load import Experiments
from .sections import Table

QUESTION = "What were the models trained and tested on, and what is wrong with it?"


@dataclass
class DataCardView:
    id: str
    title: str
    summary: str
    question: str = QUESTION
    warnings: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    examples: list[tuple[str, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    card: dict[str, Any] | None = None


def build_datacards(ex: Experiments) -> list[DataCardView]:
    """One view per task in the experiments (models: those of the task's records; max_length: theirs)."""
    frame = ex.frame
    if frame.empty or "task" not in frame:
        return []
    task_files: dict[str, str] | None = None
    views = []
    for task in sorted(frame["task"].dropna().astype(str).unique()):
        rows = frame[frame["task"].astype(str) == task]
        models = list(dict.fromkeys(rows["model"].dropna().astype(str)))
        lengths: dict[str, list[int]] = {}
        if "max_length" in rows:
            for model, group in rows.groupby(rows["model"].astype(str)):
                lengths[model] = sorted({int(v) for v in group["max_length"].dropna()})
        where = _resolve_task(task)
        if where is None:
            task_files = _recorded_task_files(ex) if task_files is None else task_files
            where = task_files.get(task)
        slug = re.sub(r"[^a-z0-9]+", "-", Path(task).stem.lower()).strip("-") or "task"
        title = f"Data: {Path(task).stem if task.endswith(('.yaml', '.yml')) else task}"
        if where is None:
            views.append(DataCardView(f"data-{slug}", title, f"No data card: {task!r} is no task name or task file "
                                                             "on this machine, and no record names its file."))
            continue
        try:
            from ..datacard import data_card

            card = data_card(where, models, max_lengths=lengths)
        except Exception as exc:  # offline hub data, a moved file ...
            views.append(DataCardView(f"data-{slug}", title, "No data card: the task's data could not be loaded "
                                      f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})."))
            continue
        view = card_view(card, f"data-{slug}", title)
        hashes = set(rows["test_hash"].dropna().astype(str)) if "test_hash" in rows else set()
        if hashes and hashes != {card["test_hash"]}:
            view.notes.append("Some of these experiments were tested on a different test set than the task gives now "
                              "(its hash differs): the data, its cleaning or its split changed since they ran.")
        views.append(view)
    return views


def _resolve_task(task: str) -> str | None:
    from ..data import find_task
    from ..schema import SpecError

    try:
        return str(find_task(task).path)
    except (SpecError, OSError):
        return None


def _recorded_task_files(ex: Experiments) -> dict[str, str]:
    """spec task -> the task file its records name (meta_info.data.task_file), for tasks given by a path
    relative to where the bench ran."""
    found: dict[str, str] = {}
    for run in ex.runs:
        records = Path(str(run.get("source", ""))) / "records"
        if not records.is_dir():
            continue
        for path in sorted(records.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            task = ((record.get("run_info") or {}).get("spec") or {}).get("task")
            file = ((record.get("meta_info") or {}).get("data") or {}).get("task_file")
            if task and file and Path(file).exists():
                found.setdefault(str(task), file)
    return found


def _n(value: Any) -> tuple[str, float] | str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ("–", float("nan"))
    return (f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}", float(value))


def card_view(card: dict[str, Any], view_id: str, title: str) -> DataCardView:
    from ..datacard import ALWAYS_SHOWN, CLASS_COLUMNS, summary_sentence

    view = DataCardView(view_id, title, summary_sentence(card), warnings=list(card["warnings"]), card=card)
    columns = [(k, h) for k, h in CLASS_COLUMNS
               if k in ALWAYS_SHOWN or any(c.get(k) for c in card["per_class"])]
    view.tables.append(Table("Rows per class: before and after cleaning, removed, split; max n = the largest n per "
                             "class it allows",
                             [h for _, h in columns],
                             [[c["label"] if k == "label" else _n(c.get(k)) for k, _ in columns]
                              for c in card["per_class"]]))
    leak = card["leakage"]
    view.tables.append(Table(f"Leakage between splits: exact (same normalised text) and near (token-set Jaccard >= "
                             f"{leak['threshold']:g})", ["split", "in", "exact", "near", "of"],
                             [[pair.split("-")[0], pair.split("-")[1], _n(c["exact"]), _n(c["near"]), _n(c["of"])]
                              for pair, c in leak["pairs"].items()]))
    lengths = card["lengths"]
    length_rows = [["characters", "", _n(lengths["chars"]["median"]), _n(lengths["chars"]["p95"]),
                    _n(lengths["chars"]["max"])],
                   ["whitespace words", "", _n(lengths["words"]["median"]), _n(lengths["words"]["p95"]),
                    _n(lengths["words"]["max"])]]
    ok = [t for t in card["tokenizers"] if t["status"] == "ok"]
    for t in ok:
        length_rows.append([f"tokens: {t['model']}", t["tokenizer"], _n(t["tokens"]["median"]), _n(t["tokens"]["p95"]),
                            _n(t["tokens"]["max"])])
    view.tables.append(Table("Text length (tokens as the model sees them, special tokens included)",
                             ["measure", "tokenizer", "median", "p95", "max"], length_rows))
    if ok:
        limits = sorted({m for t in ok for m in t["truncated"]}, key=int)
        view.tables.append(Table(
            "Tokenizers: unknown-token share, fertility (tokens per whitespace word), characters per token",
            ["model", "unknown share", "fertility", "chars/token", *[f"cut at max_length {m}" for m in limits],
             "reads the text"],
            [[t["model"], (f"{t['unknown_share']:.2%}", t["unknown_share"]), _n(t["fertility"]),
              _n(t["chars_per_token"]),
              *[(f"{t['truncated'][m]:.0%}", t["truncated"][m]) if m in t["truncated"] else ("–", float("nan"))
                for m in limits],
              "NO" if t["cannot_read"] else "yes"] for t in ok]))
    for t in card["tokenizers"]:
        if t.get("note"):
            view.notes.append(f"{t['model']}: {t['note']}")
        if t["status"] == "ok" and t.get("unknown_note", "").startswith("byte-level"):
            view.notes.append(f"{t['model']}: {t['unknown_note']}; fertility and characters per token show how well "
                              "it reads")
    scripts = ", ".join(f"{k.title()} {v:.0%}" for k, v in lengths["scripts"].items())
    if scripts:
        view.notes.append(f"Letters by writing system: {scripts}.")
    cleaning = card["cleaning"]
    for what, n in (cleaning.get("source_dropped") or {}).items():
        view.notes.append(f"The source dropped {n:,} rows: {what}.")
    if cleaning.get("label_map"):
        view.notes.append("label_map: " + ", ".join(f"{k} → {v}" for k, v in cleaning["label_map"].items())
                          + ("; rows with other labels dropped: " + ", ".join(
                              f"{k} ×{v}" for k, v in cleaning["unmapped_labels"].items())
                             if cleaning.get("unmapped_labels") else ""))
    for rule, n in (cleaning.get("dropped") or {}).items():
        view.notes.append(f"Cleaning rule {rule}: {n:,} rows dropped.")
    if cleaning.get("texts_stripped"):
        view.notes.append(f"Cleaning rule strip: {cleaning['texts_stripped']:,} texts changed, e.g. "
                          + "; ".join(f"“{a}” → “{b}”"
                                      for a, b in (cleaning.get("examples") or {}).get("strip", [])[:2]))
    if cleaning.get("balance") not in (None, "none"):
        view.notes.append(f"Balanced by {cleaning['balance']}: every class cut to the smallest, seeded by the split "
                          "seed.")
    if card["duplicate_examples"]:
        view.notes.append("Most repeated texts: " + "; ".join(f"“{_short(t)}” ×{n}" for t, n in
                                                              card["duplicate_examples"][:3]) + ".")
    for ex_ in leak["examples"][:3]:
        view.notes.append(f"Near duplicate: {ex_['split']} “{_short(ex_['text'])}” ~ {ex_['other_split']} "
                          f"“{_short(ex_['other'])}” (Jaccard {ex_['similarity']:.2f}).")
    view.examples = [(label, texts) for label, texts in card["examples"].items()]
    return view


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
