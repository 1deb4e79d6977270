"""Fixtures for the training tests: tiny synthetic class splits and tiny-model configs (fast on 2 CPU cores)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from episodes.split import ClassSplit
from fewshot.config import ExperimentConfig, load_config


def make_split(name: str, n_classes: int = 8, n_images: int = 6, size: int = 8, seed: int = 0) -> ClassSplit:
    """A random uint8 split ``(n_classes * n_images, size, size)`` named like Omniglot/Vinyals ``name``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_classes * n_images, size, size), dtype=np.uint8)
    return ClassSplit(
        dataset="omniglot",
        protocol="vinyals",
        split=name,
        images=images,
        image_ids=[f"{name}/img{i}" for i in range(len(images))],
        class_names=[f"{name}/class{c}" for c in range(n_classes)],
        class_images=[np.arange(c * n_images, (c + 1) * n_images) for c in range(n_classes)],
        class_rotation=np.zeros(n_classes, dtype=np.int64),
        class_groups=["alphabet"] * n_classes,
        fingerprint=f"synthetic-{name}-{seed}",
        meta={"image_size": size},
    )


#: A tiny run: strided Conv-4 with 8 channels on 8x8 images, 3-way 1-shot 2-query, one thread.
TINY = (
    "data.train_split=train",
    "data.val_split=val",
    "model.backbone=conv4_maml",
    "model.backbone_kwargs={hidden: 8}",
    "train.n_way=3",
    "train.n_shot=1",
    "train.n_query=2",
    "train.episodes=12",
    "train.max_minutes=null",
    "train.lr_step_episodes=4",
    "train.val_every=4",
    "train.val_episodes=3",
    "train.log_every=4",
    "train.threads=1",
    "train.channels_last=false",
    "eval.n_way=3",
    "eval.n_query=2",
)
MAML = (
    "learner.name=maml",
    "learner.kwargs={inner_steps: 1, eval_inner_steps: 2}",
    "train.meta_batch=2",
    "train.norm_policy=transductive",
    "eval.norm_policy=transductive",
)
SWBN = ("norm=swbn", "model.norm_kwargs={alpha: 0.05, group_size: 4}")


#: Learner/norm variants of the tiny run, by name.
CASES = {"protonet-batchnorm": (), "maml-batchnorm": MAML, "protonet-swbn": SWBN, "maml-swbn": MAML + SWBN}


@pytest.fixture
def case_overrides() -> dict[str, tuple[str, ...]]:
    """Overrides of the tiny run for each variant name (``protonet-batchnorm``, ``maml-batchnorm``, ...)."""
    return dict(CASES)


@pytest.fixture
def split_factory() -> Callable[..., ClassSplit]:
    """:func:`make_split`."""
    return make_split


@pytest.fixture
def splits() -> tuple[ClassSplit, ClassSplit]:
    """(train, val) synthetic splits with disjoint classes."""
    return make_split("train", seed=0), make_split("val", n_classes=4, seed=1)


@pytest.fixture
def tiny_config() -> Callable[..., ExperimentConfig]:
    """``tiny_config(*overrides)``: the TINY config plus overrides."""

    def make(*overrides: str, extra: Sequence[str] = (), case: str = "protonet-batchnorm") -> ExperimentConfig:
        return load_config(None, [*TINY, *CASES[case], *extra, *overrides])

    return make
