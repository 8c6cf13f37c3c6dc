"""Where a result came from: package versions, git commit, Python, device, host, source hash.

Importing this module imports no torch; the device is read by `device_info` in the experiment."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "lm-eval", "pandas",
            "jinja2", "pytest", "pytest-benchmark", "numpy", "scikit-learn", "safetensors", "tokenizers",
            "lora-bench")
# versions that can change a result; part of the resume key
KEY_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes")
WORKER_ENV = "LORA_BENCH_WORKER"   # set by a pytest-xdist worker (lora_bench.workers) for its experiments
SOURCE_DIR = Path(__file__).resolve().parent


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, Any]:
    root = SOURCE_DIR.parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """sha256 of the library's own source files: a changed runner invalidates reused results."""
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.rglob("*")):
        if path.suffix in (".py", ".yaml", ".json") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(SOURCE_DIR)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def host_info() -> dict[str, Any]:
    """The machine, and under pytest-xdist the worker and the GPU it pinned (lora_bench.workers)."""
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "machine": platform.machine(),
            "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
            "worker": os.environ.get(WORKER_ENV),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def device_info(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
                            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, total_memory_gib=props.total_memory / 2**30,
                    capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def device_class() -> str:
    """`cpu` or `cuda:<GPU name>`: results are reused only on the same class of device."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def meta_info(device: Any) -> dict[str, Any]:
    return {"versions": versions(), "git": git_info(), "host": host_info(), "device": device_info(device),
            "source_hash": source_hash()}
