"""Build the parts an experiment config names: data splits, the learner (backbone + norm), the training sampler.

These are the only places where a config turns into objects, shared by training, evaluation and the config
tests (every YAML file under ``configs/`` is built by ``tests/config/test_all_configs.py``).
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from episodes.augment import ImageAugment
from episodes.datasets import load_split
from episodes.pixels import PixelNorm
from episodes.sampler import EpisodeSampler
from episodes.split import ClassSplit
from fewshot.config.schema import ExperimentConfig
from fewshot.errors import ConfigError
from fewshot.registry import accepted_options

__all__ = ["build_split", "build_backbone", "build_learner", "build_train_sampler", "clear_split_cache"]

_SPLIT_CACHE: OrderedDict[str, ClassSplit] = OrderedDict()
_SPLIT_CACHE_SIZE = 4


def clear_split_cache() -> None:
    """Forget the splits :func:`build_split` keeps in memory."""
    _SPLIT_CACHE.clear()


def build_split(cfg: ExperimentConfig, split_name: str, *, cache: bool = True) -> ClassSplit:
    """Load split ``split_name`` (a split name such as ``cfg.data.test_split``) of the config's dataset.

    The last few splits loaded are kept in memory (keyed by dataset, protocol, split, data root and options),
    so training and evaluation in one process decode a split once. The returned split carries the config's
    ``data.normalize`` as its ``pixel_norm`` (applied when episodes are built).

    Args:
        cfg: the experiment config (``data`` section).
        split_name: the split's name (``"train"``, ``"val"``, ``"test"``, ``"trainval"``); pass
            ``cfg.data.train_split`` etc. for the config's roles.
        cache: use and fill the in-memory cache.

    Raises:
        ConfigError / DataError: from the dataset loader (unknown split, missing data, bad option).
    """
    d = cfg.data
    key = json.dumps([d.dataset, d.protocol, split_name, d.data_root, d.options], sort_keys=True, default=str)
    if cache and key in _SPLIT_CACHE:
        _SPLIT_CACHE.move_to_end(key)
        split = _SPLIT_CACHE[key]
    else:
        split = load_split(d.dataset, d.protocol, split_name, d.data_root, **d.options)
    if cache:
        _SPLIT_CACHE[key] = split
        while len(_SPLIT_CACHE) > _SPLIT_CACHE_SIZE:
            _SPLIT_CACHE.popitem(last=False)
    pixel_norm = PixelNorm.from_config(d.normalize)
    if pixel_norm is not None:
        pixel_norm.check_channels(split.image_shape[0], f"split {split_name!r} of {d.dataset!r}")
    return dataclasses.replace(split, pixel_norm=pixel_norm)


def _wrap_option_error(what: str, key: str, exc: Exception) -> ConfigError:
    return ConfigError(f"{what} rejected the options of config key {key!r}: {exc}")


def build_backbone(cfg: ExperimentConfig, in_channels: int) -> nn.Module:
    """The backbone of ``cfg.model`` with its norm layers, for images of ``in_channels`` channels."""
    from fewshot import backbones

    m = cfg.model
    try:
        return backbones.create(
            m.backbone, in_channels=in_channels, norm=m.norm, norm_kwargs=dict(m.norm_kwargs), **m.backbone_kwargs
        )
    except (TypeError, ValueError) as exc:
        raise _wrap_option_error(f"backbone {m.backbone!r} with norm {m.norm!r}", "model", exc) from exc


def _learner_signature(name: str) -> tuple[set[str], bool]:
    from fewshot.learners import LEARNERS

    named, takes_any = accepted_options(LEARNERS.get(name))
    return set(named), takes_any


def build_learner(
    cfg: ExperimentConfig, n_way: int, image_shape: Sequence[int], class_names: Sequence[str] | None = None
) -> Any:
    """The learner of ``cfg.learner`` around the backbone of ``cfg.model``.

    The framework supplies, where the learner's constructor takes them, ``n_way`` (MAML sizes its head),
    ``image_size`` and ``in_channels`` (from ``image_shape``), ``channels_last`` (``cfg.train.channels_last``;
    the model itself is converted too) and ``class_names`` (the training split's classes, for a learner with a
    head over all of them). Parameters are initialized from the global torch RNG: seed it first (the trainer
    calls ``torch.manual_seed(cfg.seed)``).

    Args:
        cfg: the experiment config.
        n_way: classes per episode the learner is built for (``cfg.train.n_way`` for training).
        image_shape: ``(C, H, W)`` of the images (``ClassSplit.image_shape``).
        class_names: the training split's class names (training only; ``None`` when building to evaluate).

    Returns:
        A :class:`fewshot.learners.Learner` (an ``nn.Module`` with ``meta_loss`` and ``predict``).
    """
    from fewshot import learners

    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)!r}")
    c, h, w = (int(v) for v in image_shape)
    if h != w:
        raise ConfigError(f"the backbones expect square images, got {h}x{w}; set data.options.image_size")
    backbone = build_backbone(cfg, c)
    framework = {
        "n_way": int(n_way), "image_size": h, "in_channels": c, "channels_last": cfg.train.channels_last,
        "class_names": None if class_names is None else tuple(class_names),
    }  # fmt: skip
    named, var_kw = _learner_signature(cfg.learner.name)
    given = {k: v for k, v in framework.items() if var_kw or k in named}
    try:
        learner = learners.create(cfg.learner.name, backbone, **given, **cfg.learner.kwargs)
    except (TypeError, ValueError) as exc:  # unknown option, or a value the constructor rejects
        raise _wrap_option_error(f"learner {cfg.learner.name!r}", "learner.kwargs", exc) from exc
    if cfg.train.channels_last:
        learner = learner.to(memory_format=torch.channels_last)
    return learner


def build_train_sampler(cfg: ExperimentConfig, split: ClassSplit) -> EpisodeSampler:
    """The training sampler: episode ``i`` of ``EpisodeSampler(split, train way/shot/query, seed=cfg.seed)``.

    The only sampler that gets ``data.augment`` (flip / padded crop): validation and test episodes never do.
    """
    t = cfg.train
    return EpisodeSampler(
        split, t.n_way, t.n_shot, t.n_query, seed=cfg.seed, within_alphabet=t.within_alphabet,
        rotation_augment=t.rotation_augment, augment=ImageAugment.from_config(cfg.data.augment),
    )  # fmt: skip
