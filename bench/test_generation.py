"""Generation experiments: one test per grid combination whose task is a generation task. Each
fine-tunes a causal LM in its own process, scores the base model and the tuned one on the same test
prompts (chrF, BLEU, ROUGE-L, exact match, reference perplexity, the grid task's lm-eval tasks),
measures generation speed, stores its record, and fails on a failed run or a broken budget."""

import pytest


@pytest.mark.lb_task_type("generation")
def test_generation(lb_experiment):
    record = lb_experiment.run()
    lb_experiment.assert_ok(record)
    lb_experiment.assert_within_budgets(record)
