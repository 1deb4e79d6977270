"""Load an experiment configuration: ``configs/defaults.yaml`` → experiment file → ``--set`` overrides.

Merging is by key, section by section; the free-form mappings (``data.options``, ``model.backbone_kwargs``,
``model.norm_kwargs``, ``learner.kwargs``) merge recursively too. Every other key must exist in the schema
(:mod:`fewshot.config.schema`): an unknown key fails with the key, a close match and the valid keys; a value of
the wrong type fails with the key, the value and the expected type. The merged tree is then built into frozen
dataclasses and checked semantically (:func:`fewshot.config.validate.validate_config`), which also resolves
registry names, so that ``norm=swbm`` fails at load with the registry's "did you mean 'swbn'?".

Override grammar (``--set`` on the command line): ``dotted.key=value`` with the value parsed as YAML
(``train.lr=5e-4``, ``model.norm_kwargs={groups: 8}``, ``data.val_split=null``), plus the shorthands
``norm=X`` (``model.norm``), ``backbone=X`` (``model.backbone``) and ``learner=X`` (``learner.name``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from episodes.cache import atomic_write_bytes
from fewshot.config.schema import ExperimentConfig
from fewshot.errors import ConfigError

__all__ = [
    "SHORTHANDS",
    "configs_dir",
    "load_config",
    "read_config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "parse_override",
    "diff_configs",
    "with_current_names",
]

#: ``--set`` shorthands: short key -> dotted key.
SHORTHANDS = {"norm": "model.norm", "backbone": "model.backbone", "learner": "learner.name"}
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def configs_dir() -> Path:
    """The ``configs/`` folder of the checkout (beside the ``fewshot`` package)."""
    return Path(__file__).resolve().parent.parent.parent / "configs"


# ------------------------------------------------------------------------------------------------- reading
def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = f"experiment configs live in {configs_dir()}" if what == "config file" else "is it a run directory?"
        raise ConfigError(f"{what} {str(path)!r} does not exist; check the path ({hint})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save it as UTF-8 (YAML configs are text files)"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {str(path)!r} must hold a mapping of keys (name:, train:, ...) at the top level, "
            f"got a {type(data).__name__}"
        )
    return data


def parse_override(text: str) -> dict[str, Any]:
    """Turn one ``dotted.key=value`` override into a nested mapping (value parsed as YAML).

    Example:
        >>> parse_override("train.lr=0.01")
        {'train': {'lr': 0.01}}
        >>> parse_override("norm=swbn")
        {'model': {'norm': 'swbn'}}
    """
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form KEY=VALUE; write e.g. --set train.lr=0.0005")
    key, _, raw = text.partition("=")
    key = SHORTHANDS.get(key.strip(), key.strip())
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty key part; write dotted keys like train.n_way=20")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value {raw!r} is not valid YAML ({exc}); quote it") from None
    for part in reversed(parts):
        value = {part: value}
    return value


# ------------------------------------------------------------------------------------------------- merging
def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(path: str, key: str, valid: Sequence[str], source: str) -> ConfigError:
    full = f"{path}.{key}" if path else str(key)
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f"did you mean {(f'{path}.' if path else '') + close[0]!r}? " if close else ""
    where = f" under {path!r}" if path else " at the top level"
    return ConfigError(f"unknown config key {full!r} in {source}; {hint}valid keys{where}: {', '.join(valid)}")


def _merge_free(base: Any, update: Any) -> Any:
    """Recursive merge of free-form mappings: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for k, v in update.items():
            out[k] = _merge_free(out.get(k), v)
        return out
    return update


def _merge(base: dict[str, Any], update: Mapping[str, Any], cls: type, path: str, source: str) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base`` following the schema ``cls``; unknown keys raise."""
    hints = _hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    out = dict(base)
    for key, value in update.items():
        if key not in hints:
            raise _unknown_key(path, key, valid, source)
        full = f"{path}.{key}" if path else key
        tp = hints[key]
        if _is_dataclass_type(tp):
            if not isinstance(value, Mapping):
                keys = ", ".join(f.name for f in dataclasses.fields(tp))
                raise ConfigError(
                    f"config key {full!r} in {source} must be a mapping of {keys}, got {type(value).__name__} {value!r}"
                )
            out[key] = _merge(out.get(key) or {}, value, tp, full, source)
        elif typing.get_origin(tp) is dict and isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge_free(out[key], dict(value))
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------------ building
def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(tp) is dict:
        return "a mapping"
    names = {int: "an int", float: "a number", str: "a string", bool: "true/false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against annotation ``tp``; ints are accepted as floats, "1e-3" text as a float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):  # PyYAML reads "1e-3" as text
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - the schema only uses the types above
        raise TypeError(f"unsupported annotation {tp!r} for config key {key!r}")
    raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Mapping[str, Any], path: str, missing: list[str]) -> Any:
    """The dataclass ``cls`` from ``data``; absent keys are appended to ``missing`` (None is returned then)."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        full = f"{path}.{f.name}" if path else f.name
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            kwargs[f.name] = _build(tp, data.get(f.name) or {}, full, missing)
        elif f.name in data:
            kwargs[f.name] = _coerce(data[f.name], tp, full)
        elif f.default is not dataclasses.MISSING:  # a key added later; older run configs lack it
            kwargs[f.name] = f.default
        else:
            missing.append(full)
    return None if missing else cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a complete mapping (e.g. a run's ``config.yaml``).

    Raises:
        ConfigError: an unknown or missing key, a value of the wrong type, or a failed semantic check.
    """
    from fewshot.config.validate import validate_config

    tree = _merge({}, with_current_names(data), ExperimentConfig, "", "the config")
    missing: list[str] = []
    cfg = _build(ExperimentConfig, tree, "", missing)
    if missing:
        raise ConfigError(
            f"missing required config keys: {', '.join(missing)}; add them to configs/defaults.yaml or the "
            "experiment file"
        )
    return validate_config(cfg)


def _default_name(path: Path | None) -> str:
    if path is None:
        return "default"
    path = path.resolve()
    try:
        rel = path.relative_to(configs_dir())
        stem = "_".join(rel.with_suffix("").parts)
    except ValueError:
        stem = path.stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load ``configs/defaults.yaml``, merge the experiment file ``path`` and the ``overrides``, validate.

    Args:
        path: experiment YAML file holding only the differences from the defaults; ``None``: defaults only.
        overrides: ``dotted.key=value`` strings (values parsed as YAML), applied in order.

    Returns:
        The validated config, registry names in canonical form and ``name`` filled in.

    Raises:
        ConfigError: unreadable file, unknown key (named, with a close match and the valid keys), value of the
            wrong type (key, value, expected type), missing key, or failed semantic check.
    """
    defaults_path = configs_dir() / "defaults.yaml"
    tree = _merge({}, _read_yaml(defaults_path, "defaults file"), ExperimentConfig, "", str(defaults_path))
    file_path = Path(path) if path is not None else None
    if file_path is not None:
        tree = _merge(tree, _read_yaml(file_path, "config file"), ExperimentConfig, "", str(file_path))
    tree = apply_overrides(tree, overrides)
    if tree.get("name") is None:
        tree["name"] = _default_name(file_path)
    elif isinstance(tree["name"], str) and not _NAME.match(tree["name"]):
        raise ConfigError(
            f"config key 'name' must be letters, digits, '_', '.' or '-' (it names a folder), got {tree['name']!r}"
        )
    return config_from_dict(tree)


def apply_overrides(tree: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Merge ``dotted.key=value`` overrides into a config tree (unknown keys raise); returns a new tree."""
    out = dict(tree)
    for text in overrides:
        out = _merge(out, parse_override(text), ExperimentConfig, "", f"override {text!r}")
    return out


#: Keys added after runs were already recorded, with the value that means what such a run did (the behaviour
#: before the key existed). A run's config without them is read as having these values; any other missing key
#: is an error.
ADDED_KEYS: dict[tuple[str, str], Any] = {
    ("data", "normalize"): None,  # 0.3.0: per-channel input standardization (before: x / 255)
    ("data", "augment"): None,  # 0.3.0: flip / padded-crop augmentation of training images (before: none)
    ("model", "init_from"): None,  # 0.3.0: start from another run's backbone (before: random initialization)
    ("", "device"): "cpu",  # 0.3.0: device selection (before: CPU only)
    ("", "precision"): "fp32",  # 0.3.0: selectable numerics (before: float32)
}


def with_added_keys(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded config tree with every :data:`ADDED_KEYS` key it lacks set to its "before" value."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
    for (section, key), value in ADDED_KEYS.items():
        if section == "":  # a top-level key
            out.setdefault(key, value)
        elif isinstance(out.get(section), dict):
            out[section].setdefault(key, value)
    return out


#: Values renamed after configs and runs were recorded: ``{(section, key): {old value: current value}}``
#: (``model.norm_kwargs`` is searched for ``policy``). fewshot before 0.3 called the ``transductive``
#: normalization policy ``batch`` in ``train.norm_policy`` and in the layers' ``policy`` option.
RENAMED_VALUES: dict[tuple[str, str], dict[str, str]] = {
    ("train", "norm_policy"): {"batch": "transductive"},
    ("eval", "norm_policy"): {"batch": "transductive"},
    ("model", "norm_kwargs.policy"): {"batch": "transductive"},
}


def with_current_names(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A config tree with every renamed value (:data:`RENAMED_VALUES`) under its current name.

    The one place old names are read: configs from YAML (experiment files, ``--set`` overrides, a run's
    ``config.yaml``) pass through it in :func:`config_from_dict`, the configs stored in checkpoints before
    they are compared with ``config.yaml``. Past this boundary only the current names exist.

    Example:
        >>> with_current_names({"train": {"norm_policy": "batch"}})
        {'train': {'norm_policy': 'transductive'}}
    """
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
    for (section, dotted), renames in RENAMED_VALUES.items():
        node = out.get(section)
        *parents, key = dotted.split(".")
        for parent in parents:
            if not isinstance(node, dict) or not isinstance(node.get(parent), Mapping):
                node = None
                break
            node[parent] = dict(node[parent])  # a copy: the caller's tree is left as it was
            node = node[parent]
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key] in renames:
            node[key] = renames[node[key]]
    return out


def read_config(path: str | Path) -> ExperimentConfig:
    """Read a complete, resolved config (a run's ``config.yaml``) without merging the defaults.

    Keys added to the schema after the run was recorded take the value meaning the earlier behaviour
    (:data:`ADDED_KEYS`).

    Raises:
        ConfigError: unreadable file, or a key missing / unknown / of the wrong type (e.g. a config written by
            another version of fewshot).
    """
    path = Path(path)
    return config_from_dict(with_added_keys(_read_yaml(path, "run config")))


# ----------------------------------------------------------------------------------------------- writing
def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as plain nested dicts/lists/scalars, keys in schema order (YAML/JSON-serializable)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write ``cfg`` as YAML atomically (temp file + ``os.replace``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two config trees, as ``(key, old, new)``, in key order."""
    out: list[tuple[str, Any, Any]] = []
    for key in list(old) + [k for k in new if k not in old]:
        full = f"{prefix}.{key}" if prefix else key
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(diff_configs(a, b, full))
        elif a != b:
            out.append((full, a, b))
    return out
