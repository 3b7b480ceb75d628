"""Benchmark of the SSC metric (occ_core.metrics.ssc.SSCMetric) at 256x256x32.

    python bench/bench_eval.py [--frames 100] [--baseline]

Prints single-threaded throughput (frames/s on one core) of ``SSCMetric.process`` with the
default distance bands, without and with a field-of-view mask, and the peak memory of runs over
10 and 100 frames (each in a fresh process: ``ru_maxrss`` and the tracemalloc peak) to show that
memory does not grow with the number of frames. ``--baseline`` also times a per-class-mask
implementation for comparison.

Inputs are synthetic with SemanticKITTI-like proportions (about 75 % empty, 10 % occupied over
19 classes, 15 % ignored) and a prediction that agrees with the target on ~70 % of the voxels.
Only the metric is timed; reading files is not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SHAPE = (256, 256, 32)


def make_frames(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        u = rng.random(SHAPE)
        target = np.zeros(SHAPE, np.uint8)
        occ = u < 0.10
        target[occ] = rng.integers(1, 20, int(occ.sum()))
        target[u > 0.85] = 255
        pred = np.where(target == 255, 0, target).astype(np.uint8)
        wrong = rng.random(SHAPE) < 0.3
        pred[wrong] = np.where(rng.random(int(wrong.sum())) < 0.7, 0, rng.integers(1, 20, int(wrong.sum())))
        fov = np.zeros(SHAPE, bool)  # a wedge, like the camera's field of view
        x = np.arange(256)[:, None]
        y = np.arange(256)[None, :]
        fov[np.abs(y - 128) < 0.6 * x + 4] = True
        frames.append((pred, target, fov))
    return frames


def per_class_mask_metric(frames) -> float:
    """The slow way: one boolean mask per class per frame. Returns the mIoU."""
    tp = np.zeros(20)
    fp = np.zeros(20)
    fn = np.zeros(20)
    for pred, target, _ in frames:
        valid = target != 255
        for c in range(20):
            p, t = (pred == c) & valid, (target == c) & valid
            tp[c] += np.sum(p & t)
            fp[c] += np.sum(p & ~t)
            fn[c] += np.sum(~p & t)
    return float((tp / np.maximum(tp + fp + fn, 1))[1:].mean())


def throughput(n_frames: int, use_mask: bool, distinct: int = 8) -> float:
    from occ_core.metrics.ssc import KITTI_DISTANCE_BANDS, SSCMetric

    frames = make_frames(distinct)
    metric = SSCMetric(distance_bands=KITTI_DISTANCE_BANDS)
    metric.process(*frames[0][:2])  # warm-up
    t0 = time.perf_counter()
    for i in range(n_frames):
        pred, target, fov = frames[i % distinct]
        metric.process(pred, target, fov if use_mask else None)
    return n_frames / (time.perf_counter() - t0)


def memory_child(n_frames: int) -> None:
    """Run in a fresh process: stream ``n_frames`` generated frames through the metric."""
    import resource
    import tracemalloc

    from occ_core.metrics.ssc import KITTI_DISTANCE_BANDS, SSCMetric

    base = make_frames(2)
    tracemalloc.start()
    metric = SSCMetric(distance_bands=KITTI_DISTANCE_BANDS)
    rng = np.random.default_rng(1)
    for i in range(n_frames):
        pred, target, fov = base[i % 2]
        pred = np.roll(pred, int(rng.integers(0, 256)), axis=0)  # a new array per frame, as when streaming
        metric.process(pred, target, fov)
        del pred
    _, peak = tracemalloc.get_traced_memory()
    metric.evaluate()
    print(json.dumps({"frames": n_frames, "tracemalloc_peak_mib": peak / 2**20,
                      "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100, help="frames per throughput run (default 100)")
    ap.add_argument("--baseline", action="store_true", help="also time a per-class-mask implementation")
    ap.add_argument("--_memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child is not None:
        memory_child(args._memory_child)
        return

    print(f"SSCMetric.process at {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, one thread, numpy {np.__version__}, "
          f"{args.frames} frames per run")
    for use_mask in (False, True):
        rate = max(throughput(args.frames, use_mask) for _ in range(3))
        label = "with fov mask" if use_mask else "no mask      "
        print(f"  {label}: {rate:7.1f} frames/s per core  ({1000 / rate:.2f} ms/frame, best of 3)")
    if args.baseline:
        frames = make_frames(3)
        t0 = time.perf_counter()
        per_class_mask_metric(frames)
        ms = (time.perf_counter() - t0) / len(frames) * 1000
        print(f"  per-class-mask baseline: {1000 / ms:7.1f} frames/s per core  ({ms:.1f} ms/frame)")

    print("peak memory streaming N frames through the metric (fresh process each):")
    for n in (10, 100):
        out = subprocess.run([sys.executable, __file__, "--_memory-child", str(n)], capture_output=True,
                             text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"  {n:4d} frames: tracemalloc peak {r['tracemalloc_peak_mib']:6.1f} MiB, "
              f"max RSS {r['maxrss_mib']:6.1f} MiB")


if __name__ == "__main__":
    main()
