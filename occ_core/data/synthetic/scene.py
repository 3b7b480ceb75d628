"""Procedural street scenes: a curving road, its cross-section profile, the objects along it and
the car's trajectory.

The scene lives in a metric *scene frame*: x, y on the flat ground (z = 0), z up. The road is a
smooth centreline parametrised by arc length ``s``; every ground point has road coordinates
``(s, d)`` (``d`` positive to the left of the driving direction). The cross-section on each side
is, from the centreline outward::

    lanes (road) | parking lane (optional) | curb | sidewalk | terrain strip (optional) | lot

and it changes from segment to segment (25-55 m each, with short linear ramps between them).
Objects are analytic primitives (oriented boxes, vertical cylinders, ellipsoids; yaw only).

Everything is generated from per-segment random streams, so a scene's first kilometre is the
same whatever length is requested: a dataset generated with more frames extends, never changes,
the one generated with fewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Raw SemanticKITTI ids used by the generator.
CAR, BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE, PERSON, BICYCLIST, MOTORCYCLIST = 10, 11, 15, 18, 20, 30, 31, 32
ROAD, PARKING, SIDEWALK, OTHER_GROUND, BUILDING, FENCE = 40, 44, 48, 49, 50, 51
VEGETATION, TRUNK, TERRAIN, POLE, SIGN = 70, 71, 72, 80, 81

# Primitive kinds.
BOX, CYL, ELL = 0, 1, 2

# Materials (texture + shading models, see render.py).
(M_BUILDING, M_CARBODY, M_GLASS, M_WHEEL, M_TRUCK, M_CLOTH, M_SKIN, M_BIKE, M_LEAVES, M_BARK,
 M_METAL, M_SIGN, M_FENCE, M_HEDGE) = range(14)

# Label priority when primitives overlap in the voxel target (higher wins).
_PRIORITY = {VEGETATION: 0, TERRAIN: 0, BUILDING: 1, FENCE: 2, TRUNK: 3, POLE: 4, SIGN: 5,
             TRUCK: 6, CAR: 6, OTHER_VEHICLE: 6, BICYCLE: 7, MOTORCYCLE: 7, PERSON: 8, BICYCLIST: 8, MOTORCYCLIST: 8}

THING_CLASSES = (CAR, BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE, PERSON, BICYCLIST, MOTORCYCLIST)

CROSSING_PROB = 0.15
"""Probability that a segment has a cross street (an intersection: road across the whole lot)."""
CROSSING_HALF = (3.5, 7.0)
"""Half-width range (m) of a cross street's carriageway; a 2 m raised sidewalk borders it."""
CROSS_WALK = 2.0
MEDIAN_PROB = 0.35
"""Probability that a segment of a two-lane-per-direction road has a raised central median (other-ground)."""
MEDIAN_HALF = 0.5
GRAVEL_PROB = 0.4
"""Probability that a paved lot is other-ground (gravel / paved yard) rather than sidewalk-like paving."""

VELO_HEIGHT = 1.73
"""Height of the LiDAR above the ground (m)."""

S_START = -80.0
"""Arc length where the generated road begins (scan 0 is at s = 0)."""

SEGMENT_LENGTH = (25.0, 55.0)
RAMP = 3.0  # half-length of the linear width transition between segments


def _seed_seq(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------


@dataclass
class Prims:
    """Structure of arrays of analytic primitives."""

    kind: np.ndarray  # int8 [n]
    c: np.ndarray  # float64 [n, 3] centre (scene frame)
    yaw: np.ndarray  # float64 [n]
    h: np.ndarray  # float64 [n, 3] half extents (cylinder: r, r, half height)
    raw: np.ndarray  # uint16 [n] raw SemanticKITTI id
    inst: np.ndarray  # uint16 [n] instance id (0 for stuff)
    mat: np.ndarray  # uint8 [n] material
    color: np.ndarray  # float32 [n, 3] base albedo (linear RGB 0..1)
    style: np.ndarray  # float32 [n] per-primitive random number for texture variation

    def __len__(self) -> int:
        return len(self.kind)

    def subset(self, idx: np.ndarray) -> "Prims":
        return Prims(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @property
    def radius_xy(self) -> np.ndarray:
        """Radius of a vertical cylinder around the primitive's centre enclosing it."""
        r = np.hypot(self.h[:, 0], self.h[:, 1])
        return np.where(self.kind == CYL, self.h[:, 0], r)

    def corners(self) -> np.ndarray:
        """[n, 8, 3] corners of each primitive's oriented bounding box (scene frame)."""
        sx = np.array([-1, 1, -1, 1, -1, 1, -1, 1], dtype=np.float64)
        sy = np.array([-1, -1, 1, 1, -1, -1, 1, 1], dtype=np.float64)
        sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1], dtype=np.float64)
        lx = sx[None] * self.h[:, :1]
        ly = sy[None] * self.h[:, 1:2]
        lz = sz[None] * self.h[:, 2:3]
        cy, sn = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        return np.stack([self.c[:, :1] + cy * lx - sn * ly, self.c[:, 1:2] + sn * lx + cy * ly,
                         self.c[:, 2:3] + lz], axis=2)


class _PrimList:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, kind, c, yaw, h, raw, inst, mat, color, style) -> None:
        self.rows.append((kind, tuple(map(float, c)), float(yaw), tuple(map(float, h)), raw, inst, mat,
                          tuple(map(float, color)), float(style)))

    def build(self) -> Prims:
        rows = self.rows
        if not rows:
            z = np.zeros
            return Prims(z(0, np.int8), z((0, 3)), z(0), z((0, 3)), z(0, np.uint16), z(0, np.uint16),
                         z(0, np.uint8), z((0, 3), np.float32), z(0, np.float32))
        return Prims(
            np.array([r[0] for r in rows], np.int8), np.array([r[1] for r in rows], np.float64),
            np.array([r[2] for r in rows], np.float64), np.array([r[3] for r in rows], np.float64),
            np.array([r[4] for r in rows], np.uint16), np.array([r[5] for r in rows], np.uint16),
            np.array([r[6] for r in rows], np.uint8), np.array([r[7] for r in rows], np.float32),
            np.array([r[8] for r in rows], np.float32))


# --------------------------------------------------------------------------------------------
# Road centreline and cross-section
# --------------------------------------------------------------------------------------------


@dataclass
class SideProfile:
    park: float  # parking lane width (0 = none)
    walk: float  # sidewalk width
    terr: float  # terrain strip width (0 = none)
    raised: bool  # curb (everything beyond the parking lane raised by the curb height)
    setback: float  # distance from the end of the strip to building fronts
    density: float  # probability of a building per slot
    height: tuple[float, float]  # building height range
    trees: bool  # tree-lined street
    boundary: int  # property line: 0 none, 1 fence, 2 hedge, 3 shrub belt
    paved_lot: bool  # lot ground paved (sidewalk) instead of terrain
    people: float  # pedestrians per 10 m of sidewalk
    fill: float  # fraction of parking slots taken


@dataclass
class Segment:
    start: float
    end: float
    sides: tuple[SideProfile, SideProfile]  # (left d > 0, right d < 0)


class Road:
    """Centreline sampled every ``DS`` metres, plus the per-side cross-section functions of s."""

    DS = 0.25

    def __init__(self, rng: np.random.Generator, s_end: float, seed_key: tuple[int, ...]):
        self.lane_w = float(rng.uniform(3.2, 3.7))
        self.lanes = int(rng.choice([1, 1, 2]))  # lanes per direction
        self.curb = 0.15
        kmax = float(rng.uniform(1.0 / 2000.0, 1.0 / 250.0))  # radius >= 250 m
        self._kparams = [(float(rng.uniform(0.3, 1.0)), float(rng.uniform(150, 450)), float(rng.uniform(0, 2 * np.pi)))
                         for _ in range(2)]
        norm = sum(a for a, _, _ in self._kparams)
        self._kparams = [(kmax * a / norm, L, p) for a, L, p in self._kparams]
        self.theta0 = float(rng.uniform(-np.pi, np.pi))

        # Segments, each from its own random stream.
        segs: list[Segment] = []
        s = S_START
        k = 0
        while s < s_end:
            srng = _seed_seq(*seed_key, 1000 + k)
            length = float(srng.uniform(*SEGMENT_LENGTH))
            segs.append(Segment(s, s + length, (_side_profile(srng), _side_profile(srng))))
            s += length
            k += 1
        self.segments = segs
        self.s_min, self.s_max = S_START, segs[-1].end

        # Intersections, medians and gravel lots: one more stream per segment.
        cross_s, cross_h, median, gravel = [], [], [], []
        for k, seg in enumerate(segs):
            xrng = _seed_seq(*seed_key, 3000 + k)
            if xrng.uniform() < CROSSING_PROB and seg.end - seg.start > 2 * (CROSSING_HALF[1] + CROSS_WALK + 2):
                h = float(xrng.uniform(*CROSSING_HALF))
                m = h + CROSS_WALK + 2.0
                cross_s.append(float(xrng.uniform(seg.start + m, seg.end - m)))
                cross_h.append(h)
            median.append(bool(self.lanes == 2 and xrng.uniform() < MEDIAN_PROB))
            gravel.append((bool(xrng.uniform() < GRAVEL_PROB), bool(xrng.uniform() < GRAVEL_PROB)))
        self.cross_s = np.asarray(cross_s, dtype=np.float64)
        self.cross_h = np.asarray(cross_h, dtype=np.float64)
        self._median = np.asarray(median, dtype=bool)
        self._gravel = (np.array([g[0] for g in gravel]), np.array([g[1] for g in gravel]))

        # Centreline.
        n0 = int(round(-self.s_min / self.DS))
        n1 = int(math.ceil(self.s_max / self.DS))
        ss = np.arange(-n0, n1 + 1) * self.DS
        th = self.heading(ss)
        cx, cy = np.cos(th), np.sin(th)
        x = np.zeros_like(ss)
        y = np.zeros_like(ss)
        fx = 0.5 * (cx[1:] + cx[:-1]) * self.DS
        fy = 0.5 * (cy[1:] + cy[:-1]) * self.DS
        x[n0 + 1:] = np.cumsum(fx[n0:])
        y[n0 + 1:] = np.cumsum(fy[n0:])
        x[:n0] = -np.cumsum(fx[:n0][::-1])[::-1]
        y[:n0] = -np.cumsum(fy[:n0][::-1])[::-1]
        self.ss, self.xs, self.ys, self.ths = ss, x, y, th
        self._build_profile_tables()
        self._build_coarse_grid()

    # ---- centreline -------------------------------------------------------------------------

    def heading(self, s):
        s = np.asarray(s, dtype=np.float64)
        th = np.full_like(s, self.theta0)
        for a, L, p in self._kparams:
            w = 2 * np.pi / L
            th = th - a / w * (np.cos(w * s + p) - np.cos(p))
        return th

    def point(self, s):
        """(x, y, heading) of the centreline at arc length s (linear interpolation)."""
        s = np.asarray(s, dtype=np.float64)
        f = (s - self.ss[0]) / self.DS
        i = np.clip(np.floor(f).astype(np.int64), 0, len(self.ss) - 2)
        w = f - i
        x = self.xs[i] + w * (self.xs[i + 1] - self.xs[i])
        y = self.ys[i] + w * (self.ys[i + 1] - self.ys[i])
        th = self.ths[i] + w * (self.ths[i + 1] - self.ths[i])
        return x, y, th

    def to_xy(self, s, d):
        x, y, th = self.point(s)
        return x - np.sin(th) * d, y + np.cos(th) * d, th

    def _build_coarse_grid(self) -> None:
        step = 2.0
        m = 110.0
        self.gx0, self.gy0 = self.xs.min() - m, self.ys.min() - m
        nx = int((self.xs.max() + m - self.gx0) / step) + 2
        ny = int((self.ys.max() + m - self.gy0) / step) + 2
        self.gstep = step
        gx = self.gx0 + np.arange(nx) * step
        gy = self.gy0 + np.arange(ny) * step
        X, Y = np.meshgrid(gx, gy, indexing="ij")
        pts = np.stack([X.ravel(), Y.ravel()], 1)
        sub = slice(None, None, 8)  # centreline every 2 m
        cs = np.stack([self.xs[sub], self.ys[sub]], 1)
        best = np.empty(len(pts))
        for a in range(0, len(pts), 4096):
            d2 = ((pts[a:a + 4096, None, :] - cs[None]) ** 2).sum(-1)
            best[a:a + 4096] = self.ss[sub][np.argmin(d2, axis=1)]
        self.grid_s = best.reshape(nx, ny)

    def sd(self, x, y, iters: int = 3):
        """Road coordinates (s, d) of scene points (nearest centreline point, Newton refined)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        fx = np.clip((x - self.gx0) / self.gstep, 0, self.grid_s.shape[0] - 1.001)
        fy = np.clip((y - self.gy0) / self.gstep, 0, self.grid_s.shape[1] - 1.001)
        ix, iy = fx.astype(np.int64), fy.astype(np.int64)
        wx, wy = fx - ix, fy - iy
        g = self.grid_s
        s = ((1 - wx) * ((1 - wy) * g[ix, iy] + wy * g[ix, iy + 1])
             + wx * ((1 - wy) * g[ix + 1, iy] + wy * g[ix + 1, iy + 1]))
        lo, hi = self.ss[0], self.ss[-1]
        for _ in range(iters):
            px, py, th = self.point(s)
            tx, ty = np.cos(th), np.sin(th)
            s = np.clip(s + (x - px) * tx + (y - py) * ty, lo, hi)
        px, py, th = self.point(s)
        d = -(x - px) * np.sin(th) + (y - py) * np.cos(th)
        return s, d

    # ---- cross-section ------------------------------------------------------------------------

    def _build_profile_tables(self) -> None:
        knots, vals = [], {k: ([], []) for k in ("park", "walk", "terr", "setback")}
        starts = []
        for seg in self.segments:
            knots += [seg.start + RAMP, seg.end - RAMP]
            starts.append(seg.start)
            for key in vals:
                for side in (0, 1):
                    vals[key][side].extend([getattr(seg.sides[side], key)] * 2)
        self._knots = np.asarray(knots)
        self._vals = {k: (np.asarray(v[0]), np.asarray(v[1])) for k, v in vals.items()}
        self._starts = np.asarray(starts)
        self._raised = (np.array([s.sides[0].raised for s in self.segments]),
                        np.array([s.sides[1].raised for s in self.segments]))
        self._paved = (np.array([s.sides[0].paved_lot for s in self.segments]),
                       np.array([s.sides[1].paved_lot for s in self.segments]))

    def crossing(self, s):
        """(offset from the nearest cross street's axis along s, its half-width); half-width 0 without one."""
        s = np.asarray(s, dtype=np.float64)
        cs, n = self.cross_s, len(self.cross_s)
        if n == 0:
            return np.full(s.shape, np.inf), np.zeros(s.shape)
        i = np.clip(np.searchsorted(cs, s), 0, n - 1)
        j = np.clip(i - 1, 0, n - 1)
        i = np.where(np.abs(s - cs[j]) < np.abs(s - cs[i]), j, i)
        return np.abs(s - cs[i]), self.cross_h[i]

    def blocked(self, s0: float, s1: float, pad: float = 0.5) -> bool:
        """Whether the stretch [s0, s1] of the roadside overlaps a cross street or its sidewalks."""
        return self.clear_after(s0, s1, pad) is not None

    def clear_after(self, s0: float, s1: float, pad: float = 0.5) -> float | None:
        """Where the last cross street overlapping [s0, s1] (with its sidewalks and ``pad``) ends; None if none does."""
        if len(self.cross_s) == 0:
            return None
        lo, hi = min(s0, s1), max(s0, s1)
        reach = self.cross_h + CROSS_WALK + pad
        hit = (self.cross_s + reach > lo) & (self.cross_s - reach < hi)
        return float(np.max((self.cross_s + reach)[hit])) if hit.any() else None

    def width(self, key: str, side: int, s):
        return np.interp(s, self._knots, self._vals[key][side])

    def segment_index(self, s):
        return np.clip(np.searchsorted(self._starts, s, side="right") - 1, 0, len(self.segments) - 1)

    @property
    def road_half(self) -> float:
        return self.lanes * self.lane_w

    def edges(self, s, left):
        """Outer edges (|d|) of road, parking, sidewalk and terrain strip at s, for the side mask."""
        e_road = np.full(np.shape(s), self.road_half)
        e = [e_road]
        for key in ("park", "walk", "terr"):
            w = np.where(left, self.width(key, 0, s), self.width(key, 1, s))
            e.append(e[-1] + w)
        return e

    def ground(self, s, d):
        """Raw class, surface height and marking intensity of the ground at (s, d)."""
        left = d >= 0
        a = np.abs(d)
        e_road, e_park, e_walk, e_terr = self.edges(s, left)
        seg = self.segment_index(s)
        raised = np.where(left, self._raised[0][seg], self._raised[1][seg])
        paved = np.where(left, self._paved[0][seg], self._paved[1][seg])
        gravel = np.where(left, self._gravel[0][seg], self._gravel[1][seg])
        lot = np.where(paved, np.where(gravel, OTHER_GROUND, SIDEWALK), TERRAIN)
        cls = np.where(a < e_road, ROAD, np.where(a < e_park, PARKING, np.where(
            a < e_walk, SIDEWALK, np.where(a < e_terr, TERRAIN, lot))))
        height = np.where(raised & (a >= e_park), self.curb, 0.0)
        # Central median (two lanes per direction): a raised strip of other-ground.
        med = self._median[seg] & (a < MEDIAN_HALF)
        cls = np.where(med, OTHER_GROUND, cls)
        height = np.where(med, self.curb, height)
        # Cross streets: carriageway across everything beyond the main road, bordered by raised sidewalks.
        off, half = self.crossing(s)
        street = (off < half) & (a >= e_road)
        walk = (off >= half) & (off < half + CROSS_WALK) & (a >= e_park)
        cls = np.where(street, ROAD, np.where(walk, SIDEWALK, cls))
        height = np.where(street, 0.0, np.where(walk, self.curb, height))
        return cls.astype(np.uint16), height

    def markings(self, s, d):
        """White paint coverage (0..1) on the road and parking lanes at (s, d)."""
        a = np.abs(d)
        lw = 0.12
        paint = np.zeros(np.shape(s), dtype=np.float32)
        dash = (np.mod(s, 9.0) < 3.0)
        if self.lanes == 1:
            paint = np.maximum(paint, (a < lw / 2) & dash)
        else:
            paint = np.maximum(paint, (np.abs(a - 0.12) < lw / 2))
            paint = np.maximum(paint, (np.abs(a - self.lane_w) < lw / 2) & dash)
        left = d >= 0
        park = np.where(left, self.width("park", 0, s), self.width("park", 1, s))
        edge = self.road_half - 0.25
        paint = np.maximum(paint, (np.abs(a - edge) < 0.08) & (park < 0.5))
        bay = (a > self.road_half) & (a < self.road_half + park) & (np.mod(s, 5.5) < 0.12)
        paint = np.maximum(paint, bay & (park > 0.5))
        return paint.astype(np.float32)


def _side_profile(rng: np.random.Generator) -> SideProfile:
    urban = rng.uniform() < 0.65
    return SideProfile(
        park=float(2.3 if rng.uniform() < 0.55 else 0.0),
        walk=float(rng.uniform(1.6, 3.8)),
        terr=float(0.0 if (urban and rng.uniform() < 0.6) else rng.uniform(1.0, 6.0)),
        raised=bool(rng.uniform() < 0.65),
        setback=float(rng.uniform(0.0, 1.5) if urban else rng.uniform(1.5, 8.0)),
        density=float(rng.uniform(0.6, 1.0) if urban else rng.uniform(0.0, 0.5)),
        height=(6.0, 18.0) if urban else (4.0, 9.0),
        trees=bool(rng.uniform() < (0.55 if urban else 0.85)),
        boundary=int(rng.choice([0, 1, 2, 3], p=[0.15, 0.25, 0.25, 0.35] if urban else [0.1, 0.15, 0.25, 0.5])),
        paved_lot=bool(urban and rng.uniform() < 0.5),
        people=float(rng.uniform(0.0, 0.5) if urban else rng.uniform(0.0, 0.15)),
        fill=float(rng.uniform(0.2, 0.9)),
    )


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------

_CAR_COLORS = np.array([[0.6, 0.6, 0.62], [0.08, 0.08, 0.09], [0.85, 0.85, 0.85], [0.45, 0.05, 0.05],
                        [0.1, 0.15, 0.4], [0.3, 0.32, 0.35], [0.55, 0.5, 0.4], [0.15, 0.3, 0.2]])
_FENCES = np.array([[0.42, 0.3, 0.18], [0.5, 0.5, 0.5], [0.18, 0.3, 0.2], [0.25, 0.25, 0.27], [0.6, 0.55, 0.45]])
_FACADES = np.array([[0.75, 0.68, 0.55], [0.6, 0.35, 0.25], [0.8, 0.78, 0.72], [0.55, 0.55, 0.52],
                     [0.7, 0.55, 0.4], [0.45, 0.4, 0.38], [0.82, 0.75, 0.6], [0.5, 0.28, 0.2]])


class _Builder:
    def __init__(self, road: Road):
        self.road = road
        self.p = _PrimList()
        self.next_inst = 1

    def inst(self) -> int:
        i = self.next_inst
        self.next_inst += 1
        return i

    def frame(self, s, d, dyaw=0.0):
        x, y, th = self.road.to_xy(float(s), float(d))
        _, h = self.road.ground(np.array([s]), np.array([d]))
        return float(x), float(y), float(h[0]), float(th) + dyaw

    def local(self, x, y, yaw, lx, ly):
        c, s = math.cos(yaw), math.sin(yaw)
        return x + c * lx - s * ly, y + s * lx + c * ly

    # -- vehicles -----------------------------------------------------------------------------
    def car(self, rng, s, d, dyaw, raw=CAR):
        x, y, z0, yaw = self.frame(s, d, dyaw)
        L, W, H = rng.uniform(3.9, 4.7), rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.6)
        col = _CAR_COLORS[rng.integers(len(_CAR_COLORS))] * rng.uniform(0.85, 1.1)
        i, st = self.inst(), rng.uniform()
        zb = z0 + 0.22
        body_h = 0.55 * H - 0.22 + 0.1
        self.p.add(BOX, (x, y, zb + body_h / 2), yaw, (L / 2, W / 2, body_h / 2), raw, i, M_CARBODY, col, st)
        cab_l = 0.5 * L
        cx, cy = self.local(x, y, yaw, -0.05 * L, 0)
        cab_h = z0 + H - (zb + body_h)
        self.p.add(BOX, (cx, cy, zb + body_h + cab_h / 2), yaw, (cab_l / 2, W / 2 - 0.08, cab_h / 2), raw, i,
                   M_GLASS, col, st)
        for fx in (-0.32, 0.32):
            for fy in (-1, 1):
                wx, wy = self.local(x, y, yaw, fx * L, fy * (W / 2 - 0.12))
                self.p.add(ELL, (wx, wy, z0 + 0.32), yaw, (0.32, 0.11, 0.32), raw, i, M_WHEEL, (0.05, 0.05, 0.05), st)

    def truck(self, rng, s, d, dyaw):
        x, y, z0, yaw = self.frame(s, d, dyaw)
        L, W = rng.uniform(7.0, 9.5), rng.uniform(2.4, 2.55)
        H = rng.uniform(3.0, 3.6)
        i, st = self.inst(), rng.uniform()
        col = np.array([0.85, 0.85, 0.82]) if rng.uniform() < 0.5 else _CAR_COLORS[rng.integers(len(_CAR_COLORS))]
        cab = 2.0
        bx, by = self.local(x, y, yaw, -cab / 2, 0)
        self.p.add(BOX, (bx, by, z0 + 0.5 + (H - 0.5) / 2), yaw, ((L - cab) / 2, W / 2, (H - 0.5) / 2), TRUCK, i,
                   M_TRUCK, col, st)
        cx, cy = self.local(x, y, yaw, L / 2 - cab / 2, 0)
        ccol = _CAR_COLORS[rng.integers(len(_CAR_COLORS))]
        self.p.add(BOX, (cx, cy, z0 + 0.45 + 1.2), yaw, (cab / 2 - 0.05, W / 2 - 0.05, 1.2), TRUCK, i, M_CARBODY, ccol, st)
        for fx in (-0.35, 0.05, 0.4):
            for fy in (-1, 1):
                wx, wy = self.local(x, y, yaw, fx * L, fy * (W / 2 - 0.15))
                self.p.add(ELL, (wx, wy, z0 + 0.48), yaw, (0.48, 0.14, 0.48), TRUCK, i, M_WHEEL, (0.05, 0.05, 0.05), st)

    def van_or_bus(self, rng, s, d, dyaw):
        """other-vehicle: a van (5-6 m) or a bus (10-12.5 m)."""
        x, y, z0, yaw = self.frame(s, d, dyaw)
        bus = rng.uniform() < 0.4
        L = rng.uniform(10.0, 12.5) if bus else rng.uniform(5.0, 6.0)
        W = rng.uniform(2.45, 2.55) if bus else rng.uniform(1.95, 2.1)
        H = rng.uniform(2.9, 3.3) if bus else rng.uniform(2.0, 2.5)
        i, st = self.inst(), rng.uniform()
        col = _CAR_COLORS[rng.integers(len(_CAR_COLORS))] * rng.uniform(0.85, 1.1)
        self.p.add(BOX, (x, y, z0 + 0.3 + (H - 0.3) / 2), yaw, (L / 2, W / 2, (H - 0.3) / 2), OTHER_VEHICLE, i,
                   M_TRUCK if bus else M_CARBODY, col, st)
        wx_ = (-0.38, 0.38) if bus else (-0.34, 0.34)
        for fx in wx_:
            for fy in (-1, 1):
                wx, wy = self.local(x, y, yaw, fx * L, fy * (W / 2 - 0.15))
                self.p.add(ELL, (wx, wy, z0 + 0.42), yaw, (0.42, 0.13, 0.42), OTHER_VEHICLE, i, M_WHEEL,
                           (0.05, 0.05, 0.05), st)

    def motorcycle(self, rng, x, y, z0, yaw, raw=MOTORCYCLE, inst=None):
        i = inst if inst is not None else self.inst()
        st = rng.uniform()
        col = _CAR_COLORS[rng.integers(len(_CAR_COLORS))] * rng.uniform(0.85, 1.1)
        for fx in (-0.7, 0.7):
            wx, wy = self.local(x, y, yaw, fx, 0)
            self.p.add(ELL, (wx, wy, z0 + 0.32), yaw, (0.32, 0.07, 0.32), raw, i, M_WHEEL, (0.05, 0.05, 0.05), st)
        self.p.add(BOX, (x, y, z0 + 0.62), yaw, (0.6, 0.18, 0.2), raw, i, M_CARBODY, col, st)
        hx, hy = self.local(x, y, yaw, 0.55, 0)
        self.p.add(BOX, (hx, hy, z0 + 1.0), yaw, (0.05, 0.38, 0.04), raw, i, M_BIKE, col, st)
        return i

    def person(self, rng, x, y, z0, yaw, raw=PERSON, inst=None):
        i = inst if inst is not None else self.inst()
        st = rng.uniform()
        h = rng.uniform(1.6, 1.9)
        k = h / 1.75
        cloth = rng.uniform(0.05, 0.7, 3)
        legs = rng.uniform(0.05, 0.4, 3)
        for fy in (-0.1, 0.1):
            lx, ly = self.local(x, y, yaw, 0, fy)
            self.p.add(CYL, (lx, ly, z0 + 0.43 * k), yaw, (0.085, 0.085, 0.43 * k), raw, i, M_CLOTH, legs, st)
        self.p.add(ELL, (x, y, z0 + 1.17 * k), yaw, (0.16, 0.26, 0.34 * k), raw, i, M_CLOTH, cloth, st)
        self.p.add(ELL, (x, y, z0 + 1.62 * k), yaw, (0.1, 0.09, 0.12 * k), raw, i, M_SKIN, (0.7, 0.5, 0.38), st)

    def bicycle(self, rng, x, y, z0, yaw, raw=BICYCLE, inst=None):
        i = inst if inst is not None else self.inst()
        st = rng.uniform()
        col = rng.uniform(0.05, 0.8, 3)
        for fx in (-0.52, 0.52):
            wx, wy = self.local(x, y, yaw, fx, 0)
            self.p.add(ELL, (wx, wy, z0 + 0.34), yaw, (0.34, 0.03, 0.34), raw, i, M_WHEEL, (0.05, 0.05, 0.05), st)
        self.p.add(BOX, (x, y, z0 + 0.62), yaw, (0.45, 0.03, 0.05), raw, i, M_BIKE, col, st)
        hx, hy = self.local(x, y, yaw, 0.45, 0)
        self.p.add(BOX, (hx, hy, z0 + 0.95), yaw, (0.04, 0.28, 0.03), raw, i, M_BIKE, col, st)
        return i

    # -- street furniture and vegetation ---------------------------------------------------------
    def pole(self, rng, x, y, z0, height, r=0.1):
        self.p.add(CYL, (x, y, z0 + height / 2), 0.0, (r, r, height / 2), POLE, 0, M_METAL, (0.45, 0.46, 0.48), rng.uniform())

    def sign(self, rng, x, y, z0, yaw):
        self.pole(rng, x, y, z0, 2.6, 0.04)
        kind = rng.integers(3)
        col = [(0.75, 0.1, 0.1), (0.1, 0.25, 0.7), (0.85, 0.7, 0.1)][kind]
        size = rng.uniform(0.3, 0.42)
        self.p.add(ELL if kind == 0 else BOX, (x, y, z0 + 2.3), yaw + np.pi / 2, (0.04, size, size), SIGN, 0, M_SIGN,
                   col, rng.uniform())

    def tree(self, rng, x, y, z0, scale=1.0):
        th = rng.uniform(1.5, 3.0) * scale
        tr = rng.uniform(0.12, 0.25) * scale
        bark = np.array([0.3, 0.22, 0.15]) * rng.uniform(0.7, 1.2)
        self.p.add(CYL, (x, y, z0 + th / 2 + 0.3), 0.0, (tr, tr, th / 2 + 0.3), TRUNK, 0, M_BARK, bark, rng.uniform())
        rx = rng.uniform(1.6, 3.2) * scale
        rz = rng.uniform(1.5, 3.0) * scale
        leaf = np.array([0.16, 0.3, 0.08]) * rng.uniform(0.7, 1.25, 3)
        zc = z0 + th + rz * 0.7
        self.p.add(ELL, (x, y, zc), rng.uniform(0, np.pi), (rx, rx * rng.uniform(0.75, 1.0), rz),
                   VEGETATION, 0, M_LEAVES, leaf, rng.uniform())
        # A second, offset lobe makes the crown irregular.
        a = rng.uniform(0, 2 * np.pi)
        r2 = rx * rng.uniform(0.5, 0.8)
        self.p.add(ELL, (x + 0.6 * rx * np.cos(a), y + 0.6 * rx * np.sin(a), zc + rng.uniform(-0.3, 0.6) * rz),
                   rng.uniform(0, np.pi), (r2, r2 * 0.9, r2 * 0.85), VEGETATION, 0, M_LEAVES, leaf * rng.uniform(0.85, 1.15),
                   rng.uniform())

    def bush(self, rng, x, y, z0, big=False):
        r = rng.uniform(1.0, 2.2) if big else rng.uniform(0.5, 1.4)
        leaf = np.array([0.15, 0.28, 0.08]) * rng.uniform(0.7, 1.2, 3)
        self.p.add(ELL, (x, y, z0 + r * 0.6), rng.uniform(0, np.pi), (r, r * 0.8, r * 0.8), VEGETATION, 0, M_LEAVES,
                   leaf, rng.uniform())


def _traffic_lane(road: Road, side: int, rng: np.random.Generator) -> float:
    """|d| of a moving vehicle's lane centre: the outer lane on the right (side 1), a random lane on the left."""
    return (road.lanes - 0.5) * road.lane_w if side == 1 else rng.integers(road.lanes) * road.lane_w + road.lane_w / 2


def _populate_segment(b: _Builder, seg: Segment, rng: np.random.Generator) -> None:
    road = b.road
    L = seg.end - seg.start
    for side, sgn in ((0, 1.0), (1, -1.0)):
        prof = seg.sides[side]
        mid = 0.5 * (seg.start + seg.end)
        e_road, e_park, e_walk, e_terr = (float(v) for v in road.edges(np.array(mid), np.array(side == 0)))

        # Parked cars / trucks in the parking lane.
        if prof.park > 0:
            s = seg.start + RAMP + rng.uniform(0.5, 4.0)
            while s < seg.end - RAMP - 3.0:
                if road.blocked(s - 1.0, s + 11.0):
                    s += 3.0
                    continue
                if rng.uniform() < prof.fill:
                    u = rng.uniform()
                    if u < 0.07:
                        b.motorcycle(rng, *b.frame(s + 1.0, sgn * (road.road_half + 1.15), (0 if sgn < 0 else np.pi)
                                                   + rng.normal(0, 0.1)))
                        s += rng.uniform(2.5, 3.5)
                    elif u < 0.13:
                        b.van_or_bus(rng, s + 6.5, sgn * (road.road_half + 1.25),
                                     rng.normal(0, 0.02) + (0 if sgn < 0 else np.pi))
                        s += 13.5
                    elif rng.uniform() < 0.04:
                        b.truck(rng, s + 2.5, sgn * (road.road_half + 1.25), rng.normal(0, 0.02) + (0 if side else np.pi))
                        s += 10.0
                    else:
                        b.car(rng, s, sgn * (road.road_half + 1.15 + rng.normal(0, 0.05)),
                              rng.normal(0, 0.03) + (0 if sgn < 0 else np.pi))
                        s += rng.uniform(5.3, 6.5)
                else:
                    s += rng.uniform(4.0, 9.0)

        # Traffic: oncoming cars on the left lanes, same-direction on the outer right lane.
        if side == 0 or road.lanes == 2:
            n = rng.poisson(L / 45.0)
            for _ in range(n):
                s = rng.uniform(seg.start + 3, seg.end - 3)
                lane = _traffic_lane(road, side, rng)
                u = rng.uniform()
                if u < 0.06:
                    b.truck(rng, s, sgn * lane, rng.normal(0, 0.02) + (np.pi if side == 0 else 0))
                elif u < 0.16:
                    b.van_or_bus(rng, s, sgn * lane, rng.normal(0, 0.02) + (np.pi if side == 0 else 0))
                else:
                    b.car(rng, s, sgn * lane, rng.normal(0, 0.02) + (np.pi if side == 0 else 0))
            if side == 0 and rng.uniform() < 0.15:
                s = rng.uniform(seg.start + 3, seg.end - 3)
                x, y, z0, yaw = b.frame(s, road.road_half - 0.6, np.pi)
                i = b.bicycle(rng, x, y, z0, yaw, raw=BICYCLIST)
                b.person(rng, x - 0.1 * math.cos(yaw), y - 0.1 * math.sin(yaw), z0 + 0.1, yaw, raw=BICYCLIST, inst=i)
            for _ in range(rng.poisson(L / 120.0)):  # motorcyclists in the traffic lanes
                s = rng.uniform(seg.start + 3, seg.end - 3)
                lane = _traffic_lane(road, side, rng)
                x, y, z0, yaw = b.frame(s, sgn * lane, (np.pi if side == 0 else 0) + rng.normal(0, 0.03))
                i = b.motorcycle(rng, x, y, z0, yaw, raw=MOTORCYCLIST)
                b.person(rng, x - 0.15 * math.cos(yaw), y - 0.15 * math.sin(yaw), z0 + 0.2, yaw, raw=MOTORCYCLIST, inst=i)

        # Sidewalk furniture.
        s = seg.start + rng.uniform(2, 15)
        while s < seg.end - 1:
            x, y, z0, yaw = b.frame(s, sgn * (e_park + 0.45))
            if road.blocked(s, s):
                pass
            elif rng.uniform() < 0.35:
                b.sign(rng, x, y, z0, yaw)
            else:
                b.pole(rng, x, y, z0, rng.uniform(4.5, 8.0))
            s += rng.uniform(18, 40)
        if prof.trees:
            spacing = rng.uniform(7, 14)
            d_tree = e_park + 0.9 if prof.terr < 1.0 else e_walk + prof.terr / 2
            s = seg.start + rng.uniform(1, spacing)
            while s < seg.end - 1:
                x, y, z0, _ = b.frame(s, sgn * d_tree)
                if not road.blocked(s - 2.0, s + 2.0):
                    b.tree(rng, x, y, z0, rng.uniform(0.8, 1.2))
                s += spacing * rng.uniform(0.8, 1.2)
        if prof.terr > 1.0:
            for _ in range(rng.poisson(L / 8)):
                sb = rng.uniform(seg.start, seg.end)
                x, y, z0, _ = b.frame(sb, sgn * (e_walk + rng.uniform(0.5, prof.terr)))
                if not road.blocked(sb - 1.0, sb + 1.0):
                    b.bush(rng, x, y, z0)
        for _ in range(rng.poisson(prof.people * L / 10)):
            x, y, z0, yaw = b.frame(rng.uniform(seg.start + 1, seg.end - 1), sgn * rng.uniform(e_park + 0.8, e_walk - 0.3),
                                    rng.choice([0, np.pi]) + rng.normal(0, 0.2))
            b.person(rng, x, y, z0, yaw)  # people may also cross the side street
        for _ in range(rng.poisson(0.25 * L / 40)):
            sb = rng.uniform(seg.start + 1, seg.end - 1)
            x, y, z0, yaw = b.frame(sb, sgn * (e_walk - 0.4), rng.normal(0, 0.1))
            if not road.blocked(sb - 1.0, sb + 1.0):
                b.bicycle(rng, x, y, z0, yaw)
        for _ in range(rng.poisson(0.2 * L / 40)):  # motorcycles parked on the sidewalk
            sb = rng.uniform(seg.start + 1, seg.end - 1)
            x, y, z0, yaw = b.frame(sb, sgn * (e_walk - 0.5), rng.normal(0, 0.1))
            if not road.blocked(sb - 1.5, sb + 1.5):
                b.motorcycle(rng, x, y, z0, yaw)
        # Cross-street traffic (the side street's cars, perpendicular to the main road).
        for sc, hc in zip(road.cross_s, road.cross_h):
            if not (seg.start <= sc < seg.end):
                continue
            for _ in range(rng.poisson(0.8)):
                off = rng.choice([-1.0, 1.0]) * hc * 0.5
                dd = sgn * rng.uniform(e_walk + 3.0, 45.0)
                yaw = np.pi / 2 if off * sgn > 0 else -np.pi / 2
                if rng.uniform() < 0.15:
                    b.van_or_bus(rng, sc + off, dd, yaw + rng.normal(0, 0.03))
                else:
                    b.car(rng, sc + off, dd, yaw + rng.normal(0, 0.03))

        # Property line: fence or hedge, with gaps.
        line = e_terr + 0.3
        if prof.boundary:
            s = seg.start
            while s < seg.end:
                run = rng.uniform(8, 30)
                s1 = min(seg.end, s + run)
                if rng.uniform() < 0.75 and not road.blocked(s, s1):
                    sc = 0.5 * (s + s1)
                    x, y, z0, yaw = b.frame(sc, sgn * line)
                    if prof.boundary == 1:
                        hgt = rng.uniform(1.0, 2.0)
                        col = _FENCES[rng.integers(len(_FENCES))] * rng.uniform(0.8, 1.15)
                        b.p.add(BOX, (x, y, z0 + hgt / 2), yaw, ((s1 - s) / 2, 0.04, hgt / 2), FENCE, 0, M_FENCE,
                                col, rng.uniform())
                    elif prof.boundary == 3:
                        sb = s
                        while sb < s1:
                            x, y, z0, _ = b.frame(sb, sgn * (line + rng.uniform(0.3, 1.2)))
                            b.bush(rng, x, y, z0, big=True)
                            sb += rng.uniform(1.2, 2.5)
                    else:
                        hgt = rng.uniform(0.8, 1.8)
                        b.p.add(BOX, (x, y, z0 + hgt / 2), yaw, ((s1 - s) / 2, 0.45, hgt / 2), VEGETATION, 0, M_HEDGE,
                                np.array([0.13, 0.26, 0.07]) * rng.uniform(0.8, 1.2, 3), rng.uniform())
                s = s1 + rng.uniform(1, 6)

        # Front gardens between the property line and the buildings.
        front = e_terr + prof.setback + (0.9 if prof.boundary else 0.0)
        if prof.setback > 2.5:
            for _ in range(rng.poisson(L / 4)):
                sb = rng.uniform(seg.start, seg.end)
                x, y, z0, _ = b.frame(sb, sgn * (line + rng.uniform(0.8, prof.setback)))
                big = rng.uniform() < 0.5
                if not road.blocked(sb - 2.0, sb + 2.0):
                    b.bush(rng, x, y, z0, big=big)

        # Buildings.
        s = seg.start + rng.uniform(0, 4)
        while s < seg.end - 4:
            F = min(rng.uniform(8, 26), seg.end - s)
            clear = road.clear_after(s, s + F, pad=1.0)
            if clear is not None:  # the corner of an intersection: the next building starts after the cross street
                s = max(s + 1.0, clear)
                continue
            if rng.uniform() < prof.density and F > 6:
                D = rng.uniform(8, 18)
                H = rng.uniform(*prof.height)
                x, y, _, yaw = b.frame(s + F / 2, sgn * (front + D / 2))
                col = _FACADES[rng.integers(len(_FACADES))] * rng.uniform(0.85, 1.1)
                b.p.add(BOX, (x, y, H / 2), yaw, (F / 2, D / 2, H / 2), BUILDING, 0, M_BUILDING, col, rng.uniform())
                s += F + (rng.uniform(0, 1.0) if prof.density > 0.8 else rng.uniform(2, 10))
            else:
                # Empty lot: trees and shrubs.
                for _ in range(rng.poisson(F / 3)):
                    x, y, z0, _ = b.frame(rng.uniform(s, s + F), sgn * (front + rng.uniform(0.5, 14)))
                    if rng.uniform() < 0.4:
                        b.tree(rng, x, y, z0, rng.uniform(0.8, 1.4))
                    else:
                        b.bush(rng, x, y, z0, big=True)
                s += F + rng.uniform(1, 5)

        # Background vegetation behind everything.
        for _ in range(rng.poisson(L / 10)):
            sb = rng.uniform(seg.start, seg.end)
            x, y, z0, _ = b.frame(sb, sgn * (front + rng.uniform(19, 40)))
            scale = rng.uniform(1.0, 1.6)
            if not road.blocked(sb - 4.0, sb + 4.0):
                b.tree(rng, x, y, z0, scale)


# --------------------------------------------------------------------------------------------
# Trajectory and scene
# --------------------------------------------------------------------------------------------


@dataclass
class Scene:
    road: Road
    prims: Prims
    speed: float  # metres per scan
    wobble: tuple[float, float, float]  # lateral drift amplitude, wavelength, phase
    sun: np.ndarray  # unit vector towards the sun (scene frame)
    sky: tuple  # sky colours (horizon, zenith)
    key: tuple[int, ...]
    _cache: dict = field(default_factory=dict, repr=False)

    def lateral(self, s):
        a, lam, ph = self.wobble
        return -self.road.lane_w / 2 + a * np.sin(2 * np.pi * s / lam + ph)

    def velo_pose(self, scan: int) -> tuple[np.ndarray, float]:
        """Scene-frame position (x, y, z) and yaw of the LiDAR at scan index ``scan``."""
        s = scan * self.speed
        x, y, _ = self.road.to_xy(s, self.lateral(s))
        e = 0.25
        x1, y1, _ = self.road.to_xy(s + e, self.lateral(s + e))
        x0, y0, _ = self.road.to_xy(s - e, self.lateral(s - e))
        yaw = math.atan2(float(y1 - y0), float(x1 - x0))
        return np.array([float(x), float(y), VELO_HEIGHT]), yaw

    def velo_to_scene(self, scan: int) -> np.ndarray:
        p, yaw = self.velo_pose(scan)
        T = np.eye(4)
        c, s = math.cos(yaw), math.sin(yaw)
        T[:2, :2] = [[c, -s], [s, c]]
        T[:3, 3] = p
        return T

    def road_direction(self, scan: int) -> np.ndarray:
        """Unit road tangent (scene frame, ground-parallel) at the car's position."""
        th = float(self.road.heading(scan * self.speed))
        return np.array([math.cos(th), math.sin(th), 0.0])

    def near(self, xy: np.ndarray, radius: float) -> np.ndarray:
        """Indices of primitives whose footprint comes within ``radius`` of ``xy``."""
        dist = np.hypot(self.prims.c[:, 0] - xy[0], self.prims.c[:, 1] - xy[1]) - self.prims.radius_xy
        return np.nonzero(dist < radius)[0]


def build_scene(seed: int, sequence: str, n_scans: int) -> Scene:
    """The scene of one sequence, long enough for ``n_scans`` scans plus the look-ahead."""
    key = (int(seed), int(sequence), 77)
    rng = _seed_seq(*key)
    speed = float(rng.uniform(0.92, 1.08))
    wobble = (float(rng.uniform(0.1, 0.35)), float(rng.uniform(50, 90)), float(rng.uniform(0, 2 * np.pi)))
    sun_az = rng.uniform(-np.pi, np.pi)
    sun_el = rng.uniform(np.radians(25), np.radians(55))
    sun = np.array([np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)])
    haze = rng.uniform(0.0, 1.0)
    sky = (np.array([0.78, 0.82, 0.86]) * (0.95 + 0.1 * haze), np.array([0.32, 0.5, 0.8]) * (0.8 + 0.3 * haze))
    road = Road(rng, n_scans * speed + 160.0, key)
    b = _Builder(road)
    for k, seg in enumerate(road.segments):
        _populate_segment(b, seg, _seed_seq(*key, 5000 + k))
    prims = b.p.build()
    # Stable priority order: low-priority labels first so that higher ones overwrite them.
    prio = np.array([_PRIORITY.get(int(r), 0) for r in prims.raw])
    prims = prims.subset(np.argsort(prio, kind="stable"))
    return Scene(road, prims, speed, wobble, sun, sky, key)
