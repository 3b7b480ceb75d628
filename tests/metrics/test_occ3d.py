"""Occ3D mIoU (occ_core.metrics.occ3d) against a transcription of the challenge's Metric_mIoU, and the
OpenOccupancy / SurroundOcc metric (occ_core.metrics.openoccupancy) against a per-class-mask reference."""

from __future__ import annotations

import numpy as np
import pytest

from occ_core.metrics.occ3d import Occ3DMetric
from occ_core.metrics.openoccupancy import OpenOccupancyMetric

RAW_FREE = 17  # Occ3D's raw free id; prepared classes put free at 0
N = 18
SHAPE = (20, 20, 4)


def to_prepared(raw: np.ndarray) -> np.ndarray:
    """Occ3D raw ids (0..16 classes, 17 free) -> prepared (0 free, raw k -> k + 1)."""
    lut = np.array([k + 1 for k in range(RAW_FREE)] + [0], np.uint8)
    return lut[raw]


def reference_occ3d(samples, use_camera_mask: bool):
    """The challenge's Metric_mIoU, written out: hist over 18 raw ids, per_class_iu, nanmean of [:17]."""
    hist = np.zeros((N, N))
    for pred, gt, mask in samples:
        if use_camera_mask:
            p, g = pred[mask], gt[mask]
        else:
            p, g = pred.reshape(-1), gt.reshape(-1)
        k = (g >= 0) & (g < N)
        hist += np.bincount(N * g[k].astype(int) + p[k].astype(int), minlength=N * N).reshape(N, N)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    # geometry IoU (BEVDet-occ compute_occ_iou, free = 17 the last class)
    geo = hist[:RAW_FREE, :RAW_FREE].sum() / (hist.sum() - hist[RAW_FREE, RAW_FREE])
    return iou[:RAW_FREE] * 100, np.nanmean(iou[:RAW_FREE]) * 100, geo * 100


def _samples(n, seed, drop_classes=()):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gt = rng.choice(N, SHAPE, p=np.r_[np.full(17, 0.4 / 17), 0.6]).astype(np.uint8)
        pred = np.where(rng.random(SHAPE) < 0.5, gt, rng.integers(0, N, SHAPE)).astype(np.uint8)
        for c in drop_classes:  # a class absent from target and prediction
            gt[gt == c] = RAW_FREE
            pred[pred == c] = RAW_FREE
        out.append((pred, gt, rng.random(SHAPE) < 0.7))
    return out


@pytest.mark.parametrize("use_mask", [True, False])
@pytest.mark.parametrize("drop", [(), (3, 9)])
def test_occ3d_matches_challenge_metric(use_mask, drop):
    samples = _samples(4, seed=len(drop) + use_mask, drop_classes=drop)
    names = ["free"] + [f"c{k}" for k in range(RAW_FREE)]
    m = Occ3DMetric(N, names)
    for pred, gt, mask in samples:
        m.process(to_prepared(pred), to_prepared(gt), mask if use_mask else None)
    r = m.evaluate()
    ref_iou, ref_miou, ref_geo = reference_occ3d(samples, use_mask)
    got = [r["per_class"][f"c{k}"] for k in range(RAW_FREE)]
    for k in range(RAW_FREE):
        if np.isnan(ref_iou[k]):
            assert got[k] is None and f"c{k}" in r["absent"]
        else:
            assert got[k] == pytest.approx(ref_iou[k], abs=1e-9)
    assert r["miou"] == pytest.approx(ref_miou, abs=1e-9)
    assert r["iou"] == pytest.approx(ref_geo, abs=1e-9)
    assert r["frames"] == 4
    assert sorted(r["absent"]) == sorted(f"c{c}" for c in drop)


def test_camera_mask_changes_the_counts_and_merge_is_a_sum():
    samples = _samples(3, seed=5)
    names = [str(i) for i in range(N)]
    with_mask, without, a, b = (Occ3DMetric(N, names) for _ in range(4))
    for i, (pred, gt, mask) in enumerate(samples):
        with_mask.process(to_prepared(pred), to_prepared(gt), mask)
        without.process(to_prepared(pred), to_prepared(gt))
        (a if i < 1 else b).process(to_prepared(pred), to_prepared(gt), mask)
    assert with_mask.conf.sum() == sum(int(m.sum()) for _, _, m in samples)
    assert without.conf.sum() == 3 * np.prod(SHAPE)
    merged = Occ3DMetric(N, names)
    merged.load_state({k: a.state()[k] + b.state()[k] for k in a.state()})
    assert merged.evaluate() == with_mask.evaluate()
    assert all(v.dtype == np.int64 for v in with_mask.state().values())


def test_occ3d_rejects_bad_input():
    m = Occ3DMetric(N)
    with pytest.raises(ValueError, match="outside"):
        m.process(np.full(SHAPE, N, np.uint8), np.zeros(SHAPE, np.uint8))
    with pytest.raises(ValueError, match="mask shape"):
        m.process(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8), np.ones((2, 2), bool))


def reference_openoccupancy(samples, n):
    """Per class c: TP = (gt == c) & (pred == c), FP, FN over the voxels whose gt is not noise (255),
    summed over samples (SurroundOcc's evaluation_semantic score rows / OpenOccupancy's fast_hist)."""
    tp, g, p = np.zeros(n), np.zeros(n), np.zeros(n)
    for pred, gt in samples:
        keep = gt != 255
        pg, gg = pred[keep], gt[keep]
        tp[0] += ((gg != 0) & (pg != 0)).sum()
        g[0] += (gg != 0).sum()
        p[0] += (pg != 0).sum()
        for c in range(1, n):
            tp[c] += ((gg == c) & (pg == c)).sum()
            g[c] += (gg == c).sum()
            p[c] += (pg == c).sum()
    iou = 100 * tp / (g + p - tp)
    return iou[0], iou[1:], iou[1:].mean()


def test_openoccupancy_matches_per_class_reference():
    rng = np.random.default_rng(3)
    n = 17
    samples = []
    for _ in range(3):
        gt = rng.choice(n, SHAPE, p=np.r_[0.6, np.full(16, 0.4 / 16)]).astype(np.uint8)
        gt[rng.random(SHAPE) < 0.1] = 255  # noise
        pred = np.where(rng.random(SHAPE) < 0.4, np.minimum(gt, n - 1), rng.integers(0, n, SHAPE)).astype(np.uint8)
        samples.append((pred, gt))
    m = OpenOccupancyMetric(n, ["empty"] + [f"k{i}" for i in range(1, n)])
    for pred, gt in samples:
        m.process(pred, gt)
    r = m.evaluate()
    ref_iou, ref_per_class, ref_miou = reference_openoccupancy(samples, n)
    assert r["iou"] == pytest.approx(ref_iou, abs=1e-9)
    assert [r["per_class"][f"k{i}"] for i in range(1, n)] == pytest.approx(list(ref_per_class), abs=1e-9)
    assert r["miou"] == pytest.approx(ref_miou, abs=1e-9)
