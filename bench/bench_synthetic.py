"""Time the synthetic dataset generator at its default size.

    python bench/bench_synthetic.py                 # default size, 2 workers, temporary folder
    python bench/bench_synthetic.py --workers 1 --frames 5 --out /tmp/syn

Prints the per-frame time (one frame = stereo pair + semantic/depth + LiDAR + voxel files) and the
total wall-clock time, which is what the README quickstart waits for.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from occ_core.data.synthetic import DEFAULT_FRAMES, DEFAULT_SEQUENCES, generate_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one, removed after)")
    ap.add_argument("--sequences", default=",".join(DEFAULT_SEQUENCES))
    ap.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.mkdtemp(prefix="occ-bench-synthetic-")
        out = Path(tmp)
    try:
        c0 = os.times()
        t0 = time.perf_counter()
        summary = generate_dataset(out, sequences=args.sequences.split(","), frames=args.frames, seed=args.seed,
                                   workers=args.workers, progress=False)
        total = time.perf_counter() - t0
        c1 = os.times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + (
            c1.children_system - c0.children_system)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    n = summary["frames_written"]
    print(f"sequences {args.sequences}  frames/seq {args.frames}  workers {args.workers}")
    print(f"frames written: {n}  skipped: {summary['frames_skipped']}  data: {size / 1e6:.0f} MB")
    print(f"CPU seconds per frame (all processes): {cpu / max(n, 1):.2f}")
    print(f"seconds per frame (one worker, wall): {summary['seconds_per_frame']:.2f}")
    print(f"wall-clock seconds per frame: {total / max(n, 1):.2f}")
    print(f"total seconds: {total:.1f}")


if __name__ == "__main__":
    main()
