"""A tiny synthetic image-folder dataset and a 2-layer x 2-seed grid on it (a few episodes per run)."""

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def toy_root(tmp_path, monkeypatch):
    """train/ and test/ folders of 6 classes x 8 images: class c is a bright bar at row 2c plus noise."""
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(6):
            folder = tmp_path / "data" / "toy" / split / f"{split}{c}"
            folder.mkdir(parents=True)
            for i in range(8):
                img = rng.integers(0, 60, size=(16, 16)).astype(np.uint8)
                img[2 * c : 2 * c + 2, :] = 255
                Image.fromarray(img, mode="L").save(folder / f"{i}.png")
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
