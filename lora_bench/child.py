"""The experiment process: runs one spec, turns any failure into a `failed` record, writes the
record atomically and tells the parent over a pipe. Imported by the forkserver ahead of time,
so each experiment starts with torch and transformers already loaded."""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("BITSANDBYTES_NOWELCOME", "1")

import torch  # noqa: E402

from . import record as rec  # noqa: E402
from .provenance import meta_info  # noqa: E402
from .quantization import QuantizationUnavailable, import_bitsandbytes  # noqa: E402

try:  # before transformers imports it, so its Hub-kernel lookup is hidden (quantization._no_hub_kernels)
    import_bitsandbytes()
except QuantizationUnavailable:
    pass  # reported by the experiments that need it
from .runner import pick_device, run  # noqa: E402
from .schema import ExperimentSpec  # noqa: E402
from .storage import atomic_write_json  # noqa: E402
from .train import NonFiniteLoss  # noqa: E402


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or isinstance(exc, MemoryError):
        return f"out of memory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if isinstance(exc, NonFiniteLoss):
        return f"non-finite loss: {exc}"
    return f"{type(exc).__name__}: {exc}"


def child_main(payload: dict[str, Any], conn: Any) -> None:
    record = payload["record"]
    spec = ExperimentSpec.from_dict(record["run_info"]["spec"])

    def progress(message: str) -> None:
        conn.send(("progress", message))

    device = pick_device()
    try:
        train_info = run(spec, Path(payload["adapter_dir"]), progress)
        rec.finish(record, "ok", None, train_info, meta_info(device))
    except QuantizationUnavailable as exc:  # never fall back to 16-bit silently
        rec.finish(record, "skipped", str(exc), None, meta_info(device))
    except Exception as exc:  # every failure becomes a record; the sweep goes on
        rec.finish(record, "failed", failure_reason(exc), None, meta_info(device))
        record["traceback"] = traceback.format_exc()
    atomic_write_json(Path(payload["record_path"]), record)
    conn.send(("done", record["status"]))
    conn.close()
