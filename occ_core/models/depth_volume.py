"""Geometry of the input depth maps as a voxel volume (``model.lifting.depth_volume``; ours).

:class:`DepthVolume`: the depth maps a method that lifts camera features already receives
(``batch["depth"]``: the LiDAR scan projected, or stereo depth, per camera) turned into per-voxel
features on a fine grid (1:S of the dataset grid) and folded into the query grid's channels by a
strided 3D convolution, added to the lifted volume. Features of a fine voxel:

- ``log(1 + n)``, ``n`` the depth points (pixels) that fall inside it: where surfaces are, at the fine
  resolution (the depth proposal only says which 0.8 m query voxels hold one);
- the truncated signed distance along the camera ray, ``clamp((D - z) / trunc, -1, 1)`` with ``z`` the
  voxel centre's camera depth and ``D`` the depth map at its pixel (holes filled with the nearest depth
  of the 3 x 3 neighbourhood), averaged over the cameras that have a depth there: +1 in observed free
  space in front of a surface, about 0 at it, -1 behind it;
- whether any camera has a depth at the voxel's pixel (the distance is 0 otherwise);
- with ``paint`` (``model.lifting.depth_paint``), the mean over the depth points inside the voxel of the
  network image's colour (``rgb``) or of the finest image-feature level (``features``, learnt) at their
  pixels: what the image shows exactly where the depth map puts a surface, at the fine resolution (the
  deformable lifting samples the image around the projection of a 0.8 m query voxel, occluders and
  background included).

VoxFormer's stage 1 turns the same depth into an occupancy volume to choose its queries; here the
decoder gets it as features too. Nothing is learnt from the depth but the folding convolution, so
the result follows the depth source (docs/training.md says what the quickstart's depth is).

The features are computed on the device from the batch's ``grid_to_cam`` / ``intrinsics`` (the network
image's folded intrinsics, flips included), the geometry in float64 (as every projection of the models:
a voxel or pixel chosen by rounding must not depend on a backend's float32 arithmetic, so the exported
model agrees with the eager one), without gradients.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.ops.patch_conv import PatchConv3d, patch_conv3d

__all__ = ["DepthVolume", "depth_features", "fill_depth_holes", "fold_painted", "paint_voxels"]

PAINTS = ("none", "rgb", "features")


_NO_DEPTH = 1e9
"""Depth (m) that stands for "no measurement" inside :func:`fill_depth_holes`."""


def fill_depth_holes(depth: Tensor) -> Tensor:
    """depth [..., H, W] (0 = none) with each hole set to the nearest (smallest) depth of its 3 x 3
    neighbourhood, if any; measured pixels keep their value."""
    shape = depth.shape
    d = depth.reshape(-1, 1, *shape[-2:]).float()
    far = torch.full_like(d, _NO_DEPTH)  # a finite stand-in for "none": the ONNX export turns inf into float max
    near = -F.max_pool2d(-torch.where(d > 0, d, far), 3, stride=1, padding=1)
    out = torch.where(d > 0, d, torch.where(near < _NO_DEPTH, near, torch.zeros_like(near)))
    return out.reshape(shape)


@torch.no_grad()
def depth_features(depth: Tensor, intrinsics: Tensor, grid_to_cam: Tensor, centres: Tensor,
                   grid_shape: Sequence[int], voxel_size: Sequence[float], origin: Sequence[float],
                   trunc: float, flat: Tensor | None = None) -> Tensor:
    """Per-voxel features of the depth maps on a grid (see the module docstring).

    depth: Tensor  # [B, V, 1, H, W] metres (0 = none);  intrinsics: Tensor  # [B, V, 3, 3];
    grid_to_cam: Tensor  # [B, V, 4, 4];  centres: Tensor  # [X*Y*Z, 3] the grid's voxel centres;
    flat: each depth pixel's voxel (:func:`~occ_core.models.lifting.depth_voxel_index` on this grid) when the
    caller has it already. Returns Tensor  # [B, 3, X, Y, Z]: log(1 + points), truncated signed distance, has-depth.
    """
    from occ_core.geometry.cameras import project_points
    from occ_core.models.lifting import depth_voxel_index

    B, V, _, H, W = depth.shape
    X, Y, Z = (int(s) for s in grid_shape)
    n = X * Y * Z
    # 1. points per voxel
    if flat is None:
        flat = depth_voxel_index(depth, intrinsics, grid_to_cam, grid_shape, voxel_size, origin)
    count = torch.zeros(B, n + 1, dtype=torch.float32, device=depth.device)
    count = count.scatter_add(1, flat, torch.ones_like(flat, dtype=torch.float32))[:, :n]
    # 2. truncated signed distance along each camera's ray, averaged over the cameras with a depth there;
    # pixels: the network image's, computed in float64 and rounded (the same pixel in an exported model)
    filled = fill_depth_holes(depth[:, :, 0])  # [B, V, H, W]
    pixels, _, z = project_points(centres, grid_to_cam, intrinsics, None, (W, H))  # [B, V, n, 2], [B, V, n]
    ui, vi = torch.round(pixels[..., 0]), torch.round(pixels[..., 1])
    seen = (z > 0) & (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
    pix = (vi.clamp(0, H - 1) * W + ui.clamp(0, W - 1)).long()
    D = filled.reshape(B, V, H * W).gather(2, pix)
    has = seen & (D > 0)
    sdf = ((D - z) / trunc).clamp(-1.0, 1.0) * has
    k = has.sum(1)  # [B, n]
    sdf = sdf.sum(1) / k.clamp(min=1)
    feats = torch.stack([torch.log1p(count), sdf, (k > 0).float()], 1)
    return feats.reshape(B, 3, X, Y, Z)


def paint_voxels(values: Tensor, flat: Tensor, n: int) -> Tensor:
    """Mean per voxel of per-pixel values over the depth points that fall in it.

    values: Tensor  # [B, V, C, H, W] at the depth maps' pixels;  flat: Tensor  # [B, V*H*W] long, each
    pixel's voxel (``n`` = the dump slot, from :func:`~occ_core.models.lifting.depth_voxel_index`).
    Returns Tensor  # [B, C, n] (0 where no point falls). Differentiable in ``values``."""
    B, V, C = values.shape[:3]
    src = values.permute(0, 2, 1, 3, 4).reshape(B, C, -1)  # [B, C, V*H*W], the order of ``flat``
    out = values.new_zeros(B, C, n + 1).scatter_add(2, flat[:, None, :].expand(B, C, flat.shape[1]), src)
    count = torch.zeros(B, n + 1, dtype=out.dtype, device=out.device)
    count = count.scatter_add(1, flat, torch.ones_like(flat, dtype=out.dtype))
    return out[:, :, :n] / count[:, None, :n].clamp(min=1.0)


def fold_painted(values: Tensor, flat: Tensor, grid_shape: Sequence[int], weight: Tensor) -> Tensor:
    """``F.conv3d(paint, weight, stride=f)`` of the painted volume ``paint = paint_voxels(values, flat, n)``
    (``f`` = the kernel size, ``n = X*Y*Z``) without building that volume: the volume is zero but at
    the voxels the depth points fall in, so each pixel's value, divided by its voxel's point count, is
    multiplied by the kernel tap of its voxel's place in its patch and summed into the patch. Fixed
    shapes only (no unique / nonzero), so it exports to ONNX as the dense path does.

    values: Tensor  # [B, V, C, H, W];  flat: Tensor  # [B, V*H*W] long (``n`` = the dump slot);
    weight: Tensor  # [O, C, f, f, f] -> Tensor  # [B, O, X // f, Y // f, Z // f] (voxels beyond the last
    whole patch are dropped, as ``F.conv3d`` drops them). Differentiable in ``values`` and ``weight``."""
    B, V, C = values.shape[:3]
    O, Ci, fx, fy, fz = weight.shape
    X, Y, Z = (int(s) for s in grid_shape)
    n = X * Y * Z
    X2, Y2, Z2 = X // fx, Y // fy, Z // fz
    m = X2 * Y2 * Z2
    src = values.permute(0, 1, 3, 4, 2).reshape(B, -1, C)  # [B, P, C], the order of ``flat``
    count = torch.zeros(B, n + 1, dtype=src.dtype, device=src.device)
    count = count.scatter_add(1, flat, torch.ones_like(flat, dtype=src.dtype))
    per_point = src / count.gather(1, flat).clamp(min=1.0)[..., None]  # a voxel's mean = sum of these
    ix, iy, iz = flat // (Y * Z), (flat // Z) % Y, flat % Z
    inside = (flat < n) & (ix < X2 * fx) & (iy < Y2 * fy) & (iz < Z2 * fz)
    patch = torch.where(inside, ((ix // fx) * Y2 + iy // fy) * Z2 + iz // fz, torch.full_like(flat, m))
    tap = ((ix % fx) * fy + iy % fy) * fz + iz % fz  # [B, P] in 0 .. f^3 - 1
    taps = fx * fy * fz
    w = weight.permute(1, 2, 3, 4, 0).reshape(C, taps * O).to(src.dtype)  # [C, (tap, O)]
    every = (per_point @ w).view(B, -1, taps, O)  # [B, P, taps, O]: each pixel through every tap
    mine = every.gather(2, tap[:, :, None, None].expand(B, tap.shape[1], 1, O))[:, :, 0]  # [B, P, O]
    out = src.new_zeros(B, m + 1, O).scatter_add(1, patch[..., None].expand(B, patch.shape[1], O), mine)
    return out[:, :m].transpose(1, 2).reshape(B, O, X2, Y2, Z2)


class DepthVolume(nn.Module):
    """Depth-map features on a fine grid (1:S of the dataset grid) folded into the query grid:
    ``Conv3d(3 + P, C, f, stride=f)`` -> ReLU -> ``Conv3d(C, C, 1)`` with ``f`` = query stride / fine scale
    and ``P`` the paint channels (0, 3 or C).

    Args:
        fine_grid: the fine grid (an ``occ_core.data.spec`` Grid: ``shape``, ``voxel_size``, ``origin``).
        factor: fine voxels per query voxel along each axis.
        channels: output channels (the lifted volume's).
        trunc: truncation distance of the signed distance (metres).
        paint: ``none``, ``rgb`` (3 more input channels) or ``features`` (``channels`` more: the finest
            image-feature level, which must have ``channels`` channels).
    """

    def __init__(self, fine_grid, factor: int, channels: int, trunc: float = 1.0, paint: str = "none"):
        super().__init__()
        from occ_core.geometry.cameras import voxel_centres

        if paint not in PAINTS:
            raise ValueError(f"paint must be one of {', '.join(PAINTS)} (got {paint!r})")
        self.paint = paint
        extra = {"none": 0, "rgb": 3, "features": channels}[paint]
        self.grid_shape = tuple(int(s) for s in fine_grid.shape)
        self.voxel_size = tuple(float(v) for v in fine_grid.voxel_size)
        self.origin = tuple(float(o) for o in fine_grid.origin)
        self.trunc = float(trunc)
        self.fold = nn.Sequential(PatchConv3d(3 + extra, channels, factor), nn.ReLU(inplace=True),
                                  PatchConv3d(channels, channels, 1))
        self.register_buffer("centres", voxel_centres(self.grid_shape, self.voxel_size, self.origin),
                             persistent=False)

    def forward(self, batch: dict, image_feats: list[Tensor] | None = None) -> Tensor:
        """image_feats: the image features, finest first, each [B, V, C, h, w] (needed by ``features``).
        -> Tensor  # [B, C, X, Y, Z] at the query grid."""
        from occ_core.models.lifting import depth_voxel_index

        with torch.no_grad():  # each depth pixel's fine voxel, shared by the geometry and the paint
            flat = depth_voxel_index(batch["depth"], batch["intrinsics"], batch["grid_to_cam"], self.grid_shape,
                                     self.voxel_size, self.origin)
        feats = depth_features(batch["depth"], batch["intrinsics"], batch["grid_to_cam"], self.centres,
                               self.grid_shape, self.voxel_size, self.origin, self.trunc, flat=flat)
        conv, rest = self.fold[0], self.fold[1:]
        if self.paint == "none":
            return rest(patch_conv3d(feats, conv.weight, conv.bias))
        # The fold is linear before its ReLU: the 3 geometry channels go through it densely (no gradient
        # reaches them), the paint channels, zero but at the voxels the depth points fall in, straight from
        # the pixels (fold_painted) instead of through a dense [B, C, X, Y, Z] volume of them.
        geo = patch_conv3d(feats, conv.weight[:, :3], conv.bias)
        values = self.paint_values(batch, image_feats)
        painted = fold_painted(values.to(geo.dtype), flat, self.grid_shape, conv.weight[:, 3:])
        return rest(geo + painted)

    def paint_values(self, batch: dict, image_feats: list[Tensor] | None) -> Tensor:
        """The per-pixel values painted into the voxels, [B, V, C', H, W] at the depth maps' pixels: the
        network image (``rgb``) or its finest feature level resized to the depth maps (``features``)."""
        depth = batch["depth"]
        B, V, _, H, W = depth.shape
        if self.paint == "rgb":
            values = batch["images"]
        else:
            if not image_feats:
                raise ValueError("depth_paint=features needs the image features")
            values = image_feats[0]
        if tuple(values.shape[-2:]) != (H, W):  # feature levels are strided; the image may differ too
            values = F.interpolate(values.flatten(0, 1), size=(H, W), mode="bilinear",
                                   align_corners=False).view(B, V, -1, H, W)
        return values

    def painted(self, batch: dict, image_feats: list[Tensor] | None, flat: Tensor) -> Tensor:
        """The paint channels [B, C', X, Y, Z] (see the class docstring); ``flat``: each depth pixel's fine
        voxel, as :func:`~occ_core.models.lifting.depth_voxel_index` gives it. (The forward pass folds
        them without building this volume: :func:`fold_painted`.)"""
        values = self.paint_values(batch, image_feats)
        return paint_voxels(values, flat, math.prod(self.grid_shape)).view(values.shape[0], -1, *self.grid_shape)
