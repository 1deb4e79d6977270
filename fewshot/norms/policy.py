"""``Policy``: which statistics reach a normalization layer's ``apply``. The one place that defines the names.

* ``running``: the layer's state (running moments, SWBN's ``W``) in eval mode; in train mode the batch's own
  statistics, and the state is updated from them (PyTorch's BatchNorm semantics);
* ``support``: the statistics of the task's support set, collected by a support forward
  (``with fewshot.norms.collect(model) as stats:``) and passed to the query forward
  (``with fewshot.norms.using(model, stats):``), so each query is normalized independently of the others;
* ``transductive``: the current batch's own statistics, in train and eval mode (the query batch normalizes
  itself; predictions depend on the other queries).

``batch``, the name configs used for ``transductive`` before fewshot 0.3, is mapped where configs are read
(:func:`fewshot.config.loader.with_current_names`), the only place that knows it.
"""

from __future__ import annotations

import enum

__all__ = ["Policy"]


class Policy(str, enum.Enum):
    """Where a normalization layer's statistics come from (module docstring). Compares equal to its name."""

    RUNNING = "running"
    SUPPORT = "support"
    TRANSDUCTIVE = "transductive"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: object, *, where: str = "policy") -> Policy:
        """The policy named ``value`` (a :class:`Policy` or its name); a ValueError naming ``where`` otherwise.

        Example:
            >>> Policy.parse("support") is Policy.SUPPORT
            True
        """
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{where} must be one of {', '.join(repr(p.value) for p in cls)}, got {value!r}") from None
