"""A crash, a signal, a timeout, an exception or a NaN loss in one experiment becomes a failed
record with its reason; the parent goes on; and an experiment dies with the process that started it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lora_bench import record as rec
from lora_bench.child import child_main, failure_reason
from lora_bench.grid import resolve
from lora_bench.isolate import run_isolated
from lora_bench.schema import ExperimentSpec
from lora_bench.train import NonFiniteLoss, train

from . import faults


def new_record(spec: ExperimentSpec) -> dict:
    return rec.new_record(spec, "t-1", "run", "key", rec.data_info(spec))


@pytest.fixture
def spec() -> ExperimentSpec:
    return resolve({"model": "minilm-l6", "method": "head"})


@pytest.mark.parametrize("target, reason", [
    (faults.killed_by_signal, "crash: the experiment process was killed by signal SIGKILL"),
    (faults.exits_without_record, "crash: the experiment process exited with code 3"),
])
def test_a_dead_child_becomes_a_failed_record(tmp_path, spec, target, reason):
    messages = []
    path = tmp_path / "r.json"
    result = run_isolated(new_record(spec), path, tmp_path / "a", 60, messages.append, target=target)
    assert result["status"] == "failed"
    assert result["reason"].startswith(reason)
    assert json.loads(path.read_text())["reason"] == result["reason"]
    assert result["meta_info"]["versions"]["torch"]


def test_a_hanging_child_is_killed_at_its_timeout(tmp_path, spec):
    result = run_isolated(new_record(spec), tmp_path / "r.json", tmp_path / "a", 2, lambda m: None,
                          target=faults.hangs)
    assert result["status"] == "failed"
    assert result["reason"] == "timeout: still running after 2 s (timeout_s), killed"


class _Pipe:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)

    def close(self):
        pass


def test_an_exception_is_recorded_with_its_reason(tmp_path, spec):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "hidden_size": "wide"}')
    record = new_record(type(spec).from_dict({**spec.to_dict(), "model": str(broken)}))
    pipe = _Pipe()
    child_main({"record": record, "record_path": str(tmp_path / "r.json"), "adapter_dir": str(tmp_path / "a")},
               pipe)
    stored = json.loads((tmp_path / "r.json").read_text())
    assert stored["status"] == "failed"
    assert stored["reason"].split(":")[0].endswith("Error")
    assert "Traceback" in stored["traceback"]
    assert pipe.sent[-1] == ("done", "failed")


class _NanModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, input_ids, attention_mask):
        return torch.full((input_ids.shape[0], 2), float("nan")) * self.w


def test_nan_loss_stops_training_and_names_the_step(tiny_bert):
    from transformers import AutoTokenizer

    from lora_bench.data import Example

    spec = resolve({"model": "minilm-l6", "method": "lora", "epochs": 1})
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    examples = [Example("some words", 0), Example("other words", 1)] * 4
    with pytest.raises(NonFiniteLoss, match="loss became nan at epoch 1") as err:
        train(_NanModel(), tokenizer, examples, spec, torch.device("cpu"), lambda m: None)
    assert failure_reason(err.value).startswith("non-finite loss: loss became nan")


def test_out_of_memory_reason():
    assert failure_reason(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")) == \
        "out of memory: CUDA out of memory. Tried to allocate 2 GiB"


PARENT = textwrap.dedent("""
    import multiprocessing, os, sys, time

    from lora_bench.child import die_with_parent


    def experiment(pid_file):
        die_with_parent()
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)


    if __name__ == "__main__":
        multiprocessing.get_context("spawn").Process(target=experiment, args=(sys.argv[1],)).start()
        time.sleep(120)
    """)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")   # a zombie has already died


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux: the parent-death signal is Linux's")
def test_an_experiment_dies_with_the_worker_that_started_it(tmp_path):
    """A SIGKILLed worker leaves no experiment behind to overlap the next one or overwrite its record."""
    (tmp_path / "parent.py").write_text(PARENT)
    pid_file = tmp_path / "experiment.pid"
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(pid_file)],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    experiment = int(pid_file.read_text())
    assert _alive(experiment)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(experiment) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(experiment)
