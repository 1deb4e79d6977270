"""The device path of the norm layers' state guards: no host read per update, the CPU path's results.

On a device (forced here on the CPU with :func:`fewshot.host_reads.deferring_host_reads`), a state update with a
NaN or infinity is skipped by ``torch.where`` and counted on the device; the count and the one warning naming the
layer come at the next :func:`fewshot.norms.read_device_checks` (or a read of ``skipped_updates``). SWBN leaves the
cap on ``W``'s eigenvalues to :func:`fewshot.norms.enforce_state_bounds`. Where nothing is skipped and the cap does
not bind, the state is bit for bit the CPU path's.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fewshot.norms as norms
from fewshot.host_reads import deferring_host_reads
from fewshot.norms import NORM_LAYERS, create
from fewshot.norms.kalmannorm import Moments

STATEFUL = [n for n in NORM_LAYERS.names() if create(n, 8).track_running_stats]


def _layer(name: str):  # noqa: ANN202
    torch.manual_seed(0)
    layer = create(name, 8, **({"group_size": 4} if name in ("swbn", "dbn", "iternorm") else {})).train()
    layer.label = "backbone.block2.norm"
    return layer


def _forward(layer, x, name):  # noqa: ANN001, ANN202
    if name == "kalmannorm":  # also thread a prior, as backbones do
        return layer.forward_with_state(x, Moments(torch.zeros(8), torch.ones(8)))[0]
    return layer(x)


def _state(layer) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {k: getattr(layer, k).clone() for k in (*layer.state_buffers, "num_batches_tracked")}


def _batches(bad: float) -> list[torch.Tensor]:
    """Two finite batches, two poisoned ones, two finite ones."""
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(6, 8, 3, 3, generator=g) for _ in range(6)]
    for x in xs[2:4]:
        x[2, 5, 1, 1] = bad
    return xs


@pytest.mark.parametrize("name", STATEFUL)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_the_device_guard_keeps_the_state_and_warns_once_at_the_read(name, bad):
    cpu, dev = _layer(name), _layer(name)
    xs = _batches(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU path warns at the first poisoned batch, as before
        for x in xs[:4]:
            _forward(cpu, x, name)
    with deferring_host_reads():
        for x in xs[:2]:
            _forward(dev, x, name)
        before = _state(dev)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing is reported inside the updates: that would read the device
            for x in xs[2:4]:
                _forward(dev, x, name)
        for key, value in before.items():
            assert torch.equal(getattr(dev, key), value), key  # both poisoned updates skipped, bit for bit
        with pytest.warns(RuntimeWarning, match=r"normalization layer 'backbone.block2.norm' .*NaN or infinity") as rec:
            norms.read_device_checks(dev)
        assert len(rec) == 1 and "2 state updates were skipped" in str(rec[0].message)
        assert dev.skipped_updates == 2 == cpu.skipped_updates
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # later skips are counted, not reported again
            _forward(dev, xs[3], name)
            norms.read_device_checks(dev)
        assert dev.skipped_updates == 3
        for x in xs[4:]:
            _forward(dev, x, name)
    for x in xs[4:]:
        _forward(cpu, x, name)
    for key in before:
        assert torch.equal(getattr(dev, key), getattr(cpu, key)), key  # the CPU path's state, bit for bit
    assert int(dev.num_batches_tracked) == 4


def test_reading_skipped_updates_reads_the_device_count_and_names_the_produced_state():
    """Finite statistics but a whitening rate so large that W overflows: the previous state is kept."""
    with pytest.warns(UserWarning, match="stability bound"):
        layer = create("swbn", 4, group_size=4, alpha=3e38).train()
    before = _state(layer)
    x = torch.randn(32, 1).repeat(1, 4) + 0.01 * torch.randn(32, 4)  # strongly correlated channels
    with deferring_host_reads():
        layer(x)
        for key, value in before.items():
            assert torch.equal(getattr(layer, key), value), key
        with pytest.warns(RuntimeWarning, match=r"SWBN\(4\): NaN or infinity in the state it would produce; this"):
            assert layer.skipped_updates == 1
        assert layer.pending_device_checks() is None


def _rank_deficient(n: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, 2, generator=g)
    return torch.cat([a, a], dim=1)  # channels 2, 3 repeat 0, 1: W grows along the two null directions


def test_swbn_defers_its_cap_to_enforce_state_bounds_on_a_device():
    """Without the cap W grows past float32 (the CPU test above); on a device it is bounded until the clamp."""
    alpha, steps = 0.1, 100  # (1 + alpha)^100 ~ 1.4e4: far past the cap 1/sqrt(eps) = 316
    cpu, dev = (create("swbn", 4, group_size=4, alpha=alpha).train() for _ in range(2))
    cap = cpu.eps**-0.5
    g = torch.Generator().manual_seed(0)
    xs = [_rank_deficient(16, g) for _ in range(steps)]
    for x in xs:
        cpu(x)
    with deferring_host_reads():
        for x in xs:
            dev(x)
        w = dev.whitening_matrix
        assert torch.linalg.eigvalsh(w).abs().max() > 1.5 * cap  # not clamped by the updates ...
        assert torch.linalg.matrix_norm(w).max() <= 2 * cap * (1 + 1e-6)  # ... but within sqrt(g) * cap
        assert dev.skipped_updates == 0
        norms.enforce_state_bounds(dev)
    capped = torch.linalg.eigvalsh(dev.whitening_matrix).abs().max()
    assert 0.99 * cap <= capped <= cap * (1 + 1e-5)
    assert torch.linalg.eigvalsh(cpu.whitening_matrix).abs().max() <= cap * (1 + 1e-5)  # the CPU path, every update
    before = dev.whitening_matrix.clone()
    norms.enforce_state_bounds(dev)  # outside the forced block: the CPU path capped as it went, nothing to do
    assert torch.equal(dev.whitening_matrix, before)


def test_swbn_on_a_device_equals_the_cpu_path_bit_for_bit_where_the_cap_does_not_bind():
    torch.manual_seed(1)
    mix = torch.eye(8) + 0.3 * torch.randn(8, 8)  # correlated, well-conditioned channels
    xs = [torch.randn(32, 8) @ mix for _ in range(60)]
    cpu, dev = (create("swbn", 8, group_size=4, alpha=0.05).train() for _ in range(2))
    for x in xs:
        cpu(x)
    with deferring_host_reads():
        for x in xs:
            dev(x)
        norms.enforce_state_bounds(dev)  # the cap does not bind: W is left as it is
    for key in ("running_mean", "running_var", "whitening_matrix", "num_batches_tracked"):
        assert torch.equal(getattr(dev, key), getattr(cpu, key)), key
