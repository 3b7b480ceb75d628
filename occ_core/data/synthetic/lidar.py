"""A simulated 64-beam spinning LiDAR (HDL-64E-like) cast against the scene."""

from __future__ import annotations

import math

import numpy as np

from occ_core.data.synthetic.raycast import INF, cast, ground_hit, spherical_rects
from occ_core.data.synthetic.scene import (BICYCLE, BICYCLIST, BUILDING, CAR, FENCE, MOTORCYCLE, MOTORCYCLIST,
                                           OTHER_GROUND, OTHER_VEHICLE, PARKING, PERSON, POLE, ROAD, SIDEWALK, SIGN,
                                           TERRAIN, TRUCK, TRUNK, VEGETATION, Scene)

N_BEAMS = 64
ELEVATION = np.radians(np.linspace(2.0, -24.8, N_BEAMS))
"""Beam elevations (radians), top beam first."""
N_AZIMUTH = 1800  # 0.2 degree steps
MAX_RANGE = 100.0
RANGE_NOISE = 0.015

_REFLECTANCE = {ROAD: 0.22, PARKING: 0.24, SIDEWALK: 0.3, TERRAIN: 0.35, BUILDING: 0.3, FENCE: 0.35,
                VEGETATION: 0.4, TRUNK: 0.35, POLE: 0.45, SIGN: 0.9, CAR: 0.25, TRUCK: 0.3, PERSON: 0.3,
                BICYCLE: 0.3, BICYCLIST: 0.3, OTHER_GROUND: 0.28, OTHER_VEHICLE: 0.28, MOTORCYCLE: 0.3,
                MOTORCYCLIST: 0.3}
_REFL_LUT = np.zeros(256, dtype=np.float32)
for _k, _v in _REFLECTANCE.items():
    _REFL_LUT[_k] = _v

_CE, _SE = np.cos(ELEVATION).astype(np.float32), np.sin(ELEVATION).astype(np.float32)
_AZ = (np.arange(N_AZIMUTH) * (2 * np.pi / N_AZIMUTH))


def range_image(scene: Scene, scan: int) -> dict[str, np.ndarray]:
    """Noise-free LiDAR returns of scan ``scan``: range [64, 1800] (inf = no return), raw class,
    instance id and paint (lane marking) flag, plus the pose (origin, yaw). Cached per scene."""
    key = ("lidar", scan)
    if key in scene._cache:
        return scene._cache[key]
    origin, yaw = scene.velo_pose(scan)
    az = _AZ + yaw
    dx = (_CE[:, None] * np.cos(az)[None, :].astype(np.float32)).astype(np.float32)
    dy = (_CE[:, None] * np.sin(az)[None, :].astype(np.float32)).astype(np.float32)
    dz = np.broadcast_to(_SE[:, None], dx.shape).astype(np.float32)
    depth = np.full(dx.shape, INF, dtype=np.float32)
    pid = np.full(dx.shape, -1, dtype=np.int32)
    idx = scene.near(origin[:2], MAX_RANGE)
    jobs = spherical_rects(scene.prims, idx, origin, yaw, ELEVATION, N_AZIMUTH, MAX_RANGE)
    O = tuple(float(v) for v in origin)
    cast(scene.prims, jobs, O, (dx, dy, dz), depth, pid)
    raw = np.zeros(dx.shape, dtype=np.uint16)
    inst = np.zeros(dx.shape, dtype=np.uint16)
    hit = pid >= 0
    raw[hit] = scene.prims.raw[pid[hit]]
    inst[hit] = scene.prims.inst[pid[hit]]
    tg, cg, sg, dg = ground_hit(scene.road, *O, dx.ravel(), dy.ravel(), dz.ravel(), depth.ravel(), far=MAX_RANGE)
    g = (tg < depth.ravel()).reshape(dx.shape)
    depth[g] = tg.reshape(dx.shape)[g]
    raw[g] = cg.reshape(dx.shape)[g]
    inst[g] = 0
    paint = np.zeros(dx.shape, dtype=bool)
    paint[g] = scene.road.markings(sg.reshape(dx.shape)[g], dg.reshape(dx.shape)[g]) > 0.5
    depth[depth > MAX_RANGE] = INF
    out = {"range": depth, "raw": raw, "inst": inst, "paint": paint, "origin": origin, "yaw": yaw}
    scene._cache[key] = out
    # Keep the cache bounded (a worker walks frames in order and needs ~6 poses at a time).
    lidar_keys = [k for k in scene._cache if isinstance(k, tuple) and k[0] == "lidar"]
    for k in lidar_keys[:-12]:
        del scene._cache[k]
    return out


def beam_directions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit directions [64, 1800] of every beam in the sensor frame."""
    return (_CE[:, None] * np.cos(_AZ)[None].astype(np.float32), _CE[:, None] * np.sin(_AZ)[None].astype(np.float32),
            np.broadcast_to(_SE[:, None], (N_BEAMS, N_AZIMUTH)).astype(np.float32))


def scan_points(scene: Scene, scan: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scan as written to ``velodyne/*.bin``: points [N, 4] (x, y, z, reflectance) in the
    sensor frame with range noise and a few dropped returns, raw ids [N] and instance ids [N]."""
    ri = range_image(scene, scan)
    r = ri["range"]
    hit = np.isfinite(r)
    hit &= rng.uniform(size=r.shape) > 0.02  # dropouts
    dx, dy, dz = beam_directions()
    rr = (r + rng.normal(0.0, RANGE_NOISE, size=r.shape).astype(np.float32))[hit]
    pts = np.stack([dx[hit] * rr, dy[hit] * rr, dz[hit] * rr], axis=1)
    raw = ri["raw"][hit]
    refl = _REFL_LUT[raw] + np.where(ri["paint"][hit], 0.45, 0.0)
    refl = np.clip(refl * rng.uniform(0.8, 1.2, size=refl.shape) * np.exp(-rr / 150.0), 0, 0.99).astype(np.float32)
    points = np.concatenate([pts, refl[:, None]], axis=1).astype(np.float32)
    return points, raw, ri["inst"][hit]


def observed_from(scene: Scene, scan: int, centres_scene_xy: tuple[np.ndarray, np.ndarray], z_scene: np.ndarray,
                  candidates: np.ndarray) -> np.ndarray:
    """Which candidate voxels the LiDAR at scan ``scan`` sees (traverses or hits).

    Voxel columns are given by their scene-frame centres (x, y) [C]; ``z_scene`` [Z] are the layer
    centre heights; ``candidates`` is a bool [C, Z] mask of the voxels to test. A voxel is observed
    when its centre's beam (nearest beam row, inside the vertical field of view) returned at a range
    at least the voxel's range minus a margin (the ray reached or passed it).
    """
    ri = range_image(scene, scan)
    origin, yaw = ri["origin"], ri["yaw"]
    rng_img = ri["range"]
    cols = np.nonzero(candidates.any(1))[0]
    out = np.zeros_like(candidates)
    if len(cols) == 0:
        return out
    x = centres_scene_xy[0][cols] - origin[0]
    y = centres_scene_xy[1][cols] - origin[1]
    rxy = np.hypot(x, y).astype(np.float32)
    az = np.mod(np.arctan2(y, x) - yaw, 2 * np.pi)
    col = np.round(az / (2 * np.pi / N_AZIMUTH)).astype(np.int64) % N_AZIMUTH
    z = (z_scene - origin[2]).astype(np.float32)
    el = np.arctan2(z[None, :], rxy[:, None])  # [C', Z]
    step = (ELEVATION[0] - ELEVATION[-1]) / (N_BEAMS - 1)
    row_f = (ELEVATION[0] - el) / step
    row = np.round(row_f).astype(np.int64)
    inside = (row_f > -0.5) & (row_f < N_BEAMS - 0.5)
    row = np.clip(row, 0, N_BEAMS - 1)
    rv = rng_img[row, col[:, None]]
    dist = np.sqrt(rxy[:, None] ** 2 + z[None, :] ** 2)
    seen = inside & np.isfinite(rv) & (dist <= rv + 0.15) & candidates[cols]
    out[cols] = seen
    return out


def hit_points_scene(scene: Scene, scan: int) -> np.ndarray:
    """Noise-free returns of scan ``scan`` in the scene frame, [N, 3] float64."""
    ri = range_image(scene, scan)
    r = ri["range"]
    hit = np.isfinite(r)
    dx, dy, dz = beam_directions()
    c, s = math.cos(ri["yaw"]), math.sin(ri["yaw"])
    rr = r[hit].astype(np.float64)
    lx, ly, lz = dx[hit] * rr, dy[hit] * rr, dz[hit] * rr
    o = ri["origin"]
    return np.stack([o[0] + c * lx - s * ly, o[1] + s * lx + c * ly, o[2] + lz], axis=1)
