"""One generation experiment, start to finish, inside its own process: data, the causal LM, the base
model's scores, training, the tuned model's scores, lm-eval on both, the saved adapter, and
generation speed unmerged and merged. Returns the record's `train_info`.

Order matters: the base model is evaluated before the method touches it (PiSSA/OLoRA rewrite base
weights, full fine-tuning trains them), and merging comes last (it folds the adapter into the base).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..quantization import frozen_weight_bytes, logical_parameters
from ..resources import parameter_counts, peak_memory, reset_peak
from .. import determinism
from ..runner import dir_bytes, merge_adapter, pick_device, weight_dtype
from ..schema import ADAPTER_METHODS, ExperimentSpec
from ..targets import resolve_targets
from ..train import autocast_for
from . import data as gen_data
from .decode import _pad_left, generate_and_score, measure_speed, prefill
from .metrics import label_metrics, paired_delta, text_metrics
from .model import LoadedLM, load_causal_lm, make_optimizer, prepare, prepare_base, save
from .prompts import Formatter
from .train import train

Progress = Callable[[str], None]
EVAL_BATCH = 16            # prompts decoded together
SPEED_BATCH = 8            # the larger batch of the throughput measurement
MERGE_CHECK_PROMPTS = 4    # prompts whose next-token logits compare merged with unmerged


def evaluate(model: torch.nn.Module, formatter: Formatter, gen: gen_data.GenData, device: torch.device,
             progress: Progress, who: str) -> dict[str, Any]:
    """Greedy replies on the test split, their text metrics, label metrics where the targets form a
    closed set, and the perplexity of the references."""
    max_new = gen.task.generation["max_new_tokens"]
    progress(f"{who}: greedy decoding of {len(gen.test)} test prompts (max {max_new} new tokens)")
    out = generate_and_score(model, formatter, gen.test, device, EVAL_BATCH, max_new,
                             lambda m: progress(f"{who}: {m}"))
    references = [e.target for e in gen.test]
    scores = text_metrics(out["replies"], references)
    result = {**out, "text": scores}
    if gen.labels:
        result["labels"] = label_metrics(out["replies"], references, gen.labels)
    progress(f"{who}: chrF {scores['chrf']:.1f}  BLEU {scores['bleu']:.1f}  ROUGE-L {scores['rouge_l']:.1f}  "
             f"perplexity {out['perplexity']:.2f}  ({out['seconds']:.0f} s)")
    return result


def flat(result: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    text = result["text"]
    metrics: dict[str, float | None] = {
        f"{prefix}chrf": text["chrf"], f"{prefix}bleu": text["bleu"], f"{prefix}rouge_l": text["rouge_l"],
        f"{prefix}exact_match": text["exact_match"], f"{prefix}perplexity": result["perplexity"],
        f"{prefix}loss": result["loss"], f"{prefix}chrf_sentence_mean": text["chrf_sentence_mean"],
        f"{prefix}reply_words_mean": text["reply_words_mean"],
    }
    labels = result.get("labels")
    for key in ("accuracy", "macro_f1", "weighted_f1", "invalid_label_rate"):
        metrics[f"{prefix}{key}"] = labels[key] if labels else None
    return metrics


def lm_eval_scores(model: torch.nn.Module, loaded: LoadedLM, task: gen_data.GenTask, folder: Path,
                   progress: Progress, who: str) -> dict[str, Any] | None:
    if not task.lm_eval_tasks:
        return None
    from .lmeval import run_lm_eval

    progress(f"{who}: lm-eval {', '.join(task.lm_eval_tasks)} (limit {task.lm_eval_limit})")
    start = time.perf_counter()
    result = run_lm_eval(model, loaded.tokenizer, list(task.lm_eval_tasks), task.lm_eval_limit, folder)
    result["seconds"] = time.perf_counter() - start
    progress(f"{who}: lm-eval " + "  ".join(f"{k.removeprefix('lmeval_')} {v:.3g}" for k, v in result["scores"].items())
             + f" ({result['seconds']:.0f} s)")
    return result


@torch.no_grad()
def next_token_logits(model: torch.nn.Module, formatter: Formatter, gen: gen_data.GenData,
                      device: torch.device) -> torch.Tensor:
    pad_id = formatter.tokenizer.pad_token_id or 0
    ids, mask = _pad_left([formatter.prompt_ids(e) for e in gen.test[:MERGE_CHECK_PROMPTS]], pad_id, device)
    with autocast_for(device):
        last, _ = prefill(model, ids, mask)
    return last.cpu()


def merged_speed(model: torch.nn.Module, spec: ExperimentSpec, formatter: Formatter, gen: gen_data.GenData,
                 device: torch.device, unmerged_logits: torch.Tensor, new_tokens: int) -> dict[str, Any]:
    merged = merge_adapter(model)
    if isinstance(merged, str):
        return {"offered": False, "why": merged}
    logits = next_token_logits(merged, formatter, gen, device)
    return {
        "offered": True,
        "kind": "dequantize-merge-requantize" if spec.quantized else "exact merge",
        "max_abs_logit_diff": float((logits - unmerged_logits).abs().max()),
        "speed": measure_speed(merged, formatter, gen.test, device, spec.latency_rounds, new_tokens, SPEED_BATCH),
    }


def run(spec: ExperimentSpec, adapter_dir: Path, progress: Progress) -> dict[str, Any]:
    wall_start = time.perf_counter()
    device = pick_device()
    determinism.configure(spec.seed, determinism.requested(spec))
    gen = gen_data.load(spec.task)
    task = gen.task
    train_examples = gen.sample(spec.n, spec.seed)
    dtype = weight_dtype(spec, device)
    progress(f"loading {spec.model} as a causal LM ({spec.bits}-bit) on {device.type}")
    loaded = load_causal_lm(spec.model, device, dtype, spec.bits)
    formatter = Formatter.build(loaded.tokenizer, task, gen.labels)
    reset_peak(device)
    seconds: dict[str, float] = {}
    workdir = tempfile.TemporaryDirectory(prefix="lb-lmeval-")
    docs: dict[str, str] = {}
    if task.lm_eval_tasks:
        from .lmeval import export_docs

        docs = export_docs(list(task.lm_eval_tasks), loaded.tokenizer, Path(workdir.name))

    start = time.perf_counter()
    base = evaluate(loaded.model, formatter, gen, device, progress, "base")
    base_lm = lm_eval_scores(loaded.model, loaded, task, Path(workdir.name), progress, "base")
    seconds["base_eval_seconds"] = time.perf_counter() - start

    targets = resolve_targets(spec.targets, loaded.architecture) if spec.method in ADAPTER_METHODS else None
    preparation = prepare_base(loaded, spec)
    model = prepare(loaded, spec, targets)
    params = {**parameter_counts(model), "total_logical": logical_parameters(model), **frozen_weight_bytes(model)}
    pairs = [formatter.encode(e) for e in train_examples]
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    progress(f"training {params['trainable']:,} of {params['total_logical']:,} parameters on "
             f"{len(pairs)} examples (loss on target tokens only)")
    training = train(model, pairs, pad_id, spec, device, progress, make_optimizer(model, spec))
    if spec.grad_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()

    start = time.perf_counter()
    tuned = evaluate(model, formatter, gen, device, progress, "tuned")
    tuned_lm = lm_eval_scores(model, loaded, task, Path(workdir.name), progress, "tuned")
    seconds["tuned_eval_seconds"] = time.perf_counter() - start

    save(model, spec, loaded, adapter_dir)
    adapter_bytes = dir_bytes(adapter_dir)
    new_tokens = task.generation["max_new_tokens"]
    progress("measuring generation speed (unmerged)")
    speed = measure_speed(model, formatter, gen.test, device, spec.latency_rounds, new_tokens, SPEED_BATCH)
    merged: dict[str, Any] = {"offered": False, "why": "not an adapter method"}
    if spec.method in ADAPTER_METHODS:
        progress("measuring generation speed (merged)")
        unmerged_logits = next_token_logits(model, formatter, gen, device)
        merged = merged_speed(model, spec, formatter, gen, device, unmerged_logits, new_tokens)
    memory = peak_memory(device)
    workdir.cleanup()

    metrics = {**flat(tuned), **flat(base, "base_")}
    chrf_delta = paired_delta(tuned["text"]["per_example"]["chrf"], base["text"]["per_example"]["chrf"], spec.seed)
    rouge_delta = paired_delta(tuned["text"]["per_example"]["rouge_l"], base["text"]["per_example"]["rouge_l"],
                               spec.seed)
    metrics.update(chrf_delta=chrf_delta["mean"], chrf_delta_low=chrf_delta["low"], chrf_delta_high=chrf_delta["high"],
                   rouge_l_delta=rouge_delta["mean"], rouge_l_delta_low=rouge_delta["low"],
                   rouge_l_delta_high=rouge_delta["high"],
                   val_accuracy=None, val_macro_f1=None, val_loss=None)
    if tuned_lm is not None and base_lm is not None:
        metrics.update(tuned_lm["scores"])
        metrics.update({f"base_{k}": v for k, v in base_lm["scores"].items()})
    references = [e.target for e in gen.test]
    return {
        "quality": "measured",
        "task_type": "generation",
        "metrics": metrics,
        "comparison": {"chrf": chrf_delta, "rouge_l": rouge_delta,
                       "note": "tuned minus base per test example (sentence chrF, ROUGE-L F1 x100)"},
        "predictions": {
            "test": tuned["replies"], "test_labels": references, "val": None,
            "base_test": base["replies"],
            "chrf": tuned["text"]["per_example"]["chrf"], "base_chrf": base["text"]["per_example"]["chrf"],
            "rouge_l": tuned["text"]["per_example"]["rouge_l"], "base_rouge_l": base["text"]["per_example"]["rouge_l"],
            "exact_match": tuned["text"]["per_example"]["exact_match"],
            "nll": tuned["nll"], "base_nll": base["nll"], "ref_tokens": tuned["ref_tokens"],
            "reply_tokens": tuned["reply_tokens"], "base_reply_tokens": base["reply_tokens"],
        },
        "generation": {
            "decoding": "greedy (argmax), key/value cache, left padding",
            "max_new_tokens": new_tokens,
            "stop_sequences": formatter.stop_strings,
            "stop_token_ids": sorted(formatter.stop_ids),
            "eval_batch_size": EVAL_BATCH,
            "n_test": len(gen.test),
            "perplexity": "exp(mean NLL per reference token), reference + end-of-turn token, teacher-forced",
            "prompt": formatter.settings(),
            "signatures": tuned["text"]["signatures"],
            "lm_eval": {"tasks": list(task.lm_eval_tasks), "limit": task.lm_eval_limit, "documents": docs,
                        "base": base_lm, "tuned": tuned_lm},
        },
        "training": training,
        "params": params,
        "latency": speed,
        "inference": {"throughput_examples_per_second": len(gen.test) / tuned["seconds"],
                      "unmerged": speed, "merged": merged},
        "resources": {
            **memory,
            "train_seconds": training["train_seconds"],
            "examples_per_second": training["examples_per_second"],
            "tokens_per_second": training.get("tokens_per_second"),
            "adapter_bytes": adapter_bytes,
            "adapter_mb": adapter_bytes / 1e6,
            **seconds,
            "wall_seconds": time.perf_counter() - wall_start,
        },
        "model": {"source": loaded.source, "architecture": loaded.architecture, "pooling": None,
                  "head": "causal LM head (no classification head)",
                  "weight_dtype": str(dtype).removeprefix("torch."), "target_modules": targets,
                  "device": str(device), "base_preparation": preparation, "chat_template": formatter.chat},
    }
