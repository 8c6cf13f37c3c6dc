"""LoRA and its peft variants: rank, alpha, dropout and target modules; the head trains and
saves with the adapter (`modules_to_save`).

- `lora`: plain LoRA (B starts at zero);
- `dora`: weight-decomposed LoRA (magnitude vector per adapted module);
- `rslora`: rank-stabilised scaling alpha / sqrt(r) instead of alpha / r;
- `pissa`, `olora`: initialisation from the base weight's principal singular vectors (PiSSA) or
  its QR decomposition (OLoRA). Both rewrite the base weights, so the adapter is saved converted
  to a plain LoRA adapter (rank 2r) that loads onto the untouched base;
- `loraplus`: plain LoRA trained with LoRA+'s optimizer, B's learning rate `loraplus_ratio` times A's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from ..models import LoadedModel
from ..schema import ExperimentSpec

# method -> LoraConfig options that make it that variant
VARIANTS: dict[str, dict[str, object]] = {
    "lora": {},
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
    "pissa": {"init_lora_weights": "pissa"},
    "olora": {"init_lora_weights": "olora"},
    "loraplus": {},
}
MUTATES_BASE = ("pissa", "olora")
_INITIAL = "lb_initial_adapter"   # attribute holding the pre-training adapter of PiSSA/OLoRA


def lora_config(spec: ExperimentSpec, target_modules: list[str]) -> LoraConfig:
    assert spec.rank is not None and spec.alpha is not None and spec.dropout is not None
    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=target_modules, modules_to_save=["head"], bias="none",
                      **VARIANTS[spec.method])  # type: ignore[arg-type]


def prepare(loaded: LoadedModel, spec: ExperimentSpec, target_modules: list[str] | None) -> nn.Module:
    if not target_modules:
        raise ValueError("targets: LoRA needs target modules")
    model = get_peft_model(loaded.model, lora_config(spec, target_modules))
    if spec.method in MUTATES_BASE:
        initial = tempfile.TemporaryDirectory(prefix="lb-initial-")
        model.peft_config["default"].init_lora_weights = True  # reloading it must not decompose again
        model.save_pretrained(str(Path(initial.name) / "initial"))
        model.peft_config["default"].init_lora_weights = VARIANTS[spec.method]["init_lora_weights"]
        object.__setattr__(model, _INITIAL, initial)
    return model


def make_optimizer(model: nn.Module, spec: ExperimentSpec) -> torch.optim.Optimizer | None:
    """LoRA+ only; every other variant uses the training loop's AdamW."""
    if spec.method != "loraplus":
        return None
    assert spec.lr is not None and spec.loraplus_ratio is not None
    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=spec.lr, loraplus_lr_ratio=spec.loraplus_ratio,
                                     weight_decay=spec.weight_decay or 0.0)


def save(model: nn.Module, directory: Path) -> None:
    initial = getattr(model, _INITIAL, None)
    if initial is None:
        model.save_pretrained(str(directory))
        return
    model.save_pretrained(str(directory), path_initial_model_for_weight_conversion=str(Path(initial.name) / "initial"))
    # peft's conversion keeps only the LoRA tensors; the trained head (modules_to_save) goes back in
    weights = directory / "adapter_model.safetensors"
    converted = load_file(str(weights))
    for key, value in get_peft_model_state_dict(model).items():
        if ".lora_" not in key:
            converted.setdefault(key, value.detach().cpu().contiguous())
    save_file(converted, str(weights), metadata={"format": "pt"})


def load(loaded: LoadedModel, directory: Path) -> nn.Module:
    """Plain peft: the base classifier plus the saved adapter (and its head)."""
    return PeftModel.from_pretrained(loaded.model, str(directory))
