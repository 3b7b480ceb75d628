"""Line-based vanishing points on rendered perspective images of known VP."""

from __future__ import annotations

import numpy as np
import pytest

import cv2  # noqa: E402  (a dependency: a missing cv2 fails, it does not skip)

from occ_core.vp import lines as L  # noqa: E402

W, H = 1241, 376


def render_perspective(vp: tuple[float, float], seed: int = 0, n_lines: int = 40, n_clutter: int = 25,
                       size: tuple[int, int] = (W, H)) -> np.ndarray:
    """Grey noise with ``n_lines`` bright segments on rays from ``vp`` (both sides of it, various
    lengths and distances) and ``n_clutter`` random segments that point nowhere in particular."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = rng.normal(110, 12, (h, w)).clip(0, 255).astype(np.uint8)
    vx, vy = vp
    drawn = 0
    while drawn < n_lines:
        ang = rng.uniform(0, 2 * np.pi)
        deg = np.degrees(ang) % 180
        if min(deg, 180 - deg) < 15 or abs(deg - 90) < 15:
            continue
        r0 = rng.uniform(40, 500)
        r1 = r0 + rng.uniform(60, 300)
        p0 = (vx + r0 * np.cos(ang), vy + r0 * np.sin(ang))
        p1 = (vx + r1 * np.cos(ang), vy + r1 * np.sin(ang))
        ok, a, b = cv2.clipLine((0, 0, w, h), tuple(int(round(v * 16)) // 16 for v in p0),
                                tuple(int(round(v * 16)) // 16 for v in p1))
        if not ok or np.hypot(b[0] - a[0], b[1] - a[1]) < 40:
            continue
        colour = int(rng.choice([20, 235]))
        cv2.line(img, (int(round(p0[0] * 16)), int(round(p0[1] * 16))), (int(round(p1[0] * 16)), int(round(p1[1] * 16))),
                 colour, 2, cv2.LINE_AA, shift=4)
        drawn += 1
    for _ in range(n_clutter):
        a = rng.uniform((0, 0), (w, h))
        ang = rng.uniform(0, np.pi)
        b = a + rng.uniform(40, 150) * np.array([np.cos(ang), np.sin(ang)])
        cv2.line(img, tuple(int(v) for v in a), tuple(int(v) for v in b), int(rng.choice([20, 235])), 2, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (3, 3), 0)


@pytest.mark.parametrize("vp,seed", [((640.0, 180.0), 0), ((520.5, 200.25), 1), ((760.0, 160.0), 2)])
def test_rendered_image_vp_within_a_few_pixels(vp, seed):
    result = L.estimate_vp(render_perspective(vp, seed))
    assert result is not None
    err = np.hypot(result.vp[0] - vp[0], result.vp[1] - vp[1])
    assert err < 3.0, (result.vp, vp)
    assert result.n_inliers >= 20


def test_colour_input_and_hough_detector():
    vp = (600.0, 190.0)
    grey = render_perspective(vp, 3)
    colour = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    r = L.estimate_vp(colour)
    assert r is not None and np.hypot(r.vp[0] - vp[0], r.vp[1] - vp[1]) < 3.0
    r = L.estimate_vp(grey, L.LineVPConfig(detector="hough", scale=1.0))
    assert r is not None and np.hypot(r.vp[0] - vp[0], r.vp[1] - vp[1]) < 6.0


def _segments_towards(vp, n, rng, noise_deg=0.3):
    segs = []
    while len(segs) < n:
        ang = rng.uniform(0, 2 * np.pi)
        deg = np.degrees(ang) % 180
        if min(deg, 180 - deg) < 15 or abs(deg - 90) < 15:
            continue
        r0 = rng.uniform(50, 400)
        length = rng.uniform(40, 200)
        a = ang + np.radians(rng.normal(0, noise_deg))
        mid = np.array(vp) + (r0 + length / 2) * np.array([np.cos(ang), np.sin(ang)])
        d = 0.5 * length * np.array([np.cos(a), np.sin(a)])
        segs.append(np.concatenate([mid - d, mid + d]))
    return np.array(segs)


def test_robust_to_outlier_segments():
    rng = np.random.default_rng(7)
    vp = (615.0, 182.0)
    inliers = _segments_towards(vp, 40, rng)
    # as many outliers, as long, pointing anywhere, plus a second weaker pencil elsewhere
    mids = rng.uniform((0, 0), (W, H), (60, 2))
    ang = rng.uniform(0, np.pi, 60)
    half = rng.uniform(20, 100, 60)[:, None] * np.column_stack([np.cos(ang), np.sin(ang)])
    outliers = np.hstack([mids - half, mids + half])
    decoy = _segments_towards((250.0, 120.0), 15, rng)
    segs = np.vstack([inliers, outliers, decoy])[rng.permutation(115)]
    r = L.estimate_vp_from_segments(segs, (H, W))
    assert r is not None
    assert np.hypot(r.vp[0] - vp[0], r.vp[1] - vp[1]) < 2.0, r.vp
    assert r.n_inliers >= 30


def test_filter_drops_short_horizontal_and_vertical():
    segs = np.array([
        [0, 0, 100, 100],      # 45 degrees, long: kept
        [0, 0, 100, 3],        # near horizontal
        [0, 0, 3, 100],        # near vertical
        [0, 0, 5, 5],          # too short
    ], dtype=float)
    kept = L.filter_segments(segs, (H, W), min_length=0.015, min_angle=10)
    assert kept.tolist() == [[0, 0, 100, 100]]


def test_least_squares_is_exact_on_exact_lines():
    rng = np.random.default_rng(1)
    vp = np.array([400.0, 150.0])
    segs = _segments_towards(vp, 10, rng, noise_deg=0.0)
    p = L.least_squares_vp(L._line_params(segs), vp + 25.0)
    assert np.allclose(p, vp, atol=1e-6)


def test_blank_image_gives_none():
    assert L.estimate_vp(np.full((H, W), 128, np.uint8)) is None
    assert L.estimate_vp(np.zeros((1, 1), np.uint8)) is None
    assert L.estimate_vp_from_segments(np.zeros((0, 4)), (H, W)) is None


def test_real_frames_near_horizon(mini_root):
    seq = mini_root / "dataset" / "sequences" / "00" / "image_2"
    img = cv2.imread(str(seq / "000000.png"))
    r = L.estimate_vp(img)
    assert r is not None
    x, y = r.vp
    assert 0.35 * img.shape[1] < x < 0.65 * img.shape[1] and 150 < y < 210, r.vp


def _rays(vp, angles_deg, r0=80.0, r1=260.0):
    """Segments [N, 4] on rays from ``vp`` at the given angles (degrees, image y down)."""
    a = np.radians(np.asarray(angles_deg, dtype=float))
    d = np.column_stack([np.cos(a), np.sin(a)])
    return np.hstack([np.asarray(vp) + r0 * d, np.asarray(vp) + r1 * d])


def test_near_horizontal_clutter_is_ignored():
    """Road lines (steeper than 20 degrees) converge at the VP; a bundle of longer near-horizontal
    edges (kerb texture, shadows: 12-17 degrees) converges far to the right. The road wins."""
    road = _rays((600.0, 180.0), [35, 50, 65, 115, 130, 145])
    clutter = _rays((1150.0, 150.0), [167, 168, 169, 192, 193], r0=150.0, r1=600.0)
    r = L.estimate_vp_from_segments(np.vstack([road, clutter]), (H, W))
    assert r is not None and np.hypot(r.vp[0] - 600.0, r.vp[1] - 180.0) < 1.0
    old = L.estimate_vp_from_segments(np.vstack([road, clutter]), (H, W), L.LineVPConfig(min_angle=10.0))
    assert old is not None and old.vp[0] > 1000  # the former 10-degree filter let the clutter win


def test_vp_stays_in_the_horizon_band():
    """Tree branches converging high above the horizon (y = 60) carry more length than the road
    lines; the VP is searched, RANSAC'd and refined only inside the band (30-70 % of the height)."""
    road = _rays((620.0, 185.0), [30, 45, 60, 120, 135, 150])
    branches = _rays((500.0, 60.0), [25, 40, 55, 125, 140, 155, 70, 110], r0=60.0, r1=400.0)
    r = L.estimate_vp_from_segments(np.vstack([road, branches]), (H, W))
    assert r is not None and np.hypot(r.vp[0] - 620.0, r.vp[1] - 185.0) < 1.0
    band = L.DEFAULT_CONFIG.region
    assert band[1] * H <= r.vp[1] < band[3] * H


def test_low_contrast_image_is_equalised_before_detection():
    """A dark road image (edges a few grey levels high, as under trees): LSD finds too few
    segments on it, the CLAHE re-detection finds the road lines and their vanishing point."""
    H, W, vp = 240, 640, (330.0, 110.0)
    img = np.full((H, W), 12, np.uint8)
    rng = np.random.default_rng(0)
    for x_bottom in (-200, 60, 250, 420, 600, 860):  # lines from the bottom edge to the VP
        cv2.line(img, (x_bottom, H - 1), (int(vp[0]), int(vp[1])), 15, 3, cv2.LINE_AA)
    img = np.clip(img.astype(np.int16) + rng.integers(0, 2, img.shape), 0, 255).astype(np.uint8)
    img[: int(vp[1]) + 5] = 12  # nothing above the horizon
    plain = L.estimate_vp(img, L.LineVPConfig(equalize_below=0))
    r = L.estimate_vp(img)
    assert plain is None or np.hypot(plain.vp[0] - vp[0], plain.vp[1] - vp[1]) > 5
    assert r is not None and np.hypot(r.vp[0] - vp[0], r.vp[1] - vp[1]) < 5, r and r.vp
    # a well-exposed image is not equalised: same result with and without the fallback
    bright = (img.astype(np.int16) - 12) * 40 + 60
    bright = np.clip(bright, 0, 255).astype(np.uint8)
    a, b = L.estimate_vp(bright), L.estimate_vp(bright, L.LineVPConfig(equalize_below=0))
    assert a is not None and a.vp == b.vp
