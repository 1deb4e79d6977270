"""ResNet-12, the few-shot residual backbone of TADAM and MetaOptNet, with optional DropBlock.

Oreshkin, Rodríguez López, Lacoste, "TADAM: Task dependent adaptive metric for improved few-shot learning",
NeurIPS 2018, arXiv 1805.10123; Lee, Maji, Ravichandran, Soatto, "Meta-Learning with Differentiable Convex
Optimization" (MetaOptNet), CVPR 2019, arXiv 1904.03758. Four residual blocks of widths 64-160-320-640; each block
is three [Conv2d 3×3 (no bias) → norm] with LeakyReLU(0.1) between them, a [Conv2d 1×1 → norm] shortcut, the sum,
LeakyReLU(0.1) and MaxPool2d(2). A global average pool gives 640 features. DropBlock (Ghiasi, Lin, Le, "DropBlock:
A regularization method for convolutional networks", NeurIPS 2018, arXiv 1810.12890) is off by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.backbones._common import apply_norm, check_image_size, make_norm
from fewshot.backbones._registry import BACKBONES

__all__ = ["DropBlock", "ResidualBlock", "ResNet12"]


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al., NeurIPS 2018, arXiv 1810.12890): drop square blocks of a feature map in training.

    Args:
        drop_rate: fraction of units to drop (0 disables the layer).
        block_size: side of the dropped squares (odd, clipped to the feature map size).

    Shapes:
        input and output ``(N, C, H, W)``; identity in eval mode or when ``drop_rate == 0``.
    """

    def __init__(self, drop_rate: float, block_size: int) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"DropBlock drop_rate must be in [0, 1), got {drop_rate!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1 or block_size % 2 == 0:
            raise ValueError(f"DropBlock block_size must be a positive odd int, got {block_size!r}")
        self.drop_rate = float(drop_rate)
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        """Drop blocks of ``x`` (N, C, H, W) in training; rescale the kept units so the mean is preserved."""
        if not self.training or self.drop_rate == 0.0:
            return x
        height, width = x.shape[-2:]
        size = min(self.block_size, height, width)
        size -= 1 - size % 2  # keep it odd so the padded max-pool keeps the map size
        valid = (height - size + 1) * (width - size + 1)
        gamma = self.drop_rate / (size * size) * (height * width) / valid
        seeds = torch.bernoulli(torch.full_like(x, min(gamma, 1.0)))
        keep = 1.0 - F.max_pool2d(seeds, kernel_size=size, stride=1, padding=size // 2)
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, block_size={self.block_size}"


class ResidualBlock(nn.Module):
    """One ResNet-12 block: 3 × [conv 3×3 → norm] (LeakyReLU between), 1×1 shortcut, sum, LeakyReLU, max-pool 2.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm: normalization layer registry name.
        norm_kwargs: keyword arguments for the norm layers.
        drop: regularizer applied to the block output (``nn.Identity``, ``nn.Dropout`` or :class:`DropBlock`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, norm: str, norm_kwargs: Mapping[str, Any] | None, drop: nn.Module
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_channels, norm_kwargs)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_channels, norm_kwargs)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm3 = make_norm(norm, out_channels, norm_kwargs)
        self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.shortcut_norm = make_norm(norm, out_channels, norm_kwargs)
        self.drop = drop

    def forward(self, x: Tensor, posterior: Any = None) -> tuple[Tensor, Any]:
        """Map ``x`` (N, C_in, H, W) to ``(y, posterior)`` with ``y`` of shape (N, C_out, H // 2, W // 2).

        For state-passing norms, the input posterior feeds the priors of ``norm1`` and ``shortcut_norm``; the
        block's output posterior combines those of ``norm3`` and ``shortcut_norm`` (see :func:`_combine`).
        """
        h, post = apply_norm(self.norm1, self.conv1(x), posterior, self.conv1)
        h = F.leaky_relu(h, 0.1)
        h, post = apply_norm(self.norm2, self.conv2(h), post, self.conv2)
        h = F.leaky_relu(h, 0.1)
        h, post = apply_norm(self.norm3, self.conv3(h), post, self.conv3)
        s, post_s = apply_norm(self.shortcut_norm, self.shortcut_conv(x), posterior, self.shortcut_conv)
        out = F.max_pool2d(F.leaky_relu(h + s, 0.1), 2)
        return self.drop(out), _combine(self.norm3, post, post_s)


def _combine(norm: nn.Module, branch: Any, shortcut: Any) -> Any:
    """The posterior of a residual sum ``branch + shortcut``.

    The layer's ``combine(branch, shortcut)`` when it has one; otherwise posteriors that are tuples of tensors
    (Kalman normalization's ``Moments(mean, var)``) are added field by field, i.e. the two summands are taken
    as independent, as in the official Batch Kalman Normalization code (norms-spec §7.2).
    """
    if branch is None or shortcut is None:
        return branch
    combine = getattr(norm, "combine", None)
    if callable(combine):
        return combine(branch, shortcut)
    return type(branch)(*(b + s for b, s in zip(branch, shortcut, strict=True)))


@BACKBONES.register("resnet12")
class ResNet12(nn.Module):
    """ResNet-12 (TADAM, arXiv 1805.10123; MetaOptNet, arXiv 1904.03758) with any registered norm.

    Args:
        in_channels: image channels.
        widths: output channels of the four blocks (default 64-160-320-640).
        norm: normalization layer registry name.
        norm_kwargs: keyword arguments for every norm layer.
        drop_rate: 0 (default) disables regularization; otherwise, as in MetaOptNet, blocks 1-2 apply dropout and
            blocks 3-4 DropBlock with this rate (a constant rate, without MetaOptNet's linear schedule).
        dropblock_size: DropBlock square side (odd; MetaOptNet uses 5).

    Shapes:
        input ``(N, in_channels, H, W)`` with ``H, W >= 16``; output ``(N, widths[-1])`` after the global average
        pool.

    Example:
        >>> net = ResNet12(3, widths=(8, 8, 16, 16))
        >>> net(torch.rand(4, 3, 32, 32)).shape
        torch.Size([4, 16])
    """

    def __init__(
        self,
        in_channels: int = 3,
        *,
        widths: Sequence[int] = (64, 160, 320, 640),
        norm: str = "batchnorm",
        norm_kwargs: Mapping[str, Any] | None = None,
        drop_rate: float = 0.0,
        dropblock_size: int = 5,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != 4 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"ResNet12 widths must be 4 positive ints, got {widths!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"ResNet12: in_channels must be a positive int, got {in_channels!r}")
        self.in_channels = in_channels
        self.widths = widths
        blocks = []
        for i, (c_in, c_out) in enumerate(zip((in_channels, *widths[:-1]), widths, strict=True)):
            if drop_rate == 0.0:
                drop: nn.Module = nn.Identity()
            elif i < 2:
                drop = nn.Dropout(drop_rate)
            else:
                drop = DropBlock(drop_rate, dropblock_size)
            blocks.append(ResidualBlock(c_in, c_out, norm=norm, norm_kwargs=norm_kwargs, drop=drop))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, widths[-1])`` of images ``x`` (N, in_channels, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet12 expects images of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}; build the "
                "backbone with the images' channel count as in_channels"
            )
        posterior = None
        for block in self.blocks:
            x, posterior = block(x, posterior)
        return x.mean(dim=(2, 3))

    def out_features(self, image_size: int) -> int:
        """Feature size (``widths[-1]``; images must be at least 16×16)."""
        check_image_size(type(self).__name__, image_size, 16)
        return self.widths[-1]
