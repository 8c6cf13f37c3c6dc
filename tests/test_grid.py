"""Grid expansion, test ids, markers, axis drop-out, include/exclude and every bad-input error."""

from __future__ import annotations

import socket

import pytest

from lora_bench.grid import GridError, load_grid
from lora_bench.schema import marker_kwargs

from .conftest import write_grid


def grid(tmp_path, text):
    return load_grid(str(write_grid(tmp_path, text)))


def test_quick_grid_expands_with_readable_ids():
    quick = load_grid("quick")
    assert len(quick.specs) == 18
    assert "minilm-l6-bbc-topic-lora-r8-qv-16-n250-s0" in quick.ids
    assert "minilm-l6-bbc-topic-head-16-n50-s1" in quick.ids
    assert "smollm2-135m-bbc-topic-lora-r8-qv-16-n50-s0" in quick.ids
    assert [i for i in quick.ids if "qlora" in i] == ["minilm-l6-bbc-topic-qlora-nf4-r8-qv-n50-s0"]
    assert len(set(quick.ids)) == len(quick.ids)


def test_adapter_axes_drop_out_for_head_and_full(tmp_path):
    g = grid(tmp_path, """
        axes: {model: minilm-l6, method: [head, full, lora], rank: [4, 8], n: 50}
        """)
    by_method = {}
    for spec in g.specs:
        by_method.setdefault(spec.method, []).append(spec)
    assert len(by_method["head"]) == 1 and len(by_method["full"]) == 1 and len(by_method["lora"]) == 2
    head = by_method["head"][0]
    assert head.rank is None and head.targets is None and head.lr is None and head.epochs is None
    assert g.dropped == {"duplicate after axis drop-out": 2}
    assert "lb" not in g.ids[0]


def test_alpha_expression_and_extra_id_axes(tmp_path):
    g = grid(tmp_path, """
        axes: {model: minilm-l6, method: lora, rank: [4, 16], alpha: 2*rank, lr: [1.0e-3, 2.0e-3]}
        """)
    assert sorted({(s.rank, s.alpha) for s in g.specs}) == [(4, 8.0), (16, 32.0)]
    assert g.varying == ("lr",)
    assert "minilm-l6-bbc-topic-lora-r4-qv-16-n50-s0-lr0.001" in g.ids


def test_include_and_exclude(tmp_path):
    g = grid(tmp_path, """
        axes: {model: minilm-l6, method: [head, lora], n: [50, 250], seed: [0, 1]}
        exclude:
          - {method: lora, n: 250}
        include:
          - {model: smollm2-135m, method: lora, n: 50, seed: [0, 1, 2]}
        """)
    assert not [s for s in g.specs if s.method == "lora" and s.n == 250 and s.model == "minilm-l6"]
    smol = [s for s in g.specs if s.model == "smollm2-135m"]
    assert sorted(s.seed for s in smol) == [0, 1, 2]
    assert all(s.task == "bbc-topic" for s in smol)


def test_qlora_label_and_markers(tmp_path):
    g = grid(tmp_path, "axes: {model: minilm-l6, method: lora, rank: 8, targets: qkvo}\n")
    spec = g.specs[0]
    assert marker_kwargs(spec) == {"model": "minilm-l6", "task": "bbc-topic", "method": "lora", "bits": "16",
                                   "n": 50, "seed": 0, "rank": 8, "targets": "qkvo"}
    quantized = type(spec).from_dict({**spec.to_dict(), "bits": "4-nf4-dq"})
    assert quantized.method_label() == "qlora-nf4-dq"


def test_budgets_per_method(tmp_path):
    g = grid(tmp_path, """
        axes: {model: minilm-l6, method: [head, lora]}
        budgets: {min_accuracy: 0.5, max_peak_gib: 4, methods: {head: {min_accuracy: 0.3}}}
        """)
    budgets = {s.method: s.budgets for s in g.specs}
    assert budgets["head"] == {"min_accuracy": 0.3, "max_peak_gib": 4.0}
    assert budgets["lora"] == {"min_accuracy": 0.5, "max_peak_gib": 4.0}


@pytest.mark.parametrize("text, key, fragment", [
    ("axes: {model: minilm-l6, rank: 0}\n", "rank", "an integer >=1"),
    ("axes: {model: minilm-l6, dropout: 1.5}\n", "dropout", "[0,1)"),
    ("axes: {model: minilm-l6, alpha: -2}\n", "alpha", "alpha must be > 0"),
    ("axes: {model: minilm-l6, alpha: 'rank**2'}\n", "alpha", "expression of rank"),
    ("axes: {model: minilm-l6, method: lora2}\n", "method", "allowed: head, full, lora"),
    ("axes: {model: minilm-l6, bits: 3}\n", "bits", "allowed: 16, 8, 4-nf4"),
    ("axes: {model: minilm-l6, colour: red}\n", "axes.colour", "unknown axis"),
    ("axes: {model: no-such-model}\n", "model", "an embedded name"),
    ("axes: {model: ./missing/folder}\n", "model", "no such folder"),
    ("axes: {model: minilm-l6, targets: [query, q_proj]}\n", "targets", "unknown module(s) q_proj for bert"),
    ("axes: {model: minilm-l6, n: 300}\n", "n", "has only 253 training examples in class 'tech'"),
    ("axes: {model: minilm-l6, task: no-such-task}\n", "task", "known tasks: ag-news, bbc-headline-body"),
    ("axes: {model: minilm-l6}\nbudgets: {max_gpu: 3}\n", "budgets.max_gpu", "allowed budgets"),
    ("axes: {model: minilm-l6}\nmatrix: {}\n", "matrix", "unknown grid key"),
    ("axes: {model: minilm-l6, method: oglora, oglora_init: ones}\n", "oglora_init", "allowed: random, zero"),
    ("axes: {model: minilm-l6, method: loraplus, loraplus_ratio: 0.5}\n", "loraplus_ratio", "[1,1000]"),
    ("axes: {model: minilm-l6, padding: left}\n", "padding", "allowed: longest, max_length"),
    ("axes: {model: minilm-l6, kbit_prepare: 1}\n", "kbit_prepare", "true or false"),
    ("axes: {model: 'shape:qwen9-9b'}\n", "model", "known shapes: llama-3.2-1b, qwen2.5-1.5b"),
    ("axes: {model: minilm-l6, n: []}\n", "axes.n", "non-empty list"),
])
def test_bad_grids_name_file_key_value_and_allowed(tmp_path, text, key, fragment):
    path = write_grid(tmp_path, text)
    with pytest.raises(GridError) as err:
        load_grid(str(path))
    message = str(err.value)
    assert str(path) in message
    assert f"{key}:" in message
    assert fragment in message


def test_malformed_yaml_and_unknown_grid(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("axes: {model: [minilm-l6\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(str(path))
    with pytest.raises(GridError, match="unknown grid 'nope'; known grids: .*quick"):
        load_grid("nope")


def test_collection_never_touches_the_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("collection opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    g = grid(tmp_path, "axes: {model: [Qwen/Qwen3-0.6B, minilm-l6], method: lora, targets: qkvo}\n")
    assert {s.model for s in g.specs} == {"Qwen/Qwen3-0.6B", "minilm-l6"}
    assert "qwen3-0.6b-bbc-topic-lora-r8-qkvo-16-n50-s0" in g.ids


def test_usage_error_stops_collection(pytester):
    pytester.makeconftest("pytest_plugins = ('lora_bench.plugin',)")
    pytester.makepyfile(test_bench="def test_x(lb_experiment):\n    pass\n")
    bad = pytester.path / "bad.yaml"
    bad.write_text("axes: {model: minilm-l6, rank: 0}\n")
    result = pytester.runpytest("--lb-grid", str(bad), "--co")
    assert result.ret != 0
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {bad}: rank: 0 is not allowed; an integer >=1"])
