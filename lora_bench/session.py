"""The bench session: the grid being run, the run folder, reuse of stored results, budgets
from the command line, and the per-experiment flow (run isolated, judge budgets, store).

Under pytest-xdist (`lora_bench.workers`) the controller's session runs no experiment: it names the
run folder, gathers the records its workers report, and alone writes run.json's final state and the
report."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from . import budgets as budget_rules
from . import record as rec
from . import warmup, workers
from .grid import Grid, GridError, load_grid
from .isolate import run_isolated
from .provenance import device_class, git_info, host_info, source_hash, versions
from .schema import ExperimentSpec, SpecError, check_budgets
from .shard import parse_shard
from .storage import RunStore, atomic_write_json, new_run_id


def parse_budget_options(values: list[str]) -> dict[str, float]:
    raw: dict[str, Any] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise pytest.UsageError(f"--lb-budget: {item!r} is not NAME=VALUE")
        try:
            raw[name.strip()] = float(value)
        except ValueError:
            raise pytest.UsageError(f"--lb-budget {name}: {value!r} is not a number") from None
    try:
        return check_budgets(raw, "--lb-budget")
    except SpecError as exc:
        raise pytest.UsageError(str(exc)) from None


def quality(record: dict[str, Any]) -> str:
    m = record["train_info"]["metrics"]
    if m.get("chrf") is not None:
        return f"chrF {m['chrf']:.1f} (base {m.get('base_chrf', float('nan')):.1f})"
    if m.get("accuracy") is None:
        return "quality n/a (weightless shape)"
    return f"acc {m['accuracy']:.3f}  F1 {m['macro_f1']:.3f}"


class BenchSession:
    def __init__(self, config: pytest.Config):
        self.config = config
        self.grid_name: str = config.getoption("lb_grid")
        self.out = Path(config.getoption("lb_out"))
        self.resume: str | None = config.getoption("lb_resume")
        self.rerun: bool = config.getoption("lb_rerun")
        self.run_id: str | None = config.getoption("lb_run_id")
        self.budget_overrides = parse_budget_options(config.getoption("lb_budget") or [])
        try:
            self.shard = parse_shard(config.getoption("lb_shard")) if config.getoption("lb_shard") else None
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.worker = workers.worker_id(config)          # gw0, gw1 ... in an xdist worker
        self.controller = workers.is_controller(config)  # hands the tests to xdist workers
        self.workers = workers.worker_count(config)
        self._grid: Grid | None = None
        self.grid_error: pytest.UsageError | None = None
        self._store: RunStore | None = None
        self._device_class: str | None = None
        self.results: list[dict[str, Any]] = []
        self.started = rec.now()
        self.argv = sys.argv
        self._run_dir: Path | None = None
        if self.worker is not None:
            self.started, self._run_dir = workers.handed(config)["started"], Path(workers.handed(config)["run_dir"])
            self.argv = config.workerinput["mainargv"]  # type: ignore[attr-defined]
        self.total = 0
        self.selected: dict[str, ExperimentSpec] = {}   # test id -> spec of every selected experiment
        self.shard_note = ""
        self.report = ""

    @property
    def grid(self) -> Grid:
        if self._grid is None:
            try:
                self._grid = load_grid(self.grid_name)
            except GridError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self._grid

    @functools.cached_property
    def grid_specs(self) -> dict[str, dict[str, Any]]:
        """Each of the grid's test ids -> its resolved spec as a dict, as targets match them."""
        return {tid: spec.to_dict() for tid, spec in zip(self.grid.ids, self.grid.specs)}

    @functools.cached_property
    def side_by_side(self) -> dict[str, str]:
        """Each of the grid's test ids -> its group of experiments that a ratio target compares."""
        from .perf_targets import side_by_side_groups

        return side_by_side_groups(self.grid.targets, self.grid_specs)

    @functools.cached_property
    def warmed(self) -> set[str]:
        """The grid's test ids that get an untimed warm-up run first (none under --lb-no-warmup)."""
        if not self.config.getoption("lb_warmup"):
            return set()
        return warmup.warmed_ids(self.grid.targets, self.grid_specs)

    @functools.cached_property
    def warmups(self) -> warmup.Warmups:
        return warmup.Warmups(self.store.run_id, self.say)

    def spec_with_budgets(self, spec: ExperimentSpec) -> ExperimentSpec:
        if not self.budget_overrides:
            return spec
        return ExperimentSpec.from_dict({**spec.to_dict(), "budgets": {**spec.budgets, **self.budget_overrides}})

    def preflight(self, specs: list[ExperimentSpec]) -> None:
        """The shard, and the data card's summary and warnings for every task about to run, before
        anything trains."""
        if self.shard_note:
            self.say(self.shard_note)
        if not specs or self.config.getoption("collectonly"):
            return
        from .datacard import preflight_lines

        for line in preflight_lines(specs):
            self.say(line)

    def _open_run(self) -> RunStore:
        try:
            return RunStore.open(self.out, self.resume or "latest")
        except FileNotFoundError as exc:
            raise pytest.UsageError(str(exc)) from None

    @property
    def run_dir(self) -> Path:
        """Under xdist, the run folder every worker writes into: named by the controller before any
        worker starts (resolving `--lb-resume latest` once), made by whichever process needs it first."""
        if self._run_dir is None:
            self._run_dir = self._open_run().dir if self.resume else self.out / (self.run_id or new_run_id())
        return self._run_dir

    @property
    def store(self) -> RunStore:
        return self.open_store()

    def open_store(self) -> RunStore:
        """The run folder, created, resumed or (under xdist) joined on first call, which also records
        this session in run.json."""
        if self._store is None:
            if self.worker is not None or self.controller:
                self._store, made = RunStore.join(self.run_dir)
                if made or self.controller:  # the controller opens it as the session starts: a resumed
                    self.write_run_info(finished=None)  # session shows in run.json even if it is killed
                return self._store
            self._store = self._open_run() if self.resume else RunStore.create(self.out, self.run_id)
            self.write_run_info(finished=None)
        return self._store

    def write_run_info(self, finished: str | None) -> None:
        assert self._store is not None
        previous = self._store.read_run_info()
        grid = self.grid
        sessions = previous.get("sessions", [])
        if not sessions or sessions[-1].get("started") != self.started:
            sessions.append({"started": self.started, "resumed": bool(self.resume)})
        info = {
            "run_id": self._store.run_id,
            "grid": {"name": grid.name, "path": str(grid.path), "text": grid.path.read_text(),
                     "experiments": len(grid.specs), "dropped": grid.dropped},
            "command_line": self.argv,
            "started": previous.get("started", self.started),
            "sessions": sessions,
            "finished": finished,
            "host": host_info(),
            "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
            "workers": self.workers,
            "git": git_info(),
            "versions": versions(),
            "budget_overrides": self.budget_overrides,
        }
        if finished:
            sessions[-1]["finished"] = finished
            info["counts"] = self.counts()
        atomic_write_json(self._store.dir / "run.json", info)

    @property
    def device(self) -> str:
        if self._device_class is None:
            self._device_class = device_class()
        return self._device_class

    def counts(self) -> dict[str, int]:
        return {"ok": sum(r["status"] == "ok" for r in self.results),
                "failed": sum(r["status"] == "failed" for r in self.results),
                "skipped": sum(r["status"] == "skipped" for r in self.results),
                "over_budget": sum(bool(r["budgets"]["over_budget"]) for r in self.results),
                "reused": sum(bool(r.get("reused")) for r in self.results)}

    def say(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.ensure_newline()
                reporter.write_line(text)
        else:
            reporter.write_line(text)

    def run_experiment(self, spec: ExperimentSpec, test_id: str) -> dict[str, Any]:
        store = self.store
        data = rec.data_info(spec)
        key = rec.record_key(spec, data, self.device)
        index = len(self.results) + 1
        prefix = f"[lora-bench {index}/{self.total or '?'}] {test_id}"
        if self.resume and not self.rerun:
            stored = store.reusable(key)
            if stored is not None:
                stored["reused"] = True
                self.say(f"{prefix}: reused from {store.run_id}")
                return self._judge(stored, spec, write=False)
        record = rec.new_record(spec, test_id, store.run_id, key, data)
        if test_id in self.warmed:
            record["run_info"]["warmup"] = self.warmups.before(spec, prefix)
        start = time.perf_counter()
        self.say(f"{prefix}: starting")
        result = run_isolated(record, store.record_path(test_id, spec.spec_hash),
                              store.adapter_dir(test_id, spec.spec_hash), spec.timeout_s,
                              lambda message: self.say(f"{prefix}: {message}"))
        result = self._judge(result, spec, write=True)
        seconds = time.perf_counter() - start
        if result["status"] == "ok":
            self.say(f"{prefix}: {quality(result)} in {seconds:.1f} s")
        else:
            self.say(f"{prefix}: {result['status'].upper()}: {result['reason']}")
        return result

    def _judge(self, record: dict[str, Any], spec: ExperimentSpec, write: bool) -> dict[str, Any]:
        """Budgets are judged in the parent, with any command-line overrides, and stored with the record."""
        record["budgets"]["limits"] = dict(spec.budgets)
        found = budget_rules.violations(record["train_info"] or {}, spec.budgets) if record["status"] == "ok" else []
        record["budgets"]["violations"] = found
        record["budgets"]["over_budget"] = bool(found)
        if write:
            self.store.write_record(record)
        self.results.append(record)
        return record

    def record_info(self, record: dict[str, Any]) -> dict[str, Any]:
        """What an xdist worker's test report tells the controller about its record."""
        path = self.store.record_path(record["test_id"], record["run_info"]["spec_hash"])
        return {"path": str(path), "reused": bool(record.get("reused")), "budgets": record["budgets"]}

    def collect(self, info: dict[str, Any], seconds: float) -> None:
        """The controller takes a record a worker reported (budgets as the worker judged them)."""
        record = json.loads(Path(info["path"]).read_text())
        record["budgets"] = info["budgets"]
        if info["reused"]:
            record["reused"] = True
        self._store = self._store or RunStore(self.run_dir.parent, self.run_dir.name)  # for run.json, the report
        self.results.append(record)
        worker = (record["meta_info"].get("host") or {}).get("worker") or "?"
        prefix = f"[lora-bench {len(self.results)}/{self.total or '?'} {worker}] {record['test_id']}"
        if record["status"] == "ok":
            self.say(f"{prefix}: {quality(record)}" + (" (reused)" if info["reused"] else f" in {seconds:.1f} s"))
        else:
            self.say(f"{prefix}: {record['status'].upper()}: {record['reason']}")

    def record_crash(self, test_id: str, worker: str, reason: str | None = None) -> dict[str, Any] | None:
        """The record of an experiment whose xdist worker died: the one its process wrote this session
        if it got that far, else a failed one written here. None for a test that is no experiment."""
        try:
            spec = self.spec_with_budgets(self.grid.specs[self.grid.ids.index(test_id)])
        except ValueError:
            return None
        path = self.store.record_path(test_id, spec.spec_hash)
        stored = json.loads(path.read_text()) if path.exists() else None
        if stored is not None and stored["run_info"]["started"] >= self.started:
            return self.record_info(stored)
        data = rec.data_info(spec)
        record = rec.new_record(spec, test_id, self.store.run_id, rec.record_key(spec, data, self.device), data)
        host = {**host_info(), "worker": worker or None, "cuda_visible_devices":
                workers.device_for(worker, os.environ.get("CUDA_VISIBLE_DEVICES")) if worker else None}
        meta = {"versions": versions(), "git": git_info(), "host": host, "device": {"class": self.device},
                "source_hash": source_hash()}
        rec.finish(record, "failed", reason or f"worker crashed: pytest-xdist worker {worker} died while running "
                                               "this experiment (killed, or the host ran out of memory)", None, meta)
        self.store.write_record(record)
        return self.record_info(record)

    def target_verdict(self, target: Any, poll_seconds: float = 5.0) -> dict[str, Any]:
        """lora_bench.perf_targets' verdict over the selected experiments a target compares. Under
        xdist they may still be running on other workers: their records are awaited in the run folder."""
        from . import perf_targets

        wanted = {tid: spec for tid, spec in self.selected.items() if target.compares(spec.to_dict())}
        paths = [self.store.record_path(tid, spec.spec_hash) for tid, spec in wanted.items()]
        deadline = time.monotonic() + sum(spec.timeout_s for spec in wanted.values()) + 60
        while self.worker is not None and not all(p.exists() for p in paths) and time.monotonic() < deadline:
            time.sleep(poll_seconds)
        records = [json.loads(p.read_text()) for p in paths if p.exists()]
        return perf_targets.evaluate(target, records)

    def finish(self) -> None:
        """run.json's final state and the report; an xdist worker leaves both to the controller."""
        if self._store is not None and self.worker is None:
            self.write_run_info(finished=rec.now())
            self.report = self.render_report()

    def render_report(self) -> str:
        """The run's HTML report; a broken report is said loudly but never costs the records."""
        assert self._store is not None
        try:
            from .report.render import render_report

            return f"report: {os.path.relpath(render_report([self._store.dir], self._store.dir))}"
        except Exception as exc:  # the records are already safe on disk
            return f"report: FAILED to render ({type(exc).__name__}: {exc}); records are intact"

    def summary_lines(self) -> list[str]:
        if self._store is None or self.worker is not None:
            return []
        c = self.counts()
        lines = [f"lora-bench run {self._store.run_id}: {len(self.results)} experiments, {c['ok']} ok, "
                 f"{c['failed']} failed, {c['skipped']} skipped, {c['over_budget']} over budget, {c['reused']} reused",
                 f"records: {os.path.relpath(self._store.records_dir)}", self.report]
        for r in self.results:
            worker = (r["meta_info"].get("host") or {}).get("worker")
            where = f"  [{worker}]" if worker else ""
            if r["status"] == "ok":
                res = r["train_info"]["resources"]
                lines.append(f"  {r['test_id']:<60} {quality(r)}  "
                             f"peak {res['peak_memory_gib']:.2f} GiB  train {res['train_seconds']:.1f} s  "
                             f"p95 {r['train_info']['latency']['p95_ms']:.1f} ms"
                             + ("  OVER BUDGET" if r["budgets"]["over_budget"] else "") + where)
            else:
                lines.append(f"  {r['test_id']:<60} {r['status'].upper()}: {r['reason']}{where}")
        return lines
