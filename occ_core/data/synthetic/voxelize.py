"""Voxel grids of one frame: the semantic target, the voxelized scan, invalid and occluded masks."""

from __future__ import annotations

import math

import numpy as np

from occ_core.data.formats.semantickitti import GRID_ORIGIN, GRID_SHAPE, VOXEL_SIZE
from occ_core.data.synthetic import lidar
from occ_core.data.synthetic.scene import BOX, CYL, VELO_HEIGHT, Scene

INFLATE = 0.12
"""Primitives are grown by this margin (m) when labelling voxel centres, so that thin objects
(poles, sign plates, bicycle frames) still get voxels and surface points fall in labelled voxels."""

FUTURE_SCANS = (5, 10, 15, 20, 25)
"""Scans after the frame whose rays also count as observations (for the invalid mask)."""

_AX = [GRID_ORIGIN[i] + (np.arange(GRID_SHAPE[i]) + 0.5) * VOXEL_SIZE for i in range(3)]


def _columns_scene(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X, Y = np.meshgrid(_AX[0], _AX[1], indexing="ij")
    x = T[0, 0] * X + T[0, 1] * Y + T[0, 3]
    y = T[1, 0] * X + T[1, 1] * Y + T[1, 3]
    return x.ravel(), y.ravel()


def target(scene: Scene, scan: int) -> np.ndarray:
    """uint16 raw ids [256, 256, 32] of the scene around the LiDAR at ``scan`` (velodyne frame)."""
    T = scene.velo_to_scene(scan)
    X, Y, Z = GRID_SHAPE
    out = np.zeros(GRID_SHAPE, dtype=np.uint16)
    # Ground: the voxel holding the surface, filled down to the base layer under raised areas.
    cx, cy = _columns_scene(T)
    s, d = scene.road.sd(cx, cy)
    cls, h = scene.road.ground(s, d)
    z_origin = GRID_ORIGIN[2] + VELO_HEIGHT  # scene height of the grid's bottom
    k_top = np.floor((h - z_origin) / VOXEL_SIZE).astype(np.int64).reshape(X, Y)
    k_base = int(math.floor((0.0 - z_origin) / VOXEL_SIZE))
    cls = cls.reshape(X, Y)
    for k in range(max(k_base, 0), min(int(k_top.max()) + 1, Z)):
        layer = out[:, :, k]
        m = k_top >= k
        layer[m] = cls[m]
    # Objects, in priority order (scene primitives are sorted so that later ones win).
    centre = T[:3, :3] @ np.array([25.6, 0.0, 0.0]) + T[:3, 3]
    idx = scene.near(centre[:2], 40.0)
    if len(idx) == 0:
        return out
    paint_primitives(out, scene.prims, idx, T, _AX, GRID_ORIGIN, VOXEL_SIZE, INFLATE)
    return out


def paint_primitives(out: np.ndarray, prims, idx: np.ndarray, grid_to_scene: np.ndarray, axes, origin,
                     voxel_size: float, inflate: float) -> None:
    """Write the raw ids of the scene primitives ``idx`` (in that order: later ones win) into the label
    grid ``out`` [X, Y, Z]: a voxel takes a primitive's id when its centre lies inside the primitive grown
    by ``inflate``. ``axes``: the voxel-centre coordinates along each grid axis (grid frame);
    ``grid_to_scene``: the grid's pose; ``origin`` / ``voxel_size``: the grid's corner and voxel edge."""
    T = grid_to_scene
    Ti = np.linalg.inv(T)
    corners = prims.subset(idx).corners() + 0.0  # [n, 8, 3] scene
    cv = corners @ Ti[:3, :3].T + Ti[:3, 3]
    org = np.asarray(origin)
    lo = np.maximum(np.floor((cv.min(1) - inflate - org) / voxel_size).astype(np.int64), 0)
    hi = np.minimum(np.ceil((cv.max(1) + inflate - org) / voxel_size).astype(np.int64), np.asarray(out.shape))
    for k, j in enumerate(idx):
        (i0, j0, k0), (i1, j1, k1) = lo[k], hi[k]
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            continue
        gx, gy = np.meshgrid(axes[0][i0:i1], axes[1][j0:j1], indexing="ij")
        sx = T[0, 0] * gx + T[0, 1] * gy + T[0, 3]
        sy = T[1, 0] * gx + T[1, 1] * gy + T[1, 3]
        sz = axes[2][k0:k1] + T[2, 3]
        c = prims.c[j]
        cyaw, syaw = math.cos(prims.yaw[j]), math.sin(prims.yaw[j])
        qx, qy = sx - c[0], sy - c[1]
        lx = (cyaw * qx + syaw * qy)[:, :, None]
        ly = (-syaw * qx + cyaw * qy)[:, :, None]
        lz = (sz - c[2])[None, None, :]
        hx, hy, hz = prims.h[j] + inflate
        kind = prims.kind[j]
        if kind == BOX:
            inside = (np.abs(lx) <= hx) & (np.abs(ly) <= hy) & (np.abs(lz) <= hz)
        elif kind == CYL:
            inside = (lx * lx + ly * ly <= hx * hx) & (np.abs(lz) <= hz)
        else:
            inside = (lx / hx) ** 2 + (ly / hy) ** 2 + (lz / hz) ** 2 <= 1.0
        if inside.any():
            block = out[i0:i1, j0:j1, k0:k1]
            block[inside] = prims.raw[j]


def occupancy(points: np.ndarray) -> np.ndarray:
    """Bool grid of the voxels holding at least one point (velodyne-frame points [N, >=3])."""
    grid = np.zeros(GRID_SHAPE, dtype=bool)
    idx = np.floor((points[:, :3].astype(np.float64) - np.asarray(GRID_ORIGIN)) / VOXEL_SIZE).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.asarray(GRID_SHAPE)), axis=1)
    idx = idx[ok]
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return grid


def visibility(scene: Scene, scan: int, future=FUTURE_SCANS) -> tuple[np.ndarray, np.ndarray]:
    """(invalid, occluded) bool grids of the frame at ``scan``.

    occluded: voxels neither traversed nor hit by this scan's rays. invalid: voxels neither
    traversed nor hit by the rays of this scan and of the scans ``future`` after it.
    """
    T = scene.velo_to_scene(scan)
    Ti = np.linalg.inv(T)
    cx, cy = _columns_scene(T)
    z_scene = _AX[2] + T[2, 3]
    C = GRID_SHAPE[0] * GRID_SHAPE[1]
    observed = np.zeros((C, GRID_SHAPE[2]), dtype=bool)
    occluded = None
    for m, sc in enumerate((scan,) + tuple(scan + f for f in future)):
        observed |= lidar.observed_from(scene, sc, (cx, cy), z_scene, ~observed)
        pts = lidar.hit_points_scene(scene, sc)
        pv = pts @ Ti[:3, :3].T + Ti[:3, 3]
        observed |= occupancy(pv).reshape(C, GRID_SHAPE[2])
        if m == 0:
            occluded = ~observed.reshape(GRID_SHAPE).copy()
    return ~observed.reshape(GRID_SHAPE), occluded
