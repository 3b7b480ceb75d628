"""gsplat backend of :func:`occ_core.ops.gaussian_raster.rasterize_gaussians` (CUDA only).

gsplat is an optional dependency: it is imported lazily, inside the functions here, never when
:mod:`occ_core` or :mod:`occ_core.ops.gaussian_raster` is imported. Its kernels need CUDA (they
are compiled on first use when the wheel carries none).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=1)
def _import_error() -> str | None:
    try:
        import gsplat  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"{type(exc).__name__}: {exc}"
    return None


def gsplat_importable() -> bool:
    """True when ``import gsplat`` works (it may still lack CUDA kernels)."""
    return _import_error() is None


def gsplat_available() -> bool:
    """True when gsplat imports and CUDA is available, i.e. the backend can run."""
    return torch.cuda.is_available() and gsplat_importable()


def unavailable_reason() -> str:
    if not torch.cuda.is_available():
        return "CUDA is not available (gsplat's kernels need it)"
    err = _import_error()
    return f"gsplat is not importable ({err}); install it with `pip install gsplat`" if err else ""


def rasterize_gsplat(
    means: Tensor,
    quats: Tensor | None,
    scales: Tensor | None,
    covars: Tensor | None,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    camera_model: str = "pinhole",
    near: float = 0.1,
    far: float = 200.0,
    eps2d: float = 0.3,
    tile_size: int = 16,
    packed: bool = False,
    background: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Call ``gsplat.rasterization`` with ``render_mode="RGB+ED"`` and split its output into
    (features [V, H, W, C], expected depth [V, H, W, 1], alpha [V, H, W, 1])."""
    if not gsplat_available():
        raise RuntimeError(f"the gsplat backend cannot run: {unavailable_reason()}")
    from gsplat import rasterization

    V = viewmats.shape[0]
    C = features.shape[1]
    backgrounds = None
    if background is not None:
        bg = background.to(dtype=features.dtype, device=features.device)
        backgrounds = bg.expand(V, C).contiguous() if bg.dim() == 1 else bg
    if covars is not None:
        quats = scales = None
    colors, alphas, _meta = rasterization(
        means,
        quats,
        scales,
        opacities,
        features,
        viewmats,
        Ks,
        width,
        height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        packed=packed,
        tile_size=tile_size,
        backgrounds=backgrounds,
        render_mode="RGB+ED",
        rasterize_mode="classic",
        camera_model=camera_model,
        covars=covars,
    )
    return colors[..., :C], colors[..., C:], alphas
