"""Deformable self-attention over a 3D voxel volume (VoxFormer's stage-2 self-attention), pure torch.

:func:`trilinear_sample` samples a volume at normalised 3D points (trilinear, zeros outside,
``align_corners=False``: on an axis of ``n`` voxels, ``t = (i + 0.5) / n`` is the centre of voxel ``i``)
with two 2D ``grid_sample`` calls on the slices laid side by side. It is the exportable implementation
(ONNX opset 17 has no 5D ``GridSample``);
:func:`trilinear_sample_reference` is the same sampling with ``F.grid_sample`` on 5D input, the
reference the tests compare values and gradients against.

Axis order: a volume is ``[B, C, X, Y, Z]`` (C order of the grid, docs/design.md); a point is
``(x, y, z)`` normalised along ``X``, ``Y``, ``Z``.

:class:`DeformSelfAttention3d` is Deformable DETR's attention with one level and 3D offsets: every
voxel predicts ``num_points`` offsets (in voxels) per head around its own centre and softmax weights,
and sums the value volume sampled there.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["trilinear_sample", "trilinear_sample_reference", "slices_image", "sample_slices", "DeformSelfAttention3d", "voxel_reference_points"]


def trilinear_sample(value: Tensor, loc: Tensor) -> Tensor:
    """value: Tensor  # [B, C, X, Y, Z];  loc: Tensor  # [B, N, P, 3] normalised (x, y, z)
    ->  Tensor  # [B, C, N, P] (trilinear, zeros outside the volume).

    Two 2D bilinear samples (``F.grid_sample``, which ONNX opset 16+ has): the ``Z`` slices are laid side by
    side along the width with a zero column between them (``[B, C, X, Z * (Y + 1) + 1]``); a point samples
    its two neighbouring slices ``z0``, ``z0 + 1`` there and mixes them by its z fraction. Points whose
    ``y`` lies outside the volume (where a sample would reach the next slice) get zero, as outside ``z``."""
    return sample_slices(slices_image(value), tuple(value.shape[2:]), loc)


def slices_image(value: Tensor) -> Tensor:
    """value: Tensor  # [B, C, X, Y, Z]  ->  Tensor  # [B, C, X, Z * (Y + 1) + 1], the layout
    :func:`sample_slices` reads (built once when one volume is sampled in chunks)."""
    B, C, X, Y, Z = value.shape
    img = F.pad(value.permute(0, 1, 2, 4, 3), (1, 0)).reshape(B, C, X, Z * (Y + 1))
    return F.pad(img, (0, 1))


def sample_slices(img: Tensor, shape: Sequence[int], loc: Tensor) -> Tensor:
    """:func:`trilinear_sample` on the :func:`slices_image` of a volume of grid ``shape`` (X, Y, Z)."""
    X, Y, Z = (int(s) for s in shape)
    W = Z * (Y + 1) + 1
    px = loc[..., 0] * X - 0.5  # continuous voxel indices
    py = loc[..., 1] * Y - 0.5
    pz = loc[..., 2] * Z - 0.5
    z0 = torch.floor(pz)
    fz = pz - z0
    y_ok = (py > -1.0) & (py < float(Y))
    gx_row = (px + 0.5) / X * 2.0 - 1.0  # grid_sample's y (rows = the X axis)
    out = None
    for dz, wz in ((0.0, 1.0 - fz), (1.0, fz)):
        z = z0 + dz
        ok = y_ok & (z >= 0) & (z <= Z - 1)
        col = z.clamp(0, Z - 1) * (Y + 1) + 1.0 + py.clamp(-1.0, float(Y))
        grid = torch.stack([(col + 0.5) / W * 2.0 - 1.0, gx_row], -1)  # [B, N, P, 2] (x = column, y = row)
        s = F.grid_sample(img, grid.to(img.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        term = s * torch.where(ok, wz, torch.zeros_like(wz)).to(s.dtype)[:, None]
        out = term if out is None else out + term
    assert out is not None
    return out


def trilinear_sample_reference(value: Tensor, loc: Tensor) -> Tensor:
    """:func:`trilinear_sample` with ``F.grid_sample`` (5D, trilinear, zeros, align_corners=False)."""
    B, C = value.shape[:2]
    _, N, P, _ = loc.shape
    # grid_sample on [B, C, D, H, W] takes (w, h, d) = (z, y, x) coordinates in [-1, 1]
    grid = (2.0 * loc - 1.0).flip(-1).view(B, N, P, 1, 3)
    out = F.grid_sample(value, grid.to(value.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(B, C, N, P)


def voxel_reference_points(shape: Sequence[int], device=None, dtype=torch.float32) -> Tensor:
    """Tensor  # [X*Y*Z, 3]: normalised centres ``((i + 0.5) / n)`` of every voxel, C order."""
    axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) / n for n in shape]
    gx, gy, gz = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([gx, gy, gz], -1).reshape(-1, 3)


class DeformSelfAttention3d(nn.Module):
    """Deformable self-attention of every voxel of a volume on the volume itself.

    Args:
        embed_dims: channels ``C`` (divisible by ``num_heads``).
        num_heads, num_points: sampling points per head around each voxel.
        chunk_size: voxels processed at a time (bounds the ``[B*heads, C/heads, chunk, P]`` samples).
        checkpoint: when the volume takes more than one chunk and gradients are on, each chunk's sampling is
            recomputed in the backward pass (``torch.utils.checkpoint``) instead of kept: the memory of the
            samples is then one chunk's, not the whole volume's (the values and gradients are the same; the
            backward costs one more sampling). Without it a ``paper``-size volume (128 x 128 x 16 voxels,
            8 heads x 8 points) keeps ~10 GB per layer for the backward.

    ``forward`` returns the attention update (no residual). Offsets are in voxels of the volume;
    they start on a ring in the x-y plane (head ``h`` along direction ``2 pi h / heads``, point ``p`` at
    ``p + 1`` voxels), like Deformable DETR's initialisation.
    """

    def __init__(self, embed_dims: int, num_heads: int = 4, num_points: int = 4, chunk_size: int | None = 8192,
                 checkpoint: bool = True):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims, self.num_heads, self.num_points = embed_dims, num_heads, num_points
        self.chunk_size = chunk_size
        self.checkpoint = checkpoint
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_points * 3)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        th = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        ring = torch.stack([th.cos(), th.sin(), torch.zeros_like(th)], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]
        ring = ring[:, None, :] * torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, :, None]
        self.sampling_offsets.bias.copy_(ring.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, shape: Sequence[int], query_pos: Tensor | None = None) -> Tensor:
        """x: Tensor  # [B, N, C] voxel features (C order, N = X*Y*Z);  query_pos: Tensor  # [N, C] or [B, N, C]
        ->  Tensor  # [B, N, C]"""
        B, N, C = x.shape
        X, Y, Z = (int(s) for s in shape)
        Hh, P, Ch = self.num_heads, self.num_points, C // self.num_heads
        value = self.value_proj(x).view(B, X, Y, Z, Hh, Ch).permute(0, 4, 5, 1, 2, 3).reshape(B * Hh, Ch, X, Y, Z)
        img = slices_image(value)  # once for all chunks
        q = x if query_pos is None else x + query_pos
        ref = voxel_reference_points((X, Y, Z), x.device, x.dtype)  # [N, 3]
        size = torch.tensor([X, Y, Z], dtype=x.dtype, device=x.device)
        chunk = self.chunk_size or N
        recompute = (self.checkpoint and N > chunk and torch.is_grad_enabled()
                     and not (torch.jit.is_tracing() or torch.compiler.is_exporting()))

        def attend(img: Tensor, qc: Tensor, ref_c: Tensor) -> Tensor:
            n = qc.shape[1]
            off = self.sampling_offsets(qc).view(B, n, Hh, P, 3) / size
            loc = (ref_c[None, :, None, None, :] + off).permute(0, 2, 1, 3, 4).reshape(B * Hh, n, P, 3)
            w = self.attention_weights(qc).view(B, n, Hh, P).softmax(-1).permute(0, 2, 1, 3).reshape(B * Hh, 1, n, P)
            sampled = (sample_slices(img, (X, Y, Z), loc) * w).sum(-1)  # [B*heads, Ch, n]
            return sampled.view(B, Hh * Ch, n).transpose(1, 2)

        outs = []
        for s in range(0, N, chunk):
            args = (img, q[:, s:s + chunk], ref[s:s + chunk])
            if recompute:
                from torch.utils.checkpoint import checkpoint

                outs.append(checkpoint(attend, *args, use_reentrant=False))
            else:
                outs.append(attend(*args))
        return self.output_proj(torch.cat(outs, dim=1))
