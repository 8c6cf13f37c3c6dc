"""One rank of a `devices: N` experiment, started by torchrun from `distributed.py`.

Every rank builds the classifier, shards it with FSDP2 (`fully_shard` on each decoder layer, then
on the root), trains on its own share of the training examples with lora-bench's training loop, and
writes what it measured to `<out>/rank<k>.json`. A `shape:` model is built on the meta device and
materialised shard by shard, so no process ever holds the whole model: that is what lets a model
larger than one GPU train at all. On CUDA the master weights, gradients and AdamW state stay fp32
(16 bytes a parameter, split over the ranks) and compute runs in bf16; on CPU (gloo) all is fp32.

Evaluation and latency run on every rank in lockstep on the same examples (each forward gathers
the sharded weights, so all ranks must take part); rank 0 reports them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from . import data, determinism
from .catalog import parse_model
from .evaluate import evaluate
from .latency import measure_latency
from .methods import method_module
from .models import LoadedModel, SequenceClassifier, load_classifier, shape_config, shape_tokenizer
from .quantization import frozen_weight_bytes, logical_parameters
from .resources import parameter_counts, peak_memory, reset_peak
from .runner import SHAPE_EVAL_EXAMPLES, prepare_base
from .schema import ExperimentSpec
from .train import pad_target, train

PROGRESS = "lora-bench progress: "   # rank 0's progress lines; distributed.py forwards them


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every parameter on the meta device (no memory) while buffers are built as usual, so
    computed buffers such as rotary frequencies keep their real values."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def build(spec: ExperimentSpec, num_labels: int) -> LoadedModel:
    """A shape on the meta device (fp32 parameters, not yet allocated); any other model loaded in
    fp32 on the CPU, to be moved to the device shard by shard."""
    ref = parse_model(spec.model)
    if ref.kind != "shape":
        return load_classifier(spec.model, num_labels, torch.device("cpu"), torch.float32)
    from transformers import AutoModel

    config = shape_config(ref)
    with parameters_on_meta():
        model = SequenceClassifier(AutoModel.from_config(config, dtype=torch.float32), num_labels, "last")
    tokenizer = shape_tokenizer()
    tokenizer.padding_side = "right"
    return LoadedModel(model, tokenizer, f"shape:{ref.value}", config.model_type, "last", torch.float32,
                       weightless=True)


def layer_stack(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's repeated blocks (decoder or encoder layers): FSDP's units of sharding."""
    count = backbone.config.num_hidden_layers
    return next(m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m) == count)


def mixed_precision(device: torch.device) -> MixedPrecisionPolicy:
    """bf16 compute over fp32 master weights on CUDA, gradients reduced in fp32; plain fp32 on CPU."""
    if device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: nn.Module, mesh: DeviceMesh, device: torch.device) -> int:
    """FSDP2 over each layer, then the root (embeddings, final norm, head); returns the layer count."""
    policy = mixed_precision(device)
    layers = layer_stack(model.backbone)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return len(layers)


@torch.no_grad()
def materialise(model: nn.Module, device: torch.device, std: float) -> None:
    """Allocate this rank's shards on `device` and initialise them as transformers does (weights
    normal(0, std), norm weights one, biases zero); buffers get back their computed values."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    for name, buffer in model.named_buffers():
        buffer.copy_(buffers[name])
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name == "bias":
                param.zero_()
            elif "Norm" in type(module).__name__:
                param.fill_(1.0)
            else:
                param.normal_(0.0, std)


def local_numel(model: nn.Module) -> int:
    """Parameters this rank holds: the sum of its shards (while they are sharded, not gathered)."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())


def save_full(model: nn.Module, directory: Path, rank: int) -> int:
    """Gather the full state dict onto rank 0's CPU and save it as `methods.full` does; returns bytes."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    return (directory / "model.safetensors").stat().st_size


def run_rank(spec: ExperimentSpec, rank: int, world: int, device: torch.device, adapter_dir: Path) -> dict[str, Any]:
    def progress(message: str) -> None:
        if rank == 0:
            print(PROGRESS + message, flush=True)

    determinism_info = determinism.configure(spec.seed, determinism.requested(spec))
    task = data.load_task(spec.task)
    examples = task.sample(spec.n, spec.seed)
    share = len(examples) // world   # every rank the same count, so all take the same optimizer steps
    mine = examples[rank::world][:share]
    mesh = init_device_mesh(device.type, (world,))
    progress(f"building {spec.model} sharded over {world} {device.type} processes")
    loaded = build(spec, len(task.labels))
    base = prepare_base(loaded, spec)
    model = method_module(spec.method).prepare(loaded, spec, None)
    layers = shard(model, mesh, device)
    if loaded.weightless:
        materialise(model, device, getattr(loaded.model.config, "initializer_range", None) or 0.02)
    reset_peak(device)
    params, local = parameter_counts(model), local_numel(model)
    progress(f"training {params['trainable']:,} parameters, {local:,} of them on rank 0, "
             f"{share} of {len(examples)} examples on each rank")
    training = train(model, loaded.tokenizer, mine, spec, device, progress)
    progress("evaluating (every rank, same examples)")
    pad_to = pad_target(spec)
    tokenizer = loaded.tokenizer
    test_examples = task.test[:SHAPE_EVAL_EXAMPLES] if loaded.weightless else task.test
    val = evaluate(model, tokenizer, task.val[:1] if loaded.weightless else task.val, spec.max_length, device, pad_to)
    start = time.perf_counter()
    test = evaluate(model, tokenizer, test_examples, spec.max_length, device, pad_to)
    test_seconds = time.perf_counter() - start
    latency = measure_latency(model, tokenizer, task.test, spec.latency_rounds, spec.max_length, device, pad_to)
    memory = peak_memory(device)
    saved_bytes = None if loaded.weightless else save_full(model, adapter_dir, rank)
    result: dict[str, Any] = {
        "rank": rank,
        "resources": {"rank": rank, "device": str(device), **memory, "local_parameters": local,
                      "train_seconds": training["train_seconds"], "examples_seen": training["examples_seen"],
                      "tokens": training["tokens"], "optimizer_steps": training["optimizer_steps"]},
        "training": training,
    }
    if rank != 0:
        return result
    metrics = {k: test[k] for k in ("accuracy", "macro_f1", "weighted_f1", "loss", "prediction_entropy")}
    metrics.update({f"val_{k}": val[k] for k in ("accuracy", "macro_f1", "loss")})
    predictions = {"test": test["predictions"], "test_labels": test["labels"], "val": val["predictions"]}
    if loaded.weightless:
        metrics = {k: None for k in metrics}
        predictions = {k: None for k in predictions}
    mp = mixed_precision(device)
    result.update({
        "determinism": determinism_info,
        "quality": "not applicable: weightless shape" if loaded.weightless else "measured",
        "metrics": metrics,
        "predictions": predictions,
        "params": {**params, "total_logical": logical_parameters(model), **frozen_weight_bytes(model)},
        "latency": {**latency, "mode": f"batch 1 on every rank in lockstep, weights gathered from {world} shards"},
        "inference": {"throughput_examples_per_second": len(test_examples) / test_seconds,
                      "merged": {"offered": False, "why": "not an adapter method"}},
        "saved_bytes": saved_bytes,
        "model": {"source": loaded.source, "architecture": loaded.architecture, "pooling": loaded.pooling,
                  "weight_dtype": "float32", "target_modules": None, "device": str(device),
                  "base_preparation": base},
        "distributed": {
            "world_size": world,
            "launcher": "torch.distributed.run --standalone",
            "backend": dist.get_backend(),
            "strategy": "FSDP2 (torch.distributed.fsdp.fully_shard)",
            "sharded_units": f"each of {layers} layers, then the root (embeddings, final norm, head)",
            "reshard_after_forward": True,
            "master_weights": "float32",
            "param_dtype": str(mp.param_dtype or torch.float32).removeprefix("torch."),
            "reduce_dtype": str(mp.reduce_dtype or torch.float32).removeprefix("torch."),
            "initialisation": ("meta device, then each rank's shards allocated and drawn (normal std "
                               "initializer_range, norms one, biases zero)" if loaded.weightless
                               else "from_pretrained on each rank's CPU, then sharded onto the device"),
            "batch_size_per_rank": spec.batch_size,
            "global_batch_size": spec.batch_size * world * (spec.grad_accum or 1),
            "examples_per_rank": share,
            "examples_dropped": len(examples) - share * world,
            "evaluation": "every rank runs the same examples; rank 0's results",
            "checkpoint": ("not saved: weightless shape (random weights)" if loaded.weightless
                           else "full state dict gathered to rank 0, saved as model.safetensors"),
        },
    })
    return result


def main(argv: list[str]) -> None:
    spec_path, out_dir, adapter_dir = (Path(a) for a in argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    spec = ExperimentSpec.from_dict(json.loads(spec_path.read_text()))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    try:
        result = run_rank(spec, rank, world, device, adapter_dir)
    except BaseException as exc:  # the launcher turns the first rank's error into the record's reason
        (out_dir / f"rank{rank}.error.json").write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        raise
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
