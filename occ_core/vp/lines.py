"""Dominant vanishing point of a road image from its line segments (no calibration needed).

Pipeline (:func:`estimate_vp`):

1. **Segments**: OpenCV's LSD (``cv2.createLineSegmentDetector``) on the grey image, downscaled
   by ``scale``; where the OpenCV build lacks LSD, Canny + probabilistic Hough (``HoughLinesP``).
2. **Filter**: drop segments shorter than ``min_length`` (fraction of the image diagonal) and those
   within ``min_angle`` (20) degrees of horizontal or vertical. Building verticals and poles carry no
   information on a forward vanishing point; near-horizontal edges (shadows and texture on the road,
   far kerbs, the side road of a junction) fix its x badly and, being many, outvoted the road on
   real KITTI frames (docs/vp.md). A road line at lateral offset X from a camera h high meets the
   VP at a slope of atan(h / X): with h = 1.65 m, the lines of the ego lane and its neighbours
   (X < 4.5 m) are all steeper than 20 degrees.
3. **Vote**: intersections of all pairs of the longest segments that fall in the plausible region
   (``region``, fractions of width and height), weighted by both lengths and the sine of the angle
   between them, and only when the point lies beyond the ends of both segments, are accumulated in a
   grid of ``cell`` pixels, smoothed; the few highest peaks are scored by the length-weighted number
   of segments pointing at them and the best one wins.
4. **Refine**: RANSAC over the segments consistent with the peak (pairs drawn by length; support =
   length of the segments whose direction is within ``inlier_deg`` of the direction to the
   hypothesis), then iteratively reweighted least squares of the point minimising the squared
   angular distances (distance to each inlier line divided by its distance from the segment) to the
   inlier lines.

The plausible region (``region``) is a horizon band, 30-70 % of the image height (and -25 % to
125 % of the width): the road VP of a forward-looking car camera lies near the horizon, i.e. near
the principal row (image centre when uncalibrated); grades and pitch move it by well under 20 % of
the height. The vote, the RANSAC hypotheses and the least-squares point are all kept inside it (a
refinement that leaves it is discarded), so that tree branches or roof lines converging high above
the road, or shadows below it, cannot pull the estimate off the horizon.

**Low contrast**: LSD's gradient threshold is absolute, so in a dark or washed-out image (a road
under trees, sequence 09) few edges survive. When fewer than ``equalize_below`` (20) usable segments
are found, detection is redone on the CLAHE-equalised image. It is not applied to every image:
equalising also amplifies shadow edges and asphalt texture, which made well-exposed frames worse
(sequence 05: median 8.5 -> 20.8 px against the pose reference, docs/vp.md).

**Confidence**: ``LineVPResult.support`` is the total length of the inlier segments over the image
diagonal, and ``confident`` says whether it reaches ``min_support`` (0.3). A road in a tight curve,
a corner or a dark image gives a VP resting on two or three short pieces of edge; it is still
returned (the best guess from the image), but flagged, and ``occ vp-estimate`` counts such frames.

Returns ``None`` when the image has too few usable segments; callers choose the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_LSD = None
_LSD_OK: bool | None = None


@dataclass
class LineVPConfig:
    """Parameters of :func:`estimate_vp` (defaults tuned on KITTI-size road images)."""

    scale: float = 0.5
    """Downscale factor applied before segment detection (results are in full-image pixels)."""
    detector: str = "auto"
    """'lsd', 'hough' or 'auto' (LSD when this OpenCV build has it)."""
    min_length: float = 0.015
    """Minimum segment length, fraction of the image diagonal."""
    min_angle: float = 20.0
    """Segments within this many degrees of horizontal or vertical are dropped (see the module
    docstring: road lines of the ego lane and its neighbours are steeper than 20 degrees)."""
    max_segments: int = 200
    """The longest segments used for pairwise voting."""
    region: tuple[float, float, float, float] = (-0.25, 0.3, 1.25, 0.7)
    """Plausible VP region (x0, y0, x1, y1) as fractions of width and height; the vote, the RANSAC
    hypotheses and the refined point all stay inside it (a horizon band: see the module docstring)."""
    cell: float = 8.0
    """Voting grid cell size in full-image pixels."""
    peaks: int = 5
    """Vote peaks scored by segment consistency."""
    coarse_deg: float = 4.0
    """Angular tolerance for the segments handed to RANSAC."""
    inlier_deg: float = 1.5
    """Angular tolerance of RANSAC support and the least-squares inliers."""
    ransac_iters: int = 128
    equalize_below: int = 20
    """When fewer usable segments (after the filter) than this are found, detection is redone on
    the contrast-equalised image (CLAHE) and that is used (0 disables it); see the module docstring."""
    clahe_clip: float = 2.0
    """CLAHE clip limit of that second detection (OpenCV's default tile grid of 8 x 8)."""
    min_segments: int = 4
    min_support: float = 0.3
    """A result is ``confident`` when its inlier segments add up to at least this fraction of the
    image diagonal (``LineVPResult.support``); below it the VP rests on a few short pieces of edge
    and is reported as a low-confidence guess (the figures behind 0.3 are in docs/vp.md)."""
    seed: int = 0


DEFAULT_CONFIG = LineVPConfig()


# --------------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------------


def lsd_available() -> bool:
    """Whether this OpenCV build has a working line segment detector."""
    global _LSD_OK, _LSD
    if _LSD_OK is None:
        try:
            _LSD = cv2.createLineSegmentDetector(cv2.LSD_REFINE_STD, 1.0)
            probe = np.zeros((32, 32), np.uint8)
            probe[8:24, 8:24] = 255
            _LSD.detect(probe)
            _LSD_OK = True
        except (cv2.error, AttributeError):
            _LSD, _LSD_OK = None, False
    return bool(_LSD_OK)


def to_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {image.shape}")
    if image.dtype != np.uint8:
        image = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return image


def detect_segments(image: np.ndarray, scale: float = 0.5, detector: str = "auto") -> np.ndarray:
    """Line segments [N, 4] (x1, y1, x2, y2) in full-image pixels, float64."""
    gray = to_gray(image)
    if min(gray.shape) * scale < 8:  # nothing to find in a thumbnail
        return np.zeros((0, 4))
    if scale != 1.0:
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    else:
        small = gray
    use_lsd = detector == "lsd" or (detector == "auto" and lsd_available())
    if detector not in ("auto", "lsd", "hough"):
        raise ValueError(f"unknown detector '{detector}' (expected auto, lsd or hough)")
    if use_lsd:
        if not lsd_available():
            raise RuntimeError("this OpenCV build has no line segment detector (use detector='hough')")
        lines = _LSD.detect(small)[0]
    else:
        edges = cv2.Canny(small, 60, 150, L2gradient=True)
        min_len = max(8, int(0.015 * np.hypot(*small.shape)))
        lines = cv2.HoughLinesP(edges, 1, np.pi / 360, threshold=max(10, min_len // 2),
                                minLineLength=min_len, maxLineGap=2)
    if lines is None or len(lines) == 0:
        return np.zeros((0, 4))
    return lines.reshape(-1, 4).astype(np.float64) / scale


def filter_segments(segments: np.ndarray, shape: tuple[int, int], min_length: float = 0.015,
                    min_angle: float = 10.0) -> np.ndarray:
    """Segments at least ``min_length`` x diagonal long and not within ``min_angle`` degrees of
    horizontal or vertical."""
    seg = np.asarray(segments, dtype=np.float64).reshape(-1, 4)
    dx = seg[:, 2] - seg[:, 0]
    dy = seg[:, 3] - seg[:, 1]
    length = np.hypot(dx, dy)
    angle = np.degrees(np.arctan2(np.abs(dy), np.abs(dx)))  # 0 = horizontal, 90 = vertical
    keep = (length >= min_length * float(np.hypot(*shape[:2]))) & (angle >= min_angle) & (angle <= 90.0 - min_angle)
    return seg[keep]


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _line_params(seg: np.ndarray):
    """Midpoints [N, 2], unit directions [N, 2], lengths [N], unit normals [N, 2], offsets c [N]
    with normal . p + c = 0 on the line."""
    p1, p2 = seg[:, :2], seg[:, 2:]
    d = p2 - p1
    length = np.linalg.norm(d, axis=1)
    u = d / np.maximum(length, 1e-12)[:, None]
    normal = np.column_stack([-u[:, 1], u[:, 0]])
    mid = 0.5 * (p1 + p2)
    c = -np.sum(normal * mid, axis=1)
    return mid, u, length, normal, c


def angular_errors(seg_params, points: np.ndarray) -> np.ndarray:
    """sin of the angle between each segment and the direction from its midpoint to each point.

    ``points`` [M, 2] -> [M, N]."""
    mid, u, _, _, _ = seg_params
    w = points[:, None, :] - mid[None, :, :]
    r = np.linalg.norm(w, axis=2)
    cross = np.abs(w[..., 0] * u[None, :, 1] - w[..., 1] * u[None, :, 0])
    return cross / np.maximum(r, 1e-9)


def _support(seg_params, points: np.ndarray, sin_thr: float) -> np.ndarray:
    """Length-weighted soft inlier score of each point [M]."""
    err = angular_errors(seg_params, points)
    length = seg_params[2]
    return np.sum(length[None, :] * np.clip(1.0 - err / sin_thr, 0.0, None), axis=1)


def intersect(n1, c1, n2, c2) -> tuple[np.ndarray, np.ndarray]:
    """Intersections of lines n . p + c = 0: points [K, 2] and |det| [K] (sine of their angle)."""
    det = n1[:, 0] * n2[:, 1] - n1[:, 1] * n2[:, 0]
    safe = np.where(np.abs(det) < 1e-12, 1e-12, det)
    x = (n1[:, 1] * c2 - n2[:, 1] * c1) / safe
    y = (n2[:, 0] * c1 - n1[:, 0] * c2) / safe
    return np.column_stack([x, y]), np.abs(det)


def least_squares_vp(seg_params, start: np.ndarray, iters: int = 3) -> np.ndarray:
    """Point minimising sum_i len_i * (dist(p, line_i) / r_i)^2 (squared angular errors), where
    r_i is the distance of segment i's midpoint from the current estimate (reweighted)."""
    mid, _, length, normal, c = seg_params
    p = np.asarray(start, dtype=np.float64)
    for _ in range(iters):
        r2 = np.maximum(np.sum((mid - p) ** 2, axis=1), 1.0)
        w = length / r2
        A = (normal * w[:, None]).T @ normal
        b = -(normal * w[:, None]).T @ c
        if abs(np.linalg.det(A)) < 1e-12 * max(1.0, np.trace(A) ** 2):
            break
        p = np.linalg.solve(A, b)
    return p


# --------------------------------------------------------------------------------------------
# Estimation
# --------------------------------------------------------------------------------------------


@dataclass
class LineVPResult:
    vp: tuple[float, float]
    n_segments: int
    n_inliers: int
    score: float
    """Total length (full-image pixels) of the inlier segments."""
    segments: np.ndarray
    inliers: np.ndarray
    support: float = 0.0
    """``score`` as a fraction of the image diagonal (scale-free)."""
    confident: bool = True
    """``support >= LineVPConfig.min_support``: enough straight edge points at the VP."""


def _inside(points: np.ndarray, shape, region) -> np.ndarray:
    H, W = shape[:2]
    return ((points[:, 0] >= region[0] * W) & (points[:, 0] < region[2] * W)
            & (points[:, 1] >= region[1] * H) & (points[:, 1] < region[3] * H))


def _vote(seg: np.ndarray, params, shape, cfg: LineVPConfig) -> np.ndarray:
    """Candidate points [P, 2] from the pairwise-intersection voting grid, best vote first."""
    H, W = shape[:2]
    mid, u, length, normal, c = params
    order = np.argsort(-length)[: cfg.max_segments]
    i, j = np.triu_indices(len(order), k=1)
    i, j = order[i], order[j]
    pts, sin = intersect(normal[i], c[i], normal[j], c[j])
    x0, y0, x1, y1 = cfg.region[0] * W, cfg.region[1] * H, cfg.region[2] * W, cfg.region[3] * H
    ok = (sin > np.sin(np.radians(2.0))) & (pts[:, 0] >= x0) & (pts[:, 0] < x1) & (pts[:, 1] >= y0) & (pts[:, 1] < y1)
    # the vanishing point lies beyond the ends of both segments, not between them
    for s in (i, j):
        t = np.sum((pts - mid[s]) * u[s], axis=1)
        ok &= np.abs(t) > 0.5 * length[s]
    if not np.any(ok):
        return np.zeros((0, 2))
    pts = pts[ok]
    weight = length[i[ok]] * length[j[ok]] * sin[ok]
    nx = max(1, int(np.ceil((x1 - x0) / cfg.cell)))
    ny = max(1, int(np.ceil((y1 - y0) / cfg.cell)))
    grid, _, _ = np.histogram2d(pts[:, 1], pts[:, 0], bins=(ny, nx), range=((y0, y1), (x0, x1)), weights=weight)
    grid = cv2.GaussianBlur(grid.astype(np.float32), (0, 0), 1.0)
    # local maxima, best first
    dil = cv2.dilate(grid, np.ones((5, 5), np.uint8))
    peak = (grid >= dil) & (grid > 0)
    ys, xs = np.nonzero(peak)
    if len(ys) == 0:
        return np.zeros((0, 2))
    best = np.argsort(-grid[ys, xs])[: cfg.peaks]
    return np.column_stack([x0 + (xs[best] + 0.5) * cfg.cell, y0 + (ys[best] + 0.5) * cfg.cell])


def estimate_vp_from_segments(segments: np.ndarray, shape: tuple[int, int],
                              config: LineVPConfig | None = None) -> LineVPResult | None:
    """Dominant VP from already detected segments [N, 4] of an image of ``shape`` (H, W[, C])."""
    cfg = config or DEFAULT_CONFIG
    seg = filter_segments(segments, shape, cfg.min_length, cfg.min_angle)
    if len(seg) < cfg.min_segments:
        return None
    params = _line_params(seg)
    cands = _vote(seg, params, shape, cfg)
    if len(cands) == 0:
        return None
    coarse_sin = np.sin(np.radians(cfg.coarse_deg))
    fine_sin = np.sin(np.radians(cfg.inlier_deg))
    scores = _support(params, cands, coarse_sin)
    vp = cands[int(np.argmax(scores))]

    # RANSAC over the segments consistent with the peak
    err = angular_errors(params, vp[None])[0]
    cand = np.nonzero(err < coarse_sin)[0]
    if len(cand) < 2:
        return None
    sub = tuple(a[cand] for a in params)
    mid, u, length, normal, c = sub
    rng = np.random.default_rng(cfg.seed)
    prob = length / length.sum()
    a = rng.choice(len(cand), size=cfg.ransac_iters, p=prob)
    b = rng.choice(len(cand), size=cfg.ransac_iters, p=prob)
    keep = a != b
    hyp, sin = intersect(normal[a[keep]], c[a[keep]], normal[b[keep]], c[b[keep]])
    hyp = hyp[(sin > 1e-3) & _inside(hyp, shape, cfg.region)]
    hyp = np.vstack([vp[None], hyp])
    sup = np.sum(length[None, :] * (angular_errors(sub, hyp) < fine_sin), axis=1)
    best = hyp[int(np.argmax(sup))]

    # least squares on the inliers of the best hypothesis, re-selecting inliers once
    for _ in range(2):
        inl = angular_errors(sub, best[None])[0] < fine_sin
        if inl.sum() < 2:
            break
        refined = least_squares_vp(tuple(x[inl] for x in sub), best)
        if not (np.all(np.isfinite(refined)) and _inside(refined[None], shape, cfg.region)[0]):
            break  # the least-squares point left the plausible region: keep the RANSAC one
        best = refined
    inl = angular_errors(sub, best[None])[0] < fine_sin
    if not np.all(np.isfinite(best)):
        return None
    score = float(np.sum(length[inl]))
    support = score / float(np.hypot(*shape[:2]))
    return LineVPResult(vp=(float(best[0]), float(best[1])), n_segments=len(seg), n_inliers=int(inl.sum()),
                        score=score, segments=seg, inliers=seg[cand[inl]], support=support,
                        confident=bool(support >= cfg.min_support))


def equalize(gray: np.ndarray, clip: float = 2.0) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (CLAHE, 8 x 8 tiles) of a grey image."""
    return cv2.createCLAHE(clipLimit=clip, tileGridSize=(8, 8)).apply(to_gray(gray))


def estimate_vp(image: np.ndarray, config: LineVPConfig | None = None) -> LineVPResult | None:
    """Dominant vanishing point (x, y) in pixels of ``image`` (BGR or grey), or None."""
    cfg = config or DEFAULT_CONFIG
    gray = to_gray(image)
    segments = detect_segments(gray, scale=cfg.scale, detector=cfg.detector)
    usable = len(filter_segments(segments, gray.shape, cfg.min_length, cfg.min_angle))
    if cfg.equalize_below > 0 and usable < cfg.equalize_below:
        segments = detect_segments(equalize(gray, cfg.clahe_clip), scale=cfg.scale, detector=cfg.detector)
    return estimate_vp_from_segments(segments, gray.shape, cfg)
