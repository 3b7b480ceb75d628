"""Differentiable rasterization of 3D Gaussians (EWA splatting, as in 3DGS / gsplat).

One public function, :func:`rasterize_gaussians`, with two backends:

- ``"torch"``: pure torch (:mod:`occ_core.ops._gaussian_torch`), CPU and CUDA, tiled and chunked
  so that memory stays bounded; the reference.
- ``"gsplat"``: ``gsplat.rasterization`` (:mod:`occ_core.ops._gaussian_gsplat`), CUDA only; gsplat is
  an optional dependency imported only when this backend runs.
- ``"auto"`` picks gsplat when it is importable and the tensors are on CUDA, torch otherwise.

Both compute the same thing (see ``docs/rendering.md``):

- camera frame: x right, y down, z forward (OpenCV); ``viewmats`` map world → camera.
- ``"pinhole"``: u = fx·x/z + cx, v = fy·y/z + cy (the skew K[0, 1] is ignored); ``"ortho"``:
  u = fx·x + cx, v = fy·y + cy (K maps camera metres to pixels), depth = z.
- pixel (i, j) (row i, column j) has its centre at (u, v) = (j + 0.5, i + 0.5).
- 2D covariance J Σ Jᵀ + 0.3·I (eps2d low-pass), alpha = min(0.999, o·exp(−½dᵀΣ₂⁻¹d)), skipped when
  < 1/255; front-to-back compositing by camera depth; a pixel stops before the Gaussian that would
  bring its transmittance to ≤ 1e-4.
- features = Σ wᵢ fᵢ (+ T·background), alpha = Σ wᵢ = 1 − T, depth = Σ wᵢ zᵢ / max(alpha, 1e-10)
  (gsplat's "ED": expected depth *normalised by alpha*; multiply by alpha for the accumulated one).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from occ_core.ops import _gaussian_torch
from occ_core.ops._gaussian_gsplat import gsplat_available, gsplat_importable, rasterize_gsplat, unavailable_reason

__all__ = [
    "rasterize_gaussians",
    "quat_scale_to_covar",
    "gsplat_available",
    "gsplat_importable",
    "unavailable_reason",
    "resolve_backend",
]

quat_scale_to_covar = _gaussian_torch.quat_scale_to_covar

Backend = Literal["auto", "torch", "gsplat"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that ``backend`` means for tensors on ``device``."""
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    if backend not in ("torch", "gsplat"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'gsplat', got {backend!r}")
    if backend == "gsplat" and not gsplat_available():
        raise RuntimeError(f"backend='gsplat' cannot run: {unavailable_reason()}")
    return backend


def rasterize_gaussians(
    means: Tensor,
    scales: Tensor | None,
    quats: Tensor | None,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    covars: Tensor | None = None,
    camera_model: Literal["pinhole", "ortho"] = "pinhole",
    near: float = 0.1,
    far: float = 200.0,
    eps2d: float = 0.3,
    backend: Backend = "auto",
    tile_size: int | None = None,
    chunk_pairs: int = 1 << 22,
    packed: bool = False,
    background: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render Gaussians into ``V`` views.

    Args:
        means: [N, 3] centres (world frame).
        scales: [N, 3] standard deviations (metres) and ``quats`` [N, 4] rotations (w, x, y, z; need
            not be normalised); both ``None`` when ``covars`` [N, 3, 3] (symmetric) is given.
        opacities: [N] in [0, 1].
        features: [N, C], any C ≥ 1 (class probabilities, colours, ...).
        viewmats: [V, 4, 4] world → camera; ``Ks``: [V, 3, 3] intrinsics.
        width, height: image size in pixels.
        covars: [N, 3, 3] covariances, instead of scales and quats.
        camera_model: ``"pinhole"`` or ``"ortho"``.
        near, far: Gaussians whose camera depth is outside ``[near, far]`` are dropped.
        eps2d: low-pass added to the 2D covariance diagonal (pixels²).
        backend: ``"auto"``, ``"torch"`` or ``"gsplat"``.
        tile_size: tile edge in pixels; default 8 for the torch backend (fastest on CPU: fewer
            wasted pixel × Gaussian pairs than 16), 16 for gsplat (its default).
        chunk_pairs: torch backend: pixel × Gaussian pairs per step of the compositing wavefront,
            which bounds its working memory (about 15 temporaries of this many elements).
        packed: gsplat backend: its ``packed`` mode.
        background: [C] or [V, C] features behind everything (added as T·background).

    Returns:
        ``(features [V, H, W, C], depth [V, H, W, 1], alpha [V, H, W, 1])``, depth being the
        expected camera depth normalised by alpha (0 where alpha is 0). Differentiable w.r.t.
        means, scales, quats / covars, opacities, features (and background).
    """
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    N = means.shape[0]
    if features.dim() != 2 or features.shape[0] != N or features.shape[1] < 1:
        raise ValueError(f"features must be [N, C] with C >= 1 and N = {N}, got {tuple(features.shape)}")
    if opacities.shape != (N,):
        raise ValueError(f"opacities must be [N] = [{N}], got {tuple(opacities.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be [V, 4, 4], got {tuple(viewmats.shape)}")
    if Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"Ks must be [V, 3, 3] with V = {viewmats.shape[0]}, got {tuple(Ks.shape)}")
    if camera_model not in ("pinhole", "ortho"):
        raise ValueError(f"camera_model must be 'pinhole' or 'ortho', got {camera_model!r}")
    if covars is None:
        if scales is None or quats is None:
            raise ValueError("give either scales and quats, or covars")
        if scales.shape != (N, 3) or quats.shape != (N, 4):
            raise ValueError(f"scales must be [N, 3] and quats [N, 4], got {tuple(scales.shape)}, {tuple(quats.shape)}")
    else:
        if scales is not None or quats is not None:
            raise ValueError("give either scales and quats, or covars, not both")
        if covars.shape != (N, 3, 3):
            raise ValueError(f"covars must be [N, 3, 3], got {tuple(covars.shape)}")
    width, height = int(width), int(height)
    which = resolve_backend(backend, means.device)
    if tile_size is None:
        tile_size = 16 if which == "gsplat" else 8
    if width < 1 or height < 1 or tile_size < 1:
        raise ValueError("width, height and tile_size must be positive")

    if which == "gsplat":
        return rasterize_gsplat(
            means, quats, scales, covars, opacities, features, viewmats, Ks, width, height,
            camera_model=camera_model, near=near, far=far, eps2d=eps2d, tile_size=tile_size,
            packed=packed, background=background,
        )
    if covars is None:
        covars = quat_scale_to_covar(quats, scales)
    return _gaussian_torch.rasterize_torch(
        means, covars, opacities, features, viewmats.to(means.dtype), Ks.to(means.dtype), width, height,
        camera_model=camera_model, near=near, far=far, eps2d=eps2d, tile_size=tile_size,
        chunk_pairs=chunk_pairs, background=background,
    )
