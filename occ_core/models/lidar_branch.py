"""The LiDAR branch: voxelisation of the batch's points and an OpenOccupancy-style sparse 3D encoder.

1. :func:`padded_points` turns the batch's packed points ``points [P, 5]`` (batch index, x, y, z,
   intensity; grid frame) into ``points_padded [B, N, 4]`` + ``points_count [B]`` (the fixed-size form the
   exported models take, docs/export.md); a batch that already has those keys is used as it is.
2. :class:`Voxelizer` bins the points into the dataset grid divided by ``lidar.voxel_stride`` (1: the
   dataset grid itself, 0.2 m for SemanticKITTI). Per occupied voxel (HardSimpleVFE-like mean features):
   the mean point position normalised to ``[0, 1]`` over the grid extent (3), the mean intensity (1) and
   ``log(1 + point count)`` (1). Points outside the grid are dropped. One scatter into a flat grid
   with a dump slot: no data-dependent shapes, so it exports.
3. :class:`SparseLidarEncoder` (OpenOccupancy's ``SparseLiDAREnc8x`` pattern): a submanifold input
   conv, then per resolution ``blocks`` submanifold residual blocks, and strided (stride 2) sparse
   convolutions down to the query grid (the dataset grid / ``lifting.stride``); the last level is
   densified and mapped to ``embed_dims`` channels by a 1x1x1 conv: ``[B, C, X_q, Y_q, Z_q]`` plus the
   occupancy mask of its active sites ``[B, X_q, Y_q, Z_q]``.

Sparse convolutions run through :mod:`occ_core.ops.sparse_conv` (spconv when it imports, its dense twin
otherwise and while tracing for export).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.errors import OccError
from occ_core.ops.patch_conv import PatchConv3d
from occ_core.ops.sparse_conv import (MaskedVolume, SparseBatchNorm, SparseConv3d, SparseReLU, SparseVoxels)

N_POINT_FEATURES = 5
"""Voxel features: mean x, y, z (normalised to the grid extent), mean intensity, log(1 + count)."""


@dataclass
class LidarConfig:
    """LiDAR branch: voxelisation and the sparse encoder."""

    voxel_stride: int = 1
    """Voxelise the points into the dataset grid divided by this (1: the dataset grid); the encoder's strided
    convolutions go from there down to the query grid (lifting.stride / voxel_stride must be a power of 2)."""
    base_channels: int = 16
    """Channels of the first encoder level (doubled at every stride-2 level)."""
    blocks: int = 1
    """Submanifold residual blocks per encoder level."""
    backend: str = "auto"
    """Sparse convolution backend: auto (spconv when it imports; on CPU with ConvAlgo.Native), spconv or torch
    (the dense twin)."""
    export_points: int = 131072
    """Rows of the exported model's fixed-size points input (points_padded [1, N, 4] + points_count [1]);
    a longer scan is cut to its first N points in the export's example frame."""


def padded_points(batch: dict[str, Any], batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """(points_padded Tensor  # [B, N, 4] float32 (x, y, z, intensity), points_count Tensor  # [B] long) of a
    batch: its ``points_padded`` / ``points_count`` when present, else from the packed ``points [P, 5]``."""
    if "points_padded" in batch:
        pts = batch["points_padded"]
        count = batch.get("points_count")
        if count is None:
            count = torch.full((pts.shape[0],), pts.shape[1], dtype=torch.long, device=pts.device)
        return pts, count
    if "points" not in batch:
        raise OccError("this method reads the LiDAR scan: the batch has no 'points' (set data.load_points=true)")
    packed = batch["points"]
    if batch_size is None:
        batch_size = int(batch["images"].shape[0]) if "images" in batch else len(batch.get("frame", [])) or 1
    b = packed[:, 0].long()
    count = torch.bincount(b, minlength=batch_size)[:batch_size]
    N = max(int(count.max()) if count.numel() else 0, 1)
    order = torch.argsort(b, stable=True)
    b_sorted = b[order]
    starts = torch.cumsum(count, 0) - count
    slot = torch.arange(len(b), device=packed.device) - starts[b_sorted]
    out = packed.new_zeros(batch_size, N, 4)
    out[b_sorted, slot] = packed[order, 1:5]
    return out, count


class Voxelizer(nn.Module):
    """Points -> mean-feature voxels on a grid (see the module docstring).

    Args:
        grid_shape, voxel_size, origin: the voxel grid (the dataset grid divided by the voxel stride).
    """

    def __init__(self, grid_shape: Sequence[int], voxel_size: Sequence[float], origin: Sequence[float]):
        super().__init__()
        self.grid_shape = tuple(int(s) for s in grid_shape)
        self.register_buffer("origin", torch.tensor([float(o) for o in origin]), persistent=False)
        self.register_buffer("voxel_size", torch.tensor([float(v) for v in voxel_size]), persistent=False)

    def forward(self, points: Tensor, count: Tensor) -> MaskedVolume:
        """points: Tensor  # [B, N, 4] (x, y, z, intensity, grid frame);  count: Tensor  # [B] valid rows.

        Returns the voxels as a :class:`MaskedVolume`: ``dense [B, 5, X, Y, Z]``, ``mask [B, X, Y, Z]``."""
        B, N = points.shape[:2]
        X, Y, Z = self.grid_shape
        n = X * Y * Z
        pts = points.float()
        rel = (pts[..., :3] - self.origin) / self.voxel_size  # voxel units
        idx = torch.floor(rel).long()
        dims = torch.tensor([X, Y, Z], device=pts.device)
        inside = ((idx >= 0) & (idx < dims)).all(-1) & (torch.arange(N, device=pts.device)[None] < count[:, None])
        flat = idx[..., 0] * (Y * Z) + idx[..., 1] * Z + idx[..., 2]
        flat = torch.where(inside, flat, torch.full_like(flat, n))  # dump slot n
        norm_pos = rel / dims.to(rel.dtype)  # [0, 1] over the grid
        vals = torch.cat([norm_pos, pts[..., 3:4], torch.ones_like(pts[..., :1])], -1)  # [B, N, 5]
        vals = vals * inside[..., None].to(vals.dtype)
        sums = vals.new_zeros(B, n + 1, 5).scatter_add(1, flat[..., None].expand(B, N, 5), vals)[:, :n]
        cnt = sums[..., 4:5]
        feats = torch.cat([sums[..., :4] / cnt.clamp_min(1.0), torch.log1p(cnt)], -1)  # [B, n, 5]
        mask = (cnt[..., 0] > 0).view(B, X, Y, Z)
        dense = feats.transpose(1, 2).reshape(B, N_POINT_FEATURES, X, Y, Z)
        return MaskedVolume(dense, mask)


class SparseResBlock(nn.Module):
    """Two submanifold 3x3x3 convs with BN, a residual connection and ReLU (either data form)."""

    def __init__(self, channels: int, backend: str, key: str | None):
        super().__init__()
        self.conv1 = SparseConv3d(channels, channels, 3, backend=backend, indice_key=key)
        self.bn1 = SparseBatchNorm(channels)
        self.conv2 = SparseConv3d(channels, channels, 3, backend=backend, indice_key=key)
        self.bn2 = SparseBatchNorm(channels)
        self.relu = SparseReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if isinstance(x, SparseVoxels):
            return self.relu(y.replace(y.features + x.features))
        return self.relu(y.replace(y.dense + x.dense))


class SparseLidarEncoder(nn.Module):
    """Voxel features -> dense volume at the query grid (see the module docstring).

    Args:
        out_channels: channels of the dense output (the model's ``embed_dims``).
        levels: stride-2 downsamplings from the voxel grid to the query grid.
        base_channels, blocks, backend: as :class:`LidarConfig`.
    """

    def __init__(self, out_channels: int, levels: int, base_channels: int = 16, blocks: int = 1,
                 backend: str = "auto"):
        super().__init__()
        c = base_channels
        self.levels = int(levels)
        self.stem = nn.Sequential(SparseConv3d(N_POINT_FEATURES, c, 3, backend=backend, indice_key="subm0"),
                                  SparseBatchNorm(c), SparseReLU())
        stages = [nn.Sequential(*[SparseResBlock(c, backend, "subm0") for _ in range(blocks)])]
        for i in range(self.levels):
            c2 = base_channels * 2 ** (i + 1)
            stages.append(nn.Sequential(
                SparseConv3d(c, c2, 3, stride=2, padding=1, subm=False, backend=backend),
                SparseBatchNorm(c2), SparseReLU(),
                *[SparseResBlock(c2, backend, f"subm{i + 1}") for _ in range(blocks)]))
            c = c2
        self.stages = nn.ModuleList(stages)
        self.channels = c
        self.out = nn.Sequential(PatchConv3d(c, out_channels, 1, bias=False), nn.BatchNorm3d(out_channels), nn.ReLU(True))

    def forward(self, voxels: MaskedVolume) -> tuple[Tensor, Tensor]:
        """voxels: the voxelizer's output -> (volume Tensor  # [B, C, X_q, Y_q, Z_q], mask Tensor  # [B, X_q, Y_q, Z_q] bool)."""
        exporting = torch.jit.is_tracing() or torch.compiler.is_exporting()
        x: Any = voxels if exporting else voxels.to_sparse()
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        if isinstance(x, SparseVoxels):
            dense, mask = x.dense(), x.mask()
        else:
            dense, mask = x.dense, x.mask
        return self.out(dense), mask


class LidarBranch(nn.Module):
    """Voxelizer + sparse encoder for a dataset grid (``spec``) and a query stride."""

    def __init__(self, cfg: LidarConfig, spec, query_stride: int, out_channels: int):
        super().__init__()
        vs = int(cfg.voxel_stride)
        if vs < 1 or query_stride % vs or (query_stride // vs) & (query_stride // vs - 1):
            raise OccError(f"model.lidar.voxel_stride={vs}: the query stride {query_stride} divided by it must be a "
                           "power of 2")
        if cfg.backend not in ("auto", "spconv", "torch"):
            raise OccError(f"model.lidar.backend must be auto, spconv or torch (got {cfg.backend!r})")
        try:
            g = spec.grid.scaled(vs)
        except ValueError as e:
            raise OccError(f"model.lidar.voxel_stride: {e}") from None
        self.cfg = cfg
        self.voxelizer = Voxelizer(g.shape, g.voxel_size, g.origin)
        self.encoder = SparseLidarEncoder(out_channels, int(math.log2(query_stride // vs)), cfg.base_channels,
                                          cfg.blocks, cfg.backend)
        self.query_shape = spec.grid_at(query_stride)

    def forward(self, batch: dict[str, Any], batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """-> (LiDAR volume Tensor  # [B, C, X_q, Y_q, Z_q], active sites Tensor  # [B, X_q, Y_q, Z_q] bool)."""
        pts, count = padded_points(batch, batch_size)
        vol, mask = self.encoder(self.voxelizer(pts, count))
        if tuple(vol.shape[2:]) != self.query_shape:  # odd grid sizes: strided conv rounds up
            vol = vol[:, :, :self.query_shape[0], :self.query_shape[1], :self.query_shape[2]]
            mask = mask[:, :self.query_shape[0], :self.query_shape[1], :self.query_shape[2]]
        return vol, mask

    def export_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` plus the fixed-size points of the export: ``points_padded [B, export_points, 4]`` and
        ``points_count [B]`` (rows past a sample's count are zeros)."""
        pts, count = padded_points(batch)
        N = int(self.cfg.export_points)
        if pts.shape[1] > N:
            pts = pts[:, :N]
        else:
            pts = F.pad(pts, (0, 0, 0, N - pts.shape[1]))
        out = dict(batch)
        out["points_padded"] = pts.contiguous()
        out["points_count"] = count.clamp(max=N).long()
        return out
