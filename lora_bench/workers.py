"""pytest-xdist: `pytest bench -n <k> --dist worksteal` runs one worker per GPU on one host.

- The controller names the run folder and hands it to every worker (`pytest_configure_node`), so all
  records land in one run; the first process that needs the folder makes it. Only the controller
  writes run.json's final state and renders the report, from the records its workers report: each
  bench test's report carries where its record is (`RECORD_PROPERTY`).
- Each worker pins its GPU in `pytest_configure`, before anything starts CUDA: worker `gwK` takes the
  K-th visible device (the K-th entry of a CUDA_VISIBLE_DEVICES already set, modulo their number), and
  the experiment processes it starts inherit the pin.
- A worker that dies loses only the experiment it was running: the controller records it as failed.
- `--dist loadgroup` keeps the experiments that a grid's ratio target compares on one worker, so one
  GPU measures both sides of the ratio (`SideBySideScheduling`). It does not rely on `xdist_group`
  marks: pytest 9.2's structured node ids drop the group suffix xdist's loadgroup adds to them
  (pytest-xdist issue #1386).
- pytest-benchmark switches itself off under xdist; nothing here needs it (latency is timed by
  `lora_bench.latency`, which borrows only pytest-benchmark's statistics).
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import TYPE_CHECKING, Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from .provenance import WORKER_ENV

if TYPE_CHECKING:
    from .session import BenchSession

WORKER_INPUT = "lora_bench"              # workerinput key: the run folder and the controller's start time
RECORD_PROPERTY = "lora_bench_record"    # user property of a bench test's report: its record's path


def worker_id(config: pytest.Config) -> str | None:
    """`gw0`, `gw1` ... in an xdist worker; None elsewhere."""
    workerinput = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput is not None else None


def handed(config: pytest.Config) -> dict[str, Any]:
    """What the controller handed this worker: {"run_dir": ..., "started": ...}."""
    return config.workerinput[WORKER_INPUT]  # type: ignore[attr-defined]


def is_controller(config: pytest.Config) -> bool:
    """Whether this process hands tests to xdist workers (`-n k` with k >= 1) instead of running them."""
    return (not hasattr(config, "workerinput") and not config.getoption("collectonly")
            and config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None)))


def worker_count(config: pytest.Config) -> int | None:
    if hasattr(config, "workerinput"):
        return int(config.workerinput["workercount"])  # type: ignore[attr-defined]
    return len(config.getoption("tx")) if is_controller(config) else None


def gpu_count() -> int:
    """NVIDIA GPUs on this host, from `nvidia-smi -L` (which starts no CUDA context); 0 without a driver."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def device_for(worker: str, visible: str | None, count: int | None = None) -> str | None:
    """The CUDA device of worker `gwK`: the K-th entry of `visible` (CUDA_VISIBLE_DEVICES) modulo their
    number, or of the host's `count` GPUs when nothing restricts them; None where there is no GPU."""
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        devices = [str(i) for i in range(gpu_count() if count is None else count)]
    if not devices:
        return None
    return devices[int(re.sub(r"\D", "", worker) or 0) % len(devices)]


def configure_process(config: pytest.Config) -> None:
    """A worker pins its GPU and names itself for the experiments' provenance; any other process
    clears a worker name it may have inherited (a bench run started from a worker's test)."""
    worker = worker_id(config)
    if worker is None:
        os.environ.pop(WORKER_ENV, None)
        return
    os.environ[WORKER_ENV] = worker
    device = device_for(worker, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device


def param_id(nodeid: str) -> str | None:
    """`bench/test_x.py::test_x[minilm-l6-...-s0]` -> `minilm-l6-...-s0`: a bench test's test id."""
    match = re.search(r"\[(.+)\]$", nodeid)
    return match.group(1) if match else None


class SideBySideScheduling(LoadScopeScheduling):
    """xdist's scope scheduling with lora-bench's groups as scopes: whole groups go to one worker,
    the costliest first (the workers' collection order). A test outside every group is its own scope.

    A resumed run reuses the records of experiments already measured: a group some of whose records
    a worker (that is, a GPU) measured goes back to that worker when it asks for work. A worker is
    never left idle for that: with no other group left it takes the group, and the target's verdict
    then says that its sides ran on two GPUs."""

    def __init__(self, config: pytest.Config, log: Any, groups: dict[str, str], affinity: dict[str, str]):
        super().__init__(config, log)
        self.groups = groups
        self.affinity = {self._scope_of_group(g): worker for g, worker in affinity.items()}

    @staticmethod
    def _scope_of_group(group: str) -> str:
        return f"lora-bench-group:{group}"

    def _split_scope(self, nodeid: str) -> str:
        test_id = param_id(nodeid)
        return self._scope_of_group(self.groups[test_id]) if test_id in self.groups else nodeid

    def _assign_work_unit(self, node: Any) -> None:
        worker = node.gateway.id
        for scope in self.workqueue:
            if self.affinity.get(scope, worker) == worker:
                self.workqueue.move_to_end(scope, last=False)
                break
        super()._assign_work_unit(node)


def group_affinity(records: list[dict[str, Any]], groups: dict[str, str]) -> dict[str, str]:
    """Each group -> the xdist worker that measured its stored records (the first one found)."""
    affinity: dict[str, str] = {}
    for record in records:
        worker = ((record.get("meta_info") or {}).get("host") or {}).get("worker")
        group = groups.get(record.get("test_id", ""))
        if record.get("status") == "ok" and worker and group:
            affinity.setdefault(group, worker)
    return affinity


class Controller:
    """The controller's side: hand the run folder out, say what is about to run, gather every reported
    record, and record the experiment of a worker that died."""

    def __init__(self, session: BenchSession):
        self.session = session
        self.announced = False
        self.expected: list[str] = []   # the experiments the workers collected, by test id

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKER_INPUT] = {"run_dir": str(self.session.run_dir), "started": self.session.started}

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "loadgroup":
            return None
        try:
            groups = self.session.side_by_side
        except pytest.UsageError:
            return None  # the workers report the broken grid
        stored = self.session.store.records() if self.session.resume else []
        return SideBySideScheduling(config, log, groups, group_affinity(stored, groups))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """Every worker collects the same tests; the first to finish tells the controller which
        experiments will run, before any is handed out."""
        test_ids = [t for t in map(param_id, ids) if t]
        if self.announced or not test_ids:
            return
        self.announced = True
        self.session.open_store()  # a resumed session is in run.json even if it is killed
        try:
            by_id = dict(zip(self.session.grid.ids, self.session.grid.specs))
        except pytest.UsageError:
            return  # the workers report the broken grid
        specs = [by_id[t] for t in test_ids if t in by_id]
        self.expected = [t for t in test_ids if t in by_id]
        self.session.total = len(specs)
        if self.session.shard is not None:
            self.session.shard_note = f"lora-bench shard {self.session.shard[0]}/{self.session.shard[1]}: " \
                                      f"{len(specs)} experiments"
        self.session.preflight(specs)
        if self.session.config.getvalue("dist") != "loadgroup":
            groups = [self.session.side_by_side[t] for t in self.expected]
            if len(set(groups)) < len(groups):
                self.session.say(f"lora-bench: the grid's ratio targets compare experiments that --dist "
                                 f"{self.session.config.getvalue('dist')} may run on different GPUs; "
                                 f"--dist loadgroup keeps each target's experiments on one")

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        test_id = param_id(crashitem)
        worker = report.node.gateway.id  # type: ignore[attr-defined]
        info = self.session.record_crash(test_id, worker) if test_id else None
        if info is not None:
            report.user_properties = [*report.user_properties, (RECORD_PROPERTY, info)]

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """An experiment queued on a worker that died can be dropped by xdist's rescheduling: it gets
        a failed record saying it never ran, so nothing goes missing silently (--lb-resume runs it)."""
        reported = {r["test_id"] for r in self.session.results}
        for test_id in self.expected:
            if test_id not in reported:
                info = self.session.record_crash(test_id, "", "not run: pytest-xdist never ran it after a "
                                                                  "worker died (run again with --lb-resume)")
                if info is not None:
                    self.session.collect(info, 0.0)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when not in ("call", "???"):  # "???": xdist's report for a crashed worker's test
            return
        info = dict(report.user_properties).get(RECORD_PROPERTY)
        if info is not None:
            self.session.collect(info, report.duration)
