"""SSCMetric against a plain reference implementation and hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from occ_core.data.formats.semantickitti import CLASS_NAMES
from occ_core.metrics.ssc import (
    KITTI_DISTANCE_BANDS,
    SSCMetric,
    distance_bands,
    scores_from_confusion,
)


def reference_scores(frames, n_classes=20, ignore=255):
    """Straightforward SSC scores: per-class boolean masks, loops over frames, counts summed.

    ``frames`` is a list of (pred, target, mask-or-None). Follows semantic-kitti-api's
    evaluate_completion.py: union + 0 -> IoU 0; mIoU over classes 1..C-1.
    """
    tp = np.zeros(n_classes, dtype=np.int64)
    fp = np.zeros(n_classes, dtype=np.int64)
    fn = np.zeros(n_classes, dtype=np.int64)
    c_tp = c_fp = c_fn = 0
    for pred, target, mask in frames:
        valid = target != ignore
        if mask is not None:
            valid &= mask
        p = pred[valid]
        t = target[valid]
        for c in range(n_classes):
            tp[c] += np.sum((p == c) & (t == c))
            fp[c] += np.sum((p == c) & (t != c))
            fn[c] += np.sum((p != c) & (t == c))
        c_tp += np.sum((p > 0) & (t > 0))
        c_fp += np.sum((p > 0) & (t == 0))
        c_fn += np.sum((p == 0) & (t > 0))
    iou = [100.0 * tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else 0.0 for c in range(n_classes)]
    return {
        "iou": 100.0 * c_tp / (c_tp + c_fp + c_fn) if c_tp + c_fp + c_fn else 0.0,
        "precision": 100.0 * c_tp / (c_tp + c_fp) if c_tp + c_fp else 0.0,
        "recall": 100.0 * c_tp / (c_tp + c_fn) if c_tp + c_fn else 0.0,
        "miou": float(np.mean(iou[1:])),
        "per_class": iou[1:],
    }


def assert_scores_equal(got, ref):
    for key in ("iou", "precision", "recall", "miou"):
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key
    assert list(got["per_class"].values()) == pytest.approx(ref["per_class"], abs=1e-9)


def random_frame(rng, shape, n_classes=20, p_ignore=0.2, p_empty=0.5, with_mask=True):
    target = rng.integers(1, n_classes, size=shape).astype(np.uint8)
    target[rng.random(shape) < p_empty] = 0
    target[rng.random(shape) < p_ignore] = 255
    pred = target.copy()
    noisy = rng.random(shape) < 0.4
    pred[noisy] = rng.integers(0, n_classes, size=int(noisy.sum()))
    pred[pred == 255] = 0
    mask = (rng.random(shape) < 0.7) if with_mask else None
    return pred, target, mask


def test_matches_reference_random_frames():
    rng = np.random.default_rng(0)
    frames = [random_frame(rng, (24, 10, 6), with_mask=i % 2 == 0) for i in range(5)]
    m = SSCMetric()
    for pred, target, mask in frames:
        m.process(pred, target, mask)
    got = m.evaluate()
    assert got["frames"] == 5
    assert list(got["per_class"]) == list(CLASS_NAMES[1:])
    assert_scores_equal(got, reference_scores(frames))


def test_per_distance_matches_reference_on_slices():
    rng = np.random.default_rng(1)
    bands = {"near": (0, 5), "mid": (5, 12), "far": (12, 24)}
    frames = [random_frame(rng, (24, 8, 4)) for _ in range(3)]
    m = SSCMetric(distance_bands=bands)
    for pred, target, mask in frames:
        m.process(pred, target, mask)
    got = m.evaluate()
    assert_scores_equal(got, reference_scores(frames))
    for label, (a, b) in bands.items():
        sliced = [(p[a:b], t[a:b], None if k is None else k[a:b]) for p, t, k in frames]
        assert_scores_equal(got["per_distance"][label], reference_scores(sliced))


def test_non_tiling_bands_total_still_counts_everything():
    rng = np.random.default_rng(2)
    frames = [random_frame(rng, (20, 6, 4)) for _ in range(2)]
    m = SSCMetric(distance_bands={"middle": (5, 10)})
    for pred, target, mask in frames:
        m.process(pred, target, mask)
    assert_scores_equal(m.evaluate(), reference_scores(frames))


def test_full_size_frame_with_int64_inputs():
    rng = np.random.default_rng(3)
    pred, target, mask = random_frame(rng, (256, 256, 32))
    m = SSCMetric(distance_bands=KITTI_DISTANCE_BANDS)
    m.process(pred.astype(np.int64), target.astype(np.int32), mask)
    got = m.evaluate()
    # the bands tile the x axis: their counts add up to the total
    assert m.band_conf.sum(axis=0).tolist() == m.conf.tolist()
    ref = reference_scores([(pred, target, mask)])
    assert got["iou"] == pytest.approx(ref["iou"], abs=1e-9)
    assert got["miou"] == pytest.approx(ref["miou"], abs=1e-9)


def test_hand_computed_example():
    # 8 voxels, classes 0 (empty), 1 (car), 9 (road); one ignored voxel
    target = np.array([0, 0, 1, 1, 9, 9, 255, 0], dtype=np.uint8)
    pred = np.array([0, 1, 1, 9, 9, 0, 1, 0], dtype=np.uint8)
    m = SSCMetric()
    m.process(pred, target)
    s = m.evaluate()
    # completion over the 7 valid voxels: occupied-occupied = 3 (idx 2, 3, 4); FP = 1 (idx 1);
    # FN = 1 (idx 5); TN = 2
    assert s["iou"] == pytest.approx(100 * 3 / 5)
    assert s["precision"] == pytest.approx(100 * 3 / 4)
    assert s["recall"] == pytest.approx(100 * 3 / 4)
    # car: TP 1 (idx 2), FP 1 (idx 1), FN 1 (idx 3) -> 1/3 ; road: TP 1 (idx 4), FP 1 (3), FN 1 (5) -> 1/3
    assert s["per_class"]["car"] == pytest.approx(100 / 3)
    assert s["per_class"]["road"] == pytest.approx(100 / 3)
    assert s["per_class"]["building"] == 0.0
    assert s["miou"] == pytest.approx(2 * (100 / 3) / 19)


def test_mask_excludes_voxels():
    target = np.array([1, 1, 0, 0], dtype=np.uint8)
    pred = np.array([1, 0, 1, 0], dtype=np.uint8)
    m = SSCMetric()
    m.process(pred, target, mask=np.array([True, False, False, True]))
    s = m.evaluate()
    assert s["iou"] == 100.0 and s["per_class"]["car"] == 100.0
    assert m.conf.sum() == 2


def test_perfect_prediction_and_empty_scene():
    rng = np.random.default_rng(4)
    _, target, _ = random_frame(rng, (16, 16, 4), p_ignore=0.1)
    pred = np.where(target == 255, 0, target).astype(np.uint8)
    m = SSCMetric()
    m.process(pred, target)
    s = m.evaluate()
    assert s["iou"] == 100.0 and s["precision"] == 100.0 and s["recall"] == 100.0
    present = set(np.unique(target)) - {0, 255}
    for c in range(1, 20):
        assert s["per_class"][CLASS_NAMES[c]] == (100.0 if c in present else 0.0)

    # nothing occupied anywhere: every score is 0, not NaN
    m = SSCMetric()
    m.process(np.zeros(10, np.uint8), np.zeros(10, np.uint8))
    s = m.evaluate()
    assert s["iou"] == 0.0 and s["precision"] == 0.0 and s["recall"] == 0.0 and s["miou"] == 0.0


def test_absent_classes_count_as_zero_in_miou():
    # only car exists and is predicted perfectly: the 18 absent classes have IoU 0 and still
    # count in the mean (semantic-kitti-api: class_jaccard[1:].mean(), union + 1e-15)
    target = np.array([0, 1, 1, 0], dtype=np.uint8)
    m = SSCMetric()
    m.process(target.copy(), target)
    s = m.evaluate()
    assert s["per_class"]["car"] == 100.0
    assert s["miou"] == pytest.approx(100.0 / 19)


def test_merge_and_state_equal_one_metric():
    rng = np.random.default_rng(5)
    frames = [random_frame(rng, (12, 6, 4)) for _ in range(6)]
    bands = {"a": (0, 6), "b": (6, 12)}
    whole, first, second = (SSCMetric(distance_bands=bands) for _ in range(3))
    for i, (pred, target, mask) in enumerate(frames):
        whole.process(pred, target, mask)
        (first if i < 3 else second).process(pred, target, mask)
    merged = SSCMetric(distance_bands=bands).merge(first).merge(second)
    assert merged.evaluate() == whole.evaluate()
    # state arrays are plain int64 counts: summing states is the distributed reduction
    s1, s2 = first.state(), second.state()
    assert all(v.dtype == np.int64 for v in s1.values())
    reduced = {k: s1[k] + s2[k] for k in s1}
    assert SSCMetric.from_state(reduced, distance_bands=bands).evaluate() == whole.evaluate()
    whole.reset()
    assert whole.frames == 0 and whole.conf.sum() == 0 and whole.band_conf.sum() == 0
    with pytest.raises(ValueError):
        SSCMetric().merge(first)


def test_invalid_inputs_raise():
    m = SSCMetric()
    with pytest.raises(ValueError, match="shape"):
        m.process(np.zeros(4, np.uint8), np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="class index 20"):
        m.process(np.array([0, 20], np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="target contains value 30"):
        m.process(np.zeros(2, np.uint8), np.array([0, 30], np.uint8))
    with pytest.raises(ValueError, match="outside 0..255"):
        m.process(np.array([0, -1]), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="mask shape"):
        m.process(np.zeros(2, np.uint8), np.zeros(2, np.uint8), mask=np.ones(3, bool))
    assert m.frames == 0 and m.conf.sum() == 0  # failed calls add nothing


def test_distance_bands_along_x():
    bands = distance_bands()
    assert bands == {"0-17.1m": (0, 85), "17.1-34.2m": (85, 171), "34.2-51.2m": (171, 256)}
    assert KITTI_DISTANCE_BANDS == bands
    # 1:2 grid (0.4 m voxels, 128 x-slices)
    half = distance_bands(voxel_size=0.4, n_x=128)
    assert list(half.values())[0][0] == 0 and list(half.values())[-1][1] == 128


def test_scores_from_confusion_orientation():
    conf = np.zeros((3, 3), np.int64)
    conf[1, 2] = 4  # target 1 predicted as 2
    conf[2, 2] = 4
    s = scores_from_confusion(conf, ["empty", "a", "b"])
    assert s["per_class"] == {"a": 0.0, "b": 50.0}
    assert s["iou"] == 100.0


def test_matches_official_evaluate_completion_code():
    """A transcription of semantic-kitti-api's evaluate_completion.py / np_ioueval.iouEval:
    conf[pred, gt] via np.add.at, iouEval(n_classes, ignore=[]), IoU = tp / (tp + fp + fn + 1e-15),
    mIoU = class_jaccard[1:].mean(), completion from the confusion matrix."""
    rng = np.random.default_rng(7)
    frames = [random_frame(rng, (32, 16, 8), with_mask=False) for _ in range(4)]
    conf = np.zeros((20, 20), dtype=np.int64)
    for pred, target, _ in frames:
        keep = target != 255
        np.add.at(conf, (pred[keep].astype(np.int64), target[keep].astype(np.int64)), 1)
    tp = np.diag(conf)
    fp = conf.sum(axis=1) - tp
    fn = conf.sum(axis=0) - tp
    class_jaccard = tp / (tp + fp + fn + 1e-15)
    eps = np.finfo(np.float32).eps
    official = {
        "miou": 100 * class_jaccard[1:].mean(),
        "precision": 100 * np.sum(conf[1:, 1:]) / (np.sum(conf[1:, :]) + eps),
        "recall": 100 * np.sum(conf[1:, 1:]) / (np.sum(conf[:, 1:]) + eps),
        "iou": 100 * np.sum(conf[1:, 1:]) / (np.sum(conf) - conf[0, 0]),
    }
    m = SSCMetric()
    for pred, target, _ in frames:
        m.process(pred, target)
    got = m.evaluate()
    for key, value in official.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert list(got["per_class"].values()) == pytest.approx(list(100 * class_jaccard[1:]), rel=1e-9)
    # our conf is [target, pred]: the transpose of the official one
    assert m.conf.T.tolist() == conf.tolist()
