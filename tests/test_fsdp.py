"""`devices: N`: one experiment as one FSDP job of N processes (torchrun). On this CPU machine the
same code runs over gloo with 2 processes: parameters sharded, memory per rank, throughput summed."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jsonschema
import pytest
import torch

from lora_bench import distributed
from lora_bench.data import load_task
from lora_bench.evaluate import evaluate
from lora_bench.grid import GridError, load_grid, resolve
from lora_bench.methods import full
from lora_bench.models import load_classifier
from lora_bench.runner import run
from lora_bench.schema import SpecError

from .conftest import write_grid

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "lora_bench" / "record.schema.json").read_text())


def test_a_shape_trains_sharded_over_two_processes(tmp_path):
    spec = resolve({"model": "shape:smollm2-135m", "task": "synthetic-headlines", "method": "full", "devices": 2,
                    "n": 20, "max_steps": 2, "batch_size": 2, "max_length": 24, "padding": "max_length",
                    "latency_rounds": 2, "grad_checkpointing": True})
    progress: list[str] = []
    info = run(spec, tmp_path / "adapter", progress.append)
    jsonschema.validate(info, SCHEMA["properties"]["train_info"])
    resources, setup = info["resources"], info["distributed"]
    devices = resources["per_device"]
    assert [d["rank"] for d in devices] == [0, 1] and setup["world_size"] == 2 and setup["backend"] == "gloo"
    assert resources["peak_memory_gib"] == max(d["peak_memory_gib"] for d in devices) > 0
    total = info["params"]["total"]
    assert sum(d["local_parameters"] for d in devices) == total   # FSDP split every parameter ...
    assert all(d["local_parameters"] < 0.51 * total for d in devices)   # ... about half on each rank
    training = info["training"]
    assert training["optimizer_steps"] == 2 and all(math.isfinite(loss) for _, loss in training["loss_curve"])
    assert training["examples_seen"] == 2 * 2 * 2   # ranks x steps x batch per rank
    assert resources["tokens_per_second"] == pytest.approx(training["tokens"] / resources["train_seconds"])
    assert info["quality"] == "not applicable: weightless shape" and set(info["metrics"].values()) == {None}
    assert info["model"]["base_preparation"]["grad_checkpointing"] and resources["adapter_bytes"] is None
    assert any(m.startswith("training 134,517,316 parameters") for m in progress)


def test_a_real_model_is_evaluated_and_saved_whole(tmp_path, tiny_llama, csv_task):
    spec = resolve({"model": str(tiny_llama), "task": str(csv_task), "method": "full", "devices": 2, "n": 10,
                    "epochs": 1, "batch_size": 4, "latency_rounds": 2})
    info = run(spec, tmp_path / "saved", lambda m: None)
    jsonschema.validate(info, SCHEMA["properties"]["train_info"])
    task = load_task(str(csv_task))
    assert info["quality"] == "measured" and 0 <= info["metrics"]["accuracy"] <= 1
    assert len(info["predictions"]["test"]) == len(task.test)
    assert info["distributed"]["examples_per_rank"] == 15 and info["training"]["optimizer_steps"] == 4
    # the gathered checkpoint is the trained model: loaded on one process, it predicts the same
    loaded = load_classifier(str(tiny_llama), len(task.labels), torch.device("cpu"), torch.float32)
    model = full.load(loaded, tmp_path / "saved")
    assert info["resources"]["adapter_bytes"] == (tmp_path / "saved" / "model.safetensors").stat().st_size
    assert evaluate(model, loaded.tokenizer, task.test, spec.max_length, torch.device("cpu"))["predictions"] \
        == info["predictions"]["test"]


def test_a_failing_rank_names_its_error(tmp_path, tiny_llama, csv_task):
    spec = resolve({"model": str(tiny_llama), "task": str(csv_task), "method": "full", "devices": 2, "n": 10})
    with pytest.raises(RuntimeError, match=r"rank 0 of 2: SpecError: n: 1000 is not allowed"):
        distributed.run(dataclasses.replace(spec, n=1000), tmp_path / "saved", lambda m: None)


def test_more_devices_than_gpus_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = resolve({"model": "shape:qwen2.5-7b", "task": "synthetic-headlines", "method": "full", "devices": 2})
    with pytest.raises(RuntimeError, match="^devices: 2 needs 2 GPUs, this machine has 1$"):
        distributed.run(spec, tmp_path / "saved", lambda m: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")   # as a pytest-xdist worker pins it
    with pytest.raises(RuntimeError, match=r"has 1 visible \(CUDA_VISIBLE_DEVICES=1; .* without -n\)$"):
        distributed.run(spec, tmp_path / "saved", lambda m: None)


def test_unsupported_combinations_stop_at_collection(tmp_path):
    with pytest.raises(SpecError, match="devices: 3 is not allowed; more than one device .* method full") as caught:
        resolve({"model": "shape:qwen2.5-7b", "task": "synthetic-headlines", "method": "lora", "devices": 3})
    assert caught.value.key == "devices"
    grid = write_grid(tmp_path, """
        axes:
          model: "shape:qwen2.5-7b"
          task: synthetic-headlines
          method: head
          devices: 2
        """)
    with pytest.raises(GridError, match=r"grid.yaml: devices: 2 is not allowed; .* method 'head'"):
        load_grid(str(grid))


def test_the_7b_proof_grid_collects():
    (spec,) = load_grid("fsdp-7b").specs
    assert (spec.model, spec.method, spec.devices, spec.grad_checkpointing) == ("shape:qwen2.5-7b", "full", 2, True)
