"""SWBN's compiled row kernel (fewshot.norms.swbn_rows): values, gradients, statistics, and when SWBN uses it.

The reference is autograd through ``F.batch_norm`` followed by ``apply_group_matrix`` with ``diag(γ) W`` (W held
fixed), in float64; float32 inputs are compared with the float64 reference of the same values. The float32 cases
use g = 16 (the vectorized path) and more rows than one chunk (256) and than a multiple of the row tile (4); the
float64 cases use g = 3 (the scalar path).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from fewshot.norms import native, swbn_rows
from fewshot.norms import whitening_math as WM
from fewshot.norms.kernels import primitive_kernels
from fewshot.norms.swbn import SWBN

EPS = 1e-5
pytestmark = pytest.mark.skipif(native.load("swbn_rows") is None, reason="no C compiler: the compiled kernel is off")

CASES = {
    # id: (dtype, shape, group size, tolerance against the float64 reference)
    "f64-g3-channels_last": (torch.float64, (9, 6, 6, 5), 3, 1e-11),
    "f64-g3-2d": (torch.float64, (300, 6), 3, 1e-11),
    "f32-g16-channels_last": (torch.float32, (7, 32, 7, 9), 16, 3e-5),
    "f32-g16-2d": (torch.float32, (263, 32), 16, 3e-5),
    "f32-g8-channels_last": (torch.float32, (7, 32, 7, 9), 8, 3e-5),  # the scalar path in float32
    "f64-g16-2d": (torch.float64, (263, 32), 16, 1e-11),  # float64 with g = 16: scalar, not the vector path
}


def _inputs(dtype, shape, g, affine=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(*shape, generator=gen, dtype=torch.float64) * 2 + 0.5).to(dtype)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.eye(g, dtype=torch.float64) + 0.2 * torch.randn(c // g, g, g, generator=gen, dtype=torch.float64)
    weight = (1 + 0.3 * torch.randn(c, generator=gen, dtype=torch.float64)).to(dtype) if affine else None
    bias = (0.3 * torch.randn(c, generator=gen, dtype=torch.float64)).to(dtype) if affine else None
    gy = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
    return x, w.to(dtype), weight, bias, gy


def _reference(x, w, weight, bias):
    groups, g, _ = w.shape
    a = w if weight is None else w * weight.reshape(groups, g, 1)
    return WM.apply_group_matrix(F.batch_norm(x, None, None, training=True, eps=EPS), a, bias)


def _rows(x, w, weight, bias):
    mean, _, invstd, _ = swbn_rows.batch_moments(x, w.shape[-1], EPS, with_corr=False)
    return swbn_rows.standardize_whiten_rows(x, mean, invstd, w, weight, bias, EPS)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_rows_kernel_equals_autograd_through_the_composition(case, affine, monkeypatch):
    dtype, shape, g, tol = CASES[case]
    recomputed = []
    original = swbn_rows._differentiable_backward
    monkeypatch.setattr(swbn_rows, "_differentiable_backward", lambda *a: recomputed.append(1) or original(*a))
    x, w, weight, bias, gy = _inputs(dtype, shape, g, affine)
    assert swbn_rows.rows_kernel_usable(x, g)
    leaves = [t.requires_grad_() for t in (x, weight, bias) if t is not None]
    got_y = _rows(x, w, weight, bias)
    got = torch.autograd.grad(got_y, leaves, gy)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_x, ref_weight, ref_bias = ref_leaves[0], *(ref_leaves[1:] if affine else (None, None))
    want_y = _reference(ref_x, w.double(), ref_weight, ref_bias)
    want = torch.autograd.grad(want_y, ref_leaves, gy.double())
    assert not recomputed  # first order: the closed form ran
    assert got_y.dtype == dtype and got_y.shape == x.shape
    if x.dim() == 4:
        assert got_y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got_y.double(), want_y, rtol=tol, atol=tol)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("case", CASES)
def test_batch_moments_are_the_batch_statistics_and_the_gram_of_the_standardized_input(case):
    dtype, shape, g, tol = CASES[case]
    x, *_ = _inputs(dtype, shape, g)
    mean, var, invstd, corr = swbn_rows.batch_moments(x, g, EPS, with_corr=True)
    ref = x.double()
    dims = [d for d in range(ref.dim()) if d != 1]
    want_var = ref.var(dims, unbiased=False)
    torch.testing.assert_close(mean.double(), ref.mean(dims), rtol=tol, atol=tol)
    torch.testing.assert_close(var.double(), want_var, rtol=tol, atol=tol)
    torch.testing.assert_close(invstd.double(), (want_var + EPS).rsqrt(), rtol=tol, atol=tol)
    x_hat = F.batch_norm(ref, None, None, training=True, eps=EPS)
    torch.testing.assert_close(corr.double(), WM.group_second_moment(x_hat, g), rtol=tol, atol=tol)
    assert corr.dtype == dtype and corr.shape == (shape[1] // g, g, g)
    assert swbn_rows.batch_moments(x, g, EPS, with_corr=False)[3] is None


@pytest.mark.parametrize("shape", [(7, 32, 7, 9), (17003, 32)], ids=["one-chunk-per-slot", "two-chunks-per-slot"])
def test_results_are_the_same_bits_on_one_and_two_threads(shape):
    x, w, weight, bias, gy = _inputs(torch.float32, shape, 16)
    x.requires_grad_()

    def run():
        moments = swbn_rows.batch_moments(x, 16, EPS, with_corr=True)
        y = swbn_rows.standardize_whiten_rows(x, moments[0], moments[2], w, weight, bias, EPS)
        return (y, *torch.autograd.grad(y, x, gy), moments[3])

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, second = run(), run()
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, second, single, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)  # fixed ranges of rows are summed in order, whatever the threads


def test_rows_kernel_runs_inside_torch_func_grad_at_detached_parameters(monkeypatch):
    recomputed = []
    original = swbn_rows._differentiable_backward
    monkeypatch.setattr(swbn_rows, "_differentiable_backward", lambda *a: recomputed.append(1) or original(*a))
    x, w, weight, bias, gy = _inputs(torch.float64, (9, 6, 6, 5), 3)

    def loss(p, f):
        return (f(x, w, p["weight"], p["bias"]) * gy).sum()

    got = grad(loss)({"weight": weight, "bias": bias}, _rows)
    want = grad(loss)({"weight": weight, "bias": bias}, _reference)
    assert not recomputed
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12)


def test_input_gradient_inside_torch_func_grad_equals_the_reference():
    """``dx`` written by the kernel into a tensor created inside the transform reaches the conv weight before it."""
    x, w, weight, bias, gy = _inputs(torch.float64, (9, 3, 6, 5), 3)
    conv = torch.randn(6, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    gy = torch.randn(9, 6, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    def loss(k, f):
        h = F.conv2d(x, k, padding=1).contiguous(memory_format=torch.channels_last)
        return (f(h, torch.eye(3, dtype=h.dtype).expand(2, 3, 3) + 0.1, None, None) * gy).sum()

    torch.testing.assert_close(grad(loss)(conv, _rows), grad(loss)(conv, _reference), rtol=1e-10, atol=1e-12)


def test_second_derivatives_are_exact():
    x, w, weight, bias, _ = _inputs(torch.float64, (4, 6, 3, 2), 3)
    x, weight, bias = (t.requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradgradcheck(lambda *a: _rows(a[0], w, a[1], a[2]), (x, weight, bias))


def test_w_gets_no_gradient():
    x, w, weight, bias, gy = _inputs(torch.float64, (9, 6, 6, 5), 3)
    w.requires_grad_()
    x.requires_grad_()
    _rows(x, w, weight, bias).backward(gy)
    assert w.grad is None and x.grad is not None


@pytest.mark.parametrize(
    ("make", "usable"),
    [
        (lambda: torch.randn(4, 32, 5, 5).contiguous(memory_format=torch.channels_last), True),
        (lambda: torch.randn(4, 32), True),
        (lambda: torch.randn(4, 32, 5, 5), False),  # NCHW: channels are not contiguous per position
        (lambda: torch.randn(4, 64)[:, ::2], False),  # strided columns
        (lambda: torch.randn(4, 32).half(), False),
        (lambda: torch.randn(4, 30), False),  # 30 channels are not groups of 16
    ],
    ids=["channels_last", "2d", "nchw", "strided", "float16", "indivisible"],
)
def test_the_kernel_is_used_only_on_row_layout_cpu_float_input(make, usable):
    x = make()
    assert swbn_rows.rows_kernel_usable(x, 16) is usable
    with native.disabled():
        assert not swbn_rows.rows_kernel_usable(x, 16)


@pytest.mark.parametrize("policy", ["running", "transductive"])
def test_swbn_layer_on_the_kernel_equals_the_torch_fused_path(policy, fused_calls):
    """Outputs, gradients and the state update (W included) agree with the path taken when the kernel is off."""
    torch.manual_seed(0)
    layer = SWBN(32, group_size=16, alpha=0.05, policy=policy).train()
    twin = copy.deepcopy(layer)
    xs = [(torch.randn(6, 32, 5, 7) * 1.5 + 0.3).contiguous(memory_format=torch.channels_last) for _ in range(2)]

    def run(mod):
        inputs = [x.clone().requires_grad_() for x in xs]
        outs = [mod(x) for x in inputs]
        sum((o * o.detach().sin()).sum() for o in outs).backward()
        return outs, [x.grad for x in inputs], [mod.weight.grad, mod.bias.grad], dict(mod.named_buffers())

    got = run(layer)
    rows_forwards = [c for c in fused_calls if c.shape == (6, 32, 5, 7)]
    with native.disabled():
        want = run(twin)
    assert len(rows_forwards) == 2 and len(fused_calls) == 4  # the kernel, then torch's batch norm
    for a, b in zip([*got[0], *got[1], *got[2]], [*want[0], *want[1], *want[2]], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    for key in got[3]:
        torch.testing.assert_close(got[3][key], want[3][key], rtol=2e-5, atol=2e-5, msg=key)
    assert not torch.equal(layer.whitening_matrix, torch.eye(16).expand(2, 16, 16))  # W was updated


def test_swbn_layer_takes_the_exact_path_when_forced(fused_calls):
    layer = SWBN(32, group_size=16).train()
    x = torch.randn(6, 32, 5, 7).contiguous(memory_format=torch.channels_last)
    with primitive_kernels():
        layer(x)
    assert not fused_calls


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: swbn_rows.batch_moments(torch.randn(4, 24), 16, EPS, True), r"C a multiple of the group size 16"),
        (lambda: swbn_rows.batch_moments(torch.randn(4, 32, 5, 5), 16, EPS, True), r"channels_last .* strides"),
        (lambda: swbn_rows.batch_moments(torch.randn(4, 32).half(), 16, EPS, True), r"float32/float64"),
        (lambda: _rows_with(w=torch.eye(16).expand(1, 16, 16)), r"W must be \(2, 16, 16\) for 32 channels"),
        (lambda: _rows_with(mean=torch.zeros(32, dtype=torch.float64)), r"mean must be a contiguous \(32,\)"),
        (lambda: _rows_with(invstd=torch.ones(31)), r"invstd must be a contiguous \(32,\) torch.float32"),
    ],
    ids=["indivisible", "nchw", "float16", "w-shape", "mean-dtype", "invstd-size"],
)
def test_inputs_the_kernel_cannot_read_are_refused_before_it_runs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _rows_with(**change):
    x = torch.randn(6, 32)
    args = {"mean": x.mean(0), "invstd": torch.ones(32), "w": torch.eye(16).expand(2, 16, 16)} | change
    return swbn_rows.standardize_whiten_rows(x, args["mean"], args["invstd"], args["w"], None, None, EPS)
