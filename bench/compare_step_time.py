"""Training-step time of two checkouts of occ side by side (e.g. before and after a refactor).

    git worktree add /tmp/occ_old <commit>
    python bench/compare_step_time.py --old /tmp/occ_old --data PREPARED --method baseline --rounds 3

Each round runs ``bench/bench_train.py`` of the old checkout and then of this one (each in a fresh
process, the old one with ``PYTHONPATH`` set to its checkout), alternating, so that machine load
affects both the same way. ``PREPARED`` must be readable by both (a folder written by the old
``occ prepare``: the current code reads older manifests). Prints per-round s/step and the medians.
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


def run_tree(tree: Path, args, env_extra: dict[str, str]) -> dict:
    cmd = [sys.executable, str(tree / "bench" / "bench_train.py"), "--child", "--data", args.data, "--method", args.method,
           "--preset", args.preset, "--steps", str(args.steps), "--warmup", str(args.warmup), "--infer", "1",
           "--threads", str(args.threads), "--device", "cpu"]
    env = {**os.environ, "OCC_NO_PROGRESS": "1", **env_extra}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tree))
    if res.returncode:
        raise SystemExit(f"{tree}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="checkout of the other version (git worktree)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", default="baseline")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    old, new = [], []
    for r in range(args.rounds):
        o = run_tree(Path(args.old).resolve(), args, {"PYTHONPATH": str(Path(args.old).resolve())})
        n = run_tree(HERE, args, {"PYTHONPATH": str(HERE)})
        old.append(o["train_s_per_step"])
        new.append(n["train_s_per_step"])
        print(f"round {r + 1}: old {o['train_s_per_step']:.3f} s/step, new {n['train_s_per_step']:.3f} s/step "
              f"(peak RSS {o['peak_rss_gb']:.2f} / {n['peak_rss_gb']:.2f} GB)", flush=True)
    mo, mn = statistics.median(old), statistics.median(new)
    print(f"{args.method} {args.preset}, {args.threads} thread(s), {args.steps} steps x {args.rounds} rounds: "
          f"median old {mo:.3f} s/step, new {mn:.3f} s/step ({100 * (mn / mo - 1):+.1f} %)")


if __name__ == "__main__":
    main()
