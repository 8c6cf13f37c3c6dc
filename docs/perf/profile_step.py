"""Where a training step's time goes, from torch.profiler: wall time against GPU kernel time, kernel
count, and GPU time by kind (matrix products, attention, the rest). The evidence behind
docs/performance.md's "what limits the missed targets"; needs a CUDA GPU.

    python docs/perf/profile_step.py [--out DIR]

Profiles causal-LM LoRA steps (lora_bench.causal_lm, the lora-bench recipe's fused loss) of weightless
shapes: SmolLM2-135M at 32 x 32 tokens (eager and CUDA graphs) and Qwen2.5-1.5B at 16 x 512 (eager and
compiled layers)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lora_bench import causal_lm
from lora_bench.compiling import compile_model, uses_graphs
from lora_bench.cuda_graphs import GraphedSteps, make_capturable
from lora_bench.grid import resolve

CASES = [("shape:smollm2-135m", 32, 32, "off"), ("shape:smollm2-135m", 32, 32, "graphs"),
         ("shape:qwen2.5-1.5b", 16, 512, "off"), ("shape:qwen2.5-1.5b", 16, 512, "layers")]
WARM, TIMED, PROFILED = 6, 10, 3


def kind(name: str) -> str:
    lowered = name.lower()
    if any(k in lowered for k in ("gemm", "nvjet", "cutlass", "sm90_xmma", "matmul")):
        return "matrix products"
    if any(k in lowered for k in ("flash", "fmha", "attention", "efficient")):
        return "attention"
    return "other (elementwise, reductions, copies, optimizer)"


def profile_case(model_name: str, batch: int, length: int, mode: str) -> dict:
    device = torch.device("cuda")
    spec = resolve({"model": model_name, "task": "random-tokens", "method": "lora", "rank": 16, "alpha": 32,
                    "dropout": 0.05, "targets": "all-linear", "n": batch, "batch_size": batch,
                    "max_length": length, "max_steps": 1, "lr": 1e-4, "recipe": "lora-bench", "compile": mode})
    torch.manual_seed(0)
    model = causal_lm.build(spec, device, torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    compile_model(causal_lm.causal_lm_of(model).get_decoder(), mode)
    step_loss = causal_lm.loss_fn(spec)
    graphed = uses_graphs(mode)

    def micro_loss(input_ids: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not graphed):
            return step_loss(model, input_ids)[0]

    if graphed:
        make_capturable(optimizer, device)
    graphs = GraphedSteps(micro_loss, optimizer, device) if graphed else None
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device=device)

    def step() -> None:
        if graphs is not None:
            graphs.backward(input_ids=ids)
            graphs.step()
        else:
            micro_loss(ids).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(WARM):
        step()
    torch.cuda.synchronize()
    walls = []
    for _ in range(TIMED):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_kind: dict[str, float] = {}
    for e in kernels:
        by_kind[kind(e.name)] = by_kind.get(kind(e.name), 0.0) + e.device_time / 1e3 / PROFILED
    gpu_ms = sum(by_kind.values())
    wall_ms = 1e3 * statistics.median(walls)
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=15)
    result = {"model": model_name, "batch": batch, "length": length, "compile": mode,
              "wall_ms": wall_ms, "gpu_kernel_ms": gpu_ms, "gpu_busy_fraction": gpu_ms / wall_ms,
              "kernels_per_step": len(kernels) / PROFILED,
              "gpu_ms_by_kind": {k: round(v, 2) for k, v in sorted(by_kind.items())},
              "graphs": graphs.info() if graphs is not None else None,
              "device": torch.cuda.get_device_name(device)}
    return {"summary": result, "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for case in CASES:
        profiled = profile_case(*case)
        torch.cuda.empty_cache()   # the case's model is gone with its frame
        summaries.append(profiled["summary"])
        print(json.dumps(profiled["summary"]), flush=True)
        name = "-".join(str(c) for c in case).replace(":", "_")
        (args.out / f"profile-{name}.txt").write_text(profiled["table"])
    (args.out / "profile.json").write_text(json.dumps(summaries, indent=1))


if __name__ == "__main__":
    main()
