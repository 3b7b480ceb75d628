"""FPN-style multi-scale neck: backbone maps -> maps with a common channel count.

Lateral 1x1 convs bring every level to ``out_channels``; a top-down pathway adds each coarser level
(upsampled to the finer one's size) to the finer one; a 3x3 conv smooths each sum (as in FPN /
mmdet's ``FPN`` without extra levels).
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN"]


def _norm(kind: str | None, channels: int) -> nn.Module:
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"unknown norm '{kind}' (none, bn, gn)")


class FPN(nn.Module):
    """Feature pyramid over ``len(in_channels)`` levels, finest first.

    Args:
        in_channels: channels of each input level (finest first, e.g. ``backbone.out_channels``).
        out_channels: channels of every output level.
        norm: ``None`` (convs with bias, the FPN default), ``"bn"`` or ``"gn"`` after each conv.
        upsample_mode: interpolation of the top-down pathway (``"nearest"`` or ``"bilinear"``).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, norm: str | None = None,
                 upsample_mode: str = "nearest"):
        super().__init__()
        if not in_channels:
            raise ValueError("FPN needs at least one input level")
        self.in_channels = list(in_channels)
        self.out_channels = int(out_channels)
        self.upsample_mode = upsample_mode
        bias = norm is None or norm == "none"
        self.lateral_convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=bias), _norm(norm, out_channels)) for c in in_channels
        )
        self.fpn_convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias), _norm(norm, out_channels))
            for _ in in_channels
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """feats: list of Tensor  # [B, in_channels[l], H_l, W_l], finest first

        Returns list of Tensor  # [B, out_channels, H_l, W_l], same sizes as the inputs.
        """
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN built for {len(self.in_channels)} levels, got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            kw = {} if self.upsample_mode == "nearest" else {"align_corners": False}
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode=self.upsample_mode, **kw)
            laterals[i - 1] = laterals[i - 1] + up
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
