"""Light 3D decoder: a 2-level 3D UNet with a 3D ASPP bottleneck, and a head to the output grid.

* :class:`ASPP3d`: MonoScene's 3D ASPP (parallel branches of two dilated 3x3x3 convs, dilations
  ``(1, 2, 3)``, summed, plus a residual) as used by VoxFormer / Symphonies / VPOcc.
* :class:`UNet3d`: ``[B, C, X, Y, Z]`` -> same shape; two stride-2 downsamplings (C -> 2C -> 4C), the
  ASPP at the coarsest level, two transposed-conv upsamplings with skip connections.
* :class:`SSCHead`: features -> ``n_classes`` logits at the output grid (e.g. the dataset grid), either
  classify then trilinearly upsample the logits (cheap) or upsample the features with a transposed
  conv then classify.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.ops.patch_conv import PatchConv3d

__all__ = ["norm3d", "ConvBlock3d", "ASPP3d", "UNet3d", "SSCHead"]


def norm3d(kind: str, channels: int) -> nn.Module:
    """``"bn"`` -> BatchNorm3d, ``"gn"`` -> GroupNorm (up to 8 groups), ``"none"`` -> Identity."""
    if kind == "bn":
        return nn.BatchNorm3d(channels)
    if kind == "gn":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown 3D norm '{kind}' (bn, gn, none)")


class ConvBlock3d(nn.Sequential):
    """Conv3d (3x3x3 by default, no bias) -> norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, norm: str = "bn"):
        pad = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=pad, dilation=dilation,
                      bias=norm == "none"),
            norm3d(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class ResBlock3d(nn.Module):
    """Two 3x3x3 convs with a residual connection (basic ResNet block in 3D)."""

    def __init__(self, channels: int, norm: str = "bn"):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1, bias=norm == "none")
        self.norm1 = norm3d(norm, channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=norm == "none")
        self.norm2 = norm3d(norm, channels)

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor  # [B, C, X, Y, Z] -> same shape"""
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        return F.relu(x + self.norm2(self.conv2(y)), inplace=True)


class ASPP3d(nn.Module):
    """MonoScene's 3D ASPP: ``relu(x + sum_d norm(conv_d(relu(norm(conv_d(x))))))`` over dilations ``d``."""

    def __init__(self, channels: int, dilations: Sequence[int] = (1, 2, 3), norm: str = "bn"):
        super().__init__()
        self.dilations = tuple(dilations)
        bias = norm == "none"
        self.conv1 = nn.ModuleList(nn.Conv3d(channels, channels, 3, padding=d, dilation=d, bias=bias) for d in dilations)
        self.norm1 = nn.ModuleList(norm3d(norm, channels) for _ in dilations)
        self.conv2 = nn.ModuleList(nn.Conv3d(channels, channels, 3, padding=d, dilation=d, bias=bias) for d in dilations)
        self.norm2 = nn.ModuleList(norm3d(norm, channels) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor  # [B, C, X, Y, Z] -> same shape"""
        y = None
        for c1, n1, c2, n2 in zip(self.conv1, self.norm1, self.conv2, self.norm2):
            b = n2(c2(F.relu(n1(c1(x)), inplace=True)))
            y = b if y is None else y + b
        assert y is not None
        return F.relu(x + y)


def _match(x: Tensor, ref: Tensor) -> Tensor:
    """Crop / pad x [B, C, ...] to ref's spatial size (odd sizes after stride-2 convs)."""
    if x.shape[2:] == ref.shape[2:]:
        return x
    pads = []
    for s, r in zip(reversed(x.shape[2:]), reversed(ref.shape[2:])):
        pads += [0, r - s]
    return F.pad(x, pads)


class UNet3d(nn.Module):
    """2-down / 2-up 3D UNet with skips and an ASPP bottleneck.

    Args:
        channels: input / output channels ``C``; the levels use ``C * channel_mults[i]``.
        channel_mults: widths of the two coarser levels relative to ``C``.
        norm: ``"bn"`` (BatchNorm3d) or ``"gn"`` (GroupNorm).
        dilations: ASPP dilations.
        blocks: residual blocks at the middle level (encoder and decoder).
        full_res_blocks: residual blocks at the input resolution (encoder and decoder); ``0`` makes
            the decoder much cheaper on CPU (no 3x3x3 conv at full resolution but the stride-2 one).
    """

    def __init__(self, channels: int, channel_mults: Sequence[int] = (2, 4), norm: str = "bn",
                 dilations: Sequence[int] = (1, 2, 3), blocks: int = 1, full_res_blocks: int = 1):
        super().__init__()
        c0 = channels
        c1, c2 = (channels * m for m in channel_mults)
        self.enc0 = nn.Sequential(*[ResBlock3d(c0, norm) for _ in range(full_res_blocks)])
        self.down1 = ConvBlock3d(c0, c1, stride=2, norm=norm)
        self.enc1 = nn.Sequential(*[ResBlock3d(c1, norm) for _ in range(blocks)])
        self.down2 = ConvBlock3d(c1, c2, stride=2, norm=norm)
        self.aspp = ASPP3d(c2, dilations, norm)
        self.up2 = nn.Sequential(nn.ConvTranspose3d(c2, c1, 2, stride=2, bias=False), norm3d(norm, c1), nn.ReLU(True))
        self.dec1 = nn.Sequential(*[ResBlock3d(c1, norm) for _ in range(blocks)])
        self.up1 = nn.Sequential(nn.ConvTranspose3d(c1, c0, 2, stride=2, bias=False), norm3d(norm, c0), nn.ReLU(True))
        self.dec0 = nn.Sequential(*[ResBlock3d(c0, norm) for _ in range(full_res_blocks)])
        self.out_channels = c0

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor  # [B, C, X, Y, Z] -> Tensor  # [B, C, X, Y, Z]"""
        s0 = self.enc0(x)
        s1 = self.enc1(self.down1(s0))
        y = self.aspp(self.down2(s1))
        y = self.dec1(_match(self.up2(y), s1) + s1)
        return self.dec0(_match(self.up1(y), s0) + s0)


class SSCHead(nn.Module):
    """Features ``[B, C, X, Y, Z]`` -> logits ``[B, n_classes, *out_shape]``.

    Args:
        in_channels: ``C``.
        n_classes: number of classes (the dataset spec's, class 0 = empty).
        out_shape: output grid, e.g. ``(256, 256, 32)``; ``None`` keeps the input grid.
        mode: ``"trilinear"``: 3x3x3 conv + ReLU + 1x1x1 classifier at the input grid, then trilinear
            upsampling of the logits (cheap); ``"deconv"``: transposed conv (kernel = stride =
            ``scale_factor``) of the features to ``C // 2`` channels, then the classifier (the input grid
            times ``scale_factor`` must be ``out_shape``).
        scale_factor: upsampling factor of the ``"deconv"`` mode (int or per axis).
        norm: norm of the hidden conv.
        hidden: the 3x3x3 conv before the classifier in ``"trilinear"`` mode (``False``: 1x1x1 only).
    """

    def __init__(self, in_channels: int, n_classes: int, out_shape: Sequence[int] | None = None,
                 mode: str = "trilinear", scale_factor: int | Sequence[int] = 1, norm: str = "bn",
                 hidden: bool = True):
        super().__init__()
        if mode not in ("trilinear", "deconv"):
            raise ValueError(f"head mode must be 'trilinear' or 'deconv' (got {mode!r})")
        self.mode = mode
        self.out_shape = None if out_shape is None else tuple(int(s) for s in out_shape)
        self.n_classes = n_classes
        sf = (scale_factor,) * 3 if isinstance(scale_factor, int) else tuple(int(f) for f in scale_factor)
        self.scale_factor = sf
        if mode == "trilinear":
            self.hidden: nn.Module = ConvBlock3d(in_channels, in_channels, norm=norm) if hidden else nn.Identity()
            cls_in = in_channels
        elif sf == (1, 1, 1):
            self.hidden = nn.Identity()
            cls_in = in_channels
        else:
            cls_in = max(in_channels // 2, 8)
            self.hidden = nn.Sequential(nn.ConvTranspose3d(in_channels, cls_in, sf, stride=sf, bias=False),
                                        norm3d(norm, cls_in), nn.ReLU(True))
        self.classifier = PatchConv3d(cls_in, n_classes, 1)

    def forward(self, x: Tensor, upsample: bool = True) -> Tensor:
        """x: Tensor  # [B, C, X, Y, Z] -> Tensor  # [B, n_classes, *out_shape]

        With ``upsample=False`` (``"trilinear"`` mode) the logits stay at the input grid
        ``[B, n_classes, X, Y, Z]``: on CPU, training against a downsampled target skips the costly
        full-resolution logits; :meth:`upsample` brings them to ``out_shape`` later."""
        logits = self.classifier(self.hidden(x))
        if upsample or self.mode == "deconv":
            return self.upsample(logits)
        return logits

    def upsample(self, logits: Tensor) -> Tensor:
        """logits: Tensor  # [B, n_classes, X', Y', Z'] -> Tensor  # [B, n_classes, *out_shape] (trilinear)."""
        out_shape = self.out_shape or tuple(logits.shape[2:])
        if tuple(logits.shape[2:]) != out_shape:
            if self.mode == "deconv":
                raise ValueError(f"deconv head: output grid {tuple(logits.shape[2:])} (scale_factor "
                                 f"{self.scale_factor}) != {out_shape}")
            logits = F.interpolate(logits, size=out_shape, mode="trilinear", align_corners=False)
        return logits
