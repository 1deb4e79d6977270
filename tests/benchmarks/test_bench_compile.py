"""benchmarks/bench_compile.py and train.compile: the payback rule, the CSV, what is compiled and what is refused.

The measurement compiles for tens of seconds; it is a benchmark, not a test.
"""

from __future__ import annotations

import csv
import math

import pytest

from fewshot import backbones, learners
from fewshot.cli.bench import load_benchmark
from fewshot.errors import ConfigError
from fewshot.training.compile import compile_backbone

bench = load_benchmark("bench_compile")


def test_payback_is_compile_time_over_the_fraction_saved_and_never_when_not_faster():
    assert bench.payback_minutes(1.0, 0.5, 30.0) == pytest.approx(1.0)  # 30 s / 0.5 saved per eager second
    assert bench.payback_minutes(2.0, 1.5, 60.0) == pytest.approx(4.0)
    assert bench.payback_minutes(1.0, 1.0, 1.0) == math.inf
    assert bench.payback_minutes(1.0, 1.2, 0.0) == math.inf


def test_csv_starts_with_the_command_and_round_trips(tmp_path):
    row = bench.CompileRow("protonet omniglot 60w1s5q", "batchnorm", 10, 500.0, 600.0, 0.8333, 26.8, math.inf, False)
    path = bench.write_csv([row], tmp_path / "c.csv", {"torch": "x"}, "python run_episode.py bench train --write")
    lines = path.read_text().splitlines()
    assert lines[0] == "# command: python run_episode.py bench train --write"
    (parsed,) = csv.DictReader(line for line in lines if not line.startswith("#"))
    assert (parsed["speedup"], parsed["compile_s"], parsed["payback_minutes"], parsed["pays_back_in_5_min"]) == (
        "0.833",
        "26.8",
        "inf",
        "False",
    )


def test_run_refuses_bad_counts_and_maml_settings_before_measuring():
    with pytest.raises(ValueError, match="step counts"):
        bench.run(steps=0)
    with pytest.raises(ValueError, match="no ProtoNet setting matches 'maml'"):
        bench.run(settings=["maml"])


def test_compile_backbone_keeps_parameter_names_and_refuses_maml():
    backbone = backbones.create("conv4", in_channels=1, hidden=4)
    learner = learners.create("protonet", backbone)
    names = list(learner.state_dict())
    compile_backbone(learner, "protonet")
    assert learner.backbone._compiled_call_impl is not None
    assert list(learner.state_dict()) == names
    maml = learners.create("maml", backbones.create("conv4", in_channels=1, hidden=4), n_way=5, image_size=28)
    with pytest.raises(ConfigError, match="train.compile is supported for learners protonet, classifier, got 'maml'"):
        compile_backbone(maml, "maml")
    assert maml.backbone._compiled_call_impl is None
