"""Time per frame and peak memory of `occ prepare kitti`.

    python bench/bench_prepare.py                      # builds realistic raw frames in a temp folder
    python bench/bench_prepare.py --root RAW --sequences 00   # or measure on a real raw dataset

Each run happens in a fresh subprocess (one worker, one core) so that peak RSS is its own. Memory
must be flat in the number of frames: the driver holds only frame records, frames are processed one
at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OCC_NO_PROGRESS", "1")


def _scene_labels(rng, occ_fraction: float = 0.12):
    """A label grid shaped like a driving scene: ground layer, walls, objects, unobserved regions."""
    import numpy as np

    lab = np.zeros((256, 256, 32), np.uint16)
    lab[:, :, 0:2] = 40  # road
    lab[:, :40, 0:2] = 48  # sidewalk
    lab[:, 216:, 0:2] = 72  # terrain
    lab[:, :20, 2:20] = 50  # building
    lab[:, 230:, 2:14] = 70  # vegetation
    for _ in range(12):  # cars
        x, y = rng.integers(0, 240), rng.integers(60, 200)
        lab[x:x + 20, y:y + 9, 2:9] = 10
    for _ in range(20):  # poles and trunks
        x, y = rng.integers(0, 254), rng.integers(20, 60)
        lab[x:x + 1, y:y + 1, 2:28] = rng.choice([80, 71])
    invalid = rng.random((256, 256, 32)) < 0.02
    invalid[:, :10, :] = True
    return lab, invalid


def make_raw(root: Path, frames: int, seed: int = 0) -> None:
    import numpy as np

    from occ_core.data.formats import semantickitti as sk

    rng = np.random.default_rng(seed)
    d = root / "dataset" / "sequences" / "08"
    K = np.array([[718.856, 0, 607.1928, 0], [0, 718.856, 185.2157, 0], [0, 0, 1, 0]], float)
    Tr = np.array([[0, -1, 0, -0.012], [0, 0, -1, -0.054], [1, 0, 0, -0.292]], float)
    sk.write_calib(d / "calib.txt", {"P0": K, "P1": K, "P2": K, "P3": K, "Tr": Tr})
    n = 5 * frames
    sk.write_poses(d / "poses.txt", np.tile(np.eye(4), (n, 1, 1)))
    (d / "times.txt").write_text("".join(f"{0.1 * i}\n" for i in range(n)))
    for i in range(frames):
        fid = f"{5 * i:06d}"
        lab, invalid = _scene_labels(rng)
        sk.write_voxel_label(d / "voxels" / f"{fid}.label", lab)
        sk.write_voxel_bits(d / "voxels" / f"{fid}.invalid", invalid)
        sk.write_voxel_bits(d / "voxels" / f"{fid}.bin", (lab > 0) & (rng.random(lab.shape) < 0.1))
        pts = np.column_stack([rng.uniform(-80, 80, (120_000, 2)), rng.uniform(-2, 2, 120_000),
                               rng.uniform(0, 1, 120_000)]).astype(np.float32)
        sk.write_scan(d / "velodyne" / f"{fid}.bin", pts)


def _child(root: str, out: str, sequences: str | None) -> None:
    import resource

    from occ_core.data.prepare.pipeline import prepare_kitti

    t0 = time.perf_counter()
    summary = prepare_kitti(root, out, sequences=sequences.split(",") if sequences else None, progress=False)
    total = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": summary["written"], "seconds": total, "peak_rss_mb": rss_mb}))


def run(root: Path, out: Path, sequences: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(root), str(out), sequences or ""]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"prepare failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="raw dataset to measure (default: generated frames)")
    ap.add_argument("--sequences", default=None)
    ap.add_argument("--frames", type=int, nargs=2, default=[4, 16], help="two frame counts (generated data)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.child[2] or None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.root is not None:
            r = run(args.root, tmp / "out", args.sequences)
            print(f"{r['frames']} frames: {1000 * r['seconds'] / max(r['frames'], 1):.0f} ms/frame "
                  f"(incl. per-sequence projections), peak RSS {r['peak_rss_mb']:.0f} MB")
            return
        for n in args.frames:
            make_raw(tmp / f"raw{n}", n)
            r = run(tmp / f"raw{n}", tmp / f"out{n}", None)
            print(f"{n:4d} frames: {r['seconds']:.2f} s total, {1000 * r['seconds'] / n:.0f} ms/frame "
                  f"(incl. per-sequence projections), peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
