"""Trivial baselines on a prepared dataset's val split: all empty, and the per-voxel most frequent
training class (the prior of the scene layout, no image at all; occ_core.metrics.baselines).

    python bench/trivial_baselines.py --data quickstart/prepared [--json out.json]
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
    args = ap.parse_args()
    results = reference_scores(PreparedDataset(args.data), args.split)
    for name, r in results.items():
        print(f"{name:15s} IoU {r['iou']:6.2f}  mIoU {r['miou']:6.2f}  ({r['frames']} {args.split} frames)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
