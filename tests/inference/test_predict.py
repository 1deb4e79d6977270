"""predict: a labelled support folder + query images -> class probabilities, for ProtoNet and MAML runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import fewshot
from episodes.episode import Episode
from fewshot.cli.main import main
from fewshot.errors import ConfigError
from fewshot.inference.images import load_images


def test_cli_prints_and_writes_one_row_per_query(toy, own_images, tmp_path, capsys) -> None:
    out = tmp_path / "preds.csv"
    argv = ["predict", "--run", str(toy["protonet"]), "--support", str(own_images["support"]), "--query",
            str(own_images["query"]), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["file", "folder", "prediction", "p_a", "p_b", "p_c"]
    assert [f.rsplit("/", 2)[-1] for f in frame["file"]] == ["q_a.png", "q_b.png", "q_c.png", "x.png"]
    assert frame["folder"].fillna("").tolist() == ["", "", "", "held"]
    # the bars are far apart: every query gets its own class
    assert frame["prediction"].tolist() == ["a", "b", "c", "b"]
    probs = frame[["p_a", "p_b", "p_c"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert "q_a.png" in printed and "# 4 queries, 3 classes, policy running" in printed
    assert main(argv) == 2 and "refusing to overwrite" in capsys.readouterr().err


def test_probabilities_are_the_learners_own_logits_on_the_same_tensors(toy, own_images) -> None:
    run = fewshot.load_run(toy["protonet"])
    preds = fewshot.predict(run, own_images["support"], own_images["query"])
    files = [f for c in ("a", "b", "c") for f in own_images["support_files"][c]]
    queries = [own_images["query"] / n for n in ("q_a.png", "q_b.png", "q_c.png")] + [
        own_images["query"] / "held/x.png"
    ]
    episode = Episode(
        support_x=load_images(files, run.cfg, run.image_shape), support_y=torch.tensor([0, 0, 1, 1, 2, 2]),
        query_x=load_images(queries, run.cfg, run.image_shape), query_y=torch.zeros(4, dtype=torch.int64),
        class_ids=("a", "b", "c"), support_ids=(), query_ids=(), index=0,
    )  # fmt: skip
    expected = torch.softmax(run.learner.predict(episode, policy="running").double(), dim=1).numpy()
    np.testing.assert_array_equal(preds.probabilities, expected)
    # non-transductive: a query scored alone gets bit-identical probabilities
    alone = fewshot.predict(run, own_images["support"], [queries[1]])
    np.testing.assert_array_equal(alone.probabilities[0], preds.probabilities[1])
    assert preds.labels == ("a", "b", "c", "b") and alone.folders == ("",)


def test_support_as_a_mapping_and_the_policy_option(toy, own_images) -> None:
    run = fewshot.load_run(toy["protonet"])
    by_folder = fewshot.predict(run, own_images["support"], own_images["query"], policy="support")
    by_mapping = fewshot.predict(run, own_images["support_files"], own_images["query"], policy="support")
    np.testing.assert_array_equal(by_folder.probabilities, by_mapping.probabilities)
    assert by_folder.policy == "support"
    with pytest.raises(ConfigError, match="unknown test-time normalization policy 'query'"):
        fewshot.predict(run, own_images["support"], own_images["query"], policy="query")


def test_maml_adapts_on_the_support_set(toy, own_images, capsys) -> None:
    run = fewshot.load_run(toy["maml"])
    preds = fewshot.predict(run, own_images["support"], own_images["query"])
    assert preds.policy == "transductive" and preds.probabilities.shape == (4, 3)
    np.testing.assert_allclose(preds.probabilities.sum(axis=1), 1.0, atol=1e-12)
    # the adaptation is what predicts: the meta-learned head alone (no inner step) scores differently
    learner = run.learner
    steps = learner.eval_inner_steps
    learner.eval_inner_steps = 0
    try:
        unadapted = fewshot.predict(run, own_images["support"], own_images["query"])
    finally:
        learner.eval_inner_steps = steps
    assert not np.allclose(unadapted.probabilities, preds.probabilities)
    # its head has 3 outputs: another number of classes is refused, naming both
    two = {"a": own_images["support_files"]["a"], "b": own_images["support_files"]["b"]}
    with pytest.raises(ConfigError, match=r"3-way MAML model .* support set has 2 \(a, b\); give exactly 3"):
        fewshot.predict(run, two, own_images["query"])
    code = main(["predict", "--run", str(toy["maml"]), "--support", str(own_images["support"]), "--query",
                 str(own_images["query"] / "q_a.png"), "--policy", "support"])  # fmt: skip
    assert code == 0 and "# 1 queries, 3 classes, policy support" in capsys.readouterr().out
