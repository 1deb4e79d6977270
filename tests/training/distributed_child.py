"""One rank of the distributed tests: ``run_episode.py`` on the tiny synthetic splits of ``conftest.py``.

Usage: ``python distributed_child.py PLAN.json`` with the torchrun variables ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` set (``MASTER_PORT`` comes from the plan). The plan is a list of runs
``{"name", "port", "argv", "die_after_step"}``: each runs the real CLI (``fewshot.cli.main.main(argv)``) in this
process, one process group per run on its own port; the exit code and, when the run finishes, this rank's final
model and optimizer state go to ``<out>/<name>-rank<r>.pt`` (``out`` from the plan). ``die_after_step``: this
rank exits abruptly (``os._exit``) after its first step, as a crashed or killed rank would. As in the
single-process runs compared, convolution biases right before a norm are frozen
(``distributed_helpers.frozen_zero_gradient_biases``) and the runs train in float64
(``distributed_helpers.in_float64``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from distributed_helpers import frozen_zero_gradient_biases, in_float64, make_split  # noqa: E402

import fewshot.training.build  # noqa: E402
import fewshot.training.trainer as trainer_module  # noqa: E402
from fewshot.cli.main import main  # noqa: E402

SPLITS = {
    "train": make_split("train"),
    "val": make_split("val", n_classes=4, seed=1),
    "test": make_split("test", n_classes=4, seed=2),
}


def synthetic_split(cfg, name):  # noqa: ANN001, ANN201 - the signature of build_split
    return SPLITS[name]


fewshot.training.build.build_split = synthetic_split
trainer_module.build_split = synthetic_split
trainer_module.build_learner = frozen_zero_gradient_biases(trainer_module.build_learner)
for module, name, value in in_float64(trainer_module):
    setattr(module, name, value)

if __name__ == "__main__":
    plan = json.loads(Path(sys.argv[1]).read_text())
    rank = int(os.environ["RANK"])
    out = Path(plan["out"])
    finish, step = trainer_module._Trainer._finish, trainer_module._Trainer._step
    for run in plan["runs"]:
        os.environ["MASTER_PORT"] = str(run["port"])
        dump = out / f"{run['name']}-rank{rank}.pt"
        dies = rank in run.get("die_after_step", [])

        def finish_and_dump(self, status, lr, dump=dump):  # noqa: ANN001, ANN202
            result = finish(self, status, lr)
            torch.save({"model": self.learner.state_dict(), "optimizer": self.optimizer.state_dict()}, dump)
            return result

        def step_or_die(self, start, die=dies):  # noqa: ANN001, ANN202
            result = step(self, start)
            if die:
                os._exit(3)  # no cleanup, no goodbye to the other ranks: a crash
            return result

        trainer_module._Trainer._finish = finish_and_dump
        trainer_module._Trainer._step = step_or_die
        code = main(run["argv"])
        (out / f"{run['name']}-rank{rank}.json").write_text(json.dumps({"exit": code}))
