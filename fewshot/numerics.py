"""Numerics of a run: the config key ``precision`` (``fp32 | tf32 | bf16``) and ``train --deterministic``.

- ``fp32`` (the default): float32 everywhere, TF32 off for matrix products and convolutions, so CUDA results
  match the CPU's to float32 rounding (``tests/learners/test_cuda_parity.py``).
- ``tf32``: float32 tensors, but CUDA matrix products and convolutions may use TF32 tensor cores (10-bit
  mantissa inputs; no effect on the CPU).
- ``bf16``: ``torch.autocast`` with bfloat16 for convolutions and matrix products (on the CPU too); every
  normalization layer's statistics, covariances, matrix roots and SWBN's whitening update stay float32
  (:mod:`fewshot.norms.fp32`).

``--deterministic`` asks torch for deterministic algorithms (an error where none exists), sets the cuBLAS
workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, required for deterministic cuBLAS), turns cuDNN benchmarking
off and seeds torch, numpy and Python, so two runs on the same device give identical logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from fewshot.errors import ConfigError

__all__ = [
    "PRECISIONS",
    "DEFAULT_PRECISION",
    "autocast",
    "check_precision",
    "restoring_numerics",
    "set_deterministic",
    "set_precision",
]

PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT_PRECISION = "fp32"


def check_precision(precision: object) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else raise ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}; e.g. --set precision=fp32"
        )
    return str(precision)


def set_precision(precision: str) -> None:
    """Set the process-wide TF32 switches for ``precision`` (TF32 only for ``tf32``)."""
    tf32 = check_precision(precision) == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a model step runs in: bfloat16 autocast for ``bf16``, nothing otherwise."""
    if check_precision(precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_deterministic(seed: int) -> None:
    """Deterministic algorithms, the cuBLAS workspace, no cuDNN autotuning, and seeded torch / numpy / Python.

    ``CUBLAS_WORKSPACE_CONFIG`` must be set before cuBLAS initializes; it is set here only when absent, and the
    trainer calls this before building the model.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def restoring_numerics() -> Iterator[None]:
    """Restore the process-wide numerics switches (TF32, deterministic algorithms, cuDNN flags) on exit.

    ``train`` sets them for its run; a notebook or test that trains twice gets its own settings back.
    """
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[4], saved[5]
