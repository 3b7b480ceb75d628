"""Benchmark occ_core.data.prepare.downsample.downsample_label on 256x256x32 frames, one thread.

    python bench/bench_downsample.py [--runs N] [--loop-runs N]

Prints the median milliseconds per frame for factors 2, 4 and 8 on two labels (a synthetic
street-like scene and a uniformly random label, the worst case), and for comparison the plain
per-block Python loop (the MonoScene rule): on the full frame for factor 8, and for factors 4 and
2 on a sub-volume, extrapolated to the frame by the number of blocks. Each timed result is
checked against the loop on the sub-volume.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from occ_core.data.prepare.downsample import downsample_label  # noqa: E402

SHAPE = (256, 256, 32)


def loop_downsample(label: np.ndarray, ds: int) -> np.ndarray:
    """The per-block loop of MonoScene's ``_downsample_label`` (for timing and checking)."""
    X, Y, Z = label.shape
    out = np.zeros((X // ds, Y // ds, Z // ds), dtype=np.uint8)
    empty_t = 0.95 * ds * ds * ds
    for i in range(X // ds):
        for j in range(Y // ds):
            for k in range(Z // ds):
                s = label[i * ds : (i + 1) * ds, j * ds : (j + 1) * ds, k * ds : (k + 1) * ds]
                s = s.flatten()
                z0 = (s == 0).sum()
                z255 = (s == 255).sum()
                if z0 + z255 > empty_t:
                    out[i, j, k] = 0 if z0 > z255 else 255
                else:
                    s = s[(s > 0) & (s < 255)]
                    out[i, j, k] = np.argmax(np.bincount(s))
    return out


def street_scene(seed: int = 0) -> np.ndarray:
    """A synthetic SemanticKITTI-like target: mostly empty air, an uneven ground layer of road /
    sidewalk / terrain / parking, buildings and fences along the sides, vegetation with ragged
    surfaces, cars, poles and trunks, large unobserved (255) regions and scattered 255 voxels."""
    rng = np.random.default_rng(seed)
    X, Y, Z = SHAPE
    lab = np.zeros(SHAPE, np.uint8)
    x = np.arange(X)[:, None]
    y = np.arange(Y)[None, :]
    ground_h = (6 + 1.5 * np.sin(x / 37.0) + np.cos(y / 23.0)).astype(int)  # [X, Y] top z
    surface = np.full((X, Y), 17, np.uint8)  # terrain
    surface[:, 100:156] = 9  # road
    surface[:, 90:100] = 11  # sidewalk
    surface[:, 156:168] = 11
    surface[40:90, 60:90] = 10  # parking
    zz = np.arange(Z)[None, None, :]
    lab[zz < ground_h[:, :, None]] = np.broadcast_to(surface[:, :, None], SHAPE)[
        zz < ground_h[:, :, None]
    ]
    for _ in range(6):  # buildings along both sides
        x0 = int(rng.integers(0, X - 40))
        y0 = int(rng.choice([int(rng.integers(0, 50)), int(rng.integers(180, Y - 40))]))
        h = int(rng.integers(18, Z))
        lab[x0 : x0 + int(rng.integers(20, 40)), y0 : y0 + int(rng.integers(15, 40)), 5:h] = 13
    lab[:, 88:90, 6:10] = 14  # fences
    for _ in range(25):  # vegetation blobs with ragged surfaces
        cx, cy = int(rng.integers(0, X)), int(rng.integers(0, Y))
        r = int(rng.integers(4, 12))
        sl = (slice(max(cx - r, 0), cx + r), slice(max(cy - r, 0), cy + r), slice(5, 5 + r))
        blob = rng.random(lab[sl].shape) < 0.7
        lab[sl][blob] = 15
    for _ in range(30):  # cars on the road
        cx, cy = int(rng.integers(0, X - 20)), int(rng.integers(100, 148))
        lab[cx : cx + 20, cy : cy + 9, 6:14] = 1
    for _ in range(40):  # poles and trunks
        cx, cy = int(rng.integers(0, X - 1)), int(rng.integers(0, Y - 1))
        lab[cx : cx + 1, cy : cy + 2, 5:int(rng.integers(12, 28))] = int(rng.choice([18, 16]))
    lab[:, :, :2][rng.random((X, Y, 2)) < 0.5] = 255  # under the ground: unobserved
    for _ in range(12):  # occlusion shadows behind objects
        x0, y0 = int(rng.integers(0, X - 60)), int(rng.integers(0, Y - 60))
        region = lab[x0 : x0 + int(rng.integers(20, 60)), y0 : y0 + int(rng.integers(20, 60))]
        region[region == 0] = 255
    far = (x[:, :, None] ** 2 + (y[:, :, None] - 128) ** 2 > 240**2) & (lab == 0)
    lab[far] = 255  # outside the range of the scanner
    lab[rng.random(SHAPE) < 0.01] = 255  # scattered unobserved voxels
    return lab


def median_ms(fn, runs: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50, help="timed runs per factor (median)")
    ap.add_argument("--loop-runs", type=int, default=3, help="timed runs of the Python loop")
    args = ap.parse_args(argv)
    labels = {
        "street scene": street_scene(0),
        "uniform random": np.random.default_rng(1).integers(0, 256, SHAPE, dtype=np.uint8),
    }
    print(
        f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"frame {SHAPE}, median of {args.runs} runs, 1 thread"
    )
    scene = labels["street scene"]
    print(
        f"street scene: {np.mean(scene == 0):.1%} empty, {np.mean(scene == 255):.1%} ignore, "
        f"{len(np.unique(scene))} distinct values"
    )
    sub = (slice(0, 64), slice(64, 128), slice(0, 32))  # 1/16 of the frame
    for name, lab in labels.items():
        for factor in (2, 4, 8):
            got = downsample_label(lab[sub], factor)
            assert np.array_equal(got, loop_downsample(lab[sub], factor)), (name, factor)
            ms = median_ms(lambda: downsample_label(lab, factor), args.runs)
            print(f"  {name:15s} factor {factor}: {ms:7.2f} ms/frame (vectorised)")
    print("per-block Python loop, for comparison:")
    for name, lab in labels.items():
        ms8 = median_ms(lambda: loop_downsample(lab, 8), args.loop_runs)
        print(f"  {name:15s} factor 8: {ms8:9.1f} ms/frame (full frame)")
        for factor in (4, 2):
            part = lab[sub]
            ms = median_ms(lambda: loop_downsample(part, factor), args.loop_runs)
            scale = lab.size / part.size
            print(
                f"  {name:15s} factor {factor}: {ms * scale:9.1f} ms/frame "
                f"(extrapolated x{scale:g} from a {'x'.join(map(str, part.shape))} sub-volume)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
