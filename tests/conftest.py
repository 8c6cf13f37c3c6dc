"""Fixtures for the unit tests: tiny randomly initialised models saved as local checkpoint folders
(a BERT encoder with a declared mean pooling, a Llama decoder), a small CSV task, a head-only grid,
and helpers that run the bench in a real pytest process (`bench`, `run`, `records`)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lora_bench.catalog import EMBEDDED, embedded_path

ROOT = Path(__file__).resolve().parent.parent

WORDS = {
    "sport": "match goal team league coach striker season cup final win",
    "money": "bank market shares profit stock economy trade price rates tax",
    "music": "album band song concert singer chart guitar tour record stage",
}


def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_path(EMBEDDED["minilm-l6"]))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = minilm_tokenizer()
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


def _llama(folder: Path, hidden: int) -> Path:
    from transformers import LlamaConfig, LlamaModel

    import torch

    torch.manual_seed(0)
    tokenizer = minilm_tokenizer()
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=2 * hidden,
                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    LlamaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """Hidden 32, one key/value head of width 16."""
    return _llama(tmp_path_factory.mktemp("tiny-llama"), 32)


@pytest.fixture(scope="session")
def tiny_llama64(tmp_path_factory) -> Path:
    """Hidden 64: bitsandbytes' CPU 4-bit kernels need layers at least one 64-wide block wide."""
    return _llama(tmp_path_factory.mktemp("tiny-llama64"), 64)


def write_csv_task(folder: Path, per_class: int = 40, duplicates: int = 0, name: str = "toy") -> Path:
    """A three-class CSV whose classes have their own vocabulary, and a task YAML pointing at it."""
    rng = random.Random(0)
    rows = []
    for label, words in WORDS.items():
        vocab = words.split()
        for i in range(per_class):
            rows.append((" ".join(rng.sample(vocab, 4)) + f" item {i}", label))
    rows += rows[:duplicates]
    import pandas as pd

    pd.DataFrame(rows, columns=["text", "topic"]).to_csv(folder / f"{name}.csv", index=False)
    task = folder / f"{name}.yaml"
    task.write_text(textwrap.dedent(f"""\
        name: {name}
        type: classification
        source: {{kind: file, path: {name}.csv, text_column: text, label_column: topic}}
        split: {{test: 0.25, val: 0.1, seed: 0}}
        """))
    return task


@pytest.fixture
def csv_task(tmp_path) -> Path:
    return write_csv_task(tmp_path)


def write_grid(folder: Path, text: str, name: str = "grid") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def head_grid(tmp_path, tiny_bert, csv_task) -> Path:
    """Four head-only experiments: quick enough to run whole bench sessions in a test."""
    return write_grid(tmp_path, f"""
        name: tiny-head
        axes:
          model: {tiny_bert}
          task: {csv_task}
          method: head
          n: [5, 10]
          seed: [0, 1]
          latency_rounds: 3
        """)


def bench(grid: Path, out: Path, *args: str) -> list[str]:
    """The command line of a bench session over `grid` writing into `out`."""
    return [sys.executable, "-m", "pytest", str(ROOT / "bench"), "-p", "no:warnings", "--lb-grid", str(grid),
            "--lb-out", str(out), *args]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/records/*.json"))]
