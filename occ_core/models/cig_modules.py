"""CIGOcc's building blocks (docs/cigocc.md): the three 2D feature extractors, the deformable multi-level
fusion, the depth-distribution lifting of stage 1, stage 2's query refinement, and the SAM-mask
affinity distillation loss.

Shapes: ``BV`` is batch x cameras flattened (the cameras share the weights); feature pyramids are lists
of ``[BV, C, H_l, W_l]`` at the backbone's strides (4, 8, 16 by default).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.models.lifting import VoxelQueryLifting, _FFN, pad_selected
from occ_core.ops.deform_attn import MSDeformCrossAttention
from occ_core.ops.deform_attn3d import DeformSelfAttention3d
from occ_core.ops.patch_conv import PatchConv3d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _cbr(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


# ------------------------------------------------------------------------------------------------
# The three 2D feature extractors
# ------------------------------------------------------------------------------------------------


class SegmentationHead(nn.Module):
    """Segmentation features from the backbone + FPN pyramid (one conv head shared by the levels), and a
    per-pixel mask embedding on the finest level (the SAM-mask distillation reads it)."""

    def __init__(self, channels: int, embed_dims: int = 16):
        super().__init__()
        self.body = nn.Sequential(_cbr(channels, channels), nn.Conv2d(channels, channels, 3, padding=1))
        self.embed = nn.Conv2d(channels, embed_dims, 1) if embed_dims > 0 else None

    def forward(self, pyramid: Sequence[Tensor]) -> tuple[list[Tensor], Tensor | None]:
        feats = [self.body(f) for f in pyramid]
        return feats, (self.embed(F.relu(feats[0])) if self.embed is not None else None)


class EdgeFilters(nn.Module):
    """Fixed image-structure filters: grey level, Sobel x / y, gradient magnitude and Laplacian of the
    (ImageNet-denormalised) image: ``[BV, 3, H, W] -> [BV, 5, H, W]``. No parameters."""

    out_channels = 5

    def __init__(self):
        super().__init__()
        sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]) / 4.0
        self.register_buffer("kernels", torch.stack([sx, sx.t(), lap])[:, None], persistent=False)  # [3, 1, 3, 3]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("grey", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        rgb = images * self.std + self.mean
        g = (rgb * self.grey).sum(1, keepdim=True)
        e = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), self.kernels)  # gx, gy, laplacian
        mag = torch.sqrt(e[:, :1] ** 2 + e[:, 1:2] ** 2 + 1e-6)
        return torch.cat([g, e[:, :2], mag, e[:, 2:]], 1)


class GraphicsEncoder(nn.Module):
    """"Graphics" features: the fixed edge / gradient maps through a small learned conv encoder, one map
    of ``channels`` at each of ``strides`` (powers of two, at least 4)."""

    def __init__(self, channels: int, strides: Sequence[int], width: int = 16):
        super().__init__()
        self.filters = EdgeFilters()
        self.strides = [int(s) for s in strides]
        if any(s < 4 or s & (s - 1) for s in self.strides):
            raise ValueError(f"graphics encoder strides must be powers of two >= 4 (got {self.strides})")
        self.stem = nn.Sequential(_cbr(EdgeFilters.out_channels, width, stride=2), _cbr(width, width, stride=2))  # stride 4
        self.downs = nn.ModuleList()
        c, s = width, 4
        self.outs = nn.ModuleDict()
        while s <= max(self.strides):
            if s in self.strides:
                self.outs[str(s)] = nn.Conv2d(c, channels, 1)
            if s < max(self.strides):
                self.downs.append(_cbr(c, min(2 * c, channels), stride=2))
                c = min(2 * c, channels)
            s *= 2

    def forward(self, images: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """images: Tensor  # [BV, 3, H, W]; sizes: (H_l, W_l) of the pyramid levels -> list of [BV, C, H_l, W_l]."""
        x = self.stem(self.filters(images))
        feats: dict[int, Tensor] = {}
        s = 4
        for k in range(len(self.downs) + 1):
            if str(s) in self.outs:
                feats[s] = self.outs[str(s)](x)
            if k < len(self.downs):
                x = self.downs[k](x)
            s *= 2
        out = []
        for st, hw in zip(self.strides, sizes):
            f = feats[st]
            out.append(f if tuple(f.shape[-2:]) == tuple(hw) else F.interpolate(f, size=hw, mode="bilinear", align_corners=False))
        return out


class DepthHead(nn.Module):
    """Depth features on the FPN pyramid (a conv head shared by the levels) and depth-bin logits at one
    level (supervised by the batch's sparse depth; their softmax lifts stage 1)."""

    def __init__(self, channels: int, bins: int):
        super().__init__()
        self.body = nn.Sequential(_cbr(channels, channels), _cbr(channels, channels))
        self.logits = nn.Conv2d(channels, bins, 1)

    def forward(self, pyramid: Sequence[Tensor], level: int) -> tuple[list[Tensor], Tensor]:
        feats = [self.body(f) for f in pyramid]
        return feats, self.logits(feats[level])


# ------------------------------------------------------------------------------------------------
# Deformable multi-level fusion
# ------------------------------------------------------------------------------------------------


def pixel_reference(h: int, w: int, device, dtype) -> Tensor:
    """Tensor  # [h*w, 2]: normalised ``(x, y)`` centres of a map's pixels (row-major)."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1).reshape(-1, 2)


class FusionLevel(nn.Module):
    """Fusion at one pyramid level: every pixel's query (a linear map of its three features) attends with
    deformable attention to the three feature maps (the three "levels" of the attention), post-norm + FFN."""

    KINDS = 3

    def __init__(self, channels: int, num_heads: int, num_points: int, dropout: float = 0.0,
                 chunk_size: int | None = 16384):
        super().__init__()
        self.query = nn.Linear(self.KINDS * channels, channels)
        self.kind_embed = nn.Parameter(torch.zeros(self.KINDS, channels))
        self.attn = MSDeformCrossAttention(channels, num_heads, self.KINDS, num_points, chunk_size=chunk_size)
        self.norm1 = nn.LayerNorm(channels)
        self.ffn = _FFN(channels, 2 * channels, dropout)
        self.norm2 = nn.LayerNorm(channels)

    def forward(self, kinds: Sequence[Tensor]) -> Tensor:
        """kinds: (segmentation, graphics, depth) Tensor  # [BV, C, h, w] each  ->  Tensor  # [BV, C, h, w]"""
        BV, C, h, w = kinds[0].shape
        q = self.query(torch.cat(kinds, 1).flatten(2).transpose(1, 2))  # [BV, hw, C]
        values = [k + e[None, :, None, None] for k, e in zip(kinds, self.kind_embed)]
        ref = pixel_reference(h, w, q.device, q.dtype)[None].expand(BV, h * w, 2)
        q = self.norm1(q + self.attn(q, values, ref))
        q = self.norm2(q + self.ffn(q))
        return q.transpose(1, 2).reshape(BV, C, h, w)


class MultiLevelFusion(nn.Module):
    """Deformable multi-level fusion: level by level, the segmentation, graphics and depth features are
    fused into one 2D pyramid (one :class:`FusionLevel` per level)."""

    def __init__(self, channels: int, levels: int, num_heads: int, num_points: int, dropout: float = 0.0):
        super().__init__()
        self.levels = nn.ModuleList(FusionLevel(channels, num_heads, num_points, dropout) for _ in range(levels))

    def forward(self, seg: Sequence[Tensor], gfx: Sequence[Tensor], dep: Sequence[Tensor]) -> list[Tensor]:
        return [lvl((s, g, d)) for lvl, s, g, d in zip(self.levels, seg, gfx, dep)]


# ------------------------------------------------------------------------------------------------
# Stage 1: depth distribution x fused features -> voxels
# ------------------------------------------------------------------------------------------------


class DepthLift(nn.Module):
    """Lift a fused feature map with its depth distribution into the query grid (Lift-Splat: each pixel
    of the map spreads ``p(bin) * feature`` to the voxel of every depth bin along its ray; the voxels sum
    them over pixels and cameras), then ``[summed features, log(1 + summed probability)]`` through a
    1x1x1 conv. Every pixel and bin goes to a voxel or to a dump slot (no data-dependent shapes).

    Args:
        channels: feature channels ``C``.
        grid_shape, voxel_size, origin: the query grid in the dataset's grid frame.
        bin_centres: depth of every bin (m).
    """

    def __init__(self, channels: int, grid_shape: Sequence[int], voxel_size: Sequence[float], origin: Sequence[float],
                 bin_centres: Sequence[float]):
        super().__init__()
        self.grid_shape = tuple(int(s) for s in grid_shape)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.origin = tuple(float(o) for o in origin)
        self.register_buffer("bins", torch.tensor(list(bin_centres), dtype=torch.float64), persistent=False)
        self.proj = PatchConv3d(channels + 1, channels, 1)

    def voxel_index(self, hw: tuple[int, int], image_hw: tuple[int, int], intrinsics: Tensor,
                    grid_to_cam: Tensor) -> Tensor:
        """Tensor  # [B, V, h*w, D] long: flat voxel of every map pixel's depth bins (``N`` = outside)."""
        from occ_core.geometry.linalg import inverse3x3, inverse_rigid4x4

        h, w = hw
        H, W = image_hw
        dev = intrinsics.device
        # centres of the map's pixels in network-image pixels (centre convention)
        v, u = torch.meshgrid((torch.arange(h, dtype=torch.float64, device=dev) + 0.5) * (H / h) - 0.5,
                              (torch.arange(w, dtype=torch.float64, device=dev) + 0.5) * (W / w) - 0.5, indexing="ij")
        pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(h * w, dtype=torch.float64, device=dev)], -1)
        rays = pix @ inverse3x3(intrinsics.double()).transpose(-1, -2)  # [B, V, hw, 3], z = 1
        T = inverse_rigid4x4(grid_to_cam.double())
        cam = rays[..., None, :] * self.bins[:, None]  # [B, V, hw, D, 3]
        pts = cam @ T[:, :, None, :3, :3].transpose(-1, -2) + T[:, :, None, None, :3, 3]
        X, Y, Z = self.grid_shape
        origin = torch.tensor(self.origin, dtype=torch.float64, device=dev)
        size = torch.tensor(self.voxel_size, dtype=torch.float64, device=dev)
        idx = torch.floor((pts - origin) / size)
        dims = torch.tensor([X, Y, Z], dtype=torch.float64, device=dev)
        inside = ((idx >= 0) & (idx < dims)).all(-1)
        idx = torch.where(inside[..., None], idx, torch.zeros_like(idx)).long()
        flat = idx[..., 0] * (Y * Z) + idx[..., 1] * Z + idx[..., 2]
        return torch.where(inside, flat, torch.full_like(flat, X * Y * Z))

    def forward(self, feat: Tensor, prob: Tensor, intrinsics: Tensor, grid_to_cam: Tensor,
                image_hw: tuple[int, int]) -> Tensor:
        """feat: Tensor  # [B, V, C, h, w];  prob: Tensor  # [B, V, D, h, w] (softmax over bins)
        ->  Tensor  # [B, C, X, Y, Z]"""
        B, V, C, h, w = feat.shape
        D = prob.shape[2]
        X, Y, Z = self.grid_shape
        N = X * Y * Z
        flat = self.voxel_index((h, w), image_hw, intrinsics, grid_to_cam).reshape(B, V * h * w * D)
        p = prob.flatten(3).transpose(2, 3)  # [B, V, hw, D]
        f = feat.flatten(3).transpose(2, 3)  # [B, V, hw, C]
        contrib = (p[..., None] * f[:, :, :, None, :]).reshape(B, V * h * w * D, C)
        vol = torch.zeros(B, N + 1, C, dtype=contrib.dtype, device=feat.device)
        vol = vol.scatter_add(1, flat[..., None].expand(B, flat.shape[1], C), contrib)
        occ = torch.zeros(B, N + 1, dtype=p.dtype, device=feat.device).scatter_add(1, flat, p.reshape(B, -1))
        x = torch.cat([vol[:, :N].transpose(1, 2), torch.log1p(occ[:, None, :N])], 1).reshape(B, C + 1, X, Y, Z)
        return self.proj(x)


def depth_bin_centres(d_min: float, d_max: float, bins: int) -> list[float]:
    """Uniform bins over [d_min, d_max]: the centre of each."""
    step = (d_max - d_min) / bins
    return [d_min + (k + 0.5) * step for k in range(bins)]


def depth_targets(depth: Tensor, hw: tuple[int, int], d_min: float, d_max: float, bins: int) -> Tensor:
    """Sparse depth [B, V, 1, H, W] (m, 0 = none) -> bin index [B*V, h, w] long (-1 = no point in the cell or
    outside [d_min, d_max)): the nearest point of each cell of the ``h x w`` map."""
    d = depth.flatten(0, 1).float()  # [BV, 1, H, W]
    inv = torch.where(d > 0, 1.0 / d.clamp(min=1e-6), torch.zeros_like(d))
    near = F.adaptive_max_pool2d(inv, hw)[:, 0]  # largest inverse depth = nearest point
    dep = torch.where(near > 0, 1.0 / near.clamp(min=1e-12), torch.zeros_like(near))
    k = torch.floor((dep - d_min) / (d_max - d_min) * bins)
    ok = (near > 0) & (k >= 0) & (k < bins)
    return torch.where(ok, k, torch.full_like(k, -1)).long()


# ------------------------------------------------------------------------------------------------
# Stage 2: query refinement
# ------------------------------------------------------------------------------------------------


class SelfAttentionLayer(nn.Module):
    """Deformable self-attention over the volume + FFN, post-norm."""

    def __init__(self, channels: int, num_heads: int, num_points: int, dropout: float = 0.0):
        super().__init__()
        self.attn = DeformSelfAttention3d(channels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(channels)
        self.ffn = _FFN(channels, 2 * channels, dropout)
        self.norm2 = nn.LayerNorm(channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, shape: Sequence[int], pos: Tensor) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x, shape, pos)))
        return self.norm2(x + self.drop(self.ffn(x)))


class QueryRefiner(VoxelQueryLifting):
    """Stage 2: the voxel queries that stage 1 proposes (``batch["_cig_proposal"]``, voxels it predicts
    occupied) and some camera sees start from the raw volume's features there, are updated by deformable
    cross-attention to the fused pyramid (the lifting layers of :class:`VoxelQueryLifting`, averaged over
    the cameras), written back into a volume (mask token + positional embedding elsewhere), the raw volume
    is added, and deformable self-attention layers run over the whole volume.

    Args: as :class:`VoxelQueryLifting` (``per_voxel_embed`` is off: the queries come from the raw volume)
    plus ``self_layers`` (deformable self-attention layers) and ``self_points`` (their points per head).
    """

    def __init__(self, *args: Any, self_layers: int = 1, self_points: int = 4, **kwargs: Any):
        kwargs["per_voxel_embed"] = False
        kwargs["embed_unselected"] = False
        heads = int(kwargs.get("num_heads", 4))
        super().__init__(*args, **kwargs)
        self.self_layers = nn.ModuleList(SelfAttentionLayer(self.embed_dims, heads, self_points)
                                         for _ in range(self_layers))

    def select_queries(self, batch: dict[str, Any], visible: Tensor) -> Tensor:
        proposed = batch["_cig_proposal"]
        return proposed & visible.any(1).to(proposed.device)

    def forward(self, feats: Sequence[Tensor], batch: dict[str, Any], raw: Tensor = None, return_mask: bool = False):  # type: ignore[override]
        """feats: L x [B, V, C, H_l, W_l] (the fused pyramid);  raw: Tensor  # [B, C, X, Y, Z] (stage 1's volume)
        ->  Tensor  # [B, C, X, Y, Z]"""
        B, V, C = feats[0].shape[:3]
        N = self.num_voxels
        X, Y, Z = self.grid_shape
        pix_all, visible = self.projections(batch)
        mask = self.select_queries(batch, visible)
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            index = torch.arange(N, device=mask.device)[None].expand(B, N)
            valid = mask
        else:
            index, valid = pad_selected(mask)
        raw_flat = raw.reshape(B, C, N)
        base = (self.positional_volume() + self.mask_token[:, None, None, None]).view(1, C, N).expand(B, C, N)
        if index.shape[1] == 0:
            dense = base
        else:
            M = index.shape[1]
            idx = index[:, None, :].expand(-1, C, -1)  # [B, C, M]
            q = raw_flat.gather(2, idx).transpose(1, 2) + self.query_embed  # [B, M, C]
            qpos = self.positional_at(index)
            pix = pix_all.gather(2, index[:, None, :, None].expand(B, V, M, 2))
            seen = visible.gather(2, index[:, None, :].expand(B, V, M)) & valid[:, None]
            pix = torch.where(seen[..., None], pix, torch.zeros_like(pix))
            ref = self.reference_points(batch, pix)
            for layer in self.layers:
                q = layer(q, feats, ref, query_pos=qpos, query_mask=seen)
            vals = torch.where(valid[:, None, :], q.transpose(1, 2), base.gather(2, idx))
            dense = base.scatter(2, idx, vals)
        x = (dense + raw_flat).transpose(1, 2)  # the raw volume added; [B, N, C]
        pos = self.positional()
        for layer in self.self_layers:
            x = layer(x, self.grid_shape, pos)
        vol = x.transpose(1, 2).reshape(B, C, X, Y, Z)
        return (vol, mask) if return_mask else vol


# ------------------------------------------------------------------------------------------------
# SAM-mask distillation
# ------------------------------------------------------------------------------------------------

PAIR_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))
"""Pixel-pair directions (dy, dx) of the affinity loss, scaled by each dilation."""


def masks_at(masks: Tensor, hw: tuple[int, int]) -> Tensor:
    """Mask id images [BV, H, W] -> [BV, h, w] by nearest sampling at the map's pixel centres."""
    H, W = masks.shape[-2:]
    h, w = hw
    rows = ((torch.arange(h, device=masks.device) + 0.5) * (H / h)).long().clamp(max=H - 1)
    cols = ((torch.arange(w, device=masks.device) + 0.5) * (W / w)).long().clamp(max=W - 1)
    return masks[:, rows][:, :, cols]


def _shift_pair(t: Tensor, dy: int, dx: int) -> tuple[Tensor, Tensor]:
    """(t at p, t at p + (dy, dx)) over the pixels p where both exist (last two dims are h, w)."""
    h, w = t.shape[-2:]
    y0, y1 = 0, h - dy
    x0, x1 = max(0, -dx), w - max(0, dx)
    a = t[..., y0:y1, x0:x1]
    b = t[..., y0 + dy:y1 + dy, x0 + dx:x1 + dx]
    return a, b


def mask_affinity_targets(masks: Tensor, dilations: Sequence[int]) -> list[tuple[int, int, Tensor]]:
    """For every pair offset: (dy, dx, target Tensor [BV, h', w'] float: 1 = same SAM mask, 0 = two different
    masks, -1 = ignored (either pixel has no mask))."""
    out = []
    for d in dilations:
        for dy, dx in PAIR_DIRECTIONS:
            a, b = _shift_pair(masks, dy * d, dx * d)
            t = torch.where((a > 0) & (b > 0), (a == b).float(), torch.full(a.shape, -1.0, device=masks.device))
            out.append((dy * d, dx * d, t))
    return out


class MaskAffinity(nn.Module):
    """Pair affinity from the segmentation embedding: ``logit(p, q) = s * cos(e_p, e_q) + b`` with a
    learned scale ``s`` (starts at 5) and bias ``b`` (starts at -2.5: orthogonal embeddings read as
    "different masks" as confidently as equal ones read as "same mask")."""

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(5.0)))
        self.bias = nn.Parameter(torch.tensor(-2.5))

    def forward(self, embed: Tensor, masks: Tensor, dilations: Sequence[int]) -> Tensor:
        """embed: Tensor  # [BV, E, h, w];  masks: Tensor  # [BV, H, W] int (0 = none)  ->  scalar loss:
        class-balanced BCE (same-mask pairs and different-mask pairs each weigh one half)."""
        e = F.normalize(embed.float(), dim=1)
        m = masks_at(masks, tuple(e.shape[-2:]))
        pos_sum = e.new_zeros(())
        neg_sum = e.new_zeros(())
        pos_n = e.new_zeros(())
        neg_n = e.new_zeros(())
        scale = self.log_scale.exp()
        for dy, dx, t in mask_affinity_targets(m, dilations):
            a, b = _shift_pair(e, dy, dx)
            logit = scale * (a * b).sum(1) + self.bias
            valid = t >= 0
            bce = F.binary_cross_entropy_with_logits(logit, t.clamp(min=0), reduction="none")
            pos = valid & (t > 0.5)
            neg = valid & (t < 0.5)
            pos_sum = pos_sum + (bce * pos).sum()
            neg_sum = neg_sum + (bce * neg).sum()
            pos_n = pos_n + pos.sum()
            neg_n = neg_n + neg.sum()
        terms = [s / n for s, n in ((pos_sum, pos_n), (neg_sum, neg_n)) if float(n) > 0]
        if not terms:
            return embed.sum() * 0.0 + self.bias * 0.0
        return sum(terms) / len(terms)
