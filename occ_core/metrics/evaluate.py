"""Score predictions against a prepared dataset (``occ eval``), or in-memory arrays (training).

Prediction folder layout (the official SemanticKITTI submission layout)::

    PRED/sequences/XX/predictions/NNNNNN.label   uint16 raw SemanticKITTI ids, 256*256*32 values
    PRED/sequences/XX/predictions/NNNNNN.npy     class indices 0..19, shape [256, 256, 32]

``PRED`` may also be given as ``PRED/sequences`` or hold ``dataset/sequences``. When both files
of a frame exist the ``.label`` is used. Raw ids are mapped with the benchmark's learning map
(``REMAP_LUT``); a raw id that is no benchmark class (e.g. 1 "outlier", 52 "other-structure",
or an unknown id) is an error naming the file, as the official script cannot score it either. The layout
is read by :mod:`occ_core.data.formats.submission`.

Only the labeled frames of the chosen split are scored, with the target at 1:1 (255 = ignored).
See :mod:`occ_core.metrics.ssc` for the metric definitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from occ_core.data.formats import semantickitti as sk
from occ_core.data.formats.submission import PRED_DIR, find_prediction, load_prediction, pred_sequences_dir
from occ_core.errors import FormatError, MissingError, OccError
from occ_core.metrics.ssc import KITTI_DISTANCE_BANDS, SSCMetric


# ------------------------------------------------------------------------------------------------
# In-memory evaluation (reusable by training / validation loops)
# ------------------------------------------------------------------------------------------------


def evaluate_arrays(
    pairs: Iterable[tuple[np.ndarray, ...]],
    n_classes: int = sk.N_CLASSES,
    class_names: Sequence[str] | None = None,
    distance_bands: dict[str, tuple[int, int]] | None = KITTI_DISTANCE_BANDS,
    progress: bool = False,
    total: int | None = None,
    description: str = "eval",
) -> dict[str, Any]:
    """Score an iterable of ``(pred, target)`` or ``(pred, target, mask)`` arrays.

    ``pred`` holds class indices, ``target`` class indices or 255 (ignored), ``mask`` (bool or
    None) restricts the voxels counted. Arrays are [256, 256, 32] grids in x, y, z order when
    ``distance_bands`` is set (the default bands assume 1:1 grids; pass ``None`` otherwise).
    Returns :meth:`SSCMetric.evaluate`'s dict (percent): ``iou``, ``miou``, ``precision``,
    ``recall``, ``per_class``, ``frames`` and ``per_distance``. Memory does not grow with the
    number of frames: pairs are consumed one at a time.
    """
    metric = SSCMetric(n_classes=n_classes, distance_bands=distance_bands, class_names=class_names)
    if progress:
        from occ_core.utils.progress import track

        pairs = track(pairs, description, total=total)
    for item in pairs:
        metric.process(*item)
    return metric.evaluate()


# ------------------------------------------------------------------------------------------------
# Evaluation of a prediction folder
# ------------------------------------------------------------------------------------------------


def evaluate_predictions(
    data: str | Path,
    pred: str | Path,
    split: str = "val",
    fov_only: bool = False,
    allow_missing: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a prediction folder against the labeled frames of ``split`` in a prepared folder.

    Args:
        data: folder written by ``occ prepare``.
        pred: folder with ``sequences/XX/predictions/NNNNNN.{label,npy}`` (see module docstring).
        split: "train", "val", "test" or "all"; only labeled frames are scored.
        fov_only: count only voxels inside the left camera's field of view (``fov_mask_1``).
        allow_missing: score a frame without prediction as all-empty instead of failing; such
            frames are listed under ``missing``.
        progress: show a progress bar (stderr).

    Returns a dict, scores in percent: ``iou``, ``miou``, ``precision``, ``recall``,
    ``per_class`` (class name -> IoU, classes 1..19), ``frames``, ``split``, ``fov_only``,
    ``missing`` (frame names ``SEQ/ID``), ``per_distance`` (band -> iou, miou, precision, recall,
    per_class), ``dataset``, ``data``, ``pred``.

    Raises :class:`OccError` when the split has no labeled frame, :class:`MissingError` naming
    the expected file of the first missing prediction, :class:`FormatError` naming a malformed
    prediction file.
    """
    from occ_core.data.prepare.layout import PreparedDataset, frame_path, geometry_path

    ds = PreparedDataset(data)
    class_names = list(ds.spec.classes.names)
    n_classes = len(class_names)
    lut = ds.spec.classes.remap_lut()
    shape = ds.spec.grid.shape
    n_voxels = ds.spec.grid.n_voxels

    frames = ds.frames(split=split, labeled=True)
    if not frames:
        total = len(ds.frames(split=split))
        raise OccError(
            f"split '{split}' has no labeled frames to evaluate in {ds.root}"
            + (f" ({total} unlabeled frames)" if total else ""))
    pred = Path(pred)
    pred_seqs = pred_sequences_dir(pred)

    files: list[Path | None] = [find_prediction(pred_seqs, f.sequence, f.id) for f in frames]
    missing = [f for f, p in zip(frames, files) if p is None]
    if missing and not allow_missing:
        first = missing[0]
        expected = pred_seqs / first.sequence / PRED_DIR / f"{first.id}.label"
        raise MissingError(
            f"no prediction for frame {first.name} (expected .label or .npy); {len(missing)} of {len(frames)} "
            "frames have none; use --allow-missing to score them as empty", expected)

    fov: dict[str, np.ndarray] = {}
    if fov_only:
        for seq in sorted({f.sequence for f in frames}):
            m = np.asarray(ds.geometry(seq).get("fov_mask_1", np.zeros(0, bool)))
            if m.size != n_voxels:
                raise FormatError(f"fov_mask_1 has {m.size} values, expected {n_voxels} (rerun 'occ prepare')",
                                  geometry_path(ds.root, seq))
            fov[seq] = m.astype(bool).reshape(shape)

    metric = SSCMetric.for_spec(ds.spec)
    jobs = list(zip(frames, files))
    if progress:
        from occ_core.utils.progress import track

        jobs = track(jobs, f"eval {split}")
    # Frames are loaded one at a time (memory stays flat). Loading a frame (~25 ms: decompressing
    # the target, reading and remapping the prediction) costs more than scoring it (~5 ms); a
    # background loader thread measured no faster on 2 cores, so there is none.
    for frame, path in jobs:
        target = ds.load_target(frame, 1)
        where = frame_path(ds.root, frame.sequence, frame.id)
        if target.shape != shape:
            raise FormatError(f"target shape {target.shape}, expected {shape}", where)
        p = np.zeros(shape, np.uint8) if path is None else load_prediction(path, n_classes, lut, shape)
        try:
            metric.process(p, target, fov.get(frame.sequence))
        except ValueError as e:  # predictions are validated on loading: this is a corrupt target
            raise FormatError(f"prepared target: {e} (rerun 'occ prepare' with --force)", where) from None
    scores = metric.evaluate()
    per_distance = scores.pop("per_distance")
    frames_count = scores.pop("frames")
    return {
        **scores,
        "frames": frames_count,
        "split": split,
        "fov_only": bool(fov_only),
        "missing": [f.name for f in missing],
        "per_distance": per_distance,
        "dataset": ds.dataset,
        "data": str(data),
        "pred": str(pred),
    }


def write_results(path: str | Path, results: dict[str, Any]) -> None:
    """Write evaluation results as JSON (atomically)."""
    from occ_core.utils.atomic import write_json

    write_json(path, results)
