"""SWBN's closed-form backward (fewshot.norms.swbn_kernel) and the cross moments it uses.

The reference everywhere is autograd through the differentiable composition ``F.batch_norm`` followed by
``apply_group_matrix`` with ``diag(γ) W`` (W held fixed), in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from fewshot.norms import swbn_kernel
from fewshot.norms import whitening_math as WM

F64 = torch.float64
EPS = 1e-5


def _inputs(layout: str, affine: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (5, 6) if layout == "2d" else (5, 6, 3, 4)
    x = torch.randn(*shape, generator=g, dtype=F64) * 2 + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.eye(3, dtype=F64) + 0.2 * torch.randn(2, 3, 3, generator=g, dtype=F64)
    weight = 1 + 0.3 * torch.randn(6, generator=g, dtype=F64) if affine else None
    bias = 0.3 * torch.randn(6, generator=g, dtype=F64) if affine else None
    gy = torch.randn(*shape, generator=g, dtype=F64)
    return x, w, weight, bias, gy


def _reference(x, w, weight, bias):
    a = w if weight is None else w * weight.reshape(2, 3, 1)
    return WM.apply_group_matrix(F.batch_norm(x, None, None, training=True, eps=EPS), a, bias)


def _fused(x, w, weight, bias):
    with torch.no_grad():
        x_hat, _, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, EPS)
    return swbn_kernel.standardize_then_group_matrix(x, x_hat, invstd, w, weight, bias, EPS)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "2d"])
def test_closed_form_backward_equals_autograd_through_the_composition(layout, affine, monkeypatch):
    recomputed = []
    original = swbn_kernel._differentiable_backward
    monkeypatch.setattr(swbn_kernel, "_differentiable_backward", lambda *a: recomputed.append(1) or original(*a))
    x, w, weight, bias, gy = _inputs(layout, affine)
    leaves = [t.requires_grad_() for t in (x, weight, bias) if t is not None]
    got_y = _fused(x, w, weight, bias)
    got = torch.autograd.grad(got_y, leaves, gy)
    want_y = _reference(x, w, weight, bias)
    want = torch.autograd.grad(want_y, leaves, gy)
    torch.testing.assert_close(got_y, want_y, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not recomputed  # first order: the closed form ran
    if layout == "channels_last":
        assert got_y.is_contiguous(memory_format=torch.channels_last)


def test_closed_form_runs_inside_torch_func_grad_at_detached_parameters(monkeypatch):
    recomputed = []
    original = swbn_kernel._differentiable_backward
    monkeypatch.setattr(swbn_kernel, "_differentiable_backward", lambda *a: recomputed.append(1) or original(*a))
    x, w, weight, bias, gy = _inputs("nchw")

    def loss(p, f):
        return (f(x, w, p["weight"], p["bias"]) * gy).sum()

    got = grad(loss)({"weight": weight, "bias": bias}, _fused)
    want = grad(loss)({"weight": weight, "bias": bias}, _reference)
    assert not recomputed
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_second_derivatives_are_exact(layout):
    x, w, weight, bias, _ = _inputs(layout)
    x, weight, bias = (t.requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradgradcheck(lambda *a: _fused(a[0], w, a[1], a[2]), (x, weight, bias))


def test_w_gets_no_gradient():
    x, w, weight, bias, gy = _inputs("nchw")
    w.requires_grad_()
    x.requires_grad_()
    _fused(x, w, weight, bias).backward(gy)
    assert w.grad is None and x.grad is not None


@pytest.mark.parametrize("g", [2, 3, 6])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "2d", "sliced"])
def test_cross_moment_is_the_block_of_the_full_cross_product(g, layout):
    gen = torch.Generator().manual_seed(3)
    x, y = (torch.randn(4, 6, 3, 6, generator=gen, dtype=F64) for _ in range(2))
    if layout == "channels_last":
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    elif layout == "2d":
        x, y = x[:, :, 0, 0], y[:, :, 0, 0]
    elif layout == "sliced":
        x, y = x[..., ::2], y[..., ::2]
    rows_x, rows_y = (t.movedim(1, -1).reshape(-1, 6) for t in (x, y))
    full = rows_x.T @ rows_y / rows_x.shape[0]
    want = torch.stack([full[i : i + g, i : i + g] for i in range(0, 6, g)])
    torch.testing.assert_close(WM.group_second_moment(x, g, y), want, rtol=0, atol=1e-13)
    torch.testing.assert_close(WM.group_second_moment(x, g, x), WM.group_second_moment(x, g), rtol=0, atol=1e-13)


def test_cross_moment_refuses_operands_of_different_shapes():
    with pytest.raises(ValueError, match=r"y must have x's shape \(4, 6\), got \(4, 3\)"):
        WM.group_second_moment(torch.ones(4, 6), 3, torch.ones(4, 3))
