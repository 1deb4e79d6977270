"""Distributed meta-training on two gloo ranks (127.0.0.1) against the single-process run.

Every rank runs the real CLI (``distributed_child.py``) with the torchrun environment variables. After three
meta-steps of four episodes, each rank's parameters, Adam state and normalization state must equal those of one
process training the same config, to float tolerance: the ranks split every meta-batch by episode index, average
their gradients and merge their norm statistics in episode order (fewshot.training.meta_step_sync; MAML's
layer by layer inside its state pass over the joined supports).

Tolerance. The gradient all-reduce sums in another order than one process's backward, so the runs agree to
rounding, not bitwise. Both runs train in float64 (``distributed_helpers.in_float64``) and every parameter, norm
state and Adam moment is held to ``1e-9`` of its tensor's largest value (plus ``1e-12``), element by element
(checked to fail when MAML's state pass normalizes with each rank's own statistics instead of the merged ones, or
when the statistics are not gathered). A relative bound per element would be as strict as rounding allows on the
large entries and looser than it on the tiny ones: second-order MAML with SWBN amplifies float64 rounding to
~3e-11 of a tensor's scale after three steps (differently on each of SWBN's two fused paths), which is a 1e-9
elementwise miss on its smallest Adam moments.
In float32 the same runs differ by up to 2e-6 (ProtoNet) to 1.1e-3 (second-order MAML SWBN) relative to each
tensor's largest value after three steps: tiny norm batches amplify float32 rounding, and one process on 1 thread
vs 2 threads differs by 1.3e-2 in that run; float32 equality would need a tolerance that hides real errors.
Convolution biases right before a norm have zero true gradient: Adam would turn their rounding noise into full
steps of ``lr`` (and running means include them), so they are frozen in both runs
(``distributed_helpers.frozen_zero_gradient_biases``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from distributed_helpers import MAML, SWBN, TINY, frozen_zero_gradient_biases, in_float64, make_split

import fewshot.training.build as build_module
import fewshot.training.trainer as trainer_module
from fewshot.config import load_config
from fewshot.errors import ConfigError
from fewshot.evaluation.run_eval import evaluate_run
from fewshot.training.build import build_learner
from fewshot.training.checkpoint import load_checkpoint
from fewshot.training.distributed import SINGLE, Distributed, DistributedError, from_env
from fewshot.training.meta_step_sync import check_meta_batch, local_episodes, split_evenly
from fewshot.training.trainer import train

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("distributed_child.py")
STEP = ("train.meta_batch=4", "train.episodes=12", "train.lr=0.01", "train.norm_policy=running")
PROTONET_ONCE = ("learner.kwargs={norm_state_update: meta_batch}",)
FIRST_ORDER = ("learner.kwargs={inner_steps: 1, eval_inner_steps: 2, first_order: true}",)

#: Runs compared with one process: name → overrides of the tiny config.
RUNS = {
    "protonet-batchnorm": (*TINY, *STEP, *PROTONET_ONCE),
    "protonet-swbn": (*TINY, *SWBN, *STEP, *PROTONET_ONCE),
    "maml2-batchnorm": (*TINY, *MAML, *STEP),
    "maml2-swbn": (*TINY, *MAML, *SWBN, *STEP),
    "maml1-swbn": (*TINY, *MAML, *SWBN, *STEP, *FIRST_ORDER),
}
#: Runs both ranks must refuse with a ConfigError before training (CLI exit code 2).
REFUSED = {
    "indivisible": (*TINY, *PROTONET_ONCE, "train.meta_batch=3", "train.episodes=12"),
    "forward-update": (*TINY, "train.meta_batch=4", "train.episodes=12"),
    "maml-task-update": (*TINY, *MAML, *STEP, "learner.kwargs={inner_steps: 1, norm_state_update: task}"),
}
RESUMED = "protonet-resumed"  # 2 ranks for 8 episodes, then one process to 12
EVALUATED = "protonet-batchnorm"  # evaluated on 2 ranks after training (5 test episodes: shares of 3 and 2)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch(tmp: Path, runs: list[dict], timeout: float, world: int = 2) -> list[subprocess.CompletedProcess]:
    """Start ``world`` ranks of ``distributed_child.py`` on ``runs``; wait for all (or kill them at ``timeout``)."""
    ports = _free_ports(len(runs))
    plan = {"out": str(tmp), "runs": [{**r, "port": p} for r, p in zip(runs, ports, strict=True)]}
    (tmp / "plan.json").write_text(json.dumps(plan))
    base = {
        **os.environ, "PYTHONPATH": str(REPO), "FEWSHOT_RUNS": str(tmp / "runs"), "OMP_NUM_THREADS": "1",
        "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "FEWSHOT_DIST_TIMEOUT_S": "20",
    }  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(tmp / "plan.json")],
            cwd=REPO,
            text=True,
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for r in range(world)
    ]
    done = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _argv(name: str, overrides: tuple[str, ...], tmp: Path) -> list[str]:
    sets = [a for o in overrides for a in ("--set", o)]
    return ["train", "--quiet", "--out", str(tmp / name), *sets]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[subprocess.CompletedProcess]]:
    """Every run of RUNS, REFUSED and the first part of RESUMED on two ranks, in one launch."""
    tmp = tmp_path_factory.mktemp("dist")
    runs = [{"name": n, "argv": _argv(n, o, tmp)} for n, o in {**RUNS, **REFUSED}.items()]
    resumed = (*RUNS["protonet-batchnorm"][:-2], "train.episodes=8", *PROTONET_ONCE)
    runs.append({"name": RESUMED, "argv": _argv(RESUMED, resumed, tmp)})
    run = str(tmp / EVALUATED)
    runs.append({"name": "eval", "argv": ["eval", "--run", run, "--episodes", "5", "--runs-root", str(tmp / "runs")]})
    return tmp, _launch(tmp, runs, timeout=240)


def _as_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train in this process as the children do: zero-gradient biases frozen, float64."""
    monkeypatch.setattr(trainer_module, "build_learner", frozen_zero_gradient_biases(trainer_module.build_learner))
    for module, name, value in in_float64(trainer_module):
        monkeypatch.setattr(module, name, value)


def _single(name: str, overrides: tuple[str, ...], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The same run on one process (in this process, with the same synthetic splits); its run folder."""
    _as_children(monkeypatch)
    cfg = load_config(None, list(overrides))
    splits = make_split("train"), make_split("val", n_classes=4, seed=1)
    previous = torch.get_num_threads()
    try:
        train(cfg, tmp / f"single-{name}", quiet=True, train_split=splits[0], val_split=splits[1],
              runs_root=tmp / "runs")  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    return tmp / f"single-{name}"


def _parameter_names(overrides: tuple[str, ...]) -> list[str]:
    """The learner's parameter names in optimizer order (Adam's state is indexed by position)."""
    cfg = load_config(None, list(overrides))
    split = make_split("train")
    learner = build_learner(cfg, cfg.train.n_way, split.image_shape, split.class_names)
    return [n for n, _ in learner.named_parameters()]


def _assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """``|got − want| ≤ 1e-9 · max|want| + 1e-12`` elementwise: agreement to rounding at the tensor's own scale."""
    bound = 1e-9 * want.abs().max().item() + 1e-12
    worst = (got - want).abs().max().item()
    assert worst <= bound, f"{what}: differs by {worst:.3g} (allowed {bound:.3g}, 1e-9 of its largest value)"


def _assert_same_training(dumped: dict, single: dict, names: list[str]) -> None:
    for key, want in single["model"].items():  # parameters and norm state (running moments, SWBN's W, counts)
        got = dumped["model"][key]
        if want.is_floating_point():
            _assert_close_to_scale(got, want, key)
        else:
            assert torch.equal(got, want), key
    assert set(dumped["optimizer"]["state"]) == set(single["optimizer"]["state"])  # the same parameters stepped
    for index, state in single["optimizer"]["state"].items():
        for k, want in state.items():
            got = dumped["optimizer"]["state"][index][k]
            if k == "step":
                assert torch.equal(got, want), names[index]
            else:
                _assert_close_to_scale(got, want, f"{names[index]} {k}")


@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_equal_one_process(two_ranks, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, procs = two_ranks
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r}:\n{p.stderr[-3000:]}"
        assert json.loads((tmp / f"{name}-rank{r}.json").read_text()) == {"exit": 0}, p.stderr[-3000:]
    single = load_checkpoint(_single(name, RUNS[name], tmp_path, monkeypatch) / "checkpoints" / "last.pt")
    names = _parameter_names(RUNS[name])
    last = load_checkpoint(tmp / name / "checkpoints" / "last.pt")
    for r in range(2):  # every rank holds the single-process model, optimizer and norm state
        dumped = torch.load(tmp / f"{name}-rank{r}.pt", weights_only=False)
        _assert_same_training(dumped, single, names)
    _assert_same_training(last, single, names)
    assert int(last["state"]["episodes_done"]) == 12
    norm_state = [k for k in single["model"] if "running" in k or k.endswith(".W") or "whiten" in k]
    assert norm_state, "the model has norm state to compare"


def test_rank_zero_alone_writes_the_run(two_ranks) -> None:
    tmp, procs = two_ranks
    run = tmp / "protonet-batchnorm"
    env = json.loads((run / "env.json").read_text())
    assert env["world_size"] == 2 and env["backend"] == "gloo"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert not (run / ".lock").exists() or not _lock_busy(run)
    assert "finished: 12/12 episodes" in procs[0].stdout and procs[1].stdout == ""
    log = (run / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 3, log  # header + one row per 4 episodes, written once


def _lock_busy(run: Path) -> bool:
    from fewshot.training.run_dir import lock_held

    return lock_held(run)


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_on_two_ranks(two_ranks, name: str) -> None:
    tmp, procs = two_ranks
    expected = {
        "indivisible": "train.meta_batch = 3 is not a multiple of the world size 2",
        "forward-update": "set learner.kwargs.norm_state_update=meta_batch",
        "maml-task-update": "has norm_state_update='task' (one norm state update per task",
    }[name]
    for r, p in enumerate(procs):
        assert json.loads((tmp / f"{name}-rank{r}.json").read_text()) == {"exit": 2}
        assert expected in p.stderr, p.stderr[-3000:]
    assert not (tmp / name / "checkpoints" / "last.pt").exists()


def test_two_rank_checkpoint_resumes_in_one_process(two_ranks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, procs = two_ranks
    assert all(json.loads((tmp / f"{RESUMED}-rank{r}.json").read_text()) == {"exit": 0} for r in range(2))
    _as_children(monkeypatch)
    cfg = load_config(None, [*RUNS["protonet-batchnorm"]])
    splits = make_split("train"), make_split("val", n_classes=4, seed=1)
    previous = torch.get_num_threads()
    try:
        train(cfg, tmp / RESUMED, resume=True, quiet=True, train_split=splits[0], val_split=splits[1],
              runs_root=tmp / "runs")  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    env = json.loads((tmp / RESUMED / "env.json").read_text())
    assert (env["world_size"], env["resumes"][-1]["world_size"], env["resumes"][-1]["backend"]) == (2, 1, None)
    single_run = _single("resumed", RUNS["protonet-batchnorm"], tmp_path, monkeypatch)
    single = load_checkpoint(single_run / "checkpoints" / "last.pt")
    names = _parameter_names(RUNS["protonet-batchnorm"])
    resumed = load_checkpoint(tmp / RESUMED / "checkpoints" / "last.pt")
    _assert_same_training(resumed, single, names)


def test_a_dead_rank_stops_the_others_with_an_error(tmp_path: Path) -> None:
    overrides = (*TINY, *STEP, *PROTONET_ONCE, "train.episodes=400")
    start = time.monotonic()
    procs = _launch(tmp_path, [{"name": "dies", "argv": _argv("dies", overrides, tmp_path), "die_after_step": [1]}],
                    timeout=120)  # fmt: skip
    assert procs[1].returncode == 3
    assert procs[0].returncode == 0  # the child script itself ends normally; the CLI's exit code is recorded
    assert json.loads((tmp_path / "dies-rank0.json").read_text()) == {"exit": 2}, procs[0].stderr[-3000:]
    assert "rank 0 of 2:" in procs[0].stderr and "another rank probably stopped" in procs[0].stderr
    assert time.monotonic() - start < 100  # the 20 s collective timeout bounds the wait; no hang
    assert (tmp_path / "dies" / "metrics.json").is_file()
    assert json.loads((tmp_path / "dies" / "metrics.json").read_text())["status"] == "failed"


def test_episode_split_covers_the_meta_batch_in_order() -> None:
    ranks = [Distributed(rank=r, world_size=4) for r in range(4)]
    assert [i for d in ranks for i in local_episodes(8, 8, d)] == list(range(8, 16))
    assert [list(split_evenly(3, Distributed(rank=r, world_size=2))) for r in range(2)] == [[0, 1], [2]]
    assert list(local_episodes(4, 4, SINGLE)) == [4, 5, 6, 7]
    with pytest.raises(ConfigError, match=r"train.meta_batch = 6 is not a multiple of the world size 4.*4 or 8"):
        check_meta_batch(6, 4)


def test_environment_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_env() is SINGLE
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DistributedError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not; launch with"):
        from_env()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(DistributedError, match="RANK must lie in 0..WORLD_SIZE-1, got RANK=2, WORLD_SIZE=2"):
        from_env()
    monkeypatch.setenv("FEWSHOT_DIST_TIMEOUT_S", "soon")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DistributedError, match="FEWSHOT_DIST_TIMEOUT_S must be a number of seconds > 0"):
        from_env()


def test_evaluation_split_across_ranks_equals_one_process(two_ranks, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, procs = two_ranks
    assert [json.loads((tmp / f"eval-rank{r}.json").read_text()) for r in range(2)] == [{"exit": 0}] * 2
    assert "accuracy:" in procs[0].stdout and "(written)" in procs[0].stdout  # rank 0 reports, as one process
    assert "accuracy:" not in procs[1].stdout
    (folder,) = [p for p in (tmp / EVALUATED / "eval").iterdir() if p.is_dir()]
    two = (folder / "episodes.csv").read_text()
    assert len(two.splitlines()) == 1 + 5
    monkeypatch.setattr(build_module, "build_split", lambda cfg, name: make_split("test", n_classes=4, seed=2))
    one = evaluate_run(tmp / EVALUATED, episodes=5, reuse=False, runs_root=tmp / "runs")
    assert one.folder == folder and (folder / "episodes.csv").read_text() == two  # the same table, exactly
