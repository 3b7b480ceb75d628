"""The helpers behind ``bench/bench_vp.py --references`` (the third pass of issue 13 item 6 in
docs/vp.md): the candidate pose references and the ``lines`` variants compute what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from occ_core.vp.lines import estimate_vp
from occ_core.vp.pose import pose_vanishing_points

REPO = Path(__file__).resolve().parents[2]
F, CX, CY = 718.856, 607.1928, 185.2157


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_vp", REPO / "bench" / "bench_vp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _P2() -> np.ndarray:
    return np.array([[F, 0.0, CX, 45.0], [0.0, F, CY, 0.0], [0.0, 0.0, 1.0, 0.0]])


def _circle(R: float, camera_yaw_offset: float = 0.0, step: float = 0.5, n: int = 200) -> np.ndarray:
    """Poses on a circle of radius R turning right (heading phi = s / R), the camera yawed by an offset."""
    s = np.arange(n) * step
    phi = s / R
    poses = np.tile(np.eye(4), (n, 1, 1))
    for k, a in enumerate(phi + camera_yaw_offset):
        c, si = np.cos(a), np.sin(a)
        poses[k, :3, :3] = [[c, 0.0, si], [0.0, 1.0, 0.0], [-si, 0.0, c]]
    poses[:, 0, 3] = R * (1 - np.cos(phi))
    poses[:, 2, 3] = R * np.sin(phi)
    return poses


def test_central_difference_is_the_tangent_at_the_frame_and_heading_is_the_axis(bench):
    """On a circle the chord over +-1 m is parallel to the tangent at the frame; a camera yawed 3 deg
    right of the tangent sees it 3 deg left of the axis, and its levelled heading is the principal
    point. The default reference lies further round the curve (its window is 5-15 m ahead)."""
    offset = np.radians(3.0)
    poses = _circle(30.0, camera_yaw_offset=offset)
    frames = [40, 80]
    refs = bench._pose_references(poses, _P2(), frames, 376)
    expected_x = CX + F * np.tan(-offset)
    assert np.allclose(refs["central difference (+-1 m)"][:, 0], expected_x, atol=0.5)
    assert np.allclose(refs["central difference (+-1 m)"][:, 1], CY, atol=1e-6)
    assert np.allclose(refs["car heading (levelled optical axis)"], [CX, CY], atol=1e-6)
    assert np.allclose(refs["default (5-15 m, corners)"], pose_vanishing_points(poses, _P2(), frames))
    # the mean direction 5-15 m ahead = the tangent 10 m ahead (+ 10 / R rad), seen from the yawed camera
    assert np.allclose(refs["default (5-15 m, corners)"][:, 0], CX + F * np.tan(10.0 / 30.0 - offset), atol=1.0)
    assert np.allclose(refs["plain chord 5-10 m"][:, 0], CX + F * np.tan(7.5 / 30.0 - offset), atol=1.0)
    # the road where the bottom row (376 px high image) sees it: F * 1.65 / (376 - CY) = 6.2 m ahead
    z = F * 1.65 / (376 - CY)
    assert np.allclose(refs["road where the image begins (tangent)"][:, 0], CX + F * np.tan(z / 30.0 - offset), atol=1.0)


def test_lines_variants_default_is_estimate_vp_and_near_variants_use_the_road_below(bench):
    """On a drawn road (four lane lines from the bottom edge towards the VP), 'all segments' is
    exactly ``estimate_vp`` and the near-road variants, which keep only the segments below the VP
    (all of them here), find the same point."""
    import cv2

    H, W = 376, 1241
    img = np.full((H, W), 90, np.uint8)
    vp = np.array([620.0, 180.0])
    for x_bottom in (150.0, 420.0, 820.0, 1090.0):  # lane lines from the bottom edge to the VP
        end = vp + 0.15 * (np.array([x_bottom, H - 1.0]) - vp)
        cv2.line(img, (int(x_bottom), H - 1), (int(end[0]), int(end[1])), 255, 3, cv2.LINE_AA)
    out = bench._lines_variants(img)
    ref = estimate_vp(img)
    assert ref is not None
    assert out["all segments (default)"] == ref.vp
    for name in ("segments below its VP", "lower half below its VP"):
        assert np.hypot(*(np.asarray(out[name]) - vp)) < 5.0, (name, out[name])
