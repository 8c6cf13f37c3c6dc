"""One experiment, start to finish, inside its own process: data, model, method, training,
evaluation, latency (unmerged and merged), resources and the saved adapter. Returns `train_info`."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import data, determinism, flops, memory_fit
from .compiling import bucketed, mode_of, uses_graphs
from .evaluate import evaluate, run_batched
from .latency import measure_latencies, measure_latency
from .methods import method_module
from .models import LoadedModel, load_classifier, load_tokenizer
from .quantization import frozen_weight_bytes, logical_parameters
from .recipes import compute_dtypes
from .resources import parameter_counts, peak_memory, reset_peak
from .schema import ADAPTER_METHODS, ExperimentSpec
from .targets import resolve_targets
from .train import encode, pad_target, train

Progress = Callable[[str], None]
BASE_COPY_LIMIT = 8 * 2**30   # host bytes a 16-bit base may take to be timed beside its merged model
MERGE_CHECK_EXAMPLES = 32   # test examples whose logits compare the merged model with the unmerged one
SHAPE_EVAL_EXAMPLES = 64    # a weightless shape's inference is timed on this many examples only


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def weight_dtype(spec: ExperimentSpec, device: torch.device) -> torch.dtype:
    """The recipe's base dtype (lora_bench.recipes.compute_dtypes); a quantized base computes in
    16-bit even on CPU (trainable adapters and heads stay fp32)."""
    dtype = compute_dtypes(spec, device.type)[0]
    if spec.quantized and dtype == torch.float32:
        return torch.bfloat16
    return dtype


def utilisation(model: torch.nn.Module, training: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    """Model-FLOPs utilisation of the training loop (lora_bench.flops), on a GPU only."""
    if device.type != "cuda" or not training.get("tokens"):
        return None
    config = getattr(model, "config", None) or model.get_base_model().config
    seq = training["tokens"] / max(training["examples_seen"], 1)
    causal = getattr(config, "is_decoder", False) or config.model_type not in ("bert", "roberta", "distilbert")
    return flops.model_utilisation(model, config, training["tokens_per_second"], seq, causal,
                                   torch.cuda.get_device_name(device))


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


def base_copy(model: torch.nn.Module, spec: ExperimentSpec, device: torch.device) -> dict[str, torch.Tensor] | str:
    """The 16-bit base's weights on the host, taken before the method touches them (PiSSA and OLoRA
    rewrite them), so that merged and base can be timed side by side after training; or why not."""
    if device.type != "cuda":
        return "on a CPU the host copy of the base would count in the process's peak memory"
    if spec.quantized:
        return "quantized base: its merged model is requantized, and bitsandbytes' weights do not copy back"
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size > BASE_COPY_LIMIT:
        return f"base of {size / 2**30:.1f} GiB: above the {BASE_COPY_LIMIT / 2**30:.0f} GiB kept on the host for it"
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def merge_adapter(model: torch.nn.Module) -> torch.nn.Module | str:
    """The model with its adapter merged into the base (peft's merge_and_unload), or why not."""
    if not hasattr(model, "merge_and_unload"):
        return "no adapter to merge"
    try:
        return model.merge_and_unload()
    except Exception as exc:  # peft refuses some combinations (e.g. DoRA over 8-bit)
        return f"{type(exc).__name__}: {exc}"


def merged_inference(model: torch.nn.Module, spec: ExperimentSpec, loaded: LoadedModel, task: data.TaskData,
                     device: torch.device, unmerged_logits: torch.Tensor,
                     base_state: dict[str, torch.Tensor] | str) -> dict[str, Any]:
    """Merge the adapter into the base where peft offers it and measure what merging gives.
    Over a 4-bit or 8-bit base peft dequantizes, adds the update and quantizes again (lossy);
    the logit difference against the unmerged model says how lossy. With `base_state` (`base_copy`)
    the base is rebuilt and timed in alternation with the merged model: the latency ratio then holds
    no drift between a measurement before training and one after."""
    merged = merge_adapter(model)
    if isinstance(merged, str):
        return {"offered": False, "why": merged}
    pad_to = pad_target(spec)
    sample = task.test[:MERGE_CHECK_EXAMPLES]
    logits = run_batched(merged, loaded.tokenizer, sample, spec.max_length, device, pad_to)
    start = time.perf_counter()
    timed = task.test[:SHAPE_EVAL_EXAMPLES] if loaded.weightless else task.test
    run_batched(merged, loaded.tokenizer, timed, spec.max_length, device, pad_to)
    seconds = time.perf_counter() - start
    if isinstance(base_state, dict):   # the base rebuilt beside the merged model, both timed in alternation
        try:
            base = copy.deepcopy(merged)
            base.load_state_dict(base_state)
            timed_pair = measure_latencies({"merged": merged, "base": base}, loaded.tokenizer, task.test,
                                           spec.latency_rounds, spec.max_length, device, pad_to)
            del base
            latency, base_latency = timed_pair["merged"], timed_pair["base"]
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            base_state = f"the base could not be rebuilt beside the merged model: {type(exc).__name__}: {exc}"
    if not isinstance(base_state, dict):
        latency = measure_latency(merged, loaded.tokenizer, task.test, spec.latency_rounds, spec.max_length,
                                  device, pad_to)
        base_latency = {"not_measured": base_state}
    return {
        "offered": True,
        "kind": "dequantize-merge-requantize" if spec.quantized else "exact merge",
        "max_abs_logit_diff": float((logits - unmerged_logits).abs().max()),
        "latency": latency,
        "base_latency": base_latency,
        "latency_ratio": latency["median_ms"] / base_latency["median_ms"] if "median_ms" in base_latency else None,
        "throughput_examples_per_second": len(timed) / seconds,
    }


def run(spec: ExperimentSpec, adapter_dir: Path, progress: Progress) -> dict[str, Any]:
    if spec.devices > 1:  # one multi-process FSDP job (torchrun) over that many GPUs
        from .distributed import run as run_distributed
        return run_distributed(spec, adapter_dir, progress)
    if data.find_task(spec.task).type == "generation":
        from .generation.runner import run as run_generation

        return run_generation(spec, adapter_dir, progress)
    if data.find_task(spec.task).type == "causal-lm":
        from .causal_lm import run as run_causal_lm

        return run_causal_lm(spec, adapter_dir, progress)
    wall_start = time.perf_counter()
    device = pick_device()
    determinism_info = determinism.configure(spec.seed, determinism.requested(spec))
    task = data.load_task(spec.task)
    train_examples = task.sample(spec.n, spec.seed)
    pad_to = pad_target(spec)
    tokenizer = load_tokenizer(spec.model)
    longest = max(len(x) for x in encode(tokenizer, train_examples, spec.max_length))
    seq_len = spec.max_length if pad_to or spec.recipe == "naive" else longest
    if uses_graphs(mode_of(spec)):   # graphs pad to a length bucket
        seq_len = bucketed(seq_len, spec.max_length)
    fitted = memory_fit.fit(spec, len(task.labels), seq_len, device, progress)  # may skip: predicted too large
    spec = fitted.spec
    progress(f"loading {spec.model} ({spec.bits}-bit) on {device.type}")
    dtype = weight_dtype(spec, device)
    loaded = load_classifier(spec.model, len(task.labels), device, dtype, spec.bits, tokenizer)
    targets = resolve_targets(spec.targets, loaded.architecture) if spec.method in ADAPTER_METHODS else None
    method = method_module(spec.method)
    base_latency: dict[str, Any] | None = None
    if spec.method in ADAPTER_METHODS and spec.quantized and device.type == "cpu":
        base_latency = {"not_measured": "bitsandbytes repacks quantized weights for CPU inference on the first "
                                        "eval forward, after which they no longer train"}
    elif spec.method in ADAPTER_METHODS:  # the base alone, for the merged and unmerged overheads
        base_latency = measure_latency(loaded.model, loaded.tokenizer, task.test, spec.latency_rounds,
                                       spec.max_length, device, pad_to)
    base_state = base_copy(loaded.model, spec, device) if spec.method in ADAPTER_METHODS else "not an adapter method"
    reset_peak(device)
    base = prepare_base(loaded, spec)
    model = method.prepare(loaded, spec, targets)
    params = {**parameter_counts(model), "total_logical": logical_parameters(model), **frozen_weight_bytes(model)}
    progress(f"training {params['trainable']:,} of {params['total_logical']:,} parameters on "
             f"{len(train_examples)} examples ({spec.recipe} recipe)")
    test_examples = task.test[:SHAPE_EVAL_EXAMPLES] if loaded.weightless else task.test
    val_examples = task.val[:1] if loaded.weightless else task.val
    if spec.recipe == "naive":
        from .recipes.naive import train_and_evaluate

        naive = train_and_evaluate(model, tokenizer, train_examples, val_examples, test_examples, spec, device)
        training, val, test = naive["training"], naive["val"], naive["test"]
        test_seconds = training["eval_seconds"]
    elif spec.method == "head":
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
    if spec.recipe != "naive":
        progress("evaluating")
        start = time.perf_counter()
        val = evaluate(model, tokenizer, val_examples, spec.max_length, device, pad_to)
        val_seconds = time.perf_counter() - start
        start = time.perf_counter()
        test = evaluate(model, tokenizer, test_examples, spec.max_length, device, pad_to)
        test_seconds = time.perf_counter() - start
        training["eval_seconds"] = val_seconds + test_seconds
    training["utilisation"] = utilisation(model, training, device)
    latency = measure_latency(model, tokenizer, task.test, spec.latency_rounds, spec.max_length, device, pad_to)
    memory = peak_memory(device)
    estimate = fitted.report(memory["peak_memory_gib"] if device.type == "cuda" else None)
    method.save(model, adapter_dir)
    adapter_bytes = dir_bytes(adapter_dir)
    merged = {"offered": False, "why": "not an adapter method"}
    if spec.method in ADAPTER_METHODS:
        progress("measuring merged inference")
        unmerged = run_batched(model, tokenizer, task.test[:MERGE_CHECK_EXAMPLES], spec.max_length, device, pad_to)
        merged = merged_inference(model, spec, loaded, task, device, unmerged, base_state)
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
        "inference": {"throughput_examples_per_second": len(test_examples) / test_seconds, "merged": merged,
                      "base_latency": base_latency},
        "memory_estimate": estimate,
        "resources": {
            **memory,
            "pipeline_seconds": training["train_seconds"] + training["eval_seconds"],
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
