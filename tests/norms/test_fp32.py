"""Norm layers under bf16 autocast (config ``precision: bf16``) keep statistics and state in float32."""

from __future__ import annotations

import pytest
import torch

from fewshot import norms
from fewshot.norms.fp32 import fp32_forward

NAMES = norms.names()


def test_fp32_forward_turns_autocast_off_and_casts_the_input():
    seen = {}

    class Probe(torch.nn.Module):
        @fp32_forward
        def forward(self, x):
            seen["dtype"], seen["autocast"] = x.dtype, torch.is_autocast_enabled("cpu")
            return x @ x.T

    x = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Probe()(x.bfloat16())
    assert seen == {"dtype": torch.float32, "autocast": False} and out.dtype == torch.float32
    out = Probe()(x)
    assert seen == {"dtype": torch.float32, "autocast": False}
    torch.testing.assert_close(out, x @ x.T, rtol=0, atol=0)


def test_without_autocast_the_forward_is_unchanged():
    torch.manual_seed(0)
    layer, twin = norms.create("swbn", 8).train(), norms.create("swbn", 8).train()
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(16, 8, 4, 4)
    torch.testing.assert_close(layer(x), type(layer).forward.__wrapped__(twin, x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_keeps_statistics_and_state_fp32(name):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    layer = norms.create(name, 16).train()
    reference = norms.create(name, 16).train()
    reference.load_state_dict(layer.state_dict())
    x = torch.rand(20, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        assert h.dtype == torch.bfloat16
        y = layer(h)
    assert y.dtype == torch.float32
    for key, value in layer.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
    # the layer saw the bf16 activations cast to fp32: the same as a plain fp32 layer fed those values
    y_ref = reference(h.float())
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for (key, a), b in zip(layer.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    y.sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
