"""One experiment, start to finish, inside its own process: data, model, method, training,
evaluation, latency, resources and the saved adapter. Returns the record's `train_info`."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import data
from .evaluate import evaluate, run_batched
from .latency import measure_latency
from .methods import method_module
from .models import load_classifier
from .resources import parameter_counts, peak_memory, reset_peak
from .schema import ADAPTER_METHODS, ExperimentSpec
from .targets import resolve_targets
from .train import train

Progress = Callable[[str], None]


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def weight_dtype(spec: ExperimentSpec, device: torch.device) -> torch.dtype:
    """bf16 base weights on a GPU that has it (trainable adapters and heads stay fp32);
    fp32 on CPU, and for full fine-tuning, whose fp32 master weights train under bf16 autocast."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported() and spec.method != "full":
        return torch.bfloat16
    return torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(spec: ExperimentSpec, adapter_dir: Path, progress: Progress) -> dict[str, Any]:
    wall_start = time.perf_counter()
    device = pick_device()
    seed_everything(spec.seed)
    task = data.load_task(spec.task)
    train_examples = task.sample(spec.n, spec.seed)
    progress(f"loading {spec.model} on {device.type}")
    dtype = weight_dtype(spec, device)
    loaded = load_classifier(spec.model, len(task.labels), device, dtype)
    targets = resolve_targets(spec.targets, loaded.architecture) if spec.method in ADAPTER_METHODS else None
    method = method_module(spec.method)
    reset_peak(device)
    model = method.prepare(loaded, spec, targets)
    params = parameter_counts(model)
    tokenizer = loaded.tokenizer
    progress(f"training {params['trainable']:,} of {params['total']:,} parameters on {len(train_examples)} examples")
    if spec.method == "head":
        start = time.perf_counter()
        features = run_batched(model.features, tokenizer, train_examples, spec.max_length, device)
        labels = torch.tensor([e.label for e in train_examples])
        with torch.enable_grad():
            training = method.fit(model, features.to(device), labels.to(device))
        seconds = time.perf_counter() - start
        training.update(train_seconds=seconds, examples_per_second=len(train_examples) / seconds)
    else:
        make_optimizer = getattr(method, "make_optimizer", None)
        optimizer = make_optimizer(model, spec) if make_optimizer else None
        training = train(model, tokenizer, train_examples, spec, device, progress, optimizer)
    progress("evaluating")
    val = evaluate(model, tokenizer, task.val, spec.max_length, device)
    test = evaluate(model, tokenizer, task.test, spec.max_length, device)
    latency = measure_latency(model, tokenizer, task.test, spec.latency_rounds, spec.max_length, device)
    memory = peak_memory(device)
    method.save(model, adapter_dir)
    adapter_bytes = dir_bytes(adapter_dir)
    metrics = {k: test[k] for k in ("accuracy", "macro_f1", "weighted_f1", "loss", "prediction_entropy")}
    metrics.update({f"val_{k}": val[k] for k in ("accuracy", "macro_f1", "loss")})
    return {
        "metrics": metrics,
        "predictions": {"test": test["predictions"], "test_labels": test["labels"], "val": val["predictions"]},
        "training": training,
        "params": params,
        "latency": latency,
        "resources": {
            **memory,
            "train_seconds": training["train_seconds"],
            "examples_per_second": training["examples_per_second"],
            "tokens_per_second": training.get("tokens_per_second"),
            "adapter_bytes": adapter_bytes,
            "adapter_mb": adapter_bytes / 1e6,
            "wall_seconds": time.perf_counter() - wall_start,
        },
        "model": {"source": loaded.source, "architecture": loaded.architecture, "pooling": loaded.pooling,
                  "weight_dtype": str(dtype).removeprefix("torch."), "target_modules": targets,
                  "device": str(device)},
    }
