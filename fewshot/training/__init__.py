"""Episodic meta-training: building the parts a config names, the training loop, checkpoints and run directories.

Modules: :mod:`~fewshot.training.build` (splits, learner, sampler from a config),
:mod:`~fewshot.training.trainer` (the loop), :mod:`~fewshot.training.checkpoint` (atomic save/load, RNG state),
:mod:`~fewshot.training.run_dir` (run directories, env.json, resume config check, ``load_run``),
:mod:`~fewshot.training.episode_sets` (shared fixed validation/test episode files),
:mod:`~fewshot.training.train_log` (``train_log.csv``).
"""

from fewshot.training.build import build_backbone as build_backbone
from fewshot.training.build import build_learner as build_learner
from fewshot.training.build import build_split as build_split
from fewshot.training.build import build_train_sampler as build_train_sampler
from fewshot.training.episode_sets import EpisodeSet as EpisodeSet
from fewshot.training.episode_sets import eval_episode_set as eval_episode_set
from fewshot.training.episode_sets import get_episode_set as get_episode_set
from fewshot.training.episode_sets import runs_root as runs_root
from fewshot.training.episode_sets import val_episode_set as val_episode_set
from fewshot.training.run_dir import LoadedRun as LoadedRun
from fewshot.training.run_dir import default_run_dir as default_run_dir
from fewshot.training.run_dir import load_run as load_run
from fewshot.training.trainer import StepInfo as StepInfo
from fewshot.training.trainer import TrainResult as TrainResult
from fewshot.training.trainer import train as train

__all__ = [
    "EpisodeSet",
    "LoadedRun",
    "StepInfo",
    "TrainResult",
    "build_backbone",
    "build_learner",
    "build_split",
    "build_train_sampler",
    "default_run_dir",
    "eval_episode_set",
    "get_episode_set",
    "load_run",
    "runs_root",
    "train",
    "val_episode_set",
]
