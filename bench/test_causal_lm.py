"""Causal-LM training-step benchmarks (task type `causal-lm`): throughput, utilisation and peak
memory of each recipe; the ratio targets between recipes are checked in test_targets.py."""

import pytest


@pytest.mark.lb_task_type("causal-lm")
def test_causal_lm(lb_experiment):
    record = lb_experiment.run()
    lb_experiment.assert_ok(record)
    lb_experiment.assert_within_budgets(record)
