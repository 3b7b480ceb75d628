"""Multi-scale deformable attention (Deformable DETR) in pure torch.

:func:`ms_deform_attn` has the semantics of mmcv's ``multi_scale_deformable_attn_pytorch``:
bilinear sampling with ``F.grid_sample`` (zeros padding, ``align_corners=False``) of every level
at ``num_points`` locations per head and query, weighted by attention weights and summed.

Coordinates are normalised to ``[0, 1]`` in ``grid_sample``'s ``align_corners=False`` sense: on a
map of width ``W``, ``x = (u + 0.5) / W`` is the centre of pixel column ``u`` (``x = 0`` and ``1``
are the outer edges of the first and last pixels). Outside ``[0, 1]`` values are zero.

:class:`MSDeformCrossAttention` is the attention module (mmcv's ``MultiScaleDeformableAttention``
without the residual): learned sampling offsets around a reference point, softmax attention
weights over levels x points, value and output projections. Its ``fixed_offsets`` path lets a
caller impose the sampling pattern (VPOcc's VP-guided points) with optional learned refinement.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ms_deform_attn", "MSDeformCrossAttention", "flatten_levels"]

SpatialShapes = Tensor | Sequence[Sequence[int]]


def _shape_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def _sample_levels(
    value_levels: list[Tensor],  # L x [B*heads, Ch, H_l, W_l]
    sampling_locations: Tensor,  # [B, Nq, heads, L, P, 2]
    attention_weights: Tensor,  # [B, Nq, heads, L, P]
) -> Tensor:  # [B, Nq, heads*Ch]
    B, Nq, Hh, L, P, _ = sampling_locations.shape
    Ch = value_levels[0].shape[1]
    grids = 2.0 * sampling_locations - 1.0
    out = None
    for lvl, v in enumerate(value_levels):
        # [B, Nq, heads, P, 2] -> [B, heads, Nq, P, 2] -> [B*heads, Nq, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(B * Hh, Nq, P, 2)
        s = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B*heads, Ch, Nq, P]
        a = attention_weights[:, :, :, lvl].transpose(1, 2).reshape(B * Hh, 1, Nq, P)
        term = (s * a).sum(-1)  # [B*heads, Ch, Nq]
        out = term if out is None else out + term
    assert out is not None
    return out.view(B, Hh * Ch, Nq).transpose(1, 2)


def ms_deform_attn(
    value: Tensor,  # [B, S, heads, Ch], S = sum_l H_l * W_l (levels flattened in order)
    spatial_shapes: SpatialShapes,  # [L, 2] (H_l, W_l)
    sampling_locations: Tensor,  # [B, Nq, heads, L, P, 2] (x, y) in [0, 1]
    attention_weights: Tensor,  # [B, Nq, heads, L, P]
    chunk_size: int | None = None,
) -> Tensor:  # [B, Nq, heads * Ch]
    """Multi-scale deformable attention, pure torch (mmcv ``multi_scale_deformable_attn_pytorch``).

    Args:
        value: per-level values flattened row-major over ``(H_l, W_l)`` and concatenated over levels.
        spatial_shapes: ``(H_l, W_l)`` of each level (tensor or list).
        sampling_locations: normalised ``(x, y)`` sampling positions (see module docstring).
        attention_weights: weight of every sample (usually softmax-normalised over ``L * P``).
        chunk_size: process at most this many queries at a time (bounds the ``[B*heads, Ch, Nq, P]``
            intermediate; ``None`` = all at once). Results are identical.

    Returns:
        Tensor  # [B, Nq, heads * Ch]
    """
    B, S, Hh, Ch = value.shape
    shapes = _shape_list(spatial_shapes)
    _, Nq, Hh2, L, P, two = sampling_locations.shape
    if sum(h * w for h, w in shapes) != S:
        raise ValueError(f"value has {S} positions but spatial_shapes {shapes} sum to {sum(h * w for h, w in shapes)}")
    if Hh2 != Hh or L != len(shapes) or two != 2:
        raise ValueError(f"sampling_locations {tuple(sampling_locations.shape)} does not match value heads {Hh} / "
                         f"{len(shapes)} levels")
    if tuple(attention_weights.shape) != (B, Nq, Hh, L, P):
        raise ValueError(f"attention_weights {tuple(attention_weights.shape)}, expected {(B, Nq, Hh, L, P)}")
    # [B, S, heads, Ch] -> [B*heads, Ch, S] -> per level [B*heads, Ch, H_l, W_l]
    v = value.permute(0, 2, 3, 1).reshape(B * Hh, Ch, S)
    levels = [t.view(B * Hh, Ch, h, w) for t, (h, w) in zip(v.split([h * w for h, w in shapes], dim=2), shapes)]
    if chunk_size is None or chunk_size >= Nq:
        return _sample_levels(levels, sampling_locations, attention_weights)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive (got {chunk_size})")
    outs = [
        _sample_levels(levels, sampling_locations[:, i:i + chunk_size], attention_weights[:, i:i + chunk_size])
        for i in range(0, Nq, chunk_size)
    ]
    return torch.cat(outs, dim=1)


def flatten_levels(value_list: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
    """value_list: list of Tensor  # [B, C, H_l, W_l]  ->  (Tensor  # [B, S, C], [(H_l, W_l), ...])"""
    shapes = [(int(v.shape[-2]), int(v.shape[-1])) for v in value_list]
    flat = torch.cat([v.flatten(2).transpose(1, 2) for v in value_list], dim=1)
    return flat, shapes


class MSDeformCrossAttention(nn.Module):
    """Multi-scale deformable cross-attention of queries on a list of image feature maps.

    ``forward`` returns the attention *update* (no residual, no dropout); masked queries get zeros.

    Sampling locations, per head ``h``, level ``l``, point ``p`` (all normalised, see module doc)::

        loc = reference_points + base[l, p] + learned[h, l, p] / (W_l, H_l)

    where ``base`` is ``fixed_offsets`` when given (else 0) and ``learned`` is predicted from the
    query by a linear layer (absent when ``learn_offsets=False``).

    Args:
        embed_dims: query / value channels ``C`` (divisible by ``num_heads``).
        num_heads, num_levels, num_points: attention layout.
        learn_offsets: predict offsets from the query (Deformable DETR). With ``False`` a
            ``fixed_offsets`` argument is required.
        offset_init: ``"circle"`` (Deformable DETR: head ``h`` looks along direction
            ``2 pi h / heads``, point ``p`` at distance ``p + 1`` feature pixels) or ``"zero"``
            (start exactly at the fixed pattern: the natural choice when refining ``fixed_offsets``).
        value_proj: project values with a linear layer (mmcv default).
        chunk_size: query chunk of :func:`ms_deform_attn`.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        learn_offsets: bool = True,
        offset_init: str = "circle",
        value_proj: bool = True,
        chunk_size: int | None = None,
    ):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        if offset_init not in ("circle", "zero"):
            raise ValueError(f"offset_init must be 'circle' or 'zero' (got {offset_init!r})")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.learn_offsets = learn_offsets
        self.offset_init = offset_init
        self.chunk_size = chunk_size
        n = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dims, n * 2) if learn_offsets else None
        self.attention_weights = nn.Linear(embed_dims, n)
        self.value_proj = nn.Linear(embed_dims, embed_dims) if value_proj else None
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.sampling_offsets is not None:
            nn.init.zeros_(self.sampling_offsets.weight)
            if self.offset_init == "circle":
                thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
                grid = torch.stack([thetas.cos(), thetas.sin()], -1)
                grid = grid / grid.abs().max(-1, keepdim=True)[0]
                grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
                grid *= torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
                self.sampling_offsets.bias.copy_(grid.reshape(-1))
            else:
                nn.init.zeros_(self.sampling_offsets.bias)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def sampling_locations(
        self,
        query: Tensor,  # [B, N, C] (positional embedding already added)
        reference_points: Tensor,  # [B, N, 2] normalised (x, y)
        spatial_shapes: list[tuple[int, int]],
        fixed_offsets: Tensor | None = None,  # [B, N, L, P, 2] normalised
    ) -> Tensor:  # [B, N, heads, L, P, 2]
        """Where each head samples each level (normalised coordinates)."""
        B, N, _ = query.shape
        Hh, L, P = self.num_heads, self.num_levels, self.num_points
        loc = reference_points[:, :, None, None, None, :]  # [B, N, 1, 1, 1, 2]
        if fixed_offsets is not None:
            if tuple(fixed_offsets.shape) != (B, N, L, P, 2):
                raise ValueError(f"fixed_offsets {tuple(fixed_offsets.shape)}, expected {(B, N, L, P, 2)}")
            loc = loc + fixed_offsets[:, :, None]
        elif self.sampling_offsets is None:
            raise ValueError("this attention has learn_offsets=False: pass fixed_offsets")
        if self.sampling_offsets is not None:
            off = self.sampling_offsets(query).view(B, N, Hh, L, P, 2)
            wh = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
            loc = loc + off / wh[None, None, None, :, None, :]
        return loc.expand(B, N, Hh, L, P, 2)

    def forward(
        self,
        query: Tensor,  # [B, N, C]
        value_list: Sequence[Tensor],  # L x [B, C, H_l, W_l]
        reference_points: Tensor,  # [B, N, 2] normalised (x, y)
        query_pos: Tensor | None = None,  # [B, N, C]
        query_mask: Tensor | None = None,  # [B, N] bool, True = attend
        fixed_offsets: Tensor | None = None,  # [B, N, L, P, 2] normalised
        key_padding_mask: Tensor | None = None,  # [B, S] bool, True = ignore this value position
    ) -> Tensor:  # [B, N, C]
        """Attention update of every query (zeros where ``query_mask`` is False)."""
        if len(value_list) != self.num_levels:
            raise ValueError(f"attention built for {self.num_levels} levels, got {len(value_list)} feature maps")
        B, N, C = query.shape
        value, shapes = flatten_levels(value_list)  # [B, S, C]
        if self.value_proj is not None:
            value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(B, value.shape[1], self.num_heads, C // self.num_heads)
        q = query if query_pos is None else query + query_pos
        loc = self.sampling_locations(q, reference_points, shapes, fixed_offsets)
        attn = self.attention_weights(q).view(B, N, self.num_heads, self.num_levels * self.num_points)
        attn = attn.softmax(-1).view(B, N, self.num_heads, self.num_levels, self.num_points)
        out = self.output_proj(ms_deform_attn(value, shapes, loc, attn, chunk_size=self.chunk_size))
        if query_mask is not None:
            out = out * query_mask[..., None].to(out.dtype)
        return out
