"""3D convolutions over non-overlapping patches (kernel = stride: 1x1x1 mixes, 2x2x2 folds) computed
as one matrix product.

On CPU, oneDNN's 3D convolution backward is slow for these shapes: in a profile of the tiny baseline's
training step (2 threads) the head's ``Conv3d(16, 20, 1)`` on the 1:2 grid took 0.07 s a step (forward +
backward). A patch convolution is a reshape and a matrix product, whose backward is two more matrix
products, so :class:`PatchConv3d` computes exactly the function of the ``nn.Conv3d`` it replaces (same
parameters, state-dict keys and initialisation; values equal up to float summation order) in less time.
Every 1x1x1 convolution of the models and the depth volume's fold use it (the fold's painted channels go
through :func:`occ_core.models.depth_volume.fold_painted`, which never builds their dense volume).

* :func:`patch_conv3d` / :class:`PatchConv3d`: ``F.conv3d(x, w, b, stride=kernel)`` (no padding,
  dilation or groups); a grid not divisible by the kernel drops its remainder, as ``F.conv3d`` does.

The reference is ``F.conv3d`` itself (tests/ops/test_patch_conv.py
compares values and gradients); ``bench/bench_patch_conv.py`` times both.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["patch_conv3d", "PatchConv3d"]


def _triple(k) -> tuple[int, int, int]:
    return (int(k),) * 3 if isinstance(k, int) else tuple(int(v) for v in k)


def patch_conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv3d(x, weight, bias, stride=weight.shape[2:])`` as a matrix product.

    x: Tensor  # [B, C, X, Y, Z];  weight: Tensor  # [O, C, fx, fy, fz];  bias: Tensor  # [O] or None
    -> Tensor  # [B, O, X // fx, Y // fy, Z // fz]"""
    B, C, X, Y, Z = x.shape
    O, Ci, fx, fy, fz = weight.shape
    if Ci != C:
        raise ValueError(f"patch_conv3d: input has {C} channels, weight expects {Ci}")
    X2, Y2, Z2 = X // fx, Y // fy, Z // fz
    if (fx, fy, fz) == (1, 1, 1):
        out = torch.matmul(weight.reshape(O, C).to(x.dtype), x.reshape(B, C, X * Y * Z))  # [B, O, V]
        if bias is not None:
            out = out + bias.to(out.dtype)[:, None]
        return out.view(B, O, X, Y, Z)
    if (X2 * fx, Y2 * fy, Z2 * fz) != (X, Y, Z):
        x = x[:, :, : X2 * fx, : Y2 * fy, : Z2 * fz]
    patches = (x.reshape(B, C, X2, fx, Y2, fy, Z2, fz).permute(0, 2, 4, 6, 1, 3, 5, 7)
               .reshape(B, X2 * Y2 * Z2, C * fx * fy * fz))
    w = weight.reshape(O, C * fx * fy * fz).to(x.dtype)
    out = patches @ w.t() if bias is None else torch.addmm(bias.to(x.dtype), patches.flatten(0, 1), w.t()).view(B, -1, O)
    return out.transpose(1, 2).reshape(B, O, X2, Y2, Z2)


class PatchConv3d(nn.Conv3d):
    """``nn.Conv3d(in, out, k, stride=k)`` (k = 1 included) computed by :func:`patch_conv3d`: the same
    parameters, state-dict keys and initialisation as the ``nn.Conv3d`` it replaces."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, bias: bool = True):
        k = _triple(kernel_size)
        super().__init__(in_channels, out_channels, k, stride=k, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return patch_conv3d(x, self.weight, self.bias)
