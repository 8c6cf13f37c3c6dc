"""The run folder: `reports/<run-id>/run.json` and one record per experiment under `records/`,
each written atomically so a killed sweep never leaves half a result behind."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

LATEST = "LATEST"


def atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=1, sort_keys=False, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


class RunStore:
    """One run's folder. `open(root, "latest")` finds the newest run for `--lb-resume`."""

    def __init__(self, root: Path, run_id: str):
        self.root, self.run_id = Path(root), run_id
        self.dir = self.root / run_id
        self.records_dir = self.dir / "records"

    @classmethod
    def create(cls, root: Path, run_id: str | None = None) -> RunStore:
        store = cls(root, run_id or new_run_id())
        store.records_dir.mkdir(parents=True, exist_ok=True)
        (store.root / LATEST).write_text(store.run_id + "\n")
        return store

    @classmethod
    def join(cls, run_dir: Path) -> tuple[RunStore, bool]:
        """The run folder a pytest-xdist controller named for its workers. Whichever process needs it
        first makes it (and moves the LATEST marker); the second value says whether this one did."""
        run_dir = Path(run_dir)
        store = cls(run_dir.parent, run_dir.name)
        try:
            store.dir.mkdir(parents=True)
        except FileExistsError:
            store.records_dir.mkdir(exist_ok=True)
            return store, False
        store.records_dir.mkdir()
        (store.root / LATEST).write_text(store.run_id + "\n")
        return store, True

    @classmethod
    def open(cls, root: Path, run_id: str) -> RunStore:
        root = Path(root)
        if run_id == "latest":
            marker = root / LATEST
            if not marker.exists():
                raise FileNotFoundError(f"--lb-resume: no earlier run under {root}")
            run_id = marker.read_text().strip()
        candidate = Path(run_id)
        if candidate.is_dir() and (candidate / "records").is_dir():
            return cls(candidate.parent, candidate.name)
        store = cls(root, run_id)
        if not store.records_dir.is_dir():
            raise FileNotFoundError(f"--lb-resume: no run folder {store.dir}")
        return store

    def record_path(self, test_id: str, spec_hash: str) -> Path:
        return self.records_dir / f"{test_id}-{spec_hash[:8]}.json"

    def adapter_dir(self, test_id: str, spec_hash: str) -> Path:
        return self.dir / "adapters" / f"{test_id}-{spec_hash[:8]}"

    def write_run_info(self, info: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "run.json", info)

    def read_run_info(self) -> dict[str, Any]:
        path = self.dir / "run.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write_record(self, record: dict[str, Any]) -> Path:
        path = self.record_path(record["test_id"], record["run_info"]["spec_hash"])
        atomic_write_json(path, record)
        return path

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.records_dir.glob("*.json"))]

    def reusable(self, key: str) -> dict[str, Any] | None:
        """A finished, successful record with the same key; failed ones are run again."""
        for record in self.records():
            if record.get("key") == key and record.get("status") == "ok":
                return record
        return None
