"""Cameras for rendering voxel grids: the dataset's camera, a bird's-eye view, and free views.

Conventions (those of :func:`occ_core.ops.gaussian_raster.rasterize_gaussians`):

- world = the frame of the dataset grid (x forward, y left, z up; e.g. SemanticKITTI's velodyne
  frame); functions take ``grid`` (a :class:`~occ_core.data.spec.GridSpec`), defaulting to SemanticKITTI's;
- camera frame x right, y down, z forward (OpenCV); ``viewmat`` maps world → camera;
- pixel (row i, column j) has its centre at (u, v) = (j + 0.5, i + 0.5), i.e. pixel j covers
  u ∈ [j, j + 1).

:mod:`occ_core.geometry.projection` (the benchmark loaders) uses integer pixel centres instead: a
point goes to pixel ``round(u)`` with u = fx·x/z + cx. :func:`sensor_camera` therefore shifts the
principal point by +0.5 px, so that a voxel centre renders into exactly the pixel that
``project_voxels`` gives it (up to ties at half pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from occ_core.data.formats.semantickitti import grid_spec as _default_grid

_G = _default_grid()  # defaults only; callers with a dataset spec pass ``grid=spec.grid``
GRID_ORIGIN: tuple[float, float, float] = _G.origin
GRID_EXTENT: tuple[float, float, float] = _G.size
GRID_CENTRE: tuple[float, float, float] = tuple(o + 0.5 * e for o, e in zip(GRID_ORIGIN, GRID_EXTENT))
VOXEL_SIZE: float = _G.voxel_size[0]


def grid_centre(grid) -> tuple[float, float, float]:
    """Centre of a :class:`~occ_core.data.spec.GridSpec`'s volume (metres, grid frame)."""
    return tuple(o + 0.5 * e for o, e in zip(grid.origin, grid.size))


@dataclass
class Cameras:
    """V cameras sharing one image size and camera model."""

    viewmats: Tensor  # [V, 4, 4] world -> camera
    Ks: Tensor  # [V, 3, 3]
    width: int
    height: int
    camera_model: str = "pinhole"

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, i) -> "Cameras":
        sl = slice(i, i + 1) if isinstance(i, int) else i
        return Cameras(self.viewmats[sl], self.Ks[sl], self.width, self.height, self.camera_model)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Cameras":
        return Cameras(self.viewmats.to(device=device, dtype=dtype), self.Ks.to(device=device, dtype=dtype),
                       self.width, self.height, self.camera_model)

    def raster_args(self) -> dict:
        """Keyword arguments of ``rasterize_gaussians`` for these cameras."""
        return dict(viewmats=self.viewmats, Ks=self.Ks, width=self.width, height=self.height,
                    camera_model=self.camera_model)

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Continuous pixel coordinates ``uv`` [V, N, 2] (pixel centres at +0.5) and camera depth
        [V, N] of world points [N, 3]."""
        points = torch.as_tensor(points, dtype=self.viewmats.dtype, device=self.viewmats.device)
        pc = torch.einsum("vij,nj->vni", self.viewmats[:, :3, :3], points) + self.viewmats[:, None, :3, 3]
        z = pc[..., 2]
        fx, fy = self.Ks[:, None, 0, 0], self.Ks[:, None, 1, 1]
        cx, cy = self.Ks[:, None, 0, 2], self.Ks[:, None, 1, 2]
        if self.camera_model == "ortho":
            u, v = fx * pc[..., 0] + cx, fy * pc[..., 1] + cy
        else:
            u, v = fx * pc[..., 0] / z + cx, fy * pc[..., 1] / z + cy
        return torch.stack([u, v], dim=-1), z

    def positions(self) -> Tensor:
        """Camera centres [V, 3] in the world frame."""
        R, t = self.viewmats[:, :3, :3], self.viewmats[:, :3, 3]
        return -(R.transpose(1, 2) @ t[..., None])[..., 0]


def _as_tensor(x, dtype=torch.float32) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, dtype=dtype)


def _homogeneous(T: Tensor) -> Tensor:
    if T.shape[-2:] == (4, 4):
        return T.clone()
    if T.shape[-2:] != (3, 4):
        raise ValueError(f"transform must be [..., 3, 4] or [..., 4, 4], got {tuple(T.shape)}")
    M = torch.zeros(T.shape[:-2] + (4, 4), dtype=T.dtype)
    M[..., :3, :] = T
    M[..., 3, 3] = 1.0
    return M


def sensor_camera(K, Tr, image_size: tuple[int, int], dtype: torch.dtype = torch.float32) -> Cameras:
    """The dataset's camera (image_2 for SemanticKITTI) as the loaders project into it.

    Args:
        K: [3, 3] intrinsics or the [3, 4] camera matrix P2 (its translation column is dropped, as
            the loaders do); a leading batch dim gives one camera per frame.
        Tr: [3, 4] or [4, 4] velodyne → cam0 transform (with the same optional batch dim).
        image_size: (width, height) of the (cropped, possibly resized) image.

    The principal point is moved by +0.5 px (see the module docstring), so the voxel centre that
    :func:`occ_core.geometry.projection.project_voxels` puts at pixel (u, v) renders into pixel
    (u, v) here.
    """
    K = _as_tensor(K, torch.float64)[..., :3, :3].clone()
    Tr = _homogeneous(_as_tensor(Tr, torch.float64))
    if K.dim() == 2:
        K = K[None]
    if Tr.dim() == 2:
        Tr = Tr[None]
    V = max(K.shape[0], Tr.shape[0])
    if K.shape[0] not in (1, V) or Tr.shape[0] not in (1, V):
        raise ValueError(f"K {tuple(K.shape)} and Tr {tuple(Tr.shape)} have different batch sizes")
    K, Tr = K.expand(V, 3, 3).clone(), Tr.expand(V, 4, 4)
    K[:, 0, 2] += 0.5
    K[:, 1, 2] += 0.5
    w, h = image_size
    return Cameras(Tr.to(dtype).contiguous(), K.to(dtype), int(w), int(h), "pinhole")


def bev_camera(
    resolution: float = VOXEL_SIZE,
    origin=GRID_ORIGIN,
    extent=GRID_EXTENT,
    clearance: float = 1.0,
    dtype: torch.dtype = torch.float32,
    grid=None,
) -> Cameras:
    """Orthographic top-down view of the grid's x-y area (51.2 × 51.2 m by default).

    The camera looks down −z from ``clearance`` metres above the top of the grid; image up is +x
    (forward), image right is −y (the car's right). ``resolution`` is metres per pixel (default
    one voxel: a 256 × 256 image whose pixel (r, c) is the voxel column (255 − r, 255 − c)). The
    grid corners map to the image corners: (x, y) = (x_max, y_max) → (u, v) = (0, 0) and
    (x_min, y_min) → (W, H). ``grid`` (a GridSpec) overrides ``origin`` and ``extent``.
    """
    if grid is not None:
        origin, extent = grid.origin, grid.size
    ox, oy, oz = origin
    ex, ey, ez = extent
    width, height = int(round(ey / resolution)), int(round(ex / resolution))
    f = 1.0 / resolution
    R = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    eye = torch.tensor([ox + 0.5 * ex, oy + 0.5 * ey, oz + ez + clearance], dtype=torch.float64)
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    K = torch.tensor([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Cameras(M[None].to(dtype), K[None].to(dtype), width, height, "ortho")


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> Tensor:
    """World → camera [4, 4] (float64) of a camera at ``eye`` looking at ``target`` with the image's
    up along ``up`` (x right, y down, z forward)."""
    eye, target, up = (torch.as_tensor(a, dtype=torch.float64) for a in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    if float(x.norm()) < 1e-9:
        raise ValueError("viewing direction is parallel to 'up'")
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def pinhole_K(width: int, height: int, fov_x_deg: float) -> Tensor:
    """[3, 3] intrinsics (float64) with square pixels, horizontal field of view ``fov_x_deg`` and
    the principal point at the image centre."""
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return torch.tensor([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _stack(viewmats: list[Tensor], Ks: list[Tensor], image_size, dtype) -> Cameras:
    w, h = image_size
    return Cameras(torch.stack(viewmats).to(dtype), torch.stack(Ks).to(dtype), int(w), int(h), "pinhole")


def elevated_camera(
    behind: float = 10.0,
    height: float = 10.0,
    target=GRID_CENTRE,
    fov_deg: float = 70.0,
    image_size: tuple[int, int] = (640, 360),
    dtype: torch.dtype = torch.float32,
    grid=None,
) -> Cameras:
    """A pinhole camera ``behind`` metres behind the sensor (x = −behind) and ``height`` metres
    above it, looking at ``target`` (the grid centre by default; ``grid``'s centre when given)."""
    if grid is not None:
        target = grid_centre(grid)
    eye = (-float(behind), 0.0, float(height))
    return _stack([look_at(eye, target)], [pinhole_K(*image_size, fov_deg)], image_size, dtype)


def orbit_cameras(
    n: int,
    radius: float = 30.0,
    height: float = 15.0,
    target=GRID_CENTRE,
    fov_deg: float = 70.0,
    image_size: tuple[int, int] = (480, 270),
    start_deg: float = 180.0,
    dtype: torch.dtype = torch.float32,
    grid=None,
) -> Cameras:
    """``n`` pinhole cameras evenly spaced on a horizontal circle of ``radius`` around ``target``,
    ``height`` metres above it, all looking at it; the first one at azimuth ``start_deg``
    (180° = behind the car, on the −x side)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    if grid is not None:
        target = grid_centre(grid)
    tgt = torch.as_tensor(target, dtype=torch.float64)
    vms = []
    for k in range(n):
        th = math.radians(start_deg) + 2 * math.pi * k / n
        eye = tgt + torch.tensor([radius * math.cos(th), radius * math.sin(th), height], dtype=torch.float64)
        vms.append(look_at(eye, tgt))
    return _stack(vms, [pinhole_K(*image_size, fov_deg)] * n, image_size, dtype)


def random_cameras(
    n: int,
    generator: torch.Generator | None = None,
    radius: tuple[float, float] = (15.0, 40.0),
    height: tuple[float, float] = (3.0, 25.0),
    target=GRID_CENTRE,
    target_jitter: float = 5.0,
    fov_deg: tuple[float, float] = (50.0, 80.0),
    image_size: tuple[int, int] = (480, 270),
    dtype: torch.dtype = torch.float32,
    grid=None,
) -> Cameras:
    """``n`` pinhole cameras at random azimuths, distances in ``radius`` and heights in ``height``
    around ``target``, each looking at ``target`` moved by up to ``target_jitter`` metres in x and
    y, with a random horizontal field of view in ``fov_deg``. Deterministic for a seeded
    ``generator``."""
    if n < 1:
        raise ValueError("n must be >= 1")
    if grid is not None:
        target = grid_centre(grid)
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    tgt = torch.as_tensor(target, dtype=torch.float64)
    vms, Ks = [], []
    for k in range(n):
        th = 2 * math.pi * float(u[k, 0])
        r = radius[0] + (radius[1] - radius[0]) * float(u[k, 1])
        h = height[0] + (height[1] - height[0]) * float(u[k, 2])
        t = tgt + torch.tensor([(2 * float(u[k, 3]) - 1) * target_jitter, (2 * float(u[k, 4]) - 1) * target_jitter, 0.0],
                               dtype=torch.float64)
        eye = t + torch.tensor([r * math.cos(th), r * math.sin(th), h], dtype=torch.float64)
        vms.append(look_at(eye, t))
        Ks.append(pinhole_K(*image_size, fov_deg[0] + (fov_deg[1] - fov_deg[0]) * float(u[k, 5])))
    return _stack(vms, Ks, image_size, dtype)
