"""Trivial baselines on a prepared dataset's val split: all empty, and the per-voxel most frequent
training class (the prior of the scene layout, no image at all; occ_core.metrics.baselines), plus
the class balance of the train and val splits (share of the labelled voxels, in %), so a change of
the synthetic generator shows what it did to the task.

    python bench/trivial_baselines.py --data quickstart/prepared [--json out.json] [--no-balance]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.metrics.baselines import reference_scores

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-balance", action="store_true", help="skip the class-balance table")
    args = ap.parse_args()
    data = PreparedDataset(args.data)
    results = reference_scores(data, args.split)
    for name, r in results.items():
        print(f"{name:15s} IoU {r['iou']:6.2f}  mIoU {r['miou']:6.2f}  ({r['frames']} {args.split} frames)")
    if not args.no_balance:
        results["class_balance"] = class_balance(data, ["train", args.split])
        names = data.spec.classes.names
        print(f"{'class':15s}" + "".join(f"{sp:>10s}" for sp in results["class_balance"]) + "   (% of labelled voxels)")
        for i, n in enumerate(names):
            print(f"{n:15s}" + "".join(f"{results['class_balance'][sp][n]:10.3f}" for sp in results["class_balance"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def class_balance(data, splits: list[str]) -> dict[str, dict[str, float]]:
    """Split -> class name -> % of the labelled (not ignored) voxels at 1:1."""
    import numpy as np

    from occ_core.data.spec import count_classes

    names = data.spec.classes.names
    out = {}
    for split in dict.fromkeys(splits):
        counts = np.zeros(len(names), np.int64)
        for frame in data.frames(split, labeled=True):
            counts += count_classes(data.load_target(frame, 1), len(names))
        total = max(int(counts.sum()), 1)
        out[split] = {n: 100.0 * int(c) / total for n, c in zip(names, counts)}
    return out


if __name__ == "__main__":
    main()
