"""Generation tasks: loaders and splits, prompt masking, the loss on target tokens, greedy decoding
and reference perplexity against transformers, text metrics on known strings, the bootstrap, and
collection checks (head refused, standard lm-eval tasks refused offline)."""

from __future__ import annotations

import importlib.util
import json
import math
import textwrap
from pathlib import Path

import pytest

from lora_bench.data import normalise
from lora_bench.generation import check_generation_spec, generation_data_info, max_n
from lora_bench.generation import data as gen_data
from lora_bench.generation.metrics import bootstrap_mean, label_metrics, paired_delta, text_metrics
from lora_bench.grid import resolve
from lora_bench.schema import ExperimentSpec, SpecError

from .conftest import minilm_tokenizer

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="needs lm-eval: pip install lm-eval")
needs_metrics = pytest.mark.skipif(importlib.util.find_spec("sacrebleu") is None or
                                   importlib.util.find_spec("rouge_score") is None,
                                   reason="needs sacrebleu and rouge-score: pip install sacrebleu rouge-score")


def write_sums_task(folder: Path, lm_eval: str = "", name: str = "sums", test_max: int = 8, **generation) -> Path:
    """A JSONL task of additions (prompt -> sum), with 5 exact duplicates and one conflicting prompt."""
    rows = [{"question": f"what is {a} plus {b}", "answer": str(a + b)} for a in range(12) for b in range(12)]
    rows += rows[:5] + [{"question": "What is 0 plus 0?", "answer": "zero"}]
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"instruction": "Add the numbers.", "max_new_tokens": 4, "stop": ["\n"], **generation}
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        type: generation
        source: {{kind: file, path: {name}.jsonl, prompt_column: question, target_column: answer}}
        split: {{test: 0.1, val: 0.05, seed: 0, test_max: {test_max}}}
        generation: {json.dumps(settings)}
        """) + (f"lm_eval: {lm_eval}\n" if lm_eval else ""))
    return path


def gen_spec(task: str | Path, **axes) -> ExperimentSpec:
    """A resolved spec pointed at a generation task (resolve checks n against a classification task)."""
    spec = resolve({"method": "lora", "n": 20, "seed": 0, "epochs": 1, "batch_size": 8, "latency_rounds": 2, **axes})
    return ExperimentSpec.from_dict({**spec.to_dict(), "task": str(task)})


def test_headline_task_dedupes_splits_without_leakage_and_nests():
    gen = gen_data.load("bbc-headline-gen")
    assert len(gen.test) == 100 and len(gen.val) == 50          # test_max / val_max caps
    assert gen.stats["duplicates_removed"] > 100 and gen.stats["conflicting_targets_removed"] > 0
    keys = [{normalise(e.prompt) for e in part} for part in (gen.train_pool, gen.val, gen.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert all(e.target and "\n" not in e.target for e in gen.test)
    small, large = gen.sample(50, 0), gen.sample(200, 0)
    assert set(small) <= set(large) and len(large) == 200 and gen.sample(50, 0) == small
    assert set(gen.sample(50, 1)) != set(small)
    assert max_n("bbc-headline-gen") == len(gen.train_pool)


def test_topic_as_generation_shares_the_classification_split():
    from lora_bench import data

    gen, cls = gen_data.load("bbc-topic-gen"), data.load_task("bbc-topic")
    assert [(e.prompt, e.target) for e in gen.test] == [(e.text, cls.labels[e.label]) for e in cls.test]
    drawn = gen.sample(250, 0)   # 5 classes x 50: exactly bbc-topic's n=50 set
    assert {(e.prompt, e.target) for e in drawn} == {(e.text, cls.labels[e.label]) for e in cls.sample(50, 0)}
    odd = gen.sample(53, 0)
    assert len(odd) == 53 and set(odd) <= set(drawn + gen.sample(55, 0))


def test_user_file_task_counts_duplicates_and_conflicts(tmp_path):
    gen = gen_data.load(str(write_sums_task(tmp_path)))
    assert gen.stats["rows_raw"] == 150
    assert gen.stats["duplicates_removed"] == 6               # 5 copies, and "What is 0 plus 0?" (same key)
    assert gen.stats["conflicting_targets_removed"] == 1     # "what is 0 plus 0" -> "0" and "zero": dropped
    assert len(gen.test) == 8
    assert len(gen.train_pool) + len(gen.val) + len(gen.test) == 143
    info = generation_data_info(gen_spec(tmp_path / "sums.yaml", n=30))
    assert info["n_train"] == 30 and info["n_per_class"] is None and info["n_test"] == 8
    assert len({info["train_hash"], info["val_hash"], info["test_hash"]}) == 3


def test_bad_generation_tasks_name_the_field(tmp_path):
    path = write_sums_task(tmp_path)
    text = path.read_text()
    path.write_text(text.replace("prompt_column: question", "prompt_column: nope"))
    with pytest.raises(SpecError, match="task.source.prompt_column"):
        gen_data.load(str(path))
    other = tmp_path / "other.yaml"
    other.write_text(text.replace("name: sums", "name: other").replace("max_new_tokens\": 4", "max_new_tokens\": 0"))
    with pytest.raises(SpecError, match="task.generation.max_new_tokens"):
        gen_data.read_task(str(other))
    third = tmp_path / "third.yaml"
    third.write_text("name: third\ntype: generation\nsource: {kind: bbc, prompt: headline, target: topic}\n")
    with pytest.raises(SpecError, match="kind: classification"):
        gen_data.read_task(str(third))


def test_collection_refuses_head_shapes_and_too_large_n(tmp_path):
    task = write_sums_task(tmp_path)
    with pytest.raises(SpecError, match="head-only training does not apply"):
        check_generation_spec(gen_spec(task, method="head"))
    with pytest.raises(SpecError, match="needs real weights"):
        check_generation_spec(gen_spec(task, model="shape:smollm2-135m"))
    with pytest.raises(SpecError, match="n .examples in total. must be at most"):
        check_generation_spec(gen_spec(task, n=500))
    check_generation_spec(gen_spec(task, method="full"))


@needs_lm_eval
def test_local_lm_eval_tasks_pass_and_unknown_ones_are_named(tmp_path):
    check_generation_spec(gen_spec("bbc-headline-gen", model="smollm2-135m"))
    task = write_sums_task(tmp_path, lm_eval="[bbc-topic-mc, fixtures/lm_eval/nope.yaml]")
    with pytest.raises(SpecError, match="no such lm-eval task file"):
        check_generation_spec(gen_spec(task))


@needs_lm_eval
def test_a_standard_lm_eval_task_fails_at_collection_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = write_sums_task(tmp_path, lm_eval="[hellaswag]")
    with pytest.raises(SpecError) as info:
        check_generation_spec(gen_spec(task))
    message = str(info.value)
    assert message.startswith("task.lm_eval: 'hellaswag' is not allowed")
    assert "Hugging Face Hub" in message and "HF_HUB_OFFLINE" in message and "bbc-headline-gen" in message
    unknown = write_sums_task(tmp_path, lm_eval="[no-such-lm-eval-task]", name="unknown")
    with pytest.raises(SpecError, match="not an lm-eval task"):
        check_generation_spec(gen_spec(unknown))


def tiny_formatter(tmp_path):
    from lora_bench.generation.prompts import Formatter

    gen = gen_data.load(str(write_sums_task(tmp_path)))
    tokenizer = minilm_tokenizer()
    tokenizer.eos_token = tokenizer.sep_token
    tokenizer.padding_side = "left"
    return gen, Formatter.build(tokenizer, gen.task)


def test_labels_mask_exactly_the_prompt_and_the_padding(tmp_path):
    import torch

    from lora_bench.generation.train import IGNORE, build_batch

    gen, formatter = tiny_formatter(tmp_path)
    pairs = [formatter.encode(e) for e in gen.train_pool[:6]]
    assert not formatter.chat and all(t[-1] == formatter.tokenizer.sep_token_id for _, t in pairs)
    pad = formatter.tokenizer.pad_token_id
    batch = build_batch(pairs, pad, torch.device("cpu"))
    width = batch["input_ids"].shape[1]
    for row, (prompt, target) in enumerate(pairs):
        pad_len = width - len(prompt) - len(target)
        labels = batch["labels"][row].tolist()
        assert labels[:pad_len + len(prompt)] == [IGNORE] * (pad_len + len(prompt))
        assert labels[pad_len + len(prompt):] == target
        assert batch["input_ids"][row].tolist() == [pad] * pad_len + prompt + target
        assert batch["attention_mask"][row].tolist() == [0] * pad_len + [1] * (len(prompt) + len(target))
        assert batch["position_ids"][row, pad_len:].tolist() == list(range(len(prompt) + len(target)))


def test_the_chat_template_wraps_the_prompt_and_ends_the_target():
    from lora_bench.generation.prompts import Formatter

    tokenizer = minilm_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} [END]\n{% endfor %}"
                               "{% if add_generation_prompt %}[assistant] {% endif %}")
    gen = gen_data.load("bbc-headline-gen")
    formatter = Formatter.build(tokenizer, gen.task)
    example = gen.test[0]
    text = formatter.prompt_text(example)
    assert formatter.chat and formatter.turn_end == "[END]"
    assert text.startswith("[user] Write the headline of this BBC News article.\n\n") and text.endswith("[assistant] ")
    body = formatter.cut(example.prompt)
    assert len(tokenizer(body, add_special_tokens=False)["input_ids"]) <= 130 < len(example.prompt.split())
    prompt, target = formatter.encode(example)
    end = len(formatter.end_ids)
    assert target[-end:] == formatter.end_ids and "[END]" in formatter.stop_strings
    assert prompt == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert formatter.finish(target[:-end]) == tokenizer.decode(tokenizer(example.target, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """The tiny Llama of conftest with an LM head, as generation loads it."""
    from .conftest import _llama

    folder = _llama(tmp_path_factory.mktemp("tiny-gen-llama"), 32)
    import torch

    from lora_bench.generation.model import load_causal_lm

    return folder, load_causal_lm(str(folder), torch.device("cpu"), torch.float32)


def test_target_loss_equals_the_full_forward_loss(tmp_path, tiny_lm):
    import torch

    from lora_bench.generation.train import build_batch, target_loss

    _, loaded = tiny_lm
    gen, _ = tiny_formatter(tmp_path)
    from lora_bench.generation.prompts import Formatter

    formatter = Formatter.build(loaded.tokenizer, gen.task)
    pairs = [formatter.encode(e) for e in gen.train_pool[:5]]
    batch = build_batch(pairs, loaded.tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        ours = float(target_loss(loaded.model, batch))
        total = count = 0.0
        for prompt, target in pairs:   # one unpadded row at a time, every logit computed
            ids = torch.tensor([prompt + target])
            logits = loaded.model(input_ids=ids).logits[0, len(prompt) - 1:-1]
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(target), reduction="sum"))
            count += len(target)
    assert ours == pytest.approx(total / count, rel=1e-4)


def test_batched_greedy_decoding_and_perplexity_match_transformers(tmp_path, tiny_lm):
    import torch

    from lora_bench.generation.decode import generate_and_score
    from lora_bench.generation.prompts import Formatter

    _, loaded = tiny_lm
    gen = gen_data.load(str(write_sums_task(tmp_path, max_new_tokens=5, stop=[])))
    formatter = Formatter.build(loaded.tokenizer, gen.task)
    formatter.stop_ids, formatter.stop_strings = set(), []   # decode exactly 5 tokens, as generate() does
    examples = gen.test[:5] + [gen.train_pool[0]]
    out = generate_and_score(loaded.model, formatter, examples, torch.device("cpu"), 4, 5)
    for i, example in enumerate(examples):
        prompt, target = formatter.encode(example)
        ids = torch.tensor([prompt])
        reference = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                          min_new_tokens=5, do_sample=False, pad_token_id=0)
        assert out["replies"][i] == formatter.finish(reference[0, len(prompt):].tolist())
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1:-1]
        nll = float(torch.nn.functional.cross_entropy(logits, torch.tensor(target), reduction="sum"))
        assert out["nll"][i] == pytest.approx(nll, rel=1e-4) and out["ref_tokens"][i] == len(target)
    assert out["perplexity"] == pytest.approx(math.exp(sum(out["nll"]) / sum(out["ref_tokens"])))


@needs_metrics
def test_text_metrics_on_known_strings():
    same = text_metrics(["Blair wins third term", "Oil price rises"], ["Blair wins third term", "Oil price rises"])
    assert same["bleu"] == pytest.approx(100) and same["chrf"] == pytest.approx(100)
    assert same["rouge_l"] == pytest.approx(100) and same["exact_match"] == 1.0
    apart = text_metrics(["zzz qqq"], ["Blair wins third term"])
    assert apart["bleu"] == 0 and apart["rouge_l"] == 0 and apart["exact_match"] == 0 and apart["chrf"] < 5
    half = text_metrics(["Blair wins the vote."], ["blair wins the vote"])
    assert half["exact_match"] == 1.0                           # case and edge punctuation normalised
    assert half["rouge_l"] == pytest.approx(100)                 # rouge-score lowercases and drops punctuation
    part = text_metrics(["Blair wins election"], ["Blair wins third term"])
    assert part["rouge_l"] == pytest.approx(100 * 2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert 0 < part["per_example"]["chrf"][0] < 100 and part["signatures"]["chrf"].startswith("nrefs:1")
    labels = label_metrics(["Sports.", "business news", "tech", "weather"], ["sports", "business", "politics", "tech"],
                           ["business", "politics", "sports", "tech"])
    assert labels["accuracy"] == 0.5 and labels["invalid_label_rate"] == 0.25


def test_paired_bootstrap_interval():
    up = paired_delta([v + 5 for v in range(40)], list(range(40)))
    assert up["mean"] == 5 and up["low"] == 5 and up["high"] == 5 and up["beats_base"]
    noisy = paired_delta([(-1) ** i * 10.0 for i in range(60)], [0.0] * 60, seed=3)
    assert noisy["low"] < 0 < noisy["high"] and not noisy["beats_base"]
    again = bootstrap_mean([(-1) ** i * 10.0 for i in range(60)], seed=3)
    assert (again["low"], again["high"]) == (noisy["low"], noisy["high"])   # seeded
    wide = bootstrap_mean([0, 0, 0, 10], seed=0)
    assert 0 <= wide["low"] < 2.5 < wide["high"] <= 10


def wired() -> bool:
    """Whether the core reads generation task files (data.find_task delegating to the generation package)."""
    from lora_bench import data

    try:
        return data.find_task("bbc-headline-gen").type == "generation"
    except SpecError:
        return False


@pytest.mark.skipif(not wired(), reason="needs the core's dispatch of generation tasks (data.find_task)")
def test_quick_gen_collects_one_generation_experiment():
    from lora_bench.grid import load_grid

    grid = load_grid("quick-gen")
    assert grid.ids == ["smollm2-135m-bbc-headline-gen-lora-r8-qv-16-n200-s0"]
    assert grid.specs[0].epochs == 1 and grid.specs[0].n == 200


@needs_lm_eval
@pytest.mark.skipif(not wired(), reason="needs the core's dispatch of generation tasks (data.find_task)")
def test_a_grid_naming_a_standard_lm_eval_task_fails_at_collection_offline(tmp_path, monkeypatch):
    from lora_bench.grid import GridError, load_grid

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = write_sums_task(tmp_path, lm_eval="[bbc-topic-mc, hellaswag]")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"name: hs\naxes: {{model: {tmp_path}, task: {task}, method: lora, n: 20}}\n")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(GridError, match=r"grid.yaml: task.lm_eval: 'hellaswag' is not allowed; .*Hugging Face Hub"):
        load_grid(str(grid))
