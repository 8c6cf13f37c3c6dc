"""Seeds and deterministic mode for one experiment, and what was set, for the record.

`configure(seed, deterministic)` is called once at the start of an experiment (in its own process,
before the model is loaded). It seeds Python's `random`, NumPy and torch (every CUDA device too);
the data order is seeded from the same seed (`train.length_grouped_batches` uses seed*1000+epoch)
and so is the adapter's initialisation (torch's generator, seeded here, before the method builds
the adapter). In deterministic mode it also sets `torch.use_deterministic_algorithms(True)` (an op
without a deterministic implementation raises instead of running nondeterministically), cuDNN's
deterministic flag with benchmarking off, and, on CUDA, `CUBLAS_WORKSPACE_CONFIG=:4096:8`, which
cuBLAS needs for reproducible results; it must be set before the first cuBLAS call, which is why
this runs before the model is loaded.

Two CPU runs of the same spec on the same machine (same torch build, same thread count) give
identical metrics and predictions; on a GPU results agree within the tolerances in
`verify.GPU_TOLERANCES`.
"""

from __future__ import annotations

import os
import random
from typing import Any

ENV_FLAG = "LORA_BENCH_DETERMINISTIC"   # "1": deterministic mode for every experiment (--lb-deterministic)
CUBLAS_WORKSPACE = ":4096:8"            # what cuBLAS documents for reproducible results
DATA_ORDER = "train.length_grouped_batches: torch.Generator seeded with seed*1000 + epoch"
ADAPTER_INIT = "torch default generator, seeded by configure() before the method builds the adapter"


def requested(spec: Any = None) -> bool:
    """Deterministic mode for this experiment: the spec's `deterministic` axis where the schema has
    one, or `LORA_BENCH_DETERMINISTIC=1` in the environment (set by `--lb-deterministic`)."""
    if spec is not None and getattr(spec, "deterministic", None):
        return True
    return os.environ.get(ENV_FLAG, "").strip().lower() in ("1", "true", "yes", "on")


def configure(seed: int, deterministic: bool) -> dict[str, Any]:
    """Seed every generator with `seed`; switch deterministic algorithms on or off. Returns what it
    set, to be stored in the record (`train_info.determinism`)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds the CPU generator and every CUDA device's
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.manual_seed_all(seed)
    if deterministic and cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=False)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = False
    return {
        "seed": seed,
        "seeded": ["python", "numpy", "torch"] + (["cuda"] if cuda else []),
        "data_order": DATA_ORDER,
        "adapter_init": ADAPTER_INIT,
        "deterministic": bool(deterministic),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "torch_threads": torch.get_num_threads(),
        "pythonhashseed": os.environ.get("PYTHONHASHSEED"),
    }
