"""Where a trained run's geometry goes wrong, beside the per-voxel prior, on a split:

* per z layer: true positives, false positives and false negatives of "occupied" (scored voxels only),
  for the run and for the per-voxel prior (a second ground layer shows as false positives one or two
  layers above the street);
* floating ground: voxels predicted as a ground class (the spec's classes named road, parking,
  sidewalk, other-ground, terrain, or any the dataset adds with --ground) more than 1 m above the
  ground level of the frame, counted over the whole grid, scored or not (what a picture shows), and
  how many of them lie in layers no target of the split labels;
* in view / out of view: the benchmark metric of the run and of the prior on the scored voxels inside the
  cameras' field of view (``fov_mask_1`` of the prepared folder, what ``occ eval --fov-only`` scores) and
  on those outside it (no image sees them: there a camera model can only guess the layout, like the prior).

    python bench/diagnose_run.py --run runs/baseline-tiny [--split val] [--checkpoint best]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

GROUND = ("road", "parking", "sidewalk", "other-ground", "terrain", "driveable_surface", "other_flat", "manmade")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--ground", default="", help="extra comma-separated ground class names")
    args = ap.parse_args()

    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.predict import iter_predictions
    from occ_core.engine.trainer import data_root, load_run_config
    from occ_core.metrics.baselines import per_voxel_prior
    from occ_core.metrics.evaluate import fov_mask
    from occ_core.metrics.ssc import SSCMetric

    cfg = load_run_config(args.run)
    data = PreparedDataset(data_root(cfg, args.run))
    spec = data.spec
    names = list(spec.classes.names)
    wanted = set(GROUND) | {g for g in args.ground.split(",") if g}
    ground = [i for i, n in enumerate(names) if n in wanted]
    prior = per_voxel_prior(data, cfg.data.train_split)
    Z = spec.grid.shape[2]
    dz = spec.grid.voxel_size[2]
    layers = {k: np.zeros((Z, 3), np.int64) for k in ("run", "prior")}
    labelled_layers = np.zeros(Z, bool)
    floating, floating_unlabelled, frames = 0, 0, 0
    preds = []
    views = {(key, side): SSCMetric.for_spec(spec) for key in ("run", "prior") for side in ("in view", "out of view")}
    fov: dict[str, np.ndarray] = {}
    for frame, pred, _ in iter_predictions(args.run, split=args.split, checkpoint=args.checkpoint, progress=True):
        gt = data.load_target(frame, 1)
        valid = gt != 255
        if frame.sequence not in fov:
            fov[frame.sequence] = fov_mask(data, frame.sequence, gt.shape)
        inside = fov[frame.sequence]
        for key, p in (("run", pred), ("prior", prior)):
            for side, keep in (("in view", inside), ("out of view", ~inside)):
                views[key, side].process(np.asarray(p, np.uint8), np.where(keep, gt, 255).astype(np.uint8))
        labelled_layers |= valid.any((0, 1))
        for key, p in (("run", pred), ("prior", prior)):
            po, go = (p > 0) & (p != 255) & valid, (gt > 0) & valid
            layers[key][:, 0] += (po & go).sum((0, 1))
            layers[key][:, 1] += (po & ~go).sum((0, 1))
            layers[key][:, 2] += (~po & go).sum((0, 1))
        g = np.isin(gt, ground)
        level = float(np.median(np.nonzero(g)[2])) if g.any() else 0.0
        preds.append((pred, level))
        frames += 1
    z = np.arange(Z)
    for pred, level in preds:
        high = np.isin(pred, ground) & (z > level + 1.0 / dz)[None, None, :]
        floating += int(high.sum())
        floating_unlabelled += int((high & ~labelled_layers[None, None, :]).sum())
    print(f"{args.run} ({args.split}, {frames} frames)")
    print(" z   run TP / FP / FN (thousands)     prior TP / FP / FN")
    for k in range(Z):
        r, p = layers["run"][k] / 1e3, layers["prior"][k] / 1e3
        if r.sum() + p.sum() > 0:
            print(f"{k:2d}  {r[0]:8.1f} {r[1]:8.1f} {r[2]:8.1f}     {p[0]:8.1f} {p[1]:8.1f} {p[2]:8.1f}")
    print(f"floating ground voxels per frame: {floating / max(frames, 1):.0f} "
          f"({floating_unlabelled / max(frames, 1):.0f} of them in layers no {args.split} target labels)")
    share = float(np.mean([m.mean() for m in fov.values()])) if fov else 0.0
    print(f"in view / out of view (the grid's share in view: {100 * share:.1f} %)")
    for side in ("in view", "out of view"):
        r, p = views["run", side].evaluate(), views["prior", side].evaluate()
        print(f"  {side:11s}  run IoU {r['iou']:6.2f} mIoU {r['miou']:6.2f}    prior IoU {p['iou']:6.2f} mIoU {p['miou']:6.2f}")


if __name__ == "__main__":
    main()
