"""``occ prepare occ3d``: time and peak memory per sample, and that memory stays flat in the number of samples.

    python bench/bench_prepare_occ3d.py --nuscenes /tmp/nus-bench --out /tmp/occ3d-bench

Prepares the dataset twice in fresh subprocesses, once restricted to its first scene and once whole, and
prints seconds per sample (tables loading excluded and included) and the peak RSS of each: a flat peak RSS
means frames are processed one at a time (nothing accumulates per sample).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys


def _child(args) -> None:
    import resource
    import time

    from occ_core.data.prepare import occ3d as P

    t0 = time.perf_counter()
    if args.first_scene:  # restrict the official splits to the first scene (name order) present in the tables
        orig = P.occ3d.splits
        with open(os.path.join(args.nuscenes, "v1.0-mini", "scene.json")) as f:
            keep = min(r["name"] for r in json.load(f))
        P.occ3d.splits = lambda v: {k: [n for n in orig(v)[k] if n == keep] for k in ("train", "val")}
    summary = P.prepare_occ3d(args.nuscenes, None, args.out, workers=1, progress=False, force=True)
    total = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"frames": summary["frames"], "seconds": total, "prepare_seconds": summary["seconds"],
                      "peak_rss_mb": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nuscenes", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first-scene", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    rows = []
    for first in (True, False):
        if os.path.exists(args.out):
            shutil.rmtree(args.out)
        cmd = [sys.executable, __file__, "--child", "--nuscenes", args.nuscenes, "--out", args.out]
        if first:
            cmd.append("--first-scene")
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    for r in rows:
        print(f"occ prepare occ3d: {r['frames']} samples, {r['prepare_seconds'] / r['frames']:.3f} s/sample "
              f"(whole run incl. imports and tables {r['seconds']:.1f} s), peak RSS {r['peak_rss_mb']:.0f} MB")
    a, b = rows
    if b["frames"] > a["frames"]:
        print(f"marginal time: {(b['seconds'] - a['seconds']) / (b['frames'] - a['frames']):.3f} s per extra sample "
              "(fixed costs: imports, tables, frequency count excluded)")
    print(f"peak RSS {rows[0]['frames']} -> {rows[1]['frames']} samples: {rows[0]['peak_rss_mb']:.0f} -> "
          f"{rows[1]['peak_rss_mb']:.0f} MB; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
