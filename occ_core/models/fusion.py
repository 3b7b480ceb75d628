"""TACOcc's target-scale adaptive, bidirectional symmetric retrieval between LiDAR and camera voxels.

Two retrievals, one pattern (:class:`AdaptiveRetrieval`): a query feature ``q`` looks at its source around
a reference location at ``R`` candidate radii; at each radius it samples ``P`` points (the offsets
``{-1, 0, 1}^d`` scaled by the radius), weights them with a softmax of a linear map of ``q`` (per radius)
and sums; a second linear map of ``q`` gives ``R`` logits and a **Gumbel-softmax** over them (temperature
``fusion.temperature``; ``fusion.hard``: straight-through one-hot, else the soft weights; no noise in eval
mode, where hard = argmax) mixes the radii: the neighbourhood size is chosen per query from its own
features. ``fusion.adaptive=false`` is the fixed-neighbourhood (Co-Occ) variant: one radius for every
query (the middle candidate), no selector.

* :class:`ImageRetrieval` (LiDAR voxel -> image): every LiDAR-occupied voxel of the query grid samples the
  image feature map (FPN level ``fusion.image_level``) around its projection in every camera (bilinear;
  radii in feature-map pixels), averaged over the cameras that see it.
* :class:`VoxelRetrieval` (camera voxel query -> LiDAR): every camera query (the lifting's depth-proposed,
  visible voxels) gathers the LiDAR volume's features in a 3D neighbourhood (integer offsets, radii in
  query voxels); neighbours that are not LiDAR-occupied are masked out of the softmax.

The retrieved features (after an output projection) are added to the queries' own volume; a 1x1x1 conv
fuses the two updated volumes. As the lifting does, queries are gathered eagerly and all voxels with a
mask are used while tracing (export), so shapes do not depend on the data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.models.lifting import pad_selected
from occ_core.ops.patch_conv import PatchConv3d


@dataclass
class FusionConfig:
    """Target-scale adaptive bidirectional retrieval (TACOcc)."""

    adaptive: bool = True
    """Choose the neighbourhood size per query (Gumbel-softmax over the candidate radii); false: one fixed
    radius for all queries, the middle candidate (Co-Occ's fixed-neighbourhood retrieval)."""
    image_radii: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    """Candidate radii of the LiDAR-voxel -> image retrieval, in pixels of the sampled feature map (ours)."""
    voxel_radii: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Candidate radii of the camera-voxel -> LiDAR retrieval, in query-grid voxels (ours)."""
    temperature: float = 1.0
    """Gumbel-softmax temperature."""
    hard: bool = True
    """Straight-through hard selection of one radius (false: the soft Gumbel-softmax weights)."""
    image_level: int = 0
    """FPN level the image retrieval samples (0 = the finest of backbone.out_indices)."""


def select_radii(logits: Tensor, temperature: float, hard: bool, training: bool) -> Tensor:
    """Tensor  # [..., R] radius weights: Gumbel-softmax in training, deterministic in eval (hard: one-hot of the
    argmax, soft: softmax(logits / temperature))."""
    if training:
        return F.gumbel_softmax(logits.float(), tau=temperature, hard=hard, dim=-1).to(logits.dtype)
    if hard:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    return torch.softmax(logits.float() / temperature, -1).to(logits.dtype)


class AdaptiveRetrieval(nn.Module):
    """Query -> per-radius attention over ``P`` sampled points -> Gumbel-softmax mix of the radii.

    Args:
        channels: query channels ``C``; ``source_channels``: channels of the sampled source.
        radii: candidate radii; ``points``: ``P`` points per radius; ``adaptive``, ``temperature``, ``hard``:
            as :class:`FusionConfig`.
    """

    def __init__(self, channels: int, source_channels: int, radii: Sequence[float], points: int, adaptive: bool,
                 temperature: float, hard: bool):
        super().__init__()
        if not radii:
            raise ValueError("at least one candidate radius")
        self.adaptive = bool(adaptive)
        self.all_radii = [float(r) for r in radii]
        self.radii = self.all_radii if self.adaptive else [self.all_radii[len(self.all_radii) // 2]]
        self.P = int(points)
        self.temperature, self.hard = float(temperature), bool(hard)
        R = len(self.radii)
        self.attn = nn.Linear(channels, R * self.P)
        nn.init.zeros_(self.attn.weight)
        nn.init.zeros_(self.attn.bias)  # uniform weights at the start
        self.selector = nn.Linear(channels, R) if self.adaptive and R > 1 else None
        self.value = nn.Linear(source_channels, channels)
        self.out = nn.Linear(channels, channels)

    def weights(self, q: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """q [B, M, C], valid [B, M, R, P] bool or None -> (point weights [B, M, R, P], radius weights [B, M, R])."""
        B, M = q.shape[:2]
        R = len(self.radii)
        logits = self.attn(q).view(B, M, R, self.P)
        if valid is not None:
            logits = logits.masked_fill(~valid, -1e4)
        w = torch.softmax(logits.float(), -1).to(q.dtype)
        if valid is not None:
            w = w * valid.to(w.dtype)
        if self.selector is None:
            sel = q.new_ones(B, M, R) / R
        else:
            sel = select_radii(self.selector(q), self.temperature, self.hard, self.training)
        return w, sel

    def combine(self, q: Tensor, samples: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """samples [B, M, R, P, C_src] -> (retrieved [B, M, C], radius weights [B, M, R])."""
        w, sel = self.weights(q, valid)
        v = self.value(samples)  # [B, M, R, P, C]
        per_radius = (w[..., None] * v).sum(3)  # [B, M, R, C]
        return self.out((sel[..., None] * per_radius).sum(2)), sel


def _offsets(dims: int) -> Tensor:
    return torch.tensor(list(itertools.product((-1, 0, 1), repeat=dims)), dtype=torch.float32)


class ImageRetrieval(AdaptiveRetrieval):
    """LiDAR voxel -> image features around its projection (see the module docstring)."""

    def __init__(self, channels: int, radii: Sequence[float], adaptive: bool, temperature: float, hard: bool,
                 stride: int):
        super().__init__(channels, channels, radii, 9, adaptive, temperature, hard)
        self.stride = int(stride)
        self.register_buffer("offsets", _offsets(2), persistent=False)  # [9, 2]

    def forward(self, q: Tensor, feat: Tensor, pix: Tensor, seen: Tensor, image_wh: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """q: [B, M, C] LiDAR voxel features;  feat: [B, V, C, h, w] one FPN level;
        pix: [B, V, M, 2] projections in network-image pixels;  seen: [B, V, M] bool.
        Returns (retrieved [B, M, C] (0 where no camera sees the voxel), radius weights [B, M, R])."""
        B, V = feat.shape[:2]
        M = q.shape[1]
        R = len(self.radii)
        W, H = image_wh
        rad = torch.tensor(self.radii, dtype=pix.dtype, device=pix.device) * self.stride  # image pixels
        off = (rad[:, None, None] * self.offsets.to(pix.dtype)[None]).reshape(R * self.P, 2)
        pts = pix[:, :, :, None, :] + off  # [B, V, M, R*P, 2]
        wh = torch.tensor([W, H], dtype=pix.dtype, device=pix.device)
        grid = ((pts + 0.5) / wh) * 2 - 1
        w, sel = self.weights(q, None)  # one choice per query for all its cameras
        total = None
        for v in range(V):
            s = F.grid_sample(feat[:, v], grid[:, v].to(feat.dtype), mode="bilinear", padding_mode="zeros",
                              align_corners=False)  # [B, C, M, R*P]
            s = self.value(s.permute(0, 2, 3, 1).reshape(B, M, R, self.P, -1))
            agg = (sel[..., None] * (w[..., None] * s).sum(3)).sum(2)  # [B, M, C]
            agg = agg * seen[:, v, :, None].to(agg.dtype)
            total = agg if total is None else total + agg
        if V > 1:
            total = total / seen.sum(1).clamp(min=1)[..., None].to(total.dtype)
        return self.out(total) * seen.any(1)[..., None].to(total.dtype), sel


class VoxelRetrieval(AdaptiveRetrieval):
    """Camera voxel query -> LiDAR voxel features in a 3D neighbourhood (see the module docstring)."""

    def __init__(self, channels: int, radii: Sequence[int], adaptive: bool, temperature: float, hard: bool):
        super().__init__(channels, channels, [int(r) for r in radii], 27, adaptive, temperature, hard)
        self.register_buffer("offsets", _offsets(3).long(), persistent=False)  # [27, 3]

    def forward(self, q: Tensor, index: Tensor, lidar: Tensor, occupied: Tensor) -> tuple[Tensor, Tensor]:
        """q: [B, M, C] camera voxel features at flat query-grid ``index`` [B, M];
        lidar: [B, C, X, Y, Z] LiDAR volume; occupied: [B, X, Y, Z] bool (its active sites).
        Returns (retrieved [B, M, C], radius weights [B, M, R])."""
        B, C, X, Y, Z = lidar.shape
        M = index.shape[1]
        R = len(self.radii)
        rad = torch.tensor([int(r) for r in self.radii], device=index.device)
        off = (rad[:, None, None] * self.offsets[None]).reshape(R * self.P, 3)
        xyz = torch.stack([index // (Y * Z), (index // Z) % Y, index % Z], -1)  # [B, M, 3]
        nb = xyz[:, :, None, :] + off  # [B, M, R*P, 3]
        dims = torch.tensor([X, Y, Z], device=index.device)
        inside = ((nb >= 0) & (nb < dims)).all(-1)
        nb = torch.where(inside[..., None], nb, torch.zeros_like(nb))
        flat = (nb[..., 0] * Y + nb[..., 1]) * Z + nb[..., 2]  # [B, M, R*P]
        occ = occupied.reshape(B, -1).gather(1, flat.reshape(B, -1)).view(B, M, R * self.P) & inside
        src = lidar.flatten(2).transpose(1, 2)  # [B, N, C]
        s = src.gather(1, flat.reshape(B, -1, 1).expand(B, M * R * self.P, C)).view(B, M, R, self.P, C)
        return self.combine(q, s, occ.view(B, M, R, self.P))


def gather_queries(vol: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The voxels of ``mask`` [B, N] from ``vol`` [B, C, X, Y, Z]: (index [B, M], valid [B, M], features [B, M, C]).
    Eagerly the selected voxels padded to the longest row; while tracing every voxel (valid = mask)."""
    B, C = vol.shape[:2]
    N = mask.shape[1]
    if torch.jit.is_tracing() or torch.compiler.is_exporting():
        index = torch.arange(N, device=mask.device)[None].expand(B, N)
        valid = mask
    else:
        index, valid = pad_selected(mask)
    flat = vol.flatten(2)
    feats = flat.gather(2, index[:, None, :].expand(B, C, index.shape[1])).transpose(1, 2)
    return index, valid, feats


def scatter_add_queries(vol: Tensor, index: Tensor, valid: Tensor, update: Tensor) -> Tensor:
    """``vol`` [B, C, X, Y, Z] plus ``update`` [B, M, C] at the valid entries of ``index`` [B, M]."""
    B, C = vol.shape[:2]
    upd = (update * valid[..., None].to(update.dtype)).transpose(1, 2)  # [B, C, M]
    add = torch.zeros_like(vol.flatten(2)).scatter(2, index[:, None, :].expand(B, C, index.shape[1]), upd)
    return vol + add.view_as(vol)


class BidirectionalFusion(nn.Module):
    """Both retrievals and the fusion of the two updated volumes (see the module docstring)."""

    def __init__(self, cfg: FusionConfig, channels: int, image_stride: int, norm: str = "bn"):
        super().__init__()
        from occ_core.models.decoder3d import norm3d

        if cfg.temperature <= 0:
            from occ_core.errors import OccError

            raise OccError(f"model.fusion.temperature must be > 0 (got {cfg.temperature})")
        self.cfg = cfg
        self.to_image = ImageRetrieval(channels, cfg.image_radii, cfg.adaptive, cfg.temperature, cfg.hard, image_stride)
        self.to_lidar = VoxelRetrieval(channels, cfg.voxel_radii, cfg.adaptive, cfg.temperature, cfg.hard)
        self.norm_l = nn.LayerNorm(channels)
        self.norm_c = nn.LayerNorm(channels)
        self.fuse = nn.Sequential(PatchConv3d(2 * channels, channels, 1, bias=False), norm3d(norm, channels), nn.ReLU(True))

    def forward(self, cam: Tensor, cam_mask: Tensor, lidar: Tensor, lidar_mask: Tensor, feat: Tensor, pix: Tensor,
                visible: Tensor, image_wh: tuple[int, int]) -> tuple[Tensor, dict[str, Tensor]]:
        """cam: [B, C, X, Y, Z] camera volume, cam_mask [B, N] its queries; lidar: [B, C, X, Y, Z], lidar_mask
        [B, X, Y, Z] its occupied voxels; feat [B, V, C, h, w] the image level; pix [B, V, N, 2], visible
        [B, V, N] the projections of the query grid.  Returns (fused [B, C, X, Y, Z], {"radius_image",
        "radius_voxel"}: mean radius weights of the valid queries, for logging)."""
        B = cam.shape[0]
        V = pix.shape[1]
        # LiDAR voxel -> image
        li, lv, lq = gather_queries(lidar, lidar_mask.reshape(B, -1))
        M = li.shape[1]
        lpix = pix.gather(2, li[:, None, :, None].expand(B, V, M, 2))
        lseen = visible.gather(2, li[:, None, :].expand(B, V, M)) & lv[:, None]
        lpix = torch.where(lseen[..., None], lpix, torch.zeros_like(lpix))
        img, sel_i = self.to_image(self.norm_l(lq), feat, lpix, lseen, image_wh)
        lidar2 = scatter_add_queries(lidar, li, lv, img)
        # camera voxel -> LiDAR
        ci, cv, cq = gather_queries(cam, cam_mask)
        lid, sel_v = self.to_lidar(self.norm_c(cq), ci, lidar, lidar_mask)
        cam2 = scatter_add_queries(cam, ci, cv, lid)
        fused = self.fuse(torch.cat([lidar2, cam2], 1))
        info = {"radius_image": _mean_sel(sel_i, lseen.any(1)), "radius_voxel": _mean_sel(sel_v, cv)}
        return fused, info


def _mean_sel(sel: Tensor, valid: Tensor) -> Tensor:
    w = valid[..., None].to(sel.dtype)
    return (sel * w).sum((0, 1)).detach() / w.sum().clamp_min(1)
