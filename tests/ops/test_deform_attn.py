"""ms_deform_attn vs an explicit per-query, per-point bilinear reference (values and gradients), and
the MSDeformCrossAttention module (init, masks, fixed offsets)."""

from __future__ import annotations

import math

import pytest
import torch

from occ_core.ops.deform_attn import MSDeformCrossAttention, flatten_levels, ms_deform_attn


def bilinear_zero_pad(img: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """img [C, H, W]; x, y normalised scalars in grid_sample's align_corners=False convention."""
    C, H, W = img.shape
    px = x * W - 0.5  # continuous pixel coordinates (pixel centres at integers)
    py = y * H - 0.5
    x0 = int(math.floor(px.item()))
    y0 = int(math.floor(py.item()))
    fx = px - x0
    fy = py - y0
    out = img.new_zeros(C)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            if 0 <= xi < W and 0 <= yi < H:
                out = out + wx * wy * img[:, yi, xi]
    return out


def naive_ms_deform_attn(value, shapes, loc, attn):
    B, S, Hh, Ch = value.shape
    _, Nq, _, L, P, _ = loc.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = value.new_zeros(B, Nq, Hh * Ch)
    rows = []
    for b in range(B):
        qrows = []
        for q in range(Nq):
            heads = []
            for hh in range(Hh):
                acc = value.new_zeros(Ch)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl]:starts[lvl + 1], hh].t().reshape(Ch, h, w)
                    for p in range(P):
                        s = bilinear_zero_pad(img, loc[b, q, hh, lvl, p, 0], loc[b, q, hh, lvl, p, 1])
                        acc = acc + attn[b, q, hh, lvl, p] * s
                heads.append(acc)
            qrows.append(torch.cat(heads))
        rows.append(torch.stack(qrows))
    out = torch.stack(rows)
    return out


CASES = [
    # B, Nq, heads, Ch, shapes, P
    (1, 3, 1, 2, [(4, 5)], 1),
    (2, 4, 2, 3, [(5, 7), (3, 4)], 2),
    (1, 5, 2, 2, [(6, 4), (3, 2), (2, 1)], 3),
]


def _inputs(B, Nq, Hh, Ch, shapes, P, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in shapes)
    L = len(shapes)
    value = torch.randn(B, S, Hh, Ch, generator=g, dtype=torch.float64)
    # some locations outside [0, 1] to exercise the zero padding
    loc = torch.rand(B, Nq, Hh, L, P, 2, generator=g, dtype=torch.float64) * 1.3 - 0.15
    attn = torch.rand(B, Nq, Hh, L, P, generator=g, dtype=torch.float64)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    return value, loc, attn


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk", [None, 2])
def test_matches_naive_values_and_gradients(case, chunk):
    B, Nq, Hh, Ch, shapes, P = case
    value, loc, attn = _inputs(*case)
    ins = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    ref_ins = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    out = ms_deform_attn(ins[0], torch.tensor(shapes), ins[1], ins[2], chunk_size=chunk)
    ref = naive_ms_deform_attn(ref_ins[0], shapes, ref_ins[1], ref_ins[2])
    assert out.shape == (B, Nq, Hh * Ch)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, ins, cot)
    ref_grads = torch.autograd.grad(ref, ref_ins, cot)
    for name, g, rg in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")


def test_chunking_is_exact_in_float32():
    value, loc, attn = (t.float() for t in _inputs(2, 37, 2, 4, [(6, 9), (3, 5)], 4, seed=3))
    a = ms_deform_attn(value, [(6, 9), (3, 5)], loc, attn)
    b = ms_deform_attn(value, [(6, 9), (3, 5)], loc, attn, chunk_size=8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pixel_centre_convention():
    # sampling exactly at (u + 0.5) / W, (v + 0.5) / H returns pixel (u, v)
    H, W = 3, 4
    value = torch.arange(H * W, dtype=torch.float64).view(1, H * W, 1, 1)
    u, v = 2, 1
    loc = torch.tensor([(u + 0.5) / W, (v + 0.5) / H], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, [(H, W)], loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    assert out.item() == v * W + u


def test_shape_errors():
    value, loc, attn = _inputs(1, 2, 1, 2, [(3, 3)], 1)
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value, [(3, 4)], loc, attn)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, [(3, 3)], loc, attn[..., :0])


# ---------------------------------------------------------------------------------------------
def _feats(B=2, C=16, shapes=((8, 12), (4, 6)), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, C, h, w, generator=g) for h, w in shapes]


def test_module_init_matches_deformable_detr():
    m = MSDeformCrossAttention(embed_dims=16, num_heads=4, num_levels=2, num_points=3)
    off = m.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 looks right (+x), head 1 down (+y), head 2 left, head 3 up; point p at distance p + 1
    expected_dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for p in range(3):
        torch.testing.assert_close(off[:, 0, p], expected_dirs * (p + 1), atol=1e-6, rtol=0)
        torch.testing.assert_close(off[:, 1, p], expected_dirs * (p + 1), atol=1e-6, rtol=0)
    assert m.attention_weights.weight.abs().sum() == 0 and m.sampling_offsets.weight.abs().sum() == 0


def test_module_shapes_gradients_and_query_mask():
    torch.manual_seed(0)
    m = MSDeformCrossAttention(embed_dims=16, num_heads=4, num_levels=2, num_points=2, chunk_size=5)
    with torch.no_grad():  # at init offsets / weights do not depend on the query: make them
        m.sampling_offsets.weight.normal_(std=0.1)
        m.attention_weights.weight.normal_()
    feats = [f.requires_grad_(True) for f in _feats()]
    q = torch.randn(2, 11, 16, requires_grad=True)
    ref = torch.rand(2, 11, 2)
    mask = torch.rand(2, 11) > 0.3
    out = m(q, feats, ref, query_pos=torch.randn(2, 11, 16), query_mask=mask)
    assert out.shape == (2, 11, 16)
    assert torch.all(out[~mask] == 0) and torch.all(out[mask].abs().sum(-1) > 0)
    out.square().sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    assert q.grad.abs().sum() > 0 and torch.all(q.grad[~mask] == 0)
    for name, p in m.named_parameters():
        assert p.grad is not None, name


def test_key_padding_mask_zeroes_values():
    torch.manual_seed(0)
    m = MSDeformCrossAttention(embed_dims=8, num_heads=2, num_levels=1, num_points=2)
    feats = _feats(1, 8, ((4, 4),))
    q, ref = torch.randn(1, 3, 8), torch.rand(1, 3, 2)
    all_masked = m(q, feats, ref, key_padding_mask=torch.ones(1, 16, dtype=torch.bool))
    # every sampled value is zero: only the output projection's bias remains
    torch.testing.assert_close(all_masked, m.output_proj.bias.expand(1, 3, 8))


def _fixed_pattern(B, N, L, P, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, N, L, P, 2, generator=g) - 0.5) * 0.2


def test_fixed_offsets_sample_exactly_there():
    """With learn_offsets=False the module samples at reference + fixed offsets: compare with the
    functional op called on those locations."""
    torch.manual_seed(0)
    B, N, C, Hh, L, P = 2, 7, 16, 4, 2, 9
    m = MSDeformCrossAttention(embed_dims=C, num_heads=Hh, num_levels=L, num_points=P, learn_offsets=False)
    with torch.no_grad():
        m.attention_weights.weight.normal_()
    feats, q, ref = _feats(B, C), torch.randn(B, N, C), torch.rand(B, N, 2)
    fixed = _fixed_pattern(B, N, L, P)
    out = m(q, feats, ref, fixed_offsets=fixed)
    value, shapes = flatten_levels(feats)
    value = m.value_proj(value).view(B, -1, Hh, C // Hh)
    loc = (ref[:, :, None, None, None] + fixed[:, :, None]).expand(B, N, Hh, L, P, 2)
    attn = m.attention_weights(q).view(B, N, Hh, L * P).softmax(-1).view(B, N, Hh, L, P)
    torch.testing.assert_close(out, m.output_proj(ms_deform_attn(value, shapes, loc, attn)))
    assert m.sampling_offsets is None
    with pytest.raises(ValueError, match="fixed_offsets"):
        m(q, feats, ref)
    with pytest.raises(ValueError, match="fixed_offsets"):
        m(q, feats, ref, fixed_offsets=fixed[:, :, :, :3])


def test_fixed_offsets_with_learned_refinement():
    torch.manual_seed(0)
    B, N, C, Hh, L, P = 1, 5, 8, 2, 2, 9
    feats, q, ref, fixed = _feats(B, C), torch.randn(B, N, C), torch.rand(B, N, 2), _fixed_pattern(B, N, L, P)
    m = MSDeformCrossAttention(C, Hh, L, P, learn_offsets=True, offset_init="zero")
    shapes = [(f.shape[-2], f.shape[-1]) for f in feats]
    # zero init: exactly the fixed pattern, for every head
    loc = m.sampling_locations(q, ref, shapes, fixed)
    torch.testing.assert_close(loc, (ref[:, :, None, None, None] + fixed[:, :, None]).expand_as(loc))
    # learned part is in feature pixels of each level, added on top of the fixed pattern
    with torch.no_grad():
        m.sampling_offsets.bias.fill_(1.0)
    loc2 = m.sampling_locations(q, ref, shapes, fixed)
    for lvl, (h, w) in enumerate(shapes):
        torch.testing.assert_close(loc2[..., lvl, :, 0] - loc[..., lvl, :, 0], torch.full_like(loc[..., lvl, :, 0], 1 / w))
        torch.testing.assert_close(loc2[..., lvl, :, 1] - loc[..., lvl, :, 1], torch.full_like(loc[..., lvl, :, 1], 1 / h))
    out = m(q, feats, ref, fixed_offsets=fixed)
    out.sum().backward()
    assert m.sampling_offsets.weight.grad.abs().sum() > 0
