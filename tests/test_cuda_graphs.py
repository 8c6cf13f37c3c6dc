"""CUDA-graph training steps (lora_bench.cuda_graphs): padding rows, the eager path on CPU, and on a
GPU that replayed graphs train exactly as eager steps do."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from lora_bench.cuda_graphs import WARMUP, GraphedSteps, make_capturable, pad_rows
from lora_bench.grid import resolve
from lora_bench.runner import run
from lora_bench.schema import SpecError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: graphs are captured on one")


def test_padded_rows_weigh_nothing_in_the_loss():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 4), torch.tensor([0, 2, 1])
    rows, weights = pad_rows({"logits": logits, "labels": labels}, 8)
    assert rows["logits"].shape == (8, 4) and weights.tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    weighted = (nn.functional.cross_entropy(rows["logits"], rows["labels"], reduction="none") * weights).sum() / weights.sum()
    assert weighted.item() == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    full, ones = pad_rows({"labels": labels}, 3)
    assert full["labels"] is labels and ones.tolist() == [1, 1, 1]


def classification_spec(model: Path, task: Path, compile_mode: str) -> object:
    return resolve({"model": str(model), "task": str(task), "method": "lora", "n": 10, "epochs": 1,
                    "batch_size": 8, "dropout": 0.0, "lr": 1e-3, "compile": compile_mode, "latency_rounds": 2})


def test_graphs_on_cpu_train_eagerly_like_off_and_say_so(tiny_llama, csv_task):
    """On CPU `graphs` takes its padded, weighted path without capture: same losses as `off`."""
    results = {mode: run(classification_spec(tiny_llama, csv_task, mode), Path(tempfile.mkdtemp()), lambda m: None)
               for mode in ("off", "graphs")}
    off, graphs = (results[m]["training"] for m in ("off", "graphs"))
    assert off["optimizer_steps"] == graphs["optimizer_steps"] == 4     # 30 examples in batches of 8
    assert [v for _, v in graphs["loss_curve"]] == pytest.approx([v for _, v in off["loss_curve"]], rel=1e-4)
    assert graphs["recipe"]["cuda_graphs"]["eager_reason"].startswith("CUDA graphs need a CUDA device")
    assert graphs["recipe"]["cuda_graphs"]["captured"] == 0
    assert graphs["padding_fraction"] > off["padding_fraction"]        # lengths padded to a 32-token bucket
    assert "cuda_graphs" not in off["recipe"]


def test_compile_belongs_to_the_lora_bench_recipe(tiny_llama, csv_task):
    with pytest.raises(SpecError, match="compile.*only the lora-bench recipe"):
        resolve({"model": str(tiny_llama), "task": str(csv_task), "method": "lora", "recipe": "plain",
                 "compile": "graphs"})


def test_only_a_capturable_optimizer_is_accepted():
    sgd = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="capturable optimizer; SGD"):
        make_capturable(sgd, torch.device("cuda"))


@needs_cuda
def test_replayed_graphs_train_as_eager_steps_do():
    """Same model, same batches: parameters after ten graphed steps equal those after ten eager ones."""
    device = torch.device("cuda")
    batches = [(torch.randn(16, 32, device=device), torch.randint(0, 4, (16,), device=device)) for _ in range(10)]

    def train(graphed: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 4)).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        make_capturable(optimizer, device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(model(x), y)

        steps = GraphedSteps(loss_fn, optimizer, device)
        for x, y in batches:
            if graphed:
                steps.backward(x=x, y=y)
                steps.step()
            else:
                loss_fn(x, y).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=False)
            scheduler.step()
        if graphed:
            assert steps.info() == {"captured": 2, "replays": len(batches) - WARMUP, "warmup_steps": WARMUP,
                                    "eager_reason": None}
        torch.cuda.synchronize()
        return [p.detach().clone() for p in model.parameters()]

    for eager, graphed in zip(train(False), train(True)):
        torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-6)


def test_the_record_keeps_learning_rates_as_numbers_when_graphs_hold_them_in_tensors():
    from lora_bench.train import linear_schedule, param_groups

    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(3))], lr=2e-3)
    optimizer.param_groups[0]["lr"] = torch.tensor(2e-3)     # as make_capturable leaves it on a GPU
    linear_schedule(optimizer, 10, resolve({"model": "minilm-l6", "method": "lora", "n": 5, "batch_size": 5,
                                            "epochs": 1, "warmup_ratio": 0.0}))
    assert param_groups(optimizer) == [{"params": 3, "lr": pytest.approx(2e-3)}]
