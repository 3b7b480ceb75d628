"""Vanishing point of the road the car drives on, from ``poses.txt`` and ``calib.txt`` only.

Off junction corners, for frame ``i`` the road direction is the mean direction of the trajectory
over the stretch of road the camera sees best: from ``near`` to ``ahead`` metres further along the path (default 5 to
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

Junction corners (:func:`corners`): runs of frames where the heading changes faster than
1 / ``CORNER_RADIUS_M`` (15 m) per metre of path. Junction corner radii are ~4-12 m, the tightest
road bends and ramps ~20 m and more, so bends are followed along the curve while corners are not: the
window ahead of a frame ends at the next corner's start (the road before it), and a frame inside a
corner gets the road the corner joins that its camera faces more (the road it leaves, then the road
it enters), world-fixed, so that it slides across the image as the car yaws, as the street in view
does. The direction of travel itself sweeps 90 degrees there and leaves the image.

Corner cases (see docs/vp.md):

- fewer than ``ahead`` metres left at the end of the sequence: the window slides back so that it
  ends at the last pose and keeps its length (the previous motion); a sequence shorter than the
  window uses its whole path;
- standing still: the window is in metres travelled, so a car waiting at a light looks where it will
  go (one stopped at the end of the sequence, where it came from); a window that moves less than
  ``min_move`` metres in all gives the optical axis, i.e. the principal point;
- a direction (almost) parallel to the image plane (|z| < 1e-3 of its length) also gives the
  principal point; moving backwards gives the same vanishing point as moving forwards;
- a sequence starting (ending) inside a corner has no road before (after) it: the heading of the
  first (last) frame outside the corner, level.
"""

from __future__ import annotations

import numpy as np

DEFAULT_AHEAD_M = 15.0
"""Far end of the stretch of trajectory (metres ahead of the frame) giving the direction of travel."""

NEAR_FRACTION = 1.0 / 3.0
"""Near end of that stretch, as a fraction of ``ahead`` (5 m of the default 15 m)."""

MIN_MOVE_M = 1.0
"""Less motion than this is treated as standing still."""

CORNER_RADIUS_M = 15.0
"""Path curvature above 1 / this radius (heading change over ``2 * CORNER_HALF_SPAN_M`` of path) is a
junction corner, not a bend of the road (docs/vp.md: corner radii of junctions are ~4-12 m, the
tightest bends of roads and ramps ~20 m and more)."""

CORNER_HALF_SPAN_M = 1.5
"""Half the stretch of path over which the curvature is measured."""


def _arc_lengths(positions: np.ndarray) -> np.ndarray:
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)])


def _point_at(positions: np.ndarray, arc: np.ndarray, s: float) -> np.ndarray:
    """Position at arc length ``s`` along the path (linear interpolation between poses)."""
    k = int(np.clip(np.searchsorted(arc, s, side="right") - 1, 0, len(arc) - 2))
    span = arc[k + 1] - arc[k]
    t = 0.0 if span <= 0 else float(np.clip((s - arc[k]) / span, 0.0, 1.0))
    return positions[k] + t * (positions[k + 1] - positions[k])


def headings(poses: np.ndarray) -> np.ndarray:
    """Heading (yaw, radians, unwrapped) of each pose's optical axis in the world's ground plane.

    The world frame of KITTI ``poses.txt`` is the first cam0 frame (x right, y down, z forward), so
    the heading is the angle of the optical axis about y: ``atan2(z_x, z_z)``; positive = to the
    right of the first frame's axis."""
    poses = np.asarray(poses, dtype=np.float64)
    return np.unwrap(np.arctan2(poses[:, 0, 2], poses[:, 2, 2]))


def path_curvature(poses: np.ndarray, half_span: float = CORNER_HALF_SPAN_M) -> np.ndarray:
    """|d heading / d arc length| [N] at each pose, over the path from ``half_span`` metres before
    to ``half_span`` metres after it (clipped at the ends of the sequence; measured in metres
    travelled, so a car standing still gets the curvature of where it stands). Where less than
    ``half_span`` metres of path lie inside that span (a sequence that hardly moves) it is 0."""
    poses = np.asarray(poses, dtype=np.float64)
    n = len(poses)
    if n < 2:
        return np.zeros(n)
    arc = _arc_lengths(poses[:, :3, 3])
    yaw = headings(poses)
    total = float(arc[-1])
    out = np.zeros(n)
    for i in range(n):
        lo, hi = max(0.0, arc[i] - half_span), min(total, arc[i] + half_span)
        if hi - lo < half_span:
            continue
        out[i] = abs(_point_at(yaw, arc, hi) - _point_at(yaw, arc, lo)) / (hi - lo)
    return out


def corners(poses: np.ndarray, radius: float = CORNER_RADIUS_M,
            half_span: float = CORNER_HALF_SPAN_M) -> list[tuple[int, int]]:
    """Junction corners of the path: maximal runs of frames ``(first, last)`` (inclusive) whose
    path curvature exceeds ``1 / radius``."""
    sharp = path_curvature(poses, half_span) > 1.0 / radius
    runs, start = [], None
    for i, flag in enumerate(sharp):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(sharp) - 1))
    return runs


def _chord(pos: np.ndarray, arc: np.ndarray, a: float, b: float) -> np.ndarray:
    return _point_at(pos, arc, b) - _point_at(pos, arc, a)


def travel_directions(poses: np.ndarray, indices=None, ahead: float = DEFAULT_AHEAD_M,
                      min_move: float = MIN_MOVE_M, near: float | None = None,
                      corner_radius: float | None = CORNER_RADIUS_M) -> tuple[np.ndarray, np.ndarray]:
    """Unit direction of the road each frame drives on, in its own cam0 frame (docs/vp.md).

    ``poses``: [N, 4, 4] cam0-to-world (``read_poses``). Off corners, the direction of frame ``i`` is
    the mean tangent of the path between arc lengths ``s_i + near`` and ``s_i + ahead``, i.e. the
    chord between those two (interpolated) positions; ``near`` defaults to ``ahead / 3``. The window
    ends where the road ends: at the last pose, or at the start of the next junction corner (see
    :func:`corners`; ``corner_radius=None`` disables them); when it has to end earlier than
    ``s_i + ahead`` it slides back so that it keeps its length (the road before the corner, or the
    previous motion at the end of the sequence). A frame inside a corner gets the road the corner
    joins that its camera is closer to by heading: the road it leaves (the chord over the last
    ``ahead - near`` metres before the corner) or the road it enters (the chord over the first
    ``ahead - near`` metres after it); where that stretch is shorter than ``min_move`` (a sequence
    starting or ending in the corner), the heading of the frame just outside the corner, level.

    Returns (directions [M, 3], source [M]) for the frames ``indices`` (default: all), where source
    is 0 = the window ahead, 1 = window slid back at the end of the sequence, 2 = the window moves
    less than ``min_move`` in all (optical axis), 3 = in a corner, the road it leaves, 4 = in a
    corner, the road it enters, 5 = window slid back to end at a corner ahead.
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
    runs = corners(poses, corner_radius) if corner_radius else []
    corner_of = np.full(n, -1)
    for r, (first, last) in enumerate(runs):
        corner_of[first:last + 1] = r
    starts = np.array([arc[first] for first, _ in runs] + [np.inf])
    yaw = headings(poses)
    for k, i in enumerate(idx):
        r = corner_of[i]
        if r >= 0:
            first, last = runs[r]
            before, after = max(first - 1, 0), min(last + 1, n - 1)
            leave = abs(yaw[i] - yaw[before]) <= abs(yaw[i] - yaw[after])
            if leave:
                b = arc[before]
                d_world = _chord(pos, arc, max(0.0, b - length), b)
                ref = before
            else:
                a = arc[after]
                d_world = _chord(pos, arc, a, min(total, a + length))
                ref = after
            source[k] = 3 if leave else 4
            norm = float(np.linalg.norm(d_world))
            if norm < min_move:  # no road beyond the corner in this sequence: its heading, level
                d_world = np.array([np.sin(yaw[ref]), 0.0, np.cos(yaw[ref])])
                norm = 1.0
            dirs[k] = poses[i, :3, :3].T @ (d_world / norm)
            continue
        a = arc[i] + near
        b = arc[i] + ahead
        corner_at = float(starts[np.searchsorted(starts, arc[i], side="right")])
        end = min(total, corner_at)
        if b > end:
            b = end
            a = max(0.0, min(a, end - length))
            if a < arc[i] + near:
                source[k] = 5 if corner_at < total else 1
        d_world = _chord(pos, arc, a, b)
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


VISIBLE_NEAR_M, VISIBLE_FAR_M = 5.0, 20.0
"""The stretch of road ahead whose lines a KITTI image shows (it enters the image ~6 m ahead and is
resolved up to ~15-20 m): :func:`reference_spread` measures how much the road turns over it."""


def reference_spread(poses: np.ndarray, P2: np.ndarray, indices=None, near: float = VISIBLE_NEAR_M,
                     far: float = VISIBLE_FAR_M, step: float = 1.0) -> np.ndarray:
    """How well one vanishing point describes the road ahead of each frame [M] (pixels).

    The path's tangent at every ``step`` metres from ``near`` to ``far`` metres ahead (arc length;
    each tangent is the chord over +-``step`` m) is projected through ``P2`` as in
    :func:`pose_vanishing_points`; the spread is the largest distance between two of these points.
    On a straight road it is a few pixels; on a curve every piece of road seen has its own VP and the
    spread is the range over which image lines can legitimately point (a 22 m radius ramp: ~800 px);
    ``inf`` when a tangent turns more than 80 degrees away from the optical axis (a corner), where the
    road ahead has no VP in the image at all. Frames with less than ``far`` metres of path ahead use
    what is left (``inf`` when that is under ``step``)."""
    poses = np.asarray(poses, dtype=np.float64)
    n = len(poses)
    idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    out = np.full(len(idx), np.inf)
    if n < 2:
        return out
    pos = poses[:, :3, 3]
    arc = _arc_lengths(pos)
    total = float(arc[-1])
    cos_max = np.cos(np.radians(80.0))
    for k, i in enumerate(idx):
        stops = np.arange(arc[i] + near, arc[i] + far + 1e-9, step)
        stops = stops[stops + step <= total]
        if len(stops) == 0:
            continue
        d = np.array([_chord(pos, arc, s - step, s + step) for s in stops])
        norm = np.linalg.norm(d, axis=1)
        if np.any(norm < 1e-6):
            continue
        d = (d / norm[:, None]) @ poses[i, :3, :3]  # world -> camera i (R^T d for each row)
        if np.any(d[:, 2] < cos_max):
            continue
        vp = project_direction(P2, d)
        out[k] = float(np.max(np.linalg.norm(vp[:, None, :] - vp[None, :, :], axis=2)))
    return out


def pose_vanishing_points(poses: np.ndarray, P2: np.ndarray, indices=None, ahead: float = DEFAULT_AHEAD_M,
                          min_move: float = MIN_MOVE_M, near: float | None = None,
                          corner_radius: float | None = CORNER_RADIUS_M) -> np.ndarray:
    """[M, 2] image_2 pixels of the road direction (:func:`travel_directions`) of the frames
    ``indices`` (default all)."""
    dirs, _ = travel_directions(poses, indices, ahead=ahead, min_move=min_move, near=near,
                                corner_radius=corner_radius)
    return project_direction(P2, dirs)
