"""Sparse 3D convolution: spconv (ConvAlgo.Native on CPU) vs the dense pure-torch twin, and the LiDAR methods.

    OMP_NUM_THREADS=1 python bench/bench_sparse_conv.py                      # the convolutions
    python bench/bench_sparse_conv.py --methods --data quickstart/prepared   # + tacocc / lidar step time

Convolutions: frame 00/000000 of ``../shared/data/semantickitti-mini`` (the velodyne scan voxelised at
0.2 m into the SemanticKITTI grid, about 12k occupied voxels; skipped when the folder is absent) and an
input ten times denser (the occupied set grown by random neighbours, multi-sweep nuScenes scale). For
each backend and layer (submanifold 3x3x3 16 -> 16, strided 3x3x3 / 2 16 -> 32) it prints forward +
backward time (median of ``--repeat``) and the peak resident memory above the process's memory before the
call, each (backend, input, layer) in a fresh process so peaks are their own.

``--methods``: ``bench/bench_train.py`` for ``tacocc`` and ``lidar`` ``tiny`` (step time, peak RSS) and one
CPU step of the ``paper`` presets (parameter count, step time, peak RSS) on ``--data``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MINI = HERE.parent.parent / "shared" / "data" / "semantickitti-mini"
LAYERS = {"subm3_16to16": dict(cin=16, cout=16, subm=True), "conv3s2_16to32": dict(cin=16, cout=32, subm=False)}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the value at start, sampled every millisecond by a thread."""

    def __enter__(self):
        self.base = _rss()
        self.peak = self.base
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def scan_voxels(densify: int, seed: int = 0):
    """(SparseVoxels of 16 random channels, occupied count) of frame 00/000000 at 0.2 m, ``densify`` x denser."""
    import numpy as np
    import torch

    from occ_core.data.formats import semantickitti as sk
    from occ_core.ops.sparse_conv import SparseVoxels

    spec = sk.dataset_spec()
    g = spec.grid
    pts = sk.read_scan(MINI / "dataset" / "sequences" / "00" / "velodyne" / "000000.bin")
    idx = np.floor((pts[:, :3] - np.asarray(g.origin)) / np.asarray(g.voxel_size)).astype(np.int64)
    ok = ((idx >= 0) & (idx < np.asarray(g.shape))).all(1)
    occ = np.zeros(g.shape, bool)
    occ[tuple(idx[ok].T)] = True
    n0 = int(occ.sum())
    if densify > 1:
        rng = np.random.default_rng(seed)
        want = n0 * densify
        grown = occ.copy()
        while grown.sum() < want:  # add random neighbours of the current set
            t = torch.from_numpy(grown)[None, None].float()
            ring = (torch.nn.functional.max_pool3d(t, 3, 1, 1)[0, 0].numpy() > 0) & ~grown
            cand = np.flatnonzero(ring)
            take = rng.choice(cand, size=min(len(cand), want - int(grown.sum())), replace=False)
            grown.reshape(-1)[take] = True
        occ = grown
    ind = torch.from_numpy(np.argwhere(occ)).int()
    ind = torch.cat([torch.zeros(len(ind), 1, dtype=torch.int32), ind], 1)
    feats = torch.randn(len(ind), 16, generator=torch.Generator().manual_seed(seed))
    return SparseVoxels(feats, ind, tuple(g.shape), 1), n0


def _child(args) -> None:
    import torch
    import warnings

    from occ_core.ops.sparse_conv import SparseConv3d

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    x, n0 = scan_voxels(args.densify)
    lay = LAYERS[args.layer]
    conv = SparseConv3d(lay["cin"], lay["cout"], 3, stride=1 if lay["subm"] else 2, padding=0 if lay["subm"] else 1,
                        subm=lay["subm"], backend=args.backend)
    times, peaks = [], []
    for r in range(args.repeat + 1):  # the first call warms up (spconv's kernels, allocator)
        f = x.features.clone().requires_grad_(True)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out = conv(x.replace(f))
            out.features.square().sum().backward()
            dt = time.perf_counter() - t0
        conv.weight.grad = None
        if r:
            times.append(dt)
            peaks.append(mem.mib)
    times.sort()
    print(json.dumps({"backend": args.backend, "layer": args.layer, "densify": args.densify, "active": len(x.features),
                      "scan_voxels": n0, "out_active": int(out.features.shape[0]), "fwd_bwd_s": times[len(times) // 2],
                      "peak_mib": max(peaks), "threads": torch.get_num_threads()}))


def run_child(argv: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--densities", default="1,10", help="input densities relative to the scan (comma-separated)")
    ap.add_argument("--methods", action="store_true", help="also bench_train.py for tacocc and lidar")
    ap.add_argument("--data", default="", help="prepared folder for --methods")
    ap.add_argument("--skip-paper", action="store_true", help="--methods without the paper-preset step")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="spconv", help=argparse.SUPPRESS)
    ap.add_argument("--layer", default="subm3_16to16", help=argparse.SUPPRESS)
    ap.add_argument("--densify", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    if not (MINI / "dataset" / "sequences" / "00" / "velodyne" / "000000.bin").is_file():
        print(f"skipped the convolutions: {MINI} not found")
    else:
        from occ_core.ops.sparse_conv import spconv_available

        backends = (["spconv"] if spconv_available() else []) + ["torch"]
        if "spconv" not in backends:
            print("spconv does not import here: the dense twin only")
        for d in [int(s) for s in args.densities.split(",") if s]:
            for layer in LAYERS:
                row = {}
                for b in backends:
                    row[b] = run_child(["--backend", b, "--layer", layer, "--densify", str(d), "--repeat", str(args.repeat)])
                r0 = next(iter(row.values()))
                parts = [f"{b} {r['fwd_bwd_s'] * 1000:.0f} ms, peak +{r['peak_mib']:.0f} MiB" for b, r in row.items()]
                print(f"{layer:15s} x{d:<3d} {r0['active']:7d} active -> {r0['out_active']:7d}: " + " | ".join(parts)
                      + f"  ({r0['threads']} thread(s))", flush=True)
    if args.methods:
        if not args.data:
            raise SystemExit("--methods needs --data PREPARED")
        train = [sys.executable, str(HERE / "bench_train.py"), "--data", args.data]
        runs = [("tacocc", "tiny", []), ("lidar", "tiny", [])]
        if not args.skip_paper:
            runs += [(m, "paper", ["--steps", "1", "--warmup", "0", "--infer", "1"]) for m in ("tacocc", "lidar")]
        for method, preset, extra in runs:
            res = subprocess.run([*train, "--method", method, "--preset", preset, *extra], capture_output=True, text=True)
            print(res.stdout.strip() if res.returncode == 0 else f"{method} {preset}: failed: {res.stderr[-800:]}",
                  flush=True)


if __name__ == "__main__":
    main()
