"""fewshot: a PyTorch framework for few-shot learning research on normalization layers.

Subpackages:
    fewshot.norms      normalization layers (BN family, TaskNorm, whitening layers incl. SWBN) and their registry
    fewshot.backbones  backbone registry (Conv-4, ResNet-12) taking any registered norm by name
    fewshot.learners   ProtoNet and MAML (torch.func)
    fewshot.training   episodic meta-training loop, checkpoints, resume
    fewshot.evaluation fixed-episode evaluation, confidence intervals, paired comparison, leak check
    fewshot.reports    accuracy tables and plots
    fewshot.cli        the subcommands of ``run_episode.py``

The episode data layer lives in the sibling package ``episodes``.
"""

__version__ = "0.2.0"
