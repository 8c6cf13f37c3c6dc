"""Training steps replayed from CUDA graphs: the `graphs` compile mode.

A small model's step is thousands of tiny kernels, and on a GPU host its time is the host's launch
time, not the GPU's (SmolLM2-135M at 32 x 32 tokens: 134 ms eager, most of it launches). Capturing the
micro-step (forward, loss, backward) and the optimizer step as CUDA graphs replays each with one
launch. Unlike `torch.compile(mode="reduce-overhead")` this compiles nothing: capture costs one
step, not a minute.

Graphs replay fixed shapes at fixed addresses, hence the rules here:
- inputs are copied into static buffers, one graph per input shape (callers pad lengths to buckets,
  `compiling.padded_length`, and rows to the batch size with weight 0, `pad_rows`);
- gradients stay allocated (zeroed in place, never set to None) and the optimizer is capturable
  with a tensor learning rate, which the scheduler fills in place (`make_capturable`);
- each shape's first WARMUP micro-steps, and the first WARMUP optimizer steps, run eagerly on a side
  stream (lazy CUDA initialisation, optimizer state), then it is captured;
- autocast must not cache casts under capture (`autocast_for(..., cache=False)`).
Captures share one memory pool: each graph's output (its loss) stays referenced, and everything
else is scratch that no two graphs use at once. On a CPU, or when a capture fails, steps run eagerly
and `info()` says why, so a result never silently claims graphs it did not use.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch

WARMUP = 2

LossFn = Callable[..., torch.Tensor]


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Lets `optimizer.step()` run inside a graph: state on the device, the learning rate a tensor."""
    if device.type != "cuda":
        return
    for group in optimizer.param_groups:
        if "capturable" not in group:
            raise ValueError(f"compile: graphs needs a capturable optimizer; {type(optimizer).__name__} is not")
        group["capturable"] = True
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)


def pad_rows(inputs: dict[str, torch.Tensor], rows: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pads a short last batch to `rows` by repeating its first row, with per-row weights 1 (real)
    and 0 (padding): the graph keeps one shape, and the weighted mean loss equals the unpadded one."""
    count = next(iter(inputs.values())).shape[0]
    weights = torch.zeros(rows)
    weights[:count] = 1.0
    if count == rows:
        return inputs, weights
    fill = torch.zeros(rows - count, dtype=torch.long)
    return {name: torch.cat([t, t[fill.to(t.device)]]) for name, t in inputs.items()}, weights


class GraphedSteps:
    """`backward(**inputs)` runs `loss_fn(**inputs)` and its backward; `step()` the optimizer step
    and the zeroing of gradients; both from CUDA graphs once warmed up."""

    def __init__(self, loss_fn: LossFn, optimizer: torch.optim.Optimizer, device: torch.device,
                 loss_scale: float = 1.0):
        self.loss_fn, self.optimizer, self.loss_scale = loss_fn, optimizer, loss_scale
        self.enabled = device.type == "cuda"
        self.reason = None if self.enabled else "CUDA graphs need a CUDA device: steps ran eagerly"
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}
        self.seen: Counter[tuple] = Counter()
        self.step_graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0
        self.pool: Any = None
        self.side = torch.cuda.Stream(device) if self.enabled else None
        self.replays = 0

    def backward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The micro-batch's loss (unscaled); valid until the next call."""
        if not self.enabled:
            return self._eager(inputs)
        key = tuple((name, tuple(t.shape), t.dtype) for name, t in sorted(inputs.items()))
        if key in self.graphs:
            graph, static, loss = self.graphs[key]
            for name, tensor in inputs.items():
                static[name].copy_(tensor, non_blocking=True)
            graph.replay()
            self.replays += 1
            return loss
        self.seen[key] += 1
        if self.seen[key] <= WARMUP:
            return self._on_side_stream(lambda: self._eager(inputs))
        return self._capture(key, inputs)

    def step(self) -> None:
        if not self.enabled:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return
        if self.step_graph is not None:
            self.step_graph.replay()
            return
        if self.eager_steps < WARMUP or self.reason is not None:
            self.eager_steps += 1
            self._on_side_stream(self._eager_step)
            return
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                self._eager_step()
        except RuntimeError as error:
            self._give_up(f"capturing the optimizer step failed: {error}")
            self._on_side_stream(self._eager_step)
            return
        self.step_graph = graph
        graph.replay()

    def info(self) -> dict[str, Any]:
        return {"captured": len(self.graphs) + (self.step_graph is not None), "replays": self.replays,
                "warmup_steps": WARMUP, "eager_reason": self.reason}

    def _eager(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.loss_fn(**inputs)
        (loss * self.loss_scale).backward()
        return loss.detach()

    def _eager_step(self) -> None:
        """Warm-up and fallback steps: gradients stay allocated, where the captured graphs accumulate."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)

    def _on_side_stream(self, work: Callable[[], Any]) -> Any:
        assert self.side is not None
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            result = work()
        torch.cuda.current_stream().wait_stream(self.side)
        return result

    def _capture(self, key: tuple, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reason is not None:
            return self._on_side_stream(lambda: self._eager(inputs))
        for group in self.optimizer.param_groups:   # backward must accumulate in place, not allocate
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        static = {name: t.clone() for name, t in inputs.items()}
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                loss = self.loss_fn(**static)
                (loss * self.loss_scale).backward()
        except RuntimeError as error:
            self._give_up(f"capturing the training step failed: {error}")
            return self._on_side_stream(lambda: self._eager(inputs))
        self.pool = graph.pool()
        self.graphs[key] = (graph, static, loss.detach())
        graph.replay()
        self.replays += 1
        return self.graphs[key][2]

    def _give_up(self, reason: str) -> None:
        """After a failed capture every later step runs eagerly; the record says why."""
        torch.cuda.synchronize()
        self.reason = reason.splitlines()[0][:300]
