"""Peak GPU memory of a training experiment, predicted before any weight is loaded.

The model is built from its config on the `meta` device (no memory, no weights), the method is
applied to it, and one forward pass of the same loss the training loop computes is traced under
`saved_tensors_hooks`: what autograd keeps for the backward pass is exactly the activation memory,
counted once per storage. Weights are priced by their real storage (bitsandbytes packs linear
layers only; embeddings and norms stay 16-bit), trainable parameters by fp32 master copies,
gradients and AdamW's two moments. On the meta device autocast does not run, so the trace applies
its casts itself (matmuls in bf16, layer norms and losses in fp32), and attention is priced as
CUDA's fused kernels store it (inputs, output and log-sum-exp, never the score matrix).

    peak = weights + optimizer state + max(activations + backward transient, gradients)

The backward transient is the gradient pair of the largest saved tensor (the op that saved it
needs its output's and its input's gradients at once) plus the forward's returned tensors.

With compiled layers (`compile: layers`) autograd keeps what inductor's partitioner chooses, not what
eager ops save: the trace then runs each layer through dynamo and AOTAutograd, partitioned as
inductor partitions (random ops made seeded, so dropout is recomputed in the backward instead of
kept), and executes the partitioned graphs uncompiled on the meta tensors (`traced_as_compiled`).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .compiling import layer_stack, mode_of, uses_graphs
from .schema import ExperimentSpec

GIB = 2**30
ADAMW_STATES = 2                       # exp_avg and exp_avg_sq, fp32 like the parameter they follow
NF4_BLOCK, DQ_BLOCK = 64, 256          # bitsandbytes 4-bit blocksize; double quantization's second level
# cuBLAS takes a 32 MiB workspace from the caching allocator on Hopper for each (thread's handle,
# stream) it runs on: one for the forward (main) thread and one for autograd's backward thread.
# Steps in CUDA graphs (lora_bench.cuda_graphs) also run on the warm-up side stream and the capture
# stream, each from both threads: four more (measured on an H200, 2026-11-28: 0.13-0.16 GiB more
# than the eager twin's prediction).
CUDA_WORKSPACE = 32 * 2**20
CUDA_WORKSPACES = 2 * CUDA_WORKSPACE
GRAPH_WORKSPACES = 4 * CUDA_WORKSPACE


@dataclass
class MemoryEstimate:
    """A prediction in GiB, by component, with what it assumed."""

    weights_gib: float
    trainable_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    transient_gib: float
    peak_gib: float
    batch_size: int
    seq_len: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_bytes(param: torch.Tensor, quantized_as: str | None) -> float:
    """Bytes one frozen weight occupies: packed 4-bit with absmax per block, int8 with a scale per
    row, or its own dtype."""
    n = param.numel()
    if quantized_as is None:
        return n * param.element_size()
    if quantized_as.startswith("4-"):
        blocks = n / NF4_BLOCK
        if quantized_as.endswith("-dq"):  # absmax quantized to 8-bit, fp32 scale per 256 blocks
            return n / 2 + blocks + blocks / DQ_BLOCK * 4
        return n / 2 + blocks * 4
    return n + param.shape[0] * 4  # LLM.int8: int8 weight, fp32 scale per output row


def quantizable(name: str, module: nn.Module) -> bool:
    """What transformers' bitsandbytes integration converts: linear layers of the backbone."""
    return isinstance(module, nn.Linear) and not name.endswith(("lm_head", "head")) and ".head." not in name


class AutocastEmulation(TorchFunctionMode):
    """Autocast's casts for the ops that decide saved sizes, on tensors autocast would not touch:
    matmuls and attention run in `dtype`, norms, softmaxes and losses in fp32 (no casts when
    `dtype` is None). Eager dropout keeps CUDA's one-byte mask either way; under `compiled` layers
    dropout runs as itself, for the partitioner to see."""

    LOW = {torch.nn.functional.linear, torch.matmul, torch.Tensor.matmul, torch.bmm, torch.mm,
           torch.Tensor.__matmul__, torch.nn.functional.scaled_dot_product_attention}
    FP32 = {torch.nn.functional.layer_norm, torch.nn.functional.cross_entropy, torch.nn.functional.log_softmax,
            torch.nn.functional.softmax, torch.nn.functional.nll_loss}

    def __init__(self, dtype: torch.dtype | None, compiled: bool = False):
        super().__init__()
        self.dtype, self.compiled = dtype, compiled

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.dropout and not self.compiled:
            return _dropout(*args, **kwargs)
        if self.dtype is None:
            return func(*args, **kwargs)
        if func in self.LOW:
            args = tuple(a.to(self.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                         for a in args)
        elif func in self.FP32 and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            args = (args[0].float(), *args[1:])
        return func(*args, **kwargs)


class _Dropout(torch.autograd.Function):
    """CUDA's fused dropout keeps a one-byte mask (on meta, dropout decomposes and keeps a float one)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(torch.empty(x.shape, dtype=torch.bool, device=x.device))
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        raise NotImplementedError


def _dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    return _Dropout.apply(x) if training and p > 0 else x


class _FusedAttention(torch.autograd.Function):
    """What CUDA's flash / memory-efficient attention keeps for backward: q, k, v, the output and
    a fp32 log-sum-exp per query. A padded batch goes to the memory-efficient kernel with an
    additive mask per layer, and transformers then expands grouped k/v heads to the query heads."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padded: bool) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        extra: tuple[torch.Tensor, ...] = ()
        if padded:
            k = k.new_empty((*q.shape[:-1], k.shape[-1]))
            v = v.new_empty((*q.shape[:-1], v.shape[-1]))
            extra = (q.new_empty((q.shape[0], 1, q.shape[-2], k.shape[-2])),)
        ctx.save_for_backward(q, k, v, out, lse, *extra)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # never run: the trace stops after forward
        raise NotImplementedError


def fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    *args: Any, padded: bool = False, **kwargs: Any) -> torch.Tensor:
    """scaled_dot_product_attention as the trace prices it; `padded`: the batch stands for a padded one."""
    return _FusedAttention.apply(query, key, value, padded)


@contextlib.contextmanager
def priced_as_cuda(dtype: torch.dtype | None, padded: bool = False, compiled: bool = False) -> Iterator[None]:
    """Attention priced as fused CUDA kernels and, with `dtype`, autocast's casts applied."""
    from transformers import masking_utils

    saved = torch.nn.functional.scaled_dot_product_attention, masking_utils.find_packed_sequence_indices

    def attention(*args: Any, **kwargs: Any) -> torch.Tensor:   # a function: dynamo traces no partial
        return fused_attention(*args, padded=padded, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = attention
    # transformers looks for packed sequences in the position ids by value, which meta tensors lack;
    # a training batch of whole sequences has none
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        with AutocastEmulation(dtype, compiled):
            yield
    finally:
        torch.nn.functional.scaled_dot_product_attention, masking_utils.find_packed_sequence_indices = saved


@dataclass
class Trace:
    saved_bytes: int
    largest_saved: int
    returned_bytes: int


@contextlib.contextmanager
def traced_as_compiled(model: nn.Module) -> Iterator[None]:
    """The model's layers compiled for the trace by a backend that partitions forward and backward as
    inductor does and runs the forward graph as it is; undone, and dynamo's caches cleared, after
    (they would count against the training run's recompilation limit)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.fx_passes.replace_random import replace_random_passes

    def partition(joint: Any, inputs: Any, **kwargs: Any) -> Any:
        replace_random_passes(joint)
        return min_cut_rematerialization_partition(joint, inputs, **kwargs)

    backend = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm),
                           bw_compiler=lambda gm, _: make_boxed_func(gm), partition_fn=partition)
    layers = list(layer_stack(model))
    for layer in layers:
        layer.compile(backend=backend, dynamic=False)
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None
        torch._dynamo.reset()


def trace_saved(model: nn.Module, step: Callable[[], Any], autocast: torch.dtype | None, padded: bool,
                compiled: bool = False) -> Trace:
    """Runs `step` (a forward and its loss, on meta tensors) and sums what autograd saves, once per
    storage, leaving out parameters (priced as weights)."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = max(saved.get(storage._cdata, 0), storage.nbytes())
        return t

    with contextlib.ExitStack() as stack:
        if compiled:
            stack.enter_context(traced_as_compiled(model))
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        stack.enter_context(priced_as_cuda(autocast, padded, compiled))
        out = step()
    returned = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
    return Trace(sum(saved.values()), max(saved.values(), default=0),
                 sum(t.untyped_storage().nbytes() for t in returned))


def predict(model: nn.Module, spec: ExperimentSpec, step: Callable[[], Any], batch_size: int, seq_len: int,
            compute_dtype: torch.dtype | None, quantized_as: str | None, padded: bool) -> MemoryEstimate:
    """The prediction for `model` (on meta, the method applied) trained by `step`."""
    notes: list[str] = []
    modules = dict(model.named_modules())
    weights = trainable = 0.0
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if param.untyped_storage()._cdata in seen:
            continue  # tied embeddings count once
        seen.add(param.untyped_storage()._cdata)
        owner = modules.get(name.rsplit(".", 1)[0])
        packed = quantized_as if (quantized_as and not param.requires_grad and owner is not None
                                  and quantizable(name.rsplit(".", 1)[0], owner)
                                  and name.endswith(".weight")) else None
        if param.requires_grad:
            trainable += param.numel() * param.element_size()
        else:
            weights += weight_bytes(param, packed)
    grads = trainable
    optimizer = ADAMW_STATES * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    if spec.method == "head":
        activations, transient = 0.0, 0.0
        notes.append("head-only: features are computed without gradients; inference activations not priced")
    else:
        compiled = mode_of(spec) == "layers"
        if compiled:
            notes.append("compiled layers: saved tensors as inductor's partitioner keeps them")
        trace = trace_saved(model, step, compute_dtype, padded, compiled)
        activations = float(trace.saved_bytes)
        transient = 2.0 * trace.largest_saved + trace.returned_bytes
        checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
        if checkpointed:  # layers keep only their inputs; one layer's activations return during backward
            for module in checkpointed:
                module.gradient_checkpointing = False
            try:
                full = trace_saved(model, step, compute_dtype, padded, compiled)
            finally:
                for module in checkpointed:
                    module.gradient_checkpointing = True
            layers = model.config.num_hidden_layers
            activations += (full.saved_bytes - trace.saved_bytes) / layers
            notes.append(f"gradient checkpointing: {layers} layer inputs kept (traced), one layer recomputed at a time")
    workspaces = CUDA_WORKSPACES
    if spec.method != "head" and uses_graphs(mode_of(spec)):
        workspaces += GRAPH_WORKSPACES
        notes.append("CUDA graphs: cuBLAS workspaces of the warm-up and capture streams")
    peak = weights + trainable + optimizer + max(activations + transient, grads) + workspaces
    return MemoryEstimate(weights / GIB, trainable / GIB, grads / GIB, optimizer / GIB, activations / GIB,
                          transient / GIB, peak / GIB, batch_size, seq_len, notes)


def predicted_cost(spec: ExperimentSpec) -> float:
    """A relative cost for balancing shards, without building anything: tokens trained times the
    model's parameter count (full fine-tuning and quantized bases weigh more)."""
    from .catalog import parameter_estimate

    examples = spec.n * (spec.epochs or 1)
    if spec.max_steps is not None:
        examples = min(examples, spec.max_steps * spec.batch_size * (spec.grad_accum or 1))
    factor = {"head": 0.4, "full": 1.5}.get(spec.method, 1.0) * (1.3 if spec.quantized else 1.0)
    return examples * spec.max_length * parameter_estimate(spec.model) * factor / spec.devices


class _Int8Matmul(torch.autograd.Function):
    """LLM.int8's matmul keeps an fp16 copy of its (bf16) input for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x.to(torch.float16))
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        raise NotImplementedError


def as_int8_linears(model: nn.Module) -> None:
    """Prices every linear layer bitsandbytes would convert as an 8-bit one."""
    for name, module in model.named_modules():
        if quantizable(name, module) and not any(p.requires_grad for p in module.parameters(recurse=False)):
            module.forward = (lambda m: lambda x: _Int8Matmul.apply(x, m.weight))(module)  # type: ignore[method-assign]


def meta_config(model: str) -> Any:
    """The model's config without its weights: a shape's published config, a checkpoint folder's
    config.json, a GGUF file's metadata, or the Hub's config for a hub id."""
    from transformers import AutoConfig

    from .catalog import parse_model
    from .models import checkpoint_source, shape_config

    ref = parse_model(model)
    if ref.kind == "shape":
        return shape_config(ref)
    if ref.path is not None and ref.path.suffix == ".gguf":
        return AutoConfig.from_pretrained(ref.path.parent, gguf_file=ref.path.name)
    return AutoConfig.from_pretrained(checkpoint_source(ref))


def classifier_on_meta(spec: ExperimentSpec, num_labels: int, dtype: torch.dtype) -> nn.Module:
    """The experiment's classifier with its method applied, built on the meta device."""
    from transformers import AutoModel

    from .methods import method_module
    from .models import LoadedModel, SequenceClassifier, _is_decoder_type
    from .schema import ADAPTER_METHODS
    from .targets import resolve_targets

    config = meta_config(spec.model)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        backbone = AutoModel.from_config(config, dtype=dtype)
        pooling = "last" if _is_decoder_type(config) else "mean"
        classifier = SequenceClassifier(backbone, num_labels, pooling)
    if spec.quantized and spec.kbit_prepare:  # peft's preparation upcasts every unquantized weight
        for name, module in classifier.backbone.named_modules():
            if not quantizable(name, module):
                for param in module.parameters(recurse=False):
                    param.data = param.data.float()
    if spec.grad_checkpointing or (spec.quantized and spec.kbit_prepare and spec.grad_checkpointing is not False):
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loaded = LoadedModel(classifier, None, f"meta:{spec.model}", config.model_type, pooling, dtype)
    targets = resolve_targets(spec.targets, config.model_type) if spec.method in ADAPTER_METHODS else None
    method = spec.method if spec.method not in ("pissa", "olora") else "lora"  # same sizes; their init needs values
    model = method_module(method).prepare(loaded, ExperimentSpec.from_dict({**spec.to_dict(), "method": method}),
                                          targets)
    if spec.bits == "8":
        as_int8_linears(model)
    return model


def estimate_classification(spec: ExperimentSpec, num_labels: int, seq_len: int, batch_size: int | None = None,
                            device_type: str = "cuda", padded: bool = True) -> MemoryEstimate:
    """Predicted peak of a classification experiment whose longest batch is `batch_size` x `seq_len`
    (`padded`: that batch holds padding, so attention takes a mask)."""
    from .recipes import compute_dtypes

    batch = batch_size or spec.batch_size
    weights_dtype, autocast = compute_dtypes(spec, device_type)
    model = classifier_on_meta(spec, num_labels, weights_dtype)
    model.train()
    ids = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    labels = torch.zeros(batch, dtype=torch.long, device="meta")

    def step() -> torch.Tensor:
        return nn.functional.cross_entropy(model(input_ids=ids, attention_mask=None).float(), labels)

    quantized_as = spec.bits if spec.quantized else None
    return predict(model, spec, step, batch, seq_len, autocast, quantized_as, padded)
