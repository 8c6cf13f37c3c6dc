"""The bench session: the grid being run, the run folder, reuse of stored results, budgets
from the command line, and the per-experiment flow (run isolated, judge budgets, store)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from . import budgets as budget_rules
from . import record as rec
from .grid import Grid, GridError, load_grid
from .isolate import run_isolated
from .provenance import device_class, git_info, host_info, versions
from .schema import ExperimentSpec, SpecError, check_budgets
from .storage import RunStore, atomic_write_json


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
        self._grid: Grid | None = None
        self.grid_error: pytest.UsageError | None = None
        self._store: RunStore | None = None
        self._device_class: str | None = None
        self.results: list[dict[str, Any]] = []
        self.started = rec.now()
        self.total = 0
        self.report = ""

    @property
    def grid(self) -> Grid:
        if self._grid is None:
            try:
                self._grid = load_grid(self.grid_name)
            except GridError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self._grid

    def spec_with_budgets(self, spec: ExperimentSpec) -> ExperimentSpec:
        if not self.budget_overrides:
            return spec
        return ExperimentSpec.from_dict({**spec.to_dict(), "budgets": {**spec.budgets, **self.budget_overrides}})

    @property
    def store(self) -> RunStore:
        if self._store is None:
            if self.resume:
                try:
                    self._store = RunStore.open(self.out, self.resume)
                except FileNotFoundError as exc:
                    raise pytest.UsageError(str(exc)) from None
            else:
                self._store = RunStore.create(self.out, self.run_id)
            self.write_run_info(finished=None)
        return self._store

    def write_run_info(self, finished: str | None) -> None:
        assert self._store is not None
        previous = self._store.read_run_info()
        grid = self.grid
        info = {
            "run_id": self._store.run_id,
            "grid": {"name": grid.name, "path": str(grid.path), "text": grid.path.read_text(),
                     "experiments": len(grid.specs), "dropped": grid.dropped},
            "command_line": sys.argv,
            "started": previous.get("started", self.started),
            "sessions": previous.get("sessions", []) + ([] if finished else [{"started": self.started,
                                                                               "resumed": bool(self.resume)}]),
            "finished": finished,
            "host": host_info(),
            "git": git_info(),
            "versions": versions(),
            "budget_overrides": self.budget_overrides,
        }
        if finished:
            info["sessions"][-1]["finished"] = finished
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

    def finish(self) -> None:
        if self._store is not None:
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
        if self._store is None:
            return []
        c = self.counts()
        lines = [f"lora-bench run {self._store.run_id}: {len(self.results)} experiments, {c['ok']} ok, "
                 f"{c['failed']} failed, {c['skipped']} skipped, {c['over_budget']} over budget, {c['reused']} reused",
                 f"records: {os.path.relpath(self._store.records_dir)}", self.report]
        for r in self.results:
            if r["status"] == "ok":
                res = r["train_info"]["resources"]
                lines.append(f"  {r['test_id']:<60} {quality(r)}  "
                             f"peak {res['peak_memory_gib']:.2f} GiB  train {res['train_seconds']:.1f} s  "
                             f"p95 {r['train_info']['latency']['p95_ms']:.1f} ms"
                             + ("  OVER BUDGET" if r["budgets"]["over_budget"] else ""))
            else:
                lines.append(f"  {r['test_id']:<60} {r['status'].upper()}: {r['reason']}")
        return lines
