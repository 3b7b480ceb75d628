"""Evaluation: evaluators, the one inference loop that feeds them, and ``occ eval --run``.

An evaluator (detectron2 style) has ``reset()``, ``process(batch, outputs)`` (one batch of the
inference loop and what the stage's inference returned for it), ``evaluate()`` (scores, percent),
and keeps only plain summed counters: ``state()`` returns them as int64 arrays and
``load_state(state)`` restores them, so two evaluators fed two halves of a split merge into the
one-pass result by summing their states (:func:`merge_states`), which is exactly how
:func:`validate` reduces across processes (``all_reduce`` with SUM).

* :class:`SSCEvaluator`: the SemanticKITTI SSC metric (:class:`occ_core.metrics.ssc.SSCMetric`,
  the same numbers) of ``outputs["pred"]`` (class indices) against ``batch["target"]``; an optional
  ``mask(frame)`` restricts the voxels (``occ eval --fov-only``).
* :class:`Occ3DEvaluator`: Occ3D mIoU with the camera mask, or the OpenOccupancy / SurroundOcc metric
  (:mod:`occ_core.metrics.occ3d`, :mod:`occ_core.metrics.openoccupancy`); :class:`RayIoUEvaluator`:
  SparseOcc's RayIoU (:mod:`occ_core.metrics.rayiou`); :func:`benchmark_evaluators` picks them from the
  prepared folder's ``spec.metric``.
* :class:`BinaryIoUEvaluator`: geometry IoU / precision / recall of ``sigmoid(outputs["occ_logits"])
  >= threshold`` against ``batch["binary"]`` (255 ignored), B2S's binary pre-training metric.

:func:`validate` runs the model once per frame and hands every evaluator the same outputs; the
training stages (:mod:`occ_core.engine.trainer`) validate with it and :func:`evaluate_run`
(``occ eval --run``) scores a run folder with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

Infer = Callable[[torch.nn.Module, dict[str, Any]], dict[str, Any]]


def predict_outputs(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """The default inference of a stage: ``{"pred": model.predict(batch)}`` (class indices)."""
    return {"pred": model.predict(batch)}


class Evaluator:
    """Base class: plain summed counters (see the module docstring). :func:`validate` reports the
    scores of ``evaluate()`` under ``prefix`` (e.g. ``"binary_"`` next to an SSC evaluator)."""

    prefix: str = ""

    def reset(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def merge_states(states: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Sum evaluator states key by key (what ``all_reduce(SUM)`` does across processes)."""
    out: dict[str, np.ndarray] = {}
    for s in states:
        for k, v in s.items():
            out[k] = out[k] + np.asarray(v) if k in out else np.array(v, copy=True)
    return out


class SSCEvaluator(Evaluator):
    """SSC scores of ``outputs["pred"]`` [B, X, Y, Z] against ``batch["target"]`` (an :class:`SSCMetric`)."""

    def __init__(self, metric, mask: Callable[[str], np.ndarray | None] | None = None, prefix: str = ""):
        self.metric = metric
        self.mask = mask
        self.prefix = prefix

    @classmethod
    def for_spec(cls, spec, mask: Callable[[str], np.ndarray | None] | None = None) -> "SSCEvaluator":
        from occ_core.metrics.ssc import SSCMetric

        return cls(SSCMetric.for_spec(spec), mask)

    def reset(self) -> None:
        self.metric.reset()

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        pred = outputs["pred"].detach().cpu().numpy().astype(np.uint8)
        target = batch["target"].detach().cpu().numpy()
        frames = batch.get("frame") or [None] * len(pred)
        for p, t, frame in zip(pred, target, frames):
            m = self.mask(frame) if self.mask is not None else None
            self.metric.process(p, t, None if m is None else m.reshape(t.shape))

    def evaluate(self) -> dict[str, Any]:
        return self.metric.evaluate()

    def state(self) -> dict[str, np.ndarray]:
        return self.metric.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.metric.load_state(state)


class Occ3DEvaluator(SSCEvaluator):
    """Occ3D / OpenOccupancy scores (:class:`occ_core.metrics.occ3d.Occ3DMetric` or
    :class:`occ_core.metrics.openoccupancy.OpenOccupancyMetric`) of ``outputs["pred"]`` against
    ``batch["target"]``; ``mask(frame)`` is the camera mask (or None: every voxel)."""

    @classmethod
    def for_spec(cls, spec, mask: Callable[[str], np.ndarray | None] | None = None) -> "Occ3DEvaluator":
        from occ_core.metrics.occ3d import Occ3DMetric
        from occ_core.metrics.openoccupancy import OpenOccupancyMetric

        return cls((Occ3DMetric if spec.metric == "occ3d" else OpenOccupancyMetric).for_spec(spec), mask)


class RayIoUEvaluator(Evaluator):
    """SparseOcc's RayIoU (:class:`occ_core.metrics.rayiou.RayIoUMetric`) of ``outputs["pred"]`` against
    ``batch["target"]``; ``origins(frame)`` gives the frame's ray origins (grid frame, metres)."""

    def __init__(self, metric, origins: Callable[[str], np.ndarray], prefix: str = ""):
        self.metric = metric
        self.origins = origins
        self.prefix = prefix

    def reset(self) -> None:
        self.metric.reset()

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        pred = outputs["pred"].detach().cpu().numpy().astype(np.uint8)
        target = batch["target"].detach().cpu().numpy()
        for p, t, frame in zip(pred, target, batch["frame"]):
            self.metric.process(p, t, self.origins(frame))

    def evaluate(self) -> dict[str, Any]:
        return self.metric.evaluate()

    def state(self) -> dict[str, np.ndarray]:
        return self.metric.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.metric.load_state(state)


def benchmark_evaluators(prepared, fov_only: bool = False, camera_mask: bool = True,
                         rayiou: bool = True) -> list[Evaluator]:
    """The evaluators of a prepared folder's benchmark metric (``spec.metric``): ``ssc`` (optionally only
    the cameras' field of view), ``occ3d`` (the camera mask unless ``camera_mask`` is False, plus RayIoU
    unless ``rayiou`` is False) or ``openoccupancy``."""
    from occ_core.metrics.evaluate import check_metric_options

    spec = prepared.spec
    check_metric_options(prepared, fov_only, camera_mask, rayiou)
    if spec.metric == "ssc":
        mask = None
        if fov_only:
            masks: dict[str, np.ndarray] = {}

            def mask(frame: str) -> np.ndarray:
                seq = frame.split("/")[0]
                if seq not in masks:
                    masks[seq] = np.asarray(prepared.geometry(seq)["fov_mask_1"]).astype(bool)
                return masks[seq]

        return [SSCEvaluator.for_spec(spec, mask)]
    by_name: dict[str, Any] = {}

    def frame_of(name: str):
        if not by_name:
            by_name.update({f.name: f for f in prepared.frames()})
        return by_name[name]

    cam_mask = None
    if spec.metric == "occ3d" and camera_mask:
        def cam_mask(frame: str) -> np.ndarray:
            return prepared.load_arrays(frame_of(frame), ["mask_camera"])["mask_camera"].astype(bool)

    out: list[Evaluator] = [Occ3DEvaluator.for_spec(spec, cam_mask)]
    if spec.metric == "occ3d" and rayiou:
        from occ_core.metrics.evaluate import SceneOrigins
        from occ_core.metrics.rayiou import RayIoUMetric

        out.append(RayIoUEvaluator(RayIoUMetric.for_spec(spec), SceneOrigins(prepared)))
    return out


class BinaryIoUEvaluator(Evaluator):
    """Geometry IoU / precision / recall (percent) of ``p_occ >= threshold`` against the binary occupancy.

    Counts true positives, false positives and false negatives over the voxels whose
    ``batch["binary"]`` is not 255; ``frames`` is the number of frames seen."""

    def __init__(self, threshold: float = 0.5, logits_key: str = "occ_logits", target_key: str = "binary",
                 prefix: str = ""):
        self.threshold = float(threshold)
        self.prefix = prefix
        self.logits_key, self.target_key = logits_key, target_key
        self.reset()

    def reset(self) -> None:
        self.counts = np.zeros(4, np.int64)  # tp, fp, fn, frames

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        z = outputs[self.logits_key]
        b = batch[self.target_key].to(z.device)
        z = z[:, 0] if z.dim() == b.dim() + 1 else z  # [B, 1, ...] logits
        if tuple(z.shape) != tuple(b.shape):
            raise ValueError(f"occupancy logits {tuple(z.shape)} do not match the binary occupancy {tuple(b.shape)}")
        valid = b != 255
        pred = (torch.sigmoid(z.float()) >= self.threshold) & valid
        gt = (b == 1) & valid
        self.counts += np.array([int((pred & gt).sum()), int((pred & ~gt).sum()), int((~pred & gt).sum()), len(b)],
                                np.int64)

    def evaluate(self) -> dict[str, Any]:
        tp, fp, fn, frames = (int(v) for v in self.counts)
        pct = lambda a, b: 100.0 * a / b if b else 0.0  # noqa: E731
        return {"iou": pct(tp, tp + fp + fn), "precision": pct(tp, tp + fp), "recall": pct(tp, tp + fn), "frames": frames}

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts.copy()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.counts = np.asarray(state["counts"], np.int64).copy()


@torch.no_grad()
def validate(model: torch.nn.Module, dataset, evaluators: Sequence[Evaluator], device: torch.device | str = "cpu",
             dist_env=None, infer: Infer = predict_outputs, amp: bool = False, progress: bool = False,
             description: str = "validate") -> dict[str, Any]:
    """Run ``infer(model, batch)`` once per frame of ``dataset`` (this process's share: frames
    ``rank::world_size``) and feed the outputs to every evaluator; returns their merged scores.

    The evaluators' states are summed across processes before ``evaluate()``, so every process gets
    the scores of the whole split. Scores are merged into one dict, each evaluator's keys under its
    ``prefix``; two evaluators may not report the same key (give one a prefix)."""
    from occ_core.data.loading.dataset import collate
    from occ_core.engine.trainer import DistEnv, move_to

    device = torch.device(device)
    dist_env = dist_env or DistEnv()
    core = model.module if hasattr(model, "module") else model
    core.eval()
    for e in evaluators:
        e.reset()
    indices: Iterable[int] = list(range(len(dataset)))[dist_env.rank :: dist_env.world_size]
    if progress and dist_env.is_main:
        from occ_core.utils.progress import track

        indices = track(indices, description)
    for i in indices:
        batch = move_to(collate([dataset[i]]), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            outputs = infer(core, batch)
        for e in evaluators:
            e.process(batch, outputs)
    result: dict[str, Any] = {}
    for e in evaluators:
        if dist_env.enabled:
            e.load_state({k: dist_env.all_sum(np.asarray(v)) for k, v in e.state().items()})
        scores = {f"{e.prefix}{k}": v for k, v in e.evaluate().items()}
        clash = (set(scores) & set(result)) - {"frames"}
        if clash:
            raise ValueError(f"evaluators report the same keys: {sorted(clash)}")
        result.update(scores)
    return result


# ------------------------------------------------------------------------------------------------
# occ eval --run
# ------------------------------------------------------------------------------------------------


def evaluate_run(run: str | Path, data: str | Path | None = None, split: str = "val", fov_only: bool = False,
                 device: str = "auto", checkpoint: str = "best", progress: bool = True, camera_mask: bool = True,
                 rayiou: bool = True) -> dict[str, Any]:
    """Predict the labeled frames of a split with a run's checkpoint and score them (``occ eval --run``;
    the same metric, picked by the spec's ``metric``, and JSON keys as ``occ eval --pred``)."""
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.predict import frames_dataset
    from occ_core.engine.trainer import data_root, load_model, resolve_device

    run = Path(run)
    dev = resolve_device(device)
    model, cfg = load_model(run, checkpoint, dev)
    root = Path(data) if data is not None else data_root(cfg, run)
    prepared = PreparedDataset(root)
    evaluators = benchmark_evaluators(prepared, fov_only, camera_mask, rayiou)
    dataset = frames_dataset(run, cfg, root, split, labeled_only=True)
    result = validate(model, dataset, evaluators, dev, progress=progress, description=f"predict {split}")
    if prepared.spec.metric == "ssc":
        result.update({"split": split, "fov_only": fov_only})
    else:
        result.update({"split": split, "camera_mask": prepared.spec.metric == "occ3d" and camera_mask,
                       "metric": prepared.spec.metric})
    result.update({"missing": [], "run": str(run), "dataset": prepared.dataset})
    return result
