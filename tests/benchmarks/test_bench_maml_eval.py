"""benchmarks/bench_maml.py and bench_eval.py: what they measure and their argument checks (not the timings)."""

from __future__ import annotations

import csv

import pytest

from fewshot.cli.bench import load_benchmark
from fewshot.config import load_config

maml = load_benchmark("bench_maml")
evaluation = load_benchmark("bench_eval")


def test_maml_covers_every_maml_config_with_its_image_shape():
    shapes = {c: maml._image_shape(load_config(maml.REPO / c, [])) for c in maml.configs()}
    assert shapes == {
        "configs/maml/miniimagenet_5w1s.yaml": (3, 84, 84),
        "configs/maml/miniimagenet_5w5s.yaml": (3, 84, 84),
        "configs/maml/omniglot_lake_5w1s.yaml": (1, 28, 28),
        "configs/maml/omniglot_vinyals_20w1s.yaml": (1, 28, 28),
        "configs/maml/omniglot_vinyals_5w1s.yaml": (1, 28, 28),
    }


def test_maml_csv_round_trips_and_bad_steps_raise(tmp_path):
    row = maml.MamlRow("c.yaml", 5, 1, 15, 32, 1, "2nd", "conv4_maml", "1x28x28", 3, 2.25, 812.0)
    path = maml.write_csv([row], tmp_path / "m.csv", {"torch": "x"}, "python run_episode.py bench maml --write")
    lines = path.read_text().splitlines()
    assert lines[0] == "# command: python run_episode.py bench maml --write"
    parsed = next(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert (parsed["order"], parsed["seconds_per_step"], parsed["peak_mb"]) == ("2nd", "2.250", "812")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        maml.run(steps=0)


@pytest.mark.parametrize("kw", [{"episodes": 0}, {"rounds": 0}])
def test_eval_rejects_bad_counts(kw):
    with pytest.raises(ValueError, match="must be >= 1"):
        evaluation.run(**kw)
