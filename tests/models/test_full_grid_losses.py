"""The full-grid supervision of a coarse head (model.supervise_full_grid) and the empty-above-labelled
term (model.empty_above_labelled) and the empty-unlabelled term (model.empty_unlabelled) of the shared core."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from occ_core.models.core import empty_above_labelled, empty_prior_losses, empty_unlabelled, sample_full_grid


@pytest.mark.parametrize("coarse, fine", [((4, 6, 3), (8, 12, 6)), ((5, 3, 2), (20, 12, 8)), ((4, 4, 4), (4, 4, 4)),
                                          ((3, 5, 2), (7, 9, 5))])
def test_sampling_equals_trilinear_upsampling_values_and_gradients(coarse, fine):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, *coarse, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (2, *fine))
    target[0, :2] = 255
    target[1, 3:, 1:] = 255
    sampled, labels = sample_full_grid(logits, target)
    full = F.interpolate(logits, size=fine, mode="trilinear", align_corners=False)
    for b in range(2):
        keep = target[b] != 255
        n = int(keep.sum())
        assert torch.allclose(sampled[b, :, :n], full[b][:, keep])
        assert torch.equal(labels[b, :n], target[b][keep]) and bool((labels[b, n:] == 255).all())
        g1, = torch.autograd.grad((sampled[b, :, :n] ** 2).sum(), logits, retain_graph=True)
        g2, = torch.autograd.grad((full[b][:, keep] ** 2).sum(), logits, retain_graph=True)
        assert torch.allclose(g1, g2)


def test_sampling_a_subset_is_a_subset():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, 2, dtype=torch.float64)
    target = torch.randint(0, 3, (1, 8, 8, 4))
    sampled, labels = sample_full_grid(logits, target, max_points=20)
    assert sampled.shape == (1, 3, 20) and bool((labels != 255).all())
    full = F.interpolate(logits, size=(8, 8, 4), mode="trilinear", align_corners=False).reshape(1, 3, -1)
    cols = full[0].t()  # [N, 3]
    for k in range(20):  # every sampled column is the upsampled logit of some voxel with that label
        match = (cols - sampled[0, :, k]).abs().sum(1) < 1e-12
        assert bool(match.any()) and int(labels[0, k]) in target.reshape(-1)[match].tolist()


def test_empty_above_labelled_tracks_the_highest_labelled_layer():
    model = torch.nn.Module()
    model.register_buffer("labelled_top", torch.tensor(-1))
    logits = torch.zeros(1, 4, 2, 2, 6, requires_grad=True)
    target = torch.full((1, 2, 2, 6), 255)
    target[..., :3] = 0
    loss = empty_above_labelled(model, logits, target)
    assert int(model.labelled_top) == 2
    assert loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())  # uniform logits on layers 3..5
    g, = torch.autograd.grad(loss, logits)
    assert bool((g[..., :3] == 0).all()) and bool((g[:, 0, ..., 3:] < 0).all())  # pushes empty up, only above
    target[..., 4] = 1  # a later frame labels a higher layer: the buffer only grows
    empty_above_labelled(model, logits, target)
    assert int(model.labelled_top) == 4
    lower = torch.full((1, 2, 2, 6), 255)
    lower[..., 0] = 0
    empty_above_labelled(model, logits, lower)
    assert int(model.labelled_top) == 4
    target[..., 5] = 0  # the whole height labelled: nothing above
    assert empty_above_labelled(model, logits, target).item() == 0.0


def test_empty_unlabelled_pushes_only_unlabelled_voxels_below_the_labelled_top():
    import types

    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4, 6, dtype=torch.float64, requires_grad=True)
    target = torch.zeros((1, 4, 4, 6), dtype=torch.long)
    target[0, :2, :, :4] = 255  # unlabelled voxels below the top
    target[0, :, :, 4:] = 255  # the never-labelled top layers
    target[0, 3, 3, 1] = 2
    nll = -F.log_softmax(logits, 1)[:, 0]
    unl = target == 255
    assert empty_unlabelled(logits, target).item() == pytest.approx(float((nll * unl).sum() / unl.numel()))
    assert empty_unlabelled(logits, torch.zeros_like(target)).item() == 0.0

    model = torch.nn.Module()
    model.register_buffer("labelled_top", torch.tensor(-1))
    cfg = types.SimpleNamespace(empty_above_labelled=1.0, empty_unlabelled=0.5)
    losses = empty_prior_losses(model, cfg, logits, {"target": target}, 1)
    assert set(losses) == {"empty_above", "empty_unlabelled"} and int(model.labelled_top) == 3
    below = unl[..., :4]
    expect = 0.5 * float((nll[..., :4] * below).sum() / below.numel())
    assert losses["empty_unlabelled"].item() == pytest.approx(expect)
    g, = torch.autograd.grad(losses["empty_unlabelled"], logits)
    assert bool((g[..., 4:] == 0).all())  # the top layers are left to the empty-above term
    assert bool((g[0, :, 2:, :, :4] == 0).all())  # labelled voxels: no gradient
    assert bool((g[0, 0, :2, :, :4] < 0).all())  # unlabelled: towards empty
    off = types.SimpleNamespace(empty_above_labelled=0.0, empty_unlabelled=0.0)
    assert empty_prior_losses(model, off, logits, {}, 2) == {}  # both off: the batch is not read


def test_full_grid_supervision_needs_the_full_resolution_target():
    from occ_core.engine.config import build_config
    from occ_core.errors import OccError

    with pytest.raises(OccError, match="supervise_full_grid=true needs 1 in data.target_scales"):
        build_config("baseline", "tiny", overrides=["data.target_scales=[2]"])
    build_config("baseline", "tiny", overrides=["data.target_scales=[2]", "model.supervise_full_grid=false"])
