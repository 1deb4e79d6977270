"""The learner registry ``LEARNERS`` (filled by the ``@LEARNERS.register`` decorators in this package)."""

from __future__ import annotations

from fewshot.registry import Registry

__all__ = ["LEARNERS"]

LEARNERS = Registry("learner")
