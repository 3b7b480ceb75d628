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
    sampled, labels, weights = sample_full_grid(logits, target)
    assert weights is None
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
    sampled, labels, _ = sample_full_grid(logits, target, max_points=20)
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


def _layered_target(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(2, 12, 12, 8, dtype=torch.long)
    target[:, :, :, :2] = torch.randint(1, 5, (2, 12, 12, 2), generator=g)  # occupied ground, 4 classes
    target[0, 0, 0, 2] = 5  # one voxel of a rare class
    target[:, :, :, 6:] = 255  # unlabelled above
    target[1, 9:] = 255
    return target


def test_stratified_draw_keeps_every_occupied_voxel_and_weights_the_empty_ones():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 6, 6, 4, dtype=torch.float64)
    target = _layered_target()
    sampled, labels, weights = sample_full_grid(logits, target, max_points=400, occupied_share=0.75)
    full = F.interpolate(logits, size=(12, 12, 8), mode="trilinear", align_corners=False)
    for b in range(2):
        t = target[b].reshape(-1)
        n_occ, n_emp = int(((t != 255) & (t != 0)).sum()), int((t == 0).sum())
        k_occ = min(n_occ, 300)
        k_emp = min(n_emp, 400 - k_occ)
        lab, w = labels[b], weights[b]
        kept = lab != 255
        assert int(kept.sum()) == k_occ + k_emp
        occ = kept & (lab != 0)
        assert int(occ.sum()) == k_occ and int((lab == 5).sum()) == (1 if b == 0 else 0)  # the rare voxel is always drawn
        assert torch.allclose(w[occ], torch.full_like(w[occ], n_occ / k_occ))
        assert torch.allclose(w[kept & (lab == 0)], torch.full_like(w[kept & (lab == 0)], n_emp / k_emp))
        assert bool((w[~kept] == 0).all())
        assert float(w.sum()) == pytest.approx(n_occ + n_emp)  # the draw stands for every labelled voxel
        cols = full[b].reshape(6, -1).t()
        for k in torch.nonzero(kept).squeeze(1)[::37].tolist():  # drawn columns are upsampled logits with that label
            match = (cols - sampled[b, :, k]).abs().sum(1) < 1e-12
            assert bool(match.any()) and int(lab[k]) in t[match].tolist()


def test_stratified_draw_gives_a_small_stratum_share_to_the_other():
    torch.manual_seed(3)
    logits = torch.randn(1, 3, 4, 4, 2)
    target = torch.zeros(1, 8, 8, 4, dtype=torch.long)
    target[0, 0, 0, :2] = 2  # 2 occupied voxels, 254 empty
    _, labels, weights = sample_full_grid(logits, target, max_points=100, occupied_share=0.5)
    assert int((labels == 2).sum()) == 2 and int((labels == 0).sum()) == 98
    assert float(weights[labels == 2].max()) == 1.0 and float(weights[labels == 0][0]) == pytest.approx(254 / 98)
    _, labels, weights = sample_full_grid(logits, target, max_points=1000, occupied_share=0.5)  # all fit: weight 1
    assert int((labels != 255).sum()) == 256 and bool((weights == 1).all())
    _, labels, weights = sample_full_grid(logits, target, max_points=100)  # share 0: the uniform draw, no weights
    assert weights is None and int((labels != 255).sum()) == 100


def test_stratified_losses_estimate_the_all_voxel_losses():
    """The mean over many stratified draws of each weighted loss is the loss on all labelled voxels (CE
    exactly in expectation; the ratio losses up to the ratio estimator's small bias). The budget holds
    every occupied voxel (289 and 216 of 450), so every class present in the frame is in every draw."""
    from occ_core.losses.ssc import ce_ssc_loss, geo_scal_loss, lovasz_softmax_loss, sem_scal_loss

    torch.manual_seed(4)
    logits = torch.randn(2, 6, 6, 6, 4, dtype=torch.float64)
    logits[:, 0] += 2.0  # a model leaning to empty: the empty voxels' losses are far from the occupied ones'
    target = _layered_target(1)
    cw = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    fns = {"ce": lambda s, t, w: ce_ssc_loss(s, t, cw, weight=w), "sem_scal": lambda s, t, w: sem_scal_loss(s, t, weight=w),
           "geo_scal": lambda s, t, w: geo_scal_loss(s, t, weight=w),
           "lovasz": lambda s, t, w: lovasz_softmax_loss(s, t, weight=w)}
    s_all, t_all, _ = sample_full_grid(logits, target)
    ref = {k: float(f(s_all, t_all, None)) for k, f in fns.items()}
    draws = 300
    mean = dict.fromkeys(fns, 0.0)
    uniform_ce = []
    for _ in range(draws):
        s, t, w = sample_full_grid(logits, target, max_points=600, occupied_share=0.75)
        for k, f in fns.items():
            mean[k] += float(f(s, t, w)) / draws
        s, t, _ = sample_full_grid(logits, target, max_points=600)
        uniform_ce.append(float(fns["ce"](s, t, None)))
    for k in fns:
        assert mean[k] == pytest.approx(ref[k], rel=0.01), k
    # unweighted, the occupied-first draw would be a different loss: the weights are what make it the same
    s, t, w = sample_full_grid(logits, target, max_points=600, occupied_share=0.75)
    assert abs(float(fns["ce"](s, t, None)) - ref["ce"]) > 0.05 * ref["ce"]
    assert sum(uniform_ce) / draws == pytest.approx(ref["ce"], rel=0.01)


def test_occupied_share_is_checked():
    from occ_core.engine.config import build_config
    from occ_core.errors import OccError

    with pytest.raises(OccError, match=r"model.full_grid_occupied=1.5: must be in \[0, 1\]"):
        build_config("baseline", "tiny", overrides=["model.full_grid_occupied=1.5"])


@pytest.mark.parametrize("method", ["baseline", "cigocc", "b2s", "lidar"])
def test_models_train_on_the_stratified_draw(method, synthetic_prepared):
    """With ``model.full_grid_occupied`` the model's SSC losses, averaged over draws, are its losses on
    every labelled voxel of the frame; the gradients flow."""
    import warnings

    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model

    spec = PreparedDataset(synthetic_prepared).spec
    cfg = build_config(method, "tiny", overrides=[f"data.root={synthetic_prepared}", "model.full_grid_occupied=0.75",
                                                  "model.full_grid_points=4096"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, spec)
    batch = collate([OccDataset(synthetic_prepared, "train", cfg.data, train=True)[0]])
    model.train()
    out = model(batch)
    draws = [model.losses(out, batch) for _ in range(8)]
    sum(draws[0].values()).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
    model.cfg.full_grid_points = 0  # every labelled voxel
    with torch.no_grad():
        exact = model.losses(out, batch)
    keys = [k for k in ("ce", "sem_scal", "geo_scal", "bce", "bin_geo_scal") if k in exact]
    assert len(keys) >= 3, keys
    for k in keys:
        mean = sum(float(d[k].detach()) for d in draws) / len(draws)
        assert mean == pytest.approx(float(exact[k]), rel=0.05), k
