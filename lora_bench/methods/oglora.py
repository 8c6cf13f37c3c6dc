"""OrthoGeoLoRA (the origin study's `oglora`): a LoRA whose update is a truncated SVD by construction.

Each adapted linear layer keeps free parameters Theta_A (d_in x r), Theta_B (d_out x r) and u (r).
They become orthonormal factors A = qr(Theta_A), B = qr(Theta_B) (sign of diag(R) fixed positive, so
the factorisation is unique and continuous in Theta) and singular values s = softplus(u) + 1e-6, and
the layer returns base(x) + (alpha / r) * (dropout(x) A) diag(s) B^T.

It plugs into peft as a custom LoRA layer (`LoraConfig._register_custom_module`), so `save_pretrained`
writes an ordinary adapter folder (adapter_config.json + adapter_model.safetensors, head included via
`modules_to_save=["head"]`). Next to it goes `oglora.json`, which marks the folder as OrthoGeoLoRA (a
plain LoRA load of these tensors would be silently wrong) and records the init mode.

Init modes (`INIT_MODES`):
- "random" (default, the study's): Theta_A, Theta_B drawn like LoRA's A (kaiming-uniform, entries in
  +-1/sqrt(d)), u = 0, so s = log 2 + 1e-6 and the initial update is NOT zero; the study saw training
  collapse with it on Qwen2.5-1.5B.
- "zero": the same draw, minus a frozen copy of the initial update (buffers A0, s0, B0 saved with the
  adapter): the layer starts at exactly base(x), and gradients are those of "random". A very negative u
  can't do this: s >= 1e-6 never reaches zero, and softplus' vanishing slope leaves u nearly untrainable.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from ..models import LoadedModel
from ..schema import ExperimentSpec

EPS = 1e-6                      # floor of the singular values: s = softplus(u) + EPS
INIT_MODES = ("random", "zero")
DEFAULT_INIT = "random"         # the study's initialisation; the spec's `oglora_init` overrides it
MARKER = "oglora.json"          # written next to peft's adapter files
FORMAT = 1


def orthonormal(theta: torch.Tensor) -> torch.Tensor:
    """Q of the reduced QR of `theta` (d x r, d >= r), columns flipped so diag(R) > 0.

    Without the sign fix, Q is only defined up to column signs (LAPACK's choice), which would make
    the map Theta -> A discontinuous; with it, an orthonormal input comes back unchanged.
    """
    q, r = torch.linalg.qr(theta, mode="reduced")
    sign = torch.sign(torch.diagonal(r))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (q * sign).contiguous()


def singular_values(u: torch.Tensor) -> torch.Tensor:
    """softplus keeps s positive and smooth; the floor keeps it away from zero."""
    return nn.functional.softplus(u) + EPS


class OGLoraLinear(nn.Module, LoraLayer):
    """peft LoRA layer for nn.Linear with the OrthoGeoLoRA parametrisation (init mode "random").

    Trainable tensors are named `lora_*` so peft marks them trainable and saves them:
    `lora_theta_A` (d_in x r), `lora_theta_B` (d_out x r), `lora_u` (r). Adapters stay fp32 whatever
    the base dtype: the QR runs in fp32 (torch has no bf16 QR, and orthonormality needs the precision).
    """

    adapter_layer_names: tuple[str, ...] = LoraLayer.adapter_layer_names + ("lora_theta_A", "lora_theta_B", "lora_u")
    other_param_names: tuple[str, ...] = LoraLayer.other_param_names + ("lora_A0", "lora_B0", "lora_s0")
    init_mode: str = "random"

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int = 0,
                 lora_alpha: float = 1, **kwargs: Any) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = False
        self.lora_theta_A = nn.ParameterDict({})
        self.lora_theta_B = nn.ParameterDict({})
        self.lora_u = nn.ParameterDict({})
        # "zero" init only: the frozen initial factors, subtracted so the update starts at exactly 0
        self.lora_A0 = BufferDict({}, persistent=True)
        self.lora_B0 = BufferDict({}, persistent=True)
        self.lora_s0 = BufferDict({}, persistent=True)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig,  # type: ignore[override]
                     **kwargs: Any) -> None:
        """Creates one adapter's tensors on the base layer's device, in fp32."""
        if config.use_dora or config.use_rslora or config.lora_bias:
            raise ValueError("oglora: DoRA, rsLoRA and lora_bias are not part of OrthoGeoLoRA")
        width = min(self.in_features, self.out_features)
        if not 0 < r <= width:
            raise ValueError(f"oglora: rank {r} must be between 1 and min(d_in, d_out) = {width} for QR factors "
                             f"({kwargs.get('target_name', '')})")
        device = self.get_base_layer().weight.device
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.use_rslora[adapter_name] = False
        self.use_dora[adapter_name] = False
        self.lora_bias[adapter_name] = False
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        # LoRA's kaiming-uniform scale for A (bound 1/sqrt(d)): columns of norm ~0.58 whatever the width,
        # so an optimizer step turns the frames at a width-independent rate.
        theta_a = torch.empty(self.in_features, r, device=device, dtype=torch.float32)
        theta_b = torch.empty(self.out_features, r, device=device, dtype=torch.float32)
        nn.init.uniform_(theta_a, -1 / math.sqrt(self.in_features), 1 / math.sqrt(self.in_features))
        nn.init.uniform_(theta_b, -1 / math.sqrt(self.out_features), 1 / math.sqrt(self.out_features))
        self.lora_theta_A[adapter_name] = nn.Parameter(theta_a)
        self.lora_theta_B[adapter_name] = nn.Parameter(theta_b)
        self.lora_u[adapter_name] = nn.Parameter(torch.zeros(r, device=device, dtype=torch.float32))
        if self.init_mode == "zero":
            with torch.no_grad():
                a0, s0, b0 = self.factors(adapter_name)
            self.lora_A0[adapter_name], self.lora_s0[adapter_name], self.lora_B0[adapter_name] = a0, s0, b0
        elif self.init_mode != "random":
            raise ValueError(f"oglora: init {self.init_mode!r} is not one of {INIT_MODES}")
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, s, B), computed in fp32 outside autocast."""
        theta_a, theta_b = self.lora_theta_A[adapter_name], self.lora_theta_B[adapter_name]
        with torch.autocast(device_type=theta_a.device.type, enabled=False):
            return (orthonormal(theta_a.float()), singular_values(self.lora_u[adapter_name].float()),
                    orthonormal(theta_b.float()))

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """scaling * B diag(s) A^T (minus the frozen start for "zero"), shaped like the base weight."""
        a, s, b = self.factors(adapter)
        delta = (b * s) @ a.T
        if adapter in self.lora_A0:
            delta = delta - (self.lora_B0[adapter] * self.lora_s0[adapter]) @ self.lora_A0[adapter].T
        return delta * self.scaling[adapter]

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        base = self.get_base_layer()
        if type(base) is not nn.Linear:
            raise NotImplementedError(f"oglora: merging into {type(base).__name__} is not supported")
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter in self.lora_theta_A:
                merged = base.weight.data + self.get_delta_weight(adapter).to(base.weight.dtype)
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights of adapter {adapter}")
                base.weight.data = merged
                self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.lora_theta_A:
                weight.data -= self.get_delta_weight(adapter).to(weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("adapter_names") is not None:
            raise ValueError("oglora does not support mixed adapter batches")
        kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        result_dtype = result.dtype
        for adapter in self.active_adapters:
            if adapter not in self.lora_theta_A:
                continue
            a, s, b = self.factors(adapter)
            h = self.lora_dropout[adapter](self._cast_input_dtype(x, a.dtype))
            delta = ((h @ a) * s) @ b.T
            if adapter in self.lora_A0:  # same ops on the same h: bitwise zero while Theta, u are unchanged
                delta = delta - ((h @ self.lora_A0[adapter]) * self.lora_s0[adapter]) @ self.lora_B0[adapter].T
            result = result + delta * self.scaling[adapter]
        return result.to(result_dtype)

    def __repr__(self) -> str:
        return "oglora." + super().__repr__()


class OGLoraLinearZeroStart(OGLoraLinear):
    """Init mode "zero": peft's custom-module hook takes a class, so the mode is a class attribute."""

    init_mode = "zero"


LAYERS: dict[str, type[OGLoraLinear]] = {"random": OGLoraLinear, "zero": OGLoraLinearZeroStart}


def oglora_config(rank: int, alpha: float, dropout: float, target_modules: list[str], init: str) -> LoraConfig:
    if init not in LAYERS:
        raise ValueError(f"oglora: init {init!r} is not one of {INIT_MODES}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        modules_to_save=["head"], bias="none")
    config._register_custom_module({nn.Linear: LAYERS[init]})
    return config


def _check_layers(model: nn.Module) -> None:
    """Every adapted module must be ours: a target that is not an nn.Linear (GPT-2's Conv1D ...) would
    otherwise fall through to peft's plain LoRA layer."""
    foreign = [name for name, m in model.named_modules()
               if isinstance(m, LoraLayer) and not isinstance(m, OGLoraLinear)]
    if foreign:
        raise ValueError(f"oglora: only nn.Linear targets are supported; got other layer types at {foreign}")


def prepare(loaded: LoadedModel, spec: ExperimentSpec, target_modules: list[str] | None,
            init: str | None = None) -> nn.Module:
    """`init`: the argument, else the spec's `oglora_init`, else DEFAULT_INIT."""
    if not target_modules:
        raise ValueError("targets: OrthoGeoLoRA needs target modules")
    assert spec.rank is not None and spec.alpha is not None and spec.dropout is not None
    init = init or spec.oglora_init or DEFAULT_INIT
    model = get_peft_model(loaded.model, oglora_config(spec.rank, spec.alpha, spec.dropout, target_modules, init))
    _check_layers(model)
    return model


def init_mode(model: nn.Module) -> str:
    modes = {m.init_mode for m in model.modules() if isinstance(m, OGLoraLinear)}
    if len(modes) != 1:
        raise ValueError(f"oglora: expected one init mode among the adapted layers, found {sorted(modes)}")
    return modes.pop()


def save(model: nn.Module, directory: Path) -> None:
    """peft's adapter folder (adapters + head) and the marker with the init mode."""
    model.save_pretrained(str(directory))
    (Path(directory) / MARKER).write_text(json.dumps({"method": "oglora", "init": init_mode(model), "format": FORMAT}))


def load(loaded: LoadedModel, directory: Path) -> nn.Module:
    """Rebuilds the layers from the saved config and init mode, loads the tensors, and checks that
    every saved tensor came back (peft itself only warns on missing keys)."""
    from peft.utils import get_peft_model_state_dict, load_peft_weights

    directory = Path(directory)
    marker_path = directory / MARKER
    if not marker_path.exists():
        raise FileNotFoundError(f"{directory} has no {MARKER}: not an oglora adapter")
    marker = json.loads(marker_path.read_text())
    config = LoraConfig.from_pretrained(str(directory))
    config._register_custom_module({nn.Linear: LAYERS[marker["init"]]})
    model = PeftModel.from_pretrained(loaded.model, str(directory), config=config)
    _check_layers(model)
    saved = load_peft_weights(str(directory), device="cpu")
    current = get_peft_model_state_dict(model)
    if set(saved) != set(current) or any(not torch.equal(saved[k], current[k].cpu()) for k in saved):
        raise ValueError(f"oglora: {directory} does not match the rebuilt adapter "
                         f"(missing {sorted(set(saved) - set(current))}, extra {sorted(set(current) - set(saved))})")
    return model
