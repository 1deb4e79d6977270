"""scripts/pick_layers.py: the miniImageNet grid's placeholder layers named by the fixed Omniglot rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fewshot.study.grid import load_grid

ROOT = Path(__file__).resolve().parents[2]
OTHERS = ["tasknorm", "dbn", "iternorm", "groupwhiten", "kalmannorm", "groupnorm", "instancenorm", "layernorm"]


@pytest.fixture()
def pick(load_script):
    return load_script("pick_layers")


def _study(path: Path, scores: dict[str, tuple[float, float]]) -> Path:
    """A study.csv whose K = 1 `support` rows hold ``scores`` (5-way, 20-way), with decoy rows of other settings."""
    lines = ["# command: test", "grid,cell,norm,way,shot,policy,mean"]
    for cell, (five, twenty) in {"batchnorm": (99.9, 99.9), "swbn": (99.9, 99.9), **scores}.items():
        lines += [
            f"omniglot_protonet,{cell},{cell},5,1,support,{five}",
            f"omniglot_protonet,{cell},{cell},20,1,support,{twenty}",
        ]
        lines += [
            f"omniglot_protonet,{cell},{cell},5,1,running,{100 - five}",
            f"omniglot_protonet,{cell},{cell},5,2,support,1",
        ]
    lines.append("other_grid,layernorm,layernorm,5,1,support,100")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ranks_by_the_mean_of_5_and_20_way_support_accuracy_at_k1_ties_in_grid_order(pick, tmp_path) -> None:
    scores = dict.fromkeys(OTHERS, (90.0, 80.0))
    scores |= {"layernorm": (96.0, 90.0), "groupnorm": (95.0, 91.0), "dbn": (99.0, 72.0)}  # 93, 93, 85.5; others 85
    ranked = pick.rank(
        pick.pd.read_csv(_study(tmp_path / "s.csv", scores), comment="#").query("grid == 'omniglot_protonet'"), OTHERS
    )
    assert list(ranked.index[:3]) == ["groupnorm", "layernorm", "dbn"]  # groupnorm comes first in the grid
    assert ranked.loc["dbn", "score"] == pytest.approx(85.5)
    assert set(ranked.index) == set(OTHERS)  # BN and SWBN are never candidates


def test_a_candidate_without_its_numbers_is_named(pick, tmp_path) -> None:
    scores = {c: (90.0, 80.0) for c in OTHERS if c != "kalmannorm"}
    with pytest.raises(SystemExit, match="error: .*kalmannorm; every candidate must be trained"):
        pick.main(["--study", str(_study(tmp_path / "s.csv", scores))])


def test_apply_renames_the_placeholder_cells_and_keeps_a_picked_placeholder(pick, tmp_path, capsys) -> None:
    grid = tmp_path / "mini.yaml"
    shutil.copy(ROOT / "configs/study/miniimagenet_protonet.yaml", grid)
    scores = dict.fromkeys(OTHERS, (90.0, 80.0)) | {"groupwhiten": (97.0, 90.0), "layernorm": (98.0, 91.0)}
    study = _study(tmp_path / "s.csv", scores)
    assert pick.main(["--study", str(study), "--grid", str(grid), "--runs-root", str(tmp_path), "--apply"]) == 0
    assert "picked: layernorm, groupwhiten" in capsys.readouterr().out
    cells = {c.name: c for c in load_grid(grid).cells}
    assert list(cells) == [
        "pre_batchnorm", "batchnorm", "pre_swbn", "swbn", "pre_swbn_rho0.1", "swbn_rho0.1",
        "pre_layernorm", "layernorm", "pre_groupwhiten", "groupwhiten",
    ]  # fmt: skip
    assert cells["layernorm"].overrides == ("train.max_minutes=null", "norm=layernorm")
    assert cells["layernorm"].after == "pre_layernorm" and cells["pre_layernorm"].priority == 1
    text = grid.read_text()
    assert "PLACEHOLDERS" not in text and "dbn" not in text
    assert "on Omniglot (results/study/omniglot_protonet/study.csv): layernorm 94.50 and groupwhiten 93.50." in text
    with pytest.raises(SystemExit, match="no '# PLACEHOLDERS"):  # a second --apply has nothing left to name
        pick.main(["--study", str(study), "--grid", str(grid), "--runs-root", str(tmp_path), "--apply"])


def test_apply_refuses_while_a_placeholder_cell_has_a_run_folder(pick, tmp_path) -> None:
    grid = tmp_path / "mini.yaml"
    shutil.copy(ROOT / "configs/study/miniimagenet_protonet.yaml", grid)
    before = grid.read_text()
    (tmp_path / "sweeps/miniimagenet_protonet/pre_dbn/seed0").mkdir(parents=True)
    study = _study(tmp_path / "s.csv", dict.fromkeys(OTHERS, (90.0, 80.0)) | {"layernorm": (98.0, 91.0)})
    with pytest.raises(SystemExit, match="pre_dbn/seed0\\): move them aside"):
        pick.main(["--study", str(study), "--grid", str(grid), "--runs-root", str(tmp_path), "--apply"])
    assert grid.read_text() == before


def test_apply_with_both_placeholders_picked_renames_nothing_and_ignores_their_runs(pick, tmp_path, capsys) -> None:
    grid = tmp_path / "mini.yaml"
    shutil.copy(ROOT / "configs/study/miniimagenet_protonet.yaml", grid)
    (tmp_path / "sweeps/miniimagenet_protonet/pre_dbn/seed0").mkdir(parents=True)  # stays valid: dbn is picked
    study = _study(
        tmp_path / "s.csv", dict.fromkeys(OTHERS, (90.0, 80.0)) | {"groupwhiten": (99.0, 90.0), "dbn": (98.0, 90.0)}
    )
    assert pick.main(["--study", str(study), "--grid", str(grid), "--runs-root", str(tmp_path), "--apply"]) == 0
    assert "dbn -> dbn, groupwhiten -> groupwhiten" in capsys.readouterr().out
    assert [c.name for c in load_grid(grid).cells][6:] == ["pre_dbn", "dbn", "pre_groupwhiten", "groupwhiten"]
    assert "PLACEHOLDERS" not in grid.read_text()


def test_a_reworded_placeholders_comment_is_named_not_taken_for_named_layers(pick) -> None:
    ranked = pick.pd.DataFrame({"score": [2.0, 1.0]}, index=["layernorm", "tasknorm"])
    with pytest.raises(ValueError, match="not in the expected form '# PLACEHOLDERS: A and B stand for"):
        pick.rewrite("# PLACEHOLDERS: dbn, groupwhiten\nname: g\ncells:\n  - {name: dbn}\n", ranked)


def test_a_picked_layer_keeps_its_omniglot_recipe_tasknorm_trains_on_support_context(pick, tmp_path) -> None:
    grid = tmp_path / "mini.yaml"
    shutil.copy(ROOT / "configs/study/miniimagenet_protonet.yaml", grid)
    study = _study(tmp_path / "s.csv", dict.fromkeys(OTHERS, (90.0, 80.0)) | {"tasknorm": (98.0, 91.0)})
    assert pick.main(["--study", str(study), "--grid", str(grid), "--runs-root", str(tmp_path), "--apply"]) == 0
    cells = {c.name: c for c in load_grid(grid).cells}
    policies = ("train.norm_policy=support", "eval.norm_policy=support")
    assert cells["tasknorm"].overrides == ("train.max_minutes=null", "norm=tasknorm", *policies)
    assert cells["pre_tasknorm"].overrides == ("train.max_minutes=null", "norm=tasknorm")  # a classifier: no support
    assert cells["dbn"].overrides == ("train.max_minutes=null", "norm=dbn")  # picked second: no recipe of its own


def test_layer_options_go_to_both_stages_policies_to_the_episodic_one(pick) -> None:
    text = (
        "name: g\n# PLACEHOLDERS: dbn and groupwhiten stand for two layers\ncells:\n"
        "  - {name: pre_dbn, config: a.yaml, set: [norm=dbn], evaluate: false}\n"
        "  - {name: dbn, config: b.yaml,\n     set: [norm=dbn], after: pre_dbn}\n"
        "evaluation: {}\n"
    )
    ranked = pick.pd.DataFrame({"score": [2.0, 1.0]}, index=["iternorm", "layernorm"])
    recipe = ("train.norm_policy=support", "model.norm_kwargs.groups=8")
    out, renaming = pick.rewrite(text, ranked, {"iternorm": recipe, "layernorm": ()})
    assert renaming == {"dbn": "iternorm", "groupwhiten": "layernorm"}
    assert "set: [norm=iternorm, model.norm_kwargs.groups=8], evaluate: false" in out
    assert "set: [norm=iternorm, train.norm_policy=support, model.norm_kwargs.groups=8], after: pre_iternorm" in out


def test_a_cell_without_a_plain_set_list_is_named_not_left_without_its_recipe(pick) -> None:
    text = "# PLACEHOLDERS: dbn and groupwhiten stand for two layers\ncells:\n  - {name: dbn, set: [model.x=1]}\n"
    ranked = pick.pd.DataFrame({"score": [2.0, 1.0]}, index=["dbn", "tasknorm"])
    with pytest.raises(ValueError, match="cell dbn of the grid has no single 'set: \\[..., norm=dbn\\]' list"):
        pick.rewrite(text, ranked, {"dbn": ("train.norm_policy=support",)})
    with pytest.raises(ValueError, match="no cell named tasknorm to give its Omniglot recipe"):  # groupwhiten: none
        pick.rewrite(text, ranked, {"tasknorm": ("train.norm_policy=support",)})
