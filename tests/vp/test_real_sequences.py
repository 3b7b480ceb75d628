"""``lines`` against ``pose`` on real KITTI frames of sequences 00-07, 09, 10 (issue 13, item 6).

Targets per sequence: median <= 10 px and p90 <= 25 px of |lines - pose|. Needs
``../shared/data/kitti-frames`` (sequences 01-07, 09, 10) and ``../shared/data/semantickitti-mini``
(sequence 00); each is skipped with a reason when absent. Sequences 01, 07, 09 and 10 do not meet the
target, for reasons measured in docs/vp.md ("Per sequence"): on 01 and 09 the road curves so much
that its VP moves by 130-890 px over the 5-20 m the image shows (``reference_spread``) and ``lines``
rests on 2-8 short pieces of edge (not ``confident``); 07 and 10 start inside a junction corner,
where the road ahead has no VP in the image and the road being left is not in the trajectory (10:
``lines`` not confident either). They are ``xfail(strict=True)`` so that a change that makes one
pass is noticed; the tests below check that each of their misses is flagged by one method or the
other, and that where both methods are defined the target holds.

The third pass (docs/vp.md) tested the near road and the instantaneous heading as the common
quantity; the last tests pin why that does not close the misses: the nearest road a KITTI image shows
is ~6 m ahead, where on 01 and 09 the road already points 100-230 px away from the car's instantaneous
direction of travel, and on 00 that direction is 30 px from the street in view; on 07 the trajectory
never drives the street in view, and its later pass along the street behind the junction is still
~13 px off it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FRAMES = REPO.parent / "shared" / "data" / "kitti-frames" / "dataset" / "sequences"
MINI = REPO.parent / "shared" / "data" / "semantickitti-mini" / "dataset" / "sequences"

KNOWN_MISSES = {
    "01": "on-ramp of ~22 m radius: the road's VP moves 720-890 px over the 5-20 m seen (no single VP; "
          "at frame 0 pieces of the two lane lines 8-9 m ahead point at x = 849-885 and 941-963); lines rest on 3-8 short pieces of curved "
          "lane line (support 0.07-0.26, not confident) and move by up to 36 px when one image column is cropped",
    "07": "starts inside a 95 deg junction corner, no path before it: the reference (first heading, "
          "world-fixed) moves with the street (+76 vs +80 px) but the street is 5 deg off it and the "
          "trajectory never drives it (its later pass along the street behind the junction: 13 px median); "
          "lines is confident (support 0.46-0.58), the reference is undefined (spread inf)",
    "09": "dark left bend: the road's VP moves 132-143 px over the 5-20 m seen (at frame 8 the pieces of "
          "the left edge line alone cross the horizon at x = 335-603); lines rest on 2-5 pieces of edge (support 0.09-0.16, not "
          "confident) and move by up to 131 px when one image column is cropped",
    "10": "starts inside a 6 m radius corner onto a road outside the image: no VP of the road ahead in "
          "the image (spread 790 px to inf); lines find 4-14 segments (support 0.04-0.10)",
}


def _folder(seq: str) -> Path:
    return (MINI if seq == "00" else FRAMES) / seq


def _cases():
    for seq in ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"]:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[seq])] if seq in KNOWN_MISSES else []
        yield pytest.param(seq, marks=marks, id=f"seq{seq}")


_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def _lines_and_pose(seq: str) -> tuple[np.ndarray, np.ndarray]:
    return _estimates(seq)[:2]


def _estimates(seq: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """lines VPs [10, 2], pose VPs [10, 2], lines confident [10], reference_spread [10] px."""
    if seq in _cache:
        return _cache[seq]
    folder = _folder(seq)
    if not (folder / "image_2").is_dir():
        pytest.skip(f"real frames of sequence {seq} not found: {folder} (shared data folder absent)")
    import cv2

    from occ_core.data.formats import semantickitti as sk
    from occ_core.vp.lines import estimate_vp
    from occ_core.vp.pose import pose_vanishing_points, reference_spread

    images = sorted((folder / "image_2").glob("*.png"))
    lines, confident = [], []
    for path in images:
        r = estimate_vp(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
        assert r is not None, path
        lines.append(r.vp)
        confident.append(r.confident)
    P2 = sk.read_calib(folder / "calib.txt", keys=("P2",))["P2"]
    poses = sk.read_poses(folder / "poses.txt")
    frames = [int(p.stem) for p in images]
    pose = pose_vanishing_points(poses, P2, frames)
    _cache[seq] = (np.asarray(lines), pose, np.asarray(confident), reference_spread(poses, P2, frames))
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


SEQUENCES = ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"]
SPREAD_OK_PX = 25.0  # a reference that moves by more than the p90 target over the road seen is undefined


@pytest.mark.parametrize("seq", SEQUENCES)
def test_misses_are_flagged_and_answered_frames_meet_the_target(seq):
    """Honesty of both methods per sequence: a frame is *answered* when ``lines`` is confident and
    the pose reference is defined (``reference_spread`` <= 25 px). Where at least half the frames are
    answered, those frames meet the target; on the sequences that miss it, at least 8 of 10 frames
    are flagged by one method or the other, so no miss passes as a confident agreement."""
    lines, pose, confident, spread = _estimates(seq)
    answered = confident & (spread <= SPREAD_OK_PX)
    err = np.hypot(*(lines - pose).T)
    if seq in KNOWN_MISSES:
        assert (~answered).sum() >= 8, (seq, confident, spread)
    else:
        assert answered.sum() >= 5, (seq, confident, spread)
    if answered.sum() >= 5:
        e = err[answered]
        assert np.median(e) <= 10.0 and np.percentile(e, 90) <= 25.0, (seq, e)


# ------------------------------------------------------------------------------------------------
# Third pass: the near road and the instantaneous heading (docs/vp.md) do not close the misses
# ------------------------------------------------------------------------------------------------

CAMERA_HEIGHT_M = 1.65  # KITTI cam0 above the road


def _poses_calib(seq: str):
    folder = _folder(seq)
    if not (folder / "poses.txt").is_file():
        pytest.skip(f"poses of sequence {seq} not found: {folder} (shared data folder absent)")
    from occ_core.data.formats import semantickitti as sk

    return sk.read_poses(folder / "poses.txt"), sk.read_calib(folder / "calib.txt", keys=("P2",))["P2"]


def _path_vp(poses, P2, i: int, a: float, b: float) -> np.ndarray:
    """VP of the path's chord from arc length s_i + a to s_i + b (a < 0: before the frame), in camera i."""
    from occ_core.vp.pose import project_direction

    pos = poses[:, :3, 3]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pos, axis=0), axis=1))])

    def at(s):
        return np.array([np.interp(s, arc, pos[:, k]) for k in range(3)])

    d = at(arc[i] + b) - at(max(0.0, arc[i] + a))
    return project_direction(P2, (poses[i, :3, :3].T @ (d / np.linalg.norm(d)))[None])[0]


def _near_road_vs_heading(seq: str) -> np.ndarray:
    """Per frame 0-9: pixels between the VP of the road where it enters the image (the path's tangent,
    +-1 m, at the distance the bottom row sees: fy * h / (H - cy)) and the instantaneous direction of
    travel (central difference over +-1 m of path)."""
    import cv2

    poses, P2 = _poses_calib(seq)
    H = cv2.imread(str(_folder(seq) / "image_2" / "000000.png"), cv2.IMREAD_GRAYSCALE).shape[0]
    z = P2[1, 1] * CAMERA_HEIGHT_M / (H - P2[1, 2])
    assert 5.5 < z < 6.5  # the road enters a KITTI image ~6 m ahead
    return np.array([np.hypot(*(_path_vp(poses, P2, i, z - 1, z + 1) - _path_vp(poses, P2, i, -1, 1)))
                     for i in range(10)])


@pytest.mark.parametrize("seq", ["01", "09"])
def test_on_the_curves_the_nearest_road_in_view_does_not_point_at_the_cars_heading(seq):
    """Lane lines next to the car would point at its instantaneous heading, but the image shows the
    road from ~6 m ahead only, where on 01 (R ~ 22 m) and 09 it has already turned 100-230 px away:
    neither a near-road lines estimate nor an instantaneous pose reference can meet 10 px there."""
    d = _near_road_vs_heading(seq)
    assert d.min() > 100.0, d


@pytest.mark.parametrize("seq", ["02", "03", "04", "06"])
def test_on_straight_roads_the_nearest_road_in_view_points_at_the_cars_heading(seq):
    assert np.median(_near_road_vs_heading(seq)) < 10.0


def test_instantaneous_heading_reference_misses_the_street_on_00():
    """The instantaneous direction of travel (central differences) as the reference: on 00 the car is
    still turning into the street, so it is ~30 px from where the street's lines meet, while the
    default (5-15 m ahead) meets the target."""
    lines, pose = _lines_and_pose("00")
    poses, P2 = _poses_calib("00")
    central = np.array([_path_vp(poses, P2, i, -1.0, 1.0) for i in range(10)])
    err_central = np.hypot(*(lines - central).T)
    err_default = np.hypot(*(lines - pose).T)
    assert np.median(err_central) > 20.0, err_central
    assert np.median(err_default) <= 10.0


def test_07_trajectory_never_drives_the_street_in_view():
    """No pose of the whole sequence lies 10-100 m ahead of frames 0-9 within 10 deg of the optical
    axis, where the street the camera sees runs (lines: 5.1 deg left of the axis at frame 0, 1.4 deg
    right at frame 9); the nearest evidence, the later straight pass along the street behind the
    junction (frames 963-1065, 40 m), is ~1 deg off the street lines sees: still above the median
    target."""
    poses, P2 = _poses_calib("07")
    for i in range(10):
        local = (poses[:, :3, 3] - poses[i, :3, 3]) @ poses[i, :3, :3]  # positions in camera i
        bearing = np.degrees(np.arctan2(local[:, 0], local[:, 2]))
        ahead = (local[:, 2] > 10.0) & (local[:, 2] < 100.0) & (np.abs(bearing) < 10.0)
        assert not ahead.any(), (i, np.nonzero(ahead)[0][:5])
    from occ_core.vp.pose import project_direction

    d = poses[1065, :3, 3] - poses[963, :3, 3]
    d /= np.linalg.norm(d)
    revisit = project_direction(P2, np.stack([poses[i, :3, :3].T @ d for i in range(10)]))
    lines, _ = _lines_and_pose("07")
    err = np.hypot(*(lines - revisit).T)
    assert 10.0 < np.median(err) < 20.0, err
