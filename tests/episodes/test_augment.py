"""Flip / padded-crop augmentation of training episodes (``data.augment``, ``episodes/augment.py``).

Off changes nothing (bit-identical episodes); on, episode ``i`` is a pure function of ``(seed, i)`` (equal across
sampler instances, access orders and devices), each image is the flipped window of its padded original that
the episode's draw names, fixed evaluation episodes are never augmented, and bad options raise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from episodes.augment import AugmentDraw, ImageAugment
from episodes.device_builder import DeviceEpisodeBuilder
from episodes.fixed import FixedEpisodes, make_fixed_episodes
from episodes.pixels import IMAGENET_NORM
from episodes.sampler import EpisodeSampler
from episodes.split import ClassSplit
from fewshot.errors import ConfigError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLIP_CROP = ImageAugment(flip=True, crop_padding=3)


def _split(shape: tuple[int, ...] = (10, 10, 3), n_classes: int = 8, per_class: int = 6) -> ClassSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (n_classes * per_class, *shape), dtype=np.uint8)  # 1..255: a zero is padding
    return ClassSplit(
        "synthetic", "test", "train", images, [f"img{i}" for i in range(len(images))],
        [f"c{i:02d}" for i in range(n_classes)],
        [np.arange(i * per_class, (i + 1) * per_class) for i in range(n_classes)],
        np.arange(n_classes) % 4, ["g"] * n_classes, "synthetic",
    )  # fmt: skip


def _same(a, b) -> None:
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.class_ids, a.support_ids, a.query_ids) == (b.class_ids, b.support_ids, b.query_ids)


def _unaugmented(sampler: EpisodeSampler, i: int):
    return sampler.build(dataclasses.replace(sampler.indices(i), augment=None))


@pytest.mark.parametrize("augment", [None, ImageAugment(), ImageAugment(flip=False, crop_padding=0)])
def test_off_or_inactive_gives_the_episodes_of_a_sampler_without_augment(augment):
    split = _split()
    plain = EpisodeSampler(split, 4, 2, 3, seed=5, rotation_augment=True)
    other = EpisodeSampler(split, 4, 2, 3, seed=5, rotation_augment=True, augment=augment)
    assert other.augment is None and repr(other) == repr(plain)
    for i in range(6):
        assert other.indices(i).augment is None
        _same(plain[i], other[i])


def test_on_keeps_classes_images_rotations_and_changes_pixels():
    split = _split()
    plain = EpisodeSampler(split, 4, 2, 3, seed=5, rotation_augment=True)
    aug = EpisodeSampler(split, 4, 2, 3, seed=5, rotation_augment=True, augment=FLIP_CROP)
    for i in range(6):
        p, a = plain.indices(i), aug.indices(i)
        for field in ("classes", "support", "query", "rotation"):
            assert np.array_equal(getattr(p, field), getattr(a, field)), field
        ep_p, ep_a = plain[i], aug[i]
        assert ep_p.support_ids == ep_a.support_ids and torch.equal(ep_p.query_y, ep_a.query_y)
        assert not torch.equal(ep_p.support_x, ep_a.support_x)
        assert a.augment.flip.shape == (4 * 5,) and a.augment.offset.shape == (4 * 5, 2)
        assert a.augment.offset.min() >= 0 and a.augment.offset.max() <= 6


def test_episode_i_is_a_pure_function_of_seed_and_index():
    split = _split()
    first = EpisodeSampler(split, 4, 2, 3, seed=5, augment=FLIP_CROP)
    forward = [first[i] for i in range(8)]
    second = EpisodeSampler(split, 4, 2, 3, seed=5, augment=FLIP_CROP)  # a resumed run: a fresh sampler
    for i in reversed(range(8)):  # any access order
        _same(forward[i], second[i])
    other_seed = EpisodeSampler(split, 4, 2, 3, seed=6, augment=FLIP_CROP)
    assert not np.array_equal(first.indices(0).augment.offset, other_seed.indices(0).augment.offset)
    draws = [first.indices(i).augment for i in range(40)]
    flips = np.concatenate([d.flip for d in draws])
    offsets = np.concatenate([d.offset for d in draws])
    assert 0.35 < flips.mean() < 0.65  # both outcomes, about equally often
    assert set(offsets.reshape(-1).tolist()) == set(range(7))  # every offset 0..2p is drawn


@pytest.mark.parametrize("shape", [(10, 10), (10, 10, 3)])
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_each_image_is_the_flipped_window_of_its_padded_original(shape, mode):
    split = _split(shape)
    aug = EpisodeSampler(split, 4, 2, 3, seed=1, rotation_augment=True, augment=ImageAugment(True, 3, mode))
    plain_sampler = EpisodeSampler(split, 4, 2, 3, seed=1, rotation_augment=True)
    for i in range(4):
        draw = aug.indices(i).augment
        plain, ep = plain_sampler[i], aug[i]
        originals = torch.cat((plain.support_x, plain.query_x))  # (M, C, H, W) float
        got = torch.cat((ep.support_x, ep.query_x))
        padded = F.pad(originals, (3, 3, 3, 3), mode="constant" if mode == "zeros" else "reflect")
        for m in range(len(got)):
            oy, ox = draw.offset[m].tolist()
            window = padded[m, :, oy : oy + 10, ox : ox + 10]
            want = torch.flip(window, dims=(-1,)) if draw.flip[m] else window
            assert torch.equal(got[m], want), m
        assert draw.flip.any() and not draw.flip.all()


def test_flip_only_equals_torch_flip_where_the_mask_says():
    split = _split()
    aug = EpisodeSampler(split, 4, 2, 3, seed=2, augment=ImageAugment(flip=True))
    plain = EpisodeSampler(split, 4, 2, 3, seed=2)
    ind = aug.indices(3)
    assert ind.augment.offset is None
    orig = torch.cat((plain[3].support_x, plain[3].query_x))
    got = torch.cat((aug[3].support_x, aug[3].query_x))
    mask = torch.from_numpy(ind.augment.flip)
    assert torch.equal(got[mask], torch.flip(orig[mask], dims=(-1,)))
    assert torch.equal(got[~mask], orig[~mask])


def test_crop_at_the_centre_offset_and_no_flip_is_the_identity():
    images = torch.from_numpy(_split().images[:5])
    n = len(images)
    draw = AugmentDraw(flip=np.zeros(n, bool), offset=np.full((n, 2), 4), padding=4, padding_mode="zeros")
    assert torch.equal(draw.apply(images), images)
    corner = AugmentDraw(flip=None, offset=np.zeros((n, 2), np.int64), padding=4, padding_mode="zeros")
    out = corner.apply(images)  # window at the top-left corner of the padded image: the image moved by 4, 4
    assert torch.equal(out[:, 4:, 4:], images[:, :-4, :-4]) and out[:, :4].eq(0).all() and out[:, :, :4].eq(0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", [None, IMAGENET_NORM])
def test_device_builder_builds_the_same_augmented_episodes(device, norm):
    split = dataclasses.replace(_split(), pixel_norm=norm)
    cpu = EpisodeSampler(split, 4, 2, 3, seed=4, rotation_augment=True, augment=FLIP_CROP)
    dev = EpisodeSampler(split, 4, 2, 3, seed=4, rotation_augment=True, augment=FLIP_CROP).to(device)
    assert isinstance(dev._builder, DeviceEpisodeBuilder) or device == "cpu"
    builder = DeviceEpisodeBuilder(split, torch.device(device))
    for i in range(4):
        a, b = cpu[i], builder(dev.indices(i))
        if norm is None:
            assert torch.equal(a.support_x, b.support_x.cpu()) and torch.equal(a.query_x, b.query_x.cpu())
        else:
            torch.testing.assert_close(b.support_x.cpu(), a.support_x, rtol=0, atol=1e-6)
            torch.testing.assert_close(b.query_x.cpu(), a.query_x, rtol=0, atol=1e-6)


def test_fixed_evaluation_episodes_carry_no_augmentation(tmp_path):
    split = _split()
    fixed = make_fixed_episodes(split, 4, 1, 2, seed=3, count=4)
    bound = FixedEpisodes.load(fixed.save(tmp_path / "val.json")).bind(split)
    plain = EpisodeSampler(split, 4, 1, 2, seed=3)
    for j in range(4):
        assert bound._indices[j].augment is None
        _same(bound[j], plain[j])


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"flip": True, "crop": 4}, "unknown key.*'crop'"),
        ({"crop_padding": -1}, "non-negative int"),
        ({"crop_padding": 2.5}, "non-negative int"),
        ({"crop_padding": True}, "non-negative int"),
        ({"flip": "yes"}, "true or false"),
        ({"flip": True, "padding_mode": "edge"}, "zeros, reflect"),
        ([True, 8], "null or a mapping"),
    ],
)
def test_bad_options_raise(value, match):
    with pytest.raises(ConfigError, match=match):
        ImageAugment.from_config(value)


def test_config_forms():
    assert ImageAugment.from_config(None) is None
    assert ImageAugment.from_config({}) is None and ImageAugment.from_config({"flip": False}) is None
    aug = ImageAugment.from_config({"flip": True, "crop_padding": 8})
    assert aug == ImageAugment(True, 8, "zeros") and ImageAugment.from_config(aug.to_config()) == aug


def test_padding_must_be_smaller_than_the_image():
    with pytest.raises(ConfigError, match="crop_padding = 10 must be smaller than the image sides"):
        EpisodeSampler(_split(), 4, 1, 2, augment=ImageAugment(crop_padding=10))
    with pytest.raises(TypeError, match="ImageAugment or None"):
        EpisodeSampler(_split(), 4, 1, 2, augment={"flip": True})
