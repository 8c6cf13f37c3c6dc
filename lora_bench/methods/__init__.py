"""Training methods, one module each. This registry names the implemented ones without importing
torch, so collection can refuse a method whose implementation has not landed yet."""

from __future__ import annotations

import importlib
from types import ModuleType

# method name -> module with `prepare(loaded, spec, targets)`, `save(model, dir)` and `load(loaded, dir)`;
# head-only also has `fit(model, features, labels)`, used instead of the training loop
IMPLEMENTED: dict[str, str] = {
    "head": "lora_bench.methods.head",
    "full": "lora_bench.methods.full",
    "lora": "lora_bench.methods.lora",
    "dora": "lora_bench.methods.lora",
    "rslora": "lora_bench.methods.lora",
    "pissa": "lora_bench.methods.lora",
    "olora": "lora_bench.methods.lora",
    "loraplus": "lora_bench.methods.lora",
    "oglora": "lora_bench.methods.oglora",
}
PENDING_NOTE = "not implemented"


def method_module(name: str) -> ModuleType:
    return importlib.import_module(IMPLEMENTED[name])
