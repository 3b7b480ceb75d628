"""2D -> 3D lifting with depth-proposed voxel queries (VoxFormer / Symphonies style, kept light).

1. :class:`DepthProposal` back-projects the batch's depth map into the velodyne frame and marks the
   voxels of the query grid that contain a point (optionally dilated): the *proposed* voxels.
2. :class:`VoxelQueryLifting` gives every voxel a learned query (+ a learned factorised 3D positional
   embedding). The proposed voxels that are in view attend to the image feature maps with
   :class:`~occ_core.ops.deform_attn.MSDeformCrossAttention` around their projection
   (``projected_pix_S`` of the batch); all other voxels get a learned mask token. The result is a
   dense volume ``[B, C, X, Y, Z]`` for a 3D decoder.

The steps are separate methods (:meth:`VoxelQueryLifting.select_queries`,
:meth:`~VoxelQueryLifting.reference_points`, :meth:`~VoxelQueryLifting.attention_kwargs`) so a
subclass can change how the attention samples (VPOcc's VP-guided attention overrides
``attention_kwargs`` to pass ``fixed_offsets``).

Conventions (docs/design.md): grid axes x forward, y left, z up in the velodyne frame, origin
``(0, -25.6, -2)`` m; flat index ``x * Y * Z + y * Z + z``; pixel coordinates use the centre
convention (pixel ``u`` covers ``[u - 0.5, u + 0.5]``), a horizontal flip maps ``u -> W - 1 - u``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.ops.deform_attn import MSDeformCrossAttention

__all__ = [
    "SCENE_ORIGIN",
    "SCENE_SIZE",
    "DepthProposal",
    "VoxelQueryLifting",
    "voxel_centres",
    "project_voxel_centres",
    "pad_selected",
]

SCENE_ORIGIN: tuple[float, float, float] = (0.0, -25.6, -2.0)
"""Minimum corner of the SemanticKITTI scene volume in the velodyne frame (metres)."""
SCENE_SIZE: tuple[float, float, float] = (51.2, 51.2, 6.4)
"""Extent of the scene volume (metres): 256 x 256 x 32 voxels of 0.2 m."""


def voxel_centres(grid_shape: Sequence[int], origin: Sequence[float] = SCENE_ORIGIN,
                  scene_size: Sequence[float] = SCENE_SIZE, device=None, dtype=torch.float32) -> Tensor:
    """Centres of the voxels of a grid over the scene, C order: Tensor  # [X*Y*Z, 3] (metres, velodyne)."""
    axes = [origin[i] + (torch.arange(grid_shape[i], device=device, dtype=torch.float64) + 0.5)
            * (scene_size[i] / grid_shape[i]) for i in range(3)]
    xx, yy, zz = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1), zz.reshape(-1)], dim=1).to(dtype)


def project_voxel_centres(
    centres: Tensor,  # [N, 3] velodyne frame
    K: Tensor,  # [B, 3, 3]
    Tr: Tensor,  # [B, 4, 4] velodyne -> cam
    image_size: tuple[int, int],  # (H, W)
    flipped: Tensor | None = None,  # [B] bool
) -> tuple[Tensor, Tensor]:  # ([B, N, 2] (u, v) pixels, [B, N] bool in view)
    """Project voxel centres into the (possibly flipped) image without rounding; used when the batch
    carries no ``projected_pix_S`` for the needed scale."""
    H, W = image_size
    c = centres.to(K.dtype)
    cam = torch.einsum("bij,nj->bni", Tr[:, :3, :3], c) + Tr[:, None, :3, 3]  # [B, N, 3]
    z = cam[..., 2]
    safe = torch.where(z.abs() > 1e-6, z, torch.ones_like(z))
    pix = torch.einsum("bij,bnj->bni", K, cam)[..., :2] / safe[..., None]
    if flipped is not None:
        u = torch.where(flipped.view(-1, 1).bool(), (W - 1) - pix[..., 0], pix[..., 0])
        pix = torch.stack([u, pix[..., 1]], -1)
    fov = (z > 0) & (pix[..., 0] > -0.5) & (pix[..., 0] < W - 0.5) & (pix[..., 1] > -0.5) & (pix[..., 1] < H - 0.5)
    return pix, fov


class DepthProposal(nn.Module):
    """Voxels of a grid hit by the back-projected depth map (VoxFormer's query proposal, from depth).

    Args:
        grid_shape: ``(X, Y, Z)`` of the query grid; voxel size is ``51.2 / X`` m (``0.2 * 256 / X``).
        dilate: mark also voxels within this many voxels (Chebyshev distance) of a hit voxel.
        max_depth: ignore depth beyond this (metres); ``None`` keeps all.
    """

    def __init__(self, grid_shape: Sequence[int] = (64, 64, 8), dilate: int = 1, max_depth: float | None = None,
                 origin: Sequence[float] = SCENE_ORIGIN, scene_size: Sequence[float] = SCENE_SIZE):
        super().__init__()
        self.grid_shape = tuple(int(s) for s in grid_shape)
        self.dilate = int(dilate)
        self.max_depth = max_depth
        self.origin = tuple(float(o) for o in origin)
        self.voxel_size = tuple(float(scene_size[i]) / self.grid_shape[i] for i in range(3))

    @torch.no_grad()
    def points(self, depth: Tensor, K: Tensor, Tr: Tensor, flipped: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Back-project every pixel with depth > 0.

        depth: Tensor  # [B, 1, H, W] metres, 0 = none
        K: Tensor  # [B, 3, 3];  Tr: Tensor  # [B, 4, 4] velodyne -> cam;  flipped: Tensor  # [B] bool

        Returns (batch index Tensor  # [M], velodyne points Tensor  # [M, 3]).
        """
        B, _, H, W = depth.shape
        d = depth[:, 0]
        valid = d > 0
        if self.max_depth is not None:
            valid &= d <= self.max_depth
        b, v, u = valid.nonzero(as_tuple=True)
        z = d[b, v, u].double()
        u = u.double()
        if flipped is not None:
            fl = flipped.to(depth.device).bool()[b]
            u = torch.where(fl, (W - 1) - u, u)  # undo the horizontal flip: K describes the unflipped image
        pix = torch.stack([u * z, v.double() * z, z], dim=1)  # [M, 3]
        cam = torch.einsum("mij,mj->mi", torch.linalg.inv(K.double())[b], pix)
        T_inv = torch.linalg.inv(Tr.double())[b]  # cam -> velodyne
        velo = torch.einsum("mij,mj->mi", T_inv[:, :3, :3], cam) + T_inv[:, :3, 3]
        return b, velo

    @torch.no_grad()
    def forward(self, depth: Tensor, K: Tensor, Tr: Tensor, flipped: Tensor | None = None) -> Tensor:
        """depth: Tensor  # [B, 1, H, W];  K: Tensor  # [B, 3, 3];  Tr: Tensor  # [B, 4, 4];
        flipped: Tensor  # [B] bool (optional)

        Returns Tensor  # [B, X*Y*Z] bool, True where a depth point falls in the voxel (after dilation).
        """
        B = depth.shape[0]
        X, Y, Z = self.grid_shape
        b, velo = self.points(depth, K, Tr, flipped)
        origin = torch.tensor(self.origin, dtype=velo.dtype, device=velo.device)
        size = torch.tensor(self.voxel_size, dtype=velo.dtype, device=velo.device)
        idx = torch.floor((velo - origin) / size).long()
        inside = ((idx >= 0) & (idx < torch.tensor([X, Y, Z], device=idx.device))).all(dim=1)
        b, idx = b[inside], idx[inside]
        occ = torch.zeros(B, X * Y * Z, dtype=torch.bool, device=depth.device)
        occ[b, idx[:, 0] * (Y * Z) + idx[:, 1] * Z + idx[:, 2]] = True
        if self.dilate > 0:
            k = 2 * self.dilate + 1
            grid = occ.view(B, 1, X, Y, Z).float()
            occ = F.max_pool3d(grid, k, stride=1, padding=self.dilate).view(B, -1) > 0
        return occ


def pad_selected(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the True entries of each row, padded to the longest row.

    mask: Tensor  # [B, N] bool
    Returns (index Tensor  # [B, M] long, ascending within a row, valid Tensor  # [B, M] bool); padded
    slots point at distinct unselected entries and have ``valid == False``.
    """
    B, N = mask.shape
    counts = mask.sum(1)
    M = int(counts.max().item()) if B else 0
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :M]
    valid = torch.arange(M, device=mask.device)[None] < counts[:, None]
    return order, valid


class _FFN(nn.Sequential):
    def __init__(self, dims: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dims, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dims))


class LiftingLayer(nn.Module):
    """Deformable cross-attention + FFN, post-norm (Deformable DETR encoder layer without self-attention)."""

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int, ffn_ratio: float = 2.0,
                 dropout: float = 0.0, **attn_kwargs: Any):
        super().__init__()
        self.attn = MSDeformCrossAttention(embed_dims, num_heads, num_levels, num_points, **attn_kwargs)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.ffn = _FFN(embed_dims, int(embed_dims * ffn_ratio), dropout)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: Tensor, feats: Sequence[Tensor], ref: Tensor, query_pos: Tensor | None = None,
                query_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        """query: Tensor  # [B, M, C];  feats: L x [B, C, H_l, W_l];  ref: Tensor  # [B, M, 2] -> [B, M, C]"""
        q = self.norm1(query + self.drop(self.attn(query, feats, ref, query_pos=query_pos, query_mask=query_mask,
                                                   **kwargs)))
        return self.norm2(q + self.drop(self.ffn(q)))


class VoxelQueryLifting(nn.Module):
    """Depth-proposed voxel queries lifted by deformable cross-attention to image features.

    Args:
        embed_dims: query channels ``C`` (= channels of the image feature maps, e.g. the FPN's).
        grid_shape: ``(X, Y, Z)``; must be ``256 / S`` x ``256 / S`` x ``32 / S`` for the projection
            scale ``S`` whose ``projected_pix_S`` / ``fov_mask_S`` the batch carries (if the batch does not
            carry them, they are computed from ``K`` and ``Tr``).
        num_layers, num_heads, num_levels, num_points: attention stack layout.
        ffn_ratio, dropout: FFN hidden size ratio and dropout.
        proposal_dilate: dilation of the depth proposal (voxels).
        per_voxel_embed: a learned embedding per voxel (VoxFormer); else one shared query vector.
        chunk_size: query chunk of the attention op (memory bound).
        attn_kwargs: more arguments for :class:`MSDeformCrossAttention` (``learn_offsets``, ``offset_init``).
    """

    def __init__(
        self,
        embed_dims: int = 64,
        grid_shape: Sequence[int] = (64, 64, 8),
        num_layers: int = 1,
        num_heads: int = 4,
        num_levels: int = 3,
        num_points: int = 4,
        ffn_ratio: float = 2.0,
        dropout: float = 0.0,
        proposal_dilate: int = 1,
        per_voxel_embed: bool = True,
        chunk_size: int | None = 16384,
        **attn_kwargs: Any,
    ):
        super().__init__()
        self.embed_dims = embed_dims
        self.grid_shape = tuple(int(s) for s in grid_shape)
        X, Y, Z = self.grid_shape
        if 256 % X or X != Y or X * 32 != Z * 256:
            raise ValueError(f"grid_shape must be 256/S x 256/S x 32/S for an integer S (got {self.grid_shape})")
        self.scale = 256 // X
        self.num_voxels = X * Y * Z
        self.num_levels = num_levels
        self.proposal = DepthProposal(self.grid_shape, dilate=proposal_dilate)
        n_embed = self.num_voxels if per_voxel_embed else 1
        self.query_embed = nn.Parameter(torch.randn(n_embed, embed_dims) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(embed_dims) * 0.02)
        # factorised learned 3D positional embedding: pos[x, y, z] = pos_x[x] + pos_y[y] + pos_z[z]
        # (cheap for every voxel, unlike an MLP on coordinates), initialised with sinusoids
        self.pos_x = nn.Parameter(self._sin_init(X, embed_dims))
        self.pos_y = nn.Parameter(self._sin_init(Y, embed_dims))
        self.pos_z = nn.Parameter(self._sin_init(Z, embed_dims))
        attn_kwargs.setdefault("chunk_size", chunk_size)
        self.layers = nn.ModuleList(
            LiftingLayer(embed_dims, num_heads, num_levels, num_points, ffn_ratio, dropout, **attn_kwargs)
            for _ in range(num_layers)
        )

    @staticmethod
    def _sin_init(n: int, dims: int) -> Tensor:
        """Tensor  # [n, dims]: sinusoids of the normalised voxel centre (small scale)."""
        pos = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        freqs = torch.arange(1, dims // 2 + 1, dtype=torch.float32) * math.pi
        ang = pos[:, None] * freqs[None]
        emb = torch.cat([ang.sin(), ang.cos()], dim=1)
        if emb.shape[1] < dims:
            emb = F.pad(emb, (0, dims - emb.shape[1]))
        return 0.1 * emb

    # -- pieces a subclass may override -------------------------------------------------------
    def projections(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(pixels Tensor  # [B, N, 2] (u, v) in the batch image, fov Tensor  # [B, N] bool) of the voxel
        centres at this grid's scale: the batch's ``projected_pix_S`` / ``fov_mask_S`` when present."""
        S = self.scale
        key = f"projected_pix_{S}"
        if key in batch:
            pix = batch[key].float()
            fov = batch.get(f"fov_mask_{S}")
            if fov is None:
                H, W = batch["image"].shape[-2:]
                fov = (pix[..., 0] > -0.5) & (pix[..., 0] < W - 0.5) & (pix[..., 1] > -0.5) & (pix[..., 1] < H - 0.5)
            return pix, fov.bool()
        centres = voxel_centres(self.grid_shape, device=batch["K"].device)
        return project_voxel_centres(centres, batch["K"].float(), batch["Tr"].float(),
                                     tuple(batch["image"].shape[-2:]), batch.get("flipped"))

    def select_queries(self, batch: dict[str, Any], fov: Tensor) -> Tensor:
        """Voxels that attend to the image: Tensor  # [B, N] bool = depth-proposed AND in view."""
        proposed = self.proposal(batch["depth"], batch["K"], batch["Tr"], batch.get("flipped"))
        return proposed & fov.to(proposed.device)

    def reference_points(self, batch: dict[str, Any], pix: Tensor) -> Tensor:
        """pix: Tensor  # [B, M, 2] pixels (centre convention)  ->  Tensor  # [B, M, 2] normalised
        ``((u + 0.5) / W, (v + 0.5) / H)`` of the batch image (``grid_sample``'s align_corners=False)."""
        H, W = batch["image"].shape[-2:]
        wh = torch.tensor([W, H], dtype=pix.dtype, device=pix.device)
        return (pix + 0.5) / wh

    def attention_kwargs(self, batch: dict[str, Any], index: Tensor, pix: Tensor, ref: Tensor,
                         feats: Sequence[Tensor]) -> dict[str, Any]:
        """Extra arguments of every attention call (default none). VPOcc returns
        ``{"fixed_offsets": Tensor  # [B, M, L, P, 2]}`` computed from the VP and ``pix`` here."""
        return {}

    # -- forward ------------------------------------------------------------------------------
    def positional(self) -> Tensor:
        """Tensor  # [N, C]: the 3D positional embedding of every voxel (C order)."""
        return self.positional_volume().flatten(1).t()

    def positional_volume(self) -> Tensor:
        """Tensor  # [C, X, Y, Z]: the 3D positional embedding as a volume."""
        return (self.pos_x.t()[:, :, None, None] + self.pos_y.t()[:, None, :, None] + self.pos_z.t()[:, None, None, :])

    def positional_at(self, index: Tensor) -> Tensor:
        """index: Tensor  # [B, M] flat voxel indices  ->  Tensor  # [B, M, C]"""
        X, Y, Z = self.grid_shape
        ix, rem = index // (Y * Z), index % (Y * Z)
        return self.pos_x[ix] + self.pos_y[rem // Z] + self.pos_z[rem % Z]

    def forward(self, feats: Sequence[Tensor], batch: dict[str, Any], return_mask: bool = False):
        """feats: list of Tensor  # [B, C, H_l, W_l] (image feature maps, ``num_levels`` of them)
        batch: the batch dict (``image``, ``depth``, ``K``, ``Tr``, ``projected_pix_S``, ``fov_mask_S``,
        optional ``flipped``).

        Returns Tensor  # [B, C, X, Y, Z]; with ``return_mask`` also the query mask Tensor  # [B, X*Y*Z] bool.
        """
        if len(feats) != self.num_levels:
            raise ValueError(f"lifting built for {self.num_levels} feature levels, got {len(feats)}")
        B, C = feats[0].shape[:2]
        if C != self.embed_dims:
            raise ValueError(f"feature maps have {C} channels, lifting expects embed_dims={self.embed_dims}")
        N = self.num_voxels
        X, Y, Z = self.grid_shape
        pix_all, fov = self.projections(batch)
        mask = self.select_queries(batch, fov)
        index, valid = pad_selected(mask)  # [B, M]
        # non-selected voxels: mask token + positional embedding; channel-first [B, C, N]
        base = (self.positional_volume() + self.mask_token[:, None, None, None]).view(1, C, N).expand(B, C, N)
        if index.shape[1] == 0:
            out = base
        else:
            q = self.query_embed[index] if self.query_embed.shape[0] > 1 else self.query_embed.expand(*index.shape, C)
            qpos = self.positional_at(index)  # [B, M, C]
            pix = pix_all.gather(1, index[..., None].expand(-1, -1, 2))
            ref = self.reference_points(batch, pix)
            kw = self.attention_kwargs(batch, index, pix, ref, feats)
            for layer in self.layers:
                q = layer(q, feats, ref, query_pos=qpos, query_mask=valid, **kw)
            idx = index[:, None, :].expand(-1, C, -1)  # [B, C, M]
            # padded slots write back the base value they point at
            vals = torch.where(valid[:, None, :], q.transpose(1, 2), base.gather(2, idx))
            out = base.scatter(2, idx, vals)
        vol = out.view(B, C, X, Y, Z)
        return (vol, mask) if return_mask else vol
