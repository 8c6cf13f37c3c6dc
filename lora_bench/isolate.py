"""Runs each experiment in its own process (forkserver, torch preloaded) and turns a crash,
a signal or a timeout into a `failed` record, so one experiment never takes the sweep down."""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from pathlib import Path
from typing import Any, Callable

from . import record as rec
from .provenance import device_class, git_info, host_info, source_hash, versions
from .storage import atomic_write_json

_CONTEXT: Any = None
POLL_SECONDS = 0.5
LOG_TAIL = 4000   # characters of a crashed experiment's log kept in its record


def context() -> Any:
    """On CPU, a forkserver that has imported the experiment code once, so every experiment forks
    from it in milliseconds. With a GPU, a fresh spawned process per experiment: a CUDA context
    must never be inherited through fork, and imports that probe the GPU would create one."""
    global _CONTEXT
    if _CONTEXT is None:
        import torch

        if torch.cuda.is_available():
            _CONTEXT = multiprocessing.get_context("spawn")
        else:
            _CONTEXT = multiprocessing.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["lora_bench.child"])
    return _CONTEXT


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return str(code)


def run_isolated(record: dict[str, Any], record_path: Path, adapter_dir: Path, timeout_s: float,
                 on_progress: Callable[[str], None], target: Callable[..., None] | None = None) -> dict[str, Any]:
    """`target(payload, conn)` is the experiment's entry point (`child.child_main` unless a test
    injects a fault); it writes the record itself, or dies and the parent writes a failed one."""
    ctx = context()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    log_path = record_path.with_suffix(".log")
    payload = {"record": record, "record_path": str(record_path), "adapter_dir": str(adapter_dir),
               "log_path": str(log_path)}
    if target is None:
        from .child import child_main as target

    process = ctx.Process(target=target, args=(payload, child_conn), daemon=True)
    deadline = time.monotonic() + timeout_s
    process.start()
    child_conn.close()
    reason = None
    while True:
        try:
            if parent_conn.poll(POLL_SECONDS):
                kind, message = parent_conn.recv()
                if kind == "progress":
                    on_progress(message)
                continue
        except (EOFError, OSError):
            pass
        if not process.is_alive():
            break
        if time.monotonic() > deadline:
            process.kill()
            reason = f"timeout: still running after {timeout_s:g} s (timeout_s), killed"
            break
    process.join()
    parent_conn.close()
    if reason is None and record_path.exists():
        stored = json.loads(record_path.read_text())
        if stored.get("run_info", {}).get("attempt") == record["run_info"]["attempt"]:
            return stored
    if reason is None:
        code = process.exitcode
        reason = (f"crash: the experiment process was killed by signal {_signal_name(-code)}"
                  + (" (the host may have run out of memory)" if code == -signal.SIGKILL else "")
                  if code is not None and code < 0 else f"crash: the experiment process exited with code {code}")
    meta = {"versions": versions(), "git": git_info(), "host": host_info(), "device": {"class": device_class()},
            "source_hash": source_hash()}
    failed = rec.finish(record, "failed", reason, None, meta)
    if log_path.exists():
        failed["log_tail"] = log_path.read_text(errors="replace")[-LOG_TAIL:]
    atomic_write_json(record_path, failed)
    return failed
