"""fewshot: a PyTorch framework for few-shot learning research on normalization layers.

Subpackages:
    fewshot.norms      normalization layers (BN family, TaskNorm, whitening layers incl. SWBN) and their registry
    fewshot.backbones  backbone registry (Conv-4, ResNet-12) taking any registered norm by name
    fewshot.learners   ProtoNet and MAML (torch.func)
    fewshot.training   episodic meta-training loop, checkpoints, resume
    fewshot.evaluation fixed-episode evaluation, confidence intervals, paired comparison, leak check
    fewshot.reports    accuracy tables and plots
    fewshot.inference  use a trained run: predict, embed, export (``fewshot.load_run``, ``predict``, ``embed``)
    fewshot.cli        the subcommands of ``run_episode.py``

The episode data layer lives in the sibling package ``episodes``.
"""

__version__ = "0.2.0"

#: The public inference API, importable from the top level (``fewshot.load_run(...)``); loaded on first use so
#: that ``import fewshot`` (and the CLI's ``--help``) does not import torch.
_API = ("load_run", "predict", "embed", "export_backbone")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        from fewshot import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'fewshot' has no attribute {name!r}")
