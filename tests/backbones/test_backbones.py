"""Backbones (fewshot.backbones): exact Conv-4 / ResNet-12 shapes and sizes, every backbone with every norm,
state threading for state-passing norm layers, DropBlock, the registry's errors."""

from __future__ import annotations

import copy
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fewshot.norms as norms
from fewshot import backbones
from fewshot.backbones._common import apply_norm
from fewshot.backbones.conv4 import ConvBlock
from fewshot.backbones.resnet12 import DropBlock
from fewshot.errors import UnknownNameError

TINY = {"conv4": {"hidden": 8}, "conv4_maml": {"hidden": 8}, "resnet12": {"widths": (8, 8, 8, 8)}}


@pytest.fixture(autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------- exact specs
@pytest.mark.parametrize(
    ("in_channels", "size", "features", "n_params"), [(1, 28, 64, 111_936), (3, 84, 1600, 113_088)]
)
def test_conv4_matches_the_protonet_reference(in_channels, size, features, n_params):
    net = backbones.create("conv4", in_channels=in_channels, norm="batchnorm")
    assert _n_params(net) == n_params
    assert net(torch.rand(2, in_channels, size, size)).shape == (2, features)
    assert net.out_features(size) == features
    assert net.out_features(105) == 2304
    block = net.blocks[0]
    assert (block.conv.kernel_size, block.conv.stride, block.conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert block.conv.bias is not None and block.pool


def test_conv4_maml_is_strided_without_pooling_and_averages_space():
    net = backbones.create("conv4_maml", in_channels=1)
    sides = []
    for block in net.blocks:
        block.register_forward_hook(lambda m, args, out: sides.append(out[0].shape[-1]))
    x = torch.rand(3, 1, 28, 28)
    out = net(x)
    assert sides == [14, 7, 4, 2]
    assert out.shape == (3, 64) and net.out_features(28) == 64 and _n_params(net) == 111_936
    torch.testing.assert_close(out, net.feature_map(x).mean(dim=(2, 3)), rtol=0, atol=0)


def test_resnet12_widths_shapes_and_parameter_count():
    net = backbones.create("resnet12", in_channels=3)
    widths, c_in, expected = (64, 160, 320, 640), 3, 0
    for w in widths:  # 3 conv3x3 (no bias) + conv1x1 shortcut + 4 norms (weight, bias)
        expected += 9 * c_in * w + 2 * 9 * w * w + c_in * w + 4 * 2 * w
        c_in = w
    assert _n_params(net) == expected == 12_424_320
    sides = []
    for block in net.blocks:
        block.register_forward_hook(lambda m, args, out: sides.append(out[0].shape[-1]))
    assert net(torch.rand(2, 3, 84, 84)).shape == (2, 640) and net.out_features(84) == 640
    assert sides == [42, 21, 10, 5]
    assert all(isinstance(b.drop, nn.Identity) for b in net.blocks)  # DropBlock off by default


# ----------------------------------------------------------------------------------------------- every norm
@pytest.mark.parametrize("norm", norms.names())
@pytest.mark.parametrize("name", backbones.names())
def test_every_backbone_with_every_norm_forwards_and_backprops(name, norm):
    torch.manual_seed(0)
    net = backbones.create(name, in_channels=3, norm=norm, **TINY[name])
    x = torch.rand(4, 3, 16, 16)
    for training in (True, False):
        net.train(training)
        out = net(x)
        assert out.shape == (4, net.out_features(16)) and torch.isfinite(out).all()
    net.train()
    net.zero_grad()
    net(x).square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("norm", norms.names())
def test_conv_block_relu_in_place_changes_no_value_gradient_or_state(norm, memory_format):
    # ConvBlock runs its ReLU in place on the norm's output: the same bits as conv -> norm -> F.relu -> pool
    torch.manual_seed(0)
    block = ConvBlock(3, 16, norm=norm, norm_kwargs=None).to(memory_format=memory_format)
    ref = copy.deepcopy(block)
    x = torch.rand(6, 3, 8, 8).contiguous(memory_format=memory_format).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, _ = block(x)
    h, _ = apply_norm(ref.norm, ref.conv(x_ref), None, ref.conv)
    y_ref = F.max_pool2d(F.relu(h), 2)
    assert torch.equal(y, y_ref)
    grad = torch.rand_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.equal(x.grad, x_ref.grad)
    for (name, p), q in zip(block.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    for (name, b), c in zip(block.named_buffers(), ref.buffers(), strict=True):
        assert torch.equal(b, c), name


@pytest.mark.parametrize("policy", ["running", "transductive"])
@pytest.mark.parametrize("norm", norms.names())
def test_no_norm_output_shares_storage_with_its_input_or_state(norm, policy):
    # What makes Conv-4's in-place ReLU safe where autograd checks nothing (eval, no_grad): the output is new memory
    layer = norms.create(norm, 16)
    x = torch.rand(6, 16, 4, 4)
    held = [x, *layer.parameters(), *layer.buffers()]
    with torch.no_grad(), norms.set_policy(layer, policy):
        for training in (True, False):
            y = layer.train(training)(x)
            ptr = y.untyped_storage().data_ptr()
            assert all(ptr != t.untyped_storage().data_ptr() for t in held), (norm, training)


@pytest.mark.parametrize("name", backbones.names())
def test_channels_last_gives_the_same_features(name):
    torch.manual_seed(0)
    net = backbones.create(name, in_channels=3, **TINY[name]).eval()
    x = torch.rand(4, 3, 16, 16)
    expected = net(x)
    net = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), expected)


# ----------------------------------------------------------------------------------------------- state threading
class _Post(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor


class _Recorder(norms.NormLayer):
    """A state-passing layer that records the priors it gets; its posterior is (index, index) tensors."""

    passes_state = True
    log: list = []

    def _init_layer(self, factory_kwargs) -> None:
        self.index = len(_Recorder.log)
        _Recorder.log.append(self)
        self.priors = []

    def forward_with_state(self, x, prior):
        self.priors.append(prior)
        return x, _Post(torch.tensor(float(self.index)), torch.tensor(float(self.index)))

    def predict(self, posterior, conv):
        return ("prior", float(posterior.mean), conv)


@pytest.fixture
def recorder(monkeypatch):
    _Recorder.log = []
    monkeypatch.setattr(norms, "create", lambda name, num_features, **kw: _Recorder(num_features))
    return _Recorder.log


def test_conv4_threads_each_posterior_through_the_next_conv(recorder):
    net = backbones.create("conv4", in_channels=1, norm="anything", hidden=4)
    net(torch.rand(2, 1, 16, 16))
    convs = [b.conv for b in net.blocks]
    assert [layer.priors for layer in recorder] == [[None]] + [[("prior", float(i), convs[i + 1])] for i in range(3)]


def test_resnet12_threads_state_through_branch_and_shortcut(recorder):
    net = backbones.create("resnet12", in_channels=1, norm="anything", widths=(2, 2, 2, 2))
    net(torch.rand(2, 1, 16, 16))
    b0, b1 = net.blocks[0], net.blocks[1]
    assert b0.norm1.priors == [None] and b0.shortcut_norm.priors == [None]
    assert b0.norm2.priors == [("prior", float(b0.norm1.index), b0.conv2)]
    assert b0.norm3.priors == [("prior", float(b0.norm2.index), b0.conv3)]
    summed = float(b0.norm3.index + b0.shortcut_norm.index)  # block output: moments of the sum (independent)
    assert b1.norm1.priors == [("prior", summed, b1.conv1)]
    assert b1.shortcut_norm.priors == [("prior", summed, b1.shortcut_conv)]


@pytest.mark.skipif("kalmannorm" not in norms.names(), reason="kalmannorm is not registered")
def test_kalmannorm_prior_changes_the_features_unless_p_rate_is_zero():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16)

    def features(p_rate: float, threaded: bool) -> torch.Tensor:
        torch.manual_seed(0)
        net = backbones.create("conv4", in_channels=1, norm="kalmannorm", norm_kwargs={"p_rate": p_rate}, hidden=8)
        if not threaded:
            for block in net.blocks:
                type(block.norm).passes_state = False  # plain BN use of every layer
        try:
            return net(x)
        finally:
            type(net.blocks[0].norm).passes_state = True

    assert (features(0.5, True) - features(0.5, False)).abs().max() > 1e-3
    torch.testing.assert_close(features(0.0, True), features(0.0, False))


# ----------------------------------------------------------------------------------------------- DropBlock
def test_dropblock_drops_squares_in_training_only():
    torch.manual_seed(0)
    layer = DropBlock(0.2, 3)
    x = torch.ones(8, 4, 10, 10)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    dropped = (y == 0).double().mean().item()
    assert 0.1 < dropped < 0.3
    assert torch.allclose(y[y > 0], torch.tensor(1.0 / (1.0 - dropped), dtype=y.dtype))
    net = backbones.create("resnet12", in_channels=1, widths=(4, 4, 4, 4), drop_rate=0.1)
    assert [type(b.drop).__name__ for b in net.blocks] == ["Dropout", "Dropout", "DropBlock", "DropBlock"]
    with pytest.raises(ValueError, match="block_size must be a positive odd int"):
        DropBlock(0.1, 4)


# ----------------------------------------------------------------------------------------------- registry, errors
def test_registry_names_aliases_and_errors():
    assert backbones.names() == ["conv4", "conv4_maml", "resnet12"]
    assert type(backbones.create("Conv64F")) is type(backbones.create("conv4"))
    with pytest.raises(UnknownNameError, match="did you mean 'resnet12'"):
        backbones.create("resnet-13")
    with pytest.raises(TypeError, match="unknown option.*'hiden'.*hidden"):
        backbones.create("conv4", hiden=32)
    with pytest.raises(UnknownNameError, match="swbn"):
        backbones.create("conv4", norm="swbm")
    net = backbones.create("conv4", in_channels=1)
    with pytest.raises(ValueError, match="at least 16x16 pixels.*got image_size=8"):
        net.out_features(8)
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 1, H, W\), got \(2, 3, 28, 28\)"):
        net(torch.rand(2, 3, 28, 28))
