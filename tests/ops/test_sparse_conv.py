"""Sparse 3D convolution: spconv against the dense pure-torch twin (values and gradients), and the twin
against its definition (conv3d on the densified tensor, masked to the active sites)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from occ_core.ops.sparse_conv import (MaskedVolume, SparseBatchNorm, SparseConv3d, SparseReLU, SparseVoxels,
                                      conv_output_shape, dense_sparse_conv3d, spconv_available)

CASES = [  # (subm, kernel, stride, padding, dilation)
    (True, 3, 1, 0, 1),
    (True, 1, 1, 0, 1),
    (True, 3, 1, 0, 2),
    (False, 3, 2, 1, 1),
    (False, 3, 2, 0, 1),
    (False, 2, 2, 0, 1),
    (False, 3, 1, 1, 1),
]
IDS = [f"{'subm' if c[0] else 'conv'}-k{c[1]}s{c[2]}p{c[3]}d{c[4]}" for c in CASES]


def random_sparse(seed: int = 0, B: int = 2, C: int = 3, shape=(9, 7, 6), density: float = 0.25,
                  dtype=torch.float32) -> SparseVoxels:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, *shape, generator=g) < density
    idx = mask.nonzero().to(torch.int32)
    perm = torch.randperm(idx.shape[0], generator=g)  # the op must not depend on the site order
    feats = torch.randn(idx.shape[0], C, generator=g, dtype=dtype)
    return SparseVoxels(feats, idx[perm], shape, B)


def by_site(x: SparseVoxels) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted flat site keys, features in that order)."""
    key = x.flat_index()
    order = key.argsort()
    return key[order], x.features[order]


def test_twin_is_conv3d_masked():
    """The dense twin on its own definition: conv3d of the densified input, kept on the output sites."""
    x = random_sparse(1, dtype=torch.float64)
    conv = SparseConv3d(3, 4, 3, stride=2, padding=1, subm=False, bias=True, backend="torch").double()
    out = conv(x)
    dense = torch.zeros(2, 3, 9, 7, 6, dtype=torch.float64)
    i = x.indices.long()
    dense[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]] = x.features
    ref = F.conv3d(dense, conv.weight.permute(0, 4, 1, 2, 3), conv.bias, stride=2, padding=1)
    o = out.indices.long()
    torch.testing.assert_close(out.features, ref[o[:, 0], :, o[:, 1], o[:, 2], o[:, 3]])
    # output sites: exactly the sites whose 3x3x3 window (stride 2, padding 1) holds an input site
    want = F.max_pool3d(x.mask()[:, None].double(), 3, 2, 1)[:, 0] > 0
    assert torch.equal(out.mask(), want)
    assert out.spatial_shape == conv_output_shape((9, 7, 6), 3, 2, 1, 1) == (5, 4, 3)
    assert 0 < int(want.sum()) < want.numel()


def test_subm_keeps_sites_and_order():
    x = random_sparse(2)
    out = SparseConv3d(3, 5, 3, backend="torch")(x)
    assert torch.equal(out.indices, x.indices) and out.features.shape == (x.features.shape[0], 5)


def test_masked_volume_form_matches_sparse_form():
    """MaskedVolume (the traceable form) and SparseVoxels through the twin agree, BN (train and eval) included."""
    torch.manual_seed(0)
    x = random_sparse(3)
    net = torch.nn.Sequential(SparseConv3d(3, 4, 3, backend="torch"), SparseBatchNorm(4), SparseReLU(),
                              SparseConv3d(4, 6, 3, stride=2, padding=1, subm=False, backend="torch"))
    for mode in (True, False):
        net.train(mode)
        a = net(x)
        b = net(x.to_masked())
        assert isinstance(b, MaskedVolume)
        assert torch.equal(a.mask(), b.mask)
        torch.testing.assert_close(a.dense(), b.dense, rtol=1e-5, atol=1e-5)


def test_bad_channels_and_kernels():
    with pytest.raises(ValueError, match="odd kernel"):
        SparseConv3d(3, 4, 2, subm=True)
    with pytest.raises(ValueError, match="channels"):
        SparseConv3d(5, 4, 3, backend="torch")(random_sparse(0))
    with pytest.raises(ValueError, match="backend"):
        SparseConv3d(3, 4, 3, backend="cuda")


needs_spconv = pytest.mark.skipif(not spconv_available(), reason="spconv does not import here")


@needs_spconv
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_spconv_matches_twin(case):
    """Values and gradients (features, weight, bias) of spconv (ConvAlgo.Native on CPU) against the twin."""
    subm, k, s, p, d = case
    x = random_sparse(10 + len(IDS[CASES.index(case)]))
    torch.manual_seed(0)
    sp_conv = SparseConv3d(3, 4, k, stride=s, padding=p, dilation=d, subm=subm, bias=True, backend="spconv")
    tw_conv = SparseConv3d(3, 4, k, stride=s, padding=p, dilation=d, subm=subm, bias=True, backend="torch")
    tw_conv.load_state_dict(sp_conv.state_dict())
    assert sp_conv.uses_spconv(x) and not tw_conv.uses_spconv(x)
    results = []
    for conv in (sp_conv, tw_conv):
        f = x.features.clone().requires_grad_(True)
        out = conv(x.replace(f))
        key, feats = by_site(out)
        g = torch.Generator().manual_seed(7)
        up = torch.randn(feats.shape, generator=g)  # the same upstream gradient per site
        (feats * up).sum().backward()
        results.append((key, feats.detach(), f.grad, conv.weight.grad, conv.bias.grad, out.spatial_shape))
    (k1, v1, gf1, gw1, gb1, sh1), (k2, v2, gf2, gw2, gb2, sh2) = results
    assert sh1 == sh2
    assert torch.equal(k1, k2), "spconv and the twin disagree on the output sites"
    torch.testing.assert_close(v1, v2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gf1, gf2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw1, gw2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gb1, gb2, rtol=1e-4, atol=1e-5)


@needs_spconv
def test_spconv_chain_with_indice_key():
    """Two submanifold layers sharing spconv's index pairs, then a strided one, against the twin."""
    x = random_sparse(4, shape=(12, 10, 8))

    def net(backend):
        torch.manual_seed(1)
        return torch.nn.Sequential(SparseConv3d(3, 4, 3, backend=backend, indice_key="s1"), SparseReLU(),
                                   SparseConv3d(4, 4, 3, backend=backend, indice_key="s1"),
                                   SparseConv3d(4, 8, 3, stride=2, padding=1, subm=False, backend=backend))

    a, b = net("spconv")(x), net("torch")(x)
    ka, fa = by_site(a)
    kb, fb = by_site(b)
    assert torch.equal(ka, kb)
    torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-5)


@needs_spconv
def test_auto_uses_twin_for_float64_and_tracing():
    """float64 (spconv's CPU kernels are wrong for it) and traced calls go through the twin."""
    x64 = random_sparse(5, dtype=torch.float64)
    conv = SparseConv3d(3, 4, 3).double()
    assert not conv.uses_spconv(x64) and conv.uses_spconv(random_sparse(5))
    out = conv(x64)
    ref, _ = dense_sparse_conv3d(x64.dense(), x64.mask(), conv.weight)
    torch.testing.assert_close(out.dense(), ref)


def test_without_spconv_twin_and_one_warning(monkeypatch):
    """When spconv does not import, 'auto' runs the twin and warns once; 'spconv' is an error."""
    import warnings

    from occ_core.ops import sparse_conv as sc

    monkeypatch.setattr(sc, "_SPCONV", None)
    monkeypatch.setattr(sc, "_SPCONV_ERROR", "ImportError: no module named spconv")
    monkeypatch.setattr(sc, "_WARNED", False)
    x = random_sparse(6)
    conv = SparseConv3d(3, 4, 3)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = conv(x)
        conv(x)
    msgs = [str(m.message) for m in w if "spconv does not import" in str(m.message)]
    assert len(msgs) == 1 and "no module named spconv" in msgs[0]
    ref, _ = dense_sparse_conv3d(x.dense(), x.mask(), conv.weight)
    torch.testing.assert_close(a.dense(), ref)
    with pytest.raises(RuntimeError, match="cannot run"):
        SparseConv3d(3, 4, 3, backend="spconv")(x)
