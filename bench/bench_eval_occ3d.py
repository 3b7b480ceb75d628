"""Benchmark of the Occ3D metrics at the Occ3D-nuScenes grid (200 x 200 x 16, 0.4 m) on one core.

Prints samples/s of ``Occ3DMetric.process`` (mIoU with the camera mask, the benchmark setting, and
without) and of ``RayIoUMetric.process`` (SparseOcc's RayIoU: 14,040 rays from each of 8 origins through
the prediction and the truth). The volumes are synthetic with Occ3D-like proportions (ground, boxes, free
elsewhere; the prediction is the truth with 10 % of the voxels changed). Rates are per CPU second of this
(single-threaded) process (``time.process_time``), so they hold on a shared machine; the wall-clock rate is
printed beside them::

    OMP_NUM_THREADS=1 python bench/bench_eval_occ3d.py [--samples 200] [--ray-samples 5]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def volumes(rng, n: int, grid):
    shape = grid.shape
    out = []
    for _ in range(n):
        gt = np.zeros(shape, np.uint8)  # 0 = free (prepared classes)
        gt[:, :, :3] = 12  # driveable surface band
        for _ in range(200):
            x, y = rng.integers(0, shape[0] - 6, 2)
            gt[x:x + 6, y:y + 6, 3:3 + int(rng.integers(2, 10))] = rng.integers(1, 18)
        pred = gt.copy()
        change = rng.random(shape) < 0.1
        pred[change] = rng.integers(0, 18, int(change.sum()))
        out.append((pred, gt, rng.random(shape) < 0.6))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--ray-samples", type=int, default=5)
    args = ap.parse_args()

    from occ_core.data.formats.occ3d import dataset_spec
    from occ_core.metrics.occ3d import Occ3DMetric
    from occ_core.metrics.rayiou import RayIoUMetric

    spec = dataset_spec()
    rng = np.random.default_rng(0)
    data = volumes(rng, min(args.samples, 20), spec.grid)
    for label, use_mask in (("mIoU, camera mask", True), ("mIoU, all voxels", False)):
        best, wall = float("inf"), float("inf")
        for _ in range(3):
            m = Occ3DMetric.for_spec(spec)
            t0, w0 = time.process_time(), time.perf_counter()
            for i in range(args.samples):
                pred, gt, mask = data[i % len(data)]
                m.process(pred, gt, mask if use_mask else None)
            best, wall = min(best, time.process_time() - t0), min(wall, time.perf_counter() - w0)
        print(f"Occ3DMetric.process ({label}): {args.samples / best:8.1f} samples/s per CPU second "
              f"({1000 * best / args.samples:.2f} ms/sample, best of 3, {args.samples} samples; wall clock "
              f"{args.samples / wall:.1f}/s)")
    ray = RayIoUMetric.for_spec(spec)
    origins = np.array([[0.94, 0.0, 1.84]]) + np.array([[4.0 * k, 0.3 * k, 0.0] for k in range(-4, 4)])
    t0, w0 = time.process_time(), time.perf_counter()
    for i in range(args.ray_samples):
        pred, gt, _ = data[i % len(data)]
        ray.process(pred, gt, origins)
    dt, wall = time.process_time() - t0, time.perf_counter() - w0
    r = ray.evaluate()
    print(f"RayIoUMetric.process (8 origins x 14040 rays, pred + truth): {args.ray_samples / dt:6.2f} samples/s per "
          f"CPU second ({dt / args.ray_samples:.2f} s/sample, {r['rays'] // args.ray_samples} rays with a true hit "
          f"per sample; wall clock {args.ray_samples / wall:.2f}/s)")
    print(f"numpy {np.__version__}")


if __name__ == "__main__":
    main()
