"""The experiment process: runs one spec, turns any failure into a `failed` record, writes the
record atomically and tells the parent over a pipe. Imported by the forkserver ahead of time,
so each experiment starts with torch and transformers already loaded."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("BITSANDBYTES_NOWELCOME", "1")

import torch  # noqa: E402

from . import record as rec  # noqa: E402
from .memory_fit import OverMemoryBudget  # noqa: E402
from .provenance import meta_info  # noqa: E402
from .quantization import QuantizationUnavailable, import_bitsandbytes, no_hub_kernels  # noqa: E402

with no_hub_kernels():  # transformers, peft and accelerate may import bitsandbytes on the way
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


def safe_meta(device: torch.device) -> dict[str, Any]:
    """Provenance that cannot itself fail the record: a broken device query is noted, not raised."""
    try:
        return meta_info(device)
    except Exception as exc:
        return {"meta_error": f"{type(exc).__name__}: {exc}"}


def redirect_output(log_path: str) -> None:
    """The experiment's stdout and stderr (C libraries included) go to its own log file, so a
    crash that kills the process still leaves its last words for the failed record."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        stream.flush()
        os.dup2(log, fd)


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """The kernel kills this process when its parent dies (Linux). A killed xdist worker must not
    leave its experiment running: on a GPU it would overlap the next experiment's measurements, and
    its record would overwrite the "worker crashed" one. Under the CPU forkserver the parent is the
    forkserver, which exits when the worker dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def child_main(payload: dict[str, Any], conn: Any) -> None:
    die_with_parent()
    if payload.get("log_path"):
        redirect_output(payload["log_path"])
    record = payload["record"]
    spec = ExperimentSpec.from_dict(record["run_info"]["spec"])

    def progress(message: str) -> None:
        conn.send(("progress", message))

    try:  # first, before peft imports it unguarded; not in the forkserver, where it would initialise CUDA
        import_bitsandbytes()
    except QuantizationUnavailable:
        pass  # reported by the experiments that need it
    device = pick_device()
    try:
        train_info = run(spec, Path(payload["adapter_dir"]), progress)
        rec.finish(record, "ok", None, train_info, safe_meta(device))
    except (QuantizationUnavailable, OverMemoryBudget) as exc:  # never fall back to 16-bit; never run into OOM
        rec.finish(record, "skipped", str(exc), None, safe_meta(device))
    except Exception as exc:  # every failure becomes a record; the sweep goes on
        rec.finish(record, "failed", failure_reason(exc), None, safe_meta(device))
        record["traceback"] = traceback.format_exc()
    atomic_write_json(Path(payload["record_path"]), record)
    conn.send(("done", record["status"]))
    conn.close()
