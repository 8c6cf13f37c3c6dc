"""Loading, deduplication, leakage, the stratified split and nested, deterministic sampling."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lora_bench import data
from lora_bench.schema import SpecError

from .conftest import write_csv_task


def leaks(task: data.TaskData) -> set[str]:
    train = {data.normalise(e.text) for pool in task.train_pool.values() for e in pool}
    val = {data.normalise(e.text) for e in task.val}
    test = {data.normalise(e.text) for e in task.test}
    return (train & test) | (train & val) | (val & test)


def test_bbc_headlines_are_deduplicated_without_leakage():
    task = data.load_task("bbc-topic")
    assert task.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert task.n_raw == 2225
    assert task.n_duplicates == 129
    assert not leaks(task)
    assert task.max_n_per_class() >= 250


def test_planted_duplicates_are_removed_before_the_split(tmp_path):
    path = write_csv_task(tmp_path, per_class=40, duplicates=0)
    frame = pd.read_csv(tmp_path / "toy.csv")
    variants = frame.head(10).assign(text=lambda f: "  " + f.text.str.upper() + " . ")
    pd.concat([frame, variants]).to_csv(tmp_path / "toy.csv", index=False)
    task = data.load_task(str(path))
    assert task.n_duplicates == 10
    assert not leaks(task)
    assert sum(len(p) for p in task.train_pool.values()) + len(task.val) + len(task.test) == 120


def test_conflicting_labels_are_dropped(tmp_path):
    path = write_csv_task(tmp_path, per_class=20)
    frame = pd.read_csv(tmp_path / "toy.csv")
    flipped = frame.head(3).assign(topic="music")
    pd.concat([frame, flipped]).to_csv(tmp_path / "toy.csv", index=False)
    task = data.load_task(str(path))
    assert task.n_conflicting == 3


def test_split_is_stratified_and_fixed(csv_task):
    task = data.load_task(str(csv_task))
    assert len(task.test) == 3 * 10
    per_class_test = pd.Series([e.label for e in task.test]).value_counts()
    assert set(per_class_test) == {10}
    again = data._load_cached.__wrapped__(task.task.path)
    assert [e.text for e in again.test] == [e.text for e in task.test]


def test_sampling_is_nested_and_deterministic(csv_task):
    task = data.load_task(str(csv_task))
    small, large = task.sample(5, seed=3), task.sample(20, seed=3)
    assert set(small) <= set(large)
    assert task.sample(5, seed=3) == small
    assert task.sample(5, seed=4) != small
    assert len(large) == 3 * 20
    assert data.examples_hash(small) == data.examples_hash(task.sample(5, seed=3))
    assert data.examples_hash(small) != data.examples_hash(task.sample(5, seed=4))


def test_n_larger_than_a_class_is_refused(csv_task):
    task = data.load_task(str(csv_task))
    with pytest.raises(SpecError, match=r"n: 28 is not allowed; task 'toy' has only 27 training examples"):
        task.sample(28, 0)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_jsonl_and_parquet_sources(tmp_path, suffix):
    rows = [{"body": f"{w} text {i}", "y": w} for w in ("a", "b") for i in range(20)]
    file = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        file.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pd.DataFrame(rows).to_parquet(file)
    task_file = tmp_path / "t.yaml"
    task_file.write_text(f"name: t\nsource: {{kind: file, path: d{suffix}, text_column: body, label_column: y}}\n")
    task = data.load_task(str(task_file))
    assert task.labels == ["a", "b"]
    assert len(task.test) == 8


def test_bad_task_files_name_the_field(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nx,a\n")
    bad_column = tmp_path / "c.yaml"
    bad_column.write_text("source: {kind: file, path: d.csv, text_column: body, label_column: label}\n")
    with pytest.raises(SpecError, match="task.source.text_column: 'body'.*columns of d.csv: text, label"):
        data.load_task(str(bad_column))
    bad_kind = tmp_path / "k.yaml"
    bad_kind.write_text("source: {kind: ftp}\n")
    with pytest.raises(SpecError, match="task.source.kind: 'ftp'.*allowed: bbc, file"):
        data.load_task(str(bad_kind))
