"""The synthetic surround-view rig: six nuScenes-like cameras, a 32-beam LIDAR_TOP, the ego frame,
and the Occ3D grid of a sample (semantics, LiDAR and camera visibility masks) by ray casting.

Frames (all right-handed, metres):

* **scene** (nuScenes *global*): the procedural scene's frame (:mod:`occ_core.data.synthetic.scene`);
* **ego**: x forward, y left, z up, origin on the ground 0.94 m behind the LiDAR (nuScenes' ego frame
  is the rear axle); the ego pose at time ``t`` (in scans, 10 per second, fractional allowed) is the
  scene's LiDAR pose moved down and back;
* **LIDAR_TOP**: nuScenes' sensor convention, x to the right, y forward, z up (yaw -90 deg from ego),
  1.73 m above the ground;
* **cameras**: x right, y down, z forward, mounted like the nuScenes rig (positions and yaws rounded
  from ``calibrated_sensor`` of v1.0-mini), each with its own trigger time offset from the LiDAR (so
  the ego pose at a camera's timestamp differs from the one at the LiDAR's, as in nuScenes).
"""

from __future__ import annotations

import math

import numpy as np

from occ_core.data.formats import occ3d
from occ_core.data.synthetic import render
from occ_core.data.synthetic.raycast import INF, cast, ground_hit, spherical_rects
from occ_core.data.synthetic.scene import VELO_HEIGHT, Scene
from occ_core.data.synthetic.voxelize import paint_primitives

# --------------------------------------------------------------------------------------------
# Classes: the generator's raw ids -> Occ3D ids
# --------------------------------------------------------------------------------------------

RAW_TO_OCC3D: dict[int, int] = {
    10: 4, 11: 2, 13: 3, 15: 6, 16: 0, 18: 10, 20: 3, 30: 7, 31: 2, 32: 6,  # things
    40: 11, 44: 11, 48: 13, 49: 12, 60: 11, 72: 14,  # ground
    50: 15, 51: 15, 52: 15, 80: 15, 81: 15, 70: 16, 71: 16, 99: 0,  # structures, vegetation, other objects
}
"""The generator's raw (SemanticKITTI) ids -> Occ3D ids: car -> car, bicycle and bicyclist -> bicycle (nuScenes'
'cycle with rider'), bus and other-vehicle (the scenes' buses) -> bus, motorcycle and motorcyclist ->
motorcycle, truck -> truck, person -> pedestrian, road / parking / lane-marking -> driveable_surface,
other-ground (medians, gravel lots) -> other_flat, sidewalk -> sidewalk, terrain -> terrain, building / fence /
other-structure / pole / traffic-sign -> manmade, vegetation / trunk -> vegetation, other-object -> others.
Occ3D classes the scenes do not hold (barrier, construction_vehicle, traffic_cone, trailer) stay absent."""
_LUT = np.full(1 << 16, occ3d.FREE_ID, np.uint8)
for _raw, _cls in RAW_TO_OCC3D.items():
    _LUT[_raw] = _cls

# --------------------------------------------------------------------------------------------
# Rig
# --------------------------------------------------------------------------------------------

LIDAR_POSITION = (0.94, 0.0, VELO_HEIGHT)
"""LIDAR_TOP in the ego frame."""
LIDAR_YAW = -90.0
FULL_SIZE = (1600, 900)
"""The nuScenes image size the focal lengths below refer to; images are written at a smaller size with
the intrinsics scaled alike."""

CAMERA_RIG: dict[str, dict] = {
    # channel: position in ego (m), yaw (deg, + = left), fx at 1600 px width, trigger offset (s) after the LiDAR
    "CAM_FRONT": {"t": (1.70, 0.02, 1.51), "yaw": 0.0, "f": 1266.0, "dt": 0.000},
    "CAM_FRONT_RIGHT": {"t": (1.55, -0.49, 1.50), "yaw": -55.0, "f": 1260.0, "dt": 0.008},
    "CAM_FRONT_LEFT": {"t": (1.52, 0.49, 1.51), "yaw": 55.0, "f": 1272.0, "dt": -0.008},
    "CAM_BACK": {"t": (0.03, 0.02, 1.57), "yaw": 180.0, "f": 809.0, "dt": 0.025},
    "CAM_BACK_LEFT": {"t": (1.04, 0.48, 1.56), "yaw": 110.0, "f": 1256.0, "dt": -0.017},
    "CAM_BACK_RIGHT": {"t": (1.03, -0.48, 1.57), "yaw": -110.0, "f": 1260.0, "dt": 0.017},
}
SCANS_PER_SECOND = 10.0
"""The scene's trajectory is parametrised in scans (the KITTI LiDAR rate); samples are 2 Hz (every 5th scan)."""

_CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
"""Columns: camera x (right), y (down), z (forward) in a forward-looking ego-aligned frame."""


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rigid(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def lidar_to_ego() -> np.ndarray:
    return rigid(rot_z(LIDAR_YAW), LIDAR_POSITION)


def camera_to_ego(channel: str) -> np.ndarray:
    c = CAMERA_RIG[channel]
    return rigid(rot_z(c["yaw"]) @ _CAM_AXES, c["t"])


def intrinsics(channel: str, size: tuple[int, int]) -> np.ndarray:
    """3x3 intrinsics of ``channel`` at image ``size`` (W, H): the rig's focal length scaled from 1600 px,
    principal point at the image centre."""
    W, H = size
    s = W / FULL_SIZE[0]
    f = CAMERA_RIG[channel]["f"] * s
    return np.array([[f, 0.0, W / 2.0], [0.0, f, H / 2.0], [0.0, 0.0, 1.0]])


def ego_to_scene(scene: Scene, t: float) -> np.ndarray:
    """Ego pose (4x4) at time ``t`` in scans: the LiDAR pose with the LiDAR's mounting removed."""
    V = scene.velo_to_scene(t)  # x forward, y left, z up at the LiDAR
    return V @ rigid(np.eye(3), (-LIDAR_POSITION[0], -LIDAR_POSITION[1], -LIDAR_POSITION[2]))


# --------------------------------------------------------------------------------------------
# LIDAR_TOP: 32 beams (HDL-32E-like)
# --------------------------------------------------------------------------------------------

N_BEAMS = 32
ELEVATION = np.radians(np.linspace(10.67, -30.67, N_BEAMS))
"""Beam elevations, top beam first (ring index = row)."""
N_AZIMUTH = 1080
MAX_RANGE = 70.0
RANGE_NOISE = 0.02
_REFL = {40: 0.22, 44: 0.24, 48: 0.3, 49: 0.3, 72: 0.35, 50: 0.3, 51: 0.35, 70: 0.4, 71: 0.35, 80: 0.45, 81: 0.9}
"""Reflectance per raw id (others 0.3)."""
_REFL_LUT = np.full(1 << 16, 0.3, np.float32)
for _k, _v in _REFL.items():
    _REFL_LUT[_k] = _v
_CE, _SE = np.cos(ELEVATION).astype(np.float32), np.sin(ELEVATION).astype(np.float32)
_AZ = np.arange(N_AZIMUTH) * (2 * np.pi / N_AZIMUTH)


def lidar_sweep(scene: Scene, t: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One sweep at time ``t``: points float32 [N, 5] (x, y, z, intensity 0..255, ring) in the LIDAR_TOP frame
    with range noise and dropouts, and the noise-free range image (range [32, 1080], inf = no return)."""
    origin, yaw = scene.velo_pose(t)
    az = _AZ + yaw
    dx = (_CE[:, None] * np.cos(az)[None].astype(np.float32)).astype(np.float32)
    dy = (_CE[:, None] * np.sin(az)[None].astype(np.float32)).astype(np.float32)
    dz = np.broadcast_to(_SE[:, None], dx.shape).astype(np.float32)
    depth = np.full(dx.shape, INF, np.float32)
    pid = np.full(dx.shape, -1, np.int32)
    idx = scene.near(origin[:2], MAX_RANGE)
    jobs = spherical_rects(scene.prims, idx, origin, yaw, ELEVATION, N_AZIMUTH, MAX_RANGE)
    O = tuple(float(v) for v in origin)
    cast(scene.prims, jobs, O, (dx, dy, dz), depth, pid)
    raw = np.zeros(dx.shape, np.uint16)
    hit = pid >= 0
    raw[hit] = scene.prims.raw[pid[hit]]
    tg, cg, _, _ = ground_hit(scene.road, *O, dx.ravel(), dy.ravel(), dz.ravel(), depth.ravel(), far=MAX_RANGE)
    g = (tg < depth.ravel()).reshape(dx.shape)
    depth[g] = tg.reshape(dx.shape)[g]
    raw[g] = cg.reshape(dx.shape)[g]
    depth[depth > MAX_RANGE] = INF
    # points in the velodyne-like frame (x forward, y left) then in LIDAR_TOP (x right, y forward)
    ok = np.isfinite(depth) & (rng.uniform(size=depth.shape) > 0.02)
    r = (depth + rng.normal(0.0, RANGE_NOISE, size=depth.shape).astype(np.float32))[ok]
    bx = _CE[:, None] * np.cos(_AZ)[None].astype(np.float32)
    by = _CE[:, None] * np.sin(_AZ)[None].astype(np.float32)
    bz = np.broadcast_to(_SE[:, None], bx.shape)
    fx, fy, fz = bx[ok] * r, by[ok] * r, bz[ok] * r
    refl = np.clip(_REFL_LUT[raw[ok]] * rng.uniform(0.8, 1.2, size=r.shape) * np.exp(-r / 150.0), 0, 1)
    ring = np.broadcast_to(np.arange(N_BEAMS, dtype=np.float32)[:, None], depth.shape)[ok]
    pts = np.stack([-fy, fx, fz, np.round(refl * 255.0), ring], axis=1).astype(np.float32)
    return pts, {"range": depth, "origin": origin, "yaw": yaw}


# --------------------------------------------------------------------------------------------
# The Occ3D grid of a sample
# --------------------------------------------------------------------------------------------

INFLATE = 0.5 * occ3d.VOXEL_SIZE
"""Primitives are grown by half a voxel when labelling voxel centres: a voxel is occupied when the
object reaches into it (close to Occ3D's voxelised accumulated points)."""
_AX = [occ3d.GRID_ORIGIN[i] + (np.arange(occ3d.GRID_SHAPE[i]) + 0.5) * occ3d.VOXEL_SIZE for i in range(3)]


def semantics(scene: Scene, grid_to_scene: np.ndarray) -> np.ndarray:
    """uint8 Occ3D ids [200, 200, 16] (17 = free) of the scene in the grid (ego frame, pose ``grid_to_scene``)."""
    T = grid_to_scene
    X, Y, Z = occ3d.GRID_SHAPE
    raw = np.zeros(occ3d.GRID_SHAPE, np.uint16)
    gx, gy = np.meshgrid(_AX[0], _AX[1], indexing="ij")
    sx = T[0, 0] * gx + T[0, 1] * gy + T[0, 3]
    sy = T[1, 0] * gx + T[1, 1] * gy + T[1, 3]
    s, d = scene.road.sd(sx.ravel(), sy.ravel())
    cls, h = scene.road.ground(s, d)
    k = np.floor((h - T[2, 3] - occ3d.GRID_ORIGIN[2]) / occ3d.VOXEL_SIZE).astype(np.int64).reshape(X, Y)
    ok = (k >= 0) & (k < Z)
    ii, jj = np.nonzero(ok)
    raw[ii, jj, k[ok]] = cls.reshape(X, Y)[ok]
    idx = scene.near(T[:2, 3], 60.0)
    if len(idx):
        paint_primitives(raw, scene.prims, idx, T, _AX, occ3d.GRID_ORIGIN, occ3d.VOXEL_SIZE, INFLATE)
    return _LUT[raw]


def _centres() -> np.ndarray:
    gx, gy, gz = np.meshgrid(*_AX, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel(), gz.ravel()], 1)


MASK_MARGIN = 0.3
"""A voxel centre counts as observed when it lies at most this far (m) beyond the first surface along its
ray (about half a voxel's diagonal: the voxel holding the surface is observed)."""


def camera_mask(cam_to_grid: np.ndarray, K: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """bool [200, 200, 16]: voxels whose centre the camera sees (in the image, in front of the camera, and not
    behind the first surface of its pixel's ray; sky pixels see their whole ray). ``depth`` is the camera's
    ray-cast depth image (camera z, 0 = no hit)."""
    H, W = depth.shape
    P = _centres()
    Tc = np.linalg.inv(cam_to_grid)
    pc = P @ Tc[:3, :3].T + Tc[:3, 3]
    z = pc[:, 2]
    safe = np.where(z > 1e-3, z, 1.0)
    u = np.floor(K[0, 0] * pc[:, 0] / safe + K[0, 2]).astype(np.int64)
    v = np.floor(K[1, 1] * pc[:, 1] / safe + K[1, 2]).astype(np.int64)
    ok = (z > 0.1) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    d = np.zeros(len(P), np.float32)
    d[ok] = depth[v[ok], u[ok]]
    seen = ok & ((d <= 0) | (z <= d + MASK_MARGIN))
    return seen.reshape(occ3d.GRID_SHAPE)


def lidar_mask(lidar_to_grid: np.ndarray, ri: dict) -> np.ndarray:
    """bool [200, 200, 16]: voxels a LiDAR beam reaches (traverses or hits): the voxels holding a return, and
    those whose centre is within half a voxel diagonal (across) of its nearest beam and no farther than that
    beam's return (plus the margin)."""
    P = _centres()
    Ti = np.linalg.inv(lidar_to_grid)
    pl = P @ Ti[:3, :3].T + Ti[:3, 3]  # LIDAR_TOP frame: x right, y forward
    fx, fy, fz = pl[:, 1], -pl[:, 0], pl[:, 2]  # forward, left, up
    rxy = np.hypot(fx, fy)
    dist = np.sqrt(rxy ** 2 + fz ** 2)
    el = np.arctan2(fz, rxy)
    step = (ELEVATION[0] - ELEVATION[-1]) / (N_BEAMS - 1)
    row_f = (ELEVATION[0] - el) / step
    row = np.clip(np.round(row_f).astype(np.int64), 0, N_BEAMS - 1)
    col = np.round(np.mod(np.arctan2(fy, fx), 2 * np.pi) / (2 * np.pi / N_AZIMUTH)).astype(np.int64) % N_AZIMUTH
    tol = np.arctan2(0.5 * math.sqrt(2.0) * occ3d.VOXEL_SIZE, np.maximum(dist, 1e-3))
    near_beam = np.abs(el - ELEVATION[row]) <= np.maximum(tol, 0.0)
    rng_ = ri["range"][row, col]
    reach = np.where(np.isfinite(rng_), rng_, MAX_RANGE)
    seen = (near_beam & (row_f > -0.5) & (row_f < N_BEAMS - 0.5) & (dist <= reach + MASK_MARGIN)).reshape(occ3d.GRID_SHAPE)
    # and every voxel holding a return
    r = ri["range"]
    hit = np.isfinite(r)
    bx = _CE[:, None] * np.cos(_AZ)[None]
    by = _CE[:, None] * np.sin(_AZ)[None]
    bz = np.broadcast_to(_SE[:, None], bx.shape)
    rr = r[hit].astype(np.float64)
    pl = np.stack([-by[hit] * rr, bx[hit] * rr, bz[hit] * rr], 1)  # LIDAR_TOP frame
    pg = pl @ lidar_to_grid[:3, :3].T + lidar_to_grid[:3, 3]
    idx = np.floor((pg - np.asarray(occ3d.GRID_ORIGIN)) / occ3d.VOXEL_SIZE).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.asarray(occ3d.GRID_SHAPE)), axis=1)
    seen[idx[ok, 0], idx[ok, 1], idx[ok, 2]] = True
    return seen


def render_view(scene: Scene, cam_to_scene: np.ndarray, K: np.ndarray, sun: render.SunMap, rng: np.random.Generator,
                size: tuple[int, int]):
    """(BGR image, depth) of one camera through the generator's renderer."""
    img, _sem, dep = render.render_camera(scene, cam_to_scene, K, sun, rng, width=size[0], height=size[1])
    return img, dep


def sun_map(scene: Scene, t: float) -> render.SunMap:
    """A shadow map around the ego (the six cameras look all around; the KITTI one is centred ahead)."""
    T = scene.velo_to_scene(t)
    return render.SunMap(scene, T[:3, 3], half=70.0)
