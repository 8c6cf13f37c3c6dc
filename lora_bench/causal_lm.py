"""Causal-LM training on random tokens (task type `causal-lm`): tokens/s, model-FLOPs utilisation
and peak memory of a training step, for the `plain` loop against the `lora-bench` recipe.

- `plain`: a bf16 model, peft's fp32 adapters, `model(input_ids, labels=input_ids).loss` (which
  materialises fp32 logits over the whole vocabulary), no autocast, torch's default AdamW;
- `lora-bench`: bf16 autocast, the LM head and cross-entropy fused and chunked (`ChunkedLinearCE`:
  logits exist one chunk at a time and never for backward), fused AdamW, and `compile` /
  `grad_checkpointing` as the spec says.
Quality is not measured: the tokens are random.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from . import determinism, flops
from .estimate import MemoryEstimate, meta_config, predict
from .latency import time_calls
from .memory_fit import fit
from .recipes import compute_dtypes
from .resources import parameter_counts, peak_memory, reset_peak
from .schema import ADAPTER_METHODS, ExperimentSpec
from .targets import resolve_targets

CHUNK_TOKENS = 1024     # tokens per logits chunk of the fused loss: 1024 x 152k fp32 logits = 0.6 GB
WARMUP_STEPS = 3        # left out of the steady-state step time (compilation, allocator warm-up)


def random_tokens_info(spec: ExperimentSpec) -> dict[str, Any]:
    digest = hashlib.sha256(f"random-tokens:{spec.seed}:{spec.n}:{spec.max_length}".encode()).hexdigest()
    return {"task": "random-tokens", "task_file": None, "labels": [], "n_train": spec.n, "n_val": 0, "n_test": 0,
            "sequence_length": spec.max_length, "train_hash": digest, "val_hash": "", "test_hash": ""}


class ChunkedLinearCE(torch.autograd.Function):
    """Mean next-token cross-entropy of `hidden @ weight.T`, a chunk of tokens at a time, with the
    gradients computed in the forward pass (as Liger's fused linear cross-entropy does): only
    d(loss)/d(hidden) (and d/d(weight) when it trains) is kept for backward, never the logits."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        count = labels.numel()
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if hidden.is_meta:  # the memory estimator's trace: sizes only
            ctx.save_for_backward(grad_hidden, *(() if grad_weight is None else (grad_weight,)))
            ctx.weight_grad = grad_weight is not None
            return total
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, count, CHUNK_TOKENS):
                h = hidden[start:start + CHUNK_TOKENS].to(weight.dtype)
                y = labels[start:start + CHUNK_TOKENS]
                logits = (h @ weight.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(y), device=y.device), y] -= 1
                probs = probs.div_(count).to(weight.dtype)
                grad_hidden[start:start + CHUNK_TOKENS] = probs @ weight
                if grad_weight is not None:
                    grad_weight += (probs.T @ h).float()
        ctx.save_for_backward(grad_hidden, *(() if grad_weight is None else (grad_weight,)))
        ctx.weight_grad = grad_weight is not None
        return total / count

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        saved = ctx.saved_tensors
        grad_weight = (saved[1] * grad).to(saved[1].dtype) if ctx.weight_grad else None
        return saved[0] * grad, grad_weight, None


def chunked_ce_transient_bytes(vocab: int) -> int:
    """What one chunk holds at once: fp32 logits and their 16-bit probabilities."""
    return CHUNK_TOKENS * vocab * (4 + 2)


def causal_lm_of(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def loss_fn(spec: ExperimentSpec) -> Callable[[nn.Module, torch.Tensor], Any]:
    """The recipe's loss of one batch; returns (loss, tensors the forward returns besides it)."""
    if spec.recipe == "plain":
        def plain(model: nn.Module, ids: torch.Tensor) -> Any:
            out = model(input_ids=ids, labels=ids)
            return out.loss, out.logits
        return plain

    def fused(model: nn.Module, ids: torch.Tensor) -> Any:
        lm = causal_lm_of(model)
        # no KV cache in training: it is never read, and its per-layer state makes torch.compile
        # recompile every layer instead of reusing one compiled layer
        hidden = lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        head = lm.get_output_embeddings().weight
        flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        return ChunkedLinearCE.apply(flat, head, ids[:, 1:].reshape(-1)), None
    return fused


def build(spec: ExperimentSpec, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """The causal LM with the spec's method applied: a shape built from its config (on `meta` for
    the estimator), or a checkpoint through from_pretrained (quantized if `bits` says so)."""
    from transformers import AutoModelForCausalLM

    from .catalog import parse_model
    from .models import checkpoint_source
    from .quantization import bnb_config

    ref = parse_model(spec.model)
    quantization = bnb_config(spec.bits, dtype)
    if ref.kind == "shape" or str(device) == "meta":
        if quantization is not None and str(device) != "meta":
            raise ValueError("bits: causal-lm shapes train 16-bit bases only; quantized bases need a checkpoint")
        config = meta_config(spec.model)
        config._attn_implementation = "sdpa"
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
        if quantization is not None:
            kwargs.update(quantization_config=quantization, device_map={"": str(device)})
        model = AutoModelForCausalLM.from_pretrained(checkpoint_source(ref), **kwargs)
        if quantization is None:
            model.to(device)
    if spec.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.method in ADAPTER_METHODS:
        from peft import LoraConfig, get_peft_model

        from .methods.lora import VARIANTS

        targets = resolve_targets(spec.targets, model.config.model_type)
        config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                            bias="none", task_type="CAUSAL_LM", **VARIANTS.get(spec.method, {}))
        if spec.grad_checkpointing:
            model.enable_input_require_grads()
        return get_peft_model(model, config)
    if spec.method != "full":
        raise ValueError(f"method: {spec.method!r} has no causal-lm training here; allowed: full, lora and variants")
    return model


def estimate(spec: ExperimentSpec) -> MemoryEstimate:
    weights, autocast = compute_dtypes(spec, "cuda")
    model = build(spec, "meta", weights)
    model.train()
    ids = torch.zeros(spec.batch_size, spec.max_length, dtype=torch.long, device="meta")
    step = loss_fn(spec)
    prediction = predict(model, spec, lambda: step(model, ids), spec.batch_size, spec.max_length, autocast,
                         spec.bits if spec.quantized else None, padded=False)
    if spec.recipe != "plain":  # the fused loss's chunk lives inside one autograd op: not a saved tensor
        extra = chunked_ce_transient_bytes(model.config.vocab_size) / 2**30
        prediction.transient_gib += extra
        prediction.peak_gib += extra
    return prediction


def run(spec: ExperimentSpec, adapter_dir: Any, progress: Callable[[str], None]) -> dict[str, Any]:
    from .compiling import compile_model, mode_of, uses_graphs
    from .cuda_graphs import GraphedSteps, make_capturable

    wall_start = time.perf_counter()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    determinism_info = determinism.configure(spec.seed, determinism.requested(spec))
    fitted = fit(spec, 0, spec.max_length, device, progress, predict=estimate)
    spec = fitted.spec
    weights, autocast = compute_dtypes(spec, device.type)
    progress(f"building {spec.model} for causal-LM training ({spec.recipe} recipe) on {device.type}")
    torch.manual_seed(spec.seed)
    model = build(spec, device, weights)
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (spec.n, spec.max_length), generator=torch.Generator().manual_seed(spec.seed))
    params = parameter_counts(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda" and spec.recipe != "plain"
    optimizer = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=spec.weight_decay or 0.0, fused=fused)
    step_loss = loss_fn(spec)
    steps = spec.max_steps or math.ceil(spec.n / spec.batch_size) * (spec.epochs or 1)
    compile_mode = mode_of(spec)
    graphed = uses_graphs(compile_mode)
    uncompile = compile_model(causal_lm_of(model).get_decoder(), compile_mode)

    def micro_loss(input_ids: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None, cache_enabled=not graphed):
            return step_loss(model, input_ids)[0]

    graphs = None
    if graphed:
        make_capturable(optimizer, device)
        graphs = GraphedSteps(micro_loss, optimizer, device)
    reset_peak(device)
    model.train()
    times: list[float] = []
    curve: list[list[float]] = []
    start = time.perf_counter()
    for step in range(steps):
        rows = torch.arange(step * spec.batch_size, (step + 1) * spec.batch_size) % spec.n
        ids = tokens[rows].to(device)
        begin = time.perf_counter()
        if graphs is not None:
            loss = graphs.backward(input_ids=ids)
            graphs.step()
        else:
            loss = micro_loss(ids)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        value = loss.detach().item()   # waits for the GPU: each step is timed whole
        if not math.isfinite(value):
            from .train import NonFiniteLoss

            raise NonFiniteLoss(f"loss became {value} at step {step + 1}")
        times.append(time.perf_counter() - begin)
        curve.append([step + 1, value])
        if (step + 1) % max(1, steps // 4) == 0:
            progress(f"step {step + 1}/{steps}: loss {value:.3f}, {1000 * times[-1]:.0f} ms")
    seconds = time.perf_counter() - start
    uncompile()
    memory = peak_memory(device)
    steady = times[WARMUP_STEPS:] or times
    step_s = statistics.median(steady)
    per_step_tokens = spec.batch_size * spec.max_length
    training = {
        "train_seconds": seconds, "optimizer_steps": steps, "examples_seen": steps * spec.batch_size,
        "examples_per_second": steps * spec.batch_size / seconds, "tokens": steps * per_step_tokens,
        "tokens_per_second": per_step_tokens / step_s, "padding_fraction": 0.0,
        "step_ms_median": 1000 * step_s, "first_steps_seconds": sum(times[:WARMUP_STEPS]), "loss_curve": curve,
        "optimizer": "adamw (fused)" if fused else "adamw", "eval_seconds": 0.0,
        "recipe": {"name": spec.recipe, "compile": compile_mode,
                   **({"cuda_graphs": graphs.info()} if graphs is not None else {}),
                   "autocast": str(autocast).removeprefix("torch.") if autocast else None,
                   "loss": "logits over the vocabulary (transformers)" if spec.recipe == "plain"
                   else f"fused linear cross-entropy, {CHUNK_TOKENS}-token chunks",
                   "grad_checkpointing": bool(spec.grad_checkpointing)},
    }
    if device.type == "cuda":
        training["utilisation"] = flops.model_utilisation(model, model.config, training["tokens_per_second"],
                                                          spec.max_length, True, torch.cuda.get_device_name(device))
    latency = forward_latency(model, tokens[:1, :min(spec.max_length, 64)].to(device), spec.latency_rounds, autocast)
    return {
        "determinism": determinism_info,
        "quality": "not applicable: random tokens",
        "metrics": {"accuracy": None, "macro_f1": None, "final_loss": curve[-1][1]},
        "predictions": {},
        "training": training,
        "params": params,
        "latency": latency,
        "inference": {"merged": {"offered": False, "why": "causal-lm throughput benchmark"}},
        "memory_estimate": fitted.report(memory["peak_memory_gib"] if device.type == "cuda" else None),
        "resources": {**memory, "train_seconds": seconds, "examples_per_second": training["examples_per_second"],
                      "tokens_per_second": training["tokens_per_second"], "pipeline_seconds": seconds,
                      "adapter_bytes": 0, "adapter_mb": 0.0, "wall_seconds": time.perf_counter() - wall_start},
        "model": {"source": spec.model, "architecture": model.config.model_type, "pooling": None,
                  "weight_dtype": str(weights).removeprefix("torch."), "device": str(device),
                  "target_modules": resolve_targets(spec.targets, model.config.model_type)
                  if spec.method in ADAPTER_METHODS else None},
    }


@torch.no_grad()
def forward_latency(model: nn.Module, ids: torch.Tensor, rounds: int, autocast: torch.dtype | None) -> dict[str, Any]:
    """Forward time of one 64-token sequence, as lora_bench.latency reports it."""
    model.eval()

    def forward(_: int) -> None:
        with torch.autocast(ids.device.type, dtype=autocast, enabled=autocast is not None):
            model(input_ids=ids)
    return time_calls(forward, rounds, ids.device, warmup=3)
