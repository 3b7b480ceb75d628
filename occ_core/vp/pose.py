"""Vanishing point of the direction of travel, from ``poses.txt`` and ``calib.txt``.

For frame ``i`` the direction of travel is the mean direction of the trajectory over the stretch of
road the camera sees best: from ``near`` to ``ahead`` metres further along the path (default 5 to
15 m; arc length, interpolated between poses). The mean of the unit tangent over an arc is the
chord between its ends, so this is the chord from the position at ``s_i + near`` to the one at
``s_i + ahead``. It is expressed in the current cam0 frame (``poses.txt`` holds cam0-to-world poses
of the KITTI odometry benchmark, not velodyne poses, so no ``Tr`` is involved) and projected as a
point at infinity through image_2: ``p ~ P2 @ [d, 0] = P2[:, :3] @ d``. Camera 2 is only translated
from cam0 (rectified rig), and a point at infinity does not move under translation, so the cam0 ->
cam2 shift changes nothing; ``P2[:, :3]`` (its intrinsics) is the whole story.

Why [5, 15] m (measured in docs/vp.md): the road enters a KITTI image about 6 m ahead (camera 1.65 m
high, bottom row 15 degrees below the axis) and its lines are resolved up to ~15-20 m, so that is
where image lines measure the road direction. A window starting at the car is dominated by the
car's own yaw and the sideways motion of a roof camera in a turn; one reaching 20 m or more
looks into the next bend or junction (the drift seen on real sequences with a long look-ahead).

Corner cases (see docs/vp.md):

- fewer than ``ahead`` metres left at the end of the sequence: the window slides back so that it
  ends at the last pose and keeps its length (the previous motion); a sequence shorter than the
  window uses its whole path;
- standing still: the window is in metres travelled, so a car waiting at a light looks where it will
  go (one stopped at the end of the sequence, where it came from); a window that moves less than
  ``min_move`` metres in all gives the optical axis, i.e. the principal point;
- a direction (almost) parallel to the image plane (|z| < 1e-3 of its length) also gives the
  principal point; moving backwards gives the same vanishing point as moving forwards.
"""

from __future__ import annotations

import numpy as np

DEFAULT_AHEAD_M = 15.0
"""Far end of the stretch of trajectory (metres ahead of the frame) giving the direction of travel."""

NEAR_FRACTION = 1.0 / 3.0
"""Near end of that stretch, as a fraction of ``ahead`` (5 m of the default 15 m)."""

MIN_MOVE_M = 1.0
"""Less motion than this is treated as standing still."""


def _arc_lengths(positions: np.ndarray) -> np.ndarray:
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)])


def _point_at(positions: np.ndarray, arc: np.ndarray, s: float) -> np.ndarray:
    """Position at arc length ``s`` along the path (linear interpolation between poses)."""
    k = int(np.clip(np.searchsorted(arc, s, side="right") - 1, 0, len(arc) - 2))
    span = arc[k + 1] - arc[k]
    t = 0.0 if span <= 0 else float(np.clip((s - arc[k]) / span, 0.0, 1.0))
    return positions[k] + t * (positions[k + 1] - positions[k])


def travel_directions(poses: np.ndarray, indices=None, ahead: float = DEFAULT_AHEAD_M,
                      min_move: float = MIN_MOVE_M, near: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit direction of travel of each frame in its own cam0 frame.

    ``poses``: [N, 4, 4] cam0-to-world (``read_poses``). The direction of frame ``i`` is the mean
    tangent of the path between arc lengths ``s_i + near`` and ``s_i + ahead``, i.e. the chord
    between those two (interpolated) positions; ``near`` defaults to ``ahead / 3``. Near the end of
    the sequence the window slides back so that it keeps its length (it ends at the last pose): the
    previous motion. Returns (directions [M, 3], source [M]) for the frames ``indices`` (default:
    all), where source is 0 = the window ahead, 1 = window slid back (end of the sequence), 2 = the
    window moves less than ``min_move`` in all (optical axis).
    """
    near = ahead * NEAR_FRACTION if near is None else float(near)
    if not 0.0 <= near < ahead:
        raise ValueError(f"need 0 <= near < ahead, got near={near}, ahead={ahead}")
    poses = np.asarray(poses, dtype=np.float64)
    n = len(poses)
    idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    dirs = np.zeros((len(idx), 3))
    source = np.zeros(len(idx), dtype=np.int8)
    if len(idx) == 0:
        return dirs, source
    if idx.min() < 0 or idx.max() >= n:
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise IndexError(f"frame {bad} outside the {n} poses")
    pos = poses[:, :3, 3]
    if n < 2:
        dirs[:] = (0.0, 0.0, 1.0)
        source[:] = 2
        return dirs, source
    arc = _arc_lengths(pos)
    total = float(arc[-1])
    length = ahead - near
    for k, i in enumerate(idx):
        a = arc[i] + near
        b = arc[i] + ahead
        if b > total:
            b = total
            a = max(0.0, min(a, total - length))
            source[k] = 1 if a < arc[i] + near else 0
        d_world = _point_at(pos, arc, b) - _point_at(pos, arc, a)
        norm = float(np.linalg.norm(d_world))
        if norm < min_move:
            dirs[k] = (0.0, 0.0, 1.0)
            source[k] = 2
            continue
        dirs[k] = poses[i, :3, :3].T @ (d_world / norm)
    return dirs, source


def project_direction(P: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Pixel (x, y) of the point at infinity in direction ``d`` [.., 3] (camera frame) through the
    3x4 projection ``P``; the principal point when ``d`` is (almost) parallel to the image plane."""
    P = np.asarray(P, dtype=np.float64)
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    d = np.where(d[:, 2:3] < 0, -d, d)  # a line has one vanishing point: backwards == forwards
    flat = d[:, 2] < 1e-3
    d[flat] = (0.0, 0.0, 1.0)
    p = d @ P[:, :3].T
    return p[:, :2] / p[:, 2:3]


def pose_vanishing_points(poses: np.ndarray, P2: np.ndarray, indices=None, ahead: float = DEFAULT_AHEAD_M,
                          min_move: float = MIN_MOVE_M, near: float | None = None) -> np.ndarray:
    """[M, 2] image_2 pixels of the direction of travel of the frames ``indices`` (default all)."""
    dirs, _ = travel_directions(poses, indices, ahead=ahead, min_move=min_move, near=near)
    return project_direction(P2, dirs)
