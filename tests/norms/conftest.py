"""Fixtures for the normalization-layer tests: seeded tiny inputs, small models and buffer snapshots.

Helpers are fixtures that return functions, so test modules never import from this file.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from fewshot.norms import NormLayer, create


def _make_x(
    *shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, scale: float = 2.0, shift: float = 0.5
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


def _randomize_affine(layer: nn.Module, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if getattr(layer, "weight", None) is not None:
            layer.weight.copy_(1 + 0.3 * torch.randn(layer.weight.shape, generator=g, dtype=torch.float64))
            layer.bias.copy_(0.3 * torch.randn(layer.bias.shape, generator=g, dtype=torch.float64))
    return layer


@pytest.fixture
def make_x() -> Callable[..., torch.Tensor]:
    """``make_x(*shape, dtype=float32, seed=0, scale=2.0, shift=0.5)``: a seeded input, not standardized."""
    return _make_x


@pytest.fixture
def randomize_affine() -> Callable[..., nn.Module]:
    """``randomize_affine(layer, seed=1)``: non-trivial weight/bias (in place), so ones/zeros cannot hide bugs."""
    return _randomize_affine


@pytest.fixture
def make_layer() -> Callable[..., NormLayer]:
    """``make_layer(name, num_features, **kwargs)``: ``create`` plus randomized affine parameters."""

    def make(name: str, num_features: int, **kwargs) -> NormLayer:
        return _randomize_affine(create(name, num_features, **kwargs))

    return make


@pytest.fixture
def tiny_net() -> Callable[..., nn.Sequential]:
    """``tiny_net(norm, channels, n_way=3)``: Conv(1→C) → norm → ReLU → global mean → Linear(C→n_way)."""

    def make(norm: nn.Module, channels: int, n_way: int = 3) -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            norm,
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, n_way),
        )

    return make


@pytest.fixture
def snapshot() -> Callable[[nn.Module], dict[str, torch.Tensor]]:
    """``snapshot(module)``: clones of every buffer, by name."""
    return lambda module: {k: v.clone() for k, v in module.named_buffers()}


@pytest.fixture
def assert_buffers_equal() -> Callable[[nn.Module, dict[str, torch.Tensor]], None]:
    """``assert_buffers_equal(module, snapshot)``: every buffer bitwise equal to the snapshot."""

    def check(module: nn.Module, snap: dict[str, torch.Tensor]) -> None:
        now = dict(module.named_buffers())
        assert now.keys() == snap.keys()
        changed = [k for k, v in snap.items() if not torch.equal(now[k], v)]
        assert not changed, f"buffers changed: {changed}"

    return check
