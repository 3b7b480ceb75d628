"""``lines`` against ``pose`` on real KITTI frames of sequences 00-07, 09, 10 (issue 13, item 6).

Targets per sequence: median <= 10 px and p90 <= 25 px of |lines - pose|. Needs
``../shared/data/kitti-frames`` (sequences 01-07, 09, 10) and ``../shared/data/semantickitti-mini``
(sequence 00); each is skipped with a reason when absent. Sequences 01, 07, 09 and 10 are known not to
meet the target (see docs/vp.md, "Per sequence": a tight on-ramp, two junction corners entered at the
start of the sequence where the street in view is a few degrees off every heading the trajectory
offers, and a dark bend with a side road); they are marked ``xfail(strict=True)`` so that a change
that makes them pass is noticed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FRAMES = REPO.parent / "shared" / "data" / "kitti-frames" / "dataset" / "sequences"
MINI = REPO.parent / "shared" / "data" / "semantickitti-mini" / "dataset" / "sequences"

KNOWN_MISSES = {
    "01": "motorway on-ramp of ~22 m radius: curved lane lines, no single VP (lines 856-960 px, +-30 px "
          "frame to frame, vs any window 5-15 m ahead 962-1003 px)",
    "07": "sequence starts inside a junction corner: the corner reference (first heading, world-fixed) "
          "tracks the street's motion (+76 vs +80 px) but the street is 5 deg off it (60 px median)",
    "09": "dark left bend with a side road: few segments even after equalisation (34 px median, p90 63)",
    "10": "sequence starts in a 6 m radius corner onto a road outside the image; lines see a bending "
          "road with 4-14 segments (132 px median)",
}


def _folder(seq: str) -> Path:
    return (MINI if seq == "00" else FRAMES) / seq


def _cases():
    for seq in ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"]:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[seq])] if seq in KNOWN_MISSES else []
        yield pytest.param(seq, marks=marks, id=f"seq{seq}")


_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _lines_and_pose(seq: str) -> tuple[np.ndarray, np.ndarray]:
    if seq in _cache:
        return _cache[seq]
    folder = _folder(seq)
    if not (folder / "image_2").is_dir():
        pytest.skip(f"real frames of sequence {seq} not found: {folder} (shared data folder absent)")
    import cv2

    from occ_core.data.formats import semantickitti as sk
    from occ_core.vp.lines import estimate_vp
    from occ_core.vp.pose import pose_vanishing_points

    images = sorted((folder / "image_2").glob("*.png"))
    lines = []
    for path in images:
        r = estimate_vp(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
        assert r is not None, path
        lines.append(r.vp)
    P2 = sk.read_calib(folder / "calib.txt", keys=("P2",))["P2"]
    pose = pose_vanishing_points(sk.read_poses(folder / "poses.txt"), P2, [int(p.stem) for p in images])
    _cache[seq] = (np.asarray(lines), pose)
    return _cache[seq]


@pytest.mark.parametrize("seq", list(_cases()))
def test_lines_agree_with_pose_per_sequence(seq):
    lines, pose = _lines_and_pose(seq)
    err = np.hypot(*(lines - pose).T)
    assert len(err) >= 10
    median, p90 = float(np.median(err)), float(np.percentile(err, 90))
    assert median <= 10.0 and p90 <= 25.0, f"sequence {seq}: median {median:.1f} px, p90 {p90:.1f} px"


@pytest.mark.parametrize("seq", ["00", "02", "03", "04", "05", "06"])
def test_pose_reference_is_stable_and_near_the_road(seq):
    """On the sequences driving along a road, the reference moves smoothly (< 5 px a frame) and sits
    on the horizon near the image centre (no drift into a turn far ahead)."""
    _, pose = _lines_and_pose(seq)
    assert np.all(np.abs(np.diff(pose[:, 0])) < 5.0), pose[:, 0]
    assert np.all((pose[:, 0] > 540) & (pose[:, 0] < 660)), pose
    assert np.all((pose[:, 1] > 150) & (pose[:, 1] < 200)), pose


@pytest.mark.parametrize("seq", ["07", "10"])
def test_corner_reference_stays_in_the_image_and_moves_with_the_street(seq):
    """Sequences starting in a junction corner: the reference is the world-fixed road the corner
    leaves (the plain 5-15 m window was at |x| of 1600-11000 px), so it stays in the image and moves
    across it the way the street seen by ``lines`` does as the car yaws."""
    lines, pose = _lines_and_pose(seq)
    assert np.all((pose[:, 0] > 0) & (pose[:, 0] < 1241)), pose
    d_pose, d_lines = pose[-1, 0] - pose[0, 0], lines[-1, 0] - lines[0, 0]
    assert abs(d_pose) > 50 and np.sign(d_pose) == np.sign(d_lines), (d_pose, d_lines)
    assert np.all(np.sign(np.diff(pose[:, 0])) == np.sign(d_pose))  # monotonic: no drift back
