"""Generation tasks: causal-LM fine-tuning with the loss on the target tokens, evaluated by what the
model generates (sacrebleu BLEU and chrF, ROUGE-L, exact match, reference perplexity, lm-eval tasks)
and how fast it generates.

The core calls three torch-free entry points at collection (`check_generation_spec`, `max_n`,
`generation_data_info`) and `runner.run` inside the experiment process.
"""

from __future__ import annotations

from .check import check_generation_spec
from .data import generation_data_info, max_n, task_spec

__all__ = ["check_generation_spec", "generation_data_info", "max_n", "task_spec"]
