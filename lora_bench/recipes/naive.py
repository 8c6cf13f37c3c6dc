"""The origin study's pipeline, kept as a side-by-side baseline: transformers' `Trainer` with
per-device batch `batch_size` (the study's 4), every text padded to `max_length` (the study's 256),
no length grouping, fp16 weights under fp16 mixed precision on a GPU, and evaluation through
`Trainer.predict` (its default eval batch of 8). Only the timing of this pipeline is its own:
the model, data, method and metrics are the experiment's."""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import torch
from torch import nn

from ..data import Example
from ..evaluate import metrics_from_logits
from ..schema import ExperimentSpec
from ..train import param_groups, thin_curve

EVAL_BATCH = 8   # TrainingArguments' default per_device_eval_batch_size


class WithLoss(nn.Module):
    """Gives Trainer the `loss` it looks for; the classifier itself returns logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.float(), labels)
        return out


def padded_rows(tokenizer: Any, examples: list[Example], max_length: int) -> list[dict[str, Any]]:
    encoded = tokenizer([e.text for e in examples], truncation=True, max_length=max_length, padding="max_length")
    return [{"input_ids": ids, "attention_mask": mask, "labels": e.label}
            for ids, mask, e in zip(encoded["input_ids"], encoded["attention_mask"], examples)]


def arguments(spec: ExperimentSpec, device: torch.device, output_dir: str, rows: int) -> Any:
    import inspect

    from transformers import TrainingArguments

    assert spec.epochs is not None and spec.lr is not None
    steps = math.ceil(math.ceil(rows / spec.batch_size) / (spec.grad_accum or 1)) * spec.epochs
    steps = min(steps, spec.max_steps or steps)
    accepted = inspect.signature(TrainingArguments.__init__).parameters
    # no length grouping: transformers 5.17 names it group_by_length, later ones train_sampling_strategy
    ordering = {"group_by_length": False} if "group_by_length" in accepted else {"train_sampling_strategy": "random"}
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=spec.batch_size, per_device_eval_batch_size=EVAL_BATCH,
        gradient_accumulation_steps=spec.grad_accum or 1, num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1, learning_rate=spec.lr, weight_decay=spec.weight_decay or 0.0,
        warmup_steps=round(steps * (spec.warmup_ratio or 0.0)), lr_scheduler_type="linear",
        fp16=device.type == "cuda", logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
        seed=spec.seed, data_seed=spec.seed, dataloader_num_workers=0, remove_unused_columns=False,
        use_cpu=device.type != "cuda", disable_tqdm=True, **ordering)


def train_and_evaluate(model: nn.Module, tokenizer: Any, train_examples: list[Example], val: list[Example],
                       test: list[Example], spec: ExperimentSpec, device: torch.device) -> dict[str, Any]:
    """Trains with Trainer, then predicts val and test with it; returns the training block and
    both evaluations (the same metric dicts as lora_bench.evaluate)."""
    from transformers import Trainer, default_data_collator

    wrapped = WithLoss(model)
    rows = padded_rows(tokenizer, train_examples, spec.max_length)
    with tempfile.TemporaryDirectory(prefix="lb-naive-") as out:
        trainer = Trainer(model=wrapped, args=arguments(spec, device, out, len(rows)), train_dataset=rows,
                          data_collator=default_data_collator)
        start = time.perf_counter()
        result = trainer.train()
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        evaluations = {}
        for name, examples in (("val", val), ("test", test)):
            predicted = trainer.predict(padded_rows(tokenizer, examples, spec.max_length))
            logits = torch.as_tensor(predicted.predictions)
            evaluations[name] = metrics_from_logits(logits, torch.tensor([e.label for e in examples]))
        eval_seconds = time.perf_counter() - start
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    if losses and not all(torch.isfinite(torch.tensor([v for _, v in losses]))):
        from ..train import NonFiniteLoss

        step = next(s for s, v in losses if not torch.isfinite(torch.tensor(v)))
        raise NonFiniteLoss(f"loss became non-finite at optimizer step {step} (Trainer)")
    epochs = result.global_step * spec.batch_size * (spec.grad_accum or 1) / max(len(rows), 1)
    seen = min(len(rows) * (spec.epochs or 1), result.global_step * spec.batch_size * (spec.grad_accum or 1))
    tokens = round(sum(sum(r["attention_mask"]) for r in rows) * min(epochs, spec.epochs or 1))
    training = {
        "train_seconds": train_seconds,
        "optimizer_steps": result.global_step,
        "examples_per_second": seen / train_seconds,
        "examples_seen": seen,
        "tokens_per_second": tokens / train_seconds,
        "tokens": tokens,
        "padding_fraction": 1 - tokens / max(seen * spec.max_length, 1),
        "loss_curve": thin_curve(losses),
        "optimizer": trainer.optimizer.__class__.__name__.lower(),
        "param_groups": param_groups(trainer.optimizer),
        "eval_seconds": eval_seconds,
        "recipe": {"name": "naive", "trainer": True, "fp16": device.type == "cuda", "padding": "max_length",
                   "eval_batch_size": EVAL_BATCH},
    }
    return {"training": training, "val": evaluations["val"], "test": evaluations["test"]}
