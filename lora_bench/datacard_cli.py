"""`lora-bench data TASK`: the task's data card on the command line, before anything trains.
`lora_bench.cli` hooks it in with `add_data_parser` and `run_data`."""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_MODELS = ("minilm-l6", "smollm2-135m")


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "data", help="the data card of a task: rows per class, cleaning, duplicates, leakage, lengths, tokenizers",
        description="Show what a task's models are trained and tested on, and its problems, before anything trains: "
                    "rows per class before and after cleaning, duplicates removed, train/test leakage (exact and near "
                    "duplicates), lengths in characters and in tokens per model's tokenizer, unknown-token share and "
                    "fertility (tokens per word) with a warning when a model cannot really read the text, the largest "
                    "n per class, and a few examples per class.")
    parser.add_argument("task", help="a task name under fixtures/tasks/ (bbc-topic, vader-sentiment ...) or a task "
                                     "YAML path")
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help="models whose tokenizers to measure: embedded names, hub ids, local folders, shape:NAME "
                             f"(default: the models of --grid, else {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--grid", metavar="NAME|PATH",
                        help="take the models and their max_length values from this grid's experiments on the task")
    parser.add_argument("--max-length", type=int, nargs="+", metavar="N", dest="max_length",
                        help="show the share of texts each tokenizer cuts at these lengths")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--examples", type=int, default=3, metavar="K", help="examples shown per class (default 3)")
    parser.add_argument("--near", type=float, default=0.9, metavar="T",
                        help="token-set Jaccard at or above which two texts are near duplicates (default 0.9; "
                             "lower thresholds are slower)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when the card has warnings")
    return parser


def run_data(args: argparse.Namespace) -> int:
    from .datacard import data_card, render_text
    from .schema import SpecError

    try:
        models, lengths = _models(args)
        card = data_card(args.task, models, examples=args.examples, near=args.near, max_lengths=lengths)
    except SpecError as exc:
        print(f"lora-bench data: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a grid error, an unreadable file
        print(f"lora-bench data: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(card, indent=2, ensure_ascii=False))
    else:
        print(render_text(card))
    return 1 if args.strict and card["warnings"] else 0


def _models(args: argparse.Namespace) -> tuple[list[str], dict[str, list[int]] | list[int]]:
    """The models to measure and the max_length values to check: explicit, else from a grid, else defaults."""
    if args.grid:
        from .data import find_task
        from .grid import load_grid

        grid = load_grid(args.grid)
        wanted = find_task(args.task).path
        specs = [s for s in grid.specs if find_task(s.task).path == wanted]
        if not specs:
            raise ValueError(f"grid {grid.name!r} has no experiment on task {args.task!r}")
        models = args.models or list(dict.fromkeys(s.model for s in specs))
        if args.max_length:
            return models, list(args.max_length)
        per_model: dict[str, list[int]] = {}
        for s in specs:
            per_model.setdefault(s.model, [])
            if s.max_length not in per_model[s.model]:
                per_model[s.model].append(s.max_length)
        return models, per_model
    return list(args.models or DEFAULT_MODELS), list(args.max_length or [])
