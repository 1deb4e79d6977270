"""When the normalization layers may use torch's fused kernels, and a switch that forbids them.

A layer that has a fused kernel (``BatchNorm``: ``torch.native_batch_norm``) uses it whenever its values *and*
derivatives of every order are exact where it runs, and its primitive-op composition (the "exact path",
differentiable to any order under every ``torch.func`` transform) otherwise. The decision is made per forward,
automatically, by :func:`fused_kernels_allowed`:

* plain autograd (``backward``, ``torch.autograd.grad(create_graph=True)``, gradgradcheck): fused. PyTorch's
  batch-norm backward has its own analytic derivative (``batchnorm_double_backward``), so second and higher
  derivatives are exact;
* inside ``torch.func.grad`` / ``vjp`` (MAML's inner loop, second order): fused. The grad transform runs the
  same autograd formulas; ``tests/norms/test_kernels.py`` checks that a second-order meta-gradient through the
  fused kernel equals the exact path's in float64;
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
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

__all__ = ["fused_kernels_allowed", "primitive_kernels"]

_forced_primitive = 0


def fused_kernels_allowed() -> bool:
    """True when a fused normalization kernel is exact here: not forced off and no transform but ``grad``."""
    if _forced_primitive:
        return False
    if not torch._C._are_functorch_transforms_active():
        return True
    return all(level.key() == TransformType.Grad for level in retrieve_all_functorch_interpreters())


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
