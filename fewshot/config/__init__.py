"""Experiment configuration: YAML files + dataclass schema + ``--set`` overrides (no Hydra, no OmegaConf).

Merge order: ``configs/defaults.yaml`` → experiment file → ``--set dotted.key=value`` overrides; the result
is validated against :mod:`fewshot.config.schema` and its registry names resolved.
"""

from fewshot.config.loader import SHORTHANDS as SHORTHANDS
from fewshot.config.loader import apply_overrides as apply_overrides
from fewshot.config.loader import config_from_dict as config_from_dict
from fewshot.config.loader import config_to_dict as config_to_dict
from fewshot.config.loader import configs_dir as configs_dir
from fewshot.config.loader import diff_configs as diff_configs
from fewshot.config.loader import load_config as load_config
from fewshot.config.loader import parse_override as parse_override
from fewshot.config.loader import read_config as read_config
from fewshot.config.loader import save_config as save_config
from fewshot.config.schema import DataConfig as DataConfig
from fewshot.config.schema import EvalConfig as EvalConfig
from fewshot.config.schema import ExperimentConfig as ExperimentConfig
from fewshot.config.schema import LearnerConfig as LearnerConfig
from fewshot.config.schema import ModelConfig as ModelConfig
from fewshot.config.schema import TrainConfig as TrainConfig
from fewshot.config.validate import validate_config as validate_config

__all__ = [
    "SHORTHANDS",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LearnerConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "configs_dir",
    "diff_configs",
    "load_config",
    "parse_override",
    "read_config",
    "save_config",
    "validate_config",
]
