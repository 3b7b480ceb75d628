"""Learning curves: val IoU / mIoU against training steps and against the number of training frames,
side by side with the all-empty and per-voxel-prior references computed in the same run.

    python bench/learning_curve.py --data quickstart/prepared --method baseline --frames 10,30,60 --steps 300

For each training-set size N (``data.max_frames=N``: the first N labeled training frames) a run of the
method's preset trains for ``--steps`` steps, validating every ``--val-every`` epochs; the per-voxel
prior is computed from the same N frames. Prints one row per validation (frames, step, IoU, mIoU, the
prior's IoU / mIoU and the margins) and writes them to ``--json``. Runs go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path


def curve(data_root: Path, method: str, preset: str, frames: int, steps: int, val_every: int, out: Path,
          overrides: list[str], minutes: float) -> list[dict]:
    from occ_core.data.loading.dataset import OccDataset
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import train
    from occ_core.metrics.baselines import per_voxel_prior, reference_scores

    data = PreparedDataset(data_root)
    cfg = build_config(method, preset, overrides=[f"data.root={data_root.resolve()}", f"data.max_frames={frames}",
                                                  f"val_every={val_every}", *overrides])
    train_frames = OccDataset(data, cfg.data.train_split, cfg.data, train=True).frames
    n = len(train_frames)
    epochs = max(1, math.ceil(steps * cfg.optim.batch_size / n))
    cfg = build_config(method, preset, overrides=[f"data.root={data_root.resolve()}", f"data.max_frames={frames}",
                                                  f"val_every={val_every}", f"optim.epochs={epochs}",
                                                  f"optim.milestones=[{max(1, int(epochs * 0.8))}]",
                                                  *([f"max_minutes={minutes}"] if minutes > 0 else []), *overrides])
    refs = reference_scores(data, cfg.data.val_split, per_voxel_prior(data, frames=train_frames))
    prior, empty = refs["per-voxel-prior"], refs["all-empty"]
    run = out / f"{method}-{preset}-{frames}f"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(cfg, run, progress=False)
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("type") == "val":
            rows.append({"frames": n, "step": r["step"], "epoch": r["epoch"], "iou": r["iou"], "miou": r["miou"],
                         "prior_iou": prior["iou"], "prior_miou": prior["miou"], "empty_iou": empty["iou"],
                         "empty_miou": empty["miou"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="prepared folder")
    ap.add_argument("--method", default="baseline")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--frames", default="10,30,60", help="comma-separated training-set sizes")
    ap.add_argument("--steps", type=int, default=300, help="training steps per size")
    ap.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    ap.add_argument("--minutes", type=float, default=0.0, help="also stop each run after this many minutes (0 = no)")
    ap.add_argument("--set", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("learning_curve_runs"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("OCC_NO_PROGRESS", "1")
    rows = []
    print(f"{'frames':>6} {'step':>6} {'IoU':>6} {'mIoU':>6} | prior {'IoU':>6} {'mIoU':>6} | margin {'IoU':>6} {'mIoU':>6}")
    for n in [int(x) for x in args.frames.split(",")]:
        t = time.perf_counter()
        for r in curve(args.data, args.method, args.preset, n, args.steps, args.val_every, args.out, args.set,
                       args.minutes):
            rows.append(r)
            print(f"{r['frames']:>6} {r['step']:>6} {r['iou']:6.2f} {r['miou']:6.2f} | prior {r['prior_iou']:6.2f} "
                  f"{r['prior_miou']:6.2f} | margin {r['iou'] - r['prior_iou']:+6.2f} {r['miou'] - r['prior_miou']:+6.2f}",
                  flush=True)
        print(f"# {n} frames: {time.perf_counter() - t:.0f} s (all-empty: IoU {rows[-1]['empty_iou']:.2f}, "
              f"mIoU {rows[-1]['empty_miou']:.2f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
