"""Conv-4 backbones: ``conv4`` (Prototypical Networks) and ``conv4_maml`` (MAML's strided Omniglot variant).

``conv4`` is the four-block "Conv64F" network of Snell, Swersky, Zemel, "Prototypical Networks for Few-shot
Learning", NeurIPS 2017, arXiv 1703.05175 (``protonets/models/few_shot.py``; after Vinyals et al., "Matching
Networks for One Shot Learning", NeurIPS 2016, arXiv 1606.04080): four times [Conv2d 3×3, padding 1, with bias →
norm → ReLU → MaxPool2d(2)], flattened. 28×28 inputs give 64 features, 84×84 give 1600; with BatchNorm it has
111,936 parameters for 1 input channel and 113,088 for 3.

``conv4_maml`` is the Omniglot network of Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation
of Deep Networks", ICML 2017, arXiv 1703.03400 (``cbfinn/maml``): four times [Conv2d 3×3, stride 2, padding 1 →
norm → ReLU], no pooling (28→14→7→4→2), then the spatial mean: 64 features whatever the image size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.backbones._common import apply_norm, check_image_size, make_norm
from fewshot.backbones._registry import BACKBONES

__all__ = ["ConvBlock", "Conv4", "Conv4MAML"]


class ConvBlock(nn.Module):
    """Conv2d 3×3 (padding 1, bias) → norm → ReLU → optional MaxPool2d(2).

    The ReLU runs in place on the norm's output: no norm layer's backward needs its own output (they save their
    input and statistics; autograd's version check would raise if one did), so this saves one activation-sized
    write and read per block with the same values and gradients bit for bit (docs/performance.md).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm: normalization layer registry name (see ``fewshot.norms.names()``).
        norm_kwargs: keyword arguments for the norm layer.
        stride: convolution stride (1 for Conv-4, 2 for the MAML variant).
        pool: apply ``MaxPool2d(2)`` after the activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        norm: str,
        norm_kwargs: Mapping[str, Any] | None,
        stride: int = 1,
        pool: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=True)
        self.norm = make_norm(norm, out_channels, norm_kwargs)
        self.pool = pool

    def forward(self, x: Tensor, posterior: Any = None) -> tuple[Tensor, Any]:
        """Map ``x`` (N, C_in, H, W) to ``(y, posterior)``; ``y`` is (N, C_out, H', W')."""
        h = self.conv(x)
        h, posterior = apply_norm(self.norm, h, posterior, self.conv)
        h = F.relu(h, inplace=True)
        if self.pool:
            h = F.max_pool2d(h, 2)
        return h, posterior


class _Conv4Base(nn.Module):
    stride: int = 1
    pool: bool = True

    def __init__(
        self,
        in_channels: int = 1,
        *,
        hidden: int = 64,
        norm: str = "batchnorm",
        norm_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("in_channels", in_channels), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}: {key} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.hidden = hidden
        widths = (in_channels, hidden, hidden, hidden, hidden)
        self.blocks = nn.ModuleList(
            ConvBlock(widths[i], widths[i + 1], norm=norm, norm_kwargs=norm_kwargs, stride=self.stride, pool=self.pool)
            for i in range(4)
        )

    def feature_map(self, x: Tensor) -> Tensor:
        """The last block's output, (N, hidden, H', W'), for ``x`` (N, in_channels, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (N, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}; build the backbone with in_channels={x.shape[1] if x.dim() == 4 else '?'}"
            )
        posterior = None
        for block in self.blocks:
            x, posterior = block(x, posterior)
        return x


@BACKBONES.register("conv4", "conv64f")
class Conv4(_Conv4Base):
    """Conv-4 of Prototypical Networks (Snell et al., NeurIPS 2017, arXiv 1703.05175): 4 × [conv, norm, ReLU, pool].

    Args:
        in_channels: image channels (1 for Omniglot, 3 for mini-ImageNet).
        hidden: channels of every block (64 in the paper).
        norm: normalization layer registry name.
        norm_kwargs: keyword arguments for every norm layer.

    Shapes:
        input ``(N, in_channels, H, W)`` with ``H, W >= 16``; output ``(N, hidden * (H // 16) * (W // 16))``
        (the flattened ``(hidden, H', W')`` map, floor-halved four times).

    Example:
        >>> import torch
        >>> net = Conv4(1, norm="batchnorm")
        >>> net(torch.rand(10, 1, 28, 28)).shape, net.out_features(28)
        (torch.Size([10, 64]), 64)
    """

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, out_features)`` of images ``x`` (N, in_channels, H, W)."""
        return self.feature_map(x).flatten(1)

    def out_features(self, image_size: int) -> int:
        """Feature size for square ``image_size``×``image_size`` inputs (64 for 28, 1600 for 84)."""
        side = check_image_size(type(self).__name__, image_size, 16)
        for _ in range(4):
            side //= 2
        return self.hidden * side * side


@BACKBONES.register("conv4_maml")
class Conv4MAML(_Conv4Base):
    """MAML's Omniglot Conv-4 (Finn et al., ICML 2017, arXiv 1703.03400): stride-2 convs, no pooling, spatial mean.

    Args:
        in_channels: image channels.
        hidden: channels of every block (64 in the paper for Omniglot).
        norm: normalization layer registry name.
        norm_kwargs: keyword arguments for every norm layer.

    Shapes:
        input ``(N, in_channels, H, W)``; feature maps 28→14→7→4→2; output ``(N, hidden)``.

    Example:
        >>> import torch
        >>> net = Conv4MAML(1)
        >>> net(torch.rand(5, 1, 28, 28)).shape
        torch.Size([5, 64])
    """

    stride = 2
    pool = False

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, hidden)``: the spatial mean of the last block's map, for ``x`` (N, in_channels, H, W)."""
        return self.feature_map(x).mean(dim=(2, 3))

    def out_features(self, image_size: int) -> int:
        """Feature size (``hidden``, independent of the image size)."""
        check_image_size(type(self).__name__, image_size, 1)
        return self.hidden
