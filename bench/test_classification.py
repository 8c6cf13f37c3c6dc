"""Classification experiments: one test per grid combination. Each trains in its own process,
evaluates, measures resources, stores its record, and fails on a failed run or a broken budget."""

import pytest


@pytest.mark.lb_task_type("classification")
def test_classification(lb_experiment):
    record = lb_experiment.run()
    lb_experiment.assert_ok(record)
    lb_experiment.assert_within_budgets(record)
