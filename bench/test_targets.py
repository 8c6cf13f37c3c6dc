"""The grid's ratio targets (`targets:` in the grid YAML, lora_bench.perf_targets): lora-bench's
recipe against the naive pipeline or a plain loop, measured side by side in this run. Runs after
the experiments it compares; fails when a ratio misses its bound."""


def test_target(lb_target, lb_target_verdict):
    assert lb_target_verdict["passed"], f"{lb_target.name}: {lb_target_verdict['reason']}"
