"""LoRA through peft: rank, alpha, dropout and target modules; the head trains and saves with it."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, get_peft_model
from torch import nn

from ..models import LoadedModel
from ..schema import ExperimentSpec


def lora_config(spec: ExperimentSpec, target_modules: list[str]) -> LoraConfig:
    assert spec.rank is not None and spec.alpha is not None and spec.dropout is not None
    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=target_modules, modules_to_save=["head"], bias="none")


def prepare(loaded: LoadedModel, spec: ExperimentSpec, target_modules: list[str] | None) -> nn.Module:
    if not target_modules:
        raise ValueError("targets: LoRA needs target modules")
    return get_peft_model(loaded.model, lora_config(spec, target_modules))


def save(model: nn.Module, directory: Path) -> None:
    model.save_pretrained(str(directory))


def load(loaded: LoadedModel, directory: Path) -> nn.Module:
    """Plain peft: the base classifier plus the saved adapter (and its head)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(loaded.model, str(directory))
