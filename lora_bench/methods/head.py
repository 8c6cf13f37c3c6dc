"""Head-only baseline: the backbone stays frozen; a linear head is fitted to convergence on
pooled features computed once (the origin study's baseline, without its wasted backbone passes)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..models import LoadedModel
from ..schema import ExperimentSpec

MAX_ITER = 500          # L-BFGS iterations; convergence usually comes far earlier
L2 = 1e-4               # ridge penalty on the head weights: keeps the optimum finite when classes separate


def prepare(loaded: LoadedModel, spec: ExperimentSpec, target_modules: list[str] | None) -> nn.Module:
    model = loaded.model
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    return model


def fit(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Multinomial logistic regression by full-batch L-BFGS on cached features."""
    head = model.head
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=MAX_ITER, tolerance_grad=1e-6,
                                  tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")
    curve: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(features), labels) + L2 * head.weight.pow(2).sum()
        loss.backward()
        curve.append(float(loss))
        return loss

    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    return {"loss_curve": curve, "optimizer": "lbfgs", "iterations": int(state.get("n_iter", 0)),
            "converged": int(state.get("n_iter", 0)) < MAX_ITER, "l2": L2}


def save(model: nn.Module, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(directory / "head.safetensors"))


def load(loaded: LoadedModel, directory: Path) -> nn.Module:
    from safetensors.torch import load_file

    loaded.model.head.load_state_dict(load_file(str(directory / "head.safetensors")))
    return loaded.model
