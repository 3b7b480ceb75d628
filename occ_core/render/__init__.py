"""Rendering voxel grids with Gaussian splatting (GaussRender-style views and losses).

- :mod:`occ_core.render.gaussians`: voxel grids (probabilities or labels) → 3D Gaussians.
- :mod:`occ_core.render.cameras`: the dataset's camera, a bird's-eye view, elevated / orbiting /
  random views.
- :func:`render_gaussians`: both together through :func:`occ_core.ops.gaussian_raster.rasterize_gaussians`.

See ``docs/rendering.md``.
"""

from __future__ import annotations

from torch import Tensor

from occ_core.render.cameras import (
    Cameras,
    bev_camera,
    elevated_camera,
    look_at,
    orbit_cameras,
    pinhole_K,
    random_cameras,
    sensor_camera,
)
from occ_core.render.gaussians import Gaussians, voxels_to_gaussians

__all__ = [
    "Cameras",
    "Gaussians",
    "bev_camera",
    "elevated_camera",
    "look_at",
    "orbit_cameras",
    "pinhole_K",
    "random_cameras",
    "render_gaussians",
    "sensor_camera",
    "voxels_to_gaussians",
]


def render_gaussians(gaussians: Gaussians, cameras: Cameras, **kwargs) -> tuple[Tensor, Tensor, Tensor]:
    """Render ``gaussians`` into every camera: (features [V, H, W, C], expected depth [V, H, W, 1],
    alpha [V, H, W, 1]). Keyword arguments go to ``rasterize_gaussians`` (backend, near, far,
    background, tile_size, ...)."""
    from occ_core.ops.gaussian_raster import rasterize_gaussians

    g = gaussians
    cams = cameras.to(device=g.means.device, dtype=g.means.dtype)
    return rasterize_gaussians(g.means, g.scales, g.quats, g.opacities, g.features, **cams.raster_args(), **kwargs)
