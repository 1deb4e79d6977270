"""The backbone registry ``BACKBONES`` (filled by the ``@BACKBONES.register`` decorators in this package)."""

from __future__ import annotations

from fewshot.registry import Registry

__all__ = ["BACKBONES"]

BACKBONES = Registry("backbone")
