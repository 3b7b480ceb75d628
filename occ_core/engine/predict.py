"""Inference from a run folder: submission files (``occ predict``).

Scoring a run folder (``occ eval --run``) is :func:`occ_core.engine.evaluate.evaluate_run`: the same
inference loop and evaluators as validation during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from occ_core.data.prepare.layout import PreparedDataset
from occ_core.data.loading.dataset import OccDataset, collate
from occ_core.engine.trainer import data_root, load_model, move_to, resolve_device
from occ_core.errors import MissingError


def frames_dataset(run: Path, cfg, data: str | Path | None, split: str, labeled_only: bool) -> OccDataset:
    """The frames of ``split`` a run predicts (its data, or ``data``; B2S autolabel runs get binary occupancy)."""
    root = Path(data) if data is not None else data_root(cfg, run)
    prepared = PreparedDataset(root)
    if data is not None:
        from occ_core.engine.trainer import check_data_fits

        check_data_fits(cfg, run, prepared.spec, root)
    data_cfg = cfg.data
    if getattr(cfg.model, "mode", None) == "autolabel":  # B2S auto-labelling: binary occupancy is an input
        import dataclasses

        data_cfg = dataclasses.replace(data_cfg, binary_targets=True)
    return OccDataset(prepared, split, data_cfg, train=False, seed=cfg.seed, labeled_only=labeled_only)


def iter_predictions(run: str | Path, data: str | Path | None = None, split: str = "val", labeled_only: bool = False,
                     device: str = "auto", checkpoint: str = "best", progress: bool = True) -> Iterator[tuple[Any, np.ndarray, dict]]:
    """Yield ``(frame, class indices uint8 [X, Y, Z], batch)`` for every frame of the split."""
    run = Path(run)
    dev = resolve_device(device)
    model, cfg = load_model(run, checkpoint, dev)
    dataset = frames_dataset(run, cfg, data, split, labeled_only)
    indices = range(len(dataset))
    if progress:
        from occ_core.utils.progress import track

        indices = track(indices, f"predict {split}")
    with torch.no_grad():
        for i in indices:
            sample = dataset[i]
            batch = move_to(collate([sample]), dev)
            pred = model.predict(batch)[0].cpu().numpy().astype(np.uint8)
            yield dataset.frames[i], pred, sample


def predict_to_folder(run: str | Path, out: str | Path, data: str | Path | None = None, split: str = "val",
                      device: str = "auto", checkpoint: str = "best", progress: bool = True) -> dict[str, Any]:
    """Write ``OUT/sequences/XX/predictions/NNNNNN.label`` (uint16 raw ids) for every frame of the split; on
    Occ3D data ``OUT/<scene>/<sample token>/labels.npz`` with ``semantics`` (uint8 Occ3D ids, 17 = free).

    A B2S auto-labelling run (``model.mode=autolabel``) writes pseudo-labels instead: the ``.label`` files
    plus ``NNNNNN.confidence.npy`` and ``NNNNNN.invalid`` (see :mod:`occ_core.engine.autolabel`)."""
    from occ_core.data.formats.submission import write_prediction
    from occ_core.engine.trainer import load_run_config

    if getattr(load_run_config(run).model, "mode", None) == "autolabel":
        from occ_core.engine.autolabel import write_pseudo_labels

        return write_pseudo_labels(run, out, data, split, device, checkpoint, progress)
    out = Path(out)
    count = 0
    inverse = None
    occ3d_layout = _spec(run, data).name == "occ3d"  # Occ3D: OUT/<scene>/<token>/labels.npz
    for frame, pred, _ in iter_predictions(run, data, split, False, device, checkpoint, progress):
        if inverse is None:
            inverse = _inverse_lut(run, data)
        if occ3d_layout:
            from occ_core.data.formats import occ3d

            occ3d.write_prediction(out, frame.sequence, frame.id, inverse[pred].astype(np.uint8))
        else:
            write_prediction(out, frame.sequence, frame.id, inverse[pred])
        count += 1
    if count == 0:
        raise MissingError(f"no frames in split '{split}'", out)
    return {"frames": count, "out": str(out)}


def _spec(run: Path, data):
    from occ_core.engine.trainer import load_run_config

    cfg = load_run_config(run)
    return PreparedDataset(Path(data) if data is not None else data_root(cfg, run)).spec


def _inverse_lut(run: Path, data) -> np.ndarray:
    """uint16 [256]: class index -> the dataset's raw id (from the dataset spec)."""
    from occ_core.engine.trainer import load_run_config

    cfg = load_run_config(run)
    root = Path(data) if data is not None else data_root(cfg, run)
    return PreparedDataset(root).spec.classes.inverse_lut().astype(np.uint16)

