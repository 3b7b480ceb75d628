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
   time, with dense ``[tiles, pixels, K]`` tensors: alpha = min(0.999, o·exp(−½dᵀΣ⁻¹d)), zeroed when
   < 1/255, transmittance by a cumulative product of (1 − alpha) carried across steps, and a pixel
   stops (exclusively) at the first Gaussian that would bring its transmittance to ≤ 1e-4. Depth
   and a constant 1 ride along as two extra feature channels (so alpha = Σ wᵢ comes out of the
   same matrix product). A tile leaves the wavefront when its list is exhausted or all its pixels
   are done. Nothing per pair is kept for the backward pass: it replays the same wavefront and
   computes the gradients in closed form (as gsplat's kernel does), so memory is bounded by the
   working set of one step (``chunk_pairs`` elements per temporary).

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
    means: Tensor,  # [M, 3]
    covars: Tensor,  # [M, 3, 3]
    viewmats: Tensor,  # [M, 4, 4] (one camera per row)
    Ks: Tensor,  # [M, 3, 3]
    width: int,
    height: int,
    camera_model: str = "pinhole",
    eps2d: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Project (Gaussian, camera) pairs (differentiable).

    Returns ``means2d`` [M, 2] (pixels, pixel centres at +0.5), ``cov2d`` [M, 2, 2] with the
    ``eps2d`` low-pass added, ``depths`` [M] (camera z) and ``conics`` [M, 3] (a, b, c of the
    inverse 2D covariance [[a, b], [b, c]]).
    """
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    means_c = (R @ means[:, :, None])[..., 0] + t  # [M, 3]
    covars_c = R @ covars @ R.transpose(-1, -2)  # [M, 3, 3]
    x, y, z = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0], Ks[:, 1, 1]
    cx, cy = Ks[:, 0, 2], Ks[:, 1, 2]
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
        J = torch.stack([fx, zeros, zeros, zeros, fy, zeros], dim=-1).reshape(x.shape + (2, 3))
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
    o = opacities
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


def _march(plan: TilePlan, params: Tensor, colors: Tensor, chunk_pairs: int,
           grads: tuple[Tensor, Tensor] | None = None):
    """Walk every tile's list front to back, a group of tiles at a time.

    ``params`` [M + 1, 6] holds (mean x, mean y, conic a, b, c, log opacity) of the visible
    Gaussians plus one padding row that renders nothing; ``colors`` [M + 1, C] their features (the
    last two channels are depth and 1, so that alpha = 1 − T comes out as a channel).

    Forward (``grads is None``): returns acc [n_used, P, C].
    Backward (``grads = (g_acc [n_used, P, C], acc)``): returns (d_params [M + 1, 6],
    d_colors [M + 1, C]).
    """
    dtype, device = params.dtype, params.device
    ts = plan.tile_size
    P = ts * ts
    C = colors.shape[1]
    pad = params.shape[0] - 1
    fT = _pixel_basis(ts, dtype, device)  # [P, 6]
    n_used = plan.tile_index.shape[0]
    backward = grads is not None
    if backward:
        g_acc_all, acc_all = grads
        d_all = torch.zeros(params.shape[0], 6 + C, dtype=dtype, device=device)
    else:
        acc_out = torch.zeros(n_used, P, C, dtype=dtype, device=device)
    k_min = 8
    group = max(1, chunk_pairs // (P * k_min * 2))
    n_flat = plan.flat_ids.shape[0]
    for g0 in range(0, n_used, group):
        sel = torch.arange(g0, min(g0 + group, n_used), device=device)  # rows of the plan
        tiles = plan.tile_index[sel]
        start, length = plan.tile_start[sel], plan.tile_len[sel]
        cx, cy, inside = _tile_centres(plan, tiles, dtype)
        t_carry = inside.to(dtype)  # transmittance so far (all Gaussians above threshold); 0 = done
        if backward:
            g_pix = g_acc_all[sel]  # [A, P, C]
            g_out = (g_pix * acc_all[sel]).sum(-1)  # [A, P]
            prefix = torch.zeros_like(t_carry)
        else:
            acc = torch.zeros(len(sel), P, C, dtype=dtype, device=device)
        pos = 0
        max_len = int(length.max())
        while True:
            a_ = len(sel)
            k = max(k_min, chunk_pairs // (a_ * P))
            k = min(k, max_len - pos)
            ar = torch.arange(k, device=device)
            idx = start[:, None] + pos + ar[None, :]  # [A, K]
            in_list = (pos + ar)[None, :] < length[:, None]
            gid = torch.where(in_list, plan.flat_ids[idx.clamp(max=n_flat - 1)], pad).reshape(-1)
            prm = params.index_select(0, gid).reshape(a_, k, 6)
            mu = prm[..., 0] - cx[:, None]  # [A, K]
            mv = prm[..., 1] - cy[:, None]
            ca, cb, cc = prm[..., 2], prm[..., 3], prm[..., 4]
            # -(sigma - log o) = -[u², v², uv, u, v, 1] . coef
            coef_neg = torch.stack([-0.5 * ca, -0.5 * cc, -cb, ca * mu + cb * mv, cc * mv + cb * mu,
                                    prm[..., 5] - (0.5 * ca * mu * mu + 0.5 * cc * mv * mv + cb * mu * mv)], dim=1)
            alpha = torch.matmul(fT, coef_neg).exp_()  # [A, P, K] o * exp(-sigma)
            if backward:
                free = alpha < MAX_ALPHA  # not clamped: gradients flow through alpha
            alpha.clamp_(max=MAX_ALPHA)
            alpha.masked_fill_(alpha < ALPHA_THRESHOLD, 0.0)
            om = torch.rsub(alpha, 1.0)  # 1 - alpha
            trans = torch.cumprod(om, dim=-1).mul_(t_carry[:, :, None])  # inclusive transmittance
            t_ex = trans / om  # transmittance before each Gaussian
            w = alpha * t_ex
            w.masked_fill_(trans <= T_MIN, 0.0)  # the pixel stopped before this Gaussian
            col = colors.index_select(0, gid).reshape(a_, k, C)
            if backward:
                gc = torch.bmm(g_pix, col.transpose(1, 2))  # [A, P, K]
                pre = torch.cumsum(w * gc, dim=-1).add_(prefix[:, :, None])
                # dL/dalpha_i = (T_i g.c_i - sum_{j>i} w_j g.c_j) / (1 - alpha_i)
                d = torch.mul(trans, gc).add_(pre).sub_(g_out[:, :, None]).div_(om)
                d.mul_(alpha).masked_fill_((w == 0) | ~free, 0.0)  # dL/d(-E) with alpha = exp(-E)
                dcn = torch.matmul(fT.t(), d)  # [A, 6, K] gradient of coef_neg
                d0, d1, d2, d3, d4, d5 = dcn.unbind(1)
                amb = ca * mu + cb * mv
                cmb = cc * mv + cb * mu
                g_mu = ca * d3 + cb * d4 - amb * d5
                g_mv = cb * d3 + cc * d4 - cmb * d5
                g_a = -0.5 * d0 + mu * d3 - 0.5 * mu * mu * d5
                g_b = -d2 + mv * d3 + mu * d4 - mu * mv * d5
                g_c = -0.5 * d1 + mv * d4 - 0.5 * mv * mv * d5
                d_col = torch.bmm(w.transpose(1, 2), g_pix)  # [A, K, C]
                d_pair = torch.cat([torch.stack([g_mu, g_mv, g_a, g_b, g_c, d5], dim=-1), d_col], dim=-1)
                d_all.index_add_(0, gid, d_pair.reshape(-1, 6 + C))
                prefix = pre[:, :, -1]
            else:
                acc.baddbmm_(w, col)
            t_carry = trans[:, :, -1]
            pos += k
            alive = (length > pos) & (t_carry > T_MIN).any(dim=1)
            n_alive = int(alive.sum())
            if n_alive == 0:
                if not backward:
                    acc_out[sel] = acc
                break
            if n_alive < 0.75 * a_:  # compact the wavefront
                if not backward:
                    dead = ~alive
                    acc_out[sel[dead]] = acc[dead]
                    acc = acc[alive]
                else:
                    g_pix, g_out, prefix = g_pix[alive], g_out[alive], prefix[alive]
                sel, start, length, cx, cy, t_carry = sel[alive], start[alive], length[alive], cx[alive], cy[alive], t_carry[alive]
                max_len = int(length.max())
    if backward:
        d_all[pad] = 0
        return d_all[:, :6], d_all[:, 6:]
    return acc_out


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of the tile lists: accumulated features per used tile
    [n_used, P, C] from the per-Gaussian params [M + 1, 6] and colors [M + 1, C]."""

    @staticmethod
    def forward(ctx, params, colors, plan, chunk_pairs):
        acc = _march(plan, params, colors, chunk_pairs)
        ctx.plan, ctx.chunk_pairs = plan, chunk_pairs
        ctx.save_for_backward(params, colors, acc)
        return acc

    @staticmethod
    def backward(ctx, g_acc):
        params, colors, acc = ctx.saved_tensors
        d_params, d_colors = _march(ctx.plan, params, colors, ctx.chunk_pairs, grads=(g_acc.contiguous(), acc))
        return d_params, d_colors, None, None


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
    view_ids, gauss_ids = _precull(means.detach(), covars.detach(), viewmats, Ks, width, height, camera_model, near, far, eps2d)
    means2d, cov2d, depths, conics = project_gaussians(
        means.index_select(0, gauss_ids), covars.index_select(0, gauss_ids), viewmats[view_ids], Ks[view_ids],
        width, height, camera_model, eps2d)
    opa = opacities.index_select(0, gauss_ids)
    radii = visible_radii(means2d, cov2d, depths, opa, width, height, near, far)
    keep = torch.nonzero((radii > 0).all(-1)).squeeze(1)
    view_ids, gauss_ids = view_ids[keep], gauss_ids[keep]
    m2d, con, dep, opa = means2d[keep], conics[keep], depths[keep], opa[keep]
    plan = bin_tiles(m2d.detach(), radii[keep], dep.detach(), view_ids, V, width, height, tile_size)
    ts, tx, ty = tile_size, plan.tiles_x, plan.tiles_y
    n_tiles = V * tx * ty
    if plan.tile_index.numel():
        params = torch.cat([m2d, con, torch.log(opa)[:, None]], dim=1)
        params = torch.cat([params, params.new_tensor([[0.0, 0.0, 0.0, 0.0, 0.0, -1.0e4]])], dim=0)
        colors = torch.cat([features.index_select(0, gauss_ids), dep[:, None], torch.ones_like(dep)[:, None]], dim=1)
        colors = torch.cat([colors, colors.new_zeros(1, C + 2)], dim=0)
        acc_u = _Composite.apply(params, colors, plan, chunk_pairs)
        acc = torch.zeros(n_tiles, ts * ts, C + 2, dtype=dtype, device=device).index_copy(0, plan.tile_index, acc_u)
    else:  # nothing visible; keep the graph connected so that backward gives zeros
        acc = torch.zeros(n_tiles, ts * ts, C + 2, dtype=dtype, device=device) + 0 * (features.sum() + means.sum() + opacities.sum())

    img = acc.reshape(V, ty, tx, ts, ts, C + 2).permute(0, 1, 3, 2, 4, 5).reshape(V, ty * ts, tx * ts, C + 2)
    img = img[:, :height, :width]
    alpha = img[..., C + 1:]
    feats = img[..., :C]
    if background is not None:
        bg = background.to(dtype=dtype, device=device)
        bg = bg.reshape(-1, 1, 1, C) if bg.dim() == 2 else bg.reshape(1, 1, 1, C)
        feats = feats + (1.0 - alpha) * bg
    depth = img[..., C:C + 1] / alpha.clamp_min(1e-10)
    return feats, depth, alpha


@torch.no_grad()
def _precull(means, covars, viewmats, Ks, width, height, camera_model, near, far, eps2d) -> tuple[Tensor, Tensor]:
    """(view, Gaussian) pairs that may be visible: depth in [near, far] and a conservative
    bounding box (from the largest standard deviation, sqrt(trace Σ)) touching the image."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    pc = torch.einsum("vij,nj->vni", R, means) + t[:, None, :]  # [V, N, 3]
    z = pc[..., 2]
    sd = torch.sqrt(torch.diagonal(covars, dim1=-2, dim2=-1).sum(-1).clamp_min(0))[None]  # [1, N]
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    ok = (z >= near) & (z <= far)
    zs = torch.where(ok, z, torch.ones_like(z))
    if camera_model == "pinhole":
        x, y = pc[..., 0] / zs, pc[..., 1] / zs
        stretch = torch.sqrt(1 + x * x + y * y)
        u, v = fx * x + cx, fy * y + cy
        rx = EXTEND * (fx.abs() * sd * stretch / zs + math.sqrt(eps2d)) + 1
        ry = EXTEND * (fy.abs() * sd * stretch / zs + math.sqrt(eps2d)) + 1
    else:
        u, v = fx * pc[..., 0] + cx, fy * pc[..., 1] + cy
        rx = EXTEND * (fx.abs() * sd + math.sqrt(eps2d)) + 1
        ry = EXTEND * (fy.abs() * sd + math.sqrt(eps2d)) + 1
    ok &= (u + rx > 0) & (u - rx < width) & (v + ry > 0) & (v - ry < height)
    view_ids, gauss_ids = torch.nonzero(ok, as_tuple=True)
    return view_ids, gauss_ids
