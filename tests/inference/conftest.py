"""Fixtures for the inference tests: a toy image-folder dataset, tiny trained ProtoNet and MAML runs (trained once
per session, a few seconds each), and folders of "your own" images drawn like the toy classes.

Toy class ``c``: the bar images of tests/conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fewshot.cli.main import main


def _overrides(data: Path, extra: tuple[str, ...]) -> list[str]:
    options = {"path": str(data), "mode": "L", "image_size": 16}
    sets = (
        "data.dataset=imagefolder", "data.protocol=folder", f"data.options={json.dumps(options)}",
        "data.train_split=train", "data.val_split=null", "data.test_split=test",
        "model.backbone_kwargs={hidden: 8}", "train.n_way=3", "train.n_shot=1", "train.n_query=2",
        "train.episodes=12", "train.lr_step_episodes=null", "train.max_minutes=null", "train.log_every=4",
        "train.threads=1", "eval.n_way=3", "eval.n_shot=1", "eval.n_query=2", "eval.episodes=6", *extra,
    )  # fmt: skip
    return [arg for s in sets for arg in ("--set", s)]


MAML = ("learner.name=maml", "learner.kwargs={inner_steps: 1, eval_inner_steps: 2}", "train.norm_policy=transductive",
        "eval.norm_policy=transductive", "model.backbone=conv4_maml")  # fmt: skip


@pytest.fixture(scope="session")
def toy(tmp_path_factory, bar_dataset):
    """``{"root", "data", "protonet", "maml"}``: the toy dataset and two trained run folders (session-wide)."""
    root = tmp_path_factory.mktemp("inference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEWSHOT_RUNS", str(root / "runs"))
        mp.setenv("FEWSHOT_CACHE", str(root / "cache"))
        data = bar_dataset(root / "data", ("train", "test"))
        runs = {}
        for name, extra in (("protonet", ()), ("maml", MAML)):
            runs[name] = root / "runs" / name
            code = main(["train", *_overrides(data, extra), "--out", str(runs[name]), "--quiet"])
            assert code == 0
        yield {"root": root, "data": data, **runs}


@pytest.fixture
def own_images(tmp_path, bar_image, write_classes):
    """Your own images: ``support/{a,b,c}/`` (2 each, bars 0, 3, 6) and ``query/`` (one of each class, flat, named
    ``q_<class>.png``, plus ``query/held/`` with one more of class b)."""
    support = write_classes(tmp_path / "support", {"a": 0, "b": 3, "c": 6}, per_class=2, seed=5000)
    query = tmp_path / "query"
    query.mkdir()
    for k, (name, c) in enumerate((("a", 0), ("b", 3), ("c", 6))):
        Image.fromarray(bar_image(c, 7000 + k), mode="L").save(query / f"q_{name}.png")
    (query / "held").mkdir()
    Image.fromarray(bar_image(3, 7100), mode="L").save(query / "held" / "x.png")
    return {"support": tmp_path / "support", "support_files": support, "query": query}
