"""Voxel grids → 3D Gaussians, for rendering occupancy (GaussRender-style losses, visualisation).

Every kept voxel becomes one isotropic Gaussian:

- centre = voxel centre in the velodyne frame, ``origin + (index + 0.5) · voxel_size``;
- standard deviation σ = ``scale_factor · voxel_size`` on all three axes (default 0.5: σ is half
  a voxel, so neighbouring voxels, two σ apart, blend into a continuous surface while a lone voxel
  still renders about its own size; its opacity-aware footprint is ≤ 3.33σ ≈ 1.7 voxels wide);
- rotation = identity quaternion (w, x, y, z) = (1, 0, 0, 0);
- opacity = occupancy probability, ``1 − p[empty_index]`` by default (or the ``occupancy`` given);
- features = class probabilities ``[C]`` (or one-hot of the label for ground truth).

Voxels labelled ``ignore_index`` (255) are dropped; so are voxels outside ``keep`` (a mask, or a
threshold on the occupancy probability: the default 1/255 drops only voxels the rasterizer would
cull anyway, so it changes no image). Everything is differentiable w.r.t. the probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from occ_core.data.formats.semantickitti import GRID_ORIGIN, IGNORE, N_CLASSES, VOXEL_SIZE

DEFAULT_SCALE_FACTOR = 0.5
"""σ of a voxel's Gaussian in voxel sizes."""

DEFAULT_KEEP = 1.0 / 255.0
"""Default occupancy threshold: the rasterizer culls Gaussians with opacity < 1/255."""


@dataclass
class Gaussians:
    """A set of N Gaussians ready for :func:`occ_core.ops.gaussian_raster.rasterize_gaussians`."""

    means: Tensor  # [N, 3] velodyne frame, metres
    scales: Tensor  # [N, 3] standard deviations, metres
    quats: Tensor  # [N, 4] (w, x, y, z)
    opacities: Tensor  # [N]
    features: Tensor  # [N, C]
    voxel_index: Tensor = field(default=None)  # [N] int64 flat index x*(Y*Z) + y*Z + z of the voxel

    def __len__(self) -> int:
        return self.means.shape[0]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Gaussians":
        """Move to ``device`` and/or cast the floating tensors to ``dtype``."""
        fl = [t.to(device=device, dtype=dtype) for t in (self.means, self.scales, self.quats, self.opacities, self.features)]
        vi = None if self.voxel_index is None else self.voxel_index.to(device=device)
        return Gaussians(*fl, voxel_index=vi)


def _one(
    probs: Tensor | None,
    labels: Tensor | None,
    occupancy: Tensor | None,
    keep,
    origin,
    voxel_size: float,
    scale_factor: float,
    empty_index: int,
    ignore_index: int,
    n_classes: int,
    dtype: torch.dtype,
) -> Gaussians:
    if probs is not None:
        C, X, Y, Z = probs.shape
        device = probs.device
        dtype = probs.dtype
    else:
        X, Y, Z = labels.shape
        device = labels.device
    if occupancy is None:
        if probs is not None:
            occupancy = 1.0 - probs[empty_index]
        else:
            occupancy = ((labels != empty_index) & (labels != ignore_index)).to(dtype)
    elif occupancy.shape != (X, Y, Z):
        raise ValueError(f"occupancy must be [{X}, {Y}, {Z}], got {tuple(occupancy.shape)}")
    # which voxels
    if isinstance(keep, Tensor) and keep.dtype == torch.bool:
        if keep.shape != (X, Y, Z):
            raise ValueError(f"keep mask must be [{X}, {Y}, {Z}], got {tuple(keep.shape)}")
        mask = keep.to(device)
    else:
        thr = DEFAULT_KEEP if keep is None else float(keep)
        mask = occupancy.detach() >= thr
    if labels is not None:
        mask = mask & (labels != ignore_index)
        if probs is None:
            mask = mask & (labels != empty_index)
    idx = torch.nonzero(mask.reshape(-1)).squeeze(1)
    xi = idx // (Y * Z)
    yi = (idx // Z) % Y
    zi = idx % Z
    org = torch.as_tensor(origin, dtype=dtype, device=device)
    means = org + (torch.stack([xi, yi, zi], dim=1).to(dtype) + 0.5) * voxel_size
    n = idx.shape[0]
    scales = torch.full((n, 3), scale_factor * voxel_size, dtype=dtype, device=device)
    quats = torch.zeros(n, 4, dtype=dtype, device=device)
    quats[:, 0] = 1.0
    opac = occupancy.reshape(-1)[idx].to(dtype)
    if probs is not None:
        feats = probs.reshape(C, -1)[:, idx].t()
    else:
        lab = labels.reshape(-1)[idx].long()
        if n and int(lab.max()) >= n_classes:
            raise ValueError(f"label {int(lab.max())} outside 0..{n_classes - 1} (and not {ignore_index})")
        feats = torch.nn.functional.one_hot(lab, n_classes).to(dtype)
    return Gaussians(means, scales, quats, opac, feats, idx)


def voxels_to_gaussians(
    probs: Tensor | None = None,
    *,
    labels: Tensor | None = None,
    occupancy: Tensor | None = None,
    keep: Tensor | float | None = None,
    origin=GRID_ORIGIN,
    voxel_size: float = VOXEL_SIZE,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
    empty_index: int = 0,
    ignore_index: int = IGNORE,
    n_classes: int = N_CLASSES,
    dtype: torch.dtype = torch.float32,
) -> Gaussians | list[Gaussians]:
    """Turn a (batch of) voxel grid(s) into Gaussians.

    Args:
        probs: class probabilities ``[C, X, Y, Z]`` or ``[B, C, X, Y, Z]`` (e.g. a softmax of the
            logits). Features = all C probabilities; opacity = ``1 − probs[empty_index]``.
        labels: integer classes ``[X, Y, Z]`` or ``[B, X, Y, Z]`` (ground truth), instead of or with
            ``probs``. Alone: features = one-hot over ``n_classes``, opacity 1 for classes other
            than ``empty_index``; empty voxels are dropped. With ``probs``: only used to drop
            ``ignore_index`` voxels.
        occupancy: occupancy probability ``[X, Y, Z]`` / ``[B, X, Y, Z]`` replacing the default.
        keep: bool mask of voxels to keep (same shape as occupancy), or a threshold on the
            occupancy probability (default 1/255). Voxels labelled ``ignore_index`` always go.
        origin, voxel_size: grid geometry (velodyne frame); pass ``voxel_size = 0.2 · S`` for a
            grid downsampled by S.
        scale_factor: σ in voxel sizes (default 0.5).
        dtype: floating type of the outputs when only ``labels`` are given.

    Returns:
        :class:`Gaussians` for one grid, a list of them (one per sample) for a batch.
    """
    if probs is None and labels is None:
        raise ValueError("give probs, labels or both")
    batched = (probs is not None and probs.dim() == 5) or (probs is None and labels.dim() == 4)
    if probs is not None and probs.dim() not in (4, 5):
        raise ValueError(f"probs must be [C, X, Y, Z] or [B, C, X, Y, Z], got {tuple(probs.shape)}")
    if labels is not None and labels.dim() != (4 if batched else 3):
        raise ValueError(f"labels must be [{'B, ' if batched else ''}X, Y, Z], got {tuple(labels.shape)}")
    if probs is not None and labels is not None:
        if labels.shape[-3:] != probs.shape[-3:]:
            raise ValueError(f"labels {tuple(labels.shape)} and probs {tuple(probs.shape)} differ in grid shape")
    args = dict(origin=origin, voxel_size=voxel_size, scale_factor=scale_factor, empty_index=empty_index,
                ignore_index=ignore_index, n_classes=n_classes, dtype=dtype)
    if not batched:
        return _one(probs, labels, occupancy, keep, **args)
    B = probs.shape[0] if probs is not None else labels.shape[0]

    def pick(x, b):
        return x[b] if isinstance(x, Tensor) and x.dim() >= 4 else x

    return [
        _one(pick(probs, b), pick(labels, b), pick(occupancy, b), pick(keep, b), **args)
        for b in range(B)
    ]
