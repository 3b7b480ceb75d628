"""SSC losses vs straightforward references (MonoScene's loops), values and gradients; invariances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from occ_core.data.formats import semantickitti as sk
from occ_core.losses.ssc import (
    ce_ssc_loss,
    class_weights_from_frequencies,
    geo_scal_loss,
    sem_scal_loss,
    ssc_losses,
)


def semantic_kitti_class_weights() -> torch.Tensor:
    """SemanticKITTI's CE weights as the models get them (the dataset spec's classes)."""
    return torch.from_numpy(sk.class_spec().weights())


# -- references: MonoScene's definitions, written as plainly as possible -------------------------
def ref_bce1(x):
    return -torch.clamp(torch.log(x), min=-100)


def ref_sem_scal(logits, target):
    pred = F.softmax(logits, dim=1)
    loss, count = 0.0, 0
    mask = target != 255
    for i in range(pred.shape[1]):
        p = pred[:, i][mask]
        t = (target[mask] == i).to(p.dtype)
        if t.sum() > 0:
            count += 1
            nominator = (p * t).sum()
            loss_class = 0.0
            if p.sum() > 0:
                loss_class = loss_class + ref_bce1(nominator / p.sum())
            if t.sum() > 0:
                loss_class = loss_class + ref_bce1(nominator / t.sum())
            if (1 - t).sum() > 0:
                loss_class = loss_class + ref_bce1(((1 - p) * (1 - t)).sum() / (1 - t).sum())
            loss = loss + loss_class
    return loss / count


def ref_geo_scal(logits, target):
    pred = F.softmax(logits, dim=1)
    empty = pred[:, 0]
    nonempty = 1 - empty
    mask = target != 255
    t = (target != 0)[mask].to(logits.dtype)
    nonempty, empty = nonempty[mask], empty[mask]
    inter = (t * nonempty).sum()
    return (ref_bce1(inter / nonempty.sum()) + ref_bce1(inter / t.sum())
            + ref_bce1(((1 - t) * empty).sum() / (1 - t).sum()))


def ref_ce(logits, target, w):
    num, den = 0.0, 0.0
    lp = F.log_softmax(logits, dim=1)
    B, C = logits.shape[:2]
    flat_lp = lp.movedim(1, -1).reshape(-1, C)
    for i, c in enumerate(target.reshape(-1).tolist()):
        if c == 255:
            continue
        num = num - w[c] * flat_lp[i, c]
        den = den + w[c]
    return num / den


def _example(B=2, C=6, shape=(5, 4, 3), seed=0, p_ignore=0.2, absent=(4,)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, *shape, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, C, (B, *shape), generator=g)
    for a in absent:  # some classes absent from the target
        target[target == a] = 0
    target[torch.rand(B, *shape, generator=g) < p_ignore] = 255
    return logits, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sem_scal_matches_reference_values_and_grads(seed):
    logits, target = _example(seed=seed)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    la, lb = sem_scal_loss(a, target), ref_sem_scal(b, target)
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
    ga, = torch.autograd.grad(la, a)
    gb, = torch.autograd.grad(lb, b)
    torch.testing.assert_close(ga, gb, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geo_scal_matches_reference_values_and_grads(seed):
    logits, target = _example(seed=seed)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    la, lb = geo_scal_loss(a, target), ref_geo_scal(b, target)
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(la, a)[0], torch.autograd.grad(lb, b)[0], rtol=1e-8, atol=1e-12)


def test_ce_matches_reference_values_and_grads():
    logits, target = _example(C=20, shape=(4, 3, 2), absent=())
    w = semantic_kitti_class_weights().double()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    la, lb = ce_ssc_loss(a, target, w), ref_ce(b, target, w)
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(la, a)[0], torch.autograd.grad(lb, b)[0], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("fn", [sem_scal_loss, geo_scal_loss,
                                lambda lg, t: ce_ssc_loss(lg, t, semantic_kitti_class_weights()[:6].double())])
def test_ignored_voxels_do_not_matter(fn):
    logits, target = _example(seed=5)
    ign = target == 255
    other = logits.clone()
    other.movedim(1, -1)[ign] = torch.randn(int(ign.sum()), logits.shape[1], dtype=logits.dtype) * 10
    torch.testing.assert_close(fn(logits, target), fn(other, target), rtol=0, atol=0)
    x = logits.clone().requires_grad_(True)
    g, = torch.autograd.grad(fn(x, target), x)
    assert torch.all(g.movedim(1, -1)[ign] == 0) and g.abs().sum() > 0
    # dropping the ignored voxels altogether gives the same loss
    keep = ~ign
    flat_logits = logits.movedim(1, -1)[keep].t().reshape(1, logits.shape[1], -1, 1, 1)
    flat_target = target[keep].reshape(1, -1, 1, 1)
    torch.testing.assert_close(fn(logits, target), fn(flat_logits, flat_target), rtol=1e-12, atol=1e-12)


def test_perfect_prediction_and_degenerate_targets():
    target = torch.tensor([[[[0, 1], [2, 255]]]])  # [1, 1, 2, 2] -> treat as [B, X, Y, Z]
    logits = F.one_hot(target.clamp(max=2), 3).movedim(-1, 1).double() * 50.0
    assert sem_scal_loss(logits, target) < 1e-10 and geo_scal_loss(logits, target) < 1e-10
    all_ignored = torch.full_like(target, 255)
    x = logits.clone().requires_grad_(True)
    for fn in (sem_scal_loss, geo_scal_loss, lambda lg, t: ce_ssc_loss(lg, t, None)):
        loss = fn(x, all_ignored)
        assert loss.item() == 0.0
        loss.backward()  # still differentiable
    only_empty = torch.zeros_like(target)
    assert torch.isfinite(geo_scal_loss(logits, only_empty))  # MonoScene would give NaN here
    with pytest.raises(ValueError, match="target labels"):
        sem_scal_loss(logits, torch.full_like(target, 7))


def test_class_weights_are_monoscene_formula():
    w = semantic_kitti_class_weights()
    assert w.shape == (20,) and w.dtype == torch.float32
    torch.testing.assert_close(w, class_weights_from_frequencies(sk.CLASS_FREQUENCIES), rtol=1e-6, atol=0)
    assert sk.class_spec().frequencies == sk.CLASS_FREQUENCIES
    for c in (0, 2, 15):
        assert math.isclose(w[c].item(), 1 / math.log(sk.CLASS_FREQUENCIES[c] + 0.001), rel_tol=1e-6)
    assert math.isclose(w[0].item(), 0.044617, rel_tol=1e-4)  # empty: the smallest weight
    assert int(w.argmin()) == 0 and int(w.argmax()) == 3  # motorcycle is the rarest class
    torch.testing.assert_close(class_weights_from_frequencies([10.0, 100.0]),
                               torch.tensor([1 / math.log(10.001), 1 / math.log(100.001)]))
    with pytest.raises(ValueError):
        class_weights_from_frequencies([0.5, 10.0])


def test_frequencies_agree_with_published_class_shares():
    """Shares of the non-empty voxels (SemanticKITTI tables of MonoScene / VPOcc), in percent. The
    VPOcc table prints terrain as 3.17%; the counts give 9.17% (the value printed by MonoScene/SSC papers)."""
    shares = {1: 3.92, 9: 15.30, 10: 1.12, 11: 11.13, 12: 0.56, 13: 14.1, 14: 3.90, 15: 39.5, 16: 0.51,
              17: 9.17, 18: 0.29, 19: 0.08, 4: 0.16, 5: 0.20, 6: 0.07, 7: 0.07, 8: 0.05, 2: 0.03, 3: 0.03}
    f = torch.tensor(sk.CLASS_FREQUENCIES[1:], dtype=torch.float64)
    pct = 100 * f / f.sum()
    for c, s in shares.items():
        assert abs(pct[c - 1].item() - s) < 0.25, (c, pct[c - 1].item(), s)


@pytest.mark.parametrize("seed", [0, 3])
def test_fused_losses_equal_the_separate_ones(seed):
    logits, target = _example(C=20, seed=seed, absent=(4, 7))
    w = semantic_kitti_class_weights().double()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    fused = ssc_losses(a, target, w)
    sep = {"ce": ce_ssc_loss(b, target, w), "sem_scal": sem_scal_loss(b, target), "geo_scal": geo_scal_loss(b, target)}
    for k in sep:
        torch.testing.assert_close(fused[k], sep[k], rtol=1e-12, atol=1e-12)
    ga, = torch.autograd.grad(sum(fused.values()), a)
    gb, = torch.autograd.grad(sum(sep.values()), b)
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12)
    empty = ssc_losses(a, torch.full_like(target, 255), w)
    assert all(v.item() == 0.0 for v in empty.values())


@pytest.mark.parametrize("fn", [sem_scal_loss, geo_scal_loss])
def test_nan_logits_give_a_nan_loss_not_an_error(fn):
    """A diverged step (NaN logits) makes the scene-class affinity losses NaN, which the engine's NaN check
    stops cleanly; F.binary_cross_entropy alone raises on a NaN probability."""
    logits, target = _example(seed=0)
    logits = logits.clone()
    logits[0, :, 0] = float("nan")
    assert torch.isnan(fn(logits, target))


# -- Lovász-softmax ---------------------------------------------------------------------------------
def ref_lovasz(logits, target, ignore=255):
    """The authors' lovasz_softmax_flat (classes='present'), written out with a Python loop per class."""
    C = logits.shape[1]
    probas = F.softmax(logits, dim=1).movedim(1, -1).reshape(-1, C)
    labels = target.reshape(-1)
    valid = labels != ignore
    probas, labels = probas[valid], labels[valid]
    losses = []
    for c in range(C):
        fg = (labels == c).to(probas.dtype)
        if fg.sum() == 0:
            continue
        errors = (fg - probas[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        fg_sorted = fg[perm]
        gts = fg_sorted.sum()
        intersection = gts - fg_sorted.cumsum(0)
        union = gts + (1 - fg_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean()


def test_lovasz_matches_the_reference_in_value_and_gradient():
    from occ_core.losses.ssc import lovasz_softmax_loss

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 6, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 4, 3), generator=g)  # class 4 absent
    target[0, :2] = 255
    ours = lovasz_softmax_loss(logits, target)
    ref = ref_lovasz(logits, target)
    assert torch.allclose(ours, ref, atol=1e-12)
    g1, = torch.autograd.grad(ours, logits)
    g2, = torch.autograd.grad(ref_lovasz(logits, target), logits)
    assert torch.allclose(g1, g2, atol=1e-12)


def test_lovasz_of_one_hot_predictions_is_one_minus_the_mean_iou_of_the_present_classes():
    from occ_core.losses.ssc import lovasz_softmax_loss

    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    logits = F.one_hot(pred, 3).movedim(-1, 1).double() * 1e3  # softmax is one-hot
    # IoU: class 0: 1 / 3, class 1: 2 / 3, class 2: 0 / 1 (the ignored voxel does not count)
    expected = 1.0 - (1 / 3 + 2 / 3 + 0.0) / 3
    assert float(lovasz_softmax_loss(logits, target)) == pytest.approx(expected, abs=1e-9)
    assert float(lovasz_softmax_loss(logits, torch.full_like(target, 255))) == 0.0


def test_class_weight_power_raises_the_ce_weights():
    """loss.class_weight_power: the cross-entropy of ssc_losses uses the class weights to that power
    (1 = as given, the published MonoScene weights); class_weighting off drops them whatever the power;
    the config refuses a power <= 0 with its field named."""
    from occ_core.engine.config import LossConfig, TrainConfig, validate_config
    from occ_core.errors import OccError
    from occ_core.models.core import ce_class_weights
    from occ_core.models.core import ssc_losses as core_losses

    torch.manual_seed(0)
    logits = torch.randn(1, 4, 3, 3, 2, dtype=torch.float64)
    target = torch.randint(0, 4, (1, 3, 3, 2))
    w = torch.tensor([0.05, 0.08, 0.09, 0.1])
    only_ce = dict(sem_scal=0.0, geo_scal=0.0)
    for power in (1.0, 4.0):
        got = core_losses(logits, target, LossConfig(class_weight_power=power, **only_ce), w)["ce"]
        want = F.cross_entropy(logits, target, weight=(w ** power).double())
        assert torch.allclose(got, want)
    unweighted = core_losses(logits, target, LossConfig(class_weight_power=4.0, class_weighting=False, **only_ce), w)
    assert torch.allclose(unweighted["ce"], F.cross_entropy(logits, target))
    assert not torch.allclose(unweighted["ce"], core_losses(logits, target, LossConfig(**only_ce), w)["ce"])
    assert ce_class_weights(None, w) is w
    cfg = TrainConfig()
    cfg.loss.class_weight_power = 0.0
    with pytest.raises(OccError, match=r"loss.class_weight_power=0.0: must be > 0"):
        validate_config(cfg)
