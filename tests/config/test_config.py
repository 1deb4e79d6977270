"""Config loading: merge order, override grammar, type and value validation, registry names, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from fewshot.config import (
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    configs_dir,
    diff_configs,
    load_config,
    parse_override,
    read_config,
    save_config,
)
from fewshot.errors import ConfigError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_file_is_loaded_verbatim():
    cfg = load_config()
    raw = yaml.safe_load((configs_dir() / "defaults.yaml").read_text())
    loaded = config_to_dict(cfg)
    raw["name"] = "default"  # null in the file: filled in
    assert loaded == raw
    assert isinstance(cfg, ExperimentConfig) and isinstance(cfg.train.lr, float)


def test_merge_order_defaults_then_file_then_overrides(tmp_path):
    exp = _write(tmp_path / "exp.yaml", "train:\n  n_way: 20\n  lr: 0.01\nmodel:\n  norm_kwargs: {momentum: 0.2}\n")
    cfg = load_config(exp, ["train.lr=0.005", "model.norm_kwargs.eps=0.001"])
    assert cfg.train.n_way == 20  # file over defaults
    assert cfg.train.lr == 0.005  # override over file
    assert cfg.train.n_shot == 1  # untouched default
    assert cfg.model.norm_kwargs == {"momentum": 0.2, "eps": 0.001}  # free-form mappings merge key by key
    assert cfg.name == "exp"  # from the file name (outside configs/)
    assert load_config(exp, ["train.n_way=10", "train.n_way=30"]).train.n_way == 30  # overrides apply in order


def test_override_values_are_yaml_and_shorthands_expand():
    cfg = load_config(None, [
        "norm=swbn", "backbone=resnet12", "learner=maml", "seed=7",
        "train.max_minutes=null", "data.options={image_size: 84}", "train.lr=1e-3", "train.max_minutes=3",
    ])  # fmt: skip
    assert (cfg.model.norm, cfg.model.backbone, cfg.learner.name, cfg.seed) == ("swbn", "resnet12", "maml", 7)
    assert cfg.data.options == {"image_size": 84}
    assert cfg.train.lr == 0.001 and type(cfg.train.lr) is float  # PyYAML reads "1e-3" as text: accepted
    assert cfg.train.max_minutes == 3.0 and type(cfg.train.max_minutes) is float  # an int is a number
    assert load_config(None, ["train.max_minutes=null"]).train.max_minutes is None
    assert load_config(None, ["norm=Batch_Norm"]).model.norm == "batchnorm"  # canonical registry name
    assert parse_override("data.val_split=") == {"data": {"val_split": None}}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            "train.lrr=0.1",
            r"unknown config key 'train\.lrr' in override .*did you mean 'train\.lr'\? valid keys "
            r"under 'train': n_way, n_shot, .*log_every",
        ),
        (
            "trian.n_way=5",
            r"unknown config key 'trian' .*did you mean 'train'\? valid keys at the top level: name, "
            r"seed, data, model, learner, train, eval",
        ),
        ("train.n_way=five", r"config key 'train\.n_way' must be an int, got str 'five'"),
        ("train.n_way=2.5", r"config key 'train\.n_way' must be an int, got float 2\.5"),
        ("train.n_shot=true", r"config key 'train\.n_shot' must be an int, got bool True"),
        ("train.channels_last=1", r"config key 'train\.channels_last' must be true/false, got int 1"),
        ("train.max_minutes=soon", r"'train\.max_minutes' must be a number or null, got str 'soon'"),
        ("train=3", r"config key 'train' in override 'train=3' must be a mapping of n_way, .*got int 3"),
        ("model.norm_kwargs=[1, 2]", r"'model\.norm_kwargs' must be a mapping, got list"),
        ("train.lr", r"override 'train\.lr' is not of the form KEY=VALUE"),
        ("=3", r"override '=3' has an empty key part"),
        ("train.lr={", r"override 'train\.lr=\{': the value '\{' is not valid YAML"),
        ("name=a/b", r"config key 'name' must be letters, digits"),
    ],
)
def test_bad_keys_and_types_name_the_key_value_and_expected_type(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["train.n_way=1"], r"train\.n_way = 1: expected n_way >= 2"),
        (["eval.n_shot=0"], r"eval\.n_shot = 0: expected n_shot >= 1"),
        (["train.n_query=0", "train.lr=-1"], r"2 invalid config values: train\.n_query = 0: .*; train\.lr = -1\.0"),
        (["train.norm_policy=query"], r"train\.norm_policy = 'query': expected one of running, support, transductive"),
        (["eval.norm_policy=query"], r"eval\.norm_policy = 'query': expected one of running, support, transductive"),
        (["train.lr_gamma=1.5"], r"train\.lr_gamma = 1\.5: expected a factor in \(0, 1\]"),
        (["train.max_minutes=0"], r"train\.max_minutes = 0\.0: expected a positive number or null"),
        (
            ["train.meta_batch=32", "train.episodes=100"],
            r"train\.episodes = 100: expected a multiple of "
            r"train\.meta_batch = 32 \(96 or 128\)",
        ),
        (["norm=swbm"], r"config key 'model\.norm': unknown normalization layer 'swbm'; did you mean 'swbn'\?"),
        (["backbone=conv5"], r"config key 'model\.backbone': unknown backbone 'conv5'; did you mean"),
        (["learner=protonett"], r"config key 'learner\.name': unknown learner 'protonett'; did you mean 'protonet'"),
        (["data.dataset=omniglott"], r"config key 'data\.dataset': unknown dataset 'omniglott'"),
        (["data.protocol=ravi"], r"'data\.protocol': dataset 'omniglot' has no protocol 'ravi'; protocols: vinyals"),
        (["data.test_split=tset"], r"'data\.test_split': protocol 'vinyals' of dataset 'omniglot' has no split 'tset'"),
        (
            ["model.backbone_kwargs={hiden: 8}"],
            r"'model\.backbone_kwargs\.hiden': backbone 'conv4' takes no argument "
            r"'hiden'; did you mean 'hidden'\?",
        ),
        (["model.backbone_kwargs={norm: swbn}"], r"'model\.backbone_kwargs\.norm' is set by the framework"),
        (["model.norm_kwargs={alpah: 0.1}"], r"'model\.norm_kwargs': BatchNorm got unknown option\(s\) 'alpah'"),
        (
            ["learner=maml", "learner.kwargs={inner_lrr: 0.1}"],
            r"'learner\.kwargs\.inner_lrr': learner 'maml' takes "
            r"no argument 'inner_lrr'; did you mean 'inner_lr'\?",
        ),
        (["learner.kwargs={n_way: 5}"], r"'learner\.kwargs\.n_way' is set by the framework"),
    ],
)
def test_semantic_checks_and_registry_names(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_errors_in_files_name_the_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epsiodes' in .*bad\.yaml; did you mean "
                                          r"'train\.episodes'"):  # fmt: skip
        load_config(_write(tmp_path / "bad.yaml", "train:\n  epsiodes: 10\n"))
    with pytest.raises(ConfigError, match=r"broken\.yaml' is not valid YAML at line 3, column 1"):
        load_config(_write(tmp_path / "broken.yaml", "train:\n  n_way: [5\n"))
    with pytest.raises(ConfigError, match=r"must hold a mapping of keys .* got a list"):
        load_config(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"config file '.*missing\.yaml' does not exist"):
        load_config(tmp_path / "missing.yaml")
    assert load_config(_write(tmp_path / "empty.yaml", "# nothing but a comment\n")).train == load_config().train


def test_missing_keys_are_listed_together():
    tree = config_to_dict(load_config())
    del tree["train"]["lr"], tree["eval"]["seed"]
    del tree["learner"]
    with pytest.raises(ConfigError, match=r"missing required config keys: learner\.name, learner\.kwargs, "
                                          r"train\.lr, eval\.seed"):  # fmt: skip
        config_from_dict(tree)


def test_name_comes_from_the_path_under_configs():
    cfg = load_config(configs_dir() / "protonet" / "omniglot_vinyals_5shot.yaml")
    assert cfg.name == "protonet_omniglot_vinyals_5shot"
    assert load_config(None, ["name=my_run"]).name == "my_run"


def test_save_and_read_round_trip(tmp_path):
    cfg = load_config(None, ["norm=swbn", "model.norm_kwargs={alpha: 0.01}", "data.val_split=val", "seed=3"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert read_config(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary file left behind


def test_diff_configs_lists_dotted_keys():
    a = config_to_dict(load_config())
    b = config_to_dict(load_config(None, ["train.lr=0.01", "norm=swbn", "data.options={image_size: 32}"]))
    assert diff_configs(a, b) == [
        ("data.options.image_size", 28, 32), ("model.norm", "batchnorm", "swbn"), ("train.lr", 0.001, 0.01),
    ]  # fmt: skip
    assert diff_configs(a, a) == []


def test_configs_are_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_a_run_recorded_before_a_key_existed_reads_with_the_earlier_behaviour(tmp_path):
    tree = config_to_dict(load_config(None, []))
    del tree["data"]["normalize"], tree["model"]["init_from"]  # a 0.2.0 run's config.yaml
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(tree))
    cfg = read_config(tmp_path / "old.yaml")
    assert cfg.data.normalize is None and cfg.model.init_from is None
    del tree["train"]["lr"]  # a key that was always there stays required
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="train.lr"):
        read_config(tmp_path / "broken.yaml")


def test_the_old_policy_name_batch_is_read_as_transductive_at_the_config_boundary_only(tmp_path):
    from fewshot.config.loader import with_current_names
    from fewshot.norms import create

    cfg = load_config(None, ["train.norm_policy=batch", "model.norm_kwargs={policy: batch}"])
    assert cfg.train.norm_policy == "transductive" and cfg.model.norm_kwargs["policy"] == "transductive"
    tree = config_to_dict(load_config(None, []))
    tree["train"]["norm_policy"] = "batch"  # a run recorded before fewshot 0.3
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(tree))
    assert read_config(tmp_path / "old.yaml").train.norm_policy == "transductive"
    assert tree["train"]["norm_policy"] == "batch"  # with_current_names copies, never edits its input
    assert with_current_names(tree)["train"]["norm_policy"] == "transductive"
    with pytest.raises(ValueError, match=r"policy must be one of 'running', 'support', 'transductive', got 'batch'"):
        create("batchnorm", 4, policy="batch")  # past the config boundary the old name is unknown


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=.nan", r"train.lr = nan: expected a finite number"),
        ("train.lr=.inf", r"train.lr = inf: expected a finite number"),
        ("train.max_minutes=-.inf", r"train.max_minutes = -inf: expected a finite number"),
        ("train.lr_gamma=.nan", r"train.lr_gamma = nan: expected a finite number"),
        ("model.norm_kwargs={eps: .nan}", r"model.norm_kwargs.eps = nan: expected a finite number"),
        ("model.norm_kwargs={eps: 0}", r"model.norm_kwargs.eps = 0: expected a number > 0"),
        ("model.norm_kwargs={momentum: 1.5}", r"model.norm_kwargs.momentum = 1.5: expected a number in \[0, 1\]"),
        ("learner.kwargs={inner_lr: -0.1}", r"learner.kwargs.inner_lr = -0.1: expected a positive learning rate"),
        ("learner.kwargs={inner_lr: .inf}", r"learner.kwargs.inner_lr = inf: expected a finite number"),
        ("train.lr=0", r"train.lr = 0.0: expected a positive learning rate"),
        ("eval.n_way=1", r"eval.n_way = 1: expected n_way >= 2"),
    ],
)
def test_every_numeric_setting_is_checked_for_finiteness_and_range(override, message):
    extra = ["learner=maml"] if override.startswith("learner.") else []
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*extra, override])


def test_an_unknown_dataset_option_is_refused_at_load_naming_it():
    with pytest.raises(ConfigError, match=r"'data.options.imag_size': dataset 'omniglot' .* did you mean 'image_size'"):
        load_config(None, ["data.options={imag_size: 28}"])


def test_a_non_utf8_config_file_gets_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml' is not UTF-8 text \(byte 0xe9 at offset 9\); save it as"):
        load_config(path)


def test_evaluation_refuses_one_way_episodes():
    from fewshot.evaluation.run_eval import resolve_request

    with pytest.raises(ConfigError, match="n_way must be >= 2 at evaluation too"):
        resolve_request(load_config(None), n_way=1)
