"""Training-step time, peak memory, parameter count and inference latency of a method and preset.

    python bench/bench_train.py --data quickstart/prepared --method vpocc --preset tiny
    python bench/bench_train.py --data quickstart/prepared --method vpocc --preset paper --steps 1

Each (method, preset) runs in a fresh subprocess so that its peak RSS is its own. On CUDA (when
available) it also reports peak GPU memory (torch.cuda.max_memory_allocated) at batch 1.
Prints one line per measurement: parameters, train s/step (frames/s), inference s/frame, peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings


def _child(args) -> None:
    import resource

    import torch

    from pathlib import Path

    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model, move_to, resolve_device, run_spec, train_autocast

    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    import dataclasses

    cfg = build_config(args.method, args.preset, overrides=[f"data.root={os.path.abspath(args.data)}", *args.set])
    spec = run_spec(cfg, Path.cwd())  # the prepared data's spec, restricted to data.cameras
    cfg = dataclasses.replace(cfg, n_classes=spec.n_classes)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg, spec).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    data = OccDataset(args.data, cfg.data.train_split, cfg.data, train=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    amp = train_autocast(cfg.optim, device)

    def step(i: int) -> None:
        batch = move_to(collate([data[i % len(data)]]), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(batch)
            loss = sum(model.losses(out, batch).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = (time.perf_counter() - t0) / args.steps
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None

    model.eval()
    val = OccDataset(args.data, cfg.data.val_split, cfg.data, train=False)
    batch = move_to(collate([val[0]]), device)
    with torch.no_grad():
        model.predict(batch)
        t0 = time.perf_counter()
        for _ in range(args.infer):
            model.predict(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
    infer_s = (time.perf_counter() - t0) / args.infer
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"method": args.method, "preset": args.preset, "params": n_params, "train_s_per_step": train_s,
                      "train_frames_per_s": cfg.optim.batch_size / train_s, "infer_s_per_frame": infer_s,
                      "peak_rss_gb": rss, "peak_gpu_gb": gpu_peak, "device": str(device),
                      "threads": torch.get_num_threads(), "cameras": len(spec.cameras)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="prepared folder (e.g. the quickstart's)")
    ap.add_argument("--method", default="vpocc")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--infer", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OCC_NO_PROGRESS": "1"})
    if res.returncode < 0:
        import signal

        name = signal.Signals(-res.returncode).name
        hint = " (the kernel's out-of-memory killer, most likely: see dmesg)" if name == "SIGKILL" else ""
        raise SystemExit(f"{args.method} {args.preset}: the measuring process was killed by {name}{hint}\n"
                         f"{res.stderr[-2000:]}")
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    r = json.loads(res.stdout.strip().splitlines()[-1])
    gpu = f", peak GPU memory {r['peak_gpu_gb']:.2f} GB" if r["peak_gpu_gb"] is not None else ""
    print(f"{r['method']} {r['preset']} on {r['device']} ({r['threads']} threads, {r['cameras']} camera(s)): "
          f"{r['params'] / 1e6:.2f} M parameters, "
          f"train {r['train_s_per_step']:.2f} s/step ({r['train_frames_per_s']:.2f} frames/s), "
          f"inference {r['infer_s_per_frame']:.2f} s/frame, peak RSS {r['peak_rss_gb']:.2f} GB{gpu}")


if __name__ == "__main__":
    main()
