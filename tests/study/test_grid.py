"""The committed study grids plan what the study needs, in the stated order; bad grids fail with clear errors."""

import pytest

from fewshot.config import configs_dir
from fewshot.errors import ConfigError
from fewshot.norms import names
from fewshot.study.grid import is_grid_file, load_grid, plan_runs, select_runs

GRIDS = sorted(p for p in (configs_dir() / "study").glob("*.yaml") if is_grid_file(p))


def test_the_four_grids_exist_and_start_with_their_command():
    assert [p.stem for p in GRIDS] == [
        "miniimagenet_maml", "miniimagenet_protonet", "omniglot_maml", "omniglot_protonet",
    ]  # fmt: skip
    for path in GRIDS:
        assert path.read_text().splitlines()[0] == f"# python run_episode.py sweep --grid configs/study/{path.name}"
    assert not is_grid_file(configs_dir() / "study" / "quickstart.yaml")


def test_omniglot_grid_covers_every_layer_bn_and_swbn_seeds_first(tmp_path):
    runs = plan_runs(load_grid(configs_dir() / "study" / "omniglot_protonet.yaml"), tmp_path)
    assert [r.key for r in runs[:9]] == [
        f"{c}/seed{s}" for s in (0, 1, 2) for c in ("batchnorm", "swbn", "swbn_rho0.1")
    ]
    assert {r.cfg.model.norm for r in runs} == set(names()) - {"batchnorm_transductive"}
    assert {r.target_episodes for r in runs} == {5000} and {r.cfg.train.max_minutes for r in runs} == {None}
    assert runs[2].cfg.model.norm_kwargs == {"shrinkage": 0.1} and runs[1].cfg.model.norm_kwargs == {}
    assert runs[0].run_dir == tmp_path / "sweeps" / "omniglot_protonet" / "batchnorm" / "seed0"
    spec = runs[0].cell.evaluation
    assert (spec.ways, spec.shots, spec.queries) == ((5, 20), (1, 2, 3, 5, 10), 5)
    assert max(spec.shots) + spec.queries <= 20  # Omniglot has 20 images per class
    assert [r.key for r in select_runs(runs, ["swbn*/seed2"])] == ["swbn/seed2", "swbn_rho0.1/seed2"]
    # TaskNorm trains and validates with the support set as its context (its paper's protocol); the others as BN
    policies = {r.cell.name: (r.cfg.train.norm_policy, r.cfg.eval.norm_policy) for r in runs}
    assert policies.pop("tasknorm") == ("support", "support") and set(policies.values()) == {("running", "running")}


def test_maml_grid_is_2042_meta_steps_of_32_tasks(tmp_path):
    runs = plan_runs(load_grid(configs_dir() / "study" / "omniglot_maml.yaml"), tmp_path)
    assert [r.cfg.model.norm for r in runs] == ["batchnorm", "swbn", "tasknorm"]
    assert runs[0].reuse_from == configs_dir().parent / "results/runs/maml_omniglot_vinyals_5w1s/headline-bn"
    assert runs[0].reuse_from.is_dir() and [r.reuse_from for r in runs[1:]] == [None, None]
    assert {r.target_episodes // r.cfg.train.meta_batch for r in runs} == {2042}
    assert all(r.target_episodes % r.cfg.train.meta_batch == 0 for r in runs)
    policies = [(r.cfg.train.norm_policy, r.cfg.eval.norm_policy) for r in runs]
    assert policies == [("transductive", "transductive")] * 2 + [("support", "support")]  # TaskNorm: support context


def test_miniimagenet_maml_grid_is_3500_second_order_meta_steps_for_bn_and_swbn(tmp_path):
    runs = plan_runs(load_grid(configs_dir() / "study" / "miniimagenet_maml.yaml"), tmp_path)
    assert [(r.cell.name, r.cfg.model.norm) for r in runs] == [
        ("batchnorm", "batchnorm"), ("swbn", "swbn"), ("swbn_rho0.1", "swbn"),
    ]  # fmt: skip
    assert runs[1].cfg.model.norm_kwargs == {} and runs[2].cfg.model.norm_kwargs == {"shrinkage": 0.1}
    for run in runs:
        cfg = run.cfg
        assert (cfg.learner.name, cfg.data.dataset, cfg.train.n_way, cfg.train.meta_batch) == (
            "maml", "miniimagenet", 5, 4,
        )  # fmt: skip
        assert not cfg.learner.kwargs.get("first_order", False) and cfg.model.backbone_kwargs == {"hidden": 32}
        assert run.target_episodes // cfg.train.meta_batch == 3500 and cfg.train.max_minutes is None
        assert run.target_episodes % cfg.train.val_every == 0
    spec = runs[0].cell.evaluation
    assert (spec.ways, spec.shots, spec.queries, spec.episodes) == ((5,), (1, 5), 15, 600)


def test_miniimagenet_grid_has_two_stages_for_bn_both_swbn_and_two_others(tmp_path):
    runs = plan_runs(load_grid(configs_dir() / "study" / "miniimagenet_protonet.yaml"), tmp_path)
    stages = [r.cell.name for r in runs]
    assert stages[:6] == ["pre_batchnorm", "batchnorm", "pre_swbn", "swbn", "pre_swbn_rho0.1", "swbn_rho0.1"]
    assert len(runs) == 10 and {r.cfg.data.dataset for r in runs} == {"miniimagenet"}
    pre, fine = runs[0], runs[1]
    assert pre.cfg.learner.name == "classifier" and pre.cell.evaluation.settings() == [] and pre.after_dir is None
    assert fine.cfg.learner.name == "protonet" and fine.after_dir == pre.run_dir
    assert fine.cfg.model.init_from == str(pre.run_dir) and fine.cell.evaluation.queries == 15
    assert [r.cfg.model.norm_kwargs for r in runs[4:6]] == [{"shrinkage": 0.1}] * 2


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("cells: [{name: a}]\nset: [train.max_minutes=5]\n", "budgets are training episodes"),
        ("cells: [{name: a, sets: [norm=swbn]}]\n", r"unknown key\(s\) \['sets'\]"),
        ("cells: [{name: a}, {name: a}]\nset: [train.max_minutes=null]\n", "repeated: \\['a'\\]"),
        ("cells: [{name: a}]\nevaluation: {policies: [query]}\n", "policies must be"),
        ("cells: []\n", "non-empty 'cells:' list"),
        ("cells: [{name: b, after: a}, {name: a}]\n", "not a cell defined earlier"),
        ("cells: [{name: a, seeds: [0, 1]}, {name: b, after: a}]\n", "needs the same seeds"),
        ("cells: [{name: a, evaluate: no-thanks}]\n", "evaluate must be true or false"),
    ],
)
def test_bad_grids_are_refused_with_the_reason(tmp_path, text, match):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        plan_runs(load_grid(path), tmp_path)


def test_only_pattern_without_match_lists_the_runs(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("cells: [{name: a, seeds: [0, 1]}]\nset: [train.max_minutes=null]\n")
    runs = plan_runs(load_grid(path), tmp_path)
    with pytest.raises(ConfigError, match="matches no run.*a/seed0, a/seed1"):
        select_runs(runs, ["b*"])
