"""embed: backbone features of image files (.npy / .pt) with an index CSV of files and class folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import fewshot
from fewshot.cli.main import main
from fewshot.errors import ConfigError
from fewshot.inference.images import load_images


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_cli_writes_features_and_index(toy, own_images, tmp_path, capsys, suffix) -> None:
    out = tmp_path / f"feats{suffix}"
    argv = ["embed", "--run", str(toy["protonet"]), "--images", str(own_images["support"]), "--out", str(out)]
    assert main(argv) == 0
    assert f"(6 x 8 float32, policy running) and {tmp_path / 'feats.csv'}" in capsys.readouterr().out
    features = np.load(out) if suffix == ".npy" else torch.load(out, weights_only=True).numpy()
    index = pd.read_csv(tmp_path / "feats.csv")
    assert features.shape == (6, 8) and features.dtype == np.float32
    assert list(index.columns) == ["row", "file", "folder"] and index["row"].tolist() == list(range(6))
    assert index["folder"].tolist() == ["a", "a", "b", "b", "c", "c"]
    assert [f.rsplit("/", 2)[-2:] for f in index["file"]][0] == ["a", "0.png"]
    # the features are the backbone's output (eval mode, running statistics) on the preprocessed files
    run = fewshot.load_run(toy["protonet"])
    x = load_images([own_images["support_files"][c][i] for c in "abc" for i in range(2)], run.cfg, run.image_shape)
    run.learner.eval()
    with torch.no_grad():
        expected = run.learner.backbone(x).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    assert main(argv) == 2 and "refusing to overwrite" in capsys.readouterr().err


def test_running_rows_do_not_depend_on_the_batch_and_transductive_ones_do(toy, own_images) -> None:
    run = fewshot.load_run(toy["maml"])  # MAML: the features its head reads
    files = [f for c in "abc" for f in own_images["support_files"][c]]
    together = fewshot.embed(run, files)
    alone = fewshot.embed(run, files[2])
    np.testing.assert_array_equal(alone.features[0], together.features[2])
    trans = fewshot.embed(run, files, policy="transductive")
    trans_part = fewshot.embed(run, files[:3], policy="transductive")
    assert trans.policy == "transductive" and not np.allclose(trans.features[:3], trans_part.features)
    with pytest.raises(ConfigError, match="embed policy must be one of running, transductive, got 'support'"):
        fewshot.embed(run, files, policy="support")
    with pytest.raises(ConfigError, match=r"must end in \.npy or \.pt"):
        together.save(own_images["query"] / "feats.txt")
