"""A user's image files become exactly the tensors the run's training episodes held; ill-fitting files are refused
with an error naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.datasets import get_dataset, load_split
from episodes.datasets.omniglot_store import preprocess
from episodes.sampler import EpisodeSampler
from fewshot.config import load_config
from fewshot.errors import DataError
from fewshot.evaluation.run_eval import load_run_config
from fewshot.inference.images import class_folders, image_files, load_images


def test_same_pixels_as_the_training_episodes(toy, monkeypatch) -> None:
    """The toy run's test split through the sampler, and the same files through load_images: bit-identical."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(toy["root"] / "cache"))
    options = {"path": str(toy["data"]), "mode": "L", "image_size": 16}
    split = load_split("imagefolder", "folder", "test", **options)
    episode = EpisodeSampler(split, 3, 2, 1, seed=3)[0]
    cfg = load_run_config(toy["protonet"])  # its data.options are the ones above
    assert cfg.data.options == options
    files = [toy["data"] / "test" / image_id for image_id in episode.support_ids]
    assert torch.equal(load_images(files, cfg, split.image_shape), episode.support_x)


def _omniglot_cfg(**options):
    return load_config(None, [f"data.options={options or {'image_size': 28}}"])  # defaults: omniglot


def test_omniglot_strokes_are_read_and_inverted_as_the_original_scans(tmp_path) -> None:
    paper = np.ones((105, 105), dtype=bool)
    paper[30:80, 50:56] = False  # a dark vertical stroke on white paper, as the original PNGs (mode '1')
    Image.fromarray(paper).save(tmp_path / "char.png")
    grey = np.where(paper, 255, 0).astype(np.uint8)  # the same drawing saved as a grey JPEG-like copy
    Image.fromarray(grey, mode="L").resize((60, 60)).save(tmp_path / "small.png")
    x = load_images([tmp_path / "char.png"], _omniglot_cfg(), (1, 28, 28))
    assert torch.equal(x, torch.from_numpy(preprocess(paper[None], 28)).float().div(255).unsqueeze(1))
    assert x[0, 0, 0, 0] == 0 and x.max() == 1  # inverted: paper 0, strokes bright
    y = load_images([tmp_path / "small.png"], _omniglot_cfg(), (1, 28, 28))
    assert y.shape == (1, 1, 28, 28) and y[0, 0, 14, 14] > 0.5 and y[0, 0, 2, 2] == 0
    no_invert = load_images([tmp_path / "char.png"], _omniglot_cfg(image_size=28, invert=False), (1, 28, 28))
    assert no_invert[0, 0, 0, 0] == 1


def test_ill_fitting_files_are_refused_by_name(tmp_path) -> None:
    cfg = _omniglot_cfg()
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("RGB", (105, 105), (200, 30, 30)).save(tmp_path / "red.png")
    Image.new("LA", (105, 105), (255, 0)).save(tmp_path / "clear.png")
    Image.new("L", (105, 80), 255).save(tmp_path / "wide.png")
    Image.new("L", (105, 105), 0).save(tmp_path / "dark.png")
    Image.new("RGB", (105, 105), (255, 255, 255)).save(tmp_path / "grey_rgb.png")  # grey content saved as RGB: fine
    assert load_images([tmp_path / "grey_rgb.png"], cfg, (1, 28, 28)).shape == (1, 1, 28, 28)
    cases = {
        "notes.png": "is not a readable image",
        "red.png": r"is a colour image, but the model was trained on grey images \(1 channel\)",
        "clear.png": "has transparent pixels",
        "wide.png": "is 105x80; Omniglot models take square character images",
        "dark.png": "is mostly dark .* invert it first",
    }
    for name, message in cases.items():
        with pytest.raises(DataError, match=f"{tmp_path / name}.* {message}" if name != "notes.png" else message):
            load_images([tmp_path / name], cfg, (1, 28, 28))
    folder_cfg = load_config(
        None,
        [
            "data.dataset=imagefolder",
            "data.protocol=folder",
            "data.train_split=train",
            "data.options={mode: L, image_size: null}",
        ],
    )
    with pytest.raises(DataError, match=r"grey_rgb\.png becomes 105x105 .* the model takes 16x16"):
        load_images([tmp_path / "grey_rgb.png"], folder_cfg, (1, 16, 16))


def test_miniimagenet_files_are_rgb_at_the_runs_size(tmp_path) -> None:
    Image.new("L", (100, 90), 128).save(tmp_path / "grey.jpg")
    decoded = get_dataset("miniimagenet").decode_file(tmp_path / "grey.jpg", image_size=42, layout="csv")
    assert decoded.shape == (42, 42, 3) and decoded.dtype == np.uint8
    cfg = load_config(
        None,
        ["data.dataset=miniimagenet", "data.protocol=ravi", "data.train_split=train", "data.options={image_size: 42}"],
    )
    assert load_images([tmp_path / "grey.jpg"], cfg, (3, 42, 42)).shape == (1, 3, 42, 42)


def test_listing_rules(tmp_path) -> None:
    for rel in ("s/b/2.png", "s/b/1.JPG", "s/a/x.jpeg", "s/a/.hidden.png", "s/a/readme.txt", "q/top.png", "q/k/z.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4)).save(tmp_path / rel, format="PNG") if rel.endswith(("png", "PNG", "JPG", "jpeg")) else (
            tmp_path / rel
        ).write_text("x")
    support = class_folders(tmp_path / "s")
    assert [f.name for f in support.files] == ["x.jpeg", "1.JPG", "2.png"] and support.folders == ("a", "b", "b")
    query = image_files([tmp_path / "q", tmp_path / "s" / "a" / "x.jpeg"])
    assert [f.name for f in query.files] == ["top.png", "z.png", "x.jpeg"] and query.folders == ("", "k", "")
    (tmp_path / "s" / "empty").mkdir()
    with pytest.raises(DataError, match="class\\(es\\) empty hold no image"):
        class_folders(tmp_path / "s")
    with pytest.raises(DataError, match="does not exist"):
        image_files(tmp_path / "missing")
