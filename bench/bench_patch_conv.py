"""Forward + backward time of the patch convolutions (occ_core/ops/patch_conv.py) and of the depth volume's
folded paint (occ_core.models.depth_volume.fold_painted) against the dense ops they replace, at the shapes
of the tiny preset on a SemanticKITTI-sized grid (1:2 grid 128 x 128 x 16, network image 372 x 112).

    python bench/bench_patch_conv.py [--threads 2] [--repeat 5]

Prints one line per op: milliseconds per forward + backward, dense reference vs replacement.
"""

from __future__ import annotations

import argparse
import time


def _time(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from occ_core.models.depth_volume import fold_painted, paint_voxels
    from occ_core.ops.patch_conv import patch_conv3d

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    cases = [("head Conv3d(16, 20, 1) on 128x128x16", 16, 20, 1, (128, 128, 16)),
             ("fold Conv3d(32, 32, 1) on 64x64x8", 32, 32, 1, (64, 64, 8)),
             ("fold Conv3d(3, 32, 2, stride 2) on 128x128x16", 3, 32, 2, (128, 128, 16))]
    for name, c_in, c_out, k, shape in cases:
        x = torch.randn(1, c_in, *shape, generator=g, requires_grad=True)
        w = torch.randn(c_out, c_in, k, k, k, generator=g, requires_grad=True)
        b = torch.randn(c_out, generator=g, requires_grad=True)
        grad = torch.randn(1, c_out, *(s // k for s in shape), generator=g)
        dense = _time(lambda: F.conv3d(x, w, b, stride=k).backward(grad), args.repeat)
        patch = _time(lambda: patch_conv3d(x, w, b).backward(grad), args.repeat)
        print(f"{name:48s} F.conv3d {dense:7.1f} ms   patch_conv3d {patch:7.1f} ms")
    grid, (H, W), C = (128, 128, 16), (112, 372), 32
    n = grid[0] * grid[1] * grid[2]
    values = torch.randn(1, 1, C, H, W, generator=g, requires_grad=True)
    flat = torch.randint(0, n, (1, H * W), generator=g)
    flat[:, ::3] = n  # a third of the pixels without depth
    w = torch.randn(32, C, 2, 2, 2, generator=g, requires_grad=True)
    grad = torch.randn(1, 32, 64, 64, 8, generator=g)
    dense = _time(lambda: F.conv3d(paint_voxels(values, flat, n).view(1, C, *grid), w, stride=2).backward(grad), args.repeat)
    sparse = _time(lambda: fold_painted(values, flat, grid, w).backward(grad), args.repeat)
    print(f"{'paint fold Conv3d(32, 32, 2, stride 2), 41.7k px':48s} dense    {dense:7.1f} ms   fold_painted {sparse:7.1f} ms")


if __name__ == "__main__":
    main()
