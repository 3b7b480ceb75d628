"""The Occ3D-nuScenes occupancy metric (the CVPR 2023 challenge's ``Metric_mIoU``).

Definitions, as the challenge code computes them (``occ_metrics.py`` of CVPR2023-3D-Occupancy-Prediction,
also used by FB-OCC, BEVDet-occ, SparseOcc's voxel mIoU):

* every sample's voxels go into one **dataset-level confusion matrix** over all classes including free
  (counts summed over the split, no per-sample averaging);
* with the **camera mask** (``use_image_mask=True``, the leaderboard setting) only voxels whose
  ``mask_camera`` is set are counted; without it every voxel is; target voxels that are no class (255)
  are not counted either (``hist_info`` keeps ``0 <= gt < n_classes``);
* **per-class IoU** ``TP / (TP + FP + FN)`` for every class but free; free takes part in the counts
  (predicting *car* on a free voxel is a false positive for car);
* **mIoU** = ``np.nanmean`` of the per-class IoUs: a class with ``TP + FP + FN = 0`` over the whole split
  has an undefined IoU (``0 / 0``), is reported as ``None`` and left out of the mean;
* **geometry IoU** (occupied = any class but free against free; BEVDet-occ's ``compute_occ_iou``), with
  precision and recall.

Classes here are the *prepared* indices: free is 0 (the Occ3D raw id 17), the other classes are
``1 .. n_classes - 1`` (the spec's ``to_raw`` gives the Occ3D ids back); names come from the dataset spec.
Scores are in percent. The state is one int64 confusion matrix, so reduction across workers is a sum.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from occ_core.metrics.ssc import SSCMetric


def _pct(num: float, den: float) -> float:
    return float(100.0 * num / den) if den > 0 else 0.0


def nanmean(values: Sequence[float | None]) -> float:
    """Mean of the values that are not None/NaN (``np.nanmean``); 0.0 when there is none."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else 0.0


def occ3d_scores(conf: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Occ3D scores (percent) from a confusion matrix ``conf[target, pred]`` whose class 0 is free."""
    conf = np.asarray(conf, dtype=np.int64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    per_class: dict[str, float | None] = {}
    for i in range(1, conf.shape[0]):
        per_class[class_names[i]] = float(100.0 * tp[i] / union[i]) if union[i] > 0 else None
    occ_tp = int(conf[1:, 1:].sum())
    pred_occ, tgt_occ = int(conf[:, 1:].sum()), int(conf[1:, :].sum())
    return {
        "miou": nanmean(list(per_class.values())),
        "per_class": per_class,
        "iou": _pct(occ_tp, int(conf.sum()) - int(conf[0, 0])),
        "precision": _pct(occ_tp, pred_occ),
        "recall": _pct(occ_tp, tgt_occ),
        "absent": [n for n, v in per_class.items() if v is None],
    }


class Occ3DMetric:
    """Accumulates the Occ3D confusion counts; see the module docstring for the definitions.

    Args:
        n_classes: prepared classes including free (class 0); Occ3D-nuScenes has 18.
        class_names: their names (index 0 is free).
        ignore_index: target value that is not counted (255).

    ``process(pred, target, mask)`` adds one sample: ``mask`` is the camera mask (bool, same shape) or
    None to count every voxel. The counting is :class:`occ_core.metrics.ssc.SSCMetric`'s (one bincount
    over a uint16 ``target << 8 | pred`` index), so it is as fast and validates inputs the same way.
    """

    def __init__(self, n_classes: int, class_names: Sequence[str] | None = None, ignore_index: int = 255):
        names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
        self._m = SSCMetric(n_classes=n_classes, ignore_index=ignore_index, distance_bands=None, class_names=names)
        self.n_classes = int(n_classes)
        self.class_names = names

    @classmethod
    def for_spec(cls, spec) -> "Occ3DMetric":
        return cls(spec.n_classes, list(spec.classes.names))

    def reset(self) -> None:
        self._m.reset()

    @property
    def conf(self) -> np.ndarray:
        return self._m.conf

    @property
    def frames(self) -> int:
        return self._m.frames

    def process(self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one sample (prepared class indices; ``mask`` bool or None). ValueError on bad input."""
        self._m.process(pred, target, mask)

    def evaluate(self) -> dict[str, Any]:
        """``miou``, ``per_class`` ({name: IoU or None}), ``iou``/``precision``/``recall`` (geometry),
        ``absent`` (classes with no voxel in target or prediction), ``frames``; percent."""
        out = occ3d_scores(self._m.conf, self.class_names)
        out["frames"] = int(self._m.frames)
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"conf": self._m.conf.copy(), "frames": np.array([self._m.frames], dtype=np.int64)}

    def load_state(self, state: dict[str, Any]) -> None:
        self._m.load_state({"conf": state["conf"], "frames": state.get("frames", 0)})

    def merge(self, other: "Occ3DMetric") -> "Occ3DMetric":
        self._m.merge(other._m)
        return self
