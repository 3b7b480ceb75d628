"""Vanishing point accuracy and speed (figures recorded in docs/vp.md).

1. Real frames (``../shared/data/semantickitti-mini``, skipped when absent): ``lines`` against
   ``pose`` (no true VP exists for real images), median / 90th percentile / max pixel error.
2. Synthetic data with the true VP (``occ_core.data.synthetic.generate_dataset`` writes
   ``ROOT/vanishing_points/seq_XX.json``): ``lines`` and ``pose`` against the truth.
3. ``--frames DIR`` (e.g. ``../shared/data/kitti-frames``, said clearly and skipped when absent):
   the per-sequence table, ``lines`` against ``pose`` on every sequence of ``DIR`` plus sequence 00
   of ``--mini``: median / p90 / max of |lines - pose| in pixels, whether the targets (median <= 10,
   p90 <= 25 px) are met, and the stability of ``pose`` (median / max frame-to-frame |dx|); then
   per sequence how many frames ``lines`` is confident on, how many have a defined pose reference
   (``reference_spread`` <= 25 px) and the errors on the frames where both hold.
4. Speed of ``lines`` on one core (``cv2.setNumThreads(1)``) on 1241x376 images: wall and CPU
   milliseconds per image, decoding the PNG apart.

Everything goes through ``estimate_vps`` (the ``occ vp-estimate`` driver) and the files it writes.

    python bench/bench_vp.py                                  # generates synthetic data in a temp dir
    python bench/bench_vp.py --synthetic /tmp/syn --seed 1    # reuse / generate there (resumable)
    python bench/bench_vp.py --frames ../shared/data/kitti-frames --skip real,synthetic,speed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OCC_NO_PROGRESS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MINI = REPO.parent / "shared" / "data" / "semantickitti-mini"


def _stats(err: np.ndarray) -> dict:
    err = np.asarray(err, dtype=float)
    return {"n": int(err.size), "median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
            "max": float(err.max())}


def _fmt(s: dict) -> str:
    return f"n={s['n']:3d}  median {s['median']:6.2f} px   p90 {s['p90']:6.2f} px   max {s['max']:6.2f} px"


def _errors(est: dict, ref: dict) -> np.ndarray:
    keys = sorted(set(est) & set(ref))
    missing = set(ref) - set(est)
    if missing:
        raise SystemExit(f"estimates missing for {len(missing)} frames, e.g. {sorted(missing)[0]}")
    return np.array([np.hypot(est[k][0] - ref[k][0], est[k][1] - ref[k][1]) for k in keys])


def run_methods(root: Path, work: Path, workers: int, ahead_values=(None,)) -> dict:
    from occ_core.vp.estimate import estimate_vps
    from occ_core.vp.io import read_vp_dir

    out = {}
    t0 = time.perf_counter()
    estimate_vps(root, work / "lines", method="lines", workers=workers, force=True, progress=False)
    out["lines_seconds"] = time.perf_counter() - t0
    out["lines"] = read_vp_dir(work / "lines")
    for ahead in ahead_values:
        name = "pose" if ahead is None else f"pose_{ahead:g}m"
        estimate_vps(root, work / name, method="pose", force=True, progress=False, ahead=ahead)
        out[name] = read_vp_dir(work / name)
    return out


def bench_real(mini: Path, work: Path, workers: int) -> dict | None:
    if not (mini / "dataset" / "sequences").is_dir():
        print(f"[real] skipped: {mini} not found")
        return None
    res = run_methods(mini, work / "real", workers, ahead_values=(None, 10.0, 40.0))
    report = {"lines_vs_pose": _stats(_errors(res["lines"], res["pose"])),
              "lines_vs_pose_10m": _stats(_errors(res["lines"], res["pose_10m"])),
              "lines_vs_pose_40m": _stats(_errors(res["lines"], res["pose_40m"]))}
    print(f"[real] {mini}")
    print(f"  lines vs pose (5-15 m, default): {_fmt(report['lines_vs_pose'])}")
    print(f"  lines vs pose (3.3-10 m):        {_fmt(report['lines_vs_pose_10m'])}")
    print(f"  lines vs pose (13.3-40 m):       {_fmt(report['lines_vs_pose_40m'])}")
    return report


TARGET_MEDIAN_PX, TARGET_P90_PX = 10.0, 25.0


def _frame_diagnostics(root: Path, seq: str, keys: list) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of ``keys``: lines' support (inlier length / image diagonal; confident when >= the
    default ``min_support``) and the pose reference's spread (``reference_spread``, pixels)."""
    import cv2

    from occ_core.data.formats import semantickitti as sk
    from occ_core.vp.lines import estimate_vp
    from occ_core.vp.pose import reference_spread

    folder = sk.find_sequences_dir(root) / seq
    support = []
    for _, fid in keys:
        r = estimate_vp(cv2.imread(str(folder / "image_2" / f"{fid}.png"), cv2.IMREAD_GRAYSCALE))
        support.append(0.0 if r is None else r.support)
    P2 = sk.read_calib(folder / "calib.txt", keys=("P2",))["P2"]
    spread = reference_spread(sk.read_poses(folder / "poses.txt"), P2, [int(fid) for _, fid in keys])
    return np.asarray(support), spread


def bench_frames(frames: Path, mini: Path, work: Path, workers: int) -> dict | None:
    """Per-sequence |lines - pose| on real frames of several sequences (and pose stability), with
    how many frames each method can answer: lines confident (support >= min_support) and the pose
    reference defined (the road's VP moves by <= TARGET_P90_PX over the 5-20 m the image shows)."""
    from occ_core.vp.lines import DEFAULT_CONFIG

    roots = []
    if (mini / "dataset" / "sequences").is_dir():
        roots.append(("mini", mini))
    else:
        print(f"[frames] note: {mini} not found, sequence 00 left out")
    if not (frames / "dataset" / "sequences").is_dir():
        print(f"[frames] skipped: {frames} not found (expected {frames}/dataset/sequences/XX/)")
        return None
    roots.append(("frames", frames))
    rows = {}
    for tag, root in roots:
        res = run_methods(root, work / f"frames_{tag}", workers)
        for seq in sorted({k[0] for k in res["pose"]}):
            keys = sorted(k for k in res["pose"] if k[0] == seq)
            lin = np.array([res["lines"][k] for k in keys])
            pose = np.array([res["pose"][k] for k in keys])
            err = np.hypot(*(lin - pose).T)
            row = _stats(err)
            dx = np.abs(np.diff(pose[:, 0]))
            support, spread = _frame_diagnostics(root, seq, keys)
            confident = support >= DEFAULT_CONFIG.min_support
            defined = spread <= TARGET_P90_PX
            both = confident & defined
            row.update(pose_dx_median=float(np.median(dx)) if dx.size else 0.0,
                       pose_dx_max=float(dx.max()) if dx.size else 0.0,
                       pose_x_first=float(pose[0, 0]), pose_x_last=float(pose[-1, 0]),
                       lines_x_first=float(lin[0, 0]), lines_x_last=float(lin[-1, 0]),
                       met=bool(row["median"] <= TARGET_MEDIAN_PX and row["p90"] <= TARGET_P90_PX),
                       lines_confident=int(confident.sum()), support_min=float(support.min()),
                       support_max=float(support.max()), reference_defined=int(defined.sum()),
                       spread_median=float(np.median(spread)), both_defined=int(both.sum()),
                       both=_stats(err[both]) if both.any() else None, source=str(root))
            rows[seq] = row
    print(f"[frames] {frames} (+ sequence 00 of {mini}); lines vs pose, pose = mean travel direction "
          f"5-15 m ahead ending at a junction corner, in a corner the road it joins (docs/vp.md); target median <= {TARGET_MEDIAN_PX:g} px and p90 <= {TARGET_P90_PX:g} px")
    print("| seq | n | median | p90 | max | target | pose x, first -> last frame | pose frame-to-frame abs dx (median / max) | lines x, first -> last |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seq, r in sorted(rows.items()):
        print(f"| {seq} | {r['n']} | {r['median']:.1f} | {r['p90']:.1f} | {r['max']:.1f} | "
              f"{'met' if r['met'] else 'NOT met'} | {r['pose_x_first']:.0f} -> {r['pose_x_last']:.0f} | "
              f"{r['pose_dx_median']:.1f} / {r['pose_dx_max']:.1f} px | {r['lines_x_first']:.0f} -> {r['lines_x_last']:.0f} |")
    print(f"  sequences meeting the target: {sum(r['met'] for r in rows.values())} of {len(rows)}")
    print(f"[frames] which frames each method can answer: lines confident = support (inlier length / image "
          f"diagonal) >= {DEFAULT_CONFIG.min_support:g}; pose reference defined = the road's VP moves by <= "
          f"{TARGET_P90_PX:g} px over the 5-20 m ahead (reference_spread)")
    print("| seq | lines confident | support min-max | reference defined | spread median px | both | median / p90 / max on both |")
    print("|---|---|---|---|---|---|---|")
    for seq, r in sorted(rows.items()):
        b = r["both"]
        on_both = f"{b['median']:.1f} / {b['p90']:.1f} / {b['max']:.1f}" if b else "-"
        print(f"| {seq} | {r['lines_confident']}/{r['n']} | {r['support_min']:.2f}-{r['support_max']:.2f} | "
              f"{r['reference_defined']}/{r['n']} | {r['spread_median']:.0f} | {r['both_defined']}/{r['n']} | {on_both} |")
    return rows


def bench_synthetic(root: Path | None, work: Path, sequences: list[str], frames: int, seed: int, workers: int) -> dict | None:
    try:
        from occ_core.data.synthetic import generate_dataset
    except ImportError:
        print("[synthetic] skipped: occ_core.data.synthetic not available")
        return None
    from occ_core.vp.io import read_vp_dir

    root = root or (work / "synthetic")
    t0 = time.perf_counter()
    generate_dataset(root, sequences=sequences, frames=frames, seed=seed, workers=workers, progress=False)
    gen_s = time.perf_counter() - t0
    truth = read_vp_dir(root / "vanishing_points", sequences=sequences)
    res = run_methods(root, work / "syn", workers, ahead_values=(None, 10.0, 40.0))
    report = {"lines_vs_true": _stats(_errors(res["lines"], truth)),
              "pose_vs_true": _stats(_errors(res["pose"], truth)),
              "pose_10m_vs_true": _stats(_errors(res["pose_10m"], truth)),
              "pose_40m_vs_true": _stats(_errors(res["pose_40m"], truth)),
              "root": str(root), "seed": seed, "sequences": sequences, "frames": frames}
    print(f"[synthetic] {root} (seed {seed}, sequences {','.join(sequences)}, {frames} frames each; "
          f"generated/checked in {gen_s:.0f} s)")
    print(f"  lines vs true:                 {_fmt(report['lines_vs_true'])}")
    print(f"  pose (5-15 m) vs true:         {_fmt(report['pose_vs_true'])}")
    print(f"  pose (3.3-10 m) vs true:       {_fmt(report['pose_10m_vs_true'])}")
    print(f"  pose (13.3-40 m) vs true:      {_fmt(report['pose_40m_vs_true'])}")
    per_seq = {}
    for seq in sequences:
        keys = [k for k in truth if k[0] == seq]
        e = _errors({k: res["lines"][k] for k in keys}, {k: truth[k] for k in keys})
        per_seq[seq] = _stats(e)
        print(f"    lines vs true, sequence {seq}: {_fmt(per_seq[seq])}")
    report["lines_per_sequence"] = per_seq
    return report


def bench_speed(images: list[Path], repeats: int) -> dict | None:
    import cv2

    from occ_core.vp.lines import LineVPConfig, estimate_vp, lsd_available

    if not images:
        print("[speed] skipped: no images")
        return None
    cv2.setNumThreads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    grey = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in images]
    read_wall = (time.perf_counter() - t0) / len(images) * 1e3
    read_cpu = (time.process_time() - c0) / len(images) * 1e3
    shape = grey[0].shape
    out = {"image": f"{shape[1]}x{shape[0]}", "images": len(images), "lsd": lsd_available(),
           "read_ms_wall": read_wall, "read_ms_cpu": read_cpu}
    for name, cfg in (("lines", LineVPConfig()), ("lines_hough", LineVPConfig(detector="hough"))):
        estimate_vp(grey[0], cfg)  # warm up
        walls, cpus = [], []
        for _ in range(repeats):
            for g in grey:
                t0, c0 = time.perf_counter(), time.process_time()
                estimate_vp(g, cfg)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        out[f"{name}_ms_wall_median"] = float(np.median(walls) * 1e3)
        out[f"{name}_ms_cpu_median"] = float(np.median(cpus) * 1e3)
        out[f"{name}_ms_cpu_p90"] = float(np.percentile(cpus, 90) * 1e3)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out["loadavg_1min"] = load
    print(f"[speed] one core, {out['image']}, {len(images)} images x {repeats} (LSD available: {out['lsd']}; "
          f"load average {load:.1f} on {os.cpu_count()} cores)")
    print(f"  lines (LSD, default):  median {out['lines_ms_wall_median']:6.1f} ms wall, {out['lines_ms_cpu_median']:6.1f} ms CPU "
          f"(p90 {out['lines_ms_cpu_p90']:.1f} ms CPU)")
    print(f"  lines (Hough):         median {out['lines_hough_ms_wall_median']:6.1f} ms wall, {out['lines_hough_ms_cpu_median']:6.1f} ms CPU "
          f"(p90 {out['lines_hough_ms_cpu_p90']:.1f} ms CPU)")
    print(f"  PNG decode (apart):    {read_wall:6.1f} ms wall, {read_cpu:6.1f} ms CPU")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mini", type=Path, default=DEFAULT_MINI, help="real SemanticKITTI frames (skipped when absent)")
    ap.add_argument("--synthetic", type=Path, default=None, help="synthetic dataset folder (generated there when missing)")
    ap.add_argument("--sequences", default="00,01,02,08")
    ap.add_argument("--frames", type=Path, default=None,
                    help="real frames of several sequences (e.g. ../shared/data/kitti-frames): per-sequence table")
    ap.add_argument("--syn-frames", type=int, default=15, help="frames per synthetic sequence")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats over the images")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: real,synthetic,speed")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()]
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_vp_") as tmp:
        work = Path(tmp)
        if args.frames is not None:
            report["frames"] = bench_frames(args.frames, args.mini, work, args.workers)
        if "real" not in skip:
            report["real"] = bench_real(args.mini, work, args.workers)
        if "synthetic" not in skip:
            report["synthetic"] = bench_synthetic(args.synthetic, work, sequences, args.syn_frames, args.seed, args.workers)
        if "speed" not in skip:
            images = sorted((args.mini / "dataset" / "sequences" / "00" / "image_2").glob("*.png"))
            if not images:
                syn = args.synthetic or (work / "synthetic")
                images = sorted(syn.glob("dataset/sequences/*/image_2/*.png"))[:20]
            report["speed"] = bench_speed(images, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
