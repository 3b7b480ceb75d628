"""The SemanticKITTI semantic scene completion (SSC) metric, detectron2-evaluator style.

Definitions follow the official ``evaluate_completion.py`` of the semantic-kitti-api (which uses its
``iouEval`` with no ignored class and one confusion matrix summed over the whole split):

* voxels whose target is ``ignore_index`` (255: never observed, or a raw class outside the
  benchmark) are not counted; neither are voxels outside the optional ``mask``;
* completion (scene) IoU, precision and recall treat every class > 0 as "occupied" and 0 as
  "empty": ``IoU = TP / (TP + FP + FN)``, computed from the confusion matrix;
* per-class IoU = TP / (TP + FP + FN) with counts summed over all frames (not averaged per frame);
  a class with TP + FP + FN = 0 gets IoU 0, as in ``iouEval`` (which divides by ``union + 1e-15``);
* mIoU = mean of the per-class IoUs of classes 1..19 (empty, class 0, is left out of the mean but
  still takes part in the counts: predicting "car" on an empty voxel is a false positive for car).

All scores are returned in percent. The accumulated state is one int64 confusion matrix (plus one
per distance band), so memory does not grow with the number of frames and distributed reduction
is a plain sum (:meth:`SSCMetric.merge`, :meth:`SSCMetric.state`, :meth:`SSCMetric.from_state`).

Speed: one ``np.bincount`` per frame over a combined uint16 index ``target << 8 | pred`` (65,536
bins), whose out-of-range cells double as a free validity check; no per-class masks.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from occ_core.data.formats.semantickitti import CLASS_NAMES, DISTANCE_EDGES_M, GRID_SHAPE, IGNORE, N_CLASSES, VOXEL_SIZE


def band_label(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}m"


def distance_bands(
    edges: Sequence[float] = DISTANCE_EDGES_M, voxel_size: float = VOXEL_SIZE, n_x: int = GRID_SHAPE[0]
) -> dict[str, tuple[int, int]]:
    """Index ranges along the x (forward) axis of the grid for the distance bands.

    A voxel belongs to band ``[lo, hi)`` when the x coordinate of its centre, ``(i + 0.5) *
    voxel_size`` metres from the sensor, satisfies ``lo <= x < hi`` (the grid's x axis starts at
    the sensor, 0 m, and runs forward to 51.2 m). Returns ``{label: (start, stop)}`` with
    half-open index ranges; at 0.2 m voxels the default bands are x indices 0-84, 85-170 and
    171-255. Comparisons use a tolerance of a millionth of a voxel to avoid
    floating-point ties at the edges (17.1 m is exactly the centre of voxel 85, which goes to the
    second band).
    """
    centres = (np.arange(n_x) + 0.5) * voxel_size
    eps = 1e-6 * voxel_size  # 85.5 * 0.2 is 17.1 up to rounding: treat it as on the edge
    out: dict[str, tuple[int, int]] = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = np.nonzero((centres >= lo - eps) & (centres < hi - eps))[0]
        start, stop = (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)
        out[band_label(lo, hi)] = (start, stop)
    return out


KITTI_DISTANCE_BANDS: dict[str, tuple[int, int]] = distance_bands()
"""SemanticKITTI's bands at 1:1 (x-slices of 0.2 m): 0-17.1 m, 17.1-34.2 m, 34.2-51.2 m."""


def spec_distance_bands(spec, scale: int = 1) -> dict[str, tuple[int, int]]:
    """The dataset spec's per-distance bands as x-index ranges of the grid at 1:``scale`` (forward
    distance, ``distance.axis == "x"``); ``{}`` for other axes (not expressible as x-slices)."""
    if spec.distance.axis != "x" or not spec.distance.edges:
        return {}
    g = spec.grid.scaled(scale)
    edges = spec.distance.edges
    shift = spec.distance.origin[0] - g.origin[0]  # forward distance d = (i + 0.5) * voxel - shift
    ranges = distance_bands([e + shift for e in edges], g.voxel_size[0], g.shape[0]).values()
    return {band_label(lo, hi): r for (lo, hi), r in zip(zip(edges[:-1], edges[1:]), ranges)}


def _pct(num: float, den: float) -> float:
    return float(100.0 * num / den) if den > 0 else 0.0


def scores_from_confusion(conf: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """SSC scores (percent) from a confusion matrix ``conf[target, pred]`` (int counts, C x C).

    Returns ``iou`` (completion), ``precision``, ``recall``, ``miou`` (classes 1..C-1) and
    ``per_class`` ({name: IoU} for classes 1..C-1; names default to the class index as a string).
    """
    conf = np.asarray(conf, dtype=np.int64)
    c = conf.shape[0]
    occ_tp = int(conf[1:, 1:].sum())  # occupied in target and prediction
    pred_occ = int(conf[:, 1:].sum())
    tgt_occ = int(conf[1:, :].sum())
    total = int(conf.sum())
    union = total - int(conf[0, 0])  # = TP + FP + FN of "occupied"
    tp = np.diag(conf)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    denom = tp + fp + fn
    iou = np.where(denom > 0, 100.0 * tp / np.maximum(denom, 1), 0.0)
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    return {
        "iou": _pct(occ_tp, union),
        "precision": _pct(occ_tp, pred_occ),
        "recall": _pct(occ_tp, tgt_occ),
        "miou": float(iou[1:].mean()) if c > 1 else 0.0,
        "per_class": {names[i]: float(iou[i]) for i in range(1, c)},
    }


class SSCMetric:
    """Accumulates SSC confusion counts over frames; see the module docstring for definitions.

    Args:
        n_classes: number of classes including empty (0). At most 255.
        ignore_index: target value that is not counted; must be in ``n_classes..255``.
        distance_bands: ``{label: (start, stop)}`` index ranges along axis 0 of each grid for a
            per-distance breakdown (see :func:`distance_bands`), or None for none. Inputs must then
            have at least one dimension whose first axis the ranges index.
        class_names: names of the classes (default: SemanticKITTI's when ``n_classes == 20``).

    Usage::

        m = SSCMetric(distance_bands=KITTI_DISTANCE_BANDS)
        for pred, target in pairs:
            m.process(pred, target)          # [256, 256, 32] class indices; target 255 = ignore
        scores = m.evaluate()                # percent
    """

    def __init__(
        self,
        n_classes: int = N_CLASSES,
        ignore_index: int = IGNORE,
        distance_bands: dict[str, tuple[int, int]] | None = None,
        class_names: Sequence[str] | None = None,
    ):
        if not 1 <= n_classes <= 255:
            raise ValueError(f"n_classes must be in 1..255, got {n_classes}")
        if not n_classes <= ignore_index <= 255:
            raise ValueError(f"ignore_index must be in {n_classes}..255, got {ignore_index}")
        self.n_classes = int(n_classes)
        self.ignore_index = int(ignore_index)
        self.bands: dict[str, tuple[int, int]] = dict(distance_bands or {})
        if class_names is None:
            class_names = CLASS_NAMES if n_classes == len(CLASS_NAMES) else [str(i) for i in range(n_classes)]
        if len(class_names) != n_classes:
            raise ValueError(f"{len(class_names)} class names for {n_classes} classes")
        self.class_names = list(class_names)
        spans = sorted(self.bands.values())
        # bands tiling axis 0 from 0 contiguously: the total is the sum of the bands (one pass)
        self._tiling = bool(spans) and spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        self._tiling_stop = spans[-1][1] if spans else 0
        self.reset()

    @classmethod
    def for_spec(cls, spec) -> "SSCMetric":
        """The benchmark metric of a dataset spec (its classes, ignore value and distance bands)."""
        return cls(n_classes=spec.n_classes, distance_bands=spec_distance_bands(spec), class_names=list(spec.classes.names))

    # -- accumulation ------------------------------------------------------------------------
    def reset(self) -> None:
        c = self.n_classes
        self.conf = np.zeros((c, c), dtype=np.int64)
        self.band_conf = np.zeros((len(self.bands), c, c), dtype=np.int64)
        self.frames = 0

    def _counts(self, idx: np.ndarray) -> np.ndarray:
        """[256, 256] counts of (target, pred) over a combined uint16 index."""
        return np.bincount(idx.reshape(-1), minlength=1 << 16).reshape(256, 256)

    def _check(self, counts: np.ndarray) -> np.ndarray:
        c = self.n_classes
        bad_tgt = counts[c:].sum(axis=1)
        bad_tgt[255 - c] -= counts[255, 255]  # masked-out voxels
        bad_tgt[self.ignore_index - c] = 0
        if bad_tgt.any():
            v = int(np.nonzero(bad_tgt)[0][0]) + c
            raise ValueError(f"target contains value {v}, neither a class 0..{c - 1} nor ignore {self.ignore_index}")
        return counts[:c, :c]

    @staticmethod
    def _as_u8(a: np.ndarray, what: str) -> np.ndarray:
        if a.dtype == np.uint8:
            return a
        if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{what} must hold integer class indices, got dtype {a.dtype}")
        if a.size and (int(a.min()) < 0 or int(a.max()) > 255):
            bad = int(a.min()) if int(a.min()) < 0 else int(a.max())
            raise ValueError(f"{what} contains value {bad} outside 0..255")
        return a.astype(np.uint8)

    def process(self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one frame (or a batch: any shape, as long as pred, target and mask match).

        ``pred`` holds class indices 0..n_classes-1, ``target`` the same or ``ignore_index``,
        ``mask`` (bool) restricts the counted voxels. With distance bands the first axis of the
        arrays is the grid's x axis (so pass one [X, Y, Z] frame at a time). Raises ``ValueError``
        on mismatched shapes or out-of-range values.
        """
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} does not match target shape {target.shape}")
        p = self._as_u8(pred, "prediction")
        if p.size and int(p.max()) >= self.n_classes:
            raise ValueError(f"prediction contains class index {int(p.max())} outside 0..{self.n_classes - 1}")
        t = self._as_u8(target, "target")
        idx = t.astype(np.uint16)
        idx <<= 8
        idx |= p
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != pred.shape:
                raise ValueError(f"mask shape {mask.shape} does not match prediction shape {pred.shape}")
            # voxels outside the mask get index 0xFFFF (target 255, pred 255): a cell no real
            # pair can reach (preds are < n_classes <= 255), dropped with the other rows >= C.
            # Arithmetic instead of idx[~mask] = ...: boolean indexing is ~15x slower here.
            fill = np.logical_not(mask).view(np.uint8).astype(np.uint16)
            fill *= np.uint16(0xFFFF)
            idx |= fill
        if self.bands:
            if idx.ndim == 0:
                raise ValueError("distance bands need arrays with an x axis first")
            n_x = idx.shape[0]
            band_confs = []
            for start, stop in self.bands.values():
                if stop > n_x:
                    raise ValueError(f"distance band {start}:{stop} outside the x axis of length {n_x}")
                band_confs.append(self._check(self._counts(idx[start:stop])))
            if self._tiling and self._tiling_stop == n_x:
                conf = np.sum(band_confs, axis=0)
            else:
                conf = self._check(self._counts(idx))
            self.band_conf += np.stack(band_confs)
        else:
            conf = self._check(self._counts(idx))
        self.conf += conf
        self.frames += 1

    # -- results -----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Scores in percent: ``iou``, ``precision``, ``recall``, ``miou``, ``per_class`` (name ->
        IoU for classes 1..C-1), ``frames``, and ``per_distance`` (band label -> the same five
        scores) when distance bands are set."""
        out = scores_from_confusion(self.conf, self.class_names)
        out["frames"] = int(self.frames)
        if self.bands:
            out["per_distance"] = {
                label: scores_from_confusion(self.band_conf[i], self.class_names)
                for i, label in enumerate(self.bands)
            }
        return out

    # -- distributed / checkpointing ---------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The accumulated counts as plain int64 arrays (sum them to reduce across workers)."""
        return {
            "conf": self.conf.copy(),
            "band_conf": self.band_conf.copy(),
            "frames": np.array([self.frames], dtype=np.int64),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        conf = np.asarray(state["conf"], dtype=np.int64)
        band_conf = np.asarray(state.get("band_conf", np.zeros((0,) + conf.shape)), dtype=np.int64)
        if conf.shape != self.conf.shape or band_conf.shape != self.band_conf.shape:
            raise ValueError(
                f"state shapes conf {conf.shape}, band_conf {band_conf.shape} do not match this metric "
                f"({self.conf.shape}, {self.band_conf.shape})"
            )
        self.conf = conf.copy()
        self.band_conf = band_conf.copy()
        self.frames = int(np.asarray(state.get("frames", 0)).sum())

    @classmethod
    def from_state(cls, state: dict[str, Any], **kwargs: Any) -> "SSCMetric":
        """A metric holding ``state``; ``kwargs`` are the constructor's (bands, names, ...)."""
        kwargs.setdefault("n_classes", int(np.asarray(state["conf"]).shape[0]))
        m = cls(**kwargs)
        m.load_state(state)
        return m

    def merge(self, other: "SSCMetric") -> "SSCMetric":
        """Add the counts of ``other`` (same classes and bands) into this metric; returns self."""
        if other.n_classes != self.n_classes or list(other.bands.items()) != list(self.bands.items()):
            raise ValueError("cannot merge metrics with different classes or distance bands")
        self.conf += other.conf
        self.band_conf += other.band_conf
        self.frames += other.frames
        return self

    def __repr__(self) -> str:
        return f"SSCMetric(n_classes={self.n_classes}, frames={self.frames}, bands={list(self.bands)})"
