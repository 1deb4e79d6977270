"""The ``episodes`` command, run in-process through ``fewshot.cli.main.main``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from episodes.datasets import load_split
from episodes.fixed import FixedEpisodes
from episodes.sampler import EpisodeSampler
from fewshot.cli.main import main


@pytest.fixture
def folder_root(tmp_path, monkeypatch):
    """A data root with ``imagefolder/test/<class>/*.png``: 4 classes of 5 random 6x6 RGB images."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for c in ("bee", "ant", "elk", "cat"):
        (tmp_path / "imagefolder" / "test" / c).mkdir(parents=True)
        for i in range(5):
            img = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "imagefolder" / "test" / c / f"{i}.png")
    return tmp_path


def args(root, *extra):
    base = ["episodes", "--dataset", "imagefolder", "--data-root", str(root), "--split", "test"]
    return [*base, "--n-way", "3", "--n-shot", "1", "--n-query", "2", "--seed", "4", "--count", "2", *extra]


def test_json_lists_the_sampler_episodes(folder_root, capsys):
    assert main(args(folder_root, "--json")) == 0
    printed = json.loads(capsys.readouterr().out)
    sampler = EpisodeSampler(load_split("imagefolder", split="test", data_root=folder_root), 3, 1, 2, seed=4)
    assert [e["index"] for e in printed] == [0, 1]
    for entry in printed:
        ep = sampler[entry["index"]]
        assert entry["class_ids"] == list(ep.class_ids)
        assert entry["support_ids"] == list(ep.support_ids) and entry["query_ids"] == list(ep.query_ids)
        assert entry["rotation"] == [0, 0, 0]


def test_text_summary(folder_root, capsys):
    assert main(args(folder_root)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "imagefolder/folder split test: 4 classes, 20 images (3, 6, 6); 3-way 1-shot 2-query, seed 4"
    assert lines[1] == "episode 0" and len(lines) == 1 + 2 * 4
    ep = EpisodeSampler(load_split("imagefolder", split="test", data_root=folder_root), 3, 1, 2, seed=4)[0]
    name, sup = ep.class_ids[0], ep.support_ids[0].split("/")[1]
    q = " ".join(i.split("/")[1] for i in ep.query_ids[:2])
    assert lines[2] == f"   0  {name}  rot 0  support: {sup}  query: {q}"


def test_save_writes_a_fixed_file_and_prints_its_hash(folder_root, tmp_path, capsys):
    out = tmp_path / "fixed.json"
    assert main(args(folder_root, "--save", str(out))) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    fixed = FixedEpisodes.load(out)
    assert printed == f"saved 2 episodes to {out} (content hash {fixed.content_hash()})"
    assert (fixed.n_way, fixed.n_shot, fixed.n_query, fixed.seed, fixed.count) == (3, 1, 2, 4, 2)
    assert main([*args(folder_root, "--save", str(out)), "--seed", "5"]) == 2  # a different file: refused
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to overwrite") and err.count("\n") == 1
    assert FixedEpisodes.load(out) == fixed
    assert main([*args(folder_root, "--save", str(out), "--force"), "--seed", "5"]) == 0
    assert FixedEpisodes.load(out).seed == 5
    capsys.readouterr()
    assert main(args(folder_root, "--json", "--save", str(tmp_path / "b.json"))) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 2 and captured.err.startswith("saved 2 episodes")


def test_dataset_options_pass_through(folder_root, capsys):
    assert main(args(folder_root, "--option", "image_size=4", "--option", "mode=L")) == 0
    assert "(1, 4, 4)" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-way", "5"], "error: n_way = 5 exceeds the 4 classes of split 'test' (imagefolder/folder); lower n_way"),
        (["--n-query", "5"], "error: n_shot + n_query = 6 exceeds the 5 images of class 'ant'"),
        (["--count", "0"], "error: --count must be a positive number of episodes, got 0"),
        (["--n-shot", "0"], "error: n_shot must be a positive int, got 0"),
        (["--option", "size"], "error: --option expects KEY=VALUE, got 'size'"),
        (["--force"], "error: --force only applies with --save FILE"),
        (["--option", "colour=1"], "error: dataset 'imagefolder' takes no option 'colour'; its options are: path,"),
        (["--within-alphabet"], "error: within_alphabet=True needs class groups"),
        (["--dataset", "omniglott"], "error: unknown dataset 'omniglott'; did you mean 'omniglot'?"),
    ],
)
def test_bad_input_exits_2_with_one_line(folder_root, capsys, extra, message):
    assert main(args(folder_root, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_real_omniglot_episodes(real_omniglot_root, capsys):
    base = ["episodes", "--data-root", str(real_omniglot_root), "--count", "2", "--json"]
    assert main(base) == 0
    printed = json.loads(capsys.readouterr().out)
    sampler = EpisodeSampler(load_split("omniglot", "vinyals", "test", real_omniglot_root), 5, 1, 15, seed=0)
    assert [e["class_ids"] for e in printed] == [list(sampler[i].class_ids) for i in range(2)]
    assert printed[1]["query_ids"] == list(sampler[1].query_ids)
    assert main(["episodes", "--data-root", str(real_omniglot_root), "--within-alphabet", "--count", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0].endswith("seed 0, within alphabet") and len({line.split()[1].split("/")[0] for line in lines[2:]}) == 1
    )
