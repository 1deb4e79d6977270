"""Semantic checks of a built :class:`~fewshot.config.schema.ExperimentConfig` and registry-name resolution.

Types are checked while building (:mod:`fewshot.config.loader`); this module checks values (``n_way >= 2``,
policies in their allowed sets, positive budgets, ...) and resolves the dataset, protocol, splits, backbone,
norm and learner through their registries, so a typo fails at load time with the registry's close-match
message, and the returned config holds canonical names. Keyword arguments of the backbone, norm and learner
are checked against the signature of the registered constructor when it has no ``**kwargs``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fewshot.config.schema import ExperimentConfig
from fewshot.errors import ConfigError, UnknownNameError
from fewshot.norms.policy import Policy
from fewshot.numerics import PRECISIONS
from fewshot.registry import accepted_options

__all__ = ["validate_config", "resolve_name", "FRAMEWORK_LEARNER_KWARGS", "FRAMEWORK_BACKBONE_KWARGS"]

#: Learner arguments the framework sets itself (from the episode sizes and the data); not allowed in
#: ``learner.kwargs``.
FRAMEWORK_LEARNER_KWARGS = ("backbone", "n_way", "image_size", "in_channels", "channels_last", "class_names")
#: Backbone arguments the framework sets itself; not allowed in ``model.backbone_kwargs``.
FRAMEWORK_BACKBONE_KWARGS = ("in_channels", "norm", "norm_kwargs")

# registry kind -> (module, attribute)
_REGISTRIES = {
    "norm": ("fewshot.norms", "NORM_LAYERS"),
    "backbone": ("fewshot.backbones", "BACKBONES"),
    "learner": ("fewshot.learners", "LEARNERS"),
}


def _registry(kind: str) -> Any:
    module, attr = _REGISTRIES[kind]
    return getattr(importlib.import_module(module), attr)


def resolve_name(kind: str, name: str, key: str) -> str:
    """Canonical registry name of ``name`` for ``kind`` in ``("norm", "backbone", "learner")``.

    Raises:
        ConfigError: unknown name; the message names the config ``key`` and carries the registry's close
            matches and list of names.
    """
    try:
        return _registry(kind).canonical(name)
    except UnknownNameError as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from None


def _accepted(obj: Callable[..., Any]) -> tuple[set[str], bool] | None:
    """(named keyword parameters, has **kwargs) of a constructor/factory (:func:`fewshot.registry.accepted_options`)."""
    names, takes_any = accepted_options(obj)
    return set(names), takes_any


def _check_kwargs(
    kwargs: Mapping[str, Any], obj: Any, key: str, owner: str, reserved: Iterable[str] = (), skip: Iterable[str] = ()
) -> None:
    reserved = tuple(reserved)
    for k in kwargs:
        if k in reserved:
            raise ConfigError(
                f"config key '{key}.{k}' is set by the framework for {owner} (from the episode sizes and the "
                f"data); remove it from {key}"
            )
    accepted = _accepted(obj)
    if accepted is None or accepted[1]:
        return
    valid = sorted(accepted[0] - set(reserved) - set(skip))
    for k in kwargs:
        if k not in accepted[0]:
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"config key '{key}.{k}': {owner} takes no argument {k!r}; {hint}accepted: {', '.join(valid) or 'none'}"
            )


def _check_norm_kwargs(norm: str, kwargs: Mapping[str, Any]) -> None:
    """Unknown norm options fail at load: norm layers take ``**options``, so build a small one to ask it."""
    if "num_features" in kwargs:
        raise ConfigError(
            "config key 'model.norm_kwargs.num_features' is set by the backbone for each layer; remove it"
        )
    from fewshot.norms import create

    try:
        create(norm, 16, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"config key 'model.norm_kwargs': {exc}") from None
    except ValueError:
        pass  # a value that depends on the channel count is checked when the backbone is built


#: Numeric norm options checked at load (every norm layer takes eps and momentum; SWBN alpha and shrinkage).
_NORM_NUMBERS: dict[str, tuple[Callable[[float], bool], str]] = {
    "eps": (lambda v: v > 0, "a number > 0 (added to variances before dividing)"),
    "momentum": (lambda v: 0 <= v <= 1, "a number in [0, 1], or null (cumulative average)"),
    "alpha": (lambda v: v >= 0, "a whitening rate >= 0"),
    "shrinkage": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
}


def _device_ok(spec: object) -> bool:
    from fewshot.device import DeviceError, check_device_spec

    try:
        check_device_spec(spec)
    except DeviceError:
        return False
    return True


def _numbers(tree: Any, prefix: str) -> Iterable[tuple[str, float]]:
    """Every int/float leaf of a config tree (dataclasses, dicts, lists) as ``(dotted key, value)``."""
    if dataclasses.is_dataclass(tree):
        tree = {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _numbers(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _numbers(v, f"{prefix}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix, tree


def _check_numbers(cfg: ExperimentConfig) -> list[str]:
    """Finiteness of every number in the config, and the ranges of norm options and learner step sizes."""
    problems = [
        f"{key} = {value!r}: expected a finite number" for key, value in _numbers(cfg, "") if not math.isfinite(value)
    ]
    if problems:
        return problems
    for name, (ok, want) in _NORM_NUMBERS.items():
        value = cfg.model.norm_kwargs.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value)):
            problems.append(f"model.norm_kwargs.{name} = {value!r}: expected {want}")
    for name, value in cfg.learner.kwargs.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name.endswith("lr") and numeric and value <= 0:
            problems.append(f"learner.kwargs.{name} = {value!r}: expected a positive learning rate")
    return problems


def _check_ranges(cfg: ExperimentConfig) -> list[str]:
    t, e = cfg.train, cfg.eval
    problems: list[str] = _check_numbers(cfg)
    if problems:  # the comparisons below are meaningless on NaN or infinity
        return problems

    def need(ok: bool, key: str, value: Any, want: str) -> None:
        if not ok:
            problems.append(f"{key} = {value!r}: expected {want}")

    need(0 <= cfg.seed < 2**64, "seed", cfg.seed, "an int in [0, 2**64)")
    need(_device_ok(cfg.device), "device", cfg.device, "auto, cpu, cuda or cuda:N")
    need(cfg.precision in PRECISIONS, "precision", cfg.precision, f"one of {', '.join(PRECISIONS)}")
    for sec, prefix in ((t, "train"), (e, "eval")):
        need(sec.n_way >= 2, f"{prefix}.n_way", sec.n_way, "n_way >= 2 (a 1-way task has nothing to classify)")
        need(sec.n_shot >= 1, f"{prefix}.n_shot", sec.n_shot, "n_shot >= 1")
        need(sec.n_query >= 1, f"{prefix}.n_query", sec.n_query, "n_query >= 1")
        need(sec.episodes >= 1, f"{prefix}.episodes", sec.episodes, "episodes >= 1")
    need(t.meta_batch >= 1, "train.meta_batch", t.meta_batch, "meta_batch >= 1")
    if t.meta_batch >= 1 and t.episodes % t.meta_batch:
        lower, upper = t.episodes // t.meta_batch * t.meta_batch, (t.episodes // t.meta_batch + 1) * t.meta_batch
        want = f"a multiple of train.meta_batch = {t.meta_batch} ({lower or upper} or {upper})"
        need(False, "train.episodes", t.episodes, want)
    need(t.max_minutes is None or t.max_minutes > 0, "train.max_minutes", t.max_minutes, "a positive number or null")
    need(t.lr > 0, "train.lr", t.lr, "a positive learning rate")
    need(
        t.lr_step_episodes is None or t.lr_step_episodes >= 1,
        "train.lr_step_episodes", t.lr_step_episodes, "a positive int or null (constant learning rate)",
    )  # fmt: skip
    need(0 < t.lr_gamma <= 1, "train.lr_gamma", t.lr_gamma, "a factor in (0, 1]")
    need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "weight_decay >= 0")
    policies = [p.value for p in Policy]
    need(t.norm_policy in policies, "train.norm_policy", t.norm_policy, f"one of {', '.join(policies)}")
    need(e.norm_policy in policies, "eval.norm_policy", e.norm_policy, f"one of {', '.join(policies)}")
    need(
        t.val_every >= 1, "train.val_every", t.val_every,
        "val_every >= 1 (set data.val_split=null to turn validation off)",
    )  # fmt: skip
    need(t.val_episodes >= 1, "train.val_episodes", t.val_episodes, "val_episodes >= 1")
    need(t.checkpoint_minutes > 0, "train.checkpoint_minutes", t.checkpoint_minutes, "a positive number of minutes")
    need(t.threads is None or t.threads >= 1, "train.threads", t.threads, "a positive int or null (all cores)")
    need(t.log_every >= 1, "train.log_every", t.log_every, "log_every >= 1")
    need(e.seed >= 0, "eval.seed", e.seed, "a non-negative int")
    return problems


def _resolve_data(cfg: ExperimentConfig) -> Any:
    from episodes.datasets import DATASETS, get_dataset

    d = cfg.data
    try:
        loader = get_dataset(d.dataset)
        dataset = DATASETS.canonical(d.dataset)
    except UnknownNameError as exc:
        raise ConfigError(f"config key 'data.dataset': {exc}") from None
    protocols = tuple(getattr(loader, "protocols", ()))
    protocol = d.protocol if d.protocol is not None else (protocols[0] if protocols else None)
    if protocols and protocol not in protocols:
        close = difflib.get_close_matches(str(protocol), protocols, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"config key 'data.protocol': dataset {dataset!r} has no protocol {protocol!r}; {hint}"
            f"protocols: {', '.join(protocols)}"
        )
    splits_of = getattr(loader, "splits", None)
    if callable(splits_of) and protocol is not None:
        splits = tuple(splits_of(protocol))
        for key, value in (("train_split", d.train_split), ("val_split", d.val_split), ("test_split", d.test_split)):
            if value is not None and value not in splits:
                raise ConfigError(
                    f"config key 'data.{key}': protocol {protocol!r} of dataset {dataset!r} has no split "
                    f"{value!r}; splits: {', '.join(splits)}"
                )
    _check_kwargs(
        d.options, loader.load, "data.options", f"dataset {dataset!r} (its loader)",
        reserved=("protocol", "split", "data_root"),
    )  # fmt: skip
    from episodes.pixels import PixelNorm

    PixelNorm.from_config(d.normalize)  # raises ConfigError naming data.normalize
    from episodes.augment import ImageAugment

    ImageAugment.from_config(d.augment)  # raises ConfigError naming data.augment
    return dataclasses.replace(d, dataset=dataset, protocol=protocol)


def validate_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check values and resolve names; return the config with canonical registry names.

    Raises:
        ConfigError: every out-of-range value at once (key, value, what is expected), or the first unknown
            name / unaccepted keyword argument.
    """
    problems = _check_ranges(cfg)
    if problems:
        head = "invalid config value" if len(problems) == 1 else f"{len(problems)} invalid config values"
        raise ConfigError(f"{head}: " + "; ".join(problems))
    data = _resolve_data(cfg)
    backbone = resolve_name("backbone", cfg.model.backbone, "model.backbone")
    norm = resolve_name("norm", cfg.model.norm, "model.norm")
    learner = resolve_name("learner", cfg.learner.name, "learner.name")
    _check_kwargs(
        cfg.model.backbone_kwargs, _registry("backbone").get(backbone), "model.backbone_kwargs",
        f"backbone {backbone!r}", reserved=FRAMEWORK_BACKBONE_KWARGS,
    )  # fmt: skip
    _check_norm_kwargs(norm, cfg.model.norm_kwargs)
    _check_kwargs(
        cfg.learner.kwargs, _registry("learner").get(learner), "learner.kwargs", f"learner {learner!r}",
        reserved=FRAMEWORK_LEARNER_KWARGS,
    )  # fmt: skip
    return dataclasses.replace(
        cfg,
        data=data,
        model=dataclasses.replace(cfg.model, backbone=backbone, norm=norm),
        learner=dataclasses.replace(cfg.learner, name=learner),
    )
