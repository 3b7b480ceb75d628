"""Benchmark of the torch Gaussian rasterizer on CPU: a full SemanticKITTI-like frame.

    python bench/bench_raster.py [--threads 2] [--repeats 3] [--channels 20] [--tile-size 8]
                                 [--chunk-pairs 4194304] [--view sensor|bev|elevated] [--json]

Builds a synthetic 256×256×32 frame that looks like a street (two-voxel-thick ground of road,
sidewalks and terrain; building walls and fences along both sides; parked cars; trees; poles),
turns *every occupied voxel* into a Gaussian (σ = 0.5 voxel, soft 20-class probabilities as
features, occupancy probability ~0.9 as opacity, all requiring grad), and renders it into the
KITTI image_2 camera at 1220×370 (sequence 00 calibration), then backpropagates a random
cotangent through features, depth and alpha.

Each measurement runs in a fresh process (so the peak RSS is that of one render) and prints:
forward time, backward time, their sum (best of ``--repeats``), the peak resident memory of the
process (``ru_maxrss``) and the same peak minus the RSS before the first render (the renderer's
own footprint: tensors, allocator caches).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = (256, 256, 32)


def street_scene(seed: int = 0):
    """Labels [256, 256, 32] (uint8, 0 = empty) of a synthetic street."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X, Y, Z = SHAPE
    lab = np.zeros(SHAPE, np.uint8)
    y = np.arange(Y)
    g = 2  # ground at z index 1-3 (about 1.7 m under the sensor, which is at z = 0)
    road = (y > 108) & (y < 148)
    side = ((y >= 96) & (y <= 108)) | ((y >= 148) & (y <= 160))
    lab[:, road, g - 1:g + 1] = 9  # road
    lab[:, side, g:g + 2] = 11  # sidewalk (a kerb higher)
    lab[:, (y < 96) | (y > 160), g - 1:g + 1] = 17  # terrain
    # building walls (2 voxels thick) with gaps, fences
    for yy, cls in ((84, 13), (170, 13)):
        for x0 in range(0, X, 60):
            x1 = min(X, x0 + 45 + int(rng.integers(0, 10)))
            lab[x0:x1, yy:yy + 2, g:Z] = cls
    lab[:, 92:93, g + 1:g + 7] = 14
    lab[:, 163:164, g + 1:g + 7] = 14
    # parked and driving cars (solid boxes 4.2 x 1.8 x 1.5 m)
    for x0 in range(8, X - 25, 28):
        for yc in (112, 142) if x0 % 56 == 8 else (116,):
            lab[x0:x0 + 21, yc - 4:yc + 5, g + 1:g + 9] = 1
    # trees: trunks and crowns, poles with signs
    for x0 in range(15, X - 10, 40):
        for yc in (100, 156):
            lab[x0:x0 + 2, yc:yc + 2, g + 1:g + 12] = 16
            cx, cy, cz = x0 + 1, yc + 1, g + 17
            xx, yy_, zz = np.ogrid[:X, :Y, :Z]
            crown = (xx - cx) ** 2 + (yy_ - cy) ** 2 + ((zz - cz) * 1.5) ** 2 <= 36
            lab[crown & (lab == 0)] = 15
    for x0 in range(30, X, 70):
        lab[x0, 104, g + 1:g + 20] = 18
        lab[x0, 103:106, g + 16:g + 19] = 19
    return lab


def make_inputs(n_classes: int, seed: int = 0):
    import numpy as np
    import torch

    from occ_core.data.formats.semantickitti import GRID_ORIGIN, VOXEL_SIZE

    lab = street_scene(seed)
    idx = np.nonzero(lab.reshape(-1))[0]
    xi, yi, zi = np.unravel_index(idx, SHAPE)
    means = torch.from_numpy(np.stack([xi, yi, zi], 1) + 0.5).float() * VOXEL_SIZE + torch.tensor(GRID_ORIGIN)
    n = len(idx)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, n_classes, generator=g)
    logits[torch.arange(n), torch.from_numpy(lab.reshape(-1)[idx].astype(np.int64)) % n_classes] += 4.0
    feats = torch.softmax(logits, 1)
    opac = 0.8 + 0.19 * torch.rand(n, generator=g)
    scales = torch.full((n, 3), 0.5 * VOXEL_SIZE)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    return means, scales, quats, opac, feats


def camera(view: str):
    import numpy as np

    from occ_core.render.cameras import bev_camera, elevated_camera, sensor_camera

    if view == "sensor":
        K = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])
        Tr = np.array([[0.0, -1.0, 0.0, -0.012], [0.0, 0.0, -1.0, -0.054], [1.0, 0.0, 0.0, -0.292]])
        return sensor_camera(K, Tr, (1220, 370))
    if view == "bev":
        return bev_camera()
    return elevated_camera(image_size=(1220, 370))


def run_once(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from occ_core.ops.gaussian_raster import rasterize_gaussians

    means, scales, quats, opac, feats = make_inputs(args.channels)
    cam = camera(args.view)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fwd, bwd, cpu = [], [], []
    for _ in range(args.repeats):
        inputs = [t.clone().requires_grad_(True) for t in (means, scales, quats, opac, feats)]
        t0, c0 = time.perf_counter(), time.process_time()
        out = rasterize_gaussians(*inputs, **cam.raster_args(), backend="torch", tile_size=args.tile_size,
                                  chunk_pairs=args.chunk_pairs)
        t1, c1 = time.perf_counter(), time.process_time()
        cot = [torch.randn_like(o) for o in out]
        t2, c2 = time.perf_counter(), time.process_time()
        torch.autograd.backward(out, cot)
        t3, c3 = time.perf_counter(), time.process_time()
        fwd.append(t1 - t0)
        bwd.append(t3 - t2)
        cpu.append((c1 - c0) + (c3 - c2))
        covered = float((out[2] > 0.5).float().mean())
        del out, cot, inputs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    best = min(range(len(fwd)), key=lambda i: fwd[i] + bwd[i])
    return {
        "gaussians": int(means.shape[0]),
        "view": args.view,
        "image": [cam.width, cam.height],
        "channels": args.channels,
        "threads": args.threads,
        "tile_size": args.tile_size,
        "chunk_pairs": args.chunk_pairs,
        "forward_s": round(fwd[best], 3),
        "backward_s": round(bwd[best], 3),
        "total_s": round(fwd[best] + bwd[best], 3),
        "total_cpu_s": round(cpu[best], 3),
        "all_totals_s": [round(a + b, 3) for a, b in zip(fwd, bwd)],
        "peak_rss_mb": round(peak),
        "peak_rss_above_start_mb": round(peak - rss0),
        "pixels_alpha_gt_0.5": round(covered, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--channels", type=int, default=20)
    ap.add_argument("--tile-size", type=int, default=8)
    ap.add_argument("--chunk-pairs", type=int, default=1 << 22)
    ap.add_argument("--view", choices=["sensor", "bev", "elevated"], default="sensor")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_once(args)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--child"] + sys.argv[1:]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(res))
        return
    print(f"torch backend, CPU, {res['threads']} threads: {res['gaussians']:,} Gaussians -> {res['view']} view "
          f"{res['image'][0]}x{res['image'][1]}, {res['channels']} channels (+ depth, alpha), tile {res['tile_size']}")
    print(f"  forward  {res['forward_s']:.3f} s   backward {res['backward_s']:.3f} s   total {res['total_s']:.3f} s "
          f"(best of {len(res['all_totals_s'])}: {res['all_totals_s']}); CPU time of that run {res['total_cpu_s']:.3f} s")
    print(f"  peak RSS {res['peak_rss_mb']} MB ({res['peak_rss_above_start_mb']} MB above the process before rendering)")
    print(f"  pixels with alpha > 0.5: {100 * res['pixels_alpha_gt_0.5']:.1f} %")


if __name__ == "__main__":
    main()
