"""``train.compile``: run the backbone through ``torch.compile`` during training (off by default).

Measured with ``python run_episode.py bench train --sections compile`` (``results/bench_compile.csv``): on the
2-core CPU machines the compiled Conv-4 step is not faster than the eager one with the fused normalization
kernels and channels_last, and compiling costs tens of seconds per configuration, so it does not pay back within
a 5-minute run and stays off. It is kept as an option for other machines and backbones; the benchmark says
whether it pays back there.

Only learners whose training step is plain autograd are compiled (ProtoNet, the classifier). MAML's inner loop
runs under ``torch.func.grad`` with ``functional_call``, which the compiler does not trace as one graph; a
config that asks for it is refused at build time rather than silently running eager.
"""

from __future__ import annotations

from torch import nn

from fewshot.errors import ConfigError

__all__ = ["COMPILABLE_LEARNERS", "compile_backbone"]

COMPILABLE_LEARNERS = ("protonet", "classifier")


def compile_backbone(learner: nn.Module, learner_name: str) -> nn.Module:
    """Compile ``learner.backbone`` in place (``nn.Module.compile``: parameter and buffer names are unchanged, so
    checkpoints and ``state_dict`` stay the same); returns ``learner``.

    Raises:
        ConfigError: the learner is not one of :data:`COMPILABLE_LEARNERS`.
    """
    if learner_name not in COMPILABLE_LEARNERS:
        raise ConfigError(
            f"train.compile is supported for learners {', '.join(COMPILABLE_LEARNERS)}, got {learner_name!r} (its "
            "torch.func inner loop is not compiled); set train.compile=false"
        )
    learner.backbone.compile()
    return learner
