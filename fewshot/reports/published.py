"""Published accuracies that fewshot's results are read against (Conv-4 backbones with BatchNorm).

Every entry names its source. The Omniglot numbers use the augmented Vinyals protocol (rotations as extra
classes for ProtoNet, as per-class augmentation for MAML), 28×28, N classes drawn from the whole test pool;
they are not comparable with Lake's within-alphabet task. See ``../shared/docs/protocols.md`` §13.

* Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017, arXiv 1703.05175,
  Tables 1 and 2 (Omniglot 1000 test episodes; miniImageNet 600).
* Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017,
  arXiv 1703.03400, Table 1 (600 test tasks, 95% CI).
"""

from __future__ import annotations

import pandas as pd

__all__ = ["PUBLISHED", "add_published"]

_PROTONET = "Snell et al. 2017, Tables 1-2"
_MAML = "Finn et al. 2017, Table 1"

#: (learner, dataset, protocol, way, shot) -> (published accuracy in percent, source)
PUBLISHED: dict[tuple[str, str, str, int, int], tuple[float, str]] = {
    ("protonet", "omniglot", "vinyals", 5, 1): (98.8, _PROTONET),
    ("protonet", "omniglot", "vinyals", 5, 5): (99.7, _PROTONET),
    ("protonet", "omniglot", "vinyals", 20, 1): (96.0, _PROTONET),
    ("protonet", "omniglot", "vinyals", 20, 5): (98.9, _PROTONET),
    ("protonet", "miniimagenet", "ravi", 5, 1): (49.42, _PROTONET),
    ("protonet", "miniimagenet", "ravi", 5, 5): (68.20, _PROTONET),
    ("maml", "omniglot", "vinyals", 5, 1): (98.7, _MAML),
    ("maml", "omniglot", "vinyals", 5, 5): (99.9, _MAML),
    ("maml", "omniglot", "vinyals", 20, 1): (95.8, _MAML),
    ("maml", "omniglot", "vinyals", 20, 5): (98.9, _MAML),
    ("maml", "miniimagenet", "ravi", 5, 1): (48.70, _MAML),
    ("maml", "miniimagenet", "ravi", 5, 5): (63.11, _MAML),
}


def add_published(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of a :func:`~fewshot.reports.table.runs_table` frame with ``published_bn`` and ``published_source``.

    ``published_bn`` is the paper's Conv-4 + BatchNorm accuracy for the row's learner, dataset, protocol, way
    and shot (the reference every normalization layer is read against), empty where no paper reports one.
    """
    out = frame.copy()
    keys = zip(out["learner"], out["dataset"], out["protocol"], out["way"], out["shot"], strict=True)
    found = [PUBLISHED.get((ln, ds, pr, _int(w), _int(s))) for ln, ds, pr, w, s in keys]
    out["published_bn"] = pd.array([None if f is None else f[0] for f in found], dtype="Float64")
    out["published_source"] = [None if f is None else f[1] for f in found]
    return out


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
