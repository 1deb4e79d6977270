"""The host's side of the normalization layers' device-side checks: read the skip counts, apply the bounds.

Inside a training step on a device the layers read nothing on the host (:mod:`fewshot.host_reads`): a state update
with a NaN or infinity is skipped by ``torch.where`` and counted on the device, and SWBN leaves the cap on its
``W``'s eigenvalues to a host read. These two calls are that read; the trainer makes them where it reads the
step's metrics anyway. On the CPU both have nothing to do: the updates checked and capped as they ran.
"""

from __future__ import annotations

import torch
from torch import nn

from fewshot.norms.state import norm_layers

__all__ = ["enforce_state_bounds", "read_device_checks"]


def read_device_checks(model: nn.Module) -> None:
    """Read every layer's pending skip counts in one copy; each layer that skipped its first update warns.

    The trainer calls it before every log row, validation and checkpoint (``_flush_metrics``), so a skipped
    update is reported within ``train.log_every`` episodes of happening.
    """
    layers = [layer for layer in norm_layers(model) if layer.pending_device_checks() is not None]
    if not layers:
        return
    pending = [layer.pending_device_checks() for layer in layers]
    if len({p.device for p in pending}) == 1:
        for layer, counts in zip(layers, torch.stack(pending).tolist(), strict=True):
            layer.read_device_checks(counts)
    else:  # a model split over devices: one read per layer
        for layer in layers:
            layer.read_device_checks()


def enforce_state_bounds(model: nn.Module) -> None:
    """Apply the state bounds the layers' device updates left to the host (SWBN's cap on ``W``); reads the device.

    The trainer calls it at every log row, a point fixed by the episode count, so that a resumed run changes the
    state where the uninterrupted run did.
    """
    for layer in norm_layers(model):
        layer.enforce_state_bounds()
