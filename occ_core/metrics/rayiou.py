"""RayIoU, the ray-based occupancy metric of SparseOcc (``ray_metrics.py``, Liu et al. 2024).

Definition (SparseOcc's ``main_rayiou`` / ``calc_rayiou`` and its ``EgoPoseDataset``):

* **Origins.** For a sample, the LiDAR origins of *every* sample of its scene are expressed in the
  sample's ego frame (the grid frame of Occ3D); those with ``|x| < 39`` and ``|y| < 39`` m (one metre
  inside the 40 m grid) are kept, and when more than 8 remain, 8 are picked at
  ``round(linspace(0, n - 1, 8))`` (:func:`scene_lidar_origins`).
* **Rays.** From every origin the same 14,040 directions are cast (:func:`lidar_ray_directions`: 39
  pitch angles up to the top of the nuScenes LiDAR's field of view x 360 one-degree azimuths; a comment in
  SparseOcc's code says 15,840, its code makes 14,040), through the predicted and through the true volume.
* **First hit.** A ray walks the voxels it crosses (Amanatides-Woo voxel traversal, exactly as
  SparseOcc's ``dvr`` extension, tie-breaking and float rounding included) and stops at the first
  *occupied* voxel (any class but free); its depth is the distance at which the ray *leaves* that voxel,
  its label that voxel's class. A ray that leaves the grid without a hit reports the last voxel it was in
  (free) and the distance where it left.
* **Counting.** Rays whose true first hit is free (nothing hit) are dropped. For class ``c`` and threshold
  ``t`` in (1, 2, 4) m: ``TP`` = rays whose true and predicted labels are both ``c`` and whose depths differ
  by less than ``t``; ``IoU_c,t = TP / (N_true(c) + N_pred(c) - TP)``, counts summed over the split.
* **RayIoU** = mean over the non-free classes and the three thresholds (``np.nanmean``: a class with no ray
  in either volume is left out); ``rayiou_1m``/``2m``/``4m`` are the means at one threshold. No camera
  mask is applied.

SparseOcc runs the traversal in a C++/CUDA extension (one thread per ray). Here it is vectorised numpy on
the CPU (:func:`cast_rays`): all rays of a sample advance one voxel per step, finished rays are dropped
from the working set. Scores are in percent; the state is int64 counters (sum to reduce).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

THRESHOLDS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Depth-error thresholds (m) of a true positive."""
MAX_ORIGINS = 8
"""Origins per sample (SparseOcc picks 8 evenly spaced ones when more are in range)."""
ORIGIN_MARGIN = 1.0
"""Origins must lie this far (m) inside the grid's x/y extent (SparseOcc: |x|, |y| < 39 on the 40 m grid)."""
MAX_STEP = 1000
"""SparseOcc's traversal gives up after this many voxel steps (never reached from inside a 200-voxel grid)."""


def threshold_key(t: float) -> str:
    return f"rayiou_{t:g}m"


def lidar_ray_directions() -> np.ndarray:
    """SparseOcc's ray set: float32 [14040, 3] unit vectors (x forward, y left, z up), pitch-major.

    Pitch angles: ``-(pi/2 - atan(k + 1))`` for k = 0..9, then continued with the last spacing until the
    angle reaches 0.21 rad (the top of the nuScenes LiDAR's field of view); 360 azimuths 0, 1, ... 359 deg.
    """
    pitch = [-(math.pi / 2 - math.atan(k + 1)) for k in range(10)]
    while pitch[-1] < 0.21:
        pitch.append(pitch[-1] + (pitch[-1] - pitch[-2]))
    p = np.asarray(pitch, dtype=np.float64)[:, None]
    az = np.deg2rad(np.arange(0, 360, 1))[None, :]
    xyz = np.stack([np.cos(p) * np.cos(az), np.cos(p) * np.sin(az), np.broadcast_to(np.sin(p), (p.size, az.size))],
                   axis=-1)
    return xyz.reshape(-1, 3).astype(np.float32)


def _pose_inverse(T: np.ndarray) -> np.ndarray:
    return np.linalg.inv(T)


def scene_lidar_origins(ego_to_world: Sequence[np.ndarray], lidar_to_ego: Sequence[np.ndarray], ref: int,
                        grid, max_origins: int = MAX_ORIGINS, margin: float = ORIGIN_MARGIN) -> np.ndarray:
    """The ray origins of sample ``ref`` of a scene, float64 [T, 3] in its ego (grid) frame.

    ``ego_to_world[i]`` / ``lidar_to_ego[i]`` (4x4) are the poses of the scene's samples in time order (ego
    pose at the LIDAR_TOP timestamp, LiDAR extrinsics). The arithmetic is SparseOcc's ``EgoPoseDataset``
    (including its float32 rounding of the origin in the reference LiDAR frame), then its range filter and
    8-of-n selection (see the module docstring). ``grid`` is the :class:`~occ_core.data.spec.GridSpec`.
    """
    n = len(ego_to_world)
    if n != len(lidar_to_ego) or not 0 <= ref < n:
        raise ValueError(f"need one lidar_to_ego per ego pose and 0 <= ref < {n} (got {len(lidar_to_ego)}, {ref})")
    g2e = [np.asarray(T, np.float64) for T in ego_to_world]
    l2e = [np.asarray(T, np.float64) for T in lidar_to_ego]
    ref_lidar_from_global = _pose_inverse(g2e[ref] @ l2e[ref])
    lo = [grid.origin[i] + margin for i in range(2)]
    hi = [grid.origin[i] + grid.size[i] - margin for i in range(2)]
    out = []
    for i in range(n):
        if i == ref:
            o = np.zeros(3, np.float32)
        else:
            o = np.asarray((ref_lidar_from_global @ (g2e[i] @ l2e[i]))[:3, 3], dtype=np.float32)
        pad = np.ones(4)
        pad[:3] = o
        o_ego = l2e[ref][:3] @ pad
        if lo[0] < o_ego[0] < hi[0] and lo[1] < o_ego[1] < hi[1]:
            out.append(o_ego)
    if len(out) > max_origins:
        idx = np.round(np.linspace(0, len(out) - 1, max_origins)).astype(np.int64)
        out = [out[i] for i in idx]
    return np.stack(out) if out else np.zeros((0, 3))


def to_voxel_coords(points: np.ndarray, grid) -> np.ndarray:
    """Metres in the grid frame -> continuous voxel coordinates, float32, as SparseOcc computes them
    (``((p - offset) / voxel_size).float()`` with float32 offset and voxel size, float64 points)."""
    off = np.asarray(grid.origin, np.float32).astype(np.float64)
    vs = np.asarray(grid.voxel_size, np.float32).astype(np.float64)
    return ((np.asarray(points, np.float64) - off) / vs).astype(np.float32)


def cast_rays(occupied: np.ndarray, origins: np.ndarray, endpoints: np.ndarray,
              max_step: int = MAX_STEP) -> tuple[np.ndarray, np.ndarray]:
    """First occupied voxel along each ray (SparseOcc's ``dvr.render_forward`` in ``test`` mode).

    Args:
        occupied: bool [X, Y, Z].
        origins, endpoints: [R, 3] continuous voxel coordinates (float32, see :func:`to_voxel_coords`);
            ray ``r`` starts at ``origins[r]`` and points at ``endpoints[r]`` (only the direction matters).

    Returns ``(dist, index)``: float64 [R] distance in voxel units at which the ray leaves its first
    occupied voxel, and int64 [R, 3] that voxel's ``(x, y, z)``. A ray without a hit gives the last voxel of
    the grid it crossed and the distance where it left the grid; a ray that never enters the grid gives
    ``-1`` and voxel ``(0, 0, 0)`` (as the original).

    The traversal starts in voxel ``int(origin)`` (truncation, as C++), steps along the axis whose next
    boundary is nearest (ties: ``x`` only if strictly nearer than both ``y`` and ``z``, else ``y`` if strictly
    nearer than ``z``, else ``z``), in float64 like the original.
    """
    occ = np.ascontiguousarray(np.asarray(occupied, dtype=bool))
    if occ.ndim != 3:
        raise ValueError(f"occupancy must be [X, Y, Z], got shape {occ.shape}")
    X, Y, Z = occ.shape
    flat = occ.reshape(-1)
    o = np.asarray(origins, np.float32).astype(np.float64).reshape(-1, 3)
    e = np.asarray(endpoints, np.float32).astype(np.float64).reshape(-1, 3)
    if o.shape != e.shape:
        raise ValueError(f"origins {o.shape} and endpoints {e.shape} differ")
    R = o.shape[0]
    r = e - o
    n = np.sqrt((r * r).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = r / n[:, None]
    v = np.trunc(o).astype(np.int64)
    step = np.where(d >= 0, 1, -1).astype(np.int64)
    boundary = v + (step > 0)
    big = np.finfo(np.float64).max
    with np.errstate(divide="ignore", invalid="ignore"):
        tmax = np.where(d != 0, (boundary - o) / np.where(d != 0, d, 1.0), big)
        tdelta = np.where(d != 0, step / np.where(d != 0, d, 1.0), big)

    dist = np.full(R, -1.0)
    index = np.zeros((R, 3), np.int64)
    # working set (one column per axis, contiguous)
    ids = np.arange(R)
    vx, vy, vz = (v[:, i].copy() for i in range(3))
    tx, ty, tz = (tmax[:, i].copy() for i in range(3))
    sx, sy, sz = (step[:, i].copy() for i in range(3))
    dx, dy, dz = (tdelta[:, i].copy() for i in range(3))
    was_inside = np.zeros(R, bool)
    last = np.zeros(R)  # exit distance of the last voxel inside (valid where was_inside)
    lx, ly, lz = (np.zeros(R, np.int64) for _ in range(3))
    ux, uy, uz = np.uint64(X), np.uint64(Y), np.uint64(Z)
    for it in range(max_step + 1):
        if ids.size == 0:
            break
        inside = (vx.view(np.uint64) < ux) & (vy.view(np.uint64) < uy) & (vz.view(np.uint64) < uz)
        left = ~inside & was_inside  # was inside, now out: no hit
        cx = (tx < ty) & (tx < tz)
        cy = ~(tx < ty) & (ty < tz)
        cz = ~(cx | cy)
        dnow = np.where(cx, tx, np.where(cy, ty, tz))
        hit = np.zeros(ids.size, bool)
        if inside.any():
            fi = np.where(inside, (vx * Y + vy) * Z + vz, 0)
            hit = inside & flat[fi]
        # record the voxel we are in (its exit distance is dnow)
        last = np.where(inside, dnow, last)
        lx = np.where(inside, vx, lx)
        ly = np.where(inside, vy, ly)
        lz = np.where(inside, vz, lz)
        was_inside |= inside
        done = hit | left
        if it == max_step:  # the original stops after max_step + 1 steps
            done = np.ones(ids.size, bool)
        if done.any():
            k = ids[done]
            got = was_inside[done]
            dist[k[got]] = last[done][got]
            index[k[got]] = np.stack([lx[done][got], ly[done][got], lz[done][got]], axis=1)
            keep = ~done
            ids = ids[keep]
            vx, vy, vz, tx, ty, tz = vx[keep], vy[keep], vz[keep], tx[keep], ty[keep], tz[keep]
            sx, sy, sz, dx, dy, dz = sx[keep], sy[keep], sz[keep], dx[keep], dy[keep], dz[keep]
            cx, cy, cz = cx[keep], cy[keep], cz[keep]
            was_inside, last, lx, ly, lz = was_inside[keep], last[keep], lx[keep], ly[keep], lz[keep]
        vx += np.where(cx, sx, 0)
        vy += np.where(cy, sy, 0)
        vz += np.where(cz, sz, 0)
        np.add(tx, dx, out=tx, where=cx)
        np.add(ty, dy, out=ty, where=cy)
        np.add(tz, dz, out=tz, where=cz)
    return dist, index


def cast_rays_pair(occ_a: np.ndarray, occ_b: np.ndarray, origins: np.ndarray, endpoints: np.ndarray,
                   max_step: int = MAX_STEP) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cast_rays` through two volumes of one grid at once (the prediction and the ground truth):
    the voxels a ray crosses depend only on the ray, so one traversal serves both. Returns ``(dist_a,
    index_a, dist_b, index_b)`` with the same meaning and values as two :func:`cast_rays` calls.

    Rays that start in a voxel of the grid take the fast path: the occupancy codes sit in a volume
    padded by one voxel of "outside" code, the flat voxel index is advanced by strides, and finished rays
    are frozen and dropped from the working set in batches. Rays that start outside use :func:`cast_rays`.
    """
    a = np.asarray(occ_a, dtype=bool)
    b = np.asarray(occ_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"volumes must be two [X, Y, Z] grids of one shape, got {a.shape} and {b.shape}")
    X, Y, Z = a.shape
    o = np.asarray(origins, np.float32).astype(np.float64).reshape(-1, 3)
    e = np.asarray(endpoints, np.float32).astype(np.float64).reshape(-1, 3)
    R = o.shape[0]
    dist_a, dist_b = np.full(R, -1.0), np.full(R, -1.0)
    index_a, index_b = np.zeros((R, 3), np.int64), np.zeros((R, 3), np.int64)
    v0 = np.trunc(o).astype(np.int64)
    fast = ((v0 >= 0) & (v0 < np.array([X, Y, Z]))).all(axis=1)
    if not fast.all():
        slow = np.nonzero(~fast)[0]
        dist_a[slow], index_a[slow] = cast_rays(a, o[slow], e[slow], max_step)
        dist_b[slow], index_b[slow] = cast_rays(b, o[slow], e[slow], max_step)
    ids = np.nonzero(fast)[0]
    if ids.size == 0:
        return dist_a, index_a, dist_b, index_b
    o, e, v0 = o[ids], e[ids], v0[ids]
    r = e - o
    n = np.sqrt((r * r).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = r / n[:, None]
    step = np.where(d >= 0, 1, -1).astype(np.int64)
    big = np.finfo(np.float64).max
    nz = d != 0
    safe = np.where(nz, d, 1.0)
    tmax = np.where(nz, (v0 + (step > 0) - o) / safe, big)
    tdelta = np.where(nz, step / safe, big)

    PY, PZ = Y + 2, Z + 2
    strides = np.array([PY * PZ, PZ, 1], np.int64)
    OUT = np.uint8(4)
    code = np.full((X + 2, PY, PZ), OUT, np.uint8)
    code[1:-1, 1:-1, 1:-1] = a.view(np.uint8) | (b.view(np.uint8) << 1)
    code = code.reshape(-1)
    fl = np.empty((6, ids.size))  # tx, ty, tz, dtx, dty, dtz
    fl[:3], fl[3:] = tmax.T, tdelta.T
    it_ = np.empty((5, ids.size), np.int64)  # flat padded index, its step along x, y, z, ray id
    it_[0] = (v0 + 1) @ strides
    it_[1:4] = (step * strides).T
    it_[4] = ids
    pend = np.full(ids.size, 3, np.uint8)  # bit 1: volume a still looking, bit 2: volume b
    res_f = {1: np.zeros(R, np.int64), 2: np.zeros(R, np.int64)}
    res_d = {1: dist_a, 2: dist_b}
    prev_d = prev_fs = None
    dead = 0
    for k in range(max_step + 1):
        tx, ty, tz, dtx, dty, dtz = fl
        f, fsx, fsy, fsz, rid = it_
        c = code[f]
        lt = tx < ty
        cx = lt & (tx < tz)
        cy = ~lt & (ty < tz)
        dnow = np.where(cx, tx, np.where(cy, ty, tz))
        fs = np.where(cx, fsx, np.where(cy, fsy, fsz))
        out = c >= OUT
        for bit in (1, 2):
            looking = (pend & bit) != 0
            hit = looking & ((c & bit) != 0)
            if hit.any():
                res_f[bit][rid[hit]] = f[hit]
                res_d[bit][rid[hit]] = dnow[hit]
            gone = looking & out  # left the grid without a hit: the previous voxel, where it left
            if gone.any():
                res_f[bit][rid[gone]] = f[gone] - prev_fs[gone]
                res_d[bit][rid[gone]] = prev_d[gone]
            if k == max_step:  # the original gives up here: the voxel it is in is its last
                stop = looking & ~hit & ~out
                res_f[bit][rid[stop]] = f[stop]
                res_d[bit][rid[stop]] = dnow[stop]
            pend[hit | gone] &= np.uint8(3 - bit)
        done = (pend == 0) & (it_[1] | it_[2] | it_[3] != 0)
        if done.any():  # freeze finished rays (no more steps), drop them in batches
            it_[1:4, done] = 0
            fs[done] = 0
            dead += int(done.sum())
        if dead * 4 > pend.size or k == max_step:
            keep = pend != 0
            if not keep.any():
                break
            fl, it_, pend = fl[:, keep], it_[:, keep], pend[keep]
            dnow, fs, cx, cy = dnow[keep], fs[keep], cx[keep], cy[keep]
            dead = 0
            tx, ty, tz, dtx, dty, dtz = fl
            f = it_[0]
        prev_d, prev_fs = dnow, fs
        f += fs
        np.add(tx, dtx, out=tx, where=cx)
        np.add(ty, dty, out=ty, where=cy)
        np.add(tz, dtz, out=tz, where=~(cx | cy))
    for bit, index in ((1, index_a), (2, index_b)):
        fi = res_f[bit][ids]
        index[ids] = np.stack([fi // strides[0] - 1, fi // strides[1] % PY - 1, fi % PZ - 1], axis=1)
    return dist_a, index_a, dist_b, index_b


def first_hits(pred: np.ndarray, target: np.ndarray, origins_m: np.ndarray, grid, free_index: int = 0,
               directions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels and depths (m) of the first hits of all rays from ``origins_m`` [T, 3] (grid frame, metres)
    through the class volumes ``pred`` and ``target`` [X, Y, Z] (occupied = not ``free_index``).

    Returns ``(label_pred, depth_pred, label_target, depth_target)``: int64 / float32 [T * R],
    origin-major, as SparseOcc's ``process_one_sample`` computes them (ray directions
    :func:`lidar_ray_directions`, or ``directions``; depth = float32 voxel distance x float32 voxel size).
    """
    dirs = lidar_ray_directions() if directions is None else np.asarray(directions, np.float32)
    pred, target = np.asarray(pred), np.asarray(target)
    origins_m = np.asarray(origins_m, np.float64).reshape(-1, 3)
    o_vox = np.repeat(to_voxel_coords(origins_m, grid), len(dirs), axis=0)
    e_vox = to_voxel_coords((dirs.astype(np.float64)[None, :, :] + origins_m[:, None, :]).reshape(-1, 3), grid)
    dp, ip, dt, itg = cast_rays_pair(pred != free_index, target != free_index, o_vox, e_vox)
    vs = np.float32(grid.voxel_size[0])
    lp = pred[ip[:, 0], ip[:, 1], ip[:, 2]].astype(np.int64)
    lt = target[itg[:, 0], itg[:, 1], itg[:, 2]].astype(np.int64)
    return lp, dp.astype(np.float32) * vs, lt, dt.astype(np.float32) * vs


class RayIoUMetric:
    """Accumulates SparseOcc's RayIoU counts; see the module docstring.

    Args:
        n_classes: prepared classes including free (class ``free_index``, 0).
        class_names: their names.
        grid: the :class:`~occ_core.data.spec.GridSpec` of the volumes (cubic voxels).
        thresholds: depth-error thresholds (m).
        free_index: the free class (0 in prepared folders).
        directions: ray directions [R, 3] (default: SparseOcc's :func:`lidar_ray_directions`).

    ``process(pred, target, origins)`` adds one sample: class volumes [X, Y, Z] and its ray origins
    (:func:`scene_lidar_origins`, metres in the grid frame).
    """

    def __init__(self, n_classes: int, class_names: Sequence[str] | None, grid,
                 thresholds: Sequence[float] = THRESHOLDS, free_index: int = 0,
                 directions: np.ndarray | None = None):
        if len(set(grid.voxel_size)) != 1:
            raise ValueError(f"RayIoU needs cubic voxels, got {grid.voxel_size}")
        self.n_classes = int(n_classes)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
        self.grid = grid
        self.thresholds = tuple(float(t) for t in thresholds)
        self.free_index = int(free_index)
        self._dirs = lidar_ray_directions() if directions is None else np.asarray(directions, np.float32)
        self.reset()

    @classmethod
    def for_spec(cls, spec) -> "RayIoUMetric":
        return cls(spec.n_classes, list(spec.classes.names), spec.grid)

    def reset(self) -> None:
        self.gt_cnt = np.zeros(self.n_classes, np.int64)
        self.pred_cnt = np.zeros(self.n_classes, np.int64)
        self.tp = np.zeros((len(self.thresholds), self.n_classes), np.int64)
        self.rays = 0
        self.frames = 0

    def process(self, pred: np.ndarray, target: np.ndarray, origins: np.ndarray) -> None:
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.shape != target.shape or pred.shape != tuple(self.grid.shape):
            raise ValueError(f"prediction {pred.shape} and target {target.shape} must both be the grid "
                             f"{tuple(self.grid.shape)}")
        origins = np.asarray(origins, np.float64).reshape(-1, 3)
        lp, dp, lt, dt = first_hits(pred, target, origins, self.grid, self.free_index, self._dirs)
        valid = lt != self.free_index
        lp, dp, lt, dt = lp[valid], dp[valid], lt[valid], dt[valid]
        c = self.n_classes
        nbins = max(c, int(lp.max(initial=0)) + 1, int(lt.max(initial=0)) + 1)
        self.gt_cnt += np.bincount(lt, minlength=nbins)[:c]
        self.pred_cnt += np.bincount(lp, minlength=nbins)[:c]
        same = lp == lt
        err = np.abs(dp - dt)
        for j, t in enumerate(self.thresholds):
            self.tp[j] += np.bincount(lt[same & (err < t)], minlength=nbins)[:c]
        self.rays += int(valid.sum())
        self.frames += 1

    def per_class_iou(self) -> np.ndarray:
        """float64 [len(thresholds), n_classes] IoU fractions (NaN where a class has no ray; free NaN)."""
        den = self.gt_cnt[None, :] + self.pred_cnt[None, :] - self.tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(den > 0, self.tp / np.maximum(den, 1), np.nan)
        iou[:, self.free_index] = np.nan
        return iou

    def evaluate(self) -> dict[str, Any]:
        """``rayiou`` and ``rayiou_<t>m`` (percent), ``rayiou_per_class`` ({name: {"<t>m": IoU or None}}),
        ``rays`` (counted rays), ``frames``."""
        iou = self.per_class_iou()
        classes = [i for i in range(self.n_classes) if i != self.free_index]
        sub = iou[:, classes]

        def mean(a: np.ndarray) -> float:
            a = a[~np.isnan(a)]
            return float(100.0 * a.mean()) if a.size else 0.0

        out: dict[str, Any] = {"rayiou": mean(sub)}
        for j, t in enumerate(self.thresholds):
            out[threshold_key(t)] = mean(sub[j])
        out["rayiou_per_class"] = {
            self.class_names[i]: {f"{t:g}m": (None if np.isnan(iou[j, i]) else float(100.0 * iou[j, i]))
                                  for j, t in enumerate(self.thresholds)}
            for i in classes
        }
        out["rays"] = int(self.rays)
        out["frames"] = int(self.frames)
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"gt_cnt": self.gt_cnt.copy(), "pred_cnt": self.pred_cnt.copy(), "tp": self.tp.copy(),
                "rays": np.array([self.rays], np.int64), "frames": np.array([self.frames], np.int64)}

    def load_state(self, state: dict[str, Any]) -> None:
        tp = np.asarray(state["tp"], np.int64)
        if tp.shape != self.tp.shape:
            raise ValueError(f"state tp shape {tp.shape} does not match this metric {self.tp.shape}")
        self.gt_cnt = np.asarray(state["gt_cnt"], np.int64).copy()
        self.pred_cnt = np.asarray(state["pred_cnt"], np.int64).copy()
        self.tp = tp.copy()
        self.rays = int(np.asarray(state.get("rays", 0)).sum())
        self.frames = int(np.asarray(state.get("frames", 0)).sum())
