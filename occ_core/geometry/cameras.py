"""Voxel grids and cameras on the device (torch): the projections the models use.

Every batch describes its cameras with three per-camera matrices (docs/design.md):

* ``grid_to_cam [B, N, 4, 4]``: grid frame -> camera frame (x right, y down, z forward);
* ``intrinsics [B, N, 3, 3]``: intrinsics of the network image, with the benchmark crop, the resize
  and a horizontal flip folded in (a flipped image has a negative ``fx``), so no model or loss has a
  flip special case;
* ``crop_to_image [B, N, 3, 3]``: the affine map from the benchmark crop's pixel grid to the network
  image (resize, flip). Voxel centres are projected as the SSC benchmark loaders do it: into the
  crop, rounded to the nearest pixel centre, in view when inside the crop and in front, then mapped
  to the network image. (Folded intrinsics = ``crop_to_image @ crop intrinsics``.)

Pixel coordinates use the centre convention: pixel ``u`` covers ``[u - 0.5, u + 0.5]``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from occ_core.geometry.linalg import inverse3x3


def voxel_centres(shape: Sequence[int], voxel_size: Sequence[float], origin: Sequence[float], device=None,
                  dtype: torch.dtype = torch.float64) -> Tensor:
    """Centres of a grid's voxels in its frame, C order: Tensor  # [X*Y*Z, 3]."""
    axes = [float(origin[i]) + (torch.arange(int(shape[i]), device=device, dtype=torch.float64) + 0.5)
            * float(voxel_size[i]) for i in range(3)]
    xx, yy, zz = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1), zz.reshape(-1)], dim=1).to(dtype)


def project_points(
    points: Tensor,  # [M, 3] or [B, M, 3] grid frame
    grid_to_cam: Tensor,  # [B, N, 4, 4]
    intrinsics: Tensor,  # [B, N, 3, 3] (folded)
    crop_to_image: Tensor | None,  # [B, N, 3, 3] or None
    crop_size: tuple[int, int],  # (W, H) of the benchmark crop
    round_pixels: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Project points into every camera.

    Returns ``(pixels Tensor  # [B, N, M, 2] (u, v) float32 in the network image, visible Tensor  #
    [B, N, M] bool, depth Tensor  # [B, N, M] float32 metres)``. With ``crop_to_image`` (and
    ``round_pixels``) the projection is rounded in the crop's pixel grid and the in-view test is
    ``0 <= u < W``, ``0 <= v < H`` there, exactly as the benchmark loaders; without it, pixels are
    not rounded and the in-view test is against the network image of size ``crop_size``.
    Computed in float64.
    """
    T = grid_to_cam.double()
    K = intrinsics.double()
    p = points.double()
    if p.dim() == 2:
        cam = torch.einsum("bnij,mj->bnmi", T[..., :3, :3], p) + T[..., None, :3, 3]
    else:
        cam = torch.einsum("bnij,bmj->bnmi", T[..., :3, :3], p) + T[..., None, :3, 3]
    z = cam[..., 2]
    safe = torch.where(z != 0, z, torch.ones_like(z))
    W, H = crop_size
    if crop_to_image is not None:
        A = crop_to_image.double()
        Kc = inverse3x3(A) @ K  # intrinsics of the crop
        u = (Kc[..., None, 0, 0] * cam[..., 0] + Kc[..., None, 0, 1] * cam[..., 1]) / safe + Kc[..., None, 0, 2]
        v = (Kc[..., None, 1, 1] * cam[..., 1]) / safe + Kc[..., None, 1, 2]
        if round_pixels:
            u, v = torch.round(u), torch.round(v)
        u = torch.where(z == 0, torch.full_like(u, -1.0), u)
        v = torch.where(z == 0, torch.full_like(v, -1.0), v)
        if round_pixels:
            visible = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (z > 0)
        else:
            visible = (u > -0.5) & (u < W - 0.5) & (v > -0.5) & (v < H - 0.5) & (z > 0)
        pu = A[..., None, 0, 0] * u + A[..., None, 0, 1] * v + A[..., None, 0, 2]
        pv = A[..., None, 1, 0] * u + A[..., None, 1, 1] * v + A[..., None, 1, 2]
    else:
        pu = (K[..., None, 0, 0] * cam[..., 0] + K[..., None, 0, 1] * cam[..., 1]) / safe + K[..., None, 0, 2]
        pv = (K[..., None, 1, 1] * cam[..., 1]) / safe + K[..., None, 1, 2]
        visible = (pu > -0.5) & (pu < W - 0.5) & (pv > -0.5) & (pv < H - 0.5) & (z > 0)
    return torch.stack([pu, pv], -1).float(), visible, z.float()


def unproject_depth(depth: Tensor, intrinsics: Tensor, grid_to_cam: Tensor) -> Tensor:
    """Every pixel of ``depth [B, N, 1, H, W]`` (metres) back-projected into the grid frame:
    Tensor  # [B, N, H*W, 3] float64 (pixels without depth give the camera centre's ray at 0 m;
    callers mask them with ``depth > 0``)."""
    from occ_core.geometry.linalg import inverse_rigid4x4

    B, N, _, H, W = depth.shape
    d = depth[:, :, 0].double().reshape(B, N, H * W)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64, device=depth.device),
                          torch.arange(W, dtype=torch.float64, device=depth.device), indexing="ij")
    pix = torch.stack([u.reshape(-1)[None, None] * d, v.reshape(-1)[None, None] * d, d], -1)  # [B, N, HW, 3]
    cam = pix @ inverse3x3(intrinsics.double()).transpose(-1, -2)
    T_inv = inverse_rigid4x4(grid_to_cam.double())
    return cam @ T_inv[..., :3, :3].transpose(-1, -2) + T_inv[..., None, :3, 3]
