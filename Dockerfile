# syntax=docker/dockerfile:1
# lora-bench on an NVIDIA GPU: the CUDA 13.0 runtime on Ubuntu 24.04, whose Python is 3.12 (the GPU
# machine's stack), and every Python package from the hashed CUDA lock, requirements/cuda.txt
# (torch 2.11.0 + CUDA 13, transformers 5.17.0, peft 0.21.0, accelerate 1.15.0, bitsandbytes).
# requirements/check_lock.py (CI: .ci/lint) checks that this file installs exactly that lock.
#
#   docker build -t lora-bench:cuda .
#   docker run --gpus all -v "$PWD/reports:/app/reports" lora-bench:cuda pytest bench --lb-grid qlora-smollm2 -k qlora
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

# (DL3064 reads TOKENIZERS_PARALLELISM as a secret "token"; it is the tokenizers threading switch.)
# hadolint ignore=DL3064
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TOKENIZERS_PARALLELISM=false \
    BITSANDBYTES_NOWELCOME=1

# Ubuntu's packages are not pinned: the base image's tag fixes the release (Python 3.12), and the
# Python packages, which decide the results, are pinned with hashes below. git reads the commit
# into every record's provenance (the build context keeps .git).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
 && python3 -m venv /opt/venv \
 && git config --system --add safe.directory /app

WORKDIR /app

# The lock alone first, so the multi-GB layer is rebuilt only when the lock changes.
COPY requirements/cuda.txt requirements/embedded.txt requirements/
RUN pip install --no-deps --require-hashes -r requirements/cuda.txt \
 && pip install --no-deps --require-hashes -r requirements/embedded.txt

COPY . .
RUN pip install --no-deps --no-build-isolation -e . \
 && python requirements/check_lock.py --installed requirements/cuda.txt \
 && python -c 'import lora_bench.plugin, lora_bench.plugin_repro'

CMD ["pytest", "bench", "--lb-grid", "quick"]
