"""The causal LM of a generation experiment and the methods that train it.

Model references are the core's (embedded smollm2-135m, hub id, local folder) through
`models.checkpoint_source`; 8/4-bit bases through `quantization.bnb_config`. Methods: `full`, and
LoRA with its peft variants (the core's `lora_config` with `task_type=CAUSAL_LM` and no
`modules_to_save`: there is no classification head), and OrthoGeoLoRA. Adapters are saved as
ordinary peft folders, so `lm_eval --model hf --model_args pretrained=<base>,peft=<adapter>` and
`PeftModel.from_pretrained` load them; full fine-tuning saves a whole checkpoint folder.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..catalog import parse_model
from ..models import checkpoint_source
from ..quantization import bnb_config
from ..schema import ADAPTER_METHODS, ExperimentSpec


@dataclass
class LoadedLM:
    model: nn.Module
    tokenizer: Any
    source: str          # what from_pretrained read: a folder or a hub id
    architecture: str
    dtype: torch.dtype
    quantized: bool


def load_causal_lm(model: str, device: torch.device, dtype: torch.dtype, bits: str = "16") -> LoadedLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = parse_model(model)
    if ref.kind == "shape":
        raise ValueError("model: generation needs real weights, not a weightless shape")
    source = checkpoint_source(ref)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:   # BERT-style vocabularies (tests)
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    quantization = bnb_config(bits, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": device})
    lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quantization is None:
        lm.to(device)
    lm.eval()
    return LoadedLM(lm, tokenizer, source, lm.config.model_type, dtype, quantization is not None)


def prepare_base(loaded: LoadedLM, spec: ExperimentSpec) -> dict[str, Any]:
    """Gradient checkpointing and, on request, peft's k-bit preparation (as the core does for classifiers)."""
    model = loaded.model
    done: dict[str, Any] = {"kbit_prepare": bool(spec.kbit_prepare), "grad_checkpointing": bool(spec.grad_checkpointing)}
    if loaded.quantized and spec.kbit_prepare:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(spec.grad_checkpointing),
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
    elif spec.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if spec.method in ADAPTER_METHODS:
            model.enable_input_require_grads()
    return done


def causal_lora_config(spec: ExperimentSpec, targets: list[str]) -> Any:
    """The core's LoRA config for this variant, for a causal LM: no head to save, CAUSAL_LM task type."""
    if spec.method == "oglora":
        from ..methods.oglora import DEFAULT_INIT, oglora_config

        assert spec.rank is not None and spec.alpha is not None and spec.dropout is not None
        config = oglora_config(spec.rank, spec.alpha, spec.dropout, targets, spec.oglora_init or DEFAULT_INIT)
    else:
        from ..methods.lora import lora_config

        config = lora_config(spec, targets)
    config.modules_to_save = None
    config.task_type = "CAUSAL_LM"
    return config


def prepare(loaded: LoadedLM, spec: ExperimentSpec, targets: list[str] | None) -> nn.Module:
    """The trainable model: every weight (full) or a peft adapter over the frozen base."""
    if spec.method == "full":
        loaded.model.requires_grad_(True)
        return loaded.model
    if spec.method not in ADAPTER_METHODS:
        raise ValueError(f"method: {spec.method!r} does not apply to a generation task")
    if not targets:
        raise ValueError("targets: an adapter needs target modules")
    from peft import get_peft_model

    from ..methods import lora

    model = get_peft_model(loaded.model, causal_lora_config(spec, targets))
    if spec.method == "oglora":
        from ..methods.oglora import _check_layers

        _check_layers(model)
    if spec.method in lora.MUTATES_BASE:   # saved converted to plain LoRA against the untouched base
        initial = tempfile.TemporaryDirectory(prefix="lb-initial-")
        model.peft_config["default"].init_lora_weights = True
        model.save_pretrained(str(Path(initial.name) / "initial"))
        model.peft_config["default"].init_lora_weights = lora.VARIANTS[spec.method]["init_lora_weights"]
        object.__setattr__(model, lora._INITIAL, initial)
    return model


def make_optimizer(model: nn.Module, spec: ExperimentSpec) -> torch.optim.Optimizer | None:
    if spec.method == "loraplus":
        from ..methods.lora import make_optimizer as lora_optimizer

        return lora_optimizer(model, spec)
    return None


def save(model: nn.Module, spec: ExperimentSpec, loaded: LoadedLM, directory: Path) -> None:
    """An adapter folder (peft), or the whole fine-tuned checkpoint with its tokenizer (full)."""
    directory = Path(directory)
    if spec.method == "full":
        model.save_pretrained(str(directory))
        loaded.tokenizer.save_pretrained(str(directory))
    elif spec.method == "oglora":
        from ..methods.oglora import save as oglora_save

        oglora_save(model, directory)
    else:
        from ..methods.lora import save as lora_save

        lora_save(model, directory)
        config = directory / "adapter_config.json"
        if config.exists():   # the base a stock tool should load it onto: the folder lora-bench read
            values = json.loads(config.read_text())
            values["base_model_name_or_path"] = loaded.source
            config.write_text(json.dumps(values, indent=2))
