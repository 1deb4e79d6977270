"""EpisodeSampler: shapes, labels, exact images drawn, determinism, within-alphabet, rotations, size checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from episodes.episode import Episode, collate_episodes
from episodes.sampler import EpisodeSampler
from episodes.split import ClassSplit
from fewshot.errors import ConfigError, DataError

SIDE = 9  # odd: the centre pixel is fixed by every quarter turn


def make_split(
    sizes=(6,) * 8,
    groups=None,
    rotations=None,
    colour=False,
    meta=None,
    side=SIDE,
    seed=0,
    name="test",
) -> ClassSplit:
    """A synthetic split whose pixels say which class and image they come from.

    Class ``c`` has ``sizes[c]`` images. The store rows are shuffled (class images are not contiguous) and the
    class names are not in index order (``cls{perm[c]:02d}``), so the sampler's sorting is exercised. In every
    image, the centre pixel is the class index ``c`` and the four edge midpoints hold the image's position
    within its class (both survive any quarter turn); the other pixels are random, so a rotation is visible.
    """
    rng = np.random.default_rng(seed)
    n = int(sum(sizes))
    order = rng.permutation(n)  # store row of the j-th (class, position) pair
    shape = (n, side, side, 3) if colour else (n, side, side)
    images = rng.integers(100, 256, shape, dtype=np.uint8)
    class_images, ids = [], [""] * n
    perm = rng.permutation(len(sizes))
    names = [f"cls{perm[c]:02d}" for c in range(len(sizes))]
    mid = side // 2
    j = 0
    for c, m in enumerate(sizes):
        rows = order[j : j + m]
        j += m
        class_images.append(rows.astype(np.int64))
        for p, r in enumerate(rows):
            images[r, mid, mid] = c
            for y, x in ((0, mid), (mid, 0), (side - 1, mid), (mid, side - 1)):
                images[r, y, x] = p
            ids[r] = f"{names[c]}/img{p:02d}"
    return ClassSplit(
        dataset="synthetic",
        protocol="none",
        split=name,
        images=images,
        image_ids=ids,
        class_names=names,
        class_images=class_images,
        class_rotation=np.zeros(len(sizes), np.int64) if rotations is None else np.asarray(rotations),
        class_groups=[""] * len(sizes) if groups is None else list(groups),
        fingerprint="f" * 16,
        meta=meta or {},
    )


def expected_rows(split: ClassSplit, ids, rotation_of_row) -> torch.Tensor:
    """The float images the ids name, each turned by its class's quarter turns: ``(len(ids), C, H, W)``."""
    lookup = {i: r for r, i in enumerate(split.image_ids)}
    rows = []
    for image_id, k in zip(ids, rotation_of_row, strict=True):
        img = np.rot90(split.images[lookup[image_id]], k, axes=(0, 1))
        t = torch.from_numpy(img.copy()).float() / 255
        rows.append(t.unsqueeze(0) if img.ndim == 2 else t.permute(2, 0, 1))
    return torch.stack(rows)


def pixel_class(x: torch.Tensor) -> list[int]:
    """The class index encoded in the centre pixel of each row of ``x`` (N, C, H, W)."""
    mid = x.shape[-1] // 2
    return [round(v * 255) for v in x[:, 0, mid, mid].tolist()]


def assert_same_episode(a: Episode, b: Episode) -> None:
    for field in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert (a.class_ids, a.support_ids, a.query_ids, a.index) == (b.class_ids, b.support_ids, b.query_ids, b.index)


# --------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("colour", [False, True])
def test_episode_shapes_dtypes_and_labels(colour):
    split = make_split(colour=colour)
    ep = EpisodeSampler(split, n_way=3, n_shot=2, n_query=4, seed=1)[5]
    c = 3 if colour else 1
    assert ep.support_x.shape == (6, c, SIDE, SIDE) and ep.query_x.shape == (12, c, SIDE, SIDE)
    assert ep.support_x.dtype == torch.float32 and ep.support_y.dtype == torch.int64
    assert ep.support_x.is_contiguous() and ep.query_x.is_contiguous()  # NCHW, also for HWC colour stores
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert ep.query_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert (ep.n_way, ep.n_shot, ep.n_query, ep.index) == (3, 2, 4, 5)
    assert 0.0 <= float(ep.support_x.min()) and float(ep.query_x.max()) <= 1.0


def test_rows_are_the_named_images_and_labels_follow_sorted_class_names():
    split = make_split(sizes=(5, 7, 6, 9, 5, 8))  # unequal sizes: padded key path
    sampler = EpisodeSampler(split, n_way=4, n_shot=2, n_query=3, seed=3)
    for i in range(30):
        ep = sampler[i]
        assert list(ep.class_ids) == sorted(set(ep.class_ids)) and len(ep.class_ids) == 4
        assert torch.equal(ep.support_x, expected_rows(split, ep.support_ids, [0] * 8))
        assert torch.equal(ep.query_x, expected_rows(split, ep.query_ids, [0] * 12))
        # label j is the j-th sorted name: the pixels' class index maps back to class_ids[label]
        for x, y in ((ep.support_x, ep.support_y), (ep.query_x, ep.query_y)):
            assert [split.class_names[c] for c in pixel_class(x)] == [ep.class_ids[j] for j in y.tolist()]
        # image ids are distinct within the episode: no image in both support and query
        assert len(set(ep.support_ids) | set(ep.query_ids)) == 4 * 5


def test_indices_match_the_built_episode():
    split = make_split()
    sampler = EpisodeSampler(split, 3, 1, 2, seed=9)
    ind, ep = sampler.indices(4), sampler[4]
    assert [split.class_names[c] for c in ind.classes] == list(ep.class_ids)
    assert [split.image_ids[j] for j in ind.support.ravel()] == list(ep.support_ids)
    assert [split.image_ids[j] for j in ind.query.ravel()] == list(ep.query_ids)
    assert ind.support.shape == (3, 1) and ind.query.shape == (3, 2) and ind.rotation.tolist() == [0, 0, 0]


def test_collate_episodes_stacks_a_meta_batch():
    sampler = EpisodeSampler(make_split(), 2, 1, 3, seed=0)
    batch = collate_episodes([sampler[0], sampler[1], sampler[2]])
    assert batch.support_x.shape == (3, 2, 1, SIDE, SIDE) and batch.query_y.shape == (3, 6)
    assert batch.index == (0, 1, 2) and len(batch) == 3
    assert_same_episode(batch[1], sampler[1])
    other = EpisodeSampler(make_split(), 3, 1, 3)[0]
    with pytest.raises(ValueError, match="identical sizes"):
        collate_episodes([sampler[0], other])
    with pytest.raises(ValueError, match="at least one episode"):
        collate_episodes([])


# ------------------------------------------------------------------------------------------ determinism
def test_episode_is_a_pure_function_of_seed_and_index():
    split = make_split()
    a = EpisodeSampler(split, 4, 2, 2, seed=11)
    b = EpisodeSampler(split, 4, 2, 2, seed=11)
    forward = [a[i] for i in range(12)]
    for i in reversed(range(12)):  # another instance, reversed order
        assert_same_episode(b[i], forward[i])
    for i in np.random.default_rng(0).permutation(12):  # random order, repeated access
        assert_same_episode(a[int(i)], forward[int(i)])
    assert_same_episode(a[-1], a[len(a) - 1])


def test_different_seeds_and_indices_give_different_episodes():
    split = make_split(sizes=(10,) * 12)
    s0, s1 = EpisodeSampler(split, 5, 1, 3, seed=0), EpisodeSampler(split, 5, 1, 3, seed=1)
    pairs = [(s0[i].support_ids + s0[i].query_ids, s1[i].support_ids + s1[i].query_ids) for i in range(10)]
    assert all(x != y for x, y in pairs)
    assert len({s0[i].support_ids for i in range(10)}) == 10


def test_dataloader_workers_do_not_change_episodes():
    sampler = EpisodeSampler(make_split(), 3, 1, 2, seed=5, length=6)
    serial = list(DataLoader(sampler, batch_size=None, num_workers=0))
    parallel = list(DataLoader(sampler, batch_size=None, num_workers=2))
    assert len(serial) == len(parallel) == 6
    for x, y in zip(serial, parallel, strict=True):
        assert_same_episode(x, y)
    batches = list(DataLoader(sampler, batch_size=3, num_workers=2, collate_fn=collate_episodes))
    assert [b.index for b in batches] == [(0, 1, 2), (3, 4, 5)]
    assert_same_episode(batches[1][2], serial[5])


def test_classes_are_drawn_uniformly():
    split = make_split(sizes=(4,) * 6)
    sampler = EpisodeSampler(split, 2, 1, 1, seed=0)
    counts = np.zeros(6)
    for i in range(1200):
        for c in sampler.indices(i).classes:
            counts[c] += 1
    assert np.all(np.abs(counts / 2400 - 1 / 6) < 0.03), counts  # 400 expected each, sd about 16


# --------------------------------------------------------------------------------------- within alphabet
def test_within_alphabet_uses_one_group_uniform_over_groups_with_enough_classes():
    groups = ["big"] * 12 + ["small"] * 4 + ["tiny"] * 2  # tiny has fewer than n_way = 3 classes
    split = make_split(sizes=(4,) * 18, groups=groups)
    sampler = EpisodeSampler(split, 3, 1, 1, seed=2, within_alphabet=True)
    seen = []
    for i in range(600):
        group = {groups[c] for c in sampler.indices(i).classes}
        assert len(group) == 1
        seen.append(group.pop())
    assert "tiny" not in seen
    assert 0.42 < seen.count("small") / 600 < 0.58  # uniform over groups, not proportional to size (0.25)


def test_within_alphabet_refuses_when_no_group_is_large_enough():
    split = make_split(groups=["a"] * 4 + ["b"] * 4)
    with pytest.raises(ConfigError, match=r"n_way = 5 classes, but the largest group .* 'a' with 4 classes"):
        EpisodeSampler(split, 5, 1, 1, within_alphabet=True)
    with pytest.raises(ConfigError, match="needs class groups"):
        EpisodeSampler(make_split(), 2, 1, 1, within_alphabet=True)


# ------------------------------------------------------------------------------------------------ rotation
def test_class_rotation_is_always_applied():
    split = make_split(sizes=(5,) * 4, rotations=[0, 1, 2, 3])
    sampler = EpisodeSampler(split, 4, 1, 2, seed=0)
    ep = sampler[0]
    k = [int(split.class_rotation[split.class_names.index(n)]) for n in ep.class_ids]
    assert sorted(k) == [0, 1, 2, 3] and sampler.indices(0).rotation.tolist() == k
    assert torch.equal(ep.support_x, expected_rows(split, ep.support_ids, k))
    assert torch.equal(ep.query_x, expected_rows(split, ep.query_ids, [r for r in k for _ in range(2)]))


def test_rot90_turns_counter_clockwise_like_pil():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(np.rot90(img, 1, axes=(0, 1)), np.asarray(Image.fromarray(img).rotate(90, expand=True)))


@pytest.mark.parametrize("colour", [False, True])
def test_rotation_augment_differs_per_class_and_is_exact(colour):
    split = make_split(sizes=(6,) * 10, rotations=[0, 1] * 5, meta={"rotation": "augment"}, colour=colour)
    sampler = EpisodeSampler(split, 5, 1, 2, seed=4)
    assert sampler.rotation_augment
    plain = EpisodeSampler(split, 5, 1, 2, seed=4, rotation_augment=False)
    distinct = []
    for i in range(40):
        ind, ep = sampler.indices(i), sampler[i]
        k = ind.rotation.tolist()
        distinct.append(len(set((np.array(k) - split.class_rotation[ind.classes]) % 4)))
        assert torch.equal(ep.support_x, expected_rows(split, ep.support_ids, k))
        assert torch.equal(ep.query_x, expected_rows(split, ep.query_ids, [r for r in k for _ in (0, 1)]))
        # augmentation is drawn last: the same classes and images as without it
        assert (ep.support_ids, ep.query_ids) == (plain[i].support_ids, plain[i].query_ids)
    assert sum(d > 1 for d in distinct) >= 36  # one rotation for the whole task would give 1 every time


def test_rotations_need_square_images():
    split = make_split(rotations=[0] * 8)
    narrow = dataclasses.replace(split, images=split.images[:, :, :5].copy())
    EpisodeSampler(narrow, 2, 1, 1)  # no rotation: fine
    with pytest.raises(DataError, match="non-square 9x5"):
        EpisodeSampler(narrow, 2, 1, 1, rotation_augment=True)


# -------------------------------------------------------------------------------------------- validation
def test_size_errors_name_the_numbers_and_the_class():
    split = make_split(sizes=(6, 6, 4, 6))
    with pytest.raises(ConfigError, match=r"n_way = 5 exceeds the 4 classes of split 'test' \(synthetic/none\)"):
        EpisodeSampler(split, 5, 1, 1)
    short = split.class_names[2]
    with pytest.raises(ConfigError, match=rf"n_shot \+ n_query = 5 exceeds the 4 images of class '{short}'"):
        EpisodeSampler(split, 2, 2, 3)
    with pytest.raises(ConfigError, match="and 3 other classes"):
        EpisodeSampler(split, 2, 2, 5)


@pytest.mark.parametrize("kwargs", [{"n_way": 0}, {"n_shot": -1}, {"n_query": 0}])
def test_non_positive_sizes_are_refused(kwargs):
    sizes = {"n_way": 2, "n_shot": 1, "n_query": 1, **kwargs}
    with pytest.raises(ConfigError, match="must be a positive int"):
        EpisodeSampler(make_split(), **sizes)


@pytest.mark.parametrize("bad", [{"n_way": 2.0}, {"n_shot": True}, {"n_query": "1"}, {"seed": 1.5}])
def test_wrong_types_are_refused(bad):
    args = {"n_way": 2, "n_shot": 1, "n_query": 1, **bad}
    with pytest.raises(TypeError, match="must be an int"):
        EpisodeSampler(make_split(), **args)


def test_bad_seed_index_and_images_are_refused():
    split = make_split()
    with pytest.raises(ConfigError, match="seed must be in"):
        EpisodeSampler(split, 2, 1, 1, seed=-1)
    sampler = EpisodeSampler(split, 2, 1, 1, length=3)
    with pytest.raises(IndexError, match="out of range"):
        sampler[3]
    with pytest.raises(TypeError, match="episode index must be an int"):
        sampler[1.0]
    floats = dataclasses.replace(split, images=split.images.astype(np.float32))
    with pytest.raises(DataError, match="uint8"):
        EpisodeSampler(floats, 2, 1, 1)


# ------------------------------------------------------------------------------------------------ property
SIZES = (8, 9, 10, 8, 12, 9, 11, 8, 10, 9)
PROPERTY_SPLIT = make_split(sizes=SIZES, rotations=[0, 1, 2, 3, 0, 1, 2, 3, 0, 1], meta={"rotation": "augment"})


@settings(max_examples=50, deadline=None)
@given(
    n_way=st.integers(1, 10),
    n_shot=st.integers(1, 4),
    n_query=st.integers(1, 4),
    seed=st.integers(0, 2**64 - 1),
    index=st.integers(0, 10**9 - 1),
)
def test_episode_invariants_hold_for_any_sizes(n_way, n_shot, n_query, seed, index):
    split = PROPERTY_SPLIT
    ep = EpisodeSampler(split, n_way, n_shot, n_query, seed=seed)[index]
    assert ep.support_y.tolist() == [j for j in range(n_way) for _ in range(n_shot)]
    assert ep.query_y.tolist() == [j for j in range(n_way) for _ in range(n_query)]
    assert ep.support_x.shape == (n_way * n_shot, 1, SIDE, SIDE)
    assert ep.query_x.shape == (n_way * n_query, 1, SIDE, SIDE)
    assert list(ep.class_ids) == sorted(set(ep.class_ids)) and len(ep.class_ids) == n_way
    assert not set(ep.support_ids) & set(ep.query_ids)
    assert len(set(ep.support_ids)) == n_way * n_shot and len(set(ep.query_ids)) == n_way * n_query
    for x, y in ((ep.support_x, ep.support_y), (ep.query_x, ep.query_y)):
        assert [split.class_names[c] for c in pixel_class(x)] == [ep.class_ids[j] for j in y.tolist()]


# --------------------------------------------------------------------------------------- real Omniglot data
@pytest.fixture(scope="module")
def vinyals_test(real_omniglot_root):
    from episodes.datasets import load_split

    return load_split("omniglot", "vinyals", "test", real_omniglot_root)


def test_real_vinyals_rotated_classes_are_rot90_of_the_stored_images(vinyals_test):
    split = vinyals_test
    sampler = EpisodeSampler(split, 5, 1, 15, seed=0)
    row_of = {image_id: r for r, image_id in enumerate(split.image_ids)}
    turns = []
    for i in range(20):
        ind, ep = sampler.indices(i), sampler[i]
        k = [int(split.class_rotation[c]) for c in ind.classes]
        assert k == [int(name[-3:]) // 90 for name in ep.class_ids]  # 'Alphabet/characterNN/rotDDD'
        turns.extend(k)
        rows = [row_of[image_id] for image_id in ep.query_ids]
        expected = np.stack([np.rot90(split.images[r], kk) for r, kk in zip(rows, np.repeat(k, 15), strict=True)])
        assert torch.equal(ep.query_x[:, 0], torch.from_numpy(expected).float() / 255)
        for name, image_id in zip(np.repeat(ep.class_ids, 15), ep.query_ids, strict=True):
            assert image_id.rsplit("/", 1)[0] == name.rsplit("/", 1)[0]  # the image belongs to the character
    assert set(turns) == {0, 1, 2, 3}


def test_real_vinyals_within_alphabet_and_size_errors(vinyals_test):
    split = vinyals_test
    sampler = EpisodeSampler(split, 20, 1, 5, seed=1, within_alphabet=True)
    for i in range(10):
        alphabets = {name.split("/")[0] for name in sampler[i].class_ids}
        assert len(alphabets) == 1
    first = split.class_names[0]
    with pytest.raises(ConfigError, match=rf"n_shot \+ n_query = 21 exceeds the 20 images of class '{first}'"):
        EpisodeSampler(split, 5, 6, 15)
    with pytest.raises(
        ConfigError, match=r"n_way = 1693 exceeds the 1692 classes of split 'test' \(omniglot/vinyals\)"
    ):
        EpisodeSampler(split, 1693, 1, 1)
