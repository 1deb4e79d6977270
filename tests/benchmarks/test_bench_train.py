"""benchmarks/bench_train.py: the CSV it writes, its refusal to overwrite, and its argument checks.

The measurement itself runs the real trainer for minutes; it is a benchmark, not a test (see results/).
"""

from __future__ import annotations

import csv

import pytest

from fewshot.cli.bench import load_benchmark

bench = load_benchmark("bench_train")


def _row(**kw):
    base = dict(
        setting="protonet conv4 batchnorm 60w1s5q", learner="protonet", episodes=600, meta_batch=1,
        step_seconds=90.0, overhead_seconds=1.5, episodes_per_second=600 / 91.5, steps_per_second=600 / 91.5,
        overhead_fraction=1.5 / 91.5,
    )  # fmt: skip
    base.update(kw)
    return bench.Row(**base)


def test_csv_starts_with_the_command_and_round_trips(tmp_path):
    rows = [_row(), _row(setting="maml", learner="maml", episodes=640, meta_batch=32, steps_per_second=20 / 91.5)]
    path = bench.write_csv(rows, tmp_path / "b.csv", {"torch": "x"}, "python run_episode.py bench train --write")
    lines = path.read_text().splitlines()
    assert lines[0] == "# command: python run_episode.py bench train --write"
    parsed = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert [r["setting"] for r in parsed] == ["protonet conv4 batchnorm 60w1s5q", "maml"]
    assert float(parsed[0]["overhead_fraction"]) == pytest.approx(1.5 / 91.5, abs=1e-4)
    assert int(parsed[1]["meta_batch"]) == 32


def test_write_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="--force"):
        bench.write_csv([_row()], path, {}, "cmd")
    assert path.read_text() == "keep me"
    bench.write_csv([_row()], path, {}, "cmd", force=True)
    assert path.read_text().startswith("# command: cmd")


@pytest.mark.parametrize("kw", [{"protonet_episodes": 0}, {"maml_episodes": -1}, {"warmup_steps": -1}])
def test_run_rejects_bad_counts_before_training(kw):
    with pytest.raises(ValueError, match="episode counts"):
        bench.run(**kw)


def test_settings_name_existing_configs():
    for s in bench.SETTINGS:
        assert (bench.REPO / s.config).is_file(), s.config


def test_labels_come_from_the_resolved_configs_and_are_distinct():
    labels = [bench.setting_label(s.resolve()) for s in bench.SETTINGS]
    assert labels == [
        "protonet conv4 batchnorm 60w1s5q",
        "protonet conv4 swbn 60w1s5q",
        "maml conv4_maml batchnorm 5w1s15q mb32 2nd-order",
        "maml conv4_maml swbn[shrinkage=0.1] 5w1s15q mb32 2nd-order",
    ]


def test_label_follows_overrides():
    cfg = bench.Setting(
        "configs/maml/omniglot_vinyals_5w1s.yaml",
        ("train.n_query=1", "train.meta_batch=4", "learner.kwargs.first_order=true"),
    ).resolve()
    assert bench.setting_label(cfg) == "maml conv4_maml batchnorm 5w1s1q mb4 1st-order"
