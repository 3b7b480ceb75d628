"""The vanishing-point specific modules of VPOcc (Kim et al., 2025), in plain torch:

* :class:`VPZoomer` -- VP-based zoom-in of the image (Sec. III-B); geometry in
  :mod:`occ_core.geometry.homography`.
* :func:`vpca_sampling_points` -- the nine VP-guided sampling points of VPCA (Sec. III-C, Eqs. 7-8,
  Fig. 4), in pixels, ready to be used as fixed sampling locations of a deformable cross-attention.
* :class:`SpatialVolumeFusion` -- SVF (Sec. III-D): gated fusion of the voxel volumes lifted from the
  original and the zoomed image, with 3x3x3 and anisotropic convolutions.

Conventions (docs/vpocc.md): pixel ``(i, j)`` has its centre at ``(x, y) = (i, j)``; ``vp [B, 2]``
is ``(x, y)`` in the pixels of the image the reference points refer to; a horizontal flip is
``x -> W - 1 - x``. Normalising pixels for ``fixed_offsets`` is ``points / (W, H)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from occ_core.geometry import homography as hg
from occ_core.ops.patch_conv import PatchConv3d

# --------------------------------------------------------------------------------------------
# VPZoomer
# --------------------------------------------------------------------------------------------


class VPZoomer(nn.Module):
    """VP-based image zoom-in (no parameters). ``forward(image [B, C, H, W], vp [B, 2])`` ->
    zoomed ``[B, C, H, W]``; :meth:`map_points` moves original-image pixels ``[B, N, 2]`` to the
    zoomed image (e.g. the voxel reference points used by the DCA on the zoomed features)."""

    def __init__(self, alpha: float = hg.DEFAULT_ALPHA, mode: str = "bilinear", padding_mode: str = "zeros"):
        super().__init__()
        self.alpha = float(alpha)
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, vp: torch.Tensor) -> torch.Tensor:
        return hg.warp_image(image, vp, self.alpha, self.mode, self.padding_mode)

    def homographies(self, vp: torch.Tensor, image_size: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(H_left, H_right) [B, 3, 3], original -> zoomed pixels."""
        return hg.vp_zoom_homographies(vp, image_size, self.alpha)

    def map_points(self, points: torch.Tensor, vp: torch.Tensor, image_size: Sequence[float]) -> torch.Tensor:
        """Original-image pixels [B, N, 2] -> zoomed-image pixels [B, N, 2]."""
        return hg.map_points(points, vp, image_size, self.alpha)

    def unmap_points(self, points: torch.Tensor, vp: torch.Tensor, image_size: Sequence[float]) -> torch.Tensor:
        """Zoomed-image pixels [B, N, 2] -> original-image pixels [B, N, 2]."""
        return hg.unmap_points(points, vp, image_size, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


# --------------------------------------------------------------------------------------------
# VPCA: VP-guided point sampling
# --------------------------------------------------------------------------------------------

VPCA_BETA = 50.0
"""Bound beta of the offset length d (pixels at scale factor c = 1)."""

VPCA_SCALES: dict[int, float] = {4: 1.0, 8: 1.5, 16: 2.0}
"""Scale factor c per feature stride (feature resolutions 1/4, 1/8, 1/16 of the image)."""

VPCA_POINT_NAMES: tuple[str, ...] = ("r", "o_l", "o_r", "o_t", "o_b", "o_tl", "o_tr", "o_bl", "o_br")
"""Order of the 9 points returned by :func:`vpca_sampling_points`. ``o_*`` (indices 1-4) are the
rotated cross points (tilde-o); ``o_r`` lies toward the VP, ``o_l`` away from it, ``o_t``/``o_b`` on
the perpendicular (``o_t = r + d * R_theta (0, -1)``). Indices 5-8 are the intersection grid
(hat-o): ``o_tl = l_t x l_l`` etc., ``l_l``/``l_r`` the lines through ``o_l``/``o_r``
perpendicular to ``v - r``, ``l_t``/``l_b`` the lines through the VP and ``o_t``/``o_b``."""

VPCA_MIRROR_PERMUTATION: tuple[int, ...] = (0, 1, 2, 4, 3, 7, 8, 5, 6)
"""Index permutation relating the points of a mirrored (r, v) to the mirrored points: a mirror
reverses orientation, so the rotated "top" and "bottom" swap (t <-> b)."""


def vpca_scale_for_stride(stride: int) -> float:
    """Scale factor c of the VPCA offset bound for a feature map of the given stride (4, 8, 16)."""
    try:
        return VPCA_SCALES[int(stride)]
    except KeyError:
        raise ValueError(f"VPCA defines c only for feature strides {sorted(VPCA_SCALES)}, got {stride}") from None


def _safe_norm(dx: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(|(dx, dy)|, positive mask) with a zero (not NaN) gradient at the origin."""
    sq = dx * dx + dy * dy
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq)), pos


def vpca_sampling_points(ref: torch.Tensor, vp: torch.Tensor, c: float, beta: float = VPCA_BETA,
                         clamp_size: Sequence[float] | None = None) -> torch.Tensor:
    """VP-guided sampling points of VPCA: ``ref [B, N, 2]`` pixels, ``vp [B, 2]`` pixels ->
    ``[B, N, 9, 2]`` pixels, ordered as :data:`VPCA_POINT_NAMES`.

    With D = |v - r| and theta = atan2(v_y - r_y, v_x - r_x):

    * d = D / 2 clipped to [0, beta * c] (Eq. 7; c from :func:`vpca_scale_for_stride`), in image
      pixels;
    * the cross O = {r -/+ (d, 0), r -/+ (0, d)} is rotated about r by R_theta (Eq. 8), so ``o_r``
      points at the VP;
    * the intersection grid: lines from the VP through ``o_t``/``o_b`` cut with the lines through
      ``o_l``/``o_r`` perpendicular to v - r. In closed form, with u = (v - r) / D and
      n = R_theta (0, -1):  ``o_t{l,r} = r -/+ d u + d (D +/- d) / D n`` and
      ``o_b{l,r} = r -/+ d u - d (D +/- d) / D n`` -- a trapezoid narrowing toward the VP.

    A reference point at the VP gives d = 0 and all nine points at r. ``vp`` must be finite
    (see :func:`occ_core.geometry.homography.sanitize_vp`). ``clamp_size = (W, H)`` optionally
    clamps the points into the image (``[0, W - 1] x [0, H - 1]``; the paper leaves this open).
    Differentiable w.r.t. ``ref`` and ``vp``.
    """
    if ref.dim() != 3 or ref.shape[-1] != 2:
        raise ValueError(f"ref must be [B, N, 2], got {tuple(ref.shape)}")
    vp = vp.to(ref.dtype).reshape(-1, 1, 2)  # [B, 1, 2]
    dx = vp[..., 0] - ref[..., 0]  # [B, N]
    dy = vp[..., 1] - ref[..., 1]
    dist, pos = _safe_norm(dx, dy)
    d = torch.clamp(dist / 2.0, min=0.0, max=float(beta) * float(c))  # Eq. 7 + bound
    safe = torch.where(pos, dist, torch.ones_like(dist))
    # unit direction toward the VP: (cos theta, sin theta); theta = atan2(0, 0) = 0 at the VP
    ux = torch.where(pos, dx / safe, torch.ones_like(dx))
    uy = torch.where(pos, dy / safe, torch.zeros_like(dy))
    nx, ny = uy, -ux  # n = R_theta (0, -1) = (sin theta, -cos theta): the rotated "top" direction
    u = torch.stack([ux, uy], -1)  # [B, N, 2]
    n = torch.stack([nx, ny], -1)
    d_ = d[..., None]
    # half-widths of the intersection grid along n: at s = -d (away) and s = +d (toward the VP)
    w_away = torch.where(pos, d * (dist + d) / safe, torch.zeros_like(d))[..., None]
    w_toward = torch.where(pos, d * (dist - d) / safe, torch.zeros_like(d))[..., None]
    r = ref
    pts = torch.stack([
        r,                              # r
        r - d_ * u,                     # o_l  (away from the VP)
        r + d_ * u,                     # o_r  (toward the VP)
        r + d_ * n,                     # o_t
        r - d_ * n,                     # o_b
        r - d_ * u + w_away * n,        # o_tl = l_t x l_l
        r + d_ * u + w_toward * n,      # o_tr = l_t x l_r
        r - d_ * u - w_away * n,        # o_bl = l_b x l_l
        r + d_ * u - w_toward * n,      # o_br = l_b x l_r
    ], dim=2)  # [B, N, 9, 2]
    if clamp_size is not None:
        W, H = float(clamp_size[0]), float(clamp_size[1])
        pts = torch.stack([pts[..., 0].clamp(0.0, W - 1.0), pts[..., 1].clamp(0.0, H - 1.0)], -1)
    return pts


def vpca_sampling_offsets(ref: torch.Tensor, vp: torch.Tensor, image_size: Sequence[float],
                          strides: Sequence[int] = (4, 8, 16), beta: float = VPCA_BETA,
                          clamp: bool = False) -> torch.Tensor:
    """Fixed sampling offsets for a deformable cross-attention, normalised by the image size:
    ``ref [B, N, 2]`` pixels -> ``[B, N, L, 9, 2]`` with ``L = len(strides)``, such that
    ``ref / (W, H) + offsets`` are the VPCA points of level ``l`` (c from its stride) / (W, H)."""
    W, H = float(image_size[0]), float(image_size[1])
    scale = ref.new_tensor([W, H])
    levels = [vpca_sampling_points(ref, vp, vpca_scale_for_stride(s), beta, (W, H) if clamp else None)
              for s in strides]
    pts = torch.stack(levels, dim=2)  # [B, N, L, 9, 2]
    return (pts - ref[:, :, None, None, :]) / scale


# --------------------------------------------------------------------------------------------
# SVF: spatial volume fusion
# --------------------------------------------------------------------------------------------


class AnisotropicConv3d(nn.Module):
    """Anisotropic convolution (AIC-Net, Li et al. CVPR 2020, the paper's [35]) on ``[B, C, X, Y, Z]``.

    Three cascaded stages, one per axis (Z, then Y, then X). Each stage runs one 1-D convolution per
    kernel size in ``kernels`` along its axis (1x1xk, 1xkx1, kx1x1), each followed by ReLU, and mixes
    them voxel-wise with softmax weights predicted from the input by a 1x1x1 convolution, so every
    voxel chooses its receptive field per axis. With ``residual`` the input is added to the output.
    Shapes are preserved.
    """

    def __init__(self, channels: int, kernels: Sequence[int] = (3, 5, 7), residual: bool = True):
        super().__init__()
        self.channels = channels
        self.kernels = tuple(int(k) for k in kernels)
        self.residual = residual
        n = len(self.kernels)
        self.mix = PatchConv3d(channels, 3 * n, 1, bias=False)  # [B, 3n, X, Y, Z] logits

        def axis_convs(axis: int) -> nn.ModuleList:
            convs = nn.ModuleList()
            for k in self.kernels:
                ks, pad = [1, 1, 1], [0, 0, 0]
                ks[axis], pad[axis] = k, k // 2
                convs.append(nn.Conv3d(channels, channels, tuple(ks), padding=tuple(pad), bias=True))
            return convs

        self.conv_z = axis_convs(2)  # 1x1xk
        self.conv_y = axis_convs(1)  # 1xkx1
        self.conv_x = axis_convs(0)  # kx1x1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, X, Y, Z = x.shape
        n = len(self.kernels)
        w = torch.softmax(self.mix(x).view(B, 3, n, 1, X, Y, Z), dim=2)  # per axis, over kernels
        y = x
        for a, convs in enumerate((self.conv_z, self.conv_y, self.conv_x)):
            y = sum(w[:, a, i] * F.relu(conv(y)) for i, conv in enumerate(convs))
        return y + x if self.residual else y


def _local_spatial_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3x3 conv (local aggregation) + BN + ReLU, then an anisotropic conv (spatial aggregation)."""
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(out_ch),
        nn.ReLU(inplace=True),
        AnisotropicConv3d(out_ch, residual=True),
    )


class SpatialVolumeFusion(nn.Module):
    """SVF: ``forward(f_o [B, C, X, Y, Z], f_z [B, C, X, Y, Z]) -> [B, C_out, X, Y, Z]``.

    ``f_o`` is the volume lifted from the original image (VPCA), ``f_z`` the one from the zoomed
    image (DCA). Following 3D-CVF's gated fusion with the paper's local + spatial aggregation:

    1. ``cat = [f_o, f_z]`` (2C channels);
    2. two attention masks ``g_o = ReLU(A_o(cat))``, ``g_z = ReLU(A_z(cat))`` ([B, C, X, Y, Z]), each
       ``A`` = 3x3x3 conv + BN + ReLU + anisotropic conv (1x1xk, 1xkx1, kx1x1);
    3. ``out = Fuse([g_o * f_o, g_z * f_z])`` with ``Fuse`` the identically structured block
       (2C -> C_out) followed by BN + ReLU.

    ``forward(..., return_gates=True)`` also returns ``(g_o, g_z)``.
    """

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.channels, self.out_channels = channels, out_channels
        self.gate_o = _local_spatial_block(2 * channels, channels)
        self.gate_z = _local_spatial_block(2 * channels, channels)
        self.fuse = nn.Sequential(
            _local_spatial_block(2 * channels, out_channels),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, f_o: torch.Tensor, f_z: torch.Tensor, return_gates: bool = False):
        if f_o.shape != f_z.shape or f_o.dim() != 5:
            raise ValueError(f"SVF expects two [B, C, X, Y, Z] volumes of one shape, got {tuple(f_o.shape)} and {tuple(f_z.shape)}")
        cat = torch.cat([f_o, f_z], dim=1)  # [B, 2C, X, Y, Z]
        g_o = F.relu(self.gate_o(cat))  # [B, C, X, Y, Z]
        g_z = F.relu(self.gate_z(cat))
        out = self.fuse(torch.cat([g_o * f_o, g_z * f_z], dim=1))  # [B, C_out, X, Y, Z]
        return (out, g_o, g_z) if return_gates else out
