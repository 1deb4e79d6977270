"""Fixtures shared by every test folder: the toy "bar" image-folder dataset used by the end-to-end tests, and a spy.

Toy class ``c``: a 16x16 grey image of dark noise (0..59) with a bright bar (255) at rows ``2c, 2c+1``, so a
few episodes of training separate the classes.

Also ``fused_calls``: a spy on the normalization layers' fused-kernel forwards (norm and learner tests), and
``load_script``: a module of ``scripts/`` imported by name (the scripts are not a package).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image


def bar_image(c: int, seed: int, size: int = 16) -> np.ndarray:
    """uint8 ``(size, size)``: dark noise (0..59) with rows ``2c, 2c+1`` at 255."""
    img = np.random.default_rng(seed).integers(0, 60, size=(size, size)).astype(np.uint8)
    img[2 * c : 2 * c + 2, :] = 255
    return img


def write_classes(folder: Path, classes: dict[str, int], per_class: int, seed: int) -> dict[str, list[Path]]:
    """``folder/<name>/<i>.png`` for each ``name: bar row``; returns the files per class."""
    files = {}
    for k, (name, c) in enumerate(sorted(classes.items())):
        (folder / name).mkdir(parents=True, exist_ok=True)
        files[name] = []
        for i in range(per_class):
            path = folder / name / f"{i}.png"
            Image.fromarray(bar_image(c, seed + 100 * k + i), mode="L").save(path)
            files[name].append(path)
    return files


def write_bar_dataset(folder: Path, splits: tuple[str, ...], n_classes: int = 6, per_class: int = 6) -> Path:
    """``folder/<split>/<split><c>/<i>.png`` for ``c < n_classes``: an image-folder dataset whose splits share no
    class name and no image (each split draws from its own seeds). Returns ``folder``."""
    for s, split in enumerate(splits):
        write_classes(folder / split, {f"{split}{c}": c for c in range(n_classes)}, per_class, seed=1000 * s)
    return folder


@pytest.fixture(name="bar_dataset", scope="session")
def bar_dataset_fixture():
    """:func:`write_bar_dataset`, as a fixture (test modules do not import conftest modules)."""
    return write_bar_dataset


@pytest.fixture(name="bar_image", scope="session")
def bar_image_fixture():
    """:func:`bar_image`, as a fixture."""
    return bar_image


@pytest.fixture(name="write_classes", scope="session")
def write_classes_fixture():
    """:func:`write_classes`, as a fixture."""
    return write_classes


def load_script(name: str):
    """``scripts/<name>.py`` as a fresh module, registered in ``sys.modules`` (a dataclass looks its module up)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(name="load_script", scope="session")
def load_script_fixture():
    """:func:`load_script`, as a fixture."""
    return load_script


class FusedCall(NamedTuple):
    """One call of a layer's fused batch-statistics forward: the input shape and whether it ran under ``grad``."""

    shape: tuple[int, ...]
    under_grad: bool


@pytest.fixture
def fused_calls(monkeypatch):
    """A list that gets one :class:`FusedCall` per fused normalization forward (BatchNorm and SWBN).

    Fused forwards are calls of torch's batch-norm kernel and of SWBN's compiled row kernel (its statistics,
    :func:`fewshot.norms.swbn_rows.batch_moments`, mark each such forward).

    ``under_grad`` is True when a ``torch.func`` transform was active (MAML's inner loop), so tests can tell
    the inner-loop forwards from the plain-autograd ones (query forward, state update, ProtoNet).
    """
    calls = []
    original = torch.native_batch_norm

    def spy(x, *args):
        calls.append(FusedCall(tuple(x.shape), torch._C._are_functorch_transforms_active()))
        return original(x, *args)

    import fewshot.norms.swbn as swbn_module

    rows_original = swbn_module.batch_moments

    def rows_spy(x, *args):
        calls.append(FusedCall(tuple(x.shape), torch._C._are_functorch_transforms_active()))
        return rows_original(x, *args)

    monkeypatch.setattr(torch, "native_batch_norm", spy)
    monkeypatch.setattr(swbn_module, "batch_moments", rows_spy)
    return calls
