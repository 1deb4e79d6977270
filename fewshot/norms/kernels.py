"""When the normalization layers may use torch's fused kernels, and a switch that forbids them.

A layer that has a fused kernel (``BatchNorm``: ``torch.native_batch_norm``) uses it whenever its values *and*
derivatives of every order are exact where it runs, and its primitive-op composition (the "exact path",
differentiable to any order under every ``torch.func`` transform) otherwise. The decision is made per forward,
automatically, by :func:`fused_kernels_allowed`:

* plain autograd (``backward``, ``torch.autograd.grad(create_graph=True)``, gradgradcheck): fused. PyTorch's
  batch-norm backward has its own analytic derivative (``batchnorm_double_backward``), so second and higher
  derivatives are exact;
* inside ``torch.func.grad`` / ``vjp`` when nothing will differentiate the result again (first-order MAML, whose
  inner gradient is taken at detached parameters; MAML's ``predict`` under ``no_grad``): fused;
* inside ``torch.func.grad`` while a higher-order graph is being built: the exact path. That is the case when
  the layer's inputs (``x``, weight, bias), unwrapped from every functorch level, still require grad at the
  plain-autograd level (second-order MAML: the outer ``backward`` differentiates through the inner
  ``torch.func.grad``), or when ``grad`` is nested in ``grad``. Measured (float64) the fused kernel's second
  derivative there agrees with the exact path's to rounding, but issue 13 asks for the exact composition
  wherever a second derivative is taken through a transform, and second-order MAML gains nothing measurable
  from the fused kernel (its time goes to the double backward of the convolutions);
* inside ``torch.func.vmap``, ``jvp`` or ``functionalize``: the exact path. Under ``vmap`` the fused kernel's
  batching rule gives wrong second-order meta-gradients (measured: the convolution weights' meta-gradient of a
  vmapped second-order MAML step differs in the third digit), and forward-mode AD is not needed anywhere else.

``with primitive_kernels():`` forces the exact path everywhere (tests compare the two paths with it; a user who
needs results bit-identical to fewshot 0.2.0, whose layers were primitive-only, can use it too).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch._C._functorch import TransformType, get_unwrapped, is_functorch_wrapped_tensor
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

__all__ = ["fused_kernels_allowed", "plain_tensor", "primitive_kernels"]

_forced_primitive = 0


def plain_tensor(t: Tensor) -> Tensor:
    """``t`` with every functorch wrapper (grad tracking, batching) removed: the tensor plain autograd sees."""
    while is_functorch_wrapped_tensor(t):
        t = get_unwrapped(t)
    return t


def fused_kernels_allowed(*inputs: Tensor | None) -> bool:
    """True when a fused normalization kernel may run on ``inputs`` (the layer's ``x``, weight, bias; ``None`` ok).

    False when forced off (:func:`primitive_kernels`), under any functorch transform other than ``grad``, under
    nested ``grad`` levels, and under one ``grad`` level when an input still requires grad once unwrapped (a
    higher-order graph: second-order MAML). True in plain autograd and under a ``grad`` whose result nothing
    differentiates again (first-order MAML, ``no_grad`` evaluation). See the module docstring.
    """
    if _forced_primitive:
        return False
    if not torch._C._are_functorch_transforms_active():
        return True
    levels = [level.key() for level in retrieve_all_functorch_interpreters()]
    if any(key != TransformType.Grad for key in levels) or len(levels) > 1:
        return False
    return not any(t is not None and plain_tensor(t).requires_grad for t in inputs)


@contextmanager
def primitive_kernels() -> Iterator[None]:
    """Inside the block every layer takes its primitive-op (exact) path; nests, restores on exit.

    Example:
        >>> from fewshot.norms.kernels import fused_kernels_allowed, primitive_kernels
        >>> with primitive_kernels():
        ...     fused_kernels_allowed()
        False
    """
    global _forced_primitive
    _forced_primitive += 1
    try:
        yield
    finally:
        _forced_primitive -= 1
