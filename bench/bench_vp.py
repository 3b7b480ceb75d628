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
   With ``--references`` also a comparison of pose references (the default, the instantaneous direction
   of travel by central differences, the car's heading, plain chords at several look-aheads) with
   ``lines`` variants (all segments, the near road only, a curved-road model extrapolated to the car),
   on the same frames, and how far ``lines`` moves when one image column is cropped; with
   ``--pieces SEQ:FRAME``, where each segment of one frame below the road's horizon points
   (docs/vp.md, third pass of issue 13 item 6).
4. Speed of ``lines`` on one core (``cv2.setNumThreads(1)``) on 1241x376 images: wall and CPU
   milliseconds per image, decoding the PNG apart.

Everything goes through ``estimate_vps`` (the ``occ vp-estimate`` driver) and the files it writes.

    python bench/bench_vp.py                                  # generates synthetic data in a temp dir
    python bench/bench_vp.py --synthetic /tmp/syn --seed 1    # reuse / generate there (resumable)
    python bench/bench_vp.py --frames ../shared/data/kitti-frames --skip real,synthetic,speed
    python bench/bench_vp.py --frames ../shared/data/kitti-frames --references --skip real,synthetic,speed
    python bench/bench_vp.py --pieces 01:0 --frames ../shared/data/kitti-frames --skip frames,real,synthetic,speed
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


def _curve_vp_at_car(segments: np.ndarray, vp, shape, seed: int = 0) -> tuple[float, float]:
    """The VP of the road *at the car*, extrapolated from the segments below the horizon with a
    curved-road model. On a road of constant curvature each piece of lane line at ground distance Z
    points at the VP of the road's tangent there, x(Z) ~ x0 + f * kappa * Z, and a flat road's row
    gives Z = f * h / (y - y_h); so a segment with midpoint row y points at (x0 + b / (y - y_h), y_h),
    and x0 (Z -> 0) is the direction of the lane lines next to the car: its heading along the road.
    Without calibration: y_h is the row of the ``lines`` VP, and (x0, b) are fitted to the segments
    more than 3 % of the height below it (RANSAC over pairs, each segment's line giving one linear
    equation, then weighted least squares of the angular errors on the inliers within 1.5 deg).
    Returns ``vp`` unchanged when fewer than 3 segments lie below the horizon."""
    from occ_core.vp.lines import _line_params

    H, W = shape[:2]
    mid, u, length, normal, c = _line_params(np.asarray(segments, dtype=float).reshape(-1, 4))
    x_start, y_h = float(vp[0]), float(vp[1])
    below = mid[:, 1] > y_h + 0.03 * H
    if below.sum() < 3:
        return x_start, y_h
    mid, u, length, normal, c = mid[below], u[below], length[below], normal[below], c[below]
    t = 1.0 / (mid[:, 1] - y_h)
    A = np.column_stack([normal[:, 0], normal[:, 0] * t])  # normal . (x0 + b t, y_h) + c = 0
    rhs = -(normal[:, 1] * y_h + c)
    thr = np.sin(np.radians(1.5))

    def errors(q):
        w = np.column_stack([q[0] + q[1] * t, np.full_like(t, y_h)]) - mid
        return np.abs(w[:, 0] * u[:, 1] - w[:, 1] * u[:, 0]) / np.maximum(np.linalg.norm(w, axis=1), 1e-9), w

    rng = np.random.default_rng(seed)
    hyps = [np.array([x_start, 0.0])]
    for _ in range(300):
        i, j = rng.choice(len(t), 2, replace=False, p=length / length.sum())
        if abs(np.linalg.det(A[[i, j]])) > 1e-9:
            hyps.append(np.linalg.solve(A[[i, j]], rhs[[i, j]]))
    hyps = [q for q in hyps if -0.25 * W < q[0] < 1.25 * W]
    q = max(hyps, key=lambda q: float(np.sum(length * (errors(q)[0] < thr))))
    for _ in range(3):
        err, w = errors(q)
        inl = err < thr
        if inl.sum() < 2:
            break
        wt = np.sqrt(length / np.maximum(np.sum(w ** 2, axis=1), 1.0))[inl]
        q = np.linalg.lstsq(A[inl] * wt[:, None], rhs[inl] * wt, rcond=None)[0]
    return float(q[0]), y_h


def _lines_variants(gray: np.ndarray) -> dict:
    """``lines`` on all usable segments (exactly ``estimate_vp``) and on the segments of the near road
    only: those whose midpoint lies below the VP found on all of them (by more than 2 % of the height),
    and those in the lower half of the rows between that VP and the bottom edge (a variant left with
    too few segments keeps the full estimate); and the road's VP at the car extrapolated with a
    curved-road model (:func:`_curve_vp_at_car`). (x, y) each, NaN when nothing is found."""
    from occ_core.vp.lines import (DEFAULT_CONFIG as cfg, detect_segments, equalize, estimate_vp_from_segments,
                                   filter_segments)

    seg = detect_segments(gray, scale=cfg.scale, detector=cfg.detector)
    if cfg.equalize_below > 0 and len(filter_segments(seg, gray.shape, cfg.min_length, cfg.min_angle)) < cfg.equalize_below:
        seg = detect_segments(equalize(gray, cfg.clahe_clip), scale=cfg.scale, detector=cfg.detector)
    full = estimate_vp_from_segments(seg, gray.shape, cfg)
    out = {"all segments (default)": full.vp if full else (np.nan, np.nan)}
    H = gray.shape[0]
    y_vp = full.vp[1] if full else 0.5 * H
    mid_y = 0.5 * (seg[:, 1] + seg[:, 3])
    for name, frac in (("segments below its VP", 0.0), ("lower half below its VP", 0.5)):
        keep = mid_y > y_vp + 0.02 * H + frac * (H - y_vp)
        r = estimate_vp_from_segments(seg[keep], gray.shape, cfg) if keep.any() else None
        out[name] = r.vp if r else out["all segments (default)"]
    out["curved-road model at the car"] = (_curve_vp_at_car(full.segments, full.vp, gray.shape) if full
                                          else (np.nan, np.nan))
    return out


def _pose_references(poses: np.ndarray, P2: np.ndarray, frames: list[int], image_height: int) -> dict:
    """Candidate pose references [M, 2] for the frames: the default; the instantaneous direction of
    travel (central differences: the chord from 1 m of path before to 1 m after the frame); the
    car's heading (levelled optical axis); plain chords a-b m ahead without the corner rule; and the
    path's tangent (+-1 m) where the bottom row of the image sees the road (not a candidate: the
    nearest road a line in the image can come from)."""
    from occ_core.vp.pose import headings, pose_vanishing_points, project_direction

    pos = poses[:, :3, 3]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pos, axis=0), axis=1))])

    def at(s: float) -> np.ndarray:
        return np.array([np.interp(s, arc, pos[:, k]) for k in range(3)])

    central = []
    for i in frames:
        d = at(min(arc[-1], arc[i] + 1.0)) - at(max(0.0, arc[i] - 1.0))
        central.append(poses[i, :3, :3].T @ (d / max(np.linalg.norm(d), 1e-9)))
    yaw = headings(poses)[frames]
    axis = np.stack([poses[i, :3, :3].T @ np.array([np.sin(a), 0.0, np.cos(a)]) for i, a in zip(frames, yaw)])
    # the road where the image's bottom row sees it (flat road, KITTI's camera 1.65 m high): its tangent
    near_z = P2[1, 1] * 1.65 / (image_height - P2[1, 2])
    entry = []
    for i in frames:
        d = at(min(arc[-1], arc[i] + near_z + 1.0)) - at(min(arc[-1], arc[i] + near_z - 1.0))
        entry.append(poses[i, :3, :3].T @ (d / max(np.linalg.norm(d), 1e-9)))
    out = {"road where the image begins (tangent)": project_direction(P2, np.asarray(entry)),
           "default (5-15 m, corners)": pose_vanishing_points(poses, P2, frames),
           "5-15 m, no corner rule": pose_vanishing_points(poses, P2, frames, corner_radius=None),
           "central difference (+-1 m)": project_direction(P2, np.asarray(central)),
           "car heading (levelled optical axis)": project_direction(P2, axis)}
    for a, b in ((0.0, 5.0), (5.0, 10.0), (10.0, 20.0)):
        out[f"plain chord {a:g}-{b:g} m"] = pose_vanishing_points(poses, P2, frames, ahead=b, near=a, corner_radius=None)
    return out


def bench_references(sequences: dict) -> dict:
    """``sequences``: {name: dataset root}. |lines - reference| per sequence for each ``lines``
    variant and pose reference (median / p90 px), how many sequences meet the target with each pair,
    and how far ``lines`` moves when the image loses its first column."""
    import cv2

    from occ_core.data.formats import semantickitti as sk
    from occ_core.vp.lines import estimate_vp

    table: dict = {}
    moved: dict = {}
    nearest: dict = {}
    for seq, root in sorted(sequences.items()):
        folder = sk.find_sequences_dir(root) / seq
        ids = sk.list_ids(folder / "image_2", ".png")
        frames = [int(i) for i in ids]
        grays = [cv2.imread(str(folder / "image_2" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) for i in ids]
        variants = [_lines_variants(g) for g in grays]
        # how much lines moves when the image loses its first column (x shifted back by 1 px): the
        # half-scale detection then pairs other columns, a perturbation far below any real change
        shift = []
        for g, v in zip(grays, variants):
            r = estimate_vp(np.ascontiguousarray(g[:, 1:]))
            full = np.asarray(v["all segments (default)"], dtype=float)
            shift.append(np.hypot(r.vp[0] + 1.0 - full[0], r.vp[1] - full[1]) if r else np.inf)
        moved[seq] = (float(np.median(shift)), float(np.max(shift)))
        P2 = sk.read_calib(folder / "calib.txt", keys=("P2",))["P2"]
        refs = _pose_references(sk.read_poses(folder / "poses.txt"), P2, frames, grays[0].shape[0])
        entry = refs.pop("road where the image begins (tangent)")
        gap = np.hypot(*(entry - refs["central difference (+-1 m)"]).T)
        nearest[seq] = (float(np.median(gap)), float(gap.min()), float(gap.max()))
        for lname in variants[0]:
            est = np.array([v[lname] for v in variants], dtype=float)
            for rname, ref in refs.items():
                err = np.hypot(*(est - ref).T)
                table.setdefault((lname, rname), {})[seq] = (float(np.median(err)), float(np.percentile(err, 90)))
    seqs = sorted(sequences)
    print(f"[references] |lines - reference| per sequence, median / p90 px (target {TARGET_MEDIAN_PX:g} / "
          f"{TARGET_P90_PX:g}); lines variants x pose references (docs/vp.md, third pass)")
    print("| lines | pose reference | " + " | ".join(seqs) + " | met |")
    print("|---|---|" + "---|" * len(seqs) + "---|")
    report = []
    for (lname, rname), cells in table.items():
        met = sum(m <= TARGET_MEDIAN_PX and p <= TARGET_P90_PX for m, p in cells.values())
        text = " | ".join(f"{cells[s][0]:.0f} / {cells[s][1]:.0f}" if cells[s][0] < 1e4 else f"{cells[s][0]:.1e}"
                          for s in seqs)
        print(f"| {lname} | {rname} | {text} | {met} |")
        report.append({"lines": lname, "reference": rname, "met": met,
                       "per_sequence": {s: {"median": m, "p90": p} for s, (m, p) in cells.items()}})
    print("[references] lines moves when the image's first column is cropped (px, median / max over the frames):")
    print("  " + ", ".join(f"{s} {moved[s][0]:.1f} / {moved[s][1]:.1f}" for s in seqs))
    print("[references] the road where the image's bottom row sees it (path tangent there) vs the central difference "
          "(px, median, min-max):")
    print("  " + ", ".join(f"{s} {nearest[s][0]:.0f} ({nearest[s][1]:.0f}-{nearest[s][2]:.0f})" for s in seqs))
    return {"rows": report, "crop_one_column_px": {s: {"median": m, "max": x} for s, (m, x) in moved.items()},
            "image_bottom_road_vs_central_px": {s: {"median": m, "min": a, "max": b} for s, (m, a, b) in nearest.items()}}


def print_pieces(root: Path, seq: str, frame: int) -> list[dict]:
    """Where each usable segment below the road's horizon points: for one frame, the segments ``lines``
    uses (after its filter and low-contrast fallback), with their midpoint, length, the ground distance
    their row sees on a flat road (fy * 1.65 m / (y - cy), KITTI's camera height) and the x at which
    their line crosses the row of the pose reference (the horizon of the road). On a straight road
    these crossings agree; on a curve each piece of road points at its own VP."""
    import cv2

    from occ_core.data.formats import semantickitti as sk
    from occ_core.vp.lines import DEFAULT_CONFIG as cfg
    from occ_core.vp.lines import detect_segments, equalize, filter_segments
    from occ_core.vp.pose import pose_vanishing_points

    folder = sk.find_sequences_dir(root) / seq
    gray = cv2.imread(str(folder / "image_2" / f"{frame:06d}.png"), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise SystemExit(f"no image {folder / 'image_2' / f'{frame:06d}.png'}")
    seg = filter_segments(detect_segments(gray, cfg.scale, cfg.detector), gray.shape, cfg.min_length, cfg.min_angle)
    if cfg.equalize_below > 0 and len(seg) < cfg.equalize_below:
        seg = filter_segments(detect_segments(equalize(gray, cfg.clahe_clip), cfg.scale, cfg.detector), gray.shape,
                              cfg.min_length, cfg.min_angle)
    P2 = sk.read_calib(folder / "calib.txt", keys=("P2",))["P2"]
    ref = pose_vanishing_points(sk.read_poses(folder / "poses.txt"), P2, [frame])[0]
    mid = 0.5 * (seg[:, :2] + seg[:, 2:])
    d = seg[:, 2:] - seg[:, :2]
    out = []
    print(f"[pieces] sequence {seq} frame {frame}: pose reference ({ref[0]:.0f}, {ref[1]:.0f}); segments below its row")
    for k in np.argsort(mid[:, 1]):
        if mid[k, 1] <= ref[1] + 5 or abs(d[k, 1]) < 1e-9:
            continue
        x = mid[k, 0] + (ref[1] - mid[k, 1]) * d[k, 0] / d[k, 1]
        dist = P2[1, 1] * 1.65 / (mid[k, 1] - P2[1, 2]) if mid[k, 1] > P2[1, 2] else float("inf")
        out.append({"mid": mid[k].tolist(), "length": float(np.hypot(*d[k])), "distance_m": float(dist), "horizon_x": float(x)})
        print(f"  mid ({mid[k, 0]:5.0f}, {mid[k, 1]:4.0f})  length {np.hypot(*d[k]):5.1f} px  ~{dist:5.1f} m ahead"
              f"  crosses the horizon at x = {x:6.0f}")
    return out


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
    ap.add_argument("--references", action="store_true",
                    help="with --frames: also compare other pose references and near-road lines variants (docs/vp.md)")
    ap.add_argument("--pieces", default=None, metavar="SEQ:FRAME",
                    help="with --frames (or --mini for 00): where each segment of one frame below the horizon points")
    ap.add_argument("--syn-frames", type=int, default=15, help="frames per synthetic sequence")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats over the images")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: real,synthetic,speed (and frames: the --frames table)")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()]
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_vp_") as tmp:
        work = Path(tmp)
        if args.pieces:
            seq, _, frame = args.pieces.partition(":")
            seq = f"{int(seq):02d}" if seq.isdigit() else seq
            root = args.mini if seq == "00" or args.frames is None else args.frames
            report["pieces"] = print_pieces(root, seq, int(frame or 0))
        if args.frames is not None and "frames" not in skip:
            report["frames"] = bench_frames(args.frames, args.mini, work, args.workers)
            if args.references and report["frames"]:
                report["references"] = bench_references({seq: Path(r["source"]) for seq, r in report["frames"].items()})
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
