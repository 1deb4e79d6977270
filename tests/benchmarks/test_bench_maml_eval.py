"""benchmarks/bench_maml.py and bench_eval.py: what they measure and their argument checks (not the timings)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from fewshot.cli.bench import load_benchmark
from fewshot.cli.main import main
from fewshot.config import load_config
from fewshot.learners.maml import MAML

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
    rows = maml.with_ratios([_row("loop", 2.25, 812.0), _row("vmap", 1.5, 1015.0)])
    path = maml.write_csv(rows, tmp_path / "m.csv", {"torch": "x"}, "python run_episode.py bench maml --write")
    lines = path.read_text().splitlines()
    assert lines[0] == "# command: python run_episode.py bench maml --write"
    assert lines[2].startswith("config,n_way,n_shot,n_query,meta_batch,inner_steps,order,tasks,backbone,")
    assert lines[2].endswith(",seconds_per_step,peak_mb,speed_vs_loop,memory_vs_loop")
    loop, vmap = csv.DictReader(line for line in lines if not line.startswith("#"))
    assert (loop["order"], loop["tasks"], loop["seconds_per_step"], loop["peak_mb"]) == ("2nd", "loop", "2.250", "812")
    assert (loop["speed_vs_loop"], loop["memory_vs_loop"]) == ("nan", "nan")
    assert (vmap["tasks"], vmap["speed_vs_loop"], vmap["memory_vs_loop"]) == ("vmap", "1.50", "1.25")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        maml.run(steps=0)


def _row(tasks: str, seconds: float, peak: float, config: str = "c.yaml", order: str = "2nd"):
    return maml.MamlRow(config, 5, 1, 15, 32, 1, order, tasks, "conv4_maml", "1x28x28", 3, seconds, peak)


def test_maml_ratios_pair_each_vmap_row_with_the_loop_of_its_config_and_order():
    rows = maml.with_ratios(
        [_row("loop", 2.0, 100.0), _row("vmap", 0.5, 300.0), _row("loop", 1.0, 50.0, order="1st"),
         _row("vmap", 4.0, 25.0, order="1st"), _row("vmap", 1.0, 10.0, config="only_vmap.yaml")]
    )  # fmt: skip
    assert [(r.speed_vs_loop, r.memory_vs_loop) for r in rows[1:4:2]] == [(4.0, 3.0), (0.25, 0.5)]
    assert all(math.isnan(r.speed_vs_loop) and math.isnan(r.memory_vs_loop) for r in (rows[0], rows[2], rows[4]))


def test_maml_measure_one_runs_the_tasks_in_the_mode_asked(tmp_path, monkeypatch):
    # The smallest MAML file (Omniglot 5w1s1q, 1 inner step) with a meta-batch of 4, so that 2 meta-steps are quick.
    text = (maml.REPO / "configs/maml/omniglot_lake_5w1s.yaml").read_text()
    assert "meta_batch: 32\n" in text
    config = tmp_path / "lake_mb4.yaml"
    config.write_text(text.replace("meta_batch: 32\n", "meta_batch: 4\n"))
    vmapped, original = [], MAML._vmapped_logits

    def counting(self, episodes, *args):
        vmapped.append(len(episodes))
        return original(self, episodes, *args)

    monkeypatch.setattr(MAML, "_vmapped_logits", counting)
    loop = maml.measure_one(str(config), False, 1, "loop")
    assert (loop.tasks, loop.order, loop.meta_batch, loop.steps, vmapped) == ("loop", "2nd", 4, 1, [])
    vmap = maml.measure_one(str(config), False, 1, "vmap")
    assert (vmap.tasks, vmap.order, vmap.meta_batch, vmap.inner_steps) == ("vmap", "2nd", 4, 1)
    assert vmapped == [4, 4]  # the untimed and the timed meta-step, each one vmap over the 4 tasks
    assert vmap.seconds_per_step > 0 and vmap.peak_mb >= 0
    assert math.isnan(vmap.speed_vs_loop) and math.isnan(vmap.memory_vs_loop)  # run() fills them


@pytest.mark.parametrize("tasks", ["loop,jit", "vmap,vmap"])
def test_maml_tasks_option_rejects_unknown_or_repeated_modes_before_measuring(tasks, monkeypatch, capsys):
    monkeypatch.setattr(maml.subprocess, "run", lambda *a, **kw: pytest.fail("measured despite a bad --tasks"))
    assert main(["bench", "maml", "--tasks", tasks]) == 2
    err = capsys.readouterr().err
    assert "--tasks" in err and ("'jit'" in err if "jit" in tasks else "twice" in err)
    with pytest.raises(ValueError, match="comma list of loop, vmap, got 'jit'"):
        maml.measure_one("configs/maml/omniglot_lake_5w1s.yaml", True, 1, "jit")


def test_maml_cli_passes_tasks_and_prints_nan_ratios_as_null(monkeypatch, capsys):
    seen = {}

    def fake_run(**kw):
        seen.update(kw)
        return maml.with_ratios([_row("vmap", 1.0, 10.0)])

    monkeypatch.setattr(maml, "run", fake_run)
    assert main(["bench", "maml", "--tasks", " vmap ", "--steps", "2", "--json"]) == 0
    assert seen == {"steps": 2, "only": None, "tasks": ["vmap"]}
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert (row["tasks"], row["speed_vs_loop"], row["memory_vs_loop"]) == ("vmap", None, None)
    assert main(["bench", "maml", "--configs", "a.yaml"]) == 0
    assert seen["tasks"] == ["loop", "vmap"]
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[4:] == ["order", "tasks", "s/step", "peak", "MB", "speed_vs_loop", "memory_vs_loop"]


@pytest.mark.parametrize("kw", [{"episodes": 0}, {"rounds": 0}])
def test_eval_rejects_bad_counts(kw):
    with pytest.raises(ValueError, match="must be >= 1"):
        evaluation.run(**kw)
