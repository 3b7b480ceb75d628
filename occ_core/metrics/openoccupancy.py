"""The OpenOccupancy (nuScenes-Occupancy) and SurroundOcc semantic occupancy metric.

Both benchmarks score a prediction the same way (OpenOccupancy's ``OccNet.evaluation_semantic`` with
``fast_hist`` / ``cm_to_ious``; SurroundOcc's ``evaluation_semantic``):

* noise voxels (raw label 0, 255 in the prepared target) are **ignored**; every other voxel counts,
  empty (class 0, voxels not listed in the sparse ground truth) included;
* counts are summed over the split into one confusion matrix (SurroundOcc averages the per-sample counts,
  which gives the same ratios);
* **IoU** (OpenOccupancy's SC IoU, SurroundOcc's class-0 "IoU"): occupied (any class > 0) against empty;
* **per-class IoU** ``TP / (TP + FP + FN)`` for the 16 semantic classes, **mIoU** their mean.

A class with ``TP + FP + FN = 0`` over the split makes the original mean NaN; here it is reported as
``None``, listed under ``absent`` and left out of the mean (on the full validation split every class occurs,
so the numbers are the same). Scores are in percent; the state is one int64 confusion matrix.
"""

from __future__ import annotations

from occ_core.metrics.occ3d import Occ3DMetric


class OpenOccupancyMetric(Occ3DMetric):
    """Confusion counts and scores as defined above; ``process(pred, target, mask=None)`` per sample
    (prepared classes: 0 empty, 1..16, target 255 = noise, not counted). The counting and the scores
    are :class:`Occ3DMetric`'s (whose free class is this benchmark's empty class 0); no camera mask."""
