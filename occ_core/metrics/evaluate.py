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
See :mod:`occ_core.metrics.ssc` for the metric definitions. Prepared nuScenes-family folders (``spec.metric``
``occ3d`` or ``openoccupancy``) are scored from ``PRED/<scene>/<token>/labels.npz`` by
:func:`evaluate_nuscenes_predictions` (:mod:`occ_core.metrics.occ3d`, :mod:`occ_core.metrics.rayiou`,
:mod:`occ_core.metrics.openoccupancy`).
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


def fov_mask(ds, sequence: str, shape: Sequence[int]) -> np.ndarray:
    """The left camera's field of view over the 1:1 grid of a prepared sequence (``fov_mask_1`` of its
    geometry file) as a bool array of ``shape``; FormatError naming the file when it is missing or of
    another size."""
    from occ_core.data.prepare.layout import geometry_path

    n_voxels = int(np.prod(shape))
    m = np.asarray(ds.geometry(sequence).get("fov_mask_1", np.zeros(0, bool)))
    if m.size != n_voxels:
        raise FormatError(f"fov_mask_1 has {m.size} values, expected {n_voxels} (rerun 'occ prepare')",
                          geometry_path(ds.root, sequence))
    return m.astype(bool).reshape(tuple(shape))


def check_metric_options(ds, fov_only: bool = False, camera_mask: bool = True, rayiou: bool = True) -> None:
    """OccError when an option of ``occ eval`` does not apply to the prepared folder's metric (instead of being
    ignored): --fov-only is for SemanticKITTI-family data (``ssc``), --no-camera-mask and --no-rayiou for
    Occ3D. Shared by ``occ eval --pred`` and ``occ eval --run``."""
    metric = ds.spec.metric
    if fov_only and metric != "ssc":
        raise OccError(f"--fov-only applies to SemanticKITTI-family data; {ds.dataset} is scored with "
                       f"the {metric} metric" + (" (its camera mask is on by default)" if metric == "occ3d" else ""))
    for given, option in ((not camera_mask, "--no-camera-mask"), (not rayiou, "--no-rayiou")):
        if given and metric != "occ3d":
            raise OccError(f"{option} applies to Occ3D data; {ds.dataset} is scored with the {metric} metric"
                           + ("" if metric == "ssc" else f" (no {'camera mask' if 'mask' in option else 'RayIoU'})"))


def evaluate_predictions(
    data: str | Path,
    pred: str | Path,
    split: str = "val",
    fov_only: bool = False,
    allow_missing: bool = False,
    progress: bool = True,
    camera_mask: bool = True,
    rayiou: bool = True,
) -> dict[str, Any]:
    """Score a prediction folder against the labeled frames of ``split`` in a prepared folder, with the
    benchmark metric of its spec (``spec.metric``): ``ssc`` here, ``occ3d`` and ``openoccupancy`` in
    :func:`evaluate_nuscenes_predictions` (``camera_mask`` and ``rayiou`` apply to Occ3D only).

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
    from occ_core.data.prepare.layout import PreparedDataset, frame_path

    ds = PreparedDataset(data)
    check_metric_options(ds, fov_only, camera_mask, rayiou)
    if ds.spec.metric != "ssc":
        return evaluate_nuscenes_predictions(ds, data, pred, split, allow_missing, progress, camera_mask, rayiou)
    class_names = list(ds.spec.classes.names)
    n_classes = len(class_names)
    lut = ds.spec.classes.remap_lut()
    shape = ds.spec.grid.shape

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
            fov[seq] = fov_mask(ds, seq, shape)

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


# ------------------------------------------------------------------------------------------------
# nuScenes family: Occ3D (mIoU with the camera mask, RayIoU), OpenOccupancy / SurroundOcc
# ------------------------------------------------------------------------------------------------


def scene_order(frames: list) -> list:
    """The frames of one scene in time order: along the ``extra.prev`` / ``extra.next`` sample chain when
    the records have it, else by ``extra.timestamp``, else as listed."""
    by_id = {f.id: f for f in frames}
    if frames and all("next" in f.extra for f in frames):
        firsts = [f for f in frames if not f.extra.get("prev") or f.extra.get("prev") not in by_id]
        if len(firsts) == 1:
            out, f, seen = [], firsts[0], set()
            while f is not None and f.id not in seen:
                out.append(f)
                seen.add(f.id)
                f = by_id.get(f.extra.get("next") or "")
            if len(out) == len(frames):
                return out
    if frames and all("timestamp" in f.extra for f in frames):
        return sorted(frames, key=lambda f: f.extra["timestamp"])
    return list(frames)


class SceneOrigins:
    """RayIoU origins of the frames of a prepared folder (:func:`occ_core.metrics.rayiou.scene_lidar_origins`
    over every frame of the frame's scene, poses ``ego_to_world`` / ``lidar_to_ego`` of the prepared frames);
    the poses are read once per scene."""

    KEYS = ("ego_to_world", "lidar_to_ego")

    def __init__(self, ds):
        self.ds = ds
        self._scenes: dict[str, tuple[list[str], list[np.ndarray], list[np.ndarray]]] = {}

    def _scene(self, scene: str):
        if scene not in self._scenes:
            frames = scene_order(self.ds.frames(sequences=[scene]))
            e2w, l2e = [], []
            for f in frames:
                a = self.ds.load_arrays(f, list(self.KEYS))
                e2w.append(a["ego_to_world"])
                l2e.append(a["lidar_to_ego"])
            self._scenes = {scene: ([f.id for f in frames], e2w, l2e)}  # one scene at a time: frames are grouped
        return self._scenes[scene]

    def __call__(self, frame: str) -> np.ndarray:
        from occ_core.metrics.rayiou import scene_lidar_origins

        scene, token = frame.split("/", 1)
        ids, e2w, l2e = self._scene(scene)
        return scene_lidar_origins(e2w, l2e, ids.index(token), self.ds.spec.grid)


def evaluate_nuscenes_predictions(ds, data: str | Path, pred: str | Path, split: str = "val",
                                  allow_missing: bool = False, progress: bool = True, camera_mask: bool = True,
                                  rayiou: bool = True) -> dict[str, Any]:
    """Score ``PRED/<scene>/<token>/labels.npz`` predictions (:mod:`occ_core.data.formats.labels`) against a
    prepared nuScenes-family folder ``ds`` (a :class:`PreparedDataset`).

    Occ3D (``spec.metric == "occ3d"``): mIoU / per-class IoU / geometry IoU of
    :class:`occ_core.metrics.occ3d.Occ3DMetric`, counting only ``mask_camera`` voxels unless ``camera_mask``
    is False, and (``rayiou``) SparseOcc's RayIoU (:class:`occ_core.metrics.rayiou.RayIoUMetric`, all voxels,
    origins from the scene's poses). OpenOccupancy / SurroundOcc (``"openoccupancy"``): IoU and mIoU with
    noise ignored (:class:`occ_core.metrics.openoccupancy.OpenOccupancyMetric`).

    Returns the scores (percent) with ``frames``, ``split``, ``camera_mask`` (whether the mask was applied),
    ``missing``, ``metric``, ``dataset``, ``data``, ``pred``.
    """
    from occ_core.data.formats.labels import FILE, find_prediction, load_prediction, prediction_path
    from occ_core.data.prepare.layout import frame_path
    from occ_core.metrics.occ3d import Occ3DMetric
    from occ_core.metrics.openoccupancy import OpenOccupancyMetric
    from occ_core.metrics.rayiou import RayIoUMetric

    spec = ds.spec
    occ3d = spec.metric == "occ3d"
    check_metric_options(ds, False, camera_mask, rayiou)
    use_mask = occ3d and camera_mask
    if use_mask and "camera" not in spec.masks:
        raise FormatError("the prepared frames carry no camera mask (spec.masks); rerun 'occ prepare' or score "
                          "all voxels with --no-camera-mask", ds.root / "manifest.json")
    frames = ds.frames(split=split, labeled=True)
    if not frames:
        raise OccError(f"split '{split}' has no labeled frames to evaluate in {ds.root}")
    pred = Path(pred)
    if not pred.is_dir():
        raise MissingError(f"prediction folder not found (expected <scene>/<sample token>/{FILE})", pred)
    files = [find_prediction(pred, f.sequence, f.id) for f in frames]
    missing = [f for f, p in zip(frames, files) if p is None]
    if missing and not allow_missing:
        first = missing[0]
        raise MissingError(f"no prediction for sample {first.name}; {len(missing)} of {len(frames)} samples have "
                           "none; use --allow-missing to score them as empty",
                           prediction_path(pred, first.sequence, first.id))
    metric = (Occ3DMetric if occ3d else OpenOccupancyMetric).for_spec(spec)
    ray = RayIoUMetric.for_spec(spec) if occ3d and rayiou else None
    origins = SceneOrigins(ds) if ray is not None else None
    shape = tuple(spec.grid.shape)
    keys = ["target_1_1"] + (["mask_camera"] if use_mask else [])
    jobs = list(zip(frames, files))
    if progress:
        from occ_core.utils.progress import track

        jobs = track(jobs, f"eval {split}" + (" (mIoU + RayIoU)" if ray is not None else ""))
    for frame, path in jobs:
        where = frame_path(ds.root, frame.sequence, frame.id)
        arrays = ds.load_arrays(frame, keys)
        target = arrays["target_1_1"]
        if target.shape != shape:
            raise FormatError(f"target shape {target.shape}, expected {shape}", where)
        mask = arrays["mask_camera"].astype(bool) if use_mask else None
        p = np.zeros(shape, np.uint8) if path is None else load_prediction(path, spec)
        try:
            metric.process(p, target, mask)
            if ray is not None:
                ray.process(p, target, origins(frame.name))
        except ValueError as e:
            raise FormatError(f"prepared frame: {e} (rerun 'occ prepare' with --force)", where) from None
    scores = metric.evaluate()
    if ray is not None:
        r = ray.evaluate()
        r.pop("frames")
        scores.update(r)
    return {**scores, "split": split, "camera_mask": bool(use_mask), "missing": [f.name for f in missing],
            "metric": spec.metric, "dataset": ds.dataset, "data": str(data), "pred": str(pred)}


def write_results(path: str | Path, results: dict[str, Any]) -> None:
    """Write evaluation results as JSON (atomically)."""
    from occ_core.utils.atomic import write_json

    write_json(path, results)
