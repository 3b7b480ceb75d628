"""Offline auto-labelling with B2S (``model.mode=autolabel``): pseudo-labels ready to train on.

``occ predict --run AUTOLABEL_RUN --split train --out PSEUDO`` (:func:`write_pseudo_labels`) writes,
for every frame that has binary occupancy (a target, or LiDAR scans for frames with no target)::

    PSEUDO/sequences/XX/predictions/NNNNNN.label             uint16 raw SemanticKITTI ids (inverse learning map)
    PSEUDO/sequences/XX/predictions/NNNNNN.confidence.npy    uint8 [256, 256, 32]: round(255 * probability of
                                                             the written class); 0 on unknown voxels
    PSEUDO/sequences/XX/predictions/NNNNNN.invalid           bit-packed: voxels whose binary occupancy is unknown

The ``.label`` files are the submission format, so ``occ eval --data PREPARED --pred PSEUDO`` scores
them. :func:`build_pseudo_dataset` turns them into a raw SemanticKITTI folder (links to the original
images, scans, calibration and poses; ``voxels/NNNNNN.{bin,occluded}`` linked, ``.label`` the
pseudo-labels and ``.invalid`` the unknown voxels plus those below a confidence threshold) that
``occ prepare kitti`` reads like any other, so ``occ train`` trains on the pseudo-labels::

    python -m occ_core.engine.autolabel build-dataset --prepared PREPARED --pseudo PSEUDO --out PSEUDO_RAW \\
        [--min-confidence 0.5] [--keep-labels RUN/label_split.json]
    occ prepare kitti --root PSEUDO_RAW --out PSEUDO_PREPARED
    occ train --method b2s --data PSEUDO_PREPARED ...
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from occ_core.data.loading.dataset import collate

from occ_core.errors import MissingError, OccError

CONFIDENCE_SUFFIX = ".confidence.npy"
INVALID_SUFFIX = ".invalid"


def is_autolabel_run(cfg) -> bool:
    return getattr(cfg.model, "mode", None) == "autolabel"


def write_pseudo_labels(run: str | Path, out: str | Path, data: str | Path | None = None, split: str = "train",
                        device: str = "auto", checkpoint: str = "best", progress: bool = True) -> dict[str, Any]:
    """Auto-label every frame of ``split`` that has binary occupancy (see module docstring)."""
    import dataclasses

    from occ_core.data.formats import semantickitti as sk
    from occ_core.data.formats.submission import prediction_folder, write_prediction
    from occ_core.data.loading.dataset import OccDataset
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.predict import _inverse_lut
    from occ_core.engine.trainer import data_root, load_model, move_to, resolve_device
    from occ_core.utils.atomic import atomic_path, write_bytes

    run, out = Path(run), Path(out)
    dev = resolve_device(device)
    model, cfg = load_model(run, checkpoint, dev)
    if not hasattr(model, "predict_with_confidence"):
        raise OccError(f"run {run} (method '{cfg.method}') cannot write pseudo-labels: train b2s with --set model.mode=autolabel")
    root = Path(data) if data is not None else data_root(cfg, run)
    data_cfg = dataclasses.replace(cfg.data, binary_targets=True, label_fraction=1.0)
    dataset = OccDataset(PreparedDataset(root), split, data_cfg, train=False, seed=cfg.seed, labeled_only=False)
    inverse = _inverse_lut(run, data)
    indices: Iterable[int] = range(len(dataset))
    if progress:
        from occ_core.utils.progress import track

        indices = track(indices, f"auto-label {split}")
    count = 0
    with torch.no_grad():
        for i in indices:
            frame = dataset.frames[i]
            sample = dataset[i]
            batch = move_to(collate([sample]), dev)
            pred, conf = model.predict_with_confidence(batch)
            pred = pred[0].cpu().numpy().astype(np.uint8)
            conf8 = np.round(conf[0].cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)
            unknown = sample["binary"].numpy() == 255
            folder = prediction_folder(out, frame.sequence)
            write_prediction(out, frame.sequence, frame.id, inverse[pred])
            with atomic_path(folder / f"{frame.id}{CONFIDENCE_SUFFIX}") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, conf8)
            write_bytes(folder / f"{frame.id}{INVALID_SUFFIX}", sk.pack_bits(unknown).tobytes())
            count += 1
    if count == 0:
        raise MissingError(f"no frames with binary occupancy in split '{split}'", out)
    return {"frames": count, "out": str(out), "pseudo_labels": True}


def read_confidence(path: str | Path) -> np.ndarray:
    """A ``NNNNNN.confidence.npy`` as float32 probabilities in [0, 1]."""
    arr = np.load(path, allow_pickle=False)
    return arr.astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------------------
# Pseudo-labelled raw dataset
# ------------------------------------------------------------------------------------------------


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)


def build_pseudo_dataset(prepared: str | Path, pseudo: str | Path, out: str | Path, min_confidence: float = 0.0,
                         keep_labels: Iterable[str] = ()) -> dict[str, Any]:
    """A raw SemanticKITTI folder ``OUT/dataset/sequences/XX`` whose voxel targets are the pseudo-labels.

    Frames in ``keep_labels`` (names ``SEQ/ID``) and labelled frames without a pseudo-label (e.g. the validation
    split) keep their own ground-truth voxel labels; the other frames that have a pseudo-label get it, with the unknown voxels and those whose confidence is below
    ``min_confidence`` marked invalid (ignored in training). Everything else is linked, not copied."""
    from occ_core.data.formats import semantickitti as sk
    from occ_core.data.formats.submission import PRED_DIR
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.utils.atomic import write_bytes

    ds = PreparedDataset(prepared)
    if ds.dataset != "semantickitti":
        raise OccError(f"pseudo-label datasets are built for the SemanticKITTI layout (got {ds.dataset})")
    pseudo, out = Path(pseudo), Path(out)
    pred_root = pseudo / "sequences" if (pseudo / "sequences").is_dir() else pseudo
    if not pred_root.is_dir():
        raise MissingError("pseudo-label folder not found", pseudo)
    keep = set(keep_labels)
    src_root = ds.source
    n_pseudo = n_kept = 0
    for seq in sorted({f.sequence for f in ds.frames()}):
        src, dst = src_root / seq, out / "dataset" / "sequences" / seq
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("calib.txt", "poses.txt", "times.txt"):
            if (src / name).is_file():
                _link(src / name, dst / name)
        for name in ("image_2", "image_3", "velodyne", "labels"):
            if (src / name).is_dir():
                _link(src / name, dst / name)
        for frame in ds.frames(sequences=[seq]):
            vox_src, vox_dst = src / "voxels", dst / "voxels"
            for suffix in (".bin", ".occluded"):
                if (vox_src / f"{frame.id}{suffix}").is_file():
                    _link(vox_src / f"{frame.id}{suffix}", vox_dst / f"{frame.id}{suffix}")
            label = pred_root / seq / PRED_DIR / f"{frame.id}.label"
            if frame.labeled and (frame.name in keep or not label.is_file()):
                for suffix in (".label", ".invalid"):
                    _link(vox_src / f"{frame.id}{suffix}", vox_dst / f"{frame.id}{suffix}")
                n_kept += 1
            elif label.is_file():
                _link(label, vox_dst / f"{frame.id}.label")
                invalid_path = label.with_suffix(INVALID_SUFFIX)
                invalid = sk.read_voxel_bits(invalid_path) if invalid_path.is_file() else np.zeros(sk.GRID_SHAPE, bool)
                conf_path = label.parent / f"{frame.id}{CONFIDENCE_SUFFIX}"
                if min_confidence > 0 and conf_path.is_file():
                    invalid |= read_confidence(conf_path) < min_confidence
                write_bytes(vox_dst / f"{frame.id}.invalid", sk.pack_bits(invalid).tobytes())
                n_pseudo += 1
    if n_pseudo + n_kept == 0:
        raise MissingError("no pseudo-labels found for the frames of the prepared data", pred_root)
    return {"pseudo_labelled": n_pseudo, "ground_truth": n_kept, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m occ_core.engine.autolabel",
                                     description="Build a raw SemanticKITTI folder from B2S pseudo-labels.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-dataset", help="Pseudo-labels -> raw SemanticKITTI layout ('occ prepare kitti' reads it).")
    b.add_argument("--prepared", required=True, help="The prepared data the pseudo-labels were predicted on.")
    b.add_argument("--pseudo", required=True, help="Folder written by 'occ predict' on an autolabel run.")
    b.add_argument("--out", required=True, help="Output raw dataset folder.")
    b.add_argument("--min-confidence", type=float, default=0.0, help="Voxels below this confidence become invalid (ignored).")
    b.add_argument("--keep-labels", default=None,
                   help="label_split.json of a pre-training run: its 'labeled' frames keep their ground truth.")
    args = parser.parse_args(argv)
    try:
        keep: list[str] = []
        if args.keep_labels:
            keep = list(json.loads(Path(args.keep_labels).read_text()).get("labeled", []))
        summary = build_pseudo_dataset(args.prepared, args.pseudo, args.out, args.min_confidence, keep)
    except (OccError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}")
        return 2
    print(f"{summary['pseudo_labelled']} pseudo-labelled + {summary['ground_truth']} ground-truth frames -> {summary['out']}; "
          f"next: occ prepare kitti --root {summary['out']} --out PSEUDO_PREPARED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
