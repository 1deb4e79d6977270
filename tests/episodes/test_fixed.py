"""Fixed evaluation episode files: round trip, hash stability, refusals, corrupt files, atomic saves."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from episodes.fixed import FixedEpisodes, make_fixed_episodes
from episodes.sampler import EpisodeSampler
from episodes.split import ClassSplit
from fewshot.errors import ConfigError, DataError


def tiny_split(fingerprint: str = "abc123", rotation_meta: str | None = None) -> ClassSplit:
    """5 classes x 6 grey 4x4 images; image ``r`` is filled with ``r``; classes 'b' and 'd' turn by 1 and 3."""
    images = np.repeat(np.arange(30, dtype=np.uint8)[:, None, None], 16, axis=2).reshape(30, 4, 4)
    images[:, 0, 0] = 200  # a marked corner makes rotations visible
    return ClassSplit(
        dataset="synthetic",
        protocol="none",
        split="test",
        images=images,
        image_ids=[f"{'abcde'[r // 6]}/{r % 6}" for r in range(30)],
        class_names=list("abcde"),
        class_images=[np.arange(6 * c, 6 * c + 6) for c in range(5)],
        class_rotation=np.array([0, 1, 0, 3, 0]),
        class_groups=[""] * 5,
        fingerprint=fingerprint,
        meta={"image_size": 4, "rotation": rotation_meta or "classes"},
    )


@pytest.fixture
def fixed():
    return make_fixed_episodes(tiny_split(), n_way=3, n_shot=2, n_query=3, seed=7, count=6)


def test_bound_episodes_equal_freshly_sampled_ones_bit_for_bit(tmp_path, fixed):
    path = fixed.save(tmp_path / "eval.json")
    split = tiny_split()
    bound = FixedEpisodes.load(path).bind(split)
    sampler = EpisodeSampler(split, 3, 2, 3, seed=7)
    assert len(bound) == 6
    for i in range(6):
        a, b = bound[i], sampler[i]
        for name in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        assert (a.class_ids, a.support_ids, a.query_ids, a.index) == (b.class_ids, b.support_ids, b.query_ids, i)


def test_rotation_augmented_episodes_round_trip(tmp_path):
    split = tiny_split(rotation_meta="augment")
    fixed = make_fixed_episodes(split, 4, 1, 2, seed=3, count=5)
    assert fixed.rotation_augment
    bound = FixedEpisodes.load(fixed.save(tmp_path / "aug.json")).bind(split)
    sampler = EpisodeSampler(split, 4, 1, 2, seed=3)
    assert any(len(set(ep.rotation)) > 1 for ep in fixed.episodes)
    for i in range(5):
        assert torch.equal(bound[i].query_x, sampler[i].query_x)
        assert bound.indices(i).rotation.tolist() == sampler.indices(i).rotation.tolist()


def test_file_content_and_loaded_object_round_trip(tmp_path, fixed):
    path = fixed.save(tmp_path / "eval.json")
    data = json.loads(path.read_text())
    assert data["format"] == "fewshot-fixed-episodes" and data["format_version"] == 2
    assert data["sha256"] == fixed.file_digest() and len(data["sha256"]) == 64
    assert (data["dataset"], data["protocol"], data["split"], data["fingerprint"]) == (
        "synthetic", "none", "test", "abc123",
    )  # fmt: skip
    assert data["meta"] == {"image_size": 4, "rotation": "classes"}
    assert (data["n_way"], data["n_shot"], data["n_query"], data["seed"], data["count"]) == (3, 2, 3, 7, 6)
    first = data["episodes"][0]
    ind = EpisodeSampler(tiny_split(), 3, 2, 3, seed=7).indices(0)
    assert first["classes"] == ["abcde"[c] for c in ind.classes]
    assert first["support"] == [[f"{'abcde'[j // 6]}/{j % 6}" for j in row] for row in ind.support.tolist()]
    assert first["rotation"] == ind.rotation.tolist()
    assert FixedEpisodes.load(path) == fixed


def test_content_hash_is_stable_and_content_sensitive(tmp_path, fixed):
    again = make_fixed_episodes(tiny_split(), n_way=3, n_shot=2, n_query=3, seed=7, count=6)
    assert fixed.content_hash() == again.content_hash()
    assert FixedEpisodes.load(fixed.save(tmp_path / "e.json")).content_hash() == fixed.content_hash()
    assert len(fixed.content_hash()) == 64
    other_seed = make_fixed_episodes(tiny_split(), n_way=3, n_shot=2, n_query=3, seed=8, count=6)
    assert other_seed.content_hash() != fixed.content_hash()
    other_data = make_fixed_episodes(tiny_split("zzz"), n_way=3, n_shot=2, n_query=3, seed=7, count=6)
    assert other_data.content_hash() != fixed.content_hash()
    # the hash pins the content, not the generation options: an edited seed field keeps the hash
    assert dataclasses.replace(fixed, seed=99).content_hash() == fixed.content_hash()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fingerprint", "other", "fingerprint: file has 'abc123', loaded split has 'other'"),
        ("dataset", "omniglot", "dataset: file has 'synthetic', loaded split has 'omniglot'"),
        ("protocol", "lake", "protocol: file has 'none', loaded split has 'lake'"),
        ("split", "val", "split: file has 'test', loaded split has 'val'"),
    ],
)
def test_bind_refuses_another_split_naming_the_field(tmp_path, fixed, field, value, message):
    loaded = FixedEpisodes.load(fixed.save(tmp_path / "eval.json"))
    wrong = dataclasses.replace(tiny_split(), **{field: value})
    with pytest.raises(DataError, match=message) as info:
        loaded.bind(wrong)
    assert "regenerate the file with `run_episode.py episodes --dataset synthetic" in str(info.value)
    assert "--save " + str(tmp_path / "eval.json") in str(info.value)


def test_bind_refuses_unknown_class_or_image(tmp_path, fixed):
    split = tiny_split()
    renamed = dataclasses.replace(split, class_names=["a", "b", "c", "d", "x"])
    uses_e = [ep for ep in fixed.episodes if "e" in ep.classes]
    assert uses_e
    with pytest.raises(DataError, match=f"episode {uses_e[0].index}: class 'e' is not in split 'test'"):
        fixed.bind(renamed)
    ids = list(split.image_ids)
    victim = fixed.episodes[0].support[0][0]
    ids[ids.index(victim)] = "gone"
    with pytest.raises(DataError, match=f"image id '{victim}' is not in class"):
        fixed.bind(dataclasses.replace(split, image_ids=ids))


def test_save_refuses_to_overwrite_a_different_file(tmp_path, fixed):
    path = tmp_path / "eval.json"
    fixed.save(path)
    fixed.save(path)  # identical content: a no-op
    other = make_fixed_episodes(tiny_split(), 3, 2, 3, seed=8, count=6)
    with pytest.raises(DataError, match="refusing to overwrite"):
        other.save(path)
    assert FixedEpisodes.load(path) == fixed
    other.save(path, overwrite=True)
    assert FixedEpisodes.load(path) == other
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no temporary file left behind
    with pytest.raises(DataError, match="it is a folder"):
        fixed.save(tmp_path)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(DataError, match="cannot write fixed episodes to"):
        fixed.save(tmp_path / "blocker" / "eval.json")


def test_corrupt_or_foreign_files_raise_data_error(tmp_path, fixed):
    path = fixed.save(tmp_path / "eval.json")
    text = path.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"bad.json' is not valid JSON .* line"):
        FixedEpisodes.load(bad)
    with pytest.raises(DataError, match="does not exist"):
        FixedEpisodes.load(tmp_path / "missing.json")

    def edited(change) -> DataError:
        data = json.loads(text)
        change(data)
        bad.write_text(json.dumps(data))
        with pytest.raises(DataError) as info:
            FixedEpisodes.load(bad)
        return info.value

    assert "got 'something-else'" in str(edited(lambda d: d.update(format="something-else")))
    assert "reads version 2" in str(edited(lambda d: d.update(format_version=3)))
    assert "predates integrity checks" in str(edited(lambda d: d.update(format_version=1)))
    assert "missing field 'seed'" in str(edited(lambda d: d.pop("seed")))
    assert "holds 5" in str(edited(lambda d: d["episodes"].pop()))
    assert "sorted order" in str(edited(lambda d: d["episodes"][0]["classes"].reverse()))
    assert "quarter turns" in str(edited(lambda d: d["episodes"][0].update(rotation=[0, 4, 0])))
    assert "2 image ids" in str(edited(lambda d: d["episodes"][1]["support"][0].pop()))
    assert "repeats an image" in str(
        edited(lambda d: d["episodes"][2]["query"][0].__setitem__(0, d["episodes"][2]["support"][0][0]))
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["episodes"][0]["support"][0].__setitem__(0, d["episodes"][0]["query"][1][0]),  # another image
        lambda d: d["episodes"][3]["rotation"].__setitem__(0, (d["episodes"][3]["rotation"][0] + 1) % 4),
        lambda d: d.update(seed=d["seed"] + 1),  # the request, not only the content
        lambda d: d["meta"].update(image_size=8),
        lambda d: d.update(sha256="0" * 64),
    ],
)
def test_a_hand_edited_file_is_refused_with_the_regenerating_command(tmp_path, fixed, change):
    path = fixed.save(tmp_path / "eval.json")
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"eval\.json' fails its integrity check .*edited by hand") as info:
        FixedEpisodes.load(path)
    assert "`run_episode.py episodes --dataset synthetic --protocol none --split test --n-way 3 --n-shot 2" in str(
        info.value
    ) and f"--save {path} --force`" in str(info.value)


def test_make_fixed_episodes_validates_count_and_sizes():
    with pytest.raises(ConfigError, match="count must be a positive int"):
        make_fixed_episodes(tiny_split(), 3, 1, 1, count=0)
    with pytest.raises(ConfigError, match="n_shot \\+ n_query = 7 exceeds the 6 images"):
        make_fixed_episodes(tiny_split(), 3, 4, 3, count=2)


def test_real_omniglot_round_trip_and_refusal(real_omniglot_root, tmp_path):
    from episodes.datasets import load_split

    test = load_split("omniglot", "vinyals", "test", real_omniglot_root)
    fixed = make_fixed_episodes(test, 5, 1, 15, seed=0, count=4)
    bound = FixedEpisodes.load(fixed.save(tmp_path / "omniglot.json")).bind(test)
    sampler = EpisodeSampler(test, 5, 1, 15, seed=0)
    for i in range(4):
        assert torch.equal(bound[i].support_x, sampler[i].support_x)
        assert torch.equal(bound[i].query_x, sampler[i].query_x)
        assert bound[i].query_ids == sampler[i].query_ids
    val = load_split("omniglot", "vinyals", "val", real_omniglot_root)
    with pytest.raises(DataError, match="split: file has 'test', loaded split has 'val'; fingerprint: file has"):
        fixed.bind(val)
