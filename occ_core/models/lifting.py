"""2D -> 3D lifting with depth-proposed voxel queries (VoxFormer / Symphonies style, kept light),
for any number of cameras.

1. :class:`DepthProposal` back-projects every camera's depth map into the grid frame and marks the
   voxels of the query grid that contain a point (optionally dilated): the *proposed* voxels.
2. :class:`VoxelQueryLifting` gives every voxel a learned query (+ a learned factorised 3D positional
   embedding). The proposed voxels that some camera sees attend to that camera's image feature maps
   with :class:`~occ_core.ops.deform_attn.MSDeformCrossAttention` around their projection; the
   attention is averaged over the cameras that see the voxel (BEVFormer's spatial cross-attention);
   all other voxels get a learned mask token. The result is a dense volume ``[B, C, X, Y, Z]``.

The query grid is the dataset grid divided by an integer stride; voxel centres are projected on the
device from the batch's ``grid_to_cam`` / ``intrinsics`` / ``crop_to_image``
(:func:`occ_core.geometry.cameras.project_points`, rounded in the crop like the benchmark loaders).

The steps are separate methods (:meth:`VoxelQueryLifting.projections`,
:meth:`~VoxelQueryLifting.select_queries`, :meth:`~VoxelQueryLifting.reference_points`,
:meth:`~VoxelQueryLifting.attention_kwargs`) so a subclass can change how the attention samples
(VPOcc's VP-guided attention overrides ``attention_kwargs`` to pass ``fixed_offsets``).

One forward serves training, inference and export: eagerly the selected queries are gathered and
padded to the longest row; while tracing (``torch.jit.trace``, the TorchScript-based ONNX export) or
exporting (``torch.export``, the dynamo ONNX exporter) every voxel is a query and the mask decides
which results are kept, so shapes do not depend on the data. Each query's
attention and FFN depend on that query alone, so both give the same values for the selected voxels.

Conventions (docs/design.md): flat index ``x * Y * Z + y * Z + z``; pixel coordinates use the centre
convention (pixel ``u`` covers ``[u - 0.5, u + 0.5]``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.ops.deform_attn import MSDeformCrossAttention

__all__ = [
    "DepthProposal",
    "depth_voxel_index",
    "VoxelQueryLifting",
    "pad_selected",
]


def depth_voxel_index(depth: Tensor, intrinsics: Tensor, grid_to_cam: Tensor, grid_shape: Sequence[int],
                      voxel_size: Sequence[float], origin: Sequence[float], max_depth: float | None = None) -> Tensor:
    """The voxel of a grid each depth pixel's back-projected point falls in.

    depth: Tensor  # [B, N, 1, H, W] metres (0 = none);  intrinsics: Tensor  # [B, N, 3, 3] (folded);
    grid_to_cam: Tensor  # [B, N, 4, 4]. Returns Tensor  # [B, N*H*W] long: the flat voxel index
    (``x * Y * Z + y * Z + z``), or ``X*Y*Z`` (a dump slot) for pixels without depth, beyond ``max_depth``
    or outside the grid, so scatters into ``X*Y*Z + 1`` slots have no data-dependent shape. Float64."""
    from occ_core.geometry.cameras import unproject_depth

    B = depth.shape[0]
    X, Y, Z = (int(s) for s in grid_shape)
    pts = unproject_depth(depth, intrinsics, grid_to_cam).reshape(B, -1, 3)  # [B, N*H*W, 3]
    d = depth.double().reshape(B, -1)
    valid = d > 0
    if max_depth is not None:
        valid = valid & (d <= max_depth)
    org = torch.tensor(tuple(origin), dtype=torch.float64, device=depth.device)
    size = torch.tensor(tuple(voxel_size), dtype=torch.float64, device=depth.device)
    idx = torch.floor((pts - org) / size)
    dims = torch.tensor([X, Y, Z], dtype=torch.float64, device=depth.device)
    inside = valid & ((idx >= 0) & (idx < dims)).all(-1)
    idx = torch.where(inside[..., None], idx, torch.zeros_like(idx)).long()
    flat = idx[..., 0] * (Y * Z) + idx[..., 1] * Z + idx[..., 2]
    return torch.where(inside, flat, torch.full_like(flat, X * Y * Z))


class DepthProposal(nn.Module):
    """Voxels of a grid hit by the back-projected depth maps (VoxFormer's query proposal, from depth).

    Args:
        grid_shape, voxel_size, origin: the query grid (in the dataset's grid frame).
        dilate: mark also voxels within this many voxels (Chebyshev distance) of a hit voxel.
        max_depth: ignore depth beyond this (metres); ``None`` keeps all.

    Every pixel is back-projected (pixels without depth or outside the grid go to a dump slot), so
    the op has no data-dependent shape and exports as it is.
    """

    def __init__(self, grid_shape: Sequence[int], voxel_size: Sequence[float], origin: Sequence[float],
                 dilate: int = 1, max_depth: float | None = None):
        super().__init__()
        self.grid_shape = tuple(int(s) for s in grid_shape)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.origin = tuple(float(o) for o in origin)
        self.dilate = int(dilate)
        self.max_depth = max_depth

    @torch.no_grad()
    def forward(self, depth: Tensor, intrinsics: Tensor, grid_to_cam: Tensor) -> Tensor:
        """depth: Tensor  # [B, N, 1, H, W] metres, 0 = none;  intrinsics: Tensor  # [B, N, 3, 3] (folded);
        grid_to_cam: Tensor  # [B, N, 4, 4]

        Returns Tensor  # [B, X*Y*Z] bool, True where a depth point of any camera falls in the voxel
        (after dilation)."""
        B = depth.shape[0]
        X, Y, Z = self.grid_shape
        n = X * Y * Z
        flat = depth_voxel_index(depth, intrinsics, grid_to_cam, self.grid_shape, self.voxel_size, self.origin,
                                 self.max_depth)
        occ = torch.zeros(B, n + 1, dtype=torch.float32, device=depth.device)
        occ = occ.scatter(1, flat, torch.ones_like(flat, dtype=torch.float32))[:, :n]
        if self.dilate > 0:
            k = 2 * self.dilate + 1
            occ = F.max_pool3d(occ.view(B, 1, X, Y, Z), k, stride=1, padding=self.dilate).view(B, n)
        return occ > 0


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
        """query: Tensor  # [B, M, C];  feats: L x [B, V, C, H_l, W_l] (V cameras);
        ref: Tensor  # [B, V, M, 2] normalised;  query_mask: Tensor  # [B, V, M] bool (query attends to
        camera v)  ->  Tensor  # [B, M, C]

        The attention update is the mean over the cameras a query attends to."""
        V = ref.shape[1]
        total = None
        for v in range(V):
            out = self.attn(query, [f[:, v] for f in feats], ref[:, v], query_pos=query_pos,
                            query_mask=None if query_mask is None else query_mask[:, v], **kwargs)
            total = out if total is None else total + out
        if query_mask is not None and V > 1:
            total = total / query_mask.sum(1).clamp(min=1)[..., None].to(total.dtype)
        q = self.norm1(query + self.drop(total))
        return self.norm2(q + self.drop(self.ffn(q)))


class VoxelQueryLifting(nn.Module):
    """Depth-proposed voxel queries lifted by deformable cross-attention to the cameras' features.

    Args:
        embed_dims: query channels ``C`` (= channels of the image feature maps, e.g. the FPN's).
        grid_shape, voxel_size, origin: the query grid in the dataset's grid frame (the dataset grid
            divided by an integer stride; see :meth:`from_spec`).
        crop_size: ``(W, H)`` of the cameras' benchmark crop (the pixel grid projections are rounded in).
        num_layers, num_heads, num_levels, num_points: attention stack layout.
        ffn_ratio, dropout: FFN hidden size ratio and dropout.
        proposal_dilate: dilation of the depth proposal (voxels).
        per_voxel_embed: a learned embedding per voxel (VoxFormer); else one shared query vector.
        embed_unselected: voxels that do not attend (not proposed, or seen by no camera) also start from
            their learned per-voxel embedding (plus the mask token) instead of the mask token alone, so the
            decoder gets a learnable per-voxel prior everywhere (needs ``per_voxel_embed``).
        chunk_size: query chunk of the attention op (memory bound).
        attn_kwargs: more arguments for :class:`MSDeformCrossAttention` (``learn_offsets``, ``offset_init``).
    """

    def __init__(
        self,
        embed_dims: int,
        grid_shape: Sequence[int],
        voxel_size: Sequence[float],
        origin: Sequence[float],
        crop_size: Sequence[int],
        num_layers: int = 1,
        num_heads: int = 4,
        num_levels: int = 3,
        num_points: int = 4,
        ffn_ratio: float = 2.0,
        dropout: float = 0.0,
        proposal_dilate: int = 1,
        per_voxel_embed: bool = True,
        embed_unselected: bool = False,
        chunk_size: int | None = 16384,
        **attn_kwargs: Any,
    ):
        super().__init__()
        self.embed_dims = embed_dims
        self.grid_shape = tuple(int(s) for s in grid_shape)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.origin = tuple(float(o) for o in origin)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        X, Y, Z = self.grid_shape
        self.num_voxels = X * Y * Z
        self.num_levels = num_levels
        self.proposal = DepthProposal(self.grid_shape, self.voxel_size, self.origin, dilate=proposal_dilate)
        n_embed = self.num_voxels if per_voxel_embed else 1
        self.query_embed = nn.Parameter(torch.randn(n_embed, embed_dims) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(embed_dims) * 0.02)
        if embed_unselected and not per_voxel_embed:
            raise ValueError("embed_unselected needs per_voxel_embed")
        self.embed_unselected = bool(embed_unselected)
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
        from occ_core.geometry.cameras import voxel_centres

        self.register_buffer("centres", voxel_centres(self.grid_shape, self.voxel_size, self.origin), persistent=False)

    @classmethod
    def from_spec(cls, spec, stride: int, embed_dims: int, **kwargs: Any) -> "VoxelQueryLifting":
        """A lifting over the dataset grid of ``spec`` (a :class:`~occ_core.data.spec.DatasetSpec`)
        divided by ``stride``, for its cameras' crop size."""
        g = spec.grid.scaled(int(stride))
        return cls(embed_dims, g.shape, g.voxel_size, g.origin, spec.cameras[0].image_size, **kwargs)

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
        """(pixels Tensor  # [B, V, N, 2] (u, v) in the network images, visible Tensor  # [B, V, N] bool)
        of the query-grid voxel centres in every camera."""
        from occ_core.geometry.cameras import project_points

        pix, visible, _ = project_points(self.centres, batch["grid_to_cam"], batch["intrinsics"],
                                         batch.get("crop_to_image"), self.crop_size)
        return pix, visible

    def select_queries(self, batch: dict[str, Any], visible: Tensor) -> Tensor:
        """Voxels that attend to the images: Tensor  # [B, N] bool = depth-proposed AND seen by a camera."""
        proposed = self.proposal(batch["depth"], batch["intrinsics"], batch["grid_to_cam"])
        return proposed & visible.any(1).to(proposed.device)

    def reference_points(self, batch: dict[str, Any], pix: Tensor) -> Tensor:
        """pix: Tensor  # [B, V, M, 2] pixels (centre convention)  ->  Tensor  # [B, V, M, 2] normalised
        ``((u + 0.5) / W, (v + 0.5) / H)`` of the network images (``grid_sample``'s align_corners=False)."""
        H, W = batch["images"].shape[-2:]
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
        """feats: list of Tensor  # [B, V, C, H_l, W_l] (each camera's feature maps, ``num_levels`` of them)
        batch: the batch dict (``images``, ``depth``, ``intrinsics``, ``grid_to_cam``, ``crop_to_image``).

        Returns Tensor  # [B, C, X, Y, Z]; with ``return_mask`` also the query mask Tensor  # [B, X*Y*Z] bool.
        """
        if len(feats) != self.num_levels:
            raise ValueError(f"lifting built for {self.num_levels} feature levels, got {len(feats)}")
        B, V, C = feats[0].shape[:3]
        if C != self.embed_dims:
            raise ValueError(f"feature maps have {C} channels, lifting expects embed_dims={self.embed_dims}")
        N = self.num_voxels
        X, Y, Z = self.grid_shape
        pix_all, visible = self.projections(batch)  # [B, V, N, 2], [B, V, N]
        mask = self.select_queries(batch, visible)
        if torch.jit.is_tracing() or torch.compiler.is_exporting():  # export: every voxel is a query, the mask keeps the results
            index = torch.arange(N, device=mask.device)[None].expand(B, N)
            valid = mask
        else:
            index, valid = pad_selected(mask)  # [B, M]
        # non-selected voxels: mask token + positional embedding; channel-first [B, C, N]
        base = (self.positional_volume() + self.mask_token[:, None, None, None]).view(1, C, N)
        if self.embed_unselected:
            base = base + self.query_embed.t()[None]
        base = base.expand(B, C, N)
        if index.shape[1] == 0:
            out = base
        else:
            M = index.shape[1]
            q = self.query_embed[index] if self.query_embed.shape[0] > 1 else self.query_embed.expand(*index.shape, C)
            qpos = self.positional_at(index)  # [B, M, C]
            pix = pix_all.gather(2, index[:, None, :, None].expand(B, V, M, 2))
            seen = visible.gather(2, index[:, None, :].expand(B, V, M)) & valid[:, None]
            pix = torch.where(seen[..., None], pix, torch.zeros_like(pix))  # finite everywhere
            ref = self.reference_points(batch, pix)
            kw = self.attention_kwargs(batch, index, pix, ref, feats)
            for layer in self.layers:
                q = layer(q, feats, ref, query_pos=qpos, query_mask=seen, **kw)
            idx = index[:, None, :].expand(-1, C, -1)  # [B, C, M]
            # padded / unselected slots write back the base value they point at
            vals = torch.where(valid[:, None, :], q.transpose(1, 2), base.gather(2, idx))
            out = base.scatter(2, idx, vals)
        vol = out.reshape(B, C, X, Y, Z)
        return (vol, mask) if return_mask else vol
