"""Task sources and the cleaning pipeline, each on small files written here: BBC headline + body,
VADER sentiment from a (fake) vaderSentiment source archive, hub datasets offline, user files with a
label mapping, cleaning rules and balancing."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from lora_bench import data
from lora_bench.grid import GridError, load_grid
from lora_bench.schema import SpecError

from .conftest import write_grid

TASKS = data.FIXTURES / "tasks"


def write_task(folder: Path, text: str, name: str = "task") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def counts(task: data.TaskData) -> dict[str, int]:
    everything = [e for p in task.train_pool.values() for e in p] + task.val + task.test
    return {task.labels[k]: v for k, v in sorted(Counter(e.label for e in everything).items())}


# ------------------------------------------------------------------------------------------------ BBC

def test_bbc_headline_and_body_cut_to_words():
    body = data.load_task("bbc-headline-body")
    headlines = data.load_task("bbc-topic")
    assert body.labels == headlines.labels and body.n_raw == 2225
    words = data.find_task("bbc-headline-body").source["body_words"]
    for ex in body.test[:50]:
        headline, _, text = ex.text.partition("\n")
        assert headline and 0 < len(text.split()) <= words
    every_headline = {e.text for e in headlines.test + headlines.val} | {
        e.text for pool in headlines.train_pool.values() for e in pool}
    assert sum(e.text.partition("\n")[0] in every_headline for e in body.test) > 0.9 * len(body.test)
    assert body.stats["duplicates_removed"] == 112          # whole articles repeated
    assert body.stats["near_duplicates_removed"] > 0        # lightly edited re-runs (clean.near_duplicates)
    assert body.max_n_per_class() >= 200


def test_bbc_body_words_is_configurable_and_checked(tmp_path):
    short = data.load_task(str(write_task(tmp_path, """\
        source: {kind: bbc, text: headline+body, body_words: 5}
        split: {test: 0.2, val: 0.05, seed: 0}
        """)))
    assert all(len(e.text.partition("\n")[2].split()) <= 5 for e in short.test)
    with pytest.raises(SpecError, match="task.source.body_words: 5 is not allowed; only with text: headline\\+body"):
        data.load_task(str(write_task(tmp_path, "source: {kind: bbc, body_words: 5}\n", "b")))
    with pytest.raises(SpecError, match="task.source.text: 'body' is not allowed; allowed: headline, headline\\+body"):
        data.load_task(str(write_task(tmp_path, "source: {kind: bbc, text: body}\n", "c")))


# ------------------------------------------------------------------------------------------------ VADER

SNIPPETS = [(1, 2.3, "A gorgeous, witty film."), (2, -3.1, "Dull and far too long."), (3, 0.2, "It is a film."),
            (4, -0.5, "Some scenes, some actors."), (5, 1.9, "Warm and funny throughout."),
            (6, -1.2, "The plot never lands."), (7, 0.51, "Mildly pleasant."), (8, -2.6, "A tedious mess.")]


def fake_vader_archive(folder: Path, rows=SNIPPETS, version: str = data.VADER_VERSION) -> Path:
    """The layout of the real sdist: the snippets sit in a tarball nested in additional_resources/."""
    text = "".join(f"{i}\t{s}\t{t}\n" for i, s, t in rows).encode()
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        info = tarfile.TarInfo("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"vaderSentiment-{version}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = inner.getvalue()
        info = tarfile.TarInfo(f"vaderSentiment-{version}/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return archive


def test_vader_snippets_from_the_cached_source_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LORA_BENCH_VADER", raising=False)
    fake_vader_archive(tmp_path / "cache" / "vader", SNIPPETS * 5 + [(9, 3.0, f"Great film number {i}.")
                                                                     for i in range(20)])
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the cached archive must be used"))
    task = data.load_task(str(write_task(tmp_path, """\
        source: {kind: vader, snippets: movie, neutral: 0.5}
        split: {test: 0.2, val: 0.1, seed: 0}
        """)))
    assert task.labels == ["negative", "positive"]
    assert counts(task) == {"negative": 3, "positive": 23}   # 8 distinct snippets, 2 neutral; 20 more positive
    assert task.stats["cleaning"]["source_dropped"] == {"neutral (mean score within ±0.5)": 10}
    assert task.stats["duplicates_removed"] == 24 and task.stats["rows_raw"] == 60
    strict = data.load_task(str(write_task(tmp_path, "source: {kind: vader, neutral: 2}\n", "strict")))
    assert counts(strict) == {"negative": 2, "positive": 21}


def test_vader_archive_path_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LORA_BENCH_VADER", str(fake_vader_archive(tmp_path / "elsewhere")))
    task = data.load_task(str(write_task(tmp_path, "source: {kind: vader, neutral: 0}\n", "env")))
    assert counts(task) == {"negative": 4, "positive": 4}


def test_vader_fetch_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LORA_BENCH_VADER", raising=False)
    calls = []

    def no_network(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version (no network)")

    monkeypatch.setattr(subprocess, "run", no_network)
    with pytest.raises(SpecError, match=r"pip download` could not fetch it \(ERROR: Could not find.*"
                                        r"LORA_BENCH_VADER"):
        data.load_task(str(write_task(tmp_path, "source: {kind: vader}\n", "offline")))
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "--no-binary" in calls[0]
    assert f"vaderSentiment=={data.VADER_VERSION}" in calls[0]


def test_vader_options_are_checked(tmp_path):
    with pytest.raises(SpecError, match="task.source.snippets: 'imdb' is not allowed; allowed: movie, amazon"):
        data.load_task(str(write_task(tmp_path, "source: {kind: vader, snippets: imdb}\n")))
    with pytest.raises(SpecError, match="task.source.neutral: -1 is not allowed"):
        data.load_task(str(write_task(tmp_path, "source: {kind: vader, neutral: -1}\n", "n")))


def test_the_data_tasks_grid_collects(tmp_path, monkeypatch):
    rows = [(i, (-1) ** i * (1 + i % 3), f"Snippet number {i} of a review") for i in range(200)]
    monkeypatch.setenv("LORA_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LORA_BENCH_VADER", str(fake_vader_archive(tmp_path / "fake", rows)))
    data._load_cached.cache_clear()          # the shipped task must read the fake archive here, and only here
    try:
        grid = load_grid("data-tasks")
    finally:
        data._load_cached.cache_clear()
    assert {(s.task, s.method) for s in grid.specs} == {(t, m) for t in ("vader-sentiment", "bbc-headline-body")
                                                        for m in ("head", "lora")}
    assert {s.max_length for s in grid.specs} == {160} and {s.n for s in grid.specs} == {50}


def test_the_shipped_vader_task_declares_a_loadable_source():
    task = data.find_task("vader-sentiment")
    assert task.source == {"kind": "vader", "snippets": "movie", "neutral": 0.5}


# ------------------------------------------------------------------------------------------------ hub

def test_hub_task_without_declared_size_fails_at_collection_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = write_task(tmp_path, """\
        name: my-hub-task
        source: {kind: hub, id: someone/no-such-dataset, text_column: text, label_column: label}
        """, "my-hub-task")
    grid = write_grid(tmp_path, f"""
        axes: {{model: minilm-l6, task: {task}, method: head, n: 50}}
        """)
    start = time.perf_counter()
    with pytest.raises(GridError) as info:
        load_grid(str(grid))
    assert time.perf_counter() - start < 30     # no network retries
    message = str(info.value)
    assert "task 'my-hub-task' reads the hub dataset 'someone/no-such-dataset'" in message
    assert "HF_HUB_OFFLINE" in message and "train_per_class" in message


def test_hub_task_with_declared_size_collects_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = write_task(tmp_path, """\
        source: {kind: hub, id: someone/no-such-dataset, text_column: text, label_column: label, train_per_class: 40}
        """, "declared")
    grid = load_grid(str(write_grid(tmp_path, f"axes: {{model: minilm-l6, task: {task}, method: head, n: 40}}\n")))
    assert len(grid.specs) == 1
    too_many = write_grid(tmp_path, f"axes: {{model: minilm-l6, task: {task}, method: head, n: 41}}\n", "big")
    with pytest.raises(GridError, match="declares 40 training examples per class"):
        load_grid(str(too_many))


# ------------------------------------------------------------------------------------------------ user files

def test_label_map_cleaning_rules_and_balancing(tmp_path):
    rows = ([(f"Match report {i} - Agency", "s") for i in range(30)] + [(f"Market update {i}", "m") for i in range(12)]
            + [(f"SPONSORED market offer {i}", "m") for i in range(3)] + [("12345", "m")] + [("Two words", "s")]
            + [(f"Weather today {i}", "w") for i in range(4)] + [(f"Match report {i}", "s") for i in range(5)])
    pd.DataFrame(rows, columns=["t", "y"]).to_csv(tmp_path / "d.csv", index=False)
    path = write_task(tmp_path, """\
        name: cleaned
        source:
          kind: file
          path: d.csv
          text_column: t
          label_column: y
          label_map: {m: money, s: sport}
          clean: {drop_if_contains: [sponsored], drop_regex: ['^\\d+$'], strip: [" - agency"], min_words: 3}
          balance: downsample
        split: {test: 0.25, val: 0.1, seed: 0}
        """)
    task = data.load_task(str(path))
    assert task.labels == ["money", "sport"]                 # the map's order
    cleaning = task.stats["cleaning"]
    assert cleaning["unmapped_labels"] == {"w": 4}
    assert cleaning["dropped"] == {"drop_if_contains 'sponsored'": 3, "drop_regex '^\\d+$'": 1, "min_words 3": 1}
    assert cleaning["texts_stripped"] == 30
    assert task.stats["duplicates_removed"] == 5             # "Match report i" once stripped
    per_class = task.stats["per_class"]
    assert per_class["sport"]["before_cleaning"] == 36 and per_class["sport"]["after_cleaning"] == 35
    assert per_class["sport"]["balanced_out"] == 18 and per_class["money"]["balanced_out"] == 0
    assert counts(task) == {"money": 12, "sport": 12}
    assert all(" - Agency" not in e.text for e in task.test + task.val)
    again = data._load_cached.__wrapped__(task.task.path)    # balancing is seeded: the same rows every time
    assert [e.text for e in again.test] == [e.text for e in task.test]


def test_numeric_labels_map_from_jsonl(tmp_path):
    rows = [{"body": f"text {w} {i}", "y": y} for y, w in ((0, "neg"), (1, "pos"), (2, "mix")) for i in range(10)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = data.load_task(str(write_task(tmp_path, """\
        source: {kind: file, path: d.jsonl, text_column: body, label_column: y, label_map: {0: negative, 1: positive}}
        """)))
    assert task.labels == ["negative", "positive"] and task.stats["cleaning"]["unmapped_labels"] == {"2": 10}


@pytest.mark.parametrize("source, field, allowed", [
    ("label_map: {x: a}", "task.source.label_map", "keys that are labels of the data"),
    ("clean: {drop_when: [x]}", "task.source.clean.drop_when", "allowed keys: strip, strip_regex, drop_if_contains"),
    ("clean: {drop_regex: ['(']}", "task.source.clean.drop_regex", "a valid regular expression"),
    ("clean: {strip: x}", "task.source.clean.strip", "a list of non-empty strings"),
    ("clean: {min_words: 0}", "task.source.clean.min_words", "an integer >= 1"),
    ("clean: {near_duplicates: 0.1}", "task.source.clean.near_duplicates", "Jaccard threshold in \\[0.5, 1\\]"),
    ("balance: upsample", "task.source.balance", "allowed: none, downsample"),
    ("clean: {drop_if_contains: [text]}", "task.source.clean", "every class needs examples"),
    ("sheet: 2", "task.source.sheet", "keys of kind: file: kind, label_map, clean, balance, path"),
])
def test_bad_cleaning_options_name_the_field(tmp_path, source, field, allowed):
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(20)))
    path = write_task(tmp_path, f"""\
        source: {{kind: file, path: d.csv, text_column: text, label_column: label, {source}}}
        """)
    with pytest.raises(SpecError, match=f"{field}: .* is not allowed; .*{allowed}"):
        data.load_task(str(path))


def test_near_duplicates_rule_keeps_one_of_each_group(tmp_path):
    base = ["alpha beta gamma delta epsilon zeta eta theta iota kappa",
            "one two three four five six seven eight nine ten"]
    rows = [(base[0], "a"), (base[0] + " lambda", "a"), (base[1], "b"), (base[1].replace("ten", "eleven"), "b")]
    rows += [(f"filler text number {i} for class {c}", c) for c in "ab" for i in range(10)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "d.csv", index=False)
    task = data.load_task(str(write_task(tmp_path, """\
        source: {kind: file, path: d.csv, text_column: text, label_column: label, clean: {near_duplicates: 0.9}}
        """)))
    # 10/11 words shared: one dropped; 9 shared of 11 distinct (0.82) stays
    assert task.stats["near_duplicates_removed"] == 1
    assert task.stats["per_class"]["a"]["near_duplicates"] == 1
    assert task.details["near_duplicates"][0][1] == base[0]


def test_the_shipped_tasks_still_read_as_before():
    assert data.find_task("bbc-topic").source == {"kind": "bbc", "text": "headline"}
    assert data.find_task("ag-news").declared_train_per_class() == 25650
    assert data.find_task("synthetic-headlines").dedupe is False
    assert {p.stem for p in TASKS.glob("*.yaml")} >= {"ag-news", "bbc-headline-body", "bbc-topic",
                                                      "synthetic-headlines", "vader-sentiment"}
