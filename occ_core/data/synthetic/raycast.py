"""Vectorised ray casting against analytic primitives and the ground.

Rays are organised as 2D "ray images" (camera pixels, LiDAR beams x azimuth steps, shadow-map
texels). Each primitive is tested only against the rectangle(s) of the ray image that its bounding
box can cover (screen-space culling), and a depth buffer keeps the nearest hit. Origins and
directions are given per component, each either a Python float (shared by all rays) or a float32
array with the ray image's shape.
"""

from __future__ import annotations

import math

import numpy as np

from occ_core.data.synthetic.scene import BOX, ELL, Prims

EPS = 1e-3
INF = np.float32(np.inf)

_EDGES = np.array([(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7)])


def intersect(kind: int, c, yaw: float, h, ox, oy, oz, dx, dy, dz) -> np.ndarray:
    """Distance along each ray to its first entry into one primitive (inf where missed)."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    px, py, pz = ox - c[0], oy - c[1], oz - c[2]
    lox, loy, loz = cy * px + sy * py, -sy * px + cy * py, pz
    ldx, ldy, ldz = cy * dx + sy * dy, -sy * dx + cy * dy, dz
    hx, hy, hz = h
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == BOX:
            tmin = None
            tmax = None
            for lo, ld, hh in ((lox, ldx, hx), (loy, ldy, hy), (loz, ldz, hz)):
                ld = np.where(np.abs(ld) < 1e-9, np.float32(1e-9), ld)
                inv = 1.0 / ld
                ta = (-hh - lo) * inv
                tb = (hh - lo) * inv
                a, b = np.minimum(ta, tb), np.maximum(ta, tb)
                tmin = a if tmin is None else np.maximum(tmin, a)
                tmax = b if tmax is None else np.minimum(tmax, b)
            return np.where((tmax >= tmin) & (tmin > EPS), tmin, INF)
        if kind == ELL:
            ax, ay, az = 1.0 / hx, 1.0 / hy, 1.0 / hz
            ox_, oy_, oz_ = lox * ax, loy * ay, loz * az
            dx_, dy_, dz_ = ldx * ax, ldy * ay, ldz * az
            a = dx_ * dx_ + dy_ * dy_ + dz_ * dz_
            b = ox_ * dx_ + oy_ * dy_ + oz_ * dz_
            cc = ox_ * ox_ + oy_ * oy_ + oz_ * oz_ - 1.0
            disc = b * b - a * cc
            t = (-b - np.sqrt(np.maximum(disc, 0))) / a
            return np.where((disc >= 0) & (t > EPS), t, INF)
        # Vertical cylinder with a top cap.
        ir = 1.0 / hx
        ox_, oy_ = lox * ir, loy * ir
        dx_, dy_ = ldx * ir, ldy * ir
        a = dx_ * dx_ + dy_ * dy_
        b = ox_ * dx_ + oy_ * dy_
        cc = ox_ * ox_ + oy_ * oy_ - 1.0
        disc = b * b - a * cc
        t = (-b - np.sqrt(np.maximum(disc, 0))) / np.maximum(a, 1e-12)
        z = loz + t * ldz
        side = (disc >= 0) & (t > EPS) & (np.abs(z) <= hz)
        ldz_ = np.where(np.abs(ldz) < 1e-9, np.float32(-1e-9), ldz)
        tt = (hz - loz) / ldz_
        qx, qy = ox_ + tt * dx_, oy_ + tt * dy_
        top = (tt > EPS) & (qx * qx + qy * qy <= 1.0) & (loz > hz)
        return np.where(side, t, np.where(top, tt, INF))


def cast(prims: Prims, jobs, O, D, depth: np.ndarray, pid: np.ndarray) -> None:
    """Cast the ray image against primitives, updating ``depth`` and ``pid`` (primitive index).

    ``jobs`` is a list of (primitive index, (r0, r1, c0, c1)) rectangles of the ray image.
    """
    for j, (r0, r1, c0, c1) in jobs:
        sl = (slice(r0, r1), slice(c0, c1))
        args = [a[sl] if isinstance(a, np.ndarray) else a for a in (*O, *D)]
        t = intersect(int(prims.kind[j]), [float(v) for v in prims.c[j]], float(prims.yaw[j]),
                      [float(v) for v in prims.h[j]], *args)
        cur = depth[sl]
        m = t < cur
        if m.any():
            cur[m] = t[m]
            pid[sl][m] = j


def normals(prims: Prims, pid: np.ndarray, px, py, pz):
    """World normals (nx, ny, nz) and local hit coordinates (lx, ly, lz) of hits on primitives.

    ``pid`` and the hit points are flat arrays of the same length (all pid >= 0).
    """
    c = prims.c[pid].astype(np.float32)
    yaw = prims.yaw[pid].astype(np.float32)
    h = prims.h[pid].astype(np.float32)
    kind = prims.kind[pid]
    cy, sy = np.cos(yaw), np.sin(yaw)
    qx, qy, qz = px - c[:, 0], py - c[:, 1], pz - c[:, 2]
    lx, ly, lz = cy * qx + sy * qy, -sy * qx + cy * qy, qz
    ux, uy, uz = lx / h[:, 0], ly / h[:, 1], lz / h[:, 2]
    # Box: the face whose normalised coordinate is largest.
    ax = np.argmax(np.stack([np.abs(ux), np.abs(uy), np.abs(uz)]), axis=0)
    bx = np.where(ax == 0, np.sign(ux), 0)
    by = np.where(ax == 1, np.sign(uy), 0)
    bz = np.where(ax == 2, np.sign(uz), 0)
    # Ellipsoid: gradient.
    ex, ey, ez = ux / h[:, 0], uy / h[:, 1], uz / h[:, 2]
    # Cylinder: radial, or the top cap.
    top = uz > 0.999
    cx_, cy_, cz_ = np.where(top, 0, ux), np.where(top, 0, uy), np.where(top, 1, 0)
    nlx = np.where(kind == BOX, bx, np.where(kind == ELL, ex, cx_)).astype(np.float32)
    nly = np.where(kind == BOX, by, np.where(kind == ELL, ey, cy_)).astype(np.float32)
    nlz = np.where(kind == BOX, bz, np.where(kind == ELL, ez, cz_)).astype(np.float32)
    n = np.sqrt(nlx * nlx + nly * nly + nlz * nlz) + 1e-9
    nlx, nly, nlz = nlx / n, nly / n, nlz / n
    nx, ny = cy * nlx - sy * nly, sy * nlx + cy * nly
    return (nx, ny, nlz), (lx, ly, lz), (nlx, nly, nlz)


# --------------------------------------------------------------------------------------------
# Culling rectangles
# --------------------------------------------------------------------------------------------


def camera_rects(prims: Prims, idx: np.ndarray, world_to_cam: np.ndarray, K: np.ndarray, W: int, H: int,
                 near: float = 0.05):
    """Pixel rectangles covered by the primitives ``idx`` in a pinhole camera (near-plane clipped)."""
    if len(idx) == 0:
        return []
    corners = prims.subset(idx).corners()  # [n, 8, 3]
    R, t = world_to_cam[:3, :3], world_to_cam[:3, 3]
    pc = corners @ R.T + t
    z = pc[..., 2]
    a, b = pc[:, _EDGES[:, 0]], pc[:, _EDGES[:, 1]]
    za, zb = a[..., 2], b[..., 2]
    cross = (za - near) * (zb - near) < 0
    w = np.where(cross, (near - za) / np.where(cross, zb - za, 1.0), 0.0)
    ep = a + w[..., None] * (b - a)
    pts = np.concatenate([pc, ep], axis=1)
    valid = np.concatenate([z >= near, cross], axis=1)
    zz = np.where(valid, np.maximum(pts[..., 2], near), 1.0)
    u = K[0, 0] * pts[..., 0] / zz + K[0, 2]
    v = K[1, 1] * pts[..., 1] / zz + K[1, 2]
    big = 1e9
    u0 = np.where(valid, u, big).min(1)
    u1 = np.where(valid, u, -big).max(1)
    v0 = np.where(valid, v, big).min(1)
    v1 = np.where(valid, v, -big).max(1)
    jobs = []
    for k, j in enumerate(idx):
        if not valid[k].any():
            continue
        c0, c1 = max(0, int(math.floor(u0[k])) - 1), min(W, int(math.ceil(u1[k])) + 2)
        r0, r1 = max(0, int(math.floor(v0[k])) - 1), min(H, int(math.ceil(v1[k])) + 2)
        if c1 > c0 and r1 > r0:
            jobs.append((int(j), (r0, r1, c0, c1)))
    return jobs


def spherical_rects(prims: Prims, idx: np.ndarray, origin: np.ndarray, yaw: float, elev: np.ndarray,
                    n_az: int, max_range: float):
    """Rectangles (beam rows x azimuth columns) of a spinning LiDAR covered by primitives.

    ``elev`` is the beam elevation per row (radians, descending); column k looks at azimuth
    ``k * 2 pi / n_az`` counter-clockwise from the sensor's forward axis.
    """
    jobs = []
    if len(idx) == 0:
        return jobs
    p = prims.subset(idx)
    dxy = p.c[:, :2] - origin[:2]
    dist = np.hypot(dxy[:, 0], dxy[:, 1])
    rad = p.radius_xy + 0.05
    zlo = p.c[:, 2] - p.h[:, 2] - origin[2]
    zhi = p.c[:, 2] + p.h[:, 2] - origin[2]
    rmin = np.maximum(dist - rad, 0.05)
    rmax = dist + rad
    el_hi = np.arctan(np.maximum(zhi / rmin, zhi / rmax))
    el_lo = np.arctan(np.minimum(zlo / rmin, zlo / rmax))
    az = np.arctan2(dxy[:, 1], dxy[:, 0]) - yaw
    half = np.arcsin(np.clip(rad / np.maximum(dist, 1e-6), 0, 1))
    step = 2 * np.pi / n_az
    nrows = len(elev)
    for k, j in enumerate(idx):
        if dist[k] - rad[k] > max_range:
            continue
        rows = np.nonzero((elev <= el_hi[k] + 0.004) & (elev >= el_lo[k] - 0.004))[0]
        if len(rows) == 0:
            continue
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        if dist[k] <= rad[k] + 0.05:
            jobs.append((int(j), (r0, r1, 0, n_az)))
            continue
        a0 = (az[k] - half[k]) / step
        a1 = (az[k] + half[k]) / step
        c0 = int(math.floor(a0)) - 1
        c1 = int(math.ceil(a1)) + 2
        if c1 - c0 >= n_az:
            jobs.append((int(j), (r0, r1, 0, n_az)))
            continue
        c0m = c0 % n_az
        c1m = c0m + (c1 - c0)
        if c1m <= n_az:
            jobs.append((int(j), (r0, r1, c0m, c1m)))
        else:
            jobs.append((int(j), (r0, r1, c0m, n_az)))
            jobs.append((int(j), (r0, r1, 0, c1m - n_az)))
    del nrows
    return jobs


def ortho_rects(prims: Prims, idx: np.ndarray, eu: np.ndarray, ev: np.ndarray, u0: float, v0: float, res: float,
                nu: int, nv: int):
    """Texel rectangles (rows along v, columns along u) of an orthographic map covered by primitives."""
    if len(idx) == 0:
        return []
    corners = prims.subset(idx).corners()
    u = (corners @ eu - u0) / res
    v = (corners @ ev - v0) / res
    jobs = []
    for k, j in enumerate(idx):
        c0, c1 = max(0, int(math.floor(u[k].min())) - 1), min(nu, int(math.ceil(u[k].max())) + 2)
        r0, r1 = max(0, int(math.floor(v[k].min())) - 1), min(nv, int(math.ceil(v[k].max())) + 2)
        if c1 > c0 and r1 > r0:
            jobs.append((int(j), (r0, r1, c0, c1)))
    return jobs


# --------------------------------------------------------------------------------------------
# Ground
# --------------------------------------------------------------------------------------------


def ground_hit(road, ox: float, oy: float, oz: float, dx, dy, dz, tmax, far: float = 250.0):
    """Hits of flat arrays of rays (shared origin) with the ground height field.

    The ground is flat at z = 0 with everything beyond a raised curb at the curb height. Returns
    (t, raw class, s, d) arrays, t = inf where the ray misses the ground (or hits beyond ``tmax``).
    """
    n = dx.shape[0]
    t = np.full(n, INF, dtype=np.float32)
    cls = np.zeros(n, dtype=np.uint16)
    s_out = np.zeros(n, dtype=np.float32)
    d_out = np.zeros(n, dtype=np.float32)
    down = dz < -1e-6
    if not down.any():
        return t, cls, s_out, d_out
    idx = np.nonzero(down)[0]
    ddx, ddy, ddz = dx[idx], dy[idx], dz[idx]
    tm = np.minimum(tmax[idx], far)
    res_t = np.full(len(idx), INF, dtype=np.float32)
    res_c = np.zeros(len(idx), dtype=np.uint16)
    res_s = np.zeros(len(idx), dtype=np.float32)
    res_d = np.zeros(len(idx), dtype=np.float32)
    todo = np.ones(len(idx), dtype=bool)
    for hplane in (road.curb, 0.0):
        tt = ((hplane - oz) / ddz).astype(np.float32)
        cand = todo & (tt < tm) & (tt > 0)
        k = np.nonzero(cand)[0]
        if len(k) == 0:
            continue
        x = ox + tt[k] * ddx[k]
        y = oy + tt[k] * ddy[k]
        s, d = road.sd(x, y)
        c, hgt = road.ground(s, d)
        ok = hgt >= hplane - 1e-6
        kk = k[ok]
        res_t[kk] = tt[kk]
        res_c[kk] = c[ok]
        res_s[kk] = s[ok]
        res_d[kk] = d[ok]
        todo[kk] = False
    t[idx], cls[idx], s_out[idx], d_out[idx] = res_t, res_c, res_s, res_d
    return t, cls, s_out, d_out
