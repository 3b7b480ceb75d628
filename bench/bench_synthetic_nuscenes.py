"""Generation time per sample of the synthetic surround-view dataset (``occ prepare synthetic --layout nuscenes``).

    python bench/bench_synthetic_nuscenes.py --out /tmp/nus-bench --samples 4 --scenes scene-0061
    python bench/bench_synthetic_nuscenes.py --out /tmp/nus-bench --image-size 200x113

Prints the seconds per sample (six camera renders, the 32-beam sweep, the Occ3D grid and its masks), the
scene build included in the first sample, and the bytes written per sample.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenes", default="scene-0061")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--image-size", default="400x225")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from occ_core.data.synthetic import nuscenes as N

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    scenes = args.scenes.split(",")
    _, _, size = N._check_args(scenes, args.samples, args.seed, 1, args.image_size)
    t0 = time.perf_counter()
    N._scene(args.seed, scenes[0], args.samples)
    build = time.perf_counter() - t0
    per = []
    for name in scenes:
        for i in range(args.samples):
            t = time.perf_counter()
            N.write_sample(out, args.seed, name, args.samples, i, size)
            per.append(time.perf_counter() - t)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    n = len(per)
    print(f"synthetic nuScenes {size[0]}x{size[1]}, {n} samples: {sum(per) / n:.2f} s/sample "
          f"(min {min(per):.2f}, max {max(per):.2f}; scene build {build:.2f} s once), "
          f"{total / n / 1e6:.2f} MB/sample, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
