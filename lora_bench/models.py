"""Loading a backbone and its tokenizer, and the sequence classifier built on it.

Every model reference (embedded, hub id, local folder) goes through real `from_pretrained` code.
Encoders pool as their checkpoint declares (sentence-transformers' Pooling config); decoders
take their last non-padding token, as transformers' *ForSequenceClassification do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cache import cache_dir, file_lock
from .catalog import ModelRef, parse_model
from .quantization import bnb_config

POOLINGS = ("mean", "cls", "last", "max")


class SequenceClassifier(nn.Module):
    """A backbone, a pooling rule and a linear head: the model every method trains.

    `head` is a plain attribute name so peft's `modules_to_save=["head"]` saves it with the adapter.
    """

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: {pooling!r} is not one of {POOLINGS}")
        self.backbone = backbone
        self.pooling = pooling
        self.config = backbone.config
        self.head = nn.Linear(backbone.config.hidden_size, num_labels, dtype=torch.float32)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """`attention_mask=None` means no padding (the memory estimator traces on meta tensors so)."""
        # a decoder's KV cache is never read here; its per-layer state would also make a compiled layer
        # recompile for every layer
        extra = {"use_cache": False} if getattr(self.config, "use_cache", None) is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:  # last non-padding token; padding is on the right
            last = attention_mask.sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return pooled.float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))


@dataclass
class LoadedModel:
    model: SequenceClassifier
    tokenizer: Any
    source: str          # the folder or hub id from_pretrained read, or `shape:<name>`
    architecture: str
    pooling: str
    dtype: torch.dtype
    weightless: bool = False   # a shape: random weights, so quality is not applicable


def converted_folder(gguf: Path) -> Path:
    """Where the checkpoint converted from this GGUF file lives (it may not exist yet)."""
    tag = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    return cache_dir() / "converted" / f"{gguf.stem}-{tag}"


def converted_gguf(gguf: Path) -> Path:
    """A normal checkpoint folder made once from a GGUF file, so bitsandbytes can quantize it later.

    transformers refuses a quantization config together with `gguf_file`; the dequantized weights
    are copied into a model built from the config (without its gguf quantization_config) and saved.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    target = converted_folder(gguf)
    with file_lock(target.with_suffix(".lock")):
        if (target / "config.json").exists():
            return target
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "lora_bench_source.json").write_text(json.dumps({"gguf": str(gguf), "size": stat.st_size}))
        os.replace(tmp, target)
    return target


def shape_config(ref: ModelRef) -> Any:
    from transformers import AutoConfig

    assert ref.path is not None
    return AutoConfig.for_model(**json.loads(ref.path.read_text()))


def materialized_shape(ref: ModelRef, device: torch.device) -> Path:
    """A shape's randomly initialised weights saved once as a checkpoint folder, so a quantized
    shape goes through the same bitsandbytes `from_pretrained` path as a real checkpoint."""
    from transformers import AutoModel

    assert ref.path is not None
    tag = hashlib.sha256(ref.path.read_bytes()).hexdigest()[:12]
    target = cache_dir() / "shapes" / f"{ref.value}-{tag}"
    with file_lock(target.with_suffix(".lock")):
        if (target / "config.json").exists():
            return target
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModel.from_config(shape_config(ref), dtype=torch.bfloat16)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        del model
        os.replace(tmp, target)
    return target


def shape_tokenizer() -> Any:
    """Shapes have no tokenizer of their own: MiniLM's English WordPiece gives realistic lengths for
    headlines; the token values do not matter for memory and speed (every shape's vocabulary is larger)."""
    from transformers import AutoTokenizer

    from .catalog import EMBEDDED, embedded_path

    return AutoTokenizer.from_pretrained(embedded_path(EMBEDDED["minilm-l6"]))


def checkpoint_source(ref: ModelRef) -> str:
    """What `from_pretrained` reads: a folder, or a hub id for users who have the Hub."""
    if ref.kind == "embedded":
        assert ref.path is not None
        return str(converted_gguf(ref.path) if ref.path.suffix == ".gguf" else ref.path)
    if ref.kind == "local":
        return str(ref.path)
    if ref.kind == "hub":
        return ref.value
    raise ValueError(f"model kind {ref.kind!r} has no checkpoint")


def declared_pooling(source: str, config: Any) -> str:
    """Mean/CLS/max as the checkpoint's sentence-transformers config declares; last token for decoders."""
    if getattr(config, "is_decoder", False) or _is_decoder_type(config):
        return "last"
    modules = _optional_file(source, "modules.json")
    if modules:
        for module in json.loads(Path(modules).read_text()):
            if module.get("type", "").endswith("Pooling"):
                pooling_cfg = _optional_file(source, f"{module['path']}/config.json")
                if pooling_cfg:
                    cfg = json.loads(Path(pooling_cfg).read_text())
                    for key, name in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                                      ("pooling_mode_max_tokens", "max")):
                        if cfg.get(key):
                            return name
    return "cls"


def _is_decoder_type(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForCausalLM") for a in archs) or config.model_type in (
        "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "phi3", "gpt2")


def _optional_file(source: str, name: str) -> str | None:
    if Path(source).is_dir():
        path = Path(source) / name
        return str(path) if path.exists() else None
    from transformers.utils import cached_file

    return cached_file(source, name, _raise_exceptions_for_missing_entries=False)


def load_tokenizer(model: str) -> Any:
    """The model's tokenizer (a shape borrows MiniLM's), right-padded, with a pad token."""
    from transformers import AutoTokenizer

    ref = parse_model(model)
    tokenizer = shape_tokenizer() if ref.kind == "shape" else AutoTokenizer.from_pretrained(checkpoint_source(ref))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_classifier(model: str, num_labels: int, device: torch.device, dtype: torch.dtype,
                    bits: str = "16", tokenizer: Any = None) -> LoadedModel:
    """The backbone (`AutoModel`, no LM head) with a fresh head, on `device`, weights in `dtype`;
    quantized by bitsandbytes when `bits` is not 16 (`dtype` is then the compute dtype)."""
    from transformers import AutoModel

    ref = parse_model(model)
    quantization = bnb_config(bits, dtype)
    placement = {"": f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"}
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model)
    if ref.kind == "shape":
        source = f"shape:{ref.value}"
        if quantization is None:
            with torch.device(device):
                backbone = AutoModel.from_config(shape_config(ref), dtype=dtype)
        else:
            backbone = AutoModel.from_pretrained(materialized_shape(ref, device), dtype=dtype,
                                                 quantization_config=quantization, device_map=placement)
    else:
        source = checkpoint_source(ref)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if quantization is not None:
            kwargs.update(quantization_config=quantization, device_map=placement)
        backbone = AutoModel.from_pretrained(source, **kwargs)
    pooling = "last" if ref.kind == "shape" else declared_pooling(source, backbone.config)
    classifier = SequenceClassifier(backbone, num_labels, pooling)
    if quantization is None:
        classifier.to(device)
    else:  # quantized weights are placed by from_pretrained and must not be moved again
        classifier.head.to(device)
    return LoadedModel(classifier, tokenizer, source, backbone.config.model_type, pooling, dtype,
                       weightless=ref.kind == "shape")
