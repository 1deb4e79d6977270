"""scripts/swbn_spectrum.py: singular values of SWBN's W read from a checkpoint; a run without SWBN is refused."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from fewshot.config.loader import config_to_dict, read_config
from fewshot.errors import DataError
from fewshot.training.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "results" / "runs" / "protonet_omniglot_vinyals_1shot"
SWBN_CONFIG = RUNS / "headline-swbn" / "config.yaml"
BN_CONFIG = RUNS / "headline-bn" / "config.yaml"


@pytest.fixture(scope="module")
def spectrum(load_script):
    module = load_script("swbn_spectrum")
    yield module
    sys.modules.pop("swbn_spectrum", None)


def _run(tmp_path: Path, config: Path, model: dict) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(config, run / "config.yaml")
    save_checkpoint({"model": model, "config": config_to_dict(read_config(config))}, run / "checkpoints" / "best.pt")
    return run


def test_rows_hold_max_and_median_singular_values_per_layer(spectrum, tmp_path):
    w = torch.stack([torch.diag(torch.tensor([5.0, 1.0, 1.0])), -2.0 * torch.eye(3)])  # singular values 5,1,1,2,2,2
    run = _run(tmp_path, SWBN_CONFIG, {"a.norm.whitening_matrix": w, "a.norm.running_mean": torch.zeros(6)})
    [row] = spectrum.spectrum_rows(run)
    assert (row.layer, row.groups, row.group_size, row.label) == ("a.norm", 2, 3, "protonet/conv4/swbn")
    assert row.max_singular_value == pytest.approx(5.0)
    assert row.median_singular_value == pytest.approx(2.0)  # torch's median of (1,1,1,2,2,2) is the lower middle


def test_run_without_swbn_is_refused_naming_its_norm(spectrum, tmp_path):
    run = _run(tmp_path, BN_CONFIG, {"a.norm.running_mean": torch.zeros(6)})
    with pytest.raises(ValueError, match="no SWBN whitening matrix.*'batchnorm'.*norm=swbn"):
        spectrum.spectrum_rows(run)


def test_a_checkpoint_that_does_not_belong_to_config_yaml_is_refused(spectrum, tmp_path):
    run = _run(tmp_path, SWBN_CONFIG, {"a.norm.whitening_matrix": torch.eye(3)[None]})
    shutil.copy(BN_CONFIG, run / "config.yaml")  # config.yaml now says batchnorm; the checkpoint was swbn
    with pytest.raises(DataError, match="does not match the config best.pt was trained with.*model.norm"):
        spectrum.spectrum_rows(run)
