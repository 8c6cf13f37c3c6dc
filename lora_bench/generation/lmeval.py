"""lm-eval on the experiment's model, in memory and offline.

The lm-eval tasks under `fixtures/lm_eval/` read local JSON-lines documents through
`fixtures/lm_eval/loader.py` (`custom_dataset`): one line per test example of a lora-bench
generation task, with the prompt exactly as lora-bench trains and evaluates (chat template already
applied, body already cut), the target, and for a task with a closed label set the choices. So
lm-eval is run without `--apply_chat_template`, and its `bbc-headline-gen` scores the same prompts
as lora-bench's own decoding.

- In an experiment, `export_docs` writes the documents with the experiment's tokenizer and
  `run_lm_eval` hands the model (base + adapter, quantized or not) to lm-eval as
  `HFLM(pretrained=model, tokenizer=tokenizer)` with `lb_data_dir` pointing at them.
- From the stock CLI (`lm_eval --model hf --model_args pretrained=<base>,peft=<adapter> --tasks
  fixtures/lm_eval/bbc-headline-gen.yaml`), lm-eval passes the model arguments to the loader, which
  builds the documents once with the `pretrained` folder's tokenizer (`default_docs`) into the
  lora-bench cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from .check import LM_EVAL_DIR, local_lm_eval_task
from .data import GenData, load
from .prompts import Formatter

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def lb_cache() -> Path:
    root = os.environ.get("LORA_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lora-bench")
    return Path(root)


def docs_for(gen: GenData, formatter: Formatter) -> list[dict[str, Any]]:
    """lm-eval documents of a generation task's test split, formatted for one tokenizer."""
    rows = []
    for i, example in enumerate(gen.test):
        row: dict[str, Any] = {"id": i, "prompt": formatter.prompt_text(example), "target": example.target}
        if gen.labels:
            row["choices"] = [formatter.target_text(label) for label in gen.labels]
            row["label"] = gen.labels.index(example.target)
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, path)
    return path


def lb_tasks_of(names: list[str]) -> set[str]:
    """The lora-bench tasks our lm-eval YAMLs read (their `dataset_kwargs.lb_task`)."""
    out = set()
    for name in names:
        path = local_lm_eval_task(name)
        if path is None:
            continue
        task = _yaml_field(path, "lb_task")
        if task:
            out.add(task)
    return out


def _yaml_field(path: Path, key: str) -> str | None:
    """A scalar under `dataset_kwargs` of an lm-eval YAML (read as text: it holds `!function` tags)."""
    inside = False
    for line in path.read_text().splitlines():
        if line.startswith("dataset_kwargs:"):
            inside = True
            continue
        if inside:
            if line and not line.startswith(" "):
                break
            name, _, value = line.strip().partition(":")
            if name == key:
                return value.strip().strip("'\"")
    return None


def export_docs(names: list[str], tokenizer: Any, folder: Path) -> dict[str, str]:
    """`<folder>/<lb_task>.jsonl` for every lora-bench task the named lm-eval tasks read."""
    written = {}
    for lb_task in sorted(lb_tasks_of(names)):
        gen = load(lb_task)
        formatter = Formatter.build(tokenizer, gen.task, gen.labels)
        written[lb_task] = str(write_jsonl(folder / f"{lb_task}.jsonl", docs_for(gen, formatter)))
    return written


def default_docs(lb_task: str, pretrained: str | None, tokenizer: Any = None) -> Path:
    """Documents for a stock `lm_eval` run: formatted with the `pretrained` model's tokenizer, built once."""
    if tokenizer is None or isinstance(tokenizer, str):
        if not (tokenizer or pretrained):
            raise ValueError(f"lora-bench lm-eval task on {lb_task!r}: pass lb_data_dir in --metadata, or run with "
                             "--model_args pretrained=<folder> so the prompts can be formatted for its tokenizer")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer or pretrained)
    gen = load(lb_task)
    formatter = Formatter.build(tokenizer, gen.task, gen.labels)
    rows = docs_for(gen, formatter)
    tag = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:12]
    path = lb_cache() / "lm_eval" / f"{lb_task}-{tag}.jsonl"
    return path if path.exists() else write_jsonl(path, rows)


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """The Hub off limits for the duration (environment and the flags datasets/huggingface_hub read at import)."""
    saved = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update(OFFLINE)
    flags: list[tuple[Any, str, Any]] = []
    try:
        import datasets.config
        import huggingface_hub.constants

        for module in (datasets.config, huggingface_hub.constants):
            flags.append((module, "HF_HUB_OFFLINE", module.HF_HUB_OFFLINE))
            module.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        yield
    finally:
        for module, name, value in flags:
            setattr(module, name, value)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def task_argument(name: str) -> str:
    """What lm-eval is given for a task: our YAML's path, or a standard name."""
    path = local_lm_eval_task(name)
    return str(path) if path is not None else name


def run_lm_eval(model: Any, tokenizer: Any, names: list[str], limit: int | None, data_dir: Path,
                batch_size: int = 8) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` on the in-memory model; returns flat scores and lm-eval's settings."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    standard = [n for n in names if local_lm_eval_task(n) is None]
    levels = {name: logging.getLogger(name).level for name in ("lm_eval", "lm-eval", "datasets")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    context = offline() if not standard else contextlib.nullcontext()
    try:
        with context:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            manager = TaskManager(include_path=str(LM_EVAL_DIR), include_defaults=bool(standard),
                                  metadata={"lb_data_dir": str(data_dir)})
            results = simple_evaluate(model=lm, tasks=[task_argument(n) for n in names], task_manager=manager,
                                      limit=limit, bootstrap_iters=0, log_samples=False, random_seed=0,
                                      numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert results is not None
    return {"scores": flat_scores(results["results"]), "n_samples": results.get("n-samples", {}),
            "versions": results.get("versions", {}), "limit": limit, "tasks": names}


def flat_scores(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """`{"bbc-headline-gen": {"chrf,remove_ws": 31.2, ...}}` -> `{"lmeval_bbc_headline_gen_chrf": 31.2}`."""
    out = {}
    for task, metrics in results.items():
        prefix = "lmeval_" + task.replace("-", "_").replace(".", "_")
        for key, value in metrics.items():
            metric, _, _filter = key.partition(",")
            if metric in ("alias", "sample_len") or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            if isinstance(value, bool):
                continue
            out[f"{prefix}_{metric}"] = float(value)
    return out
