"""A tiny synthetic image-folder dataset (the bar classes of tests/conftest.py) and a 2-layer x 2-seed grid on it
(a few episodes per run)."""

import json

import pytest


@pytest.fixture
def toy_root(tmp_path, monkeypatch, bar_dataset):
    """train/ and test/ folders of 6 bar classes x 8 images (tests/conftest.py) under ``data/toy``."""
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    bar_dataset(tmp_path / "data" / "toy", ("train", "test"), per_class=8)
    return tmp_path


def write_grid(root, name="toy", episodes=8, norms=("batchnorm", "swbn"), seeds=(0, 1), spectrum_every=4, extra=""):
    options = {"path": str(root / "data" / "toy"), "mode": "L", "image_size": 16}
    shared = [
        "data.dataset=imagefolder",
        "data.protocol=folder",
        f"data.options={json.dumps(options)}",
        "data.train_split=train",
        "data.val_split=null",
        "data.test_split=test",
        "model.backbone_kwargs={hidden: 16}",
        "train.n_way=3",
        "train.n_shot=1",
        "train.n_query=2",
        f"train.episodes={episodes}",
        "train.lr_step_episodes=null",
        "train.max_minutes=null",
        "train.log_every=4",
        "train.threads=1",
        "eval.n_way=3",
        "eval.n_shot=1",
        "eval.n_query=2",
    ]
    cells = "\n".join(f"  - {{name: {n}, set: [norm={n}], seeds: {list(seeds)}}}" for n in norms)
    text = (
        f"# python run_episode.py sweep --grid {name}.yaml\nname: {name}\nset: {json.dumps(shared)}\n"
        f"cells:\n{cells}\n"
        "evaluation: {ways: [3], shots: [1, 2], queries: 2, episodes: 6, policies: [running, support]}\n"
        f"diagnostics: {{spectrum_every: {spectrum_every}, whiteness_episodes: 2}}\n{extra}"
    )
    path = root / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(name="write_grid")
def write_grid_fixture():
    """:func:`write_grid`, as a fixture (test modules do not import conftest: several conftest modules exist)."""
    return write_grid
