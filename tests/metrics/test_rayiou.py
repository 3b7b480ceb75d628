"""RayIoU (occ_core.metrics.rayiou): the vectorised voxel traversal against a scalar transcription of
SparseOcc's dvr loop and an exact brute-force (ray / voxel-box intersection) reference on random grids, a
hand-checked case, the counting against a transcription of calc_rayiou, and the origins against
SparseOcc's EgoPoseDataset arithmetic (pyquaternion poses)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from occ_core.data.spec import GridSpec
from occ_core.metrics.rayiou import (RayIoUMetric, cast_rays, cast_rays_pair, first_hits, lidar_ray_directions,
                                     scene_lidar_origins, to_voxel_coords)


def dvr_scalar(occ, o, e, max_step=1000):
    """One ray, written out as SparseOcc's render_forward (test phase) does it."""
    X, Y, Z = occ.shape
    xo, yo, zo = (float(c) for c in o)
    xe, ye, ze = (float(c) for c in e)
    vx, vy, vz = int(xo), int(yo), int(zo)
    rx, ry, rz = xe - xo, ye - yo, ze - zo
    n = math.sqrt(rx * rx + ry * ry + rz * rz)
    dx, dy, dz = rx / n, ry / n, rz / n
    sx, sy, sz = (1 if c >= 0 else -1 for c in (dx, dy, dz))
    big = np.finfo(np.float64).max
    tx = (vx + (sx > 0) - xo) / dx if dx != 0 else big
    ty = (vy + (sy > 0) - yo) / dy if dy != 0 else big
    tz = (vz + (sz > 0) - zo) / dz if dz != 0 else big
    ddx = sx / dx if dx != 0 else big
    ddy = sy / dy if dy != 0 else big
    ddz = sz / dz if dz != 0 else big
    path, dist = [], []
    was_inside, step = False, 0
    while True:
        inside = 0 <= vx < X and 0 <= vy < Y and 0 <= vz < Z
        if inside:
            was_inside = True
            cur = (vx, vy, vz)
        elif was_inside:
            break
        if tx < ty:
            if tx < tz:
                d, vx, tx = tx, vx + sx, tx + ddx
            else:
                d, vz, tz = tz, vz + sz, tz + ddz
        else:
            if ty < tz:
                d, vy, ty = ty, vy + sy, ty + ddy
            else:
                d, vz, tz = tz, vz + sz, tz + ddz
        if inside:
            path.append(cur)
            dist.append(d)
        step += 1
        if step > max_step:
            break
    if not path:
        return -1.0, (0, 0, 0)
    for v, d in zip(path, dist):
        if occ[v]:
            return d, v
    return dist[-1], path[-1]


def slab_first_hit(occ, o, e):
    """Exact first hit by intersecting the ray with every occupied voxel's box (no traversal)."""
    o = np.asarray(o, np.float64)
    d = np.asarray(e, np.float64) - o
    d /= np.linalg.norm(d)
    idx = np.argwhere(occ)
    with np.errstate(divide="ignore"):
        t1, t2 = (idx - o) / d, (idx + 1 - o) / d
    t_in = np.minimum(t1, t2).max(axis=1)
    t_out = np.maximum(t1, t2).min(axis=1)
    ok = (t_in < t_out) & (t_out > 0)
    if ok.any():
        key = np.where(ok, np.maximum(t_in, 0), np.inf)
        j = int(np.argmin(key))
        return float(t_out[j]), tuple(int(c) for c in idx[j])
    shape = np.array(occ.shape)
    with np.errstate(divide="ignore"):
        g1, g2 = (0 - o) / d, (shape - o) / d
    t_exit = np.maximum(g1, g2).min()
    last = np.floor(o + (t_exit - 1e-9) * d).astype(int)
    return float(t_exit), tuple(int(c) for c in last)


def _random_rays(rng, shape, n):
    o = (rng.random((n, 3)) * (np.array(shape) - 0.2) + 0.1).astype(np.float32)
    dirs = rng.normal(size=(n, 3))
    e = (o + dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float32)
    return o, e


def test_traversal_equals_scalar_transcription_and_exact_reference():
    rng = np.random.default_rng(0)
    shape = (9, 7, 5)
    occ = rng.random(shape) < 0.15
    occ2 = rng.random(shape) < 0.05
    o, e = _random_rays(rng, shape, 300)
    dist, index = cast_rays(occ, o, e)
    da, ia, db, ib = cast_rays_pair(occ, occ2, o, e)
    np.testing.assert_array_equal(da, dist)
    np.testing.assert_array_equal(ia, index)
    for r in range(len(o)):
        d_ref, v_ref = dvr_scalar(occ, o[r], e[r])
        assert dist[r] == d_ref and tuple(index[r]) == v_ref, r
        d2, v2 = dvr_scalar(occ2, o[r], e[r])
        assert db[r] == d2 and tuple(ib[r]) == v2, r
        d_slab, v_slab = slab_first_hit(occ, o[r].astype(np.float64), e[r].astype(np.float64))
        assert tuple(index[r]) == v_slab and dist[r] == pytest.approx(d_slab, abs=1e-9), r


def test_rays_starting_outside_the_grid_follow_the_original():
    occ = np.zeros((4, 4, 4), bool)
    occ[2, 2, 2] = True
    o = np.array([[-3.5, 2.5, 2.5], [-3.5, 2.5, 2.5], [2.5, 2.5, -0.5], [6.5, 6.5, 6.5]], np.float32)
    e = np.array([[-2.5, 2.5, 2.5], [-4.5, 2.5, 2.5], [2.5, 2.5, 0.5], [7.5, 7.5, 7.5]], np.float32)
    dist, index = cast_rays(occ, o, e, max_step=50)
    da, ia, _, _ = cast_rays_pair(occ, occ, o, e, max_step=50)
    for r in range(len(o)):
        d_ref, v_ref = dvr_scalar(occ, o[r], e[r], max_step=50)
        assert dist[r] == d_ref and tuple(index[r]) == v_ref
        assert da[r] == d_ref and tuple(ia[r]) == v_ref
    assert index[0].tolist() == [2, 2, 2] and dist[0] == pytest.approx(6.5)  # enters, leaves the hit at x = 3
    assert dist[3] == -1.0 and index[3].tolist() == [0, 0, 0]  # never enters: the original's -1, voxel 0


# The hand-checked case: a 6 x 3 x 3 grid of 1 m voxels at the origin, the sensor at (0.5, 0.5, 1.5) (x = y,
# so the diagonal ray's x and y boundary distances tie exactly, also in float32).
HAND_GRID = GridSpec((6, 3, 3), 1.0, (0.0, 0.0, 0.0), "ego")
HAND_ORIGIN = np.array([[0.5, 0.5, 1.5]])
HAND_DIRS = np.array([[1, 0, 0], [-1, 0, 0], [math.sqrt(0.5), math.sqrt(0.5), 0]], np.float32)
DIAG = math.sqrt(2)


def _hand_cast(occ):
    o = to_voxel_coords(np.repeat(HAND_ORIGIN, 3, axis=0), HAND_GRID)
    e = to_voxel_coords(HAND_ORIGIN + HAND_DIRS, HAND_GRID)
    return cast_rays(occ, o, e)


def test_hand_checked_traversal():
    occ = np.zeros(HAND_GRID.shape, bool)
    occ[4, 0, 1] = True  # on the +x ray
    occ[2, 1, 1] = True  # touched only at its corner (2, 2) by the diagonal ray
    dist, index = _hand_cast(occ)
    # +x: voxels x = 0..4, the hit is left at x = 5: 4.5 m
    assert index[0].tolist() == [4, 0, 1] and dist[0] == pytest.approx(4.5)
    # -x: leaves the grid at x = 0 after 0.5 m without a hit; the last voxel is the start voxel
    assert index[1].tolist() == [0, 0, 1] and dist[1] == pytest.approx(0.5)
    # diagonal: every x/y boundary pair ties (at 0.5, 1.5, 2.5 sqrt 2 m) and a tie steps y first, so the
    # path is (0,0) (0,1) (1,1) (1,2) (2,2) and never (2,1): no hit; it leaves at y = 3, 2.5 sqrt 2 m
    assert index[2].tolist() == [2, 2, 1] and dist[2] == pytest.approx(2.5 * DIAG)
    occ[1, 2, 1] = True
    dist, index = _hand_cast(occ)
    # now it hits (1,2,1), entered at 1.5 sqrt 2 (y step) and left at 1.5 sqrt 2 (x boundary at x = 2)
    assert index[2].tolist() == [1, 2, 1] and dist[2] == pytest.approx(1.5 * DIAG)


def test_hand_checked_rayiou():
    """Classes 1..3 (0 = free). Truth: car (2) at x = 4 on the +x ray, bus (3) at (1,2,1) on the diagonal.
    Prediction: car one voxel early (depth 3.5 m vs 4.5 m: error 1.0, not < 1, so a TP at 2 and 4 m only),
    class 1 at (1,2,1) (wrong class). The -x ray hits nothing in the truth and is dropped."""
    gt = np.zeros(HAND_GRID.shape, np.uint8)
    gt[4, 0, 1], gt[1, 2, 1] = 2, 3
    pred = np.zeros_like(gt)
    pred[3, 0, 1], pred[1, 2, 1] = 2, 1
    m = RayIoUMetric(4, ["free", "one", "car", "bus"], HAND_GRID, directions=HAND_DIRS)
    m.process(pred, gt, HAND_ORIGIN)
    assert m.gt_cnt.tolist() == [0, 0, 1, 1] and m.pred_cnt.tolist() == [0, 1, 1, 0]
    assert m.tp.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    r = m.evaluate()
    assert r["rays"] == 2
    assert r["rayiou_1m"] == pytest.approx(0.0)
    assert r["rayiou_2m"] == pytest.approx(100 / 3) and r["rayiou_4m"] == pytest.approx(100 / 3)
    assert r["rayiou"] == pytest.approx(200 / 9)
    assert r["rayiou_per_class"]["car"] == pytest.approx({"1m": 0.0, "2m": 100.0, "4m": 100.0})
    assert r["rayiou_per_class"]["bus"] == {"1m": 0.0, "2m": 0.0, "4m": 0.0}


def reference_calc_rayiou(pcds_pred, pcds_gt, n_classes, free):
    """SparseOcc's calc_rayiou written out with its per-class loops (label, depth rows)."""
    thresholds = [1, 2, 4]
    gt_cnt, pred_cnt = np.zeros(n_classes), np.zeros(n_classes)
    tp_cnt = np.zeros((3, n_classes))
    for pp, pg in zip(pcds_pred, pcds_gt):
        for j, t in enumerate(thresholds):
            ok = np.abs(pp[:, 1] - pg[:, 1]) < t
            for c in range(n_classes):
                mp, mg = pp[:, 0] == c, pg[:, 0] == c
                if j == 0:
                    gt_cnt[c] += mg.sum()
                    pred_cnt[c] += mp.sum()
                tp_cnt[j, c] += (mg & mp & ok).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp_cnt / (gt_cnt + pred_cnt - tp_cnt)
    keep = [c for c in range(n_classes) if c != free]
    iou = iou[:, keep]
    return np.nanmean(iou) * 100, [np.nanmean(iou[j]) * 100 for j in range(3)]


def test_counting_matches_calc_rayiou_on_random_volumes():
    rng = np.random.default_rng(1)
    grid = GridSpec((24, 24, 6), 0.4, (-4.8, -4.8, -1.0), "ego")
    n = 6
    dirs = lidar_ray_directions()[::37]  # a subset keeps the test quick
    m = RayIoUMetric(n, None, grid, directions=dirs)
    pcds_pred, pcds_gt = [], []
    for _ in range(3):
        gt = np.where(rng.random(grid.shape) < 0.08, rng.integers(1, n, grid.shape), 0).astype(np.uint8)
        gt[:, :, 0] = 5  # ground
        gt[0, 0, 0] = 0
        pred = np.where(rng.random(grid.shape) < 0.7, gt, rng.integers(0, n, grid.shape)).astype(np.uint8)
        origins = np.array([[0.9, 0.0, 0.8], [-1.3, 0.4, 0.9]])
        m.process(pred, gt, origins)
        lp, dp, lt, dt = first_hits(pred, gt, origins, grid, 0, dirs)
        valid = lt != 0
        pcds_pred.append(np.stack([lp[valid], dp[valid]], 1).astype(np.float32))
        pcds_gt.append(np.stack([lt[valid], dt[valid]], 1).astype(np.float32))
    ref, ref_t = reference_calc_rayiou(pcds_pred, pcds_gt, n, free=0)
    r = m.evaluate()
    assert r["rayiou"] == pytest.approx(ref, abs=1e-9)
    assert [r["rayiou_1m"], r["rayiou_2m"], r["rayiou_4m"]] == pytest.approx(ref_t, abs=1e-9)
    assert 0 < r["rayiou"] < 100
    # two halves merge by summing the counters
    a = RayIoUMetric(n, None, grid, directions=dirs)
    a.load_state(m.state())
    assert a.evaluate() == r


def test_depths_and_labels_per_ray_match_the_scalar_transcription():
    rng = np.random.default_rng(2)
    grid = GridSpec((16, 16, 4), 0.4, (-3.2, -3.2, -1.0), "ego")
    sem = np.where(rng.random(grid.shape) < 0.1, rng.integers(1, 4, grid.shape), 0).astype(np.uint8)
    dirs = lidar_ray_directions()[::97]
    origin = np.array([[0.3, -0.2, 0.6]])
    lp, dp, _, _ = first_hits(sem, sem, origin, grid, 0, dirs)
    o = to_voxel_coords(origin, grid)[0]
    e = to_voxel_coords(origin + dirs.astype(np.float64), grid)
    for r in range(len(dirs)):
        d, v = dvr_scalar(sem != 0, o, e[r])
        assert lp[r] == sem[v] and dp[r] == np.float32(d) * np.float32(0.4)


def test_ray_set_is_sparseoccs():
    dirs = lidar_ray_directions()
    assert dirs.shape == (39 * 360, 3) and dirs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1, atol=1e-6)
    pitch = np.arcsin(dirs[::360, 2].astype(np.float64))
    assert pitch[0] == pytest.approx(-(math.pi / 2 - math.atan(1)), abs=1e-6) and pitch[-1] >= 0.21 > pitch[-2]


def _trans_matrix(t, q):
    tm = np.eye(4)
    tm[:3, :3] = q.rotation_matrix
    tm[:3, 3] = t
    return tm


def test_origins_follow_ego_pose_dataset():
    from pyquaternion import Quaternion

    grid = GridSpec((200, 200, 16), 0.4, (-40.0, -40.0, -1.0), "ego")
    n = 14
    l2e = [_trans_matrix([0.94, 0.0, 1.84], Quaternion(axis=[0, 0, 1], angle=-math.pi / 2 + 0.01))] * n
    e2g = [_trans_matrix([600 + 6.0 * i, 1600 + 1.0 * i, 0.0], Quaternion(axis=[0, 0, 1], angle=0.3 + 0.02 * i))
           for i in range(n)]
    ref = 6
    # SparseOcc's EgoPoseDataset.__getitem__, written out
    ref_lidar_from_global = np.linalg.inv(e2g[ref] @ l2e[ref])
    expected = []
    for i in range(n):
        if i == ref:
            o = np.zeros(3, np.float32)
        else:
            o = np.array((ref_lidar_from_global @ e2g[i] @ l2e[i])[:3, 3], dtype=np.float32)
        pad = np.ones(4)
        pad[:3] = o
        o = l2e[ref][:3] @ pad
        if abs(o[0]) < 39 and abs(o[1]) < 39:
            expected.append(o)
    assert 8 < len(expected) < n  # some are out of range, more than 8 remain
    sel = np.round(np.linspace(0, len(expected) - 1, 8)).astype(np.int64)
    got = scene_lidar_origins(e2g, l2e, ref, grid)
    np.testing.assert_array_equal(got, np.stack([expected[i] for i in sel]))


def test_metric_rejects_wrong_shapes():
    m = RayIoUMetric(4, None, HAND_GRID)
    with pytest.raises(ValueError, match="grid"):
        m.process(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.uint8), HAND_ORIGIN)
