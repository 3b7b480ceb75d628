"""SAM automatic mask generation time per image (occ prepare masks), on CPU by default.

Random weights give the time honestly: the image encoder, the decoding of every grid point's prompt and
the mask upsampling run whatever the weights; only how many masks survive the thresholds (with random
weights: none at the official ones) changes the cheap filtering and NMS after them. The image is resized
to 1024 on its long side, as SAM does (a 1241 x 376 KITTI / synthetic image becomes 1024 x 310,
zero-padded to 1024 x 1024).

    OMP_NUM_THREADS=1 nice -n 10 python bench/bench_sam.py --model vit_b --threads 1 --batches 2

times the encoder once and ``--batches`` of the points_per_side^2 / points_per_batch prompt batches (each
batch: prompt encoder, mask decoder, upsampling to the image, IoU / stability filtering, boxes); the
per-image total is the encoder plus the mean batch time times the number of batches (all of them with
``--batches 0``). Every batch does the same work with random weights, so the extrapolation is exact up to
timing noise; it says so in its output.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--width", type=int, default=1241, help="camera image width (default: KITTI / synthetic)")
    ap.add_argument("--height", type=int, default=376)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=2, help="prompt batches timed (0: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from occ_core.sam import build_sam
    from occ_core.sam.generator import AutomaticMaskGenerator

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sam = build_sam(args.model).to(args.device)
    gen = AutomaticMaskGenerator(sam, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch)
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 256, (args.height // 8 + 1, args.width // 8 + 1, 3)),
                    np.ones((8, 8, 1)))[:args.height, :args.width].astype(np.uint8)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    print(f"SAM {args.model}, {args.width}x{args.height} image (encoder input {sam.image_encoder.img_size}), "
          f"{args.points_per_side ** 2} prompts in batches of {args.points_per_batch}, device {args.device}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        gen.predictor.set_image(image)
        sync()
        enc = time.perf_counter() - t0
        print(f"  image encoder        {enc:8.2f} s", flush=True)
        size = image.shape[:2]
        points = gen.point_grids[0] * np.array(size)[None, ::-1]
        n = args.points_per_batch
        n_batches = math.ceil(len(points) / n)
        todo = n_batches if args.batches <= 0 else min(args.batches, n_batches)
        times, kept = [], 0
        for b in range(todo):
            sync()
            t = time.perf_counter()
            data = gen._process_batch(points[b * n:(b + 1) * n], size, [0, 0, size[1], size[0]], size)
            sync()
            times.append(time.perf_counter() - t)
            kept += len(data)
            print(f"  prompt batch {b + 1}/{n_batches}   {times[-1]:8.2f} s", flush=True)
    per_batch = float(np.mean(times))
    total = enc + per_batch * n_batches
    how = "measured" if todo == n_batches else f"extrapolated from {todo} of {n_batches} batches"
    print(f"  prompts + masks      {per_batch * n_batches:8.2f} s  ({n_batches} batches x {per_batch:.2f} s, {how})")
    print(f"  total per image      {total:8.2f} s  (masks kept with random weights: {kept})")


if __name__ == "__main__":
    main()
