"""Camera images by ray casting: procedural textures, sun + sky shading, shadow map, sensor noise."""

from __future__ import annotations


import cv2
import numpy as np

from occ_core.data.formats.semantickitti import LEARNING_MAP
from occ_core.data.synthetic.raycast import INF, camera_rects, cast, ground_hit, normals, ortho_rects
from occ_core.data.synthetic.scene import (M_BARK, M_BIKE, M_BUILDING, M_CARBODY, M_CLOTH, M_FENCE, M_GLASS,
                                           M_HEDGE, M_LEAVES, M_METAL, M_SIGN, M_SKIN, M_TRUCK, M_WHEEL, PARKING,
                                           OTHER_GROUND, ROAD, SIDEWALK, TERRAIN, Scene)

IMAGE_W, IMAGE_H = 1241, 376
VIEW_RANGE = 120.0  # primitives farther than this are not drawn
SHADOW_RES = 0.2  # shadow-map texel (m)

_LM = np.zeros(65536, dtype=np.uint8)
for _raw, _cls in LEARNING_MAP.items():
    _LM[_raw] = _cls

# --------------------------------------------------------------------------------------------
# Value noise
# --------------------------------------------------------------------------------------------

_PERM = np.random.default_rng(12345).permutation(256).astype(np.int64)
_PERM = np.concatenate([_PERM, _PERM])
_VAL = np.random.default_rng(54321).uniform(0, 1, 256).astype(np.float32)


def vnoise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth 2D value noise in [0, 1] with unit lattice spacing."""
    fx, fy = np.floor(x), np.floor(y)
    ix, iy = fx.astype(np.int64) & 255, fy.astype(np.int64) & 255
    tx, ty = (x - fx).astype(np.float32), (y - fy).astype(np.float32)
    tx = tx * tx * (3 - 2 * tx)
    ty = ty * ty * (3 - 2 * ty)
    a = _PERM[ix]
    b = _PERM[ix + 1]
    v00, v01 = _VAL[_PERM[a + iy]], _VAL[_PERM[a + iy + 1]]
    v10, v11 = _VAL[_PERM[b + iy]], _VAL[_PERM[b + iy + 1]]
    top = v00 + tx * (v10 - v00)
    bot = v01 + tx * (v11 - v01)
    return top + ty * (bot - top)


def fbm(x, y, octaves: int = 3) -> np.ndarray:
    total = np.zeros(np.shape(x), dtype=np.float32)
    amp, norm, f = 1.0, 0.0, 1.0
    for _ in range(octaves):
        total += amp * vnoise(x * f, y * f)
        norm += amp
        amp *= 0.5
        f *= 2.03
    return total / norm


def _hash2(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return _VAL[_PERM[(_PERM[i.astype(np.int64) & 255] + j.astype(np.int64)) & 255]]


# --------------------------------------------------------------------------------------------
# Shadow map
# --------------------------------------------------------------------------------------------


class SunMap:
    """Orthographic depth map seen from the sun over the area around one frame."""

    def __init__(self, scene: Scene, centre: np.ndarray, half: float = 60.0):
        w = -scene.sun / np.linalg.norm(scene.sun)
        eu = np.cross(w, [0.0, 0.0, 1.0])
        eu /= np.linalg.norm(eu)
        ev = np.cross(eu, w)
        self.w, self.eu, self.ev = w, eu, ev
        pts = np.array([[centre[0] + a, centre[1] + b, z] for a in (-half, half) for b in (-half, half) for z in (0.0, 25.0)])
        u, v, dw = pts @ eu, pts @ ev, pts @ w
        self.u0, self.v0 = float(u.min()), float(v.min())
        self.nu = int((u.max() - self.u0) / SHADOW_RES) + 1
        self.nv = int((v.max() - self.v0) / SHADOW_RES) + 1
        self.w0 = float(dw.min()) - 30.0
        uu = self.u0 + (np.arange(self.nu) + 0.5) * SHADOW_RES
        vv = self.v0 + (np.arange(self.nv) + 0.5) * SHADOW_RES
        U, V = np.meshgrid(uu, vv)  # [nv, nu]
        O = tuple((U * eu[i] + V * ev[i] + self.w0 * w[i]).astype(np.float32) for i in range(3))
        self.depth = np.full(U.shape, INF, dtype=np.float32)
        pid = np.full(U.shape, -1, dtype=np.int32)
        idx = scene.near(centre[:2], half + 10.0)
        jobs = ortho_rects(scene.prims, idx, eu, ev, self.u0, self.v0, SHADOW_RES, self.nu, self.nv)
        cast(scene.prims, jobs, O, tuple(float(c) for c in w), self.depth, pid)

    def lit(self, px, py, pz) -> np.ndarray:
        """Fraction (0..1) of sunlight reaching scene points (bilinear percentage-closer filter)."""
        u = (px * self.eu[0] + py * self.eu[1] + pz * self.eu[2] - self.u0) / SHADOW_RES - 0.5
        v = (px * self.ev[0] + py * self.ev[1] + pz * self.ev[2] - self.v0) / SHADOW_RES - 0.5
        dw = px * self.w[0] + py * self.w[1] + pz * self.w[2] - self.w0 - 0.25
        iu = np.clip(np.floor(u).astype(np.int64), 0, self.nu - 2)
        iv = np.clip(np.floor(v).astype(np.int64), 0, self.nv - 2)
        fu = np.clip(u - iu, 0, 1).astype(np.float32)
        fv = np.clip(v - iv, 0, 1).astype(np.float32)
        d = self.depth
        l00 = (dw <= d[iv, iu]).astype(np.float32)
        l01 = (dw <= d[iv, iu + 1]).astype(np.float32)
        l10 = (dw <= d[iv + 1, iu]).astype(np.float32)
        l11 = (dw <= d[iv + 1, iu + 1]).astype(np.float32)
        return (1 - fv) * ((1 - fu) * l00 + fu * l01) + fv * ((1 - fu) * l10 + fu * l11)


def sun_map(scene: Scene, scan: int) -> SunMap:
    key = ("sun", scan)
    if key not in scene._cache:
        T = scene.velo_to_scene(scan)
        centre = T[:3, :3] @ np.array([35.0, 0.0, 0.0]) + T[:3, 3]
        for k in [k for k in scene._cache if isinstance(k, tuple) and k[0] == "sun"]:
            del scene._cache[k]
        scene._cache[key] = SunMap(scene, centre)
    return scene._cache[key]


# --------------------------------------------------------------------------------------------
# Materials
# --------------------------------------------------------------------------------------------


def _look(scene: Scene) -> np.ndarray:
    """Per-sequence appearance: asphalt tone, grass tone, white balance (3), exposure."""
    key = ("look",)
    if key not in scene._cache:
        r = np.random.default_rng(np.random.SeedSequence(list(scene.key) + [31337]))
        scene._cache[key] = np.concatenate([r.uniform(0.8, 1.3, 2), r.uniform(0.95, 1.05, 3), r.uniform(0.9, 1.1, 1)])
    return scene._cache[key]


def _ground_albedo(scene: Scene, cls, s, d, x, y):
    road = scene.road
    look = _look(scene)
    n = len(cls)
    alb = np.zeros((n, 3), dtype=np.float32)
    fine = vnoise(x * 7.0, y * 7.0)
    coarse = fbm(x * 0.15, y * 0.15, 2)
    m = cls == ROAD
    if m.any():
        g = (0.13 + 0.07 * coarse[m] + 0.05 * fine[m]) * look[0]
        alb[m] = g[:, None] * np.array([1.0, 1.0, 1.04], np.float32)
    m = cls == PARKING
    if m.any():
        g = (0.17 + 0.06 * coarse[m] + 0.06 * fine[m]) * look[0]
        alb[m] = g[:, None] * np.array([1.0, 0.98, 0.96], np.float32)
    m = cls == SIDEWALK
    if m.any():
        ss, dd = s[m], d[m]
        js = (np.abs(np.mod(ss, 0.5) - 0.25) > 0.23) | (np.abs(np.mod(dd, 0.5) - 0.25) > 0.23)
        tile = _hash2(np.floor(ss / 0.5), np.floor(dd / 0.5))
        g = 0.36 + 0.06 * tile + 0.05 * fine[m] + 0.05 * coarse[m] - 0.12 * js
        alb[m] = g[:, None] * np.array([1.0, 0.97, 0.93], np.float32)
    m = cls == TERRAIN
    if m.any():
        grass = fbm(x[m] * 1.3, y[m] * 1.3, 3)
        dirt = np.clip((coarse[m] - 0.55) * 4, 0, 1)[:, None]
        base = np.array([0.16, 0.24, 0.07], np.float32) * look[1] * (0.6 + 0.8 * grass[:, None] + 0.2 * fine[m][:, None])
        alb[m] = base * (1 - dirt) + dirt * np.array([0.3, 0.25, 0.17], np.float32)
    m = cls == OTHER_GROUND  # gravel yards and medians: light, grainy, brownish grey
    if m.any():
        grain = vnoise(x[m] * 19.0, y[m] * 19.0)
        g = (0.27 + 0.08 * grain + 0.06 * coarse[m]) * look[0]
        alb[m] = g[:, None] * np.array([1.0, 0.94, 0.84], np.float32)
    # Lane markings and curb stones.
    paint = road.markings(s, d)
    paint = paint * (0.75 + 0.25 * fine)
    alb = alb * (1 - paint[:, None]) + paint[:, None] * np.array([0.75, 0.75, 0.72], np.float32)
    left = d >= 0
    e_park = road.edges(s, left)[1]
    curb = (np.abs(np.abs(d) - e_park) < 0.15) & ((cls == SIDEWALK) | (cls == TERRAIN))
    alb[curb] = (0.45 + 0.05 * fine[curb])[:, None]
    return alb


def _object_albedo(scene: Scene, pid, P, L, NL):
    prims = scene.prims
    mat = prims.mat[pid]
    col = prims.color[pid]
    st = prims.style[pid]
    h = prims.h[pid].astype(np.float32)
    x, y, z = P
    lx, ly, lz = L
    nlx, nly, nlz = NL
    alb = col.copy()
    fine = vnoise((x + y) * 5.0 + st * 50, z * 5.0)

    def sel(code):
        return np.nonzero(mat == code)[0]

    k = sel(M_BUILDING)
    if len(k):
        s_ = st[k]
        a = np.where(np.abs(nly[k]) > np.abs(nlx[k]), lx[k] + h[k, 0], ly[k] + h[k, 1])
        zz = lz[k] + h[k, 2]
        fh = 2.9 + 0.6 * s_
        cs = 2.0 + 1.8 * np.mod(s_ * 7.0, 1.0)
        ww = 0.45 + 0.2 * np.mod(s_ * 13.0, 1.0)
        fa = np.mod(a / cs, 1.0)
        fz = np.mod((zz - 0.8) / fh, 1.0)
        win = (np.abs(fa - 0.5) < ww / 2) & (fz > 0.3) & (fz < 0.8) & (zz > 1.2) & (zz < 2 * h[k, 2] - 0.6)
        frame = (np.abs(fa - 0.5) < ww / 2 + 0.06) & (fz > 0.26) & (fz < 0.84) & (zz > 1.2) & (zz < 2 * h[k, 2] - 0.6)
        cell = _hash2(np.floor(a / cs) + 31 * np.floor(s_ * 97), np.floor((zz - 0.8) / fh))
        plaster = col[k] * (0.82 + 0.25 * fbm(a * 0.7, zz * 0.7, 2)[:, None] + 0.08 * fine[k][:, None])
        band = (np.mod(zz - 0.8, fh) < 0.18) & (s_ > 0.5)
        plaster = np.where(band[:, None], plaster * 0.8, plaster)
        glass = np.stack([0.05 + 0.15 * cell, 0.06 + 0.16 * cell, 0.08 + 0.18 * cell], 1)
        out = np.where(frame[:, None], np.float32(0.75) * np.ones(3, np.float32), plaster)
        out = np.where(win[:, None], glass, out)
        roof = nlz[k] > 0.5
        out[roof] = (0.12 + 0.08 * fine[k][roof])[:, None] * np.array([1.0, 0.9, 0.85], np.float32)
        alb[k] = out
    k = sel(M_CARBODY)
    if len(k):
        low = (lz[k] + h[k, 2]) < 0.12
        seam = np.abs(np.abs(lx[k]) - 0.12 * h[k, 0]) < 0.015
        out = col[k] * (0.95 + 0.05 * fine[k][:, None])
        out = np.where((low | seam)[:, None], out * 0.35, out)
        light = (np.abs(lx[k]) > 0.97 * h[k, 0]) & (np.abs(np.abs(ly[k]) - 0.7 * h[k, 1]) < 0.18 * h[k, 1]) & (lz[k] > 0)
        rear = light & (lx[k] < 0)
        out[light & ~rear] = np.array([0.85, 0.85, 0.8], np.float32)
        out[rear] = np.array([0.6, 0.04, 0.03], np.float32)
        alb[k] = out
    k = sel(M_GLASS)
    if len(k):
        pillar = (np.abs(lx[k]) > 0.86 * h[k, 0]) & (np.abs(nlx[k]) < 0.5) | (nlz[k] > 0.5)
        pillar |= np.abs(lx[k]) < 0.04
        glass = np.array([0.04, 0.05, 0.06], np.float32) + 0.06 * fine[k][:, None]
        alb[k] = np.where(pillar[:, None], col[k], glass)
    k = sel(M_WHEEL)
    if len(k):
        r = np.sqrt((lx[k] / h[k, 0]) ** 2 + (lz[k] / h[k, 2]) ** 2)
        alb[k] = np.where((r < 0.55)[:, None], np.float32(0.5), np.float32(0.04))
    k = sel(M_TRUCK)
    if len(k):
        rib = (np.mod(lx[k] * 2.0, 1.0) < 0.12)
        out = col[k] * (0.9 + 0.1 * fine[k][:, None])
        alb[k] = np.where(rib[:, None], out * 0.75, out)
    k = sel(M_LEAVES)
    if len(k):
        q = fbm(x[k] * 2.2 + z[k] * 1.7, y[k] * 2.2 - z[k] * 1.3, 3)
        f2 = vnoise(x[k] * 9.0 - z[k] * 5, y[k] * 9.0 + z[k] * 7)
        alb[k] = col[k] * (0.35 + 1.1 * q[:, None] + 0.35 * f2[:, None])
    k = sel(M_HEDGE)
    if len(k):
        f2 = vnoise((x[k] + y[k]) * 8.0, z[k] * 8.0)
        alb[k] = col[k] * (0.55 + 0.7 * f2[:, None] + 0.3 * fine[k][:, None])
    k = sel(M_BARK)
    if len(k):
        ang = np.arctan2(ly[k], lx[k])
        b = vnoise(ang * 3.0, z[k] * 2.0)
        alb[k] = col[k] * (0.6 + 0.6 * b[:, None])
    k = sel(M_METAL)
    if len(k):
        alb[k] = col[k] * (0.85 + 0.2 * fine[k][:, None])
    k = sel(M_SIGN)
    if len(k):
        rr = np.maximum(np.abs(ly[k]) / h[k, 1], np.abs(lz[k]) / h[k, 2])
        front = nlx[k] > 0
        out = np.where((rr > 0.75)[:, None], np.float32(0.85), col[k])
        alb[k] = np.where(front[:, None], out, np.float32(0.45))
    k = sel(M_FENCE)
    if len(k):
        slat = np.mod(lx[k] / 0.14, 1.0) < 0.72
        rail = np.abs(np.mod(lz[k] + h[k, 2], 0.9) - 0.45) < 0.05
        out = col[k] * (0.75 + 0.3 * vnoise(lx[k] * 1.0, lz[k] * 12.0)[:, None])
        alb[k] = np.where((slat | rail)[:, None], out, out * 0.3)
    for code, var in ((M_CLOTH, 0.2), (M_SKIN, 0.1), (M_BIKE, 0.1)):
        k = sel(code)
        if len(k):
            alb[k] = col[k] * (1 - var + 2 * var * fine[k][:, None])
    return alb


# --------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------


def render_camera(scene: Scene, cam_to_scene: np.ndarray, K: np.ndarray, sun: SunMap, rng: np.random.Generator,
                  width: int = IMAGE_W, height: int = IMAGE_H, primitives: bool = False):
    """Render one camera (pose ``cam_to_scene`` 4x4, camera x right, y down, z forward).

    Returns (BGR uint8 image [H, W, 3], class index uint8 [H, W] (0 = sky), depth float32 [H, W]
    (camera z in metres, 0 = no hit)); with ``primitives`` also the index into ``scene.prims`` of the
    primitive seen at each pixel (int32 [H, W], -1 = ground or sky; the instance masks come from it).
    The random draws, and so the image, do not depend on ``primitives``.
    """
    R, o = cam_to_scene[:3, :3], cam_to_scene[:3, 3]
    uu, vv = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    cx_ = (uu - K[0, 2]) / K[0, 0]
    cy_ = (vv - K[1, 2]) / K[1, 1]
    R32 = R.astype(np.float32)
    dx = R32[0, 0] * cx_ + R32[0, 1] * cy_ + R32[0, 2]
    dy = R32[1, 0] * cx_ + R32[1, 1] * cy_ + R32[1, 2]
    dz = R32[2, 0] * cx_ + R32[2, 1] * cy_ + R32[2, 2]
    depth = np.full((height, width), INF, dtype=np.float32)
    pid = np.full((height, width), -1, dtype=np.int32)
    idx = scene.near(o[:2], VIEW_RANGE)
    w2c = np.linalg.inv(cam_to_scene)
    jobs = camera_rects(scene.prims, idx, w2c, K, width, height)
    O = tuple(float(v) for v in o)
    cast(scene.prims, jobs, O, (dx, dy, dz), depth, pid)

    fdepth, fpid = depth.ravel(), pid.ravel()
    fdx, fdy, fdz = dx.ravel(), dy.ravel(), dz.ravel()
    tg, cg, sg, dg = ground_hit(scene.road, *O, fdx, fdy, fdz, fdepth)
    g = tg < fdepth
    fdepth = np.where(g, tg, fdepth)
    fpid = np.where(g, -1, fpid)
    hit_obj = np.nonzero(fpid >= 0)[0]
    hit_gnd = np.nonzero(g)[0]
    n = fdepth.size

    raw = np.zeros(n, dtype=np.uint16)
    alb = np.zeros((n, 3), dtype=np.float32)
    nrm = np.zeros((n, 3), dtype=np.float32)
    spec = np.zeros(n, dtype=np.float32)
    # Ground.
    if len(hit_gnd):
        t = fdepth[hit_gnd]
        gx, gy = O[0] + t * fdx[hit_gnd], O[1] + t * fdy[hit_gnd]
        raw[hit_gnd] = cg[hit_gnd]
        alb[hit_gnd] = _ground_albedo(scene, cg[hit_gnd], sg[hit_gnd], dg[hit_gnd], gx, gy)
        nrm[hit_gnd] = (0.0, 0.0, 1.0)
    # Objects.
    if len(hit_obj):
        t = fdepth[hit_obj]
        P = (O[0] + t * fdx[hit_obj], O[1] + t * fdy[hit_obj], O[2] + t * fdz[hit_obj])
        j = fpid[hit_obj]
        N, L, NL = normals(scene.prims, j, *P)
        raw[hit_obj] = scene.prims.raw[j]
        alb[hit_obj] = _object_albedo(scene, j, P, L, NL)
        nrm[hit_obj] = np.stack(N, 1)
        mat = scene.prims.mat[j]
        spec[hit_obj] = np.where((mat == M_CARBODY) | (mat == M_GLASS) | (mat == M_TRUCK), 0.35, 0.0)
        # Windows of buildings are glossy too.
    hit = np.concatenate([hit_gnd, hit_obj])

    # Shading.
    col = np.zeros((n, 3), dtype=np.float32)
    if len(hit):
        t = fdepth[hit]
        px, py, pz = O[0] + t * fdx[hit], O[1] + t * fdy[hit], O[2] + t * fdz[hit]
        nn = nrm[hit]
        L = scene.sun.astype(np.float32)
        ndl = np.maximum(nn @ L, 0.0)
        lit = sun.lit(px, py, pz) * (ndl > 0)
        sky_amb = 0.5 + 0.5 * nn[:, 2]
        sun_col = np.array([1.0, 0.95, 0.86], np.float32) * 1.05
        amb_col = np.array([0.52, 0.6, 0.74], np.float32) * 0.55
        light = amb_col[None] * sky_amb[:, None] + sun_col[None] * (ndl * lit)[:, None]
        c = alb[hit] * light
        # Specular highlight (Blinn-Phong) on paint and glass.
        vlen = np.sqrt(fdx[hit] ** 2 + fdy[hit] ** 2 + fdz[hit] ** 2)
        vx, vy, vz = -fdx[hit] / vlen, -fdy[hit] / vlen, -fdz[hit] / vlen
        hx, hy, hz = vx + L[0], vy + L[1], vz + L[2]
        hn = np.sqrt(hx * hx + hy * hy + hz * hz) + 1e-6
        ndh = np.maximum((nn[:, 0] * hx + nn[:, 1] * hy + nn[:, 2] * hz) / hn, 0)
        c += (spec[hit] * lit * ndh ** 40)[:, None]
        # Aerial perspective.
        fog = (1.0 - np.exp(-t / 350.0))[:, None]
        c = c * (1 - fog) + fog * scene.sky[0][None].astype(np.float32)
        col[hit] = c
    # Sky.
    miss = np.nonzero(raw == 0)[0]
    if len(miss):
        el = np.clip(fdz[miss] / np.sqrt(fdx[miss] ** 2 + fdy[miss] ** 2 + fdz[miss] ** 2), 0, 1)
        k = np.clip(el * 3.0, 0, 1) ** 0.7
        hor, zen = scene.sky
        skyc = hor[None] * (1 - k[:, None]) + zen[None] * k[:, None]
        q = np.maximum(fdz[miss], 0.02)
        cloud = np.clip(fbm(fdx[miss] / q * 0.8, fdy[miss] / q * 0.8, 3) * 1.6 - 0.75, 0, 1)[:, None]
        col[miss] = (skyc * (1 - 0.8 * cloud) + 0.8 * cloud * 0.95).astype(np.float32)

    look = _look(scene)
    gain = (look[2:5] * look[5] * rng.uniform(0.94, 1.06)).astype(np.float32)  # white balance, exposure
    img = col.reshape(height, width, 3) * gain[None, None, :]
    img = np.clip(img, 0, 1) ** (1 / 2.2)
    img = cv2.GaussianBlur(img, (3, 3), 0.55)
    img = img * 255.0 + rng.normal(0, 2.2, size=img.shape).astype(np.float32)
    # Slight vignetting.
    rr = ((uu - width / 2) / width) ** 2 + ((vv - height / 2) / width) ** 2
    img = img * (1.0 - 0.35 * rr)[:, :, None]
    bgr = np.clip(img[:, :, ::-1] + 0.5, 0, 255).astype(np.uint8)
    sem = _LM[raw].reshape(height, width)
    dep = np.where(raw > 0, fdepth, 0).reshape(height, width).astype(np.float32)
    if primitives:
        return np.ascontiguousarray(bgr), sem, dep, fpid.reshape(height, width).astype(np.int32)
    return np.ascontiguousarray(bgr), sem, dep
