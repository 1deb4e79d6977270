"""The dataclass schema of an experiment configuration (one frozen dataclass per YAML section).

The YAML keys are exactly the field names. The schema holds the *types* and the documentation of every key;
the default *values* live in one place only, ``configs/defaults.yaml``, and :func:`fewshot.config.load_config`
fails with the list of missing keys if a value is absent. Components (dataset, backbone, norm, learner) are
named by registry name plus keyword arguments, never by import path.

Example:
    >>> from fewshot.config import configs_dir, load_config
    >>> cfg = load_config(configs_dir() / "protonet/omniglot_vinyals_1shot.yaml", ["norm=swbn"])
    >>> cfg.train.n_way, cfg.model.norm
    (60, 'swbn')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "DataConfig",
    "ModelConfig",
    "LearnerConfig",
    "TrainConfig",
    "EvalConfig",
    "ExperimentConfig",
]


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, protocol and splits an experiment uses.

    Attributes:
        dataset: registry name of the dataset (``omniglot``, ``miniimagenet``, ``imagefolder``).
        protocol: protocol of the dataset (``vinyals``, ``lake``, ``ravi``, ...); ``null`` takes the
            dataset's default, resolved at load time.
        data_root: folder holding one sub-folder per dataset; ``null`` resolves it (``$FEWSHOT_DATA``,
            ``./data``, ``../shared/data``).
        train_split: split the episodes of meta-training are drawn from (e.g. ``train`` or ``trainval``).
        val_split: split of the fixed validation episodes used to pick the best checkpoint; ``null`` turns
            validation off (then the final model is also the "best" one). Must not share classes with
            ``train_split`` for model selection to mean anything.
        test_split: split of the fixed evaluation episodes.
        options: dataset-specific preprocessing options passed to the loader (e.g. ``image_size``).
        normalize: per-channel standardization of the model input, ``{mean: [...], std: [...]}`` on the [0, 1]
            scale (one value per channel), or ``null`` for ``x / 255`` (see :mod:`episodes.pixels`).
        augment: random augmentation of the *training* episodes' images, ``{flip: bool, crop_padding: int,
            padding_mode: zeros|reflect}`` (missing keys: off, 0, zeros), or ``null`` for none; deterministic in
            ``(seed, episode)``, never applied to validation or test episodes (see :mod:`episodes.augment`).
    """

    dataset: str
    protocol: str | None
    data_root: str | None
    train_split: str
    val_split: str | None
    test_split: str
    options: dict[str, Any]
    normalize: dict[str, Any] | None
    augment: dict[str, Any] | None


@dataclass(frozen=True)
class ModelConfig:
    """The backbone and the normalization layer inside it.

    Attributes:
        backbone: registry name of the backbone (``conv4``, ``conv4_maml``, ``resnet12``).
        backbone_kwargs: keyword arguments of the backbone (e.g. ``hidden: 32``).
        norm: registry name of the normalization layer (``batchnorm``, ``swbn``, ...).
        norm_kwargs: keyword arguments of every norm layer of the backbone (e.g. ``momentum: 0.1``).
        init_from: start training from the backbone weights of another run (a run folder, whose
            ``checkpoints/best.pt`` is used, or a checkpoint file); ``null``: random initialization. Used for
            episodic fine-tuning after supervised pre-training (``learner.name: classifier``).
    """

    backbone: str
    backbone_kwargs: dict[str, Any]
    norm: str
    norm_kwargs: dict[str, Any]
    init_from: str | None


@dataclass(frozen=True)
class LearnerConfig:
    """The meta-learner.

    Attributes:
        name: registry name of the learner (``protonet``, ``maml``).
        kwargs: keyword arguments of the learner (e.g. ``inner_lr: 0.4``, ``inner_steps: 1``).
    """

    name: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class TrainConfig:
    """Episodic meta-training.

    Attributes:
        n_way: classes per training episode.
        n_shot: support images per class.
        n_query: query images per class.
        meta_batch: episodes per optimizer step; step ``b`` uses episodes ``b*meta_batch ... (b+1)*meta_batch-1``.
        episodes: total training episodes (not optimizer steps); the run is finished when they are done.
        max_minutes: training-time budget in minutes (validation and checkpointing included); when spent the
            run stops cleanly with status ``stopped_budget``. ``null``: no budget.
        lr: Adam learning rate.
        lr_step_episodes: multiply the learning rate by ``lr_gamma`` every this many episodes; ``null``: constant.
        lr_gamma: the factor of each learning-rate step.
        weight_decay: Adam weight decay.
        norm_policy: norm statistics policy during meta-training: a :class:`fewshot.norms.Policy` name (``running``,
            ``support``, ``transductive``; the older name ``batch`` is read as ``transductive``).
        whitening_rate_follows_lr: tell every norm layer ``lr / train.lr`` whenever the schedule changes the
            learning rate (``NormLayer.on_lr_scale``; SWBN scales its whitening rate α by it, keeping α / lr
            constant, as the SWBN authors reportedly do).
        channels_last: put the model and its inputs in channels-last memory format (faster ProtoNet steps on
            CPU, no gain for second-order MAML: ``docs/performance.md``).
        compile: run the backbone through ``torch.compile`` while training (ProtoNet and the classifier only;
            off by default: measured, it does not pay back its compile time within a 5-minute run here, see
            :mod:`fewshot.training.compile`).
        within_alphabet: draw all classes of an episode from one alphabet (Omniglot).
        rotation_augment: give each class of an episode a random quarter turn (MAML's Omniglot augmentation);
            ``null`` follows the split (Omniglot ``data.options.rotation: augment`` turns it on).
        val_every: validate every this many episodes (and at the end).
        val_episodes: number of fixed validation episodes (eval way/shot/query, seed ``eval.seed``).
        checkpoint_minutes: write ``checkpoints/last.pt`` at least this often (minutes of wall time).
        threads: torch intra-op threads; ``null``: ``os.cpu_count()``.
        log_every: write a ``train_log.csv`` row every this many episodes.
    """

    n_way: int
    n_shot: int
    n_query: int
    meta_batch: int
    episodes: int
    max_minutes: float | None
    lr: float
    lr_step_episodes: int | None
    lr_gamma: float
    weight_decay: float
    norm_policy: str
    whitening_rate_follows_lr: bool
    channels_last: bool
    within_alphabet: bool
    rotation_augment: bool | None
    val_every: int
    val_episodes: int
    checkpoint_minutes: float
    threads: int | None
    log_every: int
    compile: bool = False  # added after runs were saved: a run's config.yaml without it means False


@dataclass(frozen=True)
class EvalConfig:
    """Meta-testing on fixed episodes (also the way/shot/query of validation).

    Attributes:
        n_way: classes per evaluation episode.
        n_shot: support images per class.
        n_query: query images per class.
        episodes: number of fixed evaluation episodes.
        seed: seed of the fixed episode files (validation and test).
        norm_policy: norm statistics policy at meta-test: a :class:`fewshot.norms.Policy` name.
        within_alphabet: draw all classes of an episode from one alphabet (Omniglot).
    """

    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    seed: int
    norm_policy: str
    within_alphabet: bool


@dataclass(frozen=True)
class ExperimentConfig:
    """A complete, validated experiment: what ``config.yaml`` of a run directory holds.

    Attributes:
        name: experiment name (letters, digits, ``_ . -``); the default run directory is
            ``runs/<name>/<UTC time>-<git short sha>``. ``null`` in a file: derived from the file's path
            under ``configs/`` (``configs/protonet/omniglot_vinyals_1shot.yaml`` gives
            ``protonet_omniglot_vinyals_1shot``).
        seed: seed of the training episodes (episode ``i`` is a pure function of ``(seed, i)``) and of the
            model initialization.
        device: where the model runs: ``auto`` (the first CUDA device if torch sees one, else the CPU), ``cpu``,
            ``cuda`` or ``cuda:N`` (:mod:`fewshot.device`); ``--device`` on the command line overrides it. A run
            may resume on another device.
        precision: ``fp32`` (default: float32, TF32 off, CUDA matches the CPU), ``tf32`` (CUDA matrix products
            and convolutions in TF32) or ``bf16`` (bfloat16 autocast for convolutions and matrix products; norm
            statistics and whitening stay float32); see :mod:`fewshot.numerics`.
        data: see :class:`DataConfig`.
        model: see :class:`ModelConfig`.
        learner: see :class:`LearnerConfig`.
        train: see :class:`TrainConfig`.
        eval: see :class:`EvalConfig`.
    """

    name: str
    seed: int
    device: str
    precision: str
    data: DataConfig
    model: ModelConfig
    learner: LearnerConfig
    train: TrainConfig
    eval: EvalConfig
