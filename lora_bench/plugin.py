"""The pytest plugin: `--lb-*` options, grid expansion into parametrized tests with ids and
`lb(...)` markers, `--lb-shard` selection, the `lb_experiment` fixture, and the end-of-run summary.
Under pytest-xdist, `lora_bench.workers` pins each worker's GPU and gathers records in the controller."""

from __future__ import annotations

import os
from typing import Any

import pytest

from . import shard, workers
from .data import find_task
from .schema import ExperimentSpec, marker_kwargs
from .session import BenchSession

_SESSION = pytest.StashKey[BenchSession]()
# stands in for the parameters of a bench test that this grid gives nothing to run; deselected
_NO_EXPERIMENT = pytest.param(None, id="no-experiment", marks=pytest.mark.lb_no_experiment)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lora-bench", "lora-bench fine-tuning benchmarks")
    group.addoption("--lb-grid", dest="lb_grid", default="quick", metavar="NAME|PATH",
                    help="grid to expand into experiments: a name under fixtures/grids/ or a YAML path (default: quick)")
    group.addoption("--lb-out", dest="lb_out", default="reports", metavar="DIR",
                    help="where run folders go (default: reports)")
    group.addoption("--lb-run-id", dest="lb_run_id", default=None, metavar="ID", help="name the new run folder")
    group.addoption("--lb-resume", dest="lb_resume", nargs="?", const="latest", default=None, metavar="RUN",
                    help="continue a run (default: the latest), reusing every record whose key matches")
    group.addoption("--lb-rerun", dest="lb_rerun", action="store_true",
                    help="run every experiment again, even where a stored record matches")
    group.addoption("--lb-no-warmup", dest="lb_warmup", action="store_false",
                    help="skip the untimed warm-up run before experiments whose whole-run time a target compares "
                         "(lora_bench.warmup)")
    group.addoption("--lb-budget", dest="lb_budget", action="append", default=[], metavar="NAME=VALUE",
                    help="override a budget for every experiment, e.g. --lb-budget max_peak_gib=4")
    group.addoption("--lb-shard", dest="lb_shard", default=None, metavar="i/N",
                    help="run shard i of N (1 <= i <= N): the grid split into N parts balanced by predicted cost, "
                         "the same split on every host")
    group.addoption("--lb-fit", dest="lb_fit", default="off", choices=("off", "skip", "batch"),
                    help="before loading weights, predict each experiment's peak memory (lora_bench.estimate) and, "
                         "over the memory budget, skip it with the reason (skip) or halve its micro-batch, doubling "
                         "gradient accumulation, until it fits (batch); default off (the prediction is still recorded)")
    group.addoption("--lb-memory-gib", dest="lb_memory_gib", default=None, type=float, metavar="GIB",
                    help="memory budget for --lb-fit (default: each experiment's max_peak_gib budget, else the GPU's memory)")


def pytest_configure(config: pytest.Config) -> None:
    workers.configure_process(config)  # first: an xdist worker pins its GPU before anything starts CUDA
    # experiment processes read these (lora_bench.memory_fit); they inherit the environment
    os.environ["LORA_BENCH_FIT"] = config.getoption("lb_fit")
    if config.getoption("lb_memory_gib") is not None:
        os.environ["LORA_BENCH_MEMORY_GIB"] = str(config.getoption("lb_memory_gib"))
    config.addinivalue_line("markers", "lb(model, task, method, bits, rank, targets, n, seed): "
                                       "a lora-bench experiment; select with -m \"lb(method='lora')\"")
    config.addinivalue_line("markers", "lb_task_type(kind): the task type a bench test runs")
    config.addinivalue_line("markers", "lb_no_experiment: a bench test with nothing to run in this grid")
    config.stash[_SESSION] = BenchSession(config)
    if session_of(config).controller:
        config.pluginmanager.register(workers.Controller(session_of(config)), "lora-bench-controller")


def session_of(config: pytest.Config) -> BenchSession:
    return config.stash[_SESSION]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lb_target" in metafunc.fixturenames:
        try:
            targets = session_of(metafunc.config).grid.targets
        except pytest.UsageError:
            targets = []
        metafunc.parametrize("lb_target", [pytest.param(t, id=slug(t.name)) for t in targets] or [_NO_EXPERIMENT])
        return
    if "lb_spec" not in metafunc.fixturenames:
        return
    session = session_of(metafunc.config)
    try:
        grid = session.grid
    except pytest.UsageError as exc:
        session.grid_error = exc  # raised cleanly once collection is over: "ERROR: <file>: <key>: ..."
        metafunc.parametrize("lb_spec", [_NO_EXPERIMENT])
        return
    marker = metafunc.definition.get_closest_marker("lb_task_type")
    kind = marker.args[0] if marker else "classification"
    params = [pytest.param(spec, id=tid, marks=[pytest.mark.lb(**marker_kwargs(spec))])
              for spec, tid in zip(grid.specs, grid.ids) if task_type(spec.task) == kind]
    metafunc.parametrize("lb_spec", params or [_NO_EXPERIMENT])


def slug(name: str) -> str:
    return "-".join("".join(c if c.isalnum() or c == "." else " " for c in name.lower()).split())


def task_type(task: str) -> str:
    return find_task(task).type


@pytest.hookimpl(trylast=True)  # after -k and -m: a shard is a share of what was selected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = session_of(config)
    if session.grid_error is not None:
        raise session.grid_error
    # a bench test whose task type has no experiment in this grid is not a skipped test: drop it
    empty = [item for item in items if item.get_closest_marker("lb_no_experiment")]
    if empty:
        config.hook.pytest_deselected(items=empty)
        items[:] = [item for item in items if item not in empty]
    experiments = {item.callspec.id: item for item in items if _spec(item) is not None}
    if not experiments or (session.shard is None and session.worker is None):
        return
    costs, source = shard.costs([_spec(item) for item in experiments.values()])
    cost = dict(zip(experiments, costs))
    group = session.side_by_side
    if session.shard is not None:
        index, count = session.shard
        mine = set(shard.split(cost, count, group)[index - 1])
        others = [item for test_id, item in experiments.items() if test_id not in mine]
        if others:
            config.hook.pytest_deselected(items=others)
            items[:] = [item for item in items if _spec(item) is None or item.callspec.id in mine]
        session.shard_note = (f"lora-bench shard {index}/{count}: {len(mine)} of {len(experiments)} experiments, "
                              f"{sum(cost[t] for t in mine) / (sum(costs) or 1):.0%} of the predicted cost ({source})")
    if session.worker is not None:  # costliest group first: xdist hands tests out in collection order
        group_cost = shard.group_costs(cost, group)
        items.sort(key=lambda item: (-group_cost[group[item.callspec.id]], group[item.callspec.id],
                                     -cost[item.callspec.id]) if _spec(item) is not None else (0.0, "", 0.0))


def _spec(item: pytest.Item) -> ExperimentSpec | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("lb_spec") if callspec is not None else None


def pytest_collection_finish(session: pytest.Session) -> None:
    """The data card's summary and warnings for every task about to run, before anything trains."""
    config = session.config
    specs = [item.callspec.params["lb_spec"] for item in session.items if "lb_spec" in getattr(item, "fixturenames", ())]
    session_of(config).total = len(specs)
    session_of(config).selected = {item.callspec.id: item.callspec.params["lb_spec"] for item in session.items
                                   if _spec(item) is not None}
    if session_of(config).worker is None:  # under xdist the controller says it, once (lora_bench.workers)
        session_of(config).preflight(specs)


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = session_of(config)
    return [f"lora-bench: grid {session.grid_name!r}, records under {session.out}/"]


class Experiment:
    """What a bench test gets: its spec and id, `run()`, and the assertions on the record."""

    def __init__(self, session: BenchSession, spec: ExperimentSpec, test_id: str, node: pytest.Item):
        self.session, self.spec, self.test_id, self.node = session, session.spec_with_budgets(spec), test_id, node

    def run(self) -> dict[str, Any]:
        record = self.session.run_experiment(self.spec, self.test_id)
        if self.session.worker is not None:  # the report tells the xdist controller where the record is
            self.node.user_properties.append((workers.RECORD_PROPERTY, self.session.record_info(record)))
        return record

    @staticmethod
    def assert_ok(record: dict[str, Any]) -> None:
        if record["status"] == "skipped":
            pytest.skip(record["reason"])
        if record["status"] != "ok":
            pytest.fail(f"experiment failed: {record['reason']}", pytrace=False)

    @staticmethod
    def assert_within_budgets(record: dict[str, Any]) -> None:
        messages = [v["message"] for v in record["budgets"]["violations"]]
        if messages:
            pytest.fail("over budget (record kept): " + "; ".join(messages), pytrace=False)


@pytest.fixture
def lb_target() -> Any:
    raise pytest.UsageError("lb_target is parametrized from the grid's targets; request it only in bench tests")


@pytest.fixture
def lb_target_verdict(request: pytest.FixtureRequest, lb_target: Any) -> dict[str, Any]:
    """The target's verdict over this session's records (waiting, under xdist, for other workers')."""
    verdict = session_of(request.config).target_verdict(lb_target)
    if verdict["passed"] is None:
        pytest.skip(f"{lb_target.name}: {verdict['reason']}")
    return verdict


@pytest.fixture
def lb_spec() -> ExperimentSpec:
    raise pytest.UsageError("lb_spec is parametrized from the grid; request it only in bench tests")


@pytest.fixture
def lb_experiment(request: pytest.FixtureRequest, lb_spec: ExperimentSpec) -> Experiment:
    return Experiment(session_of(request.config), lb_spec, request.node.callspec.id, request.node)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    session = session_of(config)
    session.finish()
    lines = session.summary_lines()
    if lines:
        terminalreporter.section("lora-bench")
        for line in lines:
            terminalreporter.write_line(line)
