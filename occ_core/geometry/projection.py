"""Voxel grids and their projection into a camera, exactly as the SSC benchmark loaders do it.

Voxel centres are built in the velodyne frame, moved to the camera frame by ``Tr`` (velodyne ->
cam0, 4x4), and projected through the 3x3 intrinsic part of the camera matrix (the loaders drop
the translation column of P2). Pixels are rounded to integers; a voxel is in view when
``0 <= u < W``, ``0 <= v < H`` and its depth is positive.
"""

from __future__ import annotations

import numpy as np

from occ_core.data.formats.semantickitti import GRID_ORIGIN, GRID_SHAPE, VOXEL_SIZE

SCALES: tuple[int, ...] = (1, 2, 4, 8)
"""Downsampling factors of the targets: 1:1, 1:2, 1:4, 1:8."""


def grid_shape(scale: int = 1) -> tuple[int, int, int]:
    """Shape of the grid at downsampling factor ``scale``."""
    return tuple(s // scale for s in GRID_SHAPE)  # type: ignore[return-value]


def voxel_centres(scale: int = 1, origin=GRID_ORIGIN, voxel_size: float = VOXEL_SIZE, shape=GRID_SHAPE) -> np.ndarray:
    """Centres of all voxels at ``scale`` in the velodyne frame, [X*Y*Z, 3] float64 in C order
    (x slowest, z fastest), matching ``grid.reshape(-1)``."""
    size = voxel_size * scale
    dims = [s // scale for s in shape]
    axes = [origin[i] + (np.arange(dims[i]) + 0.5) * size for i in range(3)]
    xx, yy, zz = np.meshgrid(*axes, indexing="ij")
    return np.stack([xx.reshape(-1), yy.reshape(-1), zz.reshape(-1)], axis=1)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 (or 3x4) rigid transform to [N, 3] points."""
    T = np.asarray(T, dtype=np.float64)
    return points @ T[:3, :3].T + T[:3, 3]


def project_points(K: np.ndarray, cam_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project camera-frame points through a 3x3 intrinsic matrix, as the SSC loaders do.

    Returns (pixels [N, 2] int64 (u, v) rounded to the nearest integer (half to even, like
    ``np.round``), depth [N] float64). Points behind the camera are projected too (their pixels
    are meaningless, and the in-view test rejects them by depth); points at depth 0 get (-1, -1).
    """
    K = np.asarray(K, dtype=np.float64)[:3, :3]
    z = cam_points[:, 2]
    safe = np.where(z != 0, z, 1.0)
    u = (K[0, 0] * cam_points[:, 0] + K[0, 1] * cam_points[:, 1]) / safe + K[0, 2]
    v = K[1, 1] * cam_points[:, 1] / safe + K[1, 2]
    pix = np.clip(np.stack([np.round(u), np.round(v)], axis=1), -(2**31), 2**31 - 1)
    pix[z == 0] = -1
    return pix.astype(np.int64), z


def project_voxels(
    Tr: np.ndarray,
    K: np.ndarray,
    image_size: tuple[int, int],
    scale: int = 1,
    origin=GRID_ORIGIN,
    voxel_size: float = VOXEL_SIZE,
    shape=GRID_SHAPE,
) -> dict[str, np.ndarray]:
    """Project every voxel centre at ``scale`` into the image.

    Args:
        Tr: 4x4 (or 3x4) velodyne -> camera-0 transform.
        K: camera matrix; only its 3x3 intrinsic part is used.
        image_size: (width, height) of the (cropped) image.

    Returns a dict with ``projected_pix`` [N, 2] int32 (u, v), ``pix_z`` [N] float32 depth in
    metres and ``fov_mask`` [N] bool, N = number of voxels at ``scale`` in C order.
    """
    pts = transform_points(Tr, voxel_centres(scale, origin, voxel_size, shape))
    pix, z = project_points(K, pts)
    w, h = image_size
    fov = (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h) & (z > 0)
    return {
        "projected_pix": pix.astype(np.int32),
        "pix_z": z.astype(np.float32),
        "fov_mask": fov,
    }


def points_to_voxels(
    points: np.ndarray, origin=GRID_ORIGIN, voxel_size: float = VOXEL_SIZE, shape=GRID_SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """Voxel indices [N, 3] int64 of velodyne-frame points and a mask of the points inside the grid."""
    idx = np.floor((np.asarray(points)[:, :3] - np.asarray(origin)) / voxel_size).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    return idx, inside


def sparse_depth_map(
    points: np.ndarray, Tr: np.ndarray, K: np.ndarray, image_size: tuple[int, int]
) -> np.ndarray:
    """Project LiDAR points (velodyne frame) into the image: [H, W] float32 depth, 0 = no point.

    Where several points fall on one pixel the nearest wins.
    """
    cam = transform_points(Tr, np.asarray(points, dtype=np.float64)[:, :3])
    pix, z = project_points(K, cam)
    w, h = image_size
    ok = (z > 0) & (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h)
    pix, z = pix[ok], z[ok]
    depth = np.full(h * w, np.inf, dtype=np.float64)
    np.minimum.at(depth, pix[:, 1] * w + pix[:, 0], z)
    depth[np.isinf(depth)] = 0.0
    return depth.reshape(h, w).astype(np.float32)
