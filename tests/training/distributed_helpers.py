"""Helpers shared by ``test_distributed.py`` and its rank processes (``distributed_child.py``).

Test modules do not import ``conftest`` (several exist); this module loads this folder's ``conftest.py`` by path
for its tiny configs and synthetic splits, and adds the two patches that let two runs be compared to float64
rounding.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location("training_conftest", Path(__file__).with_name("conftest.py"))
_conftest = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_conftest)  # type: ignore[union-attr]

TINY, MAML, SWBN, make_split = _conftest.TINY, _conftest.MAML, _conftest.SWBN, _conftest.make_split


def frozen_zero_gradient_biases(build: Callable[..., Any]) -> Callable[..., Any]:
    """``build`` (e.g. ``build_learner``) whose learners have their convolution biases before a norm frozen.

    A convolution bias right before a batch-statistics norm has zero true gradient (the norm subtracts it); Adam
    divides the rounding noise of its computed gradient by that noise's own RMS and takes full steps of ``lr``,
    so two runs equal to float tolerance differ there by whole steps (and so do the running means that include
    the bias). Freezing them (``requires_grad=False``: no gradient, no Adam step) leaves only parameters with
    real gradients, which tests that compare runs to float tolerance need.
    """

    def build_frozen(*args: Any, **kwargs: Any) -> Any:
        learner = build(*args, **kwargs)
        names = dict(learner.named_parameters())
        for name, p in names.items():
            if name.endswith(".conv.bias") and name.replace(".conv.bias", ".norm.weight") in names:
                p.requires_grad_(False)
        return learner

    return build_frozen


def in_float64(trainer_module: Any) -> list[tuple[Any, str, Any]]:
    """Patches ``(module, name, value)`` that make the trainer of ``trainer_module`` train in float64.

    The learner is built in float64 and every episode is moved to float64 where the trainer moves episodes to the
    device (``_to_device``): comparisons of two runs can then be held to float64 rounding (~1e-12) instead of
    float32's, whose noise small norm batches amplify.
    """
    build, move = trainer_module.build_learner, trainer_module._to_device

    def build64(*args: Any, **kwargs: Any) -> Any:
        return build(*args, **kwargs).double()

    def move64(episode: Any, device: Any) -> Any:
        episode = move(episode, device)
        return dataclasses.replace(episode, support_x=episode.support_x.double(), query_x=episode.query_x.double())

    return [(trainer_module, "build_learner", build64), (trainer_module, "_to_device", move64)]
