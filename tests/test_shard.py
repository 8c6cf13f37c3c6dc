"""`--lb-shard i/N`: a deterministic, disjoint, covering split balanced by predicted cost; bad values
refused with what is allowed; and two shards run apart then merged by `lora-bench report` giving the
report of one unsharded run, saying which shard and host ran each experiment."""

from __future__ import annotations

import json
import random
import subprocess

import pandas as pd
import pytest

from lora_bench import shard
from lora_bench.cli import main as cli_main
from lora_bench.grid import load_grid, resolve
from lora_bench.perf_targets import side_by_side_groups

from .conftest import ROOT, bench, records, run


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "2", "a/b", "-1/2", "1/2/3", ""])
def test_bad_shards_are_refused_with_what_is_allowed(text):
    with pytest.raises(ValueError, match=r"--lb-shard: .* is not allowed; i/N with 1 <= i <= N"):
        shard.parse_shard(text)


def test_a_bad_shard_stops_pytest_before_anything_runs(pytester):
    result = pytester.runpytest_inprocess("-p", "lora_bench.plugin", "--lb-shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --lb-shard: '3/2' is not allowed; i/N with 1 <= i <= N (e.g. 1/4)"])


def test_shards_are_disjoint_cover_the_grid_and_are_balanced():
    rng = random.Random(0)
    cost = {f"exp-{i:03d}": rng.choice([1.0, 2.0, 5.0]) * rng.uniform(1, 100) for i in range(97)}
    for count in (1, 2, 3, 4, 7):
        shards = shard.split(cost, count)
        flat = [t for s in shards for t in s]
        assert sorted(flat) == sorted(cost) and len(flat) == len(set(flat))
        loads = [sum(cost[t] for t in s) for s in shards]
        assert max(loads) <= sum(cost.values()) / count + max(cost.values())  # list scheduling's bound
        reordered = dict(sorted(cost.items(), key=lambda kv: rng.random()))
        assert shard.split(reordered, count) == shards  # every host computes the same split


def test_a_targets_experiments_stay_on_one_shard():
    """perf.yaml's ratios are measured side by side: each target's two sides land on one shard;
    a ratio inside one record (merged vs base latency) ties nothing together."""
    grid = load_grid("perf")
    groups = side_by_side_groups(grid.targets, {t: s.to_dict() for t, s in zip(grid.ids, grid.specs)})
    members: dict[str, list[str]] = {}
    for test_id, group in groups.items():
        members.setdefault(group, []).append(test_id)
    sizes = sorted(len(m) for m in members.values())
    assert sizes == [1] + [2] * 8 + [3, 6], sizes  # SmolLM2 LoRA: naive and lora-bench, 3 seeds
    for count in (2, 3, 5):
        shards = shard.split(dict(zip(grid.ids, shard.costs(grid.specs)[0])), count, groups)
        assert sorted(t for s in shards for t in s) == sorted(grid.ids)
        home = {t: i for i, s in enumerate(shards) for t in s}
        assert all(len({home[t] for t in m}) == 1 for m in members.values())


def test_the_split_of_a_real_grid_is_the_same_every_time():
    grid = load_grid("quick")
    first = shard.split(dict(zip(grid.ids, shard.costs(grid.specs)[0])), 4)
    second = shard.split(dict(zip(grid.ids, shard.costs(load_grid("quick").specs)[0])), 4)
    assert first == second and all(first)


def test_the_proxy_prices_data_method_bits_and_model_size(monkeypatch):
    def cost(**axes):
        return shard.proxy_cost(resolve({"model": "minilm-l6", "method": "lora", "n": 50, **axes}))

    assert cost(n=250) > cost(n=50)
    assert cost(method="full") > cost() > cost(method="head")
    assert cost(bits="4-nf4") > cost()
    assert cost(model="smollm2-135m") > cost()
    assert shard.parameter_count("shape:qwen2.5-1.5b") == pytest.approx(1.5e9, rel=0.2)
    assert shard.parameter_count("Qwen/Qwen2.5-7B-Instruct") == 7e9

    def broken(spec):
        raise KeyError("no estimate for this model")

    monkeypatch.setattr(shard, "estimator", lambda: broken)
    specs = load_grid("quick").specs
    costs, source = shard.costs(specs)
    assert source.startswith("proxy (the estimator failed: KeyError") and costs == [shard.proxy_cost(s) for s in specs]


COMPARED = ["test_id", "status", "accuracy", "macro_f1", "weighted_f1", "loss", "val_accuracy", "val_macro_f1",
            "val_loss", "n_train", "trainable_params", "total_params"]


def test_two_shards_merged_report_what_one_unsharded_run_reports(tmp_path, head_grid):
    whole = run(bench(head_grid, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stdout[-3000:]
    # two hosts, each with its own folder, at the same time
    shards = [subprocess.Popen(bench(head_grid, tmp_path / f"shard-{i}", "--lb-shard", f"{i}/2"), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    for proc in shards:
        stdout = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, stdout[-3000:]
    ran = [{r["test_id"] for r in records(tmp_path / f"shard-{i}")} for i in (1, 2)]
    assert ran[0] and ran[1] and not ran[0] & ran[1]
    assert ran[0] | ran[1] == {r["test_id"] for r in records(tmp_path / "whole")}
    assert [json.loads(p.read_text())["shard"] for i in (1, 2) for p in (tmp_path / f"shard-{i}").glob("*/run.json")] \
        == ["1/2", "2/2"]

    assert cli_main(["report", str(tmp_path / "shard-1"), str(tmp_path / "shard-2"), "--out", str(tmp_path / "merged")]) == 0
    merged = pd.read_csv(tmp_path / "merged" / "results.csv").sort_values("test_id", ignore_index=True)
    (whole_dir,) = (tmp_path / "whole").glob("*/results.csv")
    single = pd.read_csv(whole_dir).sort_values("test_id", ignore_index=True)
    pd.testing.assert_frame_equal(merged[COMPARED], single[COMPARED])
    assert merged.groupby("shard")["test_id"].apply(set).to_dict() == {"1/2": ran[0], "2/2": ran[1]}
    assert all(label.endswith(f"shard {s}") for label, s in zip(merged["ran_on"], merged["shard"]))
    html = (tmp_path / "merged" / "index.html").read_text()
    assert "Where the runs ran: run " in html and "shard 1/2 on " in html and "shard 2/2 on " in html
    assert ">ran on<" in html
