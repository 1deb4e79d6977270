"""DeviceEpisodeBuilder (episodes gathered from a uint8 tensor on the device) builds the CPU builder's episodes.

Run here on the CPU device, the torch path (index_select, torch.rot90, to_float) must equal the numpy path
bit for bit: same images, rotations, labels and ids; with per-channel standardization to float32 rounding. On a
CUDA machine the same comparison runs on the GPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from episodes.device_builder import DeviceEpisodeBuilder
from episodes.pixels import IMAGENET_NORM
from episodes.sampler import EpisodeSampler
from episodes.split import ClassSplit

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _split(shape: tuple[int, ...], n_classes: int = 12, per_class: int = 6) -> ClassSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_classes * per_class, *shape), dtype=np.uint8)
    return ClassSplit(
        "synthetic", "test", "train", images, [f"img{i}" for i in range(len(images))],
        [f"c{i:02d}" for i in range(n_classes)],
        [np.arange(i * per_class, (i + 1) * per_class) for i in range(n_classes)],
        np.arange(n_classes) % 4, ["g"] * n_classes, "synthetic",
    )  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("shape", "norm"), [((10, 10), None), ((10, 10, 3), None), ((10, 10, 3), IMAGENET_NORM)])
def test_device_episodes_equal_cpu_episodes(device, shape, norm):
    split = dataclasses.replace(_split(shape), pixel_norm=norm)
    cpu = EpisodeSampler(split, 5, 2, 3, seed=4, rotation_augment=True)
    dev = EpisodeSampler(split, 5, 2, 3, seed=4, rotation_augment=True)
    dev._builder = DeviceEpisodeBuilder(split, torch.device(device))  # what .to(device) does for a GPU
    rotated = 0
    for i in range(12):
        a, b = cpu[i], dev[i]
        rotated += int(np.count_nonzero(cpu.indices(i).rotation))
        assert b.support_x.device.type == device and b.support_x.dtype == torch.float32
        tol = {"rtol": 0, "atol": 0} if norm is None else {"rtol": 1e-6, "atol": 1e-6}
        torch.testing.assert_close(b.support_x.cpu(), a.support_x, **tol)
        torch.testing.assert_close(b.query_x.cpu(), a.query_x, **tol)
        assert torch.equal(b.support_y.cpu(), a.support_y) and torch.equal(b.query_y.cpu(), a.query_y)
        assert (b.class_ids, b.support_ids, b.query_ids, b.index) == (a.class_ids, a.support_ids, a.query_ids, i)
    assert rotated > 0  # the quarter turns were exercised


def test_sampler_to_cpu_keeps_the_numpy_builder():
    split = _split((10, 10))
    sampler = EpisodeSampler(split, 5, 1, 1, seed=0)
    assert sampler.to("cpu") is sampler
    assert type(sampler._builder).__name__ == "EpisodeBuilder"


def test_episode_to_moves_images_and_keeps_labels():
    sampler = EpisodeSampler(_split((10, 10)), 5, 1, 1, seed=0)
    ep = sampler[0]
    assert ep.to("cpu") is ep
    moved = ep.to("cpu", torch.float64)
    assert moved.support_x.dtype == torch.float64 and moved.support_y.dtype == torch.int64
    assert torch.equal(moved.query_x, ep.query_x.double()) and moved.class_ids == ep.class_ids
