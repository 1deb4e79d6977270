"""``--device`` for every command that runs a model (train, study, sweep, eval, compare, predict, embed, bench).

The option overrides the top-level config key ``device`` for the whole process (:func:`fewshot.device.choose_device`);
``train`` and ``study`` also record it in the run's config. It is resolved when the command starts, so asking
for CUDA on a machine without it ends with one line on stderr and exit code 2 before any work starts.
"""

from __future__ import annotations

import argparse

__all__ = ["add_device_option", "apply_device_option", "device_overrides"]

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"  # = fewshot.device.DEVICE_CHOICES (not imported: --help needs no torch)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--device DEVICE`` (default: the config's ``device``, itself ``auto`` by default)."""
    parser.add_argument(
        "--device", default=None, metavar="DEVICE",
        help=f"where the model runs: {DEVICE_CHOICES} (default: the config key device, auto = first CUDA device "
        "if any, else cpu)",
    )  # fmt: skip


def apply_device_option(args: argparse.Namespace) -> None:
    """Make ``args.device`` the process's device (raises DeviceError, exit code 2, if it does not exist here)."""
    from fewshot.device import choose_device

    choose_device(getattr(args, "device", None))


def device_overrides(args: argparse.Namespace) -> list[str]:
    """``["device=..."]`` when ``--device`` was given (for commands that write a run config), else ``[]``."""
    device = getattr(args, "device", None)
    return [f"device={device}"] if device is not None else []
