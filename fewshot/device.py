"""Which torch device a model runs on: ``auto | cpu | cuda | cuda:N``, and the facts about it for ``env.json``.

``auto`` (the default of the config key ``device`` and of every ``--device`` option) takes the first CUDA
device when torch sees one, else the CPU. Asking for CUDA on a machine without it is a
:class:`DeviceError` (a :class:`~fewshot.errors.ConfigError`, so the command line prints one line and exits
with code 2) that says how to get a CUDA build of torch (``docs/gpu.md``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from fewshot.errors import ConfigError

__all__ = [
    "DEVICE_CHOICES",
    "DeviceError",
    "check_device_spec",
    "choose_device",
    "device_facts",
    "model_device",
    "resolve_device",
    "run_device",
]

#: The accepted spellings, for help texts (``cuda:N`` takes any device index).
DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


class DeviceError(ConfigError):
    """The requested device does not exist on this machine or is spelled wrongly."""


def check_device_spec(spec: object) -> str:
    """``spec`` if it is a valid device spelling (whatever this machine has), else raise :class:`DeviceError`."""
    m = _SPEC.match(spec) if isinstance(spec, str) else None
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise DeviceError(f"device must be one of {DEVICE_CHOICES}, got {spec!r}; e.g. --device cuda:0")
    return spec


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` that ``spec`` names on this machine.

    Args:
        spec: ``auto`` / ``None`` (first CUDA device if any, else CPU), ``cpu``, ``cuda`` (= ``cuda:0``),
            ``cuda:N``, or a ``torch.device``.

    Raises:
        DeviceError: a misspelled spec, CUDA asked for where torch has none, or a CUDA index out of range.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = check_device_spec("auto" if spec is None else spec)
    kind, _, index = spec.partition(":")
    available = torch.cuda.is_available()
    if kind == "auto":
        return torch.device("cuda", 0) if available else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not available:
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise DeviceError(
            f"device {spec!r} asked for, but torch sees no CUDA device here ({build}); use --device cpu (or auto), "
            "or install a CUDA build of torch (docs/gpu.md)"
        )
    n = torch.cuda.device_count()
    i = int(index or 0)
    if i >= n:
        raise DeviceError(f"device {spec!r} asked for, but this machine has {n} CUDA device(s): cuda:0..cuda:{n - 1}")
    return torch.device("cuda", i)


_chosen: str | None = None  # the --device of this process's command, which overrides the config key


def choose_device(spec: str | None) -> None:
    """Make ``spec`` (a ``--device`` value) the device of everything this process runs; ``None`` clears it.

    It is resolved at once, so ``--device cuda`` on a machine without CUDA fails before any work starts.
    """
    global _chosen
    if spec is not None:
        resolve_device(spec)
    _chosen = spec


def run_device(config_device: str | None = "auto") -> torch.device:
    """The device to run on: the command line's ``--device`` if given, else the config's ``device`` key."""
    return resolve_device(_chosen if _chosen is not None else config_device)


def model_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (the CPU for a module without tensors)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def device_facts(device: torch.device) -> dict[str, Any]:
    """What ``env.json`` records about ``device``: its name, GPU model, CUDA, cuDNN and driver versions.

    On the CPU the GPU fields are ``None``; the driver version comes from NVML when torch can reach it.
    """
    facts: dict[str, Any] = {
        "device": str(device),
        "gpu": None,
        "gpu_memory_gib": None,
        "gpu_capability": None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts["gpu"] = props.name
        facts["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        facts["gpu_capability"] = f"{props.major}.{props.minor}"
        facts["driver"] = _driver_version()
    return facts


def _driver_version() -> str | None:
    try:
        import pynvml  # shipped with CUDA builds of torch as nvidia-ml-py

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - NVML absent or unreadable: the driver stays unrecorded
        pass
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
