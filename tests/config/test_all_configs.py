"""Every YAML file under configs/ loads and builds everything it names (LHT-style config test).

Omniglot configs build their splits from the real data (``../shared/data/omniglot``; skipped if absent);
miniImageNet is not available offline, so its configs build the learner for 84x84 colour images without data.
Experiment files must start with the exact command that runs them and hold only differences from the defaults.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from episodes.data_root import shared_data_root
from fewshot.config import config_to_dict, configs_dir, load_config
from fewshot.norms import NORM_LAYERS
from fewshot.study.grid import is_grid_file
from fewshot.training import build_learner, build_split, build_train_sampler

# Study grids (configs/study/<grid>.yaml, a top-level cells: list) are tested in tests/study/test_grid.py.
CONFIGS = sorted(p.relative_to(configs_dir()).as_posix() for p in configs_dir().rglob("*.yaml") if not is_grid_file(p))
EXPERIMENTS = [c for c in CONFIGS if c != "defaults.yaml"]
SHARED = shared_data_root()
HAVE_OMNIGLOT = SHARED is not None and (Path(SHARED) / "omniglot").is_dir()


def _load(name: str):
    return load_config(None if name == "defaults.yaml" else configs_dir() / name)


def test_the_config_tree_is_the_documented_one():
    assert "defaults.yaml" in CONFIGS
    assert {c.split("/")[0] for c in EXPERIMENTS} == {"protonet", "maml", "classifier", "study"}
    assert len(EXPERIMENTS) >= 11


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_file_starts_with_its_command_and_holds_only_differences(name):
    text = (configs_dir() / name).read_text()
    first = text.splitlines()[0]
    command = "study" if name.startswith("study/") else f"train --config configs/{name}"
    assert re.match(rf"# python run_episode\.py {re.escape(command)}(\s|$)", first), first
    defaults = yaml.safe_load((configs_dir() / "defaults.yaml").read_text())
    delta = yaml.safe_load(text) or {}

    def same_as_default(tree, base, prefix=""):
        for key, value in tree.items():
            full = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in ("options", "kwargs"):
                yield from same_as_default(value, base[key], f"{full}.")
            elif key in base and base[key] == value:
                yield full

    assert list(same_as_default(delta, defaults)) == [], "experiment files hold only differences from the defaults"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_everything_it_names(name):
    cfg = _load(name)
    if cfg.data.dataset == "omniglot":
        if not HAVE_OMNIGLOT:
            pytest.skip("the real Omniglot (../shared/data/omniglot) is not on this machine")
        splits = {s: build_split(cfg, s) for s in {cfg.data.train_split, cfg.data.val_split, cfg.data.test_split} if s}
        train_split = splits[cfg.data.train_split]
        build_train_sampler(cfg, train_split)  # checks way/shot/query against every class
        for split in splits.values():
            assert split.n_classes >= cfg.eval.n_way
        shape = train_split.image_shape
        assert shape == (1, 28, 28)
    else:
        assert cfg.data.dataset == "miniimagenet" and cfg.data.options["image_size"] == 84
        shape = (3, 84, 84)  # not available offline: build the model for its images without data
    with torch.random.fork_rng(devices=[]):
        learner = build_learner(cfg, cfg.train.n_way, shape)
    backbone = learner.backbone
    norm_class = NORM_LAYERS.get(cfg.model.norm)
    assert sum(isinstance(m, norm_class) for m in backbone.modules()) == 4  # one per Conv-4 block
    with torch.no_grad():
        features = backbone.eval()(
            torch.zeros(2, *shape).contiguous(
                memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format
            )
        )
    assert features.shape == (2, backbone.out_features(shape[-1]))
    assert yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))) == config_to_dict(cfg)  # plain YAML data


def test_paper_settings_of_the_reference_configs():
    """The numbers the configs promise in their comments (protocols.md §(c))."""
    proto = _load("protonet/omniglot_vinyals_1shot.yaml")
    assert (proto.train.n_way, proto.train.n_shot, proto.train.n_query) == (60, 1, 5)
    assert (proto.train.lr, proto.train.lr_step_episodes, proto.train.lr_gamma) == (1e-3, 2000, 0.5)
    assert proto.data.train_split == "trainval" and proto.train.max_minutes <= 45
    assert _load("protonet/omniglot_vinyals_5shot.yaml").train.n_shot == 5
    mini1 = _load("protonet/miniimagenet_1shot.yaml").train
    mini5 = _load("protonet/miniimagenet_5shot.yaml").train
    assert (mini1.n_way, mini1.n_shot, mini1.n_query) == (30, 1, 15)
    assert (mini5.n_way, mini5.n_shot, mini5.n_query) == (20, 5, 15)
    maml5 = _load("maml/omniglot_vinyals_5w1s.yaml")
    maml20 = _load("maml/omniglot_vinyals_20w1s.yaml")
    mamlmini = _load("maml/miniimagenet_5w1s.yaml")
    assert maml5.learner.kwargs == {"inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 10}
    assert maml5.train.meta_batch == 32 and maml5.model.backbone == "conv4_maml"
    assert maml20.learner.kwargs["inner_lr"] == 0.1 and maml20.learner.kwargs["inner_steps"] == 5
    assert maml20.train.meta_batch == 16 and maml20.eval.n_way == 20 == maml20.train.n_way
    assert mamlmini.learner.kwargs["inner_lr"] == 0.01 and mamlmini.train.meta_batch == 4
    assert mamlmini.model.backbone_kwargs == {"hidden": 32} and mamlmini.train.n_query == 15
    for cfg in (maml5, maml20, mamlmini):
        assert cfg.train.norm_policy == "transductive" and cfg.eval.norm_policy == "transductive"
        assert cfg.train.episodes == 60000 * cfg.train.meta_batch
    # The 90-minute recipe of the 5-way file (its header): learn2learn's meta-lr, the test episodes' query count.
    assert (maml5.train.lr, maml5.train.n_query, maml5.train.max_minutes) == (3e-3, 15, 90.0)


def test_a_bad_learner_or_backbone_option_value_names_its_config_key():
    from fewshot.errors import ConfigError

    cfg = load_config(configs_dir() / "maml/omniglot_vinyals_5w1s.yaml", ["learner.kwargs.norm_state_update=step"])
    with pytest.raises(ConfigError, match=r"config key 'learner.kwargs'.*got 'step'"):
        build_learner(cfg, 5, (1, 28, 28))
    with pytest.raises(ConfigError, match=r"model.norm_kwargs.alpha = -1: expected a whitening rate >= 0"):
        load_config(None, ["model.norm=swbn", "model.norm_kwargs.alpha=-1"])  # at load, before any build
