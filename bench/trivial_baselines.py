"""Trivial baselines on a prepared dataset's val split: all empty, and the per-voxel most frequent
training class (the prior of the scene layout, no image at all).

    python bench/trivial_baselines.py --data quickstart/prepared [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def per_voxel_mode(data, split: str = "train") -> np.ndarray:
    """Most frequent class of every voxel over the labeled frames of ``split`` (ignored voxels skipped)."""
    frames = data.frames(split, labeled=True)
    if not frames:
        raise SystemExit(f"no labeled frames in split {split}")
    spec = data.spec
    counts = np.zeros((spec.grid.n_voxels, spec.n_classes), np.uint16)
    for f in frames:
        t = data.load_target(f).reshape(-1)
        ok = t != 255
        counts[np.flatnonzero(ok), t[ok]] += 1
    return counts.argmax(axis=1).astype(np.uint8).reshape(spec.grid.shape)


def main() -> None:
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.metrics.evaluate import evaluate_arrays
    from occ_core.metrics.ssc import spec_distance_bands

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = PreparedDataset(args.data)
    spec = data.spec
    names = list(spec.classes.names)
    val = data.frames(args.split, labeled=True)
    mode = per_voxel_mode(data)
    results = {}
    for name, pred in (("all-empty", np.zeros(spec.grid.shape, np.uint8)), ("per-voxel-mode", mode)):
        r = evaluate_arrays(((pred, data.load_target(f)) for f in val), n_classes=len(names), class_names=names,
                            distance_bands=spec_distance_bands(spec))
        results[name] = r
        print(f"{name:15s} IoU {r['iou']:6.2f}  mIoU {r['miou']:6.2f}  ({r['frames']} {args.split} frames)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
