"""Child process of the fault tests: ``run_episode.py`` on the tiny synthetic splits of ``conftest.py``.

Usage: ``python fault_child.py [--slow] -- <run_episode.py arguments>``. The dataset loader is replaced by the
synthetic splits (train, val and test), so ``train`` and ``eval`` run end to end through the real CLI (error
lines, exit codes, signal handling) in about a second. ``--slow`` prints ``step <episodes>`` after every training
step and then sleeps, so that the parent can signal the child in the middle of a run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import make_split  # noqa: E402

import fewshot.training.build  # noqa: E402
import fewshot.training.trainer  # noqa: E402
from fewshot.cli.main import main  # noqa: E402

SPLITS = {"train": make_split("train"), "val": make_split("val", n_classes=4, seed=1)}
SPLITS["test"] = make_split("test", n_classes=4, seed=2)


def synthetic_split(cfg, name):  # noqa: ANN001, ANN201 - the signature of build_split
    return SPLITS[name]


fewshot.training.build.build_split = synthetic_split
fewshot.training.trainer.build_split = synthetic_split

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--slow":
        args = args[1:]
        step = fewshot.training.trainer._Trainer._step

        def slow_step(self, start):  # noqa: ANN001, ANN202
            out = step(self, start)
            print(f"step {self.state.episodes_done}", flush=True)
            time.sleep(0.4)
            return out

        fewshot.training.trainer._Trainer._step = slow_step
    assert args[0] == "--"
    sys.exit(main(args[1:]))
