"""B2S experiment: semantic labels on a fraction of the training frames, binary occupancy on all of them.

Three ways to spend the same compute (wall-clock training budget ``--minutes`` each, or ``--steps`` training
steps each, which does not depend on the machine's load):

(a) ``scratch``:   b2s trained from scratch on the labelled frames only;
(b) ``pretrain``:  the binary module pre-trained on every training frame's binary occupancy
                   (``--pretrain-share`` of the budget), then fine-tuned on the labelled frames (the rest);
(c) ``autolabel``: b2s in auto-labelling mode (ground-truth binary occupancy as an input) trained on
                   the labelled frames, evaluated on the validation frames given their binary occupancy
                   (its IoU is 100 by construction: the geometry is the input; compare mIoU).

Every run validates only at its end (validation is not part of the budget). Prints IoU / mIoU of each
and writes ``OUT/b2s_experiment.json``::

    python bench/b2s_experiment.py --data data/prepared --minutes 30
    python bench/b2s_experiment.py --data data/prepared --steps 480 --seed 1    # equal steps, a cosine over each arm
    python bench/b2s_experiment.py --data /tmp/tiny_prepared --minutes 0.5 --out /tmp/b2s_exp   # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OCC_NO_PROGRESS", "1")


def _cfg(args, extra: list[str], epochs: int = 100000):
    """The arm's config: with --minutes an open-ended run the budget stops; with --steps ``epochs`` epochs
    (the schedule then spans the arm)."""
    from occ_core.engine.config import build_config

    sets = [f"data.root={Path(args.data).resolve()}", f"data.label_fraction={args.label_fraction}",
            f"data.label_seed={args.label_seed}", f"seed={args.seed}", f"optim.epochs={epochs}",
            f"optim.milestones=[{epochs}]", "val_every=0", *args.set, *extra]
    return build_config("b2s", args.preset, overrides=sets)


def _epochs(steps: float, frames: int, batch: int) -> int:
    """Whole epochs of ``frames`` training frames that come closest to ``steps`` steps (at least one)."""
    per_epoch = max(1, -(-frames // batch))
    return max(1, round(steps / per_epoch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="Prepared (synthetic) data folder with labelled train and val frames.")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="Training budget of each arm (wall-clock minutes).")
    budget.add_argument("--steps", type=int, help="Training budget of each arm in steps (rounded to whole epochs of the "
                                                  "arm's frames; (b) splits it by --pretrain-share).")
    parser.add_argument("--out", default="runs/b2s_experiment", help="Folder for the run folders and the JSON.")
    parser.add_argument("--label-fraction", type=float, default=0.1, help="Fraction of training frames with semantic labels.")
    parser.add_argument("--label-seed", type=int, default=0, help="Seed of the labelled-frame selection.")
    parser.add_argument("--pretrain-share", type=float, default=0.5, help="(b): share of the budget spent on binary pre-training.")
    parser.add_argument("--freeze-binary", action="store_true", help="(b): freeze the binary module when fine-tuning.")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="Extra config override for every arm (repeatable).")
    parser.add_argument("--arms", default="scratch,pretrain,autolabel", help="Comma-separated subset of the arms.")
    args = parser.parse_args(argv)

    from occ_core.engine.pretrain import pretrain_binary
    from occ_core.engine.trainer import train
    from occ_core.errors import OccError

    warnings.filterwarnings("ignore", message=".*no pretrained weights.*")
    out = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    results: dict[str, dict] = {}

    def keep(r: dict) -> dict:
        return {k: r[k] for k in ("iou", "miou", "precision", "recall", "per_class", "steps", "epochs_completed",
                                  "seconds", "frames") if k in r}

    from occ_core.data.loading.dataset import OccDataset
    from occ_core.engine.pretrain import binary_config, label_split

    cfg0 = binary_config(_cfg(args, []))
    split = label_split(OccDataset(cfg0.data.root, cfg0.data.train_split, cfg0.data, train=True, seed=cfg0.seed,
                                   labeled_only=False))
    n_lab, n_all = len(split["labeled"]), len(split["labeled"]) + len(split["binary_only"])
    bs = cfg0.optim.batch_size
    minutes = args.minutes or 0.0
    if args.steps:  # equal steps: epochs of each arm's own frames
        ep = {"scratch": _epochs(args.steps, n_lab, bs), "autolabel": _epochs(args.steps, n_lab, bs),
              "pre": _epochs(args.steps * args.pretrain_share, n_all, bs),
              "ft": _epochs(args.steps * (1.0 - args.pretrain_share), n_lab, bs)}
    else:
        ep = dict.fromkeys(("scratch", "autolabel", "pre", "ft"), 100000)

    try:
        if "scratch" in arms:
            cfg = dataclasses.replace(_cfg(args, [], ep["scratch"]), max_minutes=minutes)
            run = out / f"a-scratch-{stamp}"
            print(f"(a) scratch: {run}", flush=True)
            results["scratch"] = {"run": str(run), **keep(train(cfg, run, progress=False))}
        if "pretrain" in arms:
            pre_min = minutes * args.pretrain_share
            cfg = dataclasses.replace(_cfg(args, [], ep["pre"]), max_minutes=pre_min)
            pre_run = out / f"b-pretrain-{stamp}"
            print(f"(b) binary pre-training: {pre_run}", flush=True)
            pre = pretrain_binary(cfg, pre_run, progress=False)
            used = pre["train_seconds"] / 60.0  # validation is not counted (as in the other arms)
            ft_min = max(minutes - used, 0.01) if minutes else 0.0
            cfg = dataclasses.replace(_cfg(args, [f"model.freeze_binary={str(args.freeze_binary).lower()}"], ep["ft"]),
                                      max_minutes=ft_min)
            ft_run = out / f"b-finetune-{stamp}"
            left = f"{ft_min:.2f} min left" if minutes else f"{ep['ft']} epochs"
            print(f"(b) fine-tuning ({left}): {ft_run}", flush=True)
            ft = train(cfg, ft_run, progress=False, init_from=pre_run)
            results["pretrain"] = {"run": str(ft_run), "pretrain_run": str(pre_run),
                                   "pretrain": {k: v for k, v in pre.items()}, **keep(ft),
                                   "train_seconds_total": pre["train_seconds"] + ft["seconds"]}
        if "autolabel" in arms:
            cfg = dataclasses.replace(_cfg(args, ["model.mode=autolabel"], ep["autolabel"]), max_minutes=minutes)
            run = out / f"c-autolabel-{stamp}"
            print(f"(c) auto-labelling: {run}", flush=True)
            results["autolabel"] = {"run": str(run), **keep(train(cfg, run, progress=False))}
    except OccError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    summary = {
        "data": str(Path(args.data).resolve()), "minutes_per_arm": args.minutes, "steps_per_arm": args.steps,
        "epochs": ep if args.steps else None, "label_fraction": args.label_fraction,
        "label_seed": args.label_seed, "preset": args.preset, "overrides": args.set,
        "train_frames": split["n_labeled"] + split["n_binary_only"],
        "labelled_frames": split["labeled"],
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "b2s_experiment.json"
    path.write_text(json.dumps(summary, indent=2))
    budget = f"{args.minutes} min" if minutes else f"{args.steps} steps"
    print(f"\n{len(summary['labelled_frames'])} of {summary['train_frames']} training frames labelled; {budget} per arm")
    print(f"{'arm':<12}{'IoU %':>8}{'mIoU %':>9}{'steps':>8}")
    for name, r in results.items():
        steps = r.get("steps", 0) + (r.get("pretrain", {}).get("steps", 0) if name == "pretrain" else 0)
        print(f"{name:<12}{r['iou']:>8.2f}{r['miou']:>9.2f}{steps:>8}")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
