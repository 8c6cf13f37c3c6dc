"""Full fine-tuning: every backbone weight and the head train."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_model
from torch import nn

from ..models import LoadedModel
from ..schema import ExperimentSpec


def prepare(loaded: LoadedModel, spec: ExperimentSpec, target_modules: list[str] | None) -> nn.Module:
    model = loaded.model
    model.requires_grad_(True)
    return model


def save(model: nn.Module, directory: Path) -> None:
    """All weights, shared tensors (tied embeddings) stored once."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / "model.safetensors"))


def load(loaded: LoadedModel, directory: Path) -> nn.Module:
    from safetensors.torch import load_model

    load_model(loaded.model, str(directory / "model.safetensors"))
    return loaded.model
