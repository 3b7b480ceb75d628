"""Time and peak memory per frame of the on-device projection (CPU by default): the voxel centres through
every camera (``occ_core.geometry.cameras.project_points``, rounded in the crop as the benchmark loaders do)
and the depth proposal (``occ_core.models.lifting.DepthProposal``: every depth pixel back-projected and
scattered into the grid, dilation 1).

    python bench/bench_projection.py                 # both settings, 2 threads, 3 timed repeats
    python bench/bench_projection.py --only kitti --repeats 5 --threads 1
    python bench/bench_projection.py --stride 4      # the model's query grid (dataset grid / 4) instead

Settings (batch 1):

* ``kitti``: SemanticKITTI, 256 x 256 x 32 voxels of 0.2 m, one camera (image_2, the 1220 x 370 benchmark
  crop, sequence 00 intrinsics), network image = the crop (image_scale 1);
* ``surround``: an OpenOccupancy-like grid, 512 x 512 x 40 voxels of 0.2 m around the ego vehicle, six
  nuScenes-like cameras (1600 x 900, fx = 1266, yawed 0, +-55, +-110, 180 degrees, 1.5 m up) fed at
  image_scale 0.5 (800 x 450 network images; the projection is still rounded in the 1600 x 900 crop).

Depth maps are sparse (5 % of the pixels, 2-60 m); the proposal's cost does not depend on the
sparsity (every pixel is back-projected, so the op has no data-dependent shape).

Memory: each setting runs in a fresh subprocess; the peak is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
after the first (cold) run minus its value just before it (the inputs already built), i.e. the extra
resident memory the projection needed at its peak (torch's CPU tensors are not seen by tracemalloc).
With ``--device cuda``: ``torch.cuda.max_memory_allocated`` above the inputs instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = ("kitti", "surround")


def _yaw_about_up(T, deg: float):
    """``T`` followed by a rotation of the camera about its own vertical (y) axis by ``deg``."""
    import numpy as np

    a = math.radians(deg)
    R = np.eye(4)
    R[0, 0], R[0, 2], R[2, 0], R[2, 2] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
    return R @ T


def setting(name: str):
    """(grid shape, voxel size, origin, crop (W, H), image_scale, [K], [grid -> camera])."""
    import numpy as np

    if name == "kitti":
        from occ_core.data.formats import semantickitti as sk

        K = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])
        T = np.array([[0.0, -1.0, 0.0, -0.012], [0.0, 0.0, -1.0, -0.054], [1.0, 0.0, 0.0, -0.292], [0, 0, 0, 1.0]])
        return sk.GRID_SHAPE, (0.2,) * 3, sk.GRID_ORIGIN, sk.IMAGE_SIZE, 1.0, [K], [T]
    if name == "surround":
        K = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
        # ego frame x forward, y left, z up -> camera x right, y down, z forward, camera 1.5 m above the origin
        front = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 1.5], [1.0, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]])
        Ts = [_yaw_about_up(front, d) for d in (0.0, 55.0, -55.0, 180.0, 110.0, -110.0)]
        return (512, 512, 40), (0.2,) * 3, (-51.2, -51.2, -5.0), (1600, 900), 0.5, [K] * 6, Ts
    raise SystemExit(f"unknown setting {name!r} (known: {', '.join(SETTINGS)})")


def _child(args) -> None:
    import resource

    import numpy as np
    import torch

    from occ_core.data.loading.dataset import crop_to_image
    from occ_core.geometry.cameras import project_points, voxel_centres
    from occ_core.models.lifting import DepthProposal

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    shape, vs, origin, crop, scale, Ks, Ts = setting(args.child)
    s = int(args.stride)
    shape = tuple(n // s for n in shape)
    vs = tuple(v * s for v in vs)
    V = len(Ks)
    W, H = round(crop[0] * scale), round(crop[1] * scale)
    A = crop_to_image(scale, W, False)
    intr = torch.from_numpy(np.stack([A @ K for K in Ks]))[None].to(dev)
    g2c = torch.from_numpy(np.stack(Ts))[None].to(dev)
    c2i = torch.from_numpy(np.stack([A] * V))[None].to(dev)
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(1, V, 1, H, W, generator=g) * 58 + 2
    depth[torch.rand(1, V, 1, H, W, generator=g) > 0.05] = 0
    depth = depth.to(dev)
    centres = voxel_centres(shape, vs, origin, device=dev)  # a buffer of the lifting: built once, not per frame
    proposal = DepthProposal(shape, vs, origin, dilate=1)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def proj():
        return project_points(centres, g2c, intr, c2i, crop)

    def prop():
        return proposal(depth, intr, g2c)

    sync()
    if dev.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        pix, vis, _ = proj()
        occ = prop()
        sync()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = ((torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else (rss1 - rss0) / 1024)
    in_view = float(vis.any(1).float().mean())
    proposed = float(occ.float().mean())
    del pix, vis, occ

    times = {"project_points": [], "depth_proposal": [], "total": []}
    with torch.no_grad():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = proj()
            sync()
            t1 = time.perf_counter()
            occ = prop()
            sync()
            t2 = time.perf_counter()
            del out, occ
            times["project_points"].append(t1 - t0)
            times["depth_proposal"].append(t2 - t1)
            times["total"].append(t2 - t0)
    print(json.dumps({
        "setting": args.child, "grid": list(shape), "voxel_size": vs[0], "voxels": int(np.prod(shape)), "cameras": V,
        "crop": list(crop), "image": [W, H], "threads": torch.get_num_threads(), "device": str(dev),
        "median_ms": {k: 1000 * statistics.median(v) for k, v in times.items()},
        "best_ms": {k: 1000 * min(v) for k, v in times.items()},
        "peak_extra_mb": peak_mb, "in_view_fraction": in_view, "proposed_fraction": proposed,
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=SETTINGS, help="run one setting only")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after the cold one (median and best)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stride", type=int, default=1, help="project the dataset grid divided by this (the query grid)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print the raw JSON lines too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    for name in ([args.only] if args.only else SETTINGS):
        cmd = [sys.executable, __file__, "--child", name, "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--stride", str(args.stride), "--device", args.device]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OCC_NO_PROGRESS": "1"})
        if res.returncode:
            raise SystemExit(res.stderr[-3000:])
        r = json.loads(res.stdout.strip().splitlines()[-1])
        if args.json:
            print(json.dumps(r))
        m, b = r["median_ms"], r["best_ms"]
        gx, gy, gz = r["grid"]
        print(f"{r['setting']}: {gx}x{gy}x{gz} grid ({r['voxels']:,} voxels of {r['voxel_size']:g} m), "
              f"{r['cameras']} camera(s), crop {r['crop'][0]}x{r['crop'][1]} -> image {r['image'][0]}x{r['image'][1]}, "
              f"{r['device']}, {r['threads']} threads")
        print(f"  project_points {m['project_points']:8.1f} ms   depth proposal {m['depth_proposal']:8.1f} ms   "
              f"total {m['total']:8.1f} ms/frame (median of {args.repeats}; best {b['total']:.1f})")
        what = "max_memory_allocated" if r["device"].startswith("cuda") else "ru_maxrss"
        print(f"  peak memory above the inputs: {r['peak_extra_mb']:.0f} MB ({what}); "
              f"in view of a camera {100 * r['in_view_fraction']:.1f} % of the voxels, "
              f"proposed {100 * r['proposed_fraction']:.2f} %")


if __name__ == "__main__":
    main()
