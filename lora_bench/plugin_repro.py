"""The pytest side of reproducibility: `--lb-verify RUN`, `--lb-compare RUN`, `--lb-deterministic`.

- `--lb-verify RUN` re-runs the stored run's experiments (its grid comes from the run's `run.json`
  unless `--lb-grid` is given; experiments the stored run does not hold are deselected) and
  compares every recorded result with `lora_bench.verify`'s tolerances: exact on CPU, per metric on
  a GPU. A stored run made in deterministic mode is re-run in deterministic mode.
- `--lb-compare RUN` compares this run with an earlier one (`lora_bench.compare`): quality, peak
  memory, time and latency per experiment, and the two environments.
- `--lb-deterministic` runs every experiment in deterministic mode (`lora_bench.determinism`).

Both print a table at the end of the run, write `verify.json` / `compare.json` into the new run
folder, and make pytest exit non-zero on drift or regression (even when every test passed).
Registered beside `lora_bench.plugin` in the root conftest's `pytest_plugins`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import determinism
from .compare import CompareResult, Thresholds, compare_runs
from .verify import VerifyResult, check_run, grid_for_verify, open_run, parse_overrides, stored_deterministic


@dataclass
class ReproState:
    verify_run: Path | None = None
    compare_run: Path | None = None
    tolerances: dict[str, float] | None = None
    thresholds: Thresholds | None = None
    verify_ids: set[str] | None = None
    verify: VerifyResult | None = None
    compare: CompareResult | None = None


_STATE = pytest.StashKey[ReproState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lora-bench", "lora-bench fine-tuning benchmarks")
    group.addoption("--lb-verify", dest="lb_verify", default=None, metavar="RUN",
                    help="re-run a stored run's experiments (a run folder, or a run id or 'latest' under --lb-out) "
                         "and fail on any result that drifts beyond its tolerance")
    group.addoption("--lb-verify-tolerance", dest="lb_verify_tolerance", action="append", default=[],
                    metavar="NAME=VALUE", help="override a verify tolerance, e.g. accuracy=0.02 or "
                                               "resources.train_seconds=200%%")
    group.addoption("--lb-compare", dest="lb_compare", default=None, metavar="RUN",
                    help="compare this run with an earlier one (quality, peak memory, time, latency) and fail "
                         "when a change passes its threshold")
    group.addoption("--lb-compare-fail", dest="lb_compare_fail", action="append", default=[], metavar="NAME=VALUE",
                    help="a --lb-compare threshold, e.g. memory=5%%, time=20%%, latency=20%%, quality=2 "
                         "(seed standard deviations), quality_margin=0.02")
    group.addoption("--lb-deterministic", dest="lb_deterministic", action="store_true",
                    help="seed everything and run with torch.use_deterministic_algorithms(True)")


def _resolve(config: pytest.Config, value: str, option: str) -> Path:
    try:
        return open_run(value, config.getoption("lb_out")).dir
    except FileNotFoundError as exc:
        raise pytest.UsageError(f"{option}: {str(exc).split(': ', 1)[-1]}") from None


def grid_given(config: pytest.Config) -> bool:
    """Whether --lb-grid was passed on the command line (its default is 'quick')."""
    args = [str(a) for a in config.invocation_params.args] + os.environ.get("PYTEST_ADDOPTS", "").split()
    return any(a == "--lb-grid" or a.startswith("--lb-grid=") for a in args)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Runs before lora_bench.plugin builds its session, so the verify grid is the one it loads.
    Runs are resolved here, before this run's folder exists (and moves the `latest` marker)."""
    state = ReproState()
    config.stash[_STATE] = state
    if config.getoption("lb_verify", None) is None and config.getoption("lb_compare", None) is None \
            and not config.getoption("lb_deterministic", False):
        return
    try:
        state.tolerances = parse_overrides(config.getoption("lb_verify_tolerance") or [], "--lb-verify-tolerance")
        state.thresholds = Thresholds.from_options(config.getoption("lb_compare_fail") or [])
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("lb_verify"):
        state.verify_run = _resolve(config, config.getoption("lb_verify"), "--lb-verify")
        store = open_run(state.verify_run)
        state.verify_ids = {r["test_id"] for r in store.records()}
        if not grid_given(config):
            try:
                config.option.lb_grid = str(grid_for_verify(state.verify_run))
            except FileNotFoundError as exc:
                raise pytest.UsageError(str(exc)) from None
        if stored_deterministic(state.verify_run):
            os.environ[determinism.ENV_FLAG] = "1"
    if config.getoption("lb_compare"):
        state.compare_run = _resolve(config, config.getoption("lb_compare"), "--lb-compare")
    if config.getoption("lb_deterministic"):
        # read by determinism.requested() in each experiment's process, which the forkserver
        # (started at the first experiment) inherits
        os.environ[determinism.ENV_FLAG] = "1"


def state_of(config: pytest.Config) -> ReproState:
    return config.stash[_STATE]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --lb-verify, run only the experiments the stored run holds (before the bench plugin counts them)."""
    ids = state_of(config).verify_ids
    if not ids:
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "lb_spec" in callspec.params and callspec.id not in ids:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _bench_results(config: pytest.Config) -> tuple[list[dict[str, Any]], Any]:
    from .plugin import session_of

    bench = session_of(config)
    return bench.results, bench._store


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = state_of(config)
    if state.verify_run is None and state.compare_run is None:
        return
    if hasattr(config, "workerinput"):   # an xdist worker holds part of the run; the controller has it all
        return
    if config.getoption("collectonly", False):
        return
    results, store = _bench_results(config)
    name = store.run_id if store is not None else "this run"
    run_info = store.read_run_info() if store is not None else None
    failed = False
    if state.verify_run is not None:
        state.verify = check_run(state.verify_run, results, name, state.tolerances, run_info)
        failed |= not state.verify.ok
        if store is not None:
            (store.dir / "verify.json").write_text(json.dumps(state.verify.to_dict(), indent=1, default=str))
    if state.compare_run is not None:
        state.compare = compare_runs(state.compare_run, results, state.thresholds, name, run_info)
        failed |= not state.compare.ok
        if store is not None:
            (store.dir / "compare.json").write_text(json.dumps(state.compare.to_dict(), indent=1, default=str))
    if failed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = state_of(config)
    for title, result in (("lora-bench verify", state.verify), ("lora-bench compare", state.compare)):
        if result is None:
            continue
        terminalreporter.section(title, red=not result.ok, green=result.ok)
        for line in result.lines():
            terminalreporter.write_line(line)
        verdict = "OK" if result.ok else f"FAILED ({len(result.failures)} failure{'s' if len(result.failures) != 1 else ''})"
        terminalreporter.write_line(f"{title}: {verdict}", red=not result.ok, green=result.ok, bold=True)
