"""FPN neck: shapes (odd sizes too), top-down information flow, gradients."""

from __future__ import annotations

import pytest
import torch

from occ_core.models.neck import FPN


@pytest.mark.parametrize("norm", [None, "bn", "gn"])
def test_shapes_and_gradients(norm):
    torch.manual_seed(0)
    neck = FPN([32, 64, 128], 16, norm=norm)
    # odd sizes as produced by a ResNet on a 92x305 image (strides 8, 16, 32)
    feats = [torch.randn(2, 32, 12, 39, requires_grad=True), torch.randn(2, 64, 6, 20, requires_grad=True),
             torch.randn(2, 128, 3, 10, requires_grad=True)]
    outs = neck(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 16, 12, 39), (2, 16, 6, 20), (2, 16, 3, 10)]
    sum(o.square().mean() for o in outs).backward()
    for f in feats:
        assert f.grad is not None and f.grad.abs().sum() > 0
    for p in neck.parameters():
        assert p.grad is not None


def test_top_down_pathway_reaches_finest_level():
    torch.manual_seed(0)
    neck = FPN([8, 8], 4).eval()
    fine, coarse = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4, requires_grad=True)
    out = neck([fine, coarse])
    g, = torch.autograd.grad(out[0].sum(), coarse)
    assert g.abs().sum() > 0  # the finest output depends on the coarsest input


def test_bilinear_mode_and_level_mismatch():
    neck = FPN([4, 4], 4, upsample_mode="bilinear")
    assert neck([torch.randn(1, 4, 5, 7), torch.randn(1, 4, 3, 4)])[0].shape == (1, 4, 5, 7)
    with pytest.raises(ValueError, match="2 levels"):
        neck([torch.randn(1, 4, 5, 7)])
