"""lora-bench's cache folder (converted checkpoints, materialized shapes, fetched archives) and the
file lock that lets parallel experiments fill it once. No torch: the data layer uses it too."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cache_dir() -> Path:
    """LORA_BENCH_CACHE, else $XDG_CACHE_HOME/lora-bench, else ~/.cache/lora-bench."""
    root = os.environ.get("LORA_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lora-bench")
    return Path(root)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
