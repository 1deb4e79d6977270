"""scripts/compare_run_metrics.py: logged metrics and checkpoint tensors of two run roots, bitwise or to a tolerance."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from fewshot.training.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def compare(load_script):
    return load_script("compare_run_metrics")


def _run(root: Path, loss: str, weight: float, elapsed: str = "1.0") -> None:
    run = root / "protonet_bn"
    (run / "checkpoints").mkdir(parents=True)
    (run / "train_log.csv").write_text(f"episode,loss,acc,lr,elapsed_s,val_acc\n10,{loss},0.5,0.001,{elapsed},\n")
    model = {"w": torch.tensor([weight, 2.0]), "norm.num_batches_tracked": torch.tensor(10)}
    save_checkpoint(
        {"model": model, "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}}}, run / "checkpoints/last.pt"
    )


def test_identical_runs_differ_by_zero_whatever_the_clock(compare, tmp_path):
    _run(tmp_path / "a", "1.25", 1.0, elapsed="3.0")
    _run(tmp_path / "b", "1.25", 1.0, elapsed="7.5")
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out.csv")]) == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0].startswith("# python scripts/compare_run_metrics.py")
    rows = list(csv.DictReader(lines[1:]))
    assert {r["quantity"] for r in rows} == {
        "train_log.episode", "train_log.loss", "train_log.acc", "train_log.lr", "train_log.val_acc",
        "last.pt.model", "last.pt.optimizer",
    }  # fmt: skip
    assert all(r["identical"] == "True" and float(r["max_abs_diff"]) == 0.0 for r in rows)


def test_a_difference_in_a_metric_or_a_tensor_is_reported_with_its_size(compare, tmp_path):
    _run(tmp_path / "a", "1.25", 1.0)
    _run(tmp_path / "b", "1.5", 1.0 + 2**-20)
    rows = {r["quantity"]: r for r in compare.compare_runs(tmp_path / "a/protonet_bn", tmp_path / "b/protonet_bn", "x")}
    assert rows["train_log.loss"]["max_abs_diff"] == 0.25 and not rows["train_log.loss"]["identical"]
    assert rows["last.pt.model"]["max_abs_diff"] == pytest.approx(2**-20) and not rows["last.pt.model"]["identical"]
    assert rows["last.pt.optimizer"]["identical"]
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--atol", "0.3"]) == 0
