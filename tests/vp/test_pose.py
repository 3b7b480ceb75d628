"""Vanishing points of the direction of travel on hand-made trajectories."""

from __future__ import annotations

import numpy as np
import pytest

from occ_core.vp.pose import (corners, headings, path_curvature, pose_vanishing_points, project_direction,
                              travel_directions)

F, CX, CY = 718.856, 607.1928, 185.2157


def P2() -> np.ndarray:
    P = np.array([[F, 0.0, CX, 45.38225], [0.0, F, CY, -0.1130887], [0.0, 0.0, 1.0, 0.003779761]])
    return P


def rot_y(a: float) -> np.ndarray:
    """Rotation about the camera's y axis (down): positive turns z towards x (to the right)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def poses_from(positions: np.ndarray, yaws) -> np.ndarray:
    n = len(positions)
    out = np.tile(np.eye(4), (n, 1, 1))
    yaws = np.broadcast_to(np.asarray(yaws, dtype=float), (n,))
    for k in range(n):
        out[k, :3, :3] = rot_y(yaws[k])
        out[k, :3, 3] = positions[k]
    return out


def test_straight_ahead_is_the_principal_point_whatever_the_p2_shift():
    pos = np.column_stack([np.zeros(50), np.zeros(50), np.arange(50) * 1.0])
    vp = pose_vanishing_points(poses_from(pos, 0.0), P2())
    assert np.allclose(vp, [CX, CY], atol=1e-9)


@pytest.mark.parametrize("camera_yaw", [0.0, np.radians(4.0), np.radians(-7.0)])
def test_straight_trajectory_seen_from_a_yawed_camera(camera_yaw):
    heading = np.radians(10.0)  # travel direction in the world, camera yawed by camera_yaw
    s = np.arange(80) * 0.8
    pos = np.column_stack([s * np.sin(heading), 0.02 * s, s * np.cos(heading)])  # slight slope down (+y)
    vp = pose_vanishing_points(poses_from(pos, camera_yaw), P2())
    d = rot_y(camera_yaw).T @ np.array([np.sin(heading), 0.02, np.cos(heading)])
    expected = [CX + F * d[0] / d[2], CY + F * d[1] / d[2]]
    assert np.allclose(vp, expected, atol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_turning_trajectory_mean_tangent_between_near_and_ahead(sign):
    R, ahead, step = 60.0, 15.0, 0.1
    near = ahead / 3
    phi = np.arange(0, 1.2, step / R) * sign  # heading of the tangent
    pos = np.column_stack([sign * R * (1 - np.cos(phi)), np.zeros_like(phi), R * np.sin(np.abs(phi))])
    poses = poses_from(pos, phi)  # camera looks along the tangent
    i = 100
    vp = pose_vanishing_points(poses, P2(), [i], ahead=ahead)[0]
    # the chord from arc length a to b turns by (a + b) / (2R) from the tangent at the car: the
    # tangent at the middle of the window, 10 m ahead
    expected_x = CX + sign * F * np.tan((near + ahead) / (2 * R))
    assert abs(vp[0] - expected_x) < 0.2 and abs(vp[1] - CY) < 1e-6
    # at the end of the sequence the window slides back (keeping its 10 m): the previous motion,
    # whose middle is 5 m behind the car, so it turns the other way
    dirs, source = travel_directions(poses, [len(poses) - 1], ahead=ahead)
    assert source.tolist() == [1]
    x_end = project_direction(P2(), dirs)[0, 0]
    assert abs(x_end - (CX - sign * F * np.tan((ahead - near) / (2 * R)))) < 0.2


def test_standing_still_and_short_sequences():
    # never moving: the optical axis (principal point)
    still = poses_from(np.zeros((5, 3)), np.radians(20.0))
    dirs, source = travel_directions(still)
    assert source.tolist() == [2] * 5
    assert np.allclose(pose_vanishing_points(still, P2()), [CX, CY])
    # waiting, then driving off at 5 degrees to the right: the waiting frames look where it goes
    s = np.concatenate([np.zeros(10), np.arange(1, 60) * 1.0])
    heading = np.radians(5.0)
    pos = np.column_stack([s * np.sin(heading), np.zeros_like(s), s * np.cos(heading)])
    vp = pose_vanishing_points(poses_from(pos, 0.0), P2(), range(5))
    assert np.allclose(vp[:, 0], CX + F * np.tan(heading), atol=1e-6)
    # shorter than the window in all: the whole path (slid back for every frame)
    short = poses_from(np.column_stack([np.zeros(4), np.zeros(4), np.arange(4) * 1.0]), 0.0)
    dirs, source = travel_directions(short, ahead=20.0)
    assert np.allclose(dirs, [0, 0, 1]) and source.tolist() == [1, 1, 1, 1]
    with pytest.raises(IndexError):
        travel_directions(short, [4])


def test_backwards_and_sideways_directions():
    assert np.allclose(project_direction(P2(), [0.1, 0.0, -1.0]), project_direction(P2(), [-0.1, 0.0, 1.0]))
    assert np.allclose(project_direction(P2(), [1.0, 0.0, 0.0]), [[CX, CY]])


def test_real_frames_sanity(mini_root):
    from occ_core.data.formats import semantickitti as sk

    seq = mini_root / "dataset" / "sequences" / "00"
    poses = sk.read_poses(seq / "poses.txt")
    calib = sk.read_calib(seq / "calib.txt")
    vp = pose_vanishing_points(poses, calib["P2"], range(10))
    # a car driving down a straight street: near the image centre, on the horizon
    assert np.all((vp[:, 0] > 0.4 * 1241) & (vp[:, 0] < 0.6 * 1241)), vp
    assert np.all((vp[:, 1] > 150) & (vp[:, 1] < 200)), vp
    assert np.all(np.abs(np.diff(vp[:, 0])) < 10)  # smooth from frame to frame


def test_turn_beyond_the_window_does_not_move_the_reference():
    """A straight road with a 90-degree junction turn 16 m ahead: the 5-15 m window still sees the
    straight road (the principal point); a 20 m chord from the car would already swing ~20 px."""
    straight = np.column_stack([np.zeros(161), np.zeros(161), np.arange(161) * 0.1])  # 0..16 m
    phi = np.linspace(0, np.pi / 2, 80)[1:]
    r = 6.0
    turn = np.column_stack([-r * (1 - np.cos(phi)), np.zeros_like(phi), 16.0 + r * np.sin(phi)])
    pos = np.vstack([straight, turn, turn[-1] + np.outer(np.arange(1, 200) * 0.1, [-1.0, 0.0, 0.0])])
    poses = poses_from(pos, 0.0)  # the camera keeps looking down the road (only frame 0 matters)
    vp = pose_vanishing_points(poses, P2(), [0])[0]
    assert np.allclose(vp, [CX, CY], atol=1e-6)
    old = pose_vanishing_points(poses, P2(), [0], ahead=20.0, near=0.0)[0]
    assert CX - old[0] > 15  # the chord into the turn pulls the VP left


def test_window_follows_the_local_road_direction_on_a_winding_road():
    """On a sinusoidal road the reference is the road's mean direction 5-15 m ahead of the car,
    not the car's heading nor the chord to a far point."""
    s = np.arange(0, 400, 0.25)
    amp, wl = 4.0, 80.0
    x = amp * np.sin(2 * np.pi * s / wl)
    pos = np.column_stack([x, np.zeros_like(s), s])
    heading = np.arctan(amp * 2 * np.pi / wl * np.cos(2 * np.pi * s / wl))
    poses = poses_from(pos, heading)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pos, axis=0), axis=1))])

    def at(length):  # position at an arc length (the path is finely sampled: interpolate)
        return np.array([np.interp(length, arc, pos[:, j]) for j in range(3)])

    idx = np.arange(0, 1200, 40)
    vp = pose_vanishing_points(poses, P2(), idx)
    for k, i in enumerate(idx):
        ahead = at(arc[i] + 15.0) - at(arc[i] + 5.0)
        d = rot_y(heading[i]).T @ (ahead / np.linalg.norm(ahead))
        assert abs(vp[k, 0] - (CX + F * d[0] / d[2])) < 1.0
    with pytest.raises(ValueError):
        travel_directions(poses, [0], ahead=5.0, near=5.0)


def _corner_path(r: float = 6.0, straight: float = 30.0, step: float = 0.1, sign: float = -1.0):
    """Straight road along z for ``straight`` m, a 90-degree junction corner of radius ``r`` (to the
    left for sign -1), then a straight road along -x (or +x); the camera looks along the path."""
    s1 = np.arange(0.0, straight, step)
    p1 = np.column_stack([np.zeros_like(s1), np.zeros_like(s1), s1])
    phi = np.arange(step / r, np.pi / 2, step / r)
    p2 = np.column_stack([sign * r * (1 - np.cos(phi)), np.zeros_like(phi), straight + r * np.sin(phi)])
    s3 = np.arange(step, 40.0, step)
    p3 = np.column_stack([sign * (r + s3), np.zeros_like(s3), np.full_like(s3, straight + r)])
    yaw = np.concatenate([np.zeros_like(s1), sign * phi, np.full_like(s3, sign * np.pi / 2)])
    return poses_from(np.vstack([p1, p2, p3]), yaw), len(s1), len(s1) + len(phi)


def test_corner_ahead_ends_the_window_at_the_road_before_it():
    """A junction corner 8 m ahead (inside the 5-15 m window): the reference stays on the straight
    road (principal point) instead of swinging into the turn, as the plain chord does."""
    poses, first_corner_frame, _ = _corner_path(straight=30.0)
    i = first_corner_frame - 80  # 8 m before the corner
    runs = corners(poses)
    assert len(runs) == 1 and abs(runs[0][0] - first_corner_frame) <= 20  # found within ~2 m
    dirs, source = travel_directions(poses, [i])
    assert source.tolist() == [5]  # slid back to end at the corner
    assert np.allclose(pose_vanishing_points(poses, P2(), [i]), [[CX, CY]], atol=1e-6)
    chord = pose_vanishing_points(poses, P2(), [i], corner_radius=None)[0]
    assert CX - chord[0] > 50  # the plain 5-15 m chord cuts into the corner


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_in_a_corner_the_reference_is_the_road_the_camera_faces(sign):
    """Inside the corner the street left behind is world-fixed: it moves across the image opposite
    to the car's yaw (as image lines see it), until the car faces the road it enters more."""
    poses, c0, c1 = _corner_path(sign=sign)
    mid = (c0 + c1) // 2
    early, late = c0 + 10, c1 - 5
    dirs, source = travel_directions(poses, [early, late])
    assert source.tolist() == [3, 4]
    vp = pose_vanishing_points(poses, P2(), [early, late])
    yaw = headings(poses)
    # early in the corner: the road behind along world z, seen from a camera yawed by yaw[early]
    assert abs(vp[0, 0] - (CX + F * np.tan(-yaw[early]))) < 1.0
    # late: the road ahead along world +-x, yawed by yaw[late] - sign * 90 deg from the axis
    assert abs(vp[1, 0] - (CX + F * np.tan(sign * np.pi / 2 - yaw[late]))) < 1.0
    assert abs(yaw[mid] - sign * np.pi / 4) < np.radians(5)
    # the plain window goes far outside the image in the corner
    plain = pose_vanishing_points(poses, P2(), [early], corner_radius=None)[0]
    assert abs(plain[0] - CX) > 1000


def test_sequence_starting_in_a_corner_uses_the_first_heading_level():
    """No road before the corner in the sequence: the first frame's heading, level (y on the
    principal row when the camera is level)."""
    poses, c0, c1 = _corner_path(straight=0.0)
    runs = corners(poses)
    assert runs[0][0] == 0
    dirs, source = travel_directions(poses, [0, 5, 20])
    assert source.tolist() == [3, 3, 3]
    vp = pose_vanishing_points(poses, P2(), [0, 5, 20])
    yaw = headings(poses)
    assert np.allclose(vp[:, 0], CX + F * np.tan(yaw[0] - yaw[[0, 5, 20]]), atol=1e-6)
    assert np.allclose(vp[:, 1], CY, atol=1e-6)


def test_bends_of_roads_are_not_corners():
    """A 22 m radius ramp (KITTI 01) and the winding road above stay on the plain window; a car
    standing still or a single pose has no corner."""
    R, step = 22.0, 0.1
    phi = np.arange(0, 1.7, step / R)
    pos = np.column_stack([R * (1 - np.cos(phi)), np.zeros_like(phi), R * np.sin(phi)])
    poses = poses_from(pos, phi)
    assert corners(poses) == []
    assert np.allclose(path_curvature(poses)[20:-20], 1.0 / R, rtol=1e-3)
    assert np.allclose(pose_vanishing_points(poses, P2()), pose_vanishing_points(poses, P2(), corner_radius=None))
    assert corners(poses_from(np.zeros((5, 3)), 0.3)) == [] and corners(poses[:1]) == []
