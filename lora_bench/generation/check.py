"""Collection checks for generation experiments: what a generation task can run, and whether the
lm-eval tasks it names can run here. Raises `SpecError` (the grid loader turns it into
`ERROR: <grid file>: <key>: <value> is not allowed; <what is>`). No torch, no downloads.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import threading
from pathlib import Path
from typing import Any

from ..catalog import parse_model
from ..data import FIXTURES
from ..schema import SpecError
from . import data as gen_data

LM_EVAL_DIR = FIXTURES / "lm_eval"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
HUB_HOST = ("huggingface.co", 443)
LOCAL_DATASET_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")


def check_generation_spec(spec: Any) -> None:
    """Everything collection can say about one generation experiment before it runs."""
    task = gen_data.read_task(spec.task)
    if spec.method == "head":
        raise SpecError("method", "head", "head-only training does not apply to a generation task (there is no "
                                          "classification head); use full or an adapter method such as lora")
    ref = parse_model(spec.model)
    if ref.kind == "shape":
        raise SpecError("model", spec.model, "a generation task needs real weights (a checkpoint, an embedded "
                                             "model or a hub id); weightless shape: models are for classification")
    if spec.padding != "longest":
        raise SpecError("padding", spec.padding, "generation pads each batch to its longest sequence (longest); "
                                                 "max_length padding applies to classification")
    limit = gen_data.max_n(spec.task)
    if spec.n > limit:
        raise SpecError("n", spec.n, f"generation task {task.name!r} has {limit} training examples; "
                                     f"n (examples in total) must be at most {limit}")
    for name in task.lm_eval_tasks:
        check_lm_eval_task(name)


def lm_eval_installed() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def local_lm_eval_task(name: str) -> Path | None:
    """One of ours (`fixtures/lm_eval/<name>.yaml`) or a YAML path; None for a standard lm-eval name."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise SpecError("task.lm_eval", name, f"no such lm-eval task file ({path})")
        return path.resolve()
    ours = LM_EVAL_DIR / f"{name}.yaml"
    return ours if ours.exists() else None


def ours() -> list[str]:
    return sorted(p.stem for p in LM_EVAL_DIR.glob("*.yaml"))


def check_lm_eval_task(name: str) -> None:
    if not lm_eval_installed():
        raise SpecError("task.lm_eval", name, "needs lm-eval: pip install lm-eval (or drop lm_eval from the task)")
    if local_lm_eval_task(name) is not None:
        return
    if name not in standard_tasks():
        raise SpecError("task.lm_eval", name, f"not an lm-eval task; local tasks: {', '.join(ours())} "
                                              "(fixtures/lm_eval/), a YAML path, or a standard lm-eval task name")
    dataset = standard_tasks()[name]   # None for a group or tag: its tasks' datasets are on the Hub
    if dataset is not None and (dataset in LOCAL_DATASET_BUILDERS or Path(dataset).exists() or dataset_cached(dataset)):
        return
    why = hub_unreachable()
    if why:
        what = f"dataset {dataset!r}" if dataset else "data"
        raise SpecError("task.lm_eval", name,
                        f"{name!r} is a standard lm-eval task whose {what} comes from the Hugging Face Hub, which is "
                        f"out of reach here ({why}), and it is not in the local datasets cache; use a local task "
                        f"({', '.join(ours())} in fixtures/lm_eval/) or run where the Hub is reachable")


@functools.lru_cache(maxsize=1)
def standard_tasks() -> dict[str, str | None]:
    """lm-eval's registered task names -> their `dataset_path` (None for groups, tags, Python tasks)."""
    from lm_eval.tasks import TaskManager

    index = TaskManager().task_index
    return {name: (entry.cfg or {}).get("dataset_path") if getattr(entry, "cfg", None) else None
            for name, entry in index.items()}


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_VARIABLES)


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be used now (an offline variable, or no connection to it), or None."""
    if hub_offline():
        return "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection(HUB_HOST, timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(f"{HUB_HOST[0]} unreachable: {exc}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return result[0] if result else f"{HUB_HOST[0]} did not answer within {timeout:g} s"


def dataset_cached(dataset: str) -> bool:
    """Whether `datasets` or the hub cache already holds this hub dataset (usable offline)."""
    try:
        import datasets.config
        import huggingface_hub.constants
    except ImportError:
        return False
    flat = dataset.replace("/", "___")
    hub = "datasets--" + dataset.replace("/", "--")
    return (Path(datasets.config.HF_DATASETS_CACHE) / flat).exists() or \
        (Path(huggingface_hub.constants.HF_HUB_CACHE) / hub).exists()
