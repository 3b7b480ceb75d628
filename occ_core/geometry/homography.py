"""Homographies and the VPZoomer warp of VPOcc (Kim et al., "VPOcc: Exploiting Vanishing Point
for 3D Semantic Occupancy Prediction", Sec. III-B, Eqs. 2-6). Plain, batched, differentiable torch.

Coordinate conventions (see docs/vpocc.md):

* **Pixel coordinates** are the project's convention: pixel ``(i, j)`` (column ``i``, row ``j``) has
  its centre at ``(x, y) = (i, j)``; the image covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.
  ``vp``, ``projected_pix_S`` and everything returned here use it. A horizontal flip is
  ``x -> W - 1 - x``.
* The paper writes its construction with the image spanning ``[0, W] x [0, H]`` (corners
  ``(0, 0)``, ``(W, H)``, centre line ``x = W / 2``). We apply the paper's formulas in those *edge*
  coordinates ``e = p + 0.5`` and shift back, so the construction is exactly mirror-symmetric under
  ``x -> W - 1 - x`` (flip augmentation) and matches ``F.grid_sample(..., align_corners=False)``.
* Homographies act on homogeneous column vectors ``[x, y, 1]^T`` in pixel coordinates:
  ``q ~ H @ [p, 1]``. ``vp_zoom_homographies`` returns the maps ORIGINAL -> ZOOMED.

The zoomed image ``I_z`` (Eq. 6) takes its left half (pixel centres with ``x + 0.5 <= W / 2``) from
``H_L(I_o)`` and its right half from ``H_R(I_o)``. We build it with one ``grid_sample`` by pulling
each output pixel through the inverse homography of its half, which equals the masked sum of the
two full warps for a binary mask.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from occ_core.geometry.linalg import homography4

DEFAULT_ALPHA = 0.2
"""The paper's length factor of the shared vertical segment through the VP (alpha * H)."""

VP_MARGIN = 1.0
"""Minimum horizontal distance (pixels) between the clamped VP and the left/right image borders."""


def _size(image_size: Sequence[float]) -> tuple[float, float]:
    W, H = image_size
    return float(W), float(H)


def sanitize_vp(vp: torch.Tensor, image_size: Sequence[float], margin: float = VP_MARGIN) -> torch.Tensor:
    """Make a VP usable by VPZoomer: ``vp [B, 2]`` (x, y) pixels -> ``[B, 2]`` pixels.

    * A non-finite VP (the batch uses NaN for "unknown") becomes the image centre
      ``((W - 1) / 2, (H - 1) / 2)``.
    * ``x`` is clamped to ``[-0.5 + margin, W - 0.5 - margin]``: with the VP on or beyond a side
      border one trapezoid has zero or negative width and its homography is singular / folds the
      image. ``y`` is clamped to the image, ``[-0.5, H - 0.5]``: a VP far above/below the image
      would stretch the target rectangles out of the image.
    Both clamps are symmetric under the flip ``x -> W - 1 - x``. Gradients pass where not clamped.
    """
    W, H = _size(image_size)
    vp = torch.as_tensor(vp)
    if not vp.is_floating_point():
        vp = vp.float()
    centre = vp.new_tensor([(W - 1.0) / 2.0, (H - 1.0) / 2.0]).expand_as(vp)
    finite = torch.isfinite(vp).all(dim=-1, keepdim=True)
    vp = torch.where(finite, vp, centre)
    m = min(float(margin), (W - 1.0) / 2.0)
    x = vp[..., 0].clamp(-0.5 + m, W - 0.5 - m)
    y = vp[..., 1].clamp(-0.5, H - 0.5)
    return torch.stack([x, y], dim=-1)


def vp_zoom_corners(vp: torch.Tensor, image_size: Sequence[float], alpha: float = DEFAULT_ALPHA,
                    sanitize: bool = True) -> dict[str, torch.Tensor]:
    """The four quadrilaterals of VPZoomer in pixel coordinates, each ``[B, 4, 2]`` ordered
    (top-left, top-right, bottom-right, bottom-left):

    * ``src_left``  = S_L = {s_tl, s_t, s_b, s_bl} (Eq. 3), ``src_right`` = S_R = {s_t, s_tr, s_br, s_b}
    * ``dst_left``  = T_L = {t_tl, t_t, t_b, t_bl} (Eq. 5), ``dst_right`` = T_R = {t_t, t_tr, t_br, t_b}

    with (edge coordinates, image = [0, W] x [0, H]) s_t/s_b = v -/+ (0, alpha*H/2) (Eq. 2),
    t_t = (W/2, s_t.y / 2), t_b = (W/2, (H + s_b.y) / 2) (Eq. 4), and the image corners.
    """
    W, H = _size(image_size)
    vp = sanitize_vp(vp, image_size) if sanitize else vp
    e = vp + 0.5  # edge coordinates
    vx, vy = e[..., 0], e[..., 1]
    half = alpha * H / 2.0
    zero = torch.zeros_like(vx)
    s_ty = vy - half  # Eq. 2
    s_by = vy + half
    t_ty = s_ty / 2.0  # Eq. 4
    t_by = (H + s_by) / 2.0

    def quad(xs, ys):  # 4 x-coords, 4 y-coords, each [B] -> [B, 4, 2] in pixel coordinates
        return torch.stack([torch.stack(xs, -1), torch.stack(ys, -1)], -1) - 0.5

    Wt, Ht, Wc = zero + W, zero + H, zero + W / 2.0
    return {
        "src_left": quad([zero, vx, vx, zero], [zero, s_ty, s_by, Ht]),
        "src_right": quad([vx, Wt, Wt, vx], [s_ty, zero, Ht, s_by]),
        "dst_left": quad([zero, Wc, Wc, zero], [t_ty, t_ty, t_by, t_by]),
        "dst_right": quad([Wc, Wt, Wt, Wc], [t_ty, t_ty, t_by, t_by]),
    }


def solve_homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Direct linear transform: the homography ``H [..., 3, 3]`` with ``dst ~ H @ [src, 1]``.

    ``src, dst [..., N, 2]`` with N >= 4. For N == 4 (the VPZoomer case) the 8 x 8 DLT system with
    ``H[2, 2] = 1`` is solved exactly (the same solution as the SVD null vector, and as
    ``cv2.getPerspectiveTransform``) and is differentiable; for N > 4 the least-squares DLT is the
    right singular vector of the smallest singular value, normalised to ``H[2, 2] = 1``.
    Computed in float64, returned in the promoted input dtype.
    """
    out_dtype = torch.promote_types(src.dtype, dst.dtype)
    if not out_dtype.is_floating_point:
        out_dtype = torch.get_default_dtype()
    s, d = src.to(torch.float64), dst.to(torch.float64)
    s, d = torch.broadcast_tensors(s, d)
    n = s.shape[-2]
    if n < 4 or s.shape[-1] != 2:
        raise ValueError(f"solve_homography needs [..., N >= 4, 2] points, got {tuple(src.shape)}")
    x, y = s[..., 0], s[..., 1]
    u, v = d[..., 0], d[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    # rows: [x, y, 1, 0, 0, 0, -u x, -u y | -u] and [0, 0, 0, x, y, 1, -v x, -v y | -v]
    ru = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y, -u], -1)
    rv = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y, -v], -1)
    A = torch.cat([ru, rv], dim=-2)  # [..., 2N, 9]
    if n == 4:
        h = torch.linalg.solve(A[..., :8], -A[..., 8:9]).squeeze(-1)
        h = torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)
    else:
        h = torch.linalg.svd(A, full_matrices=True).Vh[..., -1, :]
        h = h / h[..., 8:9]
    return h.reshape(*h.shape[:-1], 3, 3).to(out_dtype)


def apply_homography(Hm: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``points [..., N, 2]`` -> ``[..., N, 2]``: ``H @ [p, 1]`` dehomogenised. ``Hm [..., 3, 3]``."""
    Hm = Hm.to(points.dtype) if points.is_floating_point() else Hm
    q = points @ Hm[..., :2, :2].transpose(-1, -2) + Hm[..., None, :2, 2]
    w = points @ Hm[..., 2:3, :2].transpose(-1, -2) + Hm[..., None, 2:3, 2]
    return q / w


def vp_zoom_homographies(vp: torch.Tensor, image_size: Sequence[float],
                         alpha: float = DEFAULT_ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """VPZoomer homographies ``(H_left [B, 3, 3], H_right [B, 3, 3])`` mapping ORIGINAL-image pixels
    to ZOOMED-image pixels: ``H_left`` maps the left trapezoid S_L onto the rectangle T_L and
    ``H_right`` maps S_R onto T_R (Eqs. 2-5). ``vp [B, 2]`` pixels (sanitised by :func:`sanitize_vp`),
    ``image_size = (W, H)``. Returned in ``vp``'s floating dtype (computed in float64).
    """
    c = vp_zoom_corners(vp, image_size, alpha)
    out_dtype = vp.dtype if vp.is_floating_point() else torch.get_default_dtype()
    return (homography4(c["src_left"].double(), c["dst_left"].double()).to(out_dtype),
            homography4(c["src_right"].double(), c["dst_right"].double()).to(out_dtype))


def vp_zoom_inverse_homographies(vp: torch.Tensor, image_size: Sequence[float],
                                 alpha: float = DEFAULT_ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverses of :func:`vp_zoom_homographies` (ZOOMED -> ORIGINAL pixels), float64, closed form:
    the four-point homographies from the target rectangles back to the source trapezoids."""
    c = vp_zoom_corners(vp, image_size, alpha)
    return (homography4(c["dst_left"].double(), c["src_left"].double()),
            homography4(c["dst_right"].double(), c["src_right"].double()))


def _split(points: torch.Tensor, left: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(left[..., None], apply_homography(a, points), apply_homography(b, points))


def map_points(points: torch.Tensor, vp: torch.Tensor, image_size: Sequence[float],
               alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """ORIGINAL-image pixels -> ZOOMED-image pixels: ``points [B, N, 2]`` -> ``[B, N, 2]``.

    A point left of the (sanitised) VP's vertical line (``x <= v_x``) goes through ``H_left``, the
    others through ``H_right`` (both agree on the line). Use it to move the reference points of the
    attention on the zoomed image's features; points outside the image are mapped too (they stay on
    their side and never reach the homographies' vanishing line).
    """
    vp_s = sanitize_vp(vp, image_size)
    Hl, Hr = vp_zoom_homographies(vp_s.double(), image_size, alpha)  # float64 throughout
    p64 = points.to(torch.float64)
    left = p64[..., 0] <= vp_s[..., None, 0].to(torch.float64)
    return _split(p64, left, Hl.double(), Hr.double()).to(points.dtype if points.is_floating_point() else vp_s.dtype)


def unmap_points(points: torch.Tensor, vp: torch.Tensor, image_size: Sequence[float],
                 alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Inverse of :func:`map_points`: ZOOMED-image pixels ``[B, N, 2]`` -> ORIGINAL-image pixels.
    The half is chosen in the zoomed image (``x + 0.5 <= W / 2`` -> left)."""
    W, _ = _size(image_size)
    vp = torch.as_tensor(vp)
    out_dtype = points.dtype if points.is_floating_point() else (vp.dtype if vp.is_floating_point() else torch.float32)
    Hl_inv, Hr_inv = vp_zoom_inverse_homographies(vp.double(), image_size, alpha)
    p64 = points.to(torch.float64)
    left = p64[..., 0] + 0.5 <= W / 2.0
    out = _split(p64, left, Hl_inv, Hr_inv)
    return out.to(out_dtype)


def zoom_sampling_grid(vp: torch.Tensor, image_size: Sequence[int], alpha: float = DEFAULT_ALPHA,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """``F.grid_sample`` grid ``[B, H, W, 2]`` (normalised, ``align_corners=False``) that builds the
    zoomed image: for each zoomed pixel, the original-image location it comes from (exact inverse
    homography of its half, in closed form)."""
    W, H = int(image_size[0]), int(image_size[1])
    vp = torch.as_tensor(vp)
    Hl_inv, Hr_inv = vp_zoom_inverse_homographies(vp.double(), (W, H), alpha)  # float64 throughout
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64, device=vp.device),
                            torch.arange(W, dtype=torch.float64, device=vp.device), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(1, H * W, 2)  # zoomed-image pixel centres
    left = (pix[..., 0] + 0.5 <= W / 2.0).expand(vp.shape[0], -1)  # mask M of Eq. 6
    src = _split(pix, left, Hl_inv, Hr_inv)  # [B, H*W, 2] original pixels
    scale = src.new_tensor([2.0 / W, 2.0 / H])
    grid = (src + 0.5) * scale - 1.0
    return grid.reshape(-1, H, W, 2).to(dtype or (vp.dtype if vp.is_floating_point() else torch.float32))


def warp_image(image: torch.Tensor, vp: torch.Tensor, alpha: float = DEFAULT_ALPHA,
               mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """VPZoomer (Eq. 6): ``image [B, C, H, W]``, ``vp [B, 2]`` pixels of that image ->
    zoomed image ``[B, C, H, W]``. Regions whose source lies outside the image get zeros
    (``padding_mode``), as with a plain perspective warp. Differentiable w.r.t. ``image``
    (and ``vp`` where it is not clamped)."""
    B, C, H, W = image.shape
    grid = zoom_sampling_grid(vp.to(image.device), (W, H), alpha, dtype=image.dtype)
    if grid.shape[0] != B:
        grid = grid.expand(B, -1, -1, -1)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
