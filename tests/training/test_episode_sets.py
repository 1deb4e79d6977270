"""Shared, content-addressed fixed episode files under <runs root>/_episode_sets/."""

from __future__ import annotations

import dataclasses

import torch

from episodes.fixed import make_fixed_episodes
from fewshot.training.episode_sets import eval_episode_set, get_episode_set, runs_root, val_episode_set


def test_a_set_is_made_once_and_then_reused(tmp_path, splits):
    split = splits[0]
    first = get_episode_set(split, 3, 1, 2, seed=5, count=4, root=tmp_path)
    assert first.path.parent == tmp_path / "_episode_sets"
    assert first.path.name.startswith("omniglot-vinyals-train-3w1s2q-seed5-n4-")
    stamp = first.path.stat().st_mtime_ns
    again = get_episode_set(split, 3, 1, 2, seed=5, count=4, root=tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp  # not rewritten
    assert again.content_hash == first.content_hash
    reference = make_fixed_episodes(split, 3, 1, 2, seed=5, count=4).bind(split)
    assert len(again.episodes) == len(reference) == 4
    for a, b in zip(again.episodes, reference, strict=True):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
        assert a.class_ids == b.class_ids
    assert [p.name for p in (tmp_path / "_episode_sets").iterdir()] == [first.path.name]  # no temp files


def test_every_key_field_addresses_another_file(tmp_path, splits):
    split = splits[0]
    base = get_episode_set(split, 3, 1, 2, seed=5, count=4, root=tmp_path).path
    others = [
        get_episode_set(split, 3, 1, 2, seed=6, count=4, root=tmp_path).path,
        get_episode_set(split, 3, 1, 2, seed=5, count=5, root=tmp_path).path,
        get_episode_set(split, 4, 1, 2, seed=5, count=4, root=tmp_path).path,
        get_episode_set(split, 3, 1, 2, seed=5, count=4, within_alphabet=True, root=tmp_path).path,
        get_episode_set(
            dataclasses.replace(split, fingerprint="other data"), 3, 1, 2, seed=5, count=4, root=tmp_path
        ).path,  # fmt: skip
    ]
    assert len({base, *others}) == 6


def test_validation_and_test_sets_follow_the_config(tmp_path, splits, tiny_config):
    cfg = tiny_config("train.val_episodes=3", "eval.episodes=5", "eval.seed=9")
    val = val_episode_set(cfg, splits[1], tmp_path)
    test = eval_episode_set(cfg, splits[1], tmp_path)
    assert (val.fixed.count, test.fixed.count) == (3, 5)
    assert val.key["seed"] == test.key["seed"] == 9
    assert (val.fixed.n_way, val.fixed.n_shot, val.fixed.n_query) == (3, 1, 2)


def test_runs_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path))
    assert runs_root() == tmp_path
    monkeypatch.delenv("FEWSHOT_RUNS")
    assert str(runs_root()) == "runs"
    assert runs_root(tmp_path / "x") == tmp_path / "x"


def test_a_file_answering_another_request_under_this_name_is_refused(tmp_path, splits):
    """A 5-shot file copied over the 1-shot name (a valid, unedited file) is refused, naming both values."""
    import pytest

    from fewshot.errors import DataError

    split = splits[0]
    one_shot = get_episode_set(split, 3, 1, 2, seed=5, count=4, root=tmp_path)
    two_shot = get_episode_set(split, 3, 2, 2, seed=5, count=4, root=tmp_path)
    original = one_shot.path.read_bytes()
    one_shot.path.write_bytes(two_shot.path.read_bytes())
    expected = r"holds other episodes than its name says \(n_shot: file has 2, expected 1\)"
    with pytest.raises(DataError, match=expected) as info:
        get_episode_set(split, 3, 1, 2, seed=5, count=4, root=tmp_path)
    message = str(info.value)
    assert str(one_shot.path) in message and "Delete it" in message
    assert (
        f"run_episode.py episodes --dataset omniglot --protocol vinyals --split train --n-way 3 --n-shot 1 "
        f"--n-query 2 --seed 5 --count 4 --save {one_shot.path} --force" in message
    )
    one_shot.path.write_bytes(original)  # the genuine file is accepted again
    assert get_episode_set(split, 3, 1, 2, seed=5, count=4, root=tmp_path).content_hash == one_shot.content_hash


def test_a_version_1_file_is_upgraded_only_if_it_equals_its_regenerated_episodes(tmp_path, splits):
    import json

    import pytest

    from fewshot.errors import DataError

    split = splits[0]
    made = get_episode_set(split, 3, 1, 2, seed=5, count=4, root=tmp_path)

    def as_version_1(change=None) -> None:
        data = json.loads(made.path.read_text())
        data["format_version"] = 1
        del data["sha256"]
        if change:
            change(data)
        made.path.write_text(json.dumps(data))

    as_version_1()
    again = get_episode_set(split, 3, 1, 2, seed=5, count=4, root=tmp_path)
    assert again.content_hash == made.content_hash
    assert json.loads(made.path.read_text())["format_version"] == 2  # rewritten with its digest
    as_version_1(lambda d: d["episodes"][0]["rotation"].__setitem__(0, 3 - d["episodes"][0]["rotation"][0]))
    with pytest.raises(DataError, match=r"its episodes differ from those its request gives \(edited by hand\)"):
        get_episode_set(split, 3, 1, 2, seed=5, count=4, root=tmp_path)
