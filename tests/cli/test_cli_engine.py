"""End to end, in process: train -> eval (+ leak check) -> compare -> table -> list -> study, on a tiny
synthetic image-folder dataset (16x16 grey images, a handful of classes, a few dozen episodes)."""

import json
import shutil

import pytest
import yaml

from fewshot.cli.main import main
from fewshot.training.checkpoint import load_checkpoint, save_checkpoint

pytest.importorskip("fewshot.learners")


@pytest.fixture
def dataset(tmp_path, monkeypatch, bar_dataset):
    """train/, val/ and test/ folders of 6 bar classes x 6 images (tests/conftest.py) under ``data/toy``."""
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    bar_dataset(tmp_path / "data" / "toy", ("train", "val", "test"))
    return tmp_path


def overrides(root, norm):
    options = {"path": str(root / "data" / "toy"), "mode": "L", "image_size": 16}
    sets = [
        "data.dataset=imagefolder", "data.protocol=folder", f"data.options={json.dumps(options)}",
        "data.train_split=train", "data.val_split=null", "data.test_split=test",
        "model.backbone_kwargs={hidden: 8}", f"model.norm={norm}", "learner.name=protonet",
        "train.n_way=3", "train.n_shot=1", "train.n_query=2", "train.episodes=12", "train.lr_step_episodes=null",
        "train.max_minutes=null", "train.log_every=4", "train.threads=1",
        "eval.n_way=3", "eval.n_shot=1", "eval.n_query=2", "eval.episodes=20",
    ]  # fmt: skip
    return [arg for s in sets for arg in ("--set", s)]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_eval_compare_table_study(dataset, capsys):
    root = dataset
    runs = {}
    for norm in ("batchnorm", "layernorm"):
        runs[norm] = root / "runs" / norm
        code, _, err = run_cli(capsys, "train", *overrides(root, norm), "--out", runs[norm], "--quiet")
        assert code == 0, err

    # eval with the leak check: running statistics are non-transductive
    code, out, err = run_cli(capsys, "eval", "--run", runs["batchnorm"], "--check-leak", "--leak-episodes", 3, "--json")
    assert code == 0, err
    data = json.loads(out)
    s = data["summary"]
    assert (s["n"], s["way"], s["shot"], s["query"], s["policy"]) == (20, 3, 1, 2, "running")
    assert not data["reused"] and data["leak"]["n_episodes"] == 3
    assert data["leak"]["transductive"] is False and data["leak"]["max_abs_logit_diff"] == 0.0
    rows = (root / data["eval_folder"] / "episodes.csv").read_text().strip().splitlines()
    assert len(rows) == 21 and rows[0] == "position,index,acc,n_correct,n_query_total"

    # the transductive policy leaks, and says so in plain words
    code, out, err = run_cli(capsys, "eval", "--run", runs["batchnorm"], "--policy", "transductive", "--check-leak",
                             "--leak-episodes", 3)  # fmt: skip
    assert code == 0, err
    assert "verdict: transductive: predictions depend on other queries" in out
    assert "± " in out and "n=20 episodes" in out

    # any N-way K-shot at test time: another episode set, another eval folder
    code, out, err = run_cli(capsys, "eval", "--run", runs["batchnorm"], "--n-way", 2, "--n-shot", 3, "--n-query", 1,
                             "--episodes", 5, "--json")  # fmt: skip
    assert code == 0, err
    small = json.loads(out)
    assert (small["summary"]["way"], small["summary"]["shot"], small["summary"]["n"]) == (2, 3, 5)
    assert small["eval_folder"] != data["eval_folder"] and small["summary"]["episode_hash"] != s["episode_hash"]

    # compare reuses the running-policy evaluation of the first run (no recomputation)
    code, out, err = run_cli(capsys, "compare", "--runs", runs["batchnorm"], runs["layernorm"], "--json")
    assert code == 0, err
    cmp = json.loads(out)
    assert [r["reused"] for r in cmp["runs"]] == [True, False]
    pair = cmp["pairs"][0]
    assert pair["n"] == 20 and pair["wins"] + pair["ties"] + pair["losses"] == 20
    assert pair["mean_diff"] == pytest.approx(cmp["runs"][1]["mean"] - cmp["runs"][0]["mean"])
    assert 0.0 < pair["p_perm"] <= 1.0 and 0.0 <= pair["p_t"] <= 1.0
    # --policy scores every run with that policy; the transductive evaluation made above is reused
    code, out, err = run_cli(capsys, "compare", "--runs", runs["batchnorm"], runs["layernorm"], "--policy",
                             "transductive", "--json")  # fmt: skip
    assert code == 0, err
    cmp_t = json.loads(out)
    assert [r["policy"] for r in cmp_t["runs"]] == ["transductive", "transductive"]
    assert [r["reused"] for r in cmp_t["runs"]] == [True, False]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "compare", "--runs", runs["batchnorm"], runs["layernorm"], "--policy", "query")
    assert exit_info.value.code == 2 and "invalid choice: 'query'" in capsys.readouterr().err

    # runs on other episodes are refused, naming the difference
    other = root / "runs" / "other"
    shutil.copytree(runs["layernorm"], other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["eval"]["n_query"] = 3
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(capsys, "compare", "--runs", runs["batchnorm"], other)  # a hand edit is refused
    assert code == 2 and "eval.n_query: trained with 2, config.yaml says 3" in err
    for ckpt in (other / "checkpoints").glob("*.pt"):  # as if trained with eval.n_query = 3
        payload = load_checkpoint(ckpt)
        payload["config"]["eval"]["n_query"] = 3
        save_checkpoint(payload, ckpt)
    code, _, err = run_cli(capsys, "compare", "--runs", runs["batchnorm"], other)
    assert code == 2 and "eval.n_query is 2" in err and "but 3" in err

    # ... unless the settings they differ on are given for all: then both are scored on the same 2-way 3-shot file
    out_csv = root / "compare.csv"
    code, _, err = run_cli(capsys, "compare", "--runs", runs["batchnorm"], other, "--n-way", 2, "--n-shot", 3,
                           "--n-query", 1, "--episodes", 5, "--out", out_csv)  # fmt: skip
    assert code == 0, err
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("# command: python ") and "--n-way 2" in lines[0]
    header = lines[1].split(",")
    row = dict(zip(header, lines[2].split(","), strict=True))
    assert (row["way"], row["shot"], row["episodes"]) == ("2", "3", "5") and len(lines) == 3
    assert float(row["diff"]) == pytest.approx(float(row["other_mean"]) - float(row["reference_mean"]), abs=1e-3)
    code, _, err = run_cli(capsys, "compare", "--runs", runs["batchnorm"], other, "--out", out_csv)
    assert code == 2 and "refusing to overwrite" in err and "--append" in err
    # --append adds this comparison's rows (another shot) and its command; the first rows stay as they were
    code, _, err = run_cli(capsys, "compare", "--runs", runs["batchnorm"], other, "--n-way", 2, "--n-shot", 1,
                           "--n-query", 1, "--episodes", 5, "--out", out_csv, "--append")  # fmt: skip
    assert code == 0, err
    appended = out_csv.read_text().splitlines()
    assert appended[0] == lines[0] and appended[1].startswith("# command: ") and "--append" in appended[1]
    assert appended[2:4] == lines[1:3] and len(appended) == 5
    assert dict(zip(header, appended[4].split(","), strict=True))["shot"] == "1"
    code, _, err = run_cli(capsys, "compare", "--runs", runs["batchnorm"], other, "--append")
    assert code == 2 and "--append needs --out" in err

    # table: markdown file + plot; refuses to overwrite without --force
    table, plot = root / "table.md", root / "acc.png"
    code, _, err = run_cli(capsys, "table", "--runs", runs["batchnorm"], runs["layernorm"], "--format", "md",
                           "--out", table, "--plot", plot)  # fmt: skip
    assert code == 0, err
    md = table.read_text().splitlines()
    # header, rule, 6 evaluations (batchnorm: running, transductive, 2-way 3-shot, 2-way 1-shot; layernorm:
    # running, and transductive from compare --policy)
    assert md[0].startswith("| learner | backbone | norm |") and len(md) == 2 + 6
    assert plot.read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(capsys, "table", "--runs", runs["batchnorm"], "--out", table)
    assert code == 2 and "refusing to overwrite" in err

    code, out, _ = run_cli(capsys, "list", "norms")
    assert code == 0 and any(line.startswith("batchnorm ") for line in out.splitlines())

    # the study on the same toy data: two norms, same episodes, table.md + compare.json; never reuses --out
    study_cfg = root / "study.yaml"
    study_cfg.write_text("name: toy_study\n")
    study_out = root / "runs" / "study"
    args = ["study", "--config", study_cfg, "--out", study_out, "--norms", "batchnorm", "layernorm", "--quiet",
            *overrides(root, "batchnorm")]  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert (study_out / "table.md").is_file() and "Paired comparison" in out
    result = json.loads((study_out / "compare.json").read_text())
    assert [r["label"] for r in result["runs"]] == ["protonet/conv4/batchnorm", "protonet/conv4/layernorm"]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "already exists" in err


class _ClosedPipe:
    """A stdout whose reader has gone (``| head`` exited): every write raises."""

    def write(self, _text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def test_a_closed_output_pipe_is_named_as_such_not_as_a_storage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path))
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(["sweep", "status", "--grid", "configs/study/omniglot_protonet.yaml"]) == 1
    err = capsys.readouterr().err
    assert "the output pipe was closed before the command finished" in err and "free space" not in err
