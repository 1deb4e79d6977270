"""A small name → object registry used for norms, backbones, learners and datasets.

Names are matched case-insensitively, ignoring ``_`` and ``-`` (``Batch_Norm`` finds ``batchnorm``), in the
manner of timm's norm factory. Registering the same name twice raises: inside one package a collision is a
bug. An unknown name raises :class:`~fewshot.errors.UnknownNameError` listing close matches and every name.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fewshot.errors import UnknownNameError

__all__ = ["Registry", "accepted_options", "check_options", "option_label"]


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


class Registry:
    """Maps registered names (and explicit aliases) to objects.

    Args:
        kind: what the registry holds, used in messages ("normalization layer", "backbone", ...).

    Example:
        >>> LAYERS = Registry("layer")
        >>> @LAYERS.register("identity")
        ... class Identity: ...
        >>> LAYERS.get("Identity") is Identity
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}  # canonical name -> object
        self._lookup: dict[str, str] = {}  # normalized key (names and aliases) -> canonical name

    def register(self, name: str, *aliases: str) -> Callable[[Any], Any]:
        """Decorator registering ``obj`` under ``name`` and any ``aliases``; returns ``obj`` unchanged."""

        def decorator(obj: Any) -> Any:
            self.add(name, obj, *aliases)
            return obj

        return decorator

    def add(self, name: str, obj: Any, *aliases: str) -> None:
        """Register ``obj`` under ``name`` (and ``aliases``). Raises ValueError if a name is taken."""
        for n in (name, *aliases):
            k = _key(n)
            if k in self._lookup:
                raise ValueError(
                    f"{self.kind} name {n!r} is already registered (as {self._lookup[k]!r}); "
                    "choose another name or remove the duplicate registration"
                )
        self._entries[name] = obj
        for n in (name, *aliases):
            self._lookup[_key(n)] = name

    def canonical(self, name: str) -> str:
        """The canonical registered name for ``name`` or an alias of it."""
        if not isinstance(name, str):
            raise TypeError(f"expected a {self.kind} name as a string, got {type(name).__name__} {name!r}")
        k = _key(name)
        if k not in self._lookup:
            names = self.names()
            close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}; {hint}registered: {', '.join(names)}")
        return self._lookup[k]

    def get(self, name: str) -> Any:
        """The object registered under ``name`` (or an alias)."""
        return self._entries[self.canonical(name)]

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted canonical names, optionally filtered by an fnmatch ``pattern``."""
        names = sorted(self._entries)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._lookup

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


def option_label(name: str, options: Mapping[str, Any] | None = None) -> str:
    """A display name for a registered component with its options: ``"swbn"``, ``"swbn[alpha=3e-05,shrinkage=0.1]"``.

    Options are sorted by name, so one configuration always gets one label (tables, plots, benchmarks).
    """
    opts = ",".join(f"{k}={v}" for k, v in sorted((options or {}).items()))
    return f"{name}[{opts}]" if opts else name


def accepted_options(obj: Callable[..., Any], *, exclude: tuple[str, ...] = ()) -> tuple[tuple[str, ...], bool]:
    """The keyword options a constructor or function takes: ``(names in signature order, takes **kwargs)``.

    The one place fewshot reads signatures to check options (norm layers' ``_init_layer``, backbones, learners,
    dataset loaders, config sections). Positional-only and ``*args`` parameters are not options.

    Args:
        obj: a class (its ``__init__``) or a function.
        exclude: names the caller supplies itself (e.g. ``"backbone"``), left out of the list.

    Example:
        >>> def load(path, *, size=28, **extra): ...
        >>> accepted_options(load, exclude=("path",))
        (('size',), True)
    """
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: accept anything, as the callee will check
        return (), True
    names = tuple(
        p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in exclude
    )
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_options(
    given: Mapping[str, Any] | Iterator[str] | tuple[str, ...] | list[str],
    accepted: tuple[str, ...] | list[str],
    *,
    owner: str,
    error: type[Exception] = TypeError,
) -> None:
    """Raise ``error`` naming the options of ``given`` that ``accepted`` lacks, a close match and every option.

    Example:
        >>> check_options({"hiden": 32}, ("hidden",), owner="backbone 'conv4'")
        Traceback (most recent call last):
        ...
        TypeError: backbone 'conv4' got unknown option(s) 'hiden' (did you mean 'hidden'?); accepted options: hidden
    """
    unknown = [k for k in given if k not in accepted]
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], list(accepted), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise error(
        f"{owner} got unknown option(s) {', '.join(repr(u) for u in sorted(unknown))}{hint}; accepted options: "
        f"{', '.join(accepted) or '(none)'}"
    )
