"""CIGOcc's training cost beside ``baseline`` at equal presets (the paper's "without increasing training
costs"), and the paper preset's size.

    python bench/bench_cigocc.py --data PREPARED --rounds 3
    python bench/bench_cigocc.py --data PREPARED --rounds 1 --paper      # + the paper presets, one step each

Each measurement is ``bench/bench_train.py`` in a fresh process (its own peak RSS), the arms alternating
round by round so that machine load affects them alike: ``baseline``, ``cigocc`` stage 1 alone
(``model.stage=1``), ``cigocc`` stage 2 (the whole model, what a stage-2 step costs), and with SAM masks
in PREPARED/masks also ``cigocc`` stage 2 with the SAM loss. Prints per-round s/step and the medians with
the ratio to baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def bench(args, method: str, preset: str, sets: list[str], steps: int, warmup: int) -> dict:
    cmd = [sys.executable, str(HERE / "bench" / "bench_train.py"), "--child", "--data", args.data, "--method", method,
           "--preset", preset, "--steps", str(steps), "--warmup", str(warmup), "--infer", "1",
           "--threads", str(args.threads), "--device", args.device]
    for s in sets:
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OCC_NO_PROGRESS": "1"}, cwd=str(HERE))
    if res.returncode:
        raise SystemExit(f"{method} {preset} {sets}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="prepared folder")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--paper", action="store_true", help="also the paper presets of baseline and cigocc (one step)")
    args = ap.parse_args()
    has_masks = (Path(args.data) / "masks").is_dir()
    arms = {"baseline": ("baseline", []), "cigocc stage 1": ("cigocc", ["model.stage=1"]),
            "cigocc stage 2": ("cigocc", ["model.stage=2"])}
    if has_masks:
        arms["cigocc stage 2 + SAM loss"] = ("cigocc", ["model.stage=2", "model.sam.weight=1", "data.load_masks=true"])
    times: dict[str, list[float]] = {k: [] for k in arms}
    last: dict[str, dict] = {}
    for r in range(args.rounds):
        for name, (method, sets) in arms.items():
            res = bench(args, method, args.preset, sets, args.steps, args.warmup)
            times[name].append(res["train_s_per_step"])
            last[name] = res
            print(f"round {r + 1}: {name} {args.preset}: {res['train_s_per_step']:.3f} s/step, inference "
                  f"{res['infer_s_per_frame']:.3f} s/frame, peak RSS {res['peak_rss_gb']:.2f} GB, "
                  f"{res['params'] / 1e6:.2f} M parameters", flush=True)
    base = statistics.median(times["baseline"])
    print(f"\n{args.preset}, {args.threads} thread(s), {args.device}, {args.steps} steps x {args.rounds} rounds (medians):")
    for name, ts in times.items():
        m = statistics.median(ts)
        gpu = f", peak GPU {last[name]['peak_gpu_gb']:.2f} GB" if last[name].get("peak_gpu_gb") is not None else ""
        print(f"  {name:28s} {m:.3f} s/step  x{m / base:.2f} of baseline  peak RSS {last[name]['peak_rss_gb']:.2f} GB{gpu}  "
              f"{last[name]['params'] / 1e6:.2f} M parameters")
    if args.paper:
        print("\npaper presets (one step after one warm-up step):")
        for name, (method, sets) in arms.items():
            if method == "cigocc" and "model.stage=1" in sets:
                continue
            if method == "cigocc" and not any("sam" in s for s in sets):
                sets = sets + ["model.sam.weight=0"]  # the paper preset has the SAM loss on: needs masks
            res = bench(args, method, "paper", sets, 1, 1)
            gpu = f", peak GPU {res['peak_gpu_gb']:.2f} GB" if res.get("peak_gpu_gb") is not None else ""
            print(f"  {name:28s} {res['params'] / 1e6:.2f} M parameters, {res['train_s_per_step']:.1f} s/step, "
                  f"inference {res['infer_s_per_frame']:.1f} s/frame, peak RSS {res['peak_rss_gb']:.2f} GB{gpu}", flush=True)


if __name__ == "__main__":
    main()
