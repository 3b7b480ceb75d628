"""Issue 13 item 6: calibration read per sequence, how confident ``lines`` is, and where a single
pose reference exists at all (``reference_spread``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from occ_core.data.formats import semantickitti as sk
from occ_core.vp import lines as L
from occ_core.vp.estimate import estimate_vps
from occ_core.vp.io import read_vp_dir
from occ_core.vp.pose import pose_vanishing_points, reference_spread

W, H = 1241, 376


def _P(fx: float, cx: float, cy: float, tx: float = 0.0) -> np.ndarray:
    return np.array([[fx, 0.0, cx, tx], [0.0, fx, cy, 0.0], [0.0, 0.0, 1.0, 0.0]])


def _rays(vp, n: int, r0: float, r1: float) -> np.ndarray:
    """``n`` segments on rays from ``vp``, from ``r0`` to ``r1`` pixels away, at 25-65 degrees."""
    ang = np.radians(np.concatenate([np.linspace(25, 65, (n + 1) // 2), np.linspace(115, 155, n // 2)]))
    u = np.column_stack([np.cos(ang), np.sin(ang)])
    return np.hstack([vp + r0 * u, vp + r1 * u])


def test_support_is_inlier_length_over_the_diagonal_and_sets_confident():
    vp = np.array([600.0, 180.0])
    long = L.estimate_vp_from_segments(_rays(vp, 12, 40, 200), (H, W))
    assert long is not None and long.confident
    assert np.hypot(*(np.array(long.vp) - vp)) < 1.0
    assert long.support == pytest.approx(long.score / np.hypot(H, W))
    assert long.support == pytest.approx(12 * 160 / np.hypot(H, W), rel=0.01)
    # the same VP from four short pieces: found, but not confident
    short = L.estimate_vp_from_segments(_rays(vp, 4, 40, 70), (H, W))
    assert short is not None and np.hypot(*(np.array(short.vp) - vp)) < 1.0
    assert short.support == pytest.approx(4 * 30 / np.hypot(H, W), rel=0.01)
    assert not short.confident
    relaxed = L.estimate_vp_from_segments(_rays(vp, 4, 40, 70), (H, W), L.LineVPConfig(min_support=0.0))
    assert relaxed.confident


def _write_sequence(root: Path, seq: str, images: list[np.ndarray], P2: np.ndarray, poses: np.ndarray) -> None:
    folder = root / "dataset" / "sequences" / seq
    (folder / "image_2").mkdir(parents=True)
    for k, img in enumerate(images):
        cv2.imwrite(str(folder / "image_2" / f"{k:06d}.png"), img)
    # P0 deliberately differs from P2 (in KITTI they share K): the VP must come from P2
    sk.write_calib(folder / "calib.txt", {"P0": _P(P2[0, 0], P2[0, 2] + 20.0, P2[1, 2] - 10.0), "P2": P2})
    sk.write_poses(folder / "poses.txt", poses)


def _straight(n: int, step: float = 1.0) -> np.ndarray:
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = step * np.arange(n)
    return poses


def test_each_sequence_uses_its_own_calibration(tmp_path: Path):
    """KITTI odometry has three calibrations (00-02, 03, 04-10): a straight drive must land on each
    sequence's own principal point; P2's fourth column (the baseline) must not matter."""
    blank = np.full((H, W), 100, np.uint8)
    calibs = {"00": _P(718.856, 607.1928, 185.2157, 45.38), "03": _P(721.5377, 609.5593, 172.854, 44.86),
              "07": _P(707.0912, 601.8873, 183.1104, 46.89)}
    for seq, P2 in calibs.items():
        _write_sequence(tmp_path / "data", seq, [blank] * 3, P2, _straight(40))
    estimate_vps(tmp_path / "data", tmp_path / "vp", method="pose", progress=False)
    got = read_vp_dir(tmp_path / "vp")
    for seq, P2 in calibs.items():
        for fid in ("000000", "000001", "000002"):
            assert got[(seq, fid)] == pytest.approx((P2[0, 2], P2[1, 2]), abs=1e-3), (seq, fid)
    assert np.allclose(pose_vanishing_points(_straight(40), calibs["00"]),
                       pose_vanishing_points(_straight(40), _P(718.856, 607.1928, 185.2157, -900.0)))


def test_driver_counts_low_confidence_frames(tmp_path: Path):
    rng = np.random.default_rng(0)
    vp = np.array([620.0, 190.0])

    def draw(segments):
        img = rng.normal(110, 8, (H, W)).clip(0, 255).astype(np.uint8)
        for x0, y0, x1, y1 in segments:
            cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), 235, 3, cv2.LINE_AA)
        return cv2.GaussianBlur(img, (3, 3), 0)

    strong, weak = draw(_rays(vp, 14, 40, 260)), draw(_rays(vp, 4, 60, 110))
    assert L.estimate_vp(strong).confident and not L.estimate_vp(weak).confident
    _write_sequence(tmp_path / "data", "00", [strong, weak, strong], _P(718.856, 607.19, 185.2), _straight(3))
    summary = estimate_vps(tmp_path / "data", tmp_path / "vp", method="lines", progress=False)
    assert summary["low_confidence"] == 1 and summary["fallbacks"] == 0
    assert len(read_vp_dir(tmp_path / "vp")) == 3  # low-confidence frames keep their estimate


def _circle(radius: float, n: int, step: float = 0.5, sign: float = 1.0) -> np.ndarray:
    """cam0 poses driving on a circle (turning right for sign > 0), camera along the tangent."""
    theta = sign * step * np.arange(n) / radius
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 0, 3] = sign * radius * (1 - np.cos(theta))
    poses[:, 2, 3] = radius * np.sin(np.abs(theta))
    c, s = np.cos(theta), np.sin(theta)
    poses[:, 0, 0], poses[:, 0, 2], poses[:, 2, 0], poses[:, 2, 2] = c, s, -s, c
    return poses


def test_reference_spread_straight_curve_and_corner():
    P2 = _P(718.856, 607.1928, 185.2157)
    assert np.all(reference_spread(_straight(60, 0.5), P2, range(5)) < 1e-6)
    for sign in (1.0, -1.0):
        spread = reference_spread(_circle(50.0, 200, sign=sign), P2, [0, 10])
        # tangents 5 and 20 m ahead on a 50 m circle: 0.1 and 0.4 rad from the heading
        assert spread == pytest.approx(718.856 * (np.tan(0.4) - np.tan(0.1)), rel=1e-3)
    # a 10 m corner: 20 m of it turns the road 115 degrees, so the road ahead has no VP in the image
    assert np.all(np.isinf(reference_spread(_circle(10.0, 200), P2, [0, 5])))
    # the end of the sequence: what is left of the path; nothing left -> inf
    tail = reference_spread(_straight(60, 0.5), P2, [45, 59])
    assert tail[0] < 1e-6 and np.isinf(tail[1])
