"""When training code may read a tensor's value on the host: freely on the CPU, not inside a step on a device.

Reading the value of a tensor that lives on a GPU (``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``) makes
the host wait until the device has computed it, so the host stops queueing the step's next kernels. A training
step therefore keeps what it checks on the device there, and the host reads it only where it reads anyway:

* the step's loss and accuracy: 0-dim tensors, read by the trainer before a log row, a validation or a
  checkpoint (``fewshot.training.trainer``, ``_flush_metrics``);
* the non-finite guard of every normalization layer's state update: ``torch.where`` keeps the previous state
  and a device counter counts the skipped updates (:meth:`fewshot.norms.base.NormLayer.commit`), read at the
  same time (:func:`fewshot.norms.deferred.read_device_checks`);
* SWBN's cap on the eigenvalues of ``W``: applied to the state at every log row
  (:func:`fewshot.norms.deferred.enforce_state_bounds`), because the eigendecomposition it needs reads the device;
* the label checks of an episode: one asynchronous device-side assertion (``fewshot.learners.base``).

On the CPU a read costs nothing, and each of these keeps its plain host check, which gives what it always gave.
:func:`defers_host_reads` is the one switch this code asks; :func:`deferring_host_reads` makes it answer yes for
CPU tensors too, so that a test can run the device path on a CPU with the read methods patched to raise
(``tests/training/test_no_host_reads.py``). docs/gpu.md lists what is read when.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor

__all__ = ["defers_host_reads", "deferring_host_reads"]

_forced = 0


def defers_host_reads(tensor: Tensor) -> bool:
    """True when step code must not read ``tensor``'s values on the host: it is not on the CPU (or forced).

    Example:
        >>> import torch
        >>> defers_host_reads(torch.zeros(())), defers_host_reads(torch.zeros((), device="meta"))
        (False, True)
    """
    return _forced > 0 or tensor.device.type != "cpu"


@contextmanager
def deferring_host_reads() -> Iterator[None]:
    """Inside the block CPU tensors take the device path too (no host read in a step); nests, restores on exit.

    Results are those of the CPU path except for when things are reported (non-finite norm updates warn at the
    next read of the device checks) and when SWBN's cap applies (at the next log row instead of every update).

    Example:
        >>> import torch
        >>> with deferring_host_reads():
        ...     defers_host_reads(torch.zeros(()))
        True
    """
    global _forced
    _forced += 1
    try:
        yield
    finally:
        _forced -= 1
