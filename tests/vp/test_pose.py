"""Vanishing points of the direction of travel on hand-made trajectories."""

from __future__ import annotations

import numpy as np
import pytest

from occ_core.vp.pose import pose_vanishing_points, project_direction, travel_directions

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
