"""Pure-torch tiled EWA splatting of 3D Gaussians (CPU and CUDA).

This is the reference backend of :func:`occ_core.ops.gaussian_raster.rasterize_gaussians`. It follows
gsplat's ``rasterization`` (classic mode) step for step so that both backends give the same
images:

1. **Projection** (plain autograd, one row per view × Gaussian): world → camera by the view matrix,
   2D mean and covariance through the Jacobian of the pinhole projection (gsplat clamps the
   Jacobian's x/z, y/z to 1.3× the field of view) or the orthographic one, plus ``eps2d`` (0.3 px²)
   on the diagonal, conic = inverse 2D covariance.
2. **Culling** (no grad): depth outside ``[near, far]``, opacity < 1/255, singular 2D covariance,
   or an opacity-aware bounding box (half-size ``ceil(e·sqrt(Σ_ii))`` with
   ``e = min(3.33, sqrt(2 ln(255·opacity)))``, the box of the ellipse where alpha ≥ 1/255) that
   misses the image.
3. **Tile binning** (no grad): every visible Gaussian is listed in every ``tile_size``² tile its box
   touches; each tile's list is sorted front to back by camera depth (ties by Gaussian index).
4. **Compositing** (custom autograd function, :class:`_Composite`): tiles are processed in groups,
   and inside a group a *wavefront* walks all the tiles' lists together, ``K`` Gaussians at a
   time, with dense ``[tiles, pixels, K]`` tensors: alpha = min(0.999, o·exp(−½dᵀΣ⁻¹d)), skipped when
   < 1/255, transmittance by a cumulative sum of log(1 − alpha), and a pixel stops (exclusively)
   at the first Gaussian that would bring its transmittance to ≤ 1e-4. A tile leaves the
   wavefront when its list is exhausted or all its pixels are done. Nothing per pair is kept for
   the backward pass: it replays the same wavefront and computes the gradients in closed form, so
   memory is bounded by the working set of one step (``chunk_pairs`` elements per temporary).

The squared Mahalanobis distance of a pixel to a Gaussian is evaluated as one small matrix
product, ``[u², v², uv, u, v, 1] · coef``, with pixel coordinates relative to the tile centre
(small numbers, so float32 keeps ~1e-5 absolute accuracy) and ``−log(opacity)`` folded into the
constant term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
"""Gaussians whose alpha at a pixel is below this are skipped there (gsplat, 3DGS)."""

MAX_ALPHA = 0.999
"""Alpha of one Gaussian is clamped to this (gsplat's value; the original 3DGS uses 0.99)."""

T_MIN = 1e-4
"""A pixel is done at the first Gaussian that would bring its transmittance to ≤ T_MIN."""

EXTEND = 3.33
"""Largest half-size of a Gaussian's bounding box, in standard deviations (gsplat)."""

_LOG_T_MIN = math.log(T_MIN)
_PAD_E = 1.0e4  # exponent of padding entries: exp(-1e4) == 0 exactly in float32 and float64
_DONE = -1.0e4  # log-transmittance that marks a pixel as done (pixels outside the image)


# ---------------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------------


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """Covariances ``R S Sᵀ Rᵀ`` [N, 3, 3] of Gaussians with quaternions [N, 4] (w, x, y, z; need
    not be normalised) and standard deviations ``scales`` [N, 3]."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))
    M = R * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # [N, 3]
    covars: Tensor,  # [N, 3, 3]
    viewmats: Tensor,  # [V, 4, 4]
    Ks: Tensor,  # [V, 3, 3]
    width: int,
    height: int,
    camera_model: str = "pinhole",
    eps2d: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Project Gaussians into every view (differentiable).

    Returns ``means2d`` [V, N, 2] (pixels, pixel centres at +0.5), ``cov2d`` [V, N, 2, 2] with the
    ``eps2d`` low-pass added, ``depths`` [V, N] (camera z) and ``conics`` [V, N, 3] (a, b, c of the
    inverse 2D covariance [[a, b], [b, c]]).
    """
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    means_c = torch.einsum("vij,nj->vni", R, means) + t[:, None, :]  # [V, N, 3]
    covars_c = R[:, None] @ covars[None] @ R.transpose(-1, -2)[:, None]  # [V, N, 3, 3]
    x, y, z = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [V, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    zeros = torch.zeros_like(x)
    if camera_model == "pinhole":
        tan_fovx = 0.5 * width / fx
        tan_fovy = 0.5 * height / fy
        lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
        lim_x_neg = cx / fx + 0.3 * tan_fovx
        lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
        lim_y_neg = cy / fy + 0.3 * tan_fovy
        rz = 1.0 / z
        tx = z * torch.minimum(torch.maximum(x * rz, -lim_x_neg), lim_x_pos)
        ty = z * torch.minimum(torch.maximum(y * rz, -lim_y_neg), lim_y_pos)
        J = torch.stack(
            [fx * rz, zeros, -fx * tx * rz * rz, zeros, fy * rz, -fy * ty * rz * rz], dim=-1
        ).reshape(x.shape + (2, 3))
        means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    elif camera_model == "ortho":
        J = torch.stack(
            [fx.expand_as(x), zeros, zeros, zeros, fy.expand_as(x), zeros], dim=-1
        ).reshape(x.shape + (2, 3))
        means2d = torch.stack([fx * x + cx, fy * y + cy], dim=-1)
    else:
        raise ValueError(f"camera_model must be 'pinhole' or 'ortho', got {camera_model!r}")
    cov2d = J @ covars_c @ J.transpose(-1, -2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    return means2d, cov2d, z, conics


@torch.no_grad()
def visible_radii(
    means2d: Tensor, cov2d: Tensor, depths: Tensor, opacities: Tensor, width: int, height: int,
    near: float, far: float,
) -> Tensor:
    """Integer half-sizes [V, N, 2] of the opacity-aware bounding boxes; 0 where culled."""
    o = opacities.expand_as(depths)
    extend = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=EXTEND)
    a, c = cov2d[..., 0, 0], cov2d[..., 1, 1]
    det = a * c - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    rx = torch.ceil(extend * a.clamp_min(0).sqrt())
    ry = torch.ceil(extend * c.clamp_min(0).sqrt())
    mx, my = means2d[..., 0], means2d[..., 1]
    keep = (
        (det > 0) & (depths >= near) & (depths <= far) & (o >= ALPHA_THRESHOLD)
        & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        & torch.isfinite(mx) & torch.isfinite(my)
    )
    radii = torch.stack([rx, ry], dim=-1)
    radii[~keep] = 0
    return radii


# ---------------------------------------------------------------------------------------------
# Tile binning
# ---------------------------------------------------------------------------------------------


@dataclass
class TilePlan:
    """Which Gaussians touch which tile, front to back (all tensors int64 on the device)."""

    tile_size: int
    tiles_x: int
    tiles_y: int
    n_views: int
    width: int
    height: int
    flat_ids: Tensor  # [n_isect] indices into the visible Gaussians, grouped by tile, depth-sorted
    tile_index: Tensor  # [n_used] global tile index (view * tiles_y * tiles_x + ty * tiles_x + tx)
    tile_start: Tensor  # [n_used] offset of the tile's list in flat_ids
    tile_len: Tensor  # [n_used] length of the tile's list


@torch.no_grad()
def bin_tiles(
    means2d: Tensor,  # [M, 2] visible Gaussians (flattened over views)
    radii: Tensor,  # [M, 2] > 0
    depths: Tensor,  # [M]
    view_ids: Tensor,  # [M]
    n_views: int,
    width: int,
    height: int,
    tile_size: int,
) -> TilePlan:
    device = means2d.device
    tw = (width + tile_size - 1) // tile_size
    th = (height + tile_size - 1) // tile_size
    m = means2d.shape[0]
    tm = means2d.double() / tile_size
    tr = radii.double() / tile_size
    lo = torch.floor(tm - tr).long()
    hi = torch.ceil(tm + tr).long()
    x0, x1 = lo[:, 0].clamp(0, tw), hi[:, 0].clamp(0, tw)
    y0, y1 = lo[:, 1].clamp(0, th), hi[:, 1].clamp(0, th)
    nx = x1 - x0
    counts = nx * (y1 - y0)
    order = torch.sort(depths, stable=True).indices  # front to back; ties by index
    counts_o = counts[order]
    total = int(counts_o.sum())
    gid = torch.repeat_interleave(order, counts_o, output_size=total)
    starts = torch.cumsum(counts_o, 0) - counts_o
    k = torch.arange(total, device=device) - torch.repeat_interleave(starts, counts_o, output_size=total)
    nxg = nx[gid]
    tx = x0[gid] + k % nxg.clamp_min(1)
    ty = y0[gid] + k // nxg.clamp_min(1)
    tile = view_ids[gid] * (th * tw) + ty * tw + tx
    tile_sorted, perm = torch.sort(tile, stable=True)
    flat_ids = gid[perm]
    n_tiles = n_views * th * tw
    per_tile = torch.bincount(tile_sorted, minlength=n_tiles) if total else torch.zeros(n_tiles, dtype=torch.long, device=device)
    offsets = torch.cumsum(per_tile, 0) - per_tile
    used = torch.nonzero(per_tile > 0).squeeze(1)
    # longest lists first: groups then hold tiles of similar length
    used = used[torch.sort(per_tile[used], descending=True, stable=True).indices]
    del m
    return TilePlan(tile_size, tw, th, n_views, width, height, flat_ids, used, offsets[used], per_tile[used])


# ---------------------------------------------------------------------------------------------
# Compositing
# ---------------------------------------------------------------------------------------------


def _pixel_basis(tile_size: int, dtype, device) -> Tensor:
    """[P, 6] quadratic features (u², v², uv, u, v, 1) of the pixel centres relative to the tile
    centre; pixel p = py * tile_size + px."""
    r = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - 0.5 * tile_size
    v, u = torch.meshgrid(r, r, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)], dim=-1)


def _tile_centres(plan: TilePlan, tiles: Tensor, dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Centre (x, y) in pixels [A] and inside-image pixel mask [A, P] of global tile indices."""
    ts = plan.tile_size
    local = tiles % (plan.tiles_x * plan.tiles_y)
    ty, tx = local // plan.tiles_x, local % plan.tiles_x
    cx = (tx * ts).to(dtype) + 0.5 * ts
    cy = (ty * ts).to(dtype) + 0.5 * ts
    r = torch.arange(ts, device=tiles.device)
    inside_x = (tx[:, None] * ts + r[None, :]) < plan.width  # [A, ts]
    inside_y = (ty[:, None] * ts + r[None, :]) < plan.height
    inside = (inside_y[:, :, None] & inside_x[:, None, :]).reshape(len(tiles), ts * ts)
    return cx, cy, inside


def _march(plan: TilePlan, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
           chunk_pairs: int, grads: tuple[Tensor, Tensor, Tensor, Tensor] | None = None):
    """Walk every tile's list front to back, a group of tiles at a time.

    Forward (``grads is None``): returns (acc [n_used, P, C], log_tfinal [n_used, P]).
    Backward (``grads = (g_acc [n_used, P, C], g_t [n_used, P], acc, t_final)``): returns the
    gradients w.r.t. means2d, conics, opacities and colors.
    """
    dtype, device = means2d.dtype, means2d.device
    ts = plan.tile_size
    P = ts * ts
    C = colors.shape[1]
    f = _pixel_basis(ts, dtype, device)  # [P, 6]
    n_used = plan.tile_index.shape[0]
    backward = grads is not None
    log_opac = torch.log(opacities.clamp_min(1e-30))
    if backward:
        g_acc_all, g_t_all, acc_all, tfin_all = grads
        d_means2d = torch.zeros_like(means2d)
        d_conics = torch.zeros_like(conics)
        d_opac = torch.zeros_like(opacities)
        d_colors = torch.zeros_like(colors)
    else:
        acc_out = torch.zeros(n_used, P, C, dtype=dtype, device=device)
        logtf_out = torch.zeros(n_used, P, dtype=dtype, device=device)
    k_min = 8
    group = max(1, chunk_pairs // (P * k_min * 2))
    n_flat = plan.flat_ids.shape[0]
    for g0 in range(0, n_used, group):
        sel = torch.arange(g0, min(g0 + group, n_used), device=device)  # rows of the plan
        tiles = plan.tile_index[sel]
        start, length = plan.tile_start[sel], plan.tile_len[sel]
        cx, cy, inside = _tile_centres(plan, tiles, dtype)
        log_t = torch.where(inside, torch.zeros((), dtype=dtype, device=device),
                            torch.full((), _DONE, dtype=dtype, device=device))  # [A, P]
        if backward:
            g_pix = g_acc_all[sel]  # [A, P, C]
            g_out = (g_pix * acc_all[sel]).sum(-1)  # [A, P]
            g_tt = g_t_all[sel] * tfin_all[sel]  # [A, P]
            prefix = torch.zeros_like(log_t)
        else:
            acc = torch.zeros(len(sel), P, C, dtype=dtype, device=device)
            log_tf = torch.zeros_like(log_t)
        pos = 0
        max_len = int(length.max())
        while True:
            a = len(sel)
            k = max(k_min, chunk_pairs // (a * P))
            k = min(k, max_len - pos)
            ar = torch.arange(k, device=device)
            idx = start[:, None] + pos + ar[None, :]  # [A, K]
            in_list = (pos + ar)[None, :] < length[:, None]
            gid = plan.flat_ids[idx.clamp(max=n_flat - 1)]
            gid = torch.where(in_list, gid, torch.zeros_like(gid))
            mu = means2d[gid, 0] - cx[:, None]  # [A, K]
            mv = means2d[gid, 1] - cy[:, None]
            ca, cb, cc = conics[gid, 0], conics[gid, 1], conics[gid, 2]
            const = 0.5 * ca * mu * mu + 0.5 * cc * mv * mv + cb * mu * mv - log_opac[gid]
            const = torch.where(in_list, const, torch.full((), _PAD_E, dtype=dtype, device=device))
            coef = torch.stack([0.5 * ca, 0.5 * cc, cb, -(ca * mu + cb * mv), -(cc * mv + cb * mu), const], dim=1)
            e = torch.matmul(f, coef)  # [A, P, K] = sigma - log(opacity)
            alpha_raw = torch.exp(-e)
            alpha = alpha_raw.clamp(max=MAX_ALPHA)
            valid = alpha >= ALPHA_THRESHOLD
            l1m = torch.where(valid, torch.log1p(-alpha), torch.zeros((), dtype=dtype, device=device))
            cs = torch.cumsum(l1m, dim=-1).add_(log_t[:, :, None])
            incl = valid & (cs > _LOG_T_MIN)
            t_ex = torch.exp(cs - l1m)
            w = torch.where(incl, alpha * t_ex, torch.zeros((), dtype=dtype, device=device))
            col = colors[gid]  # [A, K, C]
            if backward:
                gc = torch.bmm(g_pix, col.transpose(1, 2))  # [A, P, K]
                pre = torch.cumsum(w * gc, dim=-1).add_(prefix[:, :, None])
                rest = g_out[:, :, None] - pre + g_tt[:, :, None]
                d_alpha = t_ex * gc - rest / (1.0 - alpha)
                d_alpha = torch.where(incl & (alpha_raw <= MAX_ALPHA), d_alpha, torch.zeros((), dtype=dtype, device=device))
                d_e = -alpha_raw * d_alpha  # [A, P, K]
                d_coef = torch.matmul(f.t(), d_e)  # [A, 6, K]
                d0, d1, d2, d3, d4, d5 = d_coef.unbind(1)
                g_a = 0.5 * d0 - mu * d3 + 0.5 * mu * mu * d5
                g_c = 0.5 * d1 - mv * d4 + 0.5 * mv * mv * d5
                g_b = d2 - mv * d3 - mu * d4 + mu * mv * d5
                g_mu = -ca * d3 - cb * d4 + (ca * mu + cb * mv) * d5
                g_mv = -cb * d3 - cc * d4 + (cc * mv + cb * mu) * d5
                g_o = -d5 / opacities[gid]
                m = in_list.to(dtype)
                flat = gid.reshape(-1)
                d_means2d.index_add_(0, flat, (torch.stack([g_mu, g_mv], -1) * m[..., None]).reshape(-1, 2))
                d_conics.index_add_(0, flat, (torch.stack([g_a, g_b, g_c], -1) * m[..., None]).reshape(-1, 3))
                d_opac.index_add_(0, flat, (g_o * m).reshape(-1))
                d_col = torch.bmm(w.transpose(1, 2), g_pix)  # [A, K, C]
                d_colors.index_add_(0, flat, (d_col * m[..., None]).reshape(-1, C))
                prefix = pre[:, :, -1]
            else:
                acc += torch.bmm(w, col)
                log_tf += torch.where(incl, l1m, torch.zeros((), dtype=dtype, device=device)).sum(-1)
            log_t = cs[:, :, -1]
            pos += k
            alive = (length > pos) & (log_t > _LOG_T_MIN).any(dim=1)
            n_alive = int(alive.sum())
            if n_alive == 0:
                if not backward:
                    acc_out[sel] = acc
                    logtf_out[sel] = log_tf
                break
            if n_alive < 0.75 * a:  # compact the wavefront
                dead = ~alive
                if not backward:
                    acc_out[sel[dead]] = acc[dead]
                    logtf_out[sel[dead]] = log_tf[dead]
                    acc, log_tf = acc[alive], log_tf[alive]
                else:
                    g_pix, g_out, g_tt, prefix = g_pix[alive], g_out[alive], g_tt[alive], prefix[alive]
                sel, start, length, cx, cy, log_t = sel[alive], start[alive], length[alive], cx[alive], cy[alive], log_t[alive]
                max_len = int(length.max())
    if backward:
        return d_means2d, d_conics, d_opac, d_colors
    return acc_out, logtf_out


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of tile lists; outputs per used tile: accumulated features
    [n_used, P, C] and final transmittance [n_used, P]."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, plan, chunk_pairs):
        acc, log_tf = _march(plan, means2d, conics, opacities, colors, chunk_pairs)
        tfin = torch.exp(log_tf)
        ctx.plan, ctx.chunk_pairs = plan, chunk_pairs
        ctx.save_for_backward(means2d, conics, opacities, colors, acc, tfin)
        return acc, tfin

    @staticmethod
    def backward(ctx, g_acc, g_t):
        means2d, conics, opacities, colors, acc, tfin = ctx.saved_tensors
        if g_acc is None:
            g_acc = torch.zeros_like(acc)
        if g_t is None:
            g_t = torch.zeros_like(tfin)
        d = _march(ctx.plan, means2d, conics, opacities, colors, ctx.chunk_pairs,
                   grads=(g_acc.contiguous(), g_t.contiguous(), acc, tfin))
        return d[0], d[1], d[2], d[3], None, None


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def rasterize_torch(
    means: Tensor,
    covars: Tensor,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    camera_model: str = "pinhole",
    near: float = 0.1,
    far: float = 200.0,
    eps2d: float = 0.3,
    tile_size: int = 16,
    chunk_pairs: int = 1 << 22,
    background: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`occ_core.ops.gaussian_raster.rasterize_gaussians` (covariance form)."""
    V = viewmats.shape[0]
    N, C = features.shape
    dtype, device = means.dtype, means.device
    means2d, cov2d, depths, conics = project_gaussians(means, covars, viewmats, Ks, width, height, camera_model, eps2d)
    radii = visible_radii(means2d, cov2d, depths, opacities[None, :], width, height, near, far)
    vis = (radii > 0).all(-1)  # [V, N]
    view_ids, gauss_ids = torch.nonzero(vis, as_tuple=True)
    m2d = means2d[view_ids, gauss_ids]
    con = conics[view_ids, gauss_ids]
    dep = depths[view_ids, gauss_ids]
    opa = opacities[gauss_ids]
    col = torch.cat([features[gauss_ids], dep[:, None]], dim=1)  # depth rides as the last channel
    plan = bin_tiles(m2d.detach(), radii[view_ids, gauss_ids], dep.detach(), view_ids, V, width, height, tile_size)
    ts, tx, ty = tile_size, plan.tiles_x, plan.tiles_y
    n_tiles = V * tx * ty
    if plan.tile_index.numel():
        acc_u, tfin_u = _Composite.apply(m2d, con, opa, col, plan, chunk_pairs)
        acc = torch.zeros(n_tiles, ts * ts, C + 1, dtype=dtype, device=device).index_copy(0, plan.tile_index, acc_u)
        tfin = torch.ones(n_tiles, ts * ts, dtype=dtype, device=device).index_copy(0, plan.tile_index, tfin_u)
    else:  # nothing visible; keep the graph connected so backward gives zeros
        acc = torch.zeros(n_tiles, ts * ts, C + 1, dtype=dtype, device=device) + 0 * features.sum() + 0 * means.sum()
        tfin = torch.ones(n_tiles, ts * ts, dtype=dtype, device=device) + 0 * opacities.sum()

    def to_image(x: Tensor) -> Tensor:  # [V*ty*tx, P, c] -> [V, H, W, c]
        c = x.shape[-1]
        x = x.reshape(V, ty, tx, ts, ts, c).permute(0, 1, 3, 2, 4, 5).reshape(V, ty * ts, tx * ts, c)
        return x[:, :height, :width]

    img = to_image(acc)
    t_final = to_image(tfin[..., None])
    alpha = 1.0 - t_final
    feats = img[..., :C]
    if background is not None:
        bg = background.to(dtype=dtype, device=device)
        bg = bg.reshape(-1, 1, 1, C) if bg.dim() == 2 else bg.reshape(1, 1, 1, C)
        feats = feats + t_final * bg
    depth = img[..., C:] / alpha.clamp_min(1e-10)
    return feats, depth, alpha
