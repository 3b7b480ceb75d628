"""``occ vp-estimate``: a vanishing point for every image_2 frame of a raw SemanticKITTI dataset.

Methods:

- ``lines``: from the image alone (:mod:`occ_core.vp.lines`), frames in a process pool. A frame
  without enough line segments takes the VP of the nearest frame of its sequence that has one, or
  the image centre when none has. Frames whose VP rests on little straight edge (not
  ``LineVPResult.confident``) keep their estimate and are counted as ``low_confidence``.
- ``pose``: the direction of travel from ``poses.txt`` projected through ``P2``
  (:mod:`occ_core.vp.pose`); needs ``calib.txt`` and ``poses.txt``.

Output: ``OUT/seq_XX.json`` in VPOcc's format (:mod:`occ_core.vp.io`). Resumable: frames already in
the file are kept and skipped unless ``force``; the file is rewritten atomically every
``flush_every`` finished frames and at the end of each sequence, so a killed run loses little.
Everything (sequences, image folders, calibration, poses, the existing files) is checked before any
work starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occ_core.data.formats import semantickitti as sk
from occ_core.errors import FormatError, MissingError, OccError
from occ_core.vp import io as vpio

METHODS = ("lines", "pose")
FLUSH_EVERY = 200


@dataclass
class _Sequence:
    name: str
    folder: Path
    ids: list[str]
    out: Path
    done: dict[str, tuple[float, float]] = field(default_factory=dict)
    todo: list[str] = field(default_factory=list)
    new: dict[str, Any] = field(default_factory=dict)  # fid -> (x, y) or None (lines found nothing)
    size: tuple[int, int] | None = None  # (W, H) of the last image read
    since_flush: int = 0


def _normalise(names: list[str]) -> list[str]:
    out = []
    for s in names:
        s = str(s).strip()
        s = f"{int(s):02d}" if s.isdigit() else s
        if s not in out:
            out.append(s)
    return out


def _open_sequences(base: Path, out: Path, sequences: list[str] | None, method: str, force: bool) -> list[_Sequence]:
    available = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if sequences is None:
        names = available
        if not names:
            raise MissingError("no sequences found (expected sequences/XX/image_2/)", base)
    else:
        names = _normalise(sequences)
        if not names:
            raise OccError("no sequences given")
        missing = [s for s in names if s not in available]
        if missing:
            raise MissingError(f"sequence {', '.join(missing)} not found (available: {', '.join(available) or 'none'})", base)
    seqs = []
    for name in names:
        folder = base / name
        images = folder / "image_2"
        if not images.is_dir():
            raise MissingError("no image_2 folder in this sequence", images)
        ids = sk.list_ids(images, ".png")
        if not ids:
            raise MissingError("no images (image_2/NNNNNN.png)", images)
        if method == "pose":
            bad = [i for i in ids if not i.isdigit()]
            if bad:
                raise FormatError(f"image name '{bad[0]}.png' is not a frame number (needed to find its pose)", images)
        path = out / vpio.vp_file_name(name)
        done: dict[str, tuple[float, float]] = {}
        if path.exists():
            try:
                done = vpio.sequence_points(vpio.read_vp_file(path), name)
            except FormatError:
                if not force:
                    raise
        seq = _Sequence(name, folder, ids, path, done=done)
        seq.todo = list(ids) if force else [i for i in ids if i not in done]
        seqs.append(seq)
    return seqs


def _write(seq: _Sequence, final: bool) -> None:
    points = dict(seq.done)
    points.update({fid: xy for fid, xy in seq.new.items() if xy is not None})
    if final:
        _fill_missing(seq, points)
    vpio.write_vp_file(seq.out, seq.name, points)
    seq.since_flush = 0


def _fill_missing(seq: _Sequence, points: dict[str, tuple[float, float]]) -> None:
    """Frames where ``lines`` found nothing: the VP of the nearest frame that has one, else the
    image centre."""
    missing = [fid for fid, xy in seq.new.items() if xy is None]
    if not missing:
        return
    have = [i for i in seq.ids if i in points]
    pos = {fid: k for k, fid in enumerate(seq.ids)}
    for fid in missing:
        if have:
            nearest = min(have, key=lambda h: abs(pos[h] - pos[fid]))
            points[fid] = points[nearest]
        else:
            w, h = seq.size or (1241, 376)
            points[fid] = (w / 2.0, h / 2.0)


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


def _lines_frame(task: tuple[str, str, str]) -> tuple[str, str, tuple[float, float] | None, tuple[int, int], bool]:
    import cv2

    from occ_core.vp.lines import estimate_vp

    cv2.setNumThreads(1)
    seq, fid, path = task
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FormatError("cannot read image (not a PNG OpenCV can decode)", path)
    result = estimate_vp(image)
    return (seq, fid, (None if result is None else result.vp), (image.shape[1], image.shape[0]),
            result is not None and result.confident)


def _run_lines(seqs: list[_Sequence], workers: int, progress: bool, flush_every: int) -> tuple[int, int]:
    """Estimate the frames still to do; (frames without a VP, frames with a low-confidence VP)."""
    tasks = [(s.name, fid, str(s.folder / "image_2" / f"{fid}.png")) for s in seqs for fid in s.todo]
    by_name = {s.name: s for s in seqs}
    remaining = {s.name: len(s.todo) for s in seqs}
    if not tasks:
        return 0, 0
    pool = None
    if workers > 1 and len(tasks) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=get_context("spawn"))
        results = pool.map(_lines_frame, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers))))
    else:
        results = map(_lines_frame, tasks)
    if progress:
        from occ_core.utils.progress import track

        results = track(results, "vanishing points (lines)", total=len(tasks))
    failed = low = 0
    try:
        for name, fid, vp, size, confident in results:
            seq = by_name[name]
            seq.new[fid] = vp
            seq.size = size
            failed += vp is None
            low += vp is not None and not confident
            seq.since_flush += 1
            remaining[name] -= 1
            if remaining[name] == 0:
                _write(seq, final=True)
            elif seq.since_flush >= flush_every:
                _write(seq, final=False)
    finally:
        # an interrupted run keeps what it finished
        for seq in seqs:
            if remaining[seq.name] and seq.since_flush:
                _write(seq, final=False)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return failed, low


def _load_pose(seqs: list[_Sequence]) -> list[tuple[_Sequence, Any, Any]]:
    """Read and check calib.txt (P2) and poses.txt of every sequence."""
    loaded = []
    for seq in seqs:
        for name in ("calib.txt", "poses.txt"):
            if not (seq.folder / name).is_file():
                raise MissingError(f"{name} not found (needed by --method pose)", seq.folder / name)
        calib = sk.read_calib(seq.folder / "calib.txt", keys=("P2",))
        poses_path = seq.folder / "poses.txt"
        poses = sk.read_poses(poses_path)
        last = max(int(i) for i in seq.ids)
        if last >= len(poses):
            raise FormatError(f"{len(poses)} poses, but image_2 has frame {last:06d}", poses_path)
        loaded.append((seq, calib["P2"], poses))
    return loaded


def _run_pose(loaded: list[tuple[_Sequence, Any, Any]], ahead: float) -> dict[str, int]:
    import numpy as np

    from occ_core.vp.pose import project_direction, travel_directions

    counts = {"end_of_sequence": 0, "no_motion": 0, "in_corner": 0, "before_corner": 0}
    for seq, P2, poses in loaded:
        if not seq.todo:
            continue
        dirs, source = travel_directions(poses, [int(i) for i in seq.todo], ahead=ahead)
        pix = project_direction(P2, dirs)
        for fid, (x, y) in zip(seq.todo, pix):
            seq.new[fid] = (float(x), float(y))
        counts["end_of_sequence"] += int(np.sum(source == 1))
        counts["no_motion"] += int(np.sum(source == 2))
        counts["in_corner"] += int(np.sum((source == 3) | (source == 4)))
        counts["before_corner"] += int(np.sum(source == 5))
        _write(seq, final=True)
    return counts


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def estimate_vps(data: str | Path, out: str | Path, method: str = "lines", sequences: list[str] | None = None,
                 workers: int = 1, force: bool = False, progress: bool = True, flush_every: int = FLUSH_EVERY,
                 ahead: float | None = None) -> dict[str, Any]:
    """Estimate the VP of every image_2 frame of ``data`` into ``out/seq_XX.json``; a summary dict.

    ``data`` holds ``dataset/sequences/XX/`` (``dataset/`` or ``sequences/`` itself also works).
    """
    if method not in METHODS:
        raise OccError(f"unknown method '{method}' (expected {' or '.join(METHODS)})")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise OccError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(flush_every, int) or flush_every < 1:
        raise OccError(f"flush_every must be a positive integer, got {flush_every!r}")
    t0 = time.perf_counter()
    base = sk.find_sequences_dir(data)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OccError("output path exists and is not a folder", out)
    seqs = _open_sequences(base, out, sequences, method, force)
    extra: dict[str, Any] = {}
    if method == "pose":
        from occ_core.vp.pose import DEFAULT_AHEAD_M

        ahead = DEFAULT_AHEAD_M if ahead is None else float(ahead)
        if not ahead > 0:
            raise OccError(f"ahead must be positive, got {ahead}")
        loaded = _load_pose(seqs)  # check every sequence before writing anything
        out.mkdir(parents=True, exist_ok=True)
        extra = _run_pose(loaded, ahead)
        extra["ahead_m"] = ahead
    else:
        out.mkdir(parents=True, exist_ok=True)
        failed, low = _run_lines(seqs, workers, progress, flush_every)
        extra = {"fallbacks": failed, "low_confidence": low}
    estimated = sum(len(s.todo) for s in seqs)
    return {
        "method": method,
        "sequences": [s.name for s in seqs],
        "frames": sum(len(s.ids) for s in seqs),
        "estimated": estimated,
        "skipped": sum(len(s.ids) - len(s.todo) for s in seqs),
        **extra,
        "seconds": time.perf_counter() - t0,
        "out": str(out),
    }


__all__ = ["METHODS", "estimate_vps"]
