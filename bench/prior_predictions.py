"""Write the per-voxel prior (the most frequent training class of each voxel, no image) as a prediction
folder of the dataset's own format, so that `occ eval --pred` scores it with the benchmark's metric
(Occ3D's camera mask and RayIoU included) exactly as it scores a model:

    python bench/prior_predictions.py --data PREPARED --out prior_pred [--split val]
    occ eval --data PREPARED --split val --pred prior_pred
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="val")
    args = ap.parse_args()

    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.metrics.baselines import per_voxel_prior

    data = PreparedDataset(args.data)
    spec = data.spec
    prior = per_voxel_prior(data, "train")
    frames = data.frames(args.split, labeled=True)
    if spec.metric == "ssc":
        from occ_core.data.formats.submission import write_prediction

        inverse = spec.classes.inverse_lut()
        for f in frames:
            write_prediction(args.out, f.sequence, f.id, inverse[prior])
    else:
        from occ_core.data.formats.labels import write_prediction

        for f in frames:
            write_prediction(args.out, f.sequence, f.id, prior, spec)
    print(f"per-voxel prior of {len(frames)} {args.split} frames -> {args.out}")


if __name__ == "__main__":
    main()
