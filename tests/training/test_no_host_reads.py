"""A training step on a device reads nothing on the host, and logs and trains exactly as the CPU path does.

The device path (:mod:`fewshot.host_reads`) is forced on the CPU with ``deferring_host_reads()``. Inside every
trainer step after the first (the warm-up, which creates Adam's state), the tensor methods that read a value on
the host (``item``, ``tolist``, ``numpy``, ``__bool__``, ``__float__``, ``__int__``, ``__index__``) raise: sampling,
the learner's ``meta_loss`` with its norm-state updates, the trainer's checks, ``backward``, Adam and the lr
schedule. Adam's step counters are exempt: torch keeps them on the CPU for a model on a GPU too (Adam without
``capturable``), so reading them never waits for the device. What this cannot see is a read inside torch's C++
operators (``torch.linalg.eigh`` checks its convergence on the host on CUDA); the CUDA test below, which runs in
``scripts/gpu_session.sh``, runs the same steps under ``torch.cuda.set_sync_debug_mode("error")`` for those.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
from collections.abc import Callable, Iterator

import pytest
import torch

from fewshot.host_reads import deferring_host_reads
from fewshot.training import train, trainer
from fewshot.training.checkpoint import load_checkpoint

READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")

CASES = {
    "protonet-batchnorm": ("protonet-batchnorm", ()),
    "protonet-swbn": ("protonet-swbn", ()),
    "maml-batchnorm": ("maml-batchnorm", ()),
    "protonet-batchnorm-meta_batch_state": (
        "protonet-batchnorm",
        ("train.meta_batch=2", "learner.kwargs={norm_state_update: meta_batch}"),
    ),
}


class HostReadError(AssertionError):
    """A tensor's value was read on the host inside a checked training step."""


@contextlib.contextmanager
def _reads_raise(monkeypatch: pytest.MonkeyPatch, allowed: Callable[[torch.Tensor], bool]) -> Iterator[None]:
    """Inside the block every read method raises HostReadError, except on tensors ``allowed`` accepts."""
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def guarded(name: str) -> Callable[..., object]:
        def method(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            if not allowed(self):
                raise HostReadError(f"Tensor.{name} on a {tuple(self.shape)} {self.dtype} tensor inside a step")
            return originals[name](self, *args, **kwargs)

        return method

    with monkeypatch.context() as m:
        for name in READS:
            m.setattr(torch.Tensor, name, guarded(name))
        yield


def _check_steps(monkeypatch: pytest.MonkeyPatch, checked: Callable[[object], contextlib.AbstractContextManager]):
    """Run every trainer step after the first inside ``checked(trainer)``; returns the list of checked episodes."""
    seen: list[int] = []
    plain_step = trainer._Trainer._step

    def step(self, start):  # noqa: ANN001, ANN202
        if not getattr(self, "_warmed_up", False):  # the trainer's first step
            self._warmed_up = True
            return plain_step(self, start)
        with checked(self):
            out = plain_step(self, start)
        seen.append(start)
        return out

    monkeypatch.setattr(trainer._Trainer, "_step", step)
    return seen


def _no_host_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[object], contextlib.AbstractContextManager]:
    def checked(t) -> contextlib.AbstractContextManager:  # noqa: ANN001
        steps = [s["step"] for s in t.optimizer.state.values() if "step" in s]  # on the CPU by torch's design
        return _reads_raise(monkeypatch, lambda x: any(x is s for s in steps))

    return checked


def _log_rows(run) -> list[dict[str, str]]:  # noqa: ANN001
    with (run / "train_log.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(f)]


def _assert_same_run(a, b) -> None:  # noqa: ANN001
    assert _log_rows(a) == _log_rows(b) and len(_log_rows(a)) >= 3
    ca, cb = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (a, b))
    assert ca["model"].keys() == cb["model"].keys()
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for pa, pb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.parametrize("case", list(CASES))
def test_a_training_step_on_the_device_path_reads_nothing_on_the_host(case, tmp_path, splits, tiny_config, monkeypatch):
    name, extra = CASES[case]
    cfg = tiny_config(extra=extra, case=name)
    kw = dict(train_split=splits[0], val_split=splits[1], runs_root=tmp_path, quiet=True)
    train(cfg, tmp_path / "cpu", **kw)
    checked = _check_steps(monkeypatch, _no_host_reads(monkeypatch))
    with deferring_host_reads():
        result = train(cfg, tmp_path / "device", **kw)
    assert result.status == "finished"
    mb = cfg.train.meta_batch
    assert checked == list(range(mb, cfg.train.episodes, mb))  # every step but the warm-up was checked
    _assert_same_run(tmp_path / "cpu", tmp_path / "device")  # the same logs and the same model, bit for bit


def test_the_read_guard_catches_the_cpu_path_reads(tmp_path, splits, tiny_config, monkeypatch):
    """The guard is not vacuous: the CPU path reads on the host in its steps (and that is free there)."""
    _check_steps(monkeypatch, _no_host_reads(monkeypatch))
    with pytest.raises(HostReadError):
        train(tiny_config(), tmp_path / "run", train_split=splits[0], val_split=splits[1], runs_root=tmp_path,
              quiet=True)  # fmt: skip


def _poison_episode(monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    """Episode ``index`` arrives with NaN images: its norm statistics and its loss are NaN."""
    to_device = trainer._to_device

    def poisoned(episode, device):  # noqa: ANN001, ANN202
        episode = to_device(episode, device)
        if episode.index == index:
            episode = dataclasses.replace(episode, support_x=torch.full_like(episode.support_x, math.nan))
        return episode

    monkeypatch.setattr(trainer, "_to_device", poisoned)


@pytest.mark.filterwarnings("ignore:normalization layer:RuntimeWarning")  # the other layers' warnings
def test_a_nan_loss_stops_training_at_the_next_read_with_the_norm_warning(tmp_path, splits, tiny_config, monkeypatch):
    _poison_episode(monkeypatch, 5)
    kw = dict(train_split=splits[0], val_split=splits[1], runs_root=tmp_path, quiet=True)
    with pytest.warns(RuntimeWarning, match=r"normalization layer 'backbone\.blocks\.0\.norm' .*this state update was"):
        with pytest.raises(FloatingPointError, match=r"training loss is nan at episodes 5\.\.5: training diverged"):
            train(tiny_config(), tmp_path / "cpu", **kw)  # the CPU path checks each step at once
    with deferring_host_reads():
        with pytest.warns(RuntimeWarning, match=r"'backbone\.blocks\.0\.norm' .*found on the device since the last"):
            with pytest.raises(FloatingPointError, match=r"training loss is nan at episodes 4\.\.7: training diverged"):
                train(tiny_config(), tmp_path / "device", **kw)  # read at the log row after episode 7
    assert not (tmp_path / "device" / "checkpoints" / "last.pt").exists()  # nothing saved from the bad steps


@contextlib.contextmanager
def _sync_debug_errors() -> Iterator[None]:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the sync-debug check needs a GPU")
@pytest.mark.parametrize("case", list(CASES))
def test_a_cuda_training_step_does_not_synchronize(case, tmp_path, splits, tiny_config, monkeypatch):
    name, extra = CASES[case]
    cfg = tiny_config("precision=fp32", extra=extra, case=name)
    checked = _check_steps(monkeypatch, lambda t: _sync_debug_errors())
    result = train(cfg, tmp_path / "run", train_split=splits[0], val_split=splits[1], runs_root=tmp_path, quiet=True,
                   device="cuda")  # fmt: skip
    assert result.status == "finished" and len(checked) == cfg.train.episodes // cfg.train.meta_batch - 1
