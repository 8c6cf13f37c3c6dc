"""One experiment, start to finish, inside its own process: data, model, method, training,
evaluation, latency (unmerged and merged), resources and the saved adapter. Returns `train_info`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import data, determinism
from .evaluate import evaluate, run_batched
from .latency import measure_latency
from .methods import method_module
from .models import LoadedModel, load_classifier
from .quantization import frozen_weight_bytes, logical_parameters
from .resources import parameter_counts, peak_memory, reset_peak
from .schema import ADAPTER_METHODS, ExperimentSpec
from .targets import resolve_targets
from .train import pad_target, train

Progress = Callable[[str], None]
MERGE_CHECK_EXAMPLES = 32   # test examples whose logits compare the merged model with the unmerged one
SHAPE_EVAL_EXAMPLES = 64    # a weightless shape's inference is timed on this many examples only


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def weight_dtype(spec: ExperimentSpec, device: torch.device) -> torch.dtype:
    """bf16 base weights on a GPU that has it, and bf16 compute over any quantized base (trainable
    adapters and heads stay fp32); fp32 on CPU, and for full fine-tuning, whose fp32 master
    weights train under bf16 autocast."""
    if spec.quantized:
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported() and spec.method != "full":
        return torch.bfloat16
    return torch.float32


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prepare_base(loaded: LoadedModel, spec: ExperimentSpec) -> dict[str, Any]:
    """Gradient checkpointing and, on request, peft's k-bit preparation; returns what was done."""
    backbone = loaded.model.backbone
    done: dict[str, Any] = {"kbit_prepare": bool(spec.kbit_prepare), "upcast_to_fp32": 0,
                            "grad_checkpointing": bool(spec.grad_checkpointing)}
    if spec.quantized and spec.kbit_prepare:
        from peft import prepare_model_for_kbit_training

        before = {n: p.dtype for n, p in backbone.named_parameters()}
        prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=bool(spec.grad_checkpointing),
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
        upcast = [n for n, p in backbone.named_parameters() if p.dtype == torch.float32 and before[n] != torch.float32]
        done["upcast_to_fp32"] = len(upcast)
        done["upcast_parameters"] = sum(dict(backbone.named_parameters())[n].numel() for n in upcast)
    elif spec.grad_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return done


def merged_inference(model: torch.nn.Module, spec: ExperimentSpec, loaded: LoadedModel, task: data.TaskData,
                     device: torch.device, unmerged_logits: torch.Tensor) -> dict[str, Any]:
    """Merge the adapter into the base where peft offers it and measure what merging gives.
    Over a 4-bit or 8-bit base peft dequantizes, adds the update and quantizes again (lossy);
    the logit difference against the unmerged model says how lossy."""
    if not hasattr(model, "merge_and_unload"):
        return {"offered": False, "why": "no adapter to merge"}
    try:
        merged = model.merge_and_unload()
    except Exception as exc:  # peft refuses some combinations (e.g. DoRA over 8-bit)
        return {"offered": False, "why": f"{type(exc).__name__}: {exc}"}
    pad_to = pad_target(spec)
    sample = task.test[:MERGE_CHECK_EXAMPLES]
    logits = run_batched(merged, loaded.tokenizer, sample, spec.max_length, device, pad_to)
    start = time.perf_counter()
    timed = task.test[:SHAPE_EVAL_EXAMPLES] if loaded.weightless else task.test
    run_batched(merged, loaded.tokenizer, timed, spec.max_length, device, pad_to)
    seconds = time.perf_counter() - start
    return {
        "offered": True,
        "kind": "dequantize-merge-requantize" if spec.quantized else "exact merge",
        "max_abs_logit_diff": float((logits - unmerged_logits).abs().max()),
        "latency": measure_latency(merged, loaded.tokenizer, task.test, spec.latency_rounds, spec.max_length,
                                   device, pad_to),
        "throughput_examples_per_second": len(timed) / seconds,
    }


def run(spec: ExperimentSpec, adapter_dir: Path, progress: Progress) -> dict[str, Any]:
    if spec.devices > 1:  # one multi-process FSDP job (torchrun) over that many GPUs
        from .distributed import run as run_distributed
        return run_distributed(spec, adapter_dir, progress)
    if data.find_task(spec.task).type == "generation":
        from .generation.runner import run as run_generation

        return run_generation(spec, adapter_dir, progress)
    wall_start = time.perf_counter()
    device = pick_device()
    determinism_info = determinism.configure(spec.seed, determinism.requested(spec))
    task = data.load_task(spec.task)
    train_examples = task.sample(spec.n, spec.seed)
    pad_to = pad_target(spec)
    progress(f"loading {spec.model} ({spec.bits}-bit) on {device.type}")
    dtype = weight_dtype(spec, device)
    loaded = load_classifier(spec.model, len(task.labels), device, dtype, spec.bits)
    targets = resolve_targets(spec.targets, loaded.architecture) if spec.method in ADAPTER_METHODS else None
    method = method_module(spec.method)
    reset_peak(device)
    base = prepare_base(loaded, spec)
    model = method.prepare(loaded, spec, targets)
    params = {**parameter_counts(model), "total_logical": logical_parameters(model), **frozen_weight_bytes(model)}
    tokenizer = loaded.tokenizer
    progress(f"training {params['trainable']:,} of {params['total_logical']:,} parameters on "
             f"{len(train_examples)} examples")
    if spec.method == "head":
        start = time.perf_counter()
        features = run_batched(model.features, tokenizer, train_examples, spec.max_length, device, pad_to)
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
    test_examples = task.test[:SHAPE_EVAL_EXAMPLES] if loaded.weightless else task.test
    val = evaluate(model, tokenizer, task.val[:1] if loaded.weightless else task.val, spec.max_length, device, pad_to)
    start = time.perf_counter()
    test = evaluate(model, tokenizer, test_examples, spec.max_length, device, pad_to)
    test_seconds = time.perf_counter() - start
    latency = measure_latency(model, tokenizer, task.test, spec.latency_rounds, spec.max_length, device, pad_to)
    memory = peak_memory(device)
    method.save(model, adapter_dir)
    adapter_bytes = dir_bytes(adapter_dir)
    merged = {"offered": False, "why": "not an adapter method"}
    if spec.method in ADAPTER_METHODS:
        progress("measuring merged inference")
        unmerged = run_batched(model, tokenizer, task.test[:MERGE_CHECK_EXAMPLES], spec.max_length, device, pad_to)
        merged = merged_inference(model, spec, loaded, task, device, unmerged)
    metrics = {k: test[k] for k in ("accuracy", "macro_f1", "weighted_f1", "loss", "prediction_entropy")}
    metrics.update({f"val_{k}": val[k] for k in ("accuracy", "macro_f1", "loss")})
    predictions = {"test": test["predictions"], "test_labels": test["labels"], "val": val["predictions"]}
    if loaded.weightless:  # random weights: quality is not applicable, never a number
        metrics = {k: None for k in metrics}
        predictions = {k: None for k in predictions}
    return {
        "determinism": determinism_info,
        "quality": "not applicable: weightless shape" if loaded.weightless else "measured",
        "metrics": metrics,
        "predictions": predictions,
        "training": training,
        "params": params,
        "latency": latency,
        "inference": {"throughput_examples_per_second": len(test_examples) / test_seconds, "merged": merged},
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
                  "device": str(device), "base_preparation": base},
    }
