"""Pixel conversion: ``x / 255`` or per-channel standardization, in one pass, the same on every path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from episodes.pixels import IMAGENET_NORM, PixelNorm, to_float
from episodes.sampler import EpisodeSampler
from episodes.split import ClassSplit
from fewshot.config import load_config
from fewshot.errors import ConfigError
from fewshot.training import build


def _rgb_split(n_classes: int = 4, n_images: int = 5, size: int = 6) -> ClassSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_classes * n_images, size, size, 3), dtype=np.uint8)
    return ClassSplit(
        dataset="miniimagenet", protocol="ravi", split="test", images=images,
        image_ids=[f"img{i}" for i in range(len(images))], class_names=[f"n{c:08d}" for c in range(n_classes)],
        class_images=[np.arange(c * n_images, (c + 1) * n_images) for c in range(n_classes)],
        class_rotation=np.zeros(n_classes, dtype=np.int64), class_groups=[""] * n_classes, fingerprint="synthetic",
    )  # fmt: skip


def test_plain_conversion_is_division_by_255():
    raw = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_float(raw)
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x, raw.float() / 255.0)


def test_standardization_matches_the_textbook_formula_per_channel():
    raw = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # an NHWC store
    x = to_float(raw, IMAGENET_NORM)
    mean = torch.tensor(IMAGENET_NORM.mean).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORM.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (raw.double() / 255 - mean.double()) / std.double(), rtol=0, atol=2e-6,
                               check_dtype=False)  # fmt: skip
    assert x.is_contiguous()


def test_the_sampler_applies_the_split_s_normalization_and_keeps_the_episode():
    split = _rgb_split()
    norm = PixelNorm(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    plain = EpisodeSampler(split, 2, 1, 2, seed=3)[7]
    normed = EpisodeSampler(dataclasses.replace(split, pixel_norm=norm), 2, 1, 2, seed=3)[7]
    assert normed.support_ids == plain.support_ids and normed.query_ids == plain.query_ids
    mean, std = torch.tensor(norm.mean).view(1, 3, 1, 1), torch.tensor(norm.std).view(1, 3, 1, 1)
    torch.testing.assert_close(normed.query_x, (plain.query_x - mean) / std, rtol=0, atol=1e-6)


def test_build_split_attaches_the_config_normalization_without_changing_the_fingerprint(monkeypatch):
    split = _rgb_split()
    monkeypatch.setattr(build, "load_split", lambda *a, **k: split)
    build.clear_split_cache()
    cfg = load_config(None, ["data.normalize={mean: [0.4, 0.4, 0.4], std: [0.2, 0.2, 0.2]}"])
    got = build.build_split(cfg, "test", cache=False)
    assert got.pixel_norm == PixelNorm(mean=(0.4,) * 3, std=(0.2,) * 3)
    assert got.fingerprint == split.fingerprint and got.images is split.images
    assert build.build_split(load_config(None, []), "test", cache=False).pixel_norm is None


def test_a_channel_count_that_does_not_fit_is_a_config_error(monkeypatch):
    monkeypatch.setattr(build, "load_split", lambda *a, **k: _rgb_split())
    cfg = load_config(None, ["data.normalize={mean: [0.5], std: [0.5]}"])
    with pytest.raises(ConfigError, match="1 channel.*3-channel images"):
        build.build_split(cfg, "test", cache=False)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[0.5, 0.5]", "'data.normalize' must be a mapping or null"),
        ("{mean: [0.5]}", "mapping with the keys 'mean' and 'std'"),
        ("{mean: [0.5, 0.5], std: [0.5]}", "one mean and one std per channel"),
        ("{mean: [0.5], std: [0]}", "stds > 0"),
        ("{mean: [0.5], std: [.nan]}", r"data.normalize.std\[0\] = nan: expected a finite number"),
        ("{mean: a, std: [1]}", "list of numbers"),
    ],
)
def test_bad_normalize_values_fail_at_config_load(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"data.normalize={value}"])
