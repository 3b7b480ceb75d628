"""Semantic scene completion losses of MonoScene (used by VoxFormer, Symphonies, VPOcc).

* :func:`ce_ssc_loss`: class-weighted cross-entropy, ignoring label 255.
* :func:`sem_scal_loss`: scene-class affinity loss on semantics: for every class present in the
  (valid part of the) target, binary cross-entropy against 1 of its precision, recall and
  specificity computed from the softmax probabilities; averaged over those classes.
* :func:`geo_scal_loss`: the same three terms for geometry, on the non-empty probability
  ``1 - p(empty)`` (class 0 = empty).
* :func:`lovasz_softmax_loss`: the Lovász-softmax loss (Berman et al., CVPR 2018; the IoU surrogate
  TPVFormer, SurroundOcc and GaussRender train with): for every class present in the target, the
  Lovász extension of the Jaccard loss on the sorted errors ``|[y == c] - p_c|``, averaged.

These reproduce MonoScene's ``CE_ssc_loss`` / ``sem_scal_loss`` / ``geo_scal_loss``
(``monoscene/loss/ssc_loss.py``), with the per-class loop of ``sem_scal_loss`` vectorised (the same
terms, summed in a different order).

Class weights are MonoScene's ``1 / log(frequency + 0.001)`` of the per-class voxel counts of the
dataset spec (:meth:`occ_core.data.spec.ClassSpec.weights`; SemanticKITTI's published counts are
:data:`occ_core.data.formats.semantickitti.CLASS_FREQUENCIES`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "class_weights_from_frequencies",
    "ce_ssc_loss",
    "sem_scal_loss",
    "geo_scal_loss",
    "lovasz_softmax_loss",
    "ssc_losses",
]


def class_weights_from_frequencies(freqs: Sequence[float] | Tensor) -> Tensor:
    """MonoScene's class weights: ``1 / log(freqs + 0.001)`` -> Tensor  # [n_classes] float32.

    ``freqs`` are raw counts (all > 1, so that the log is positive)."""
    f = torch.as_tensor(freqs, dtype=torch.float64)
    if torch.any(f + 0.001 <= 1.0):
        raise ValueError("class frequencies must be voxel counts greater than 1 (log(f + 0.001) must be positive)")
    return (1.0 / torch.log(f + 0.001)).float()


def ce_ssc_loss(
    logits: Tensor,  # [B, n_classes, X, Y, Z]
    target: Tensor,  # [B, X, Y, Z] long, ignore_index = ignored
    class_weights: Tensor | None = None,  # [n_classes]
    ignore_index: int = 255,
    weight: Tensor | None = None,  # [B, X, Y, Z]: per-voxel importance weights (a stratified draw)
) -> Tensor:  # []
    """Class-weighted cross-entropy (weighted mean over the non-ignored voxels, as ``nn.CrossEntropyLoss``;
    with ``weight`` each voxel also counts ``weight`` times, in the sum and in the normaliser).

    Returns 0 (with a gradient path) when every voxel is ignored."""
    target = target.long()
    if not torch.any(target != ignore_index):
        return logits.sum() * 0.0
    return _weighted_nll(F.log_softmax(logits, dim=1), target, class_weights, ignore_index, weight)


def _weighted_nll(logp: Tensor, target: Tensor, class_weights: Tensor | None, ignore_index: int,
                  weight: Tensor | None) -> Tensor:
    """``F.nll_loss(logp, target, weight=class_weights, reduction="mean")``, each voxel counted ``weight``
    times when given (target has at least one non-ignored voxel)."""
    w = None if class_weights is None else class_weights.to(device=logp.device, dtype=logp.dtype)
    if weight is None:
        return F.nll_loss(logp, target, weight=w, ignore_index=ignore_index, reduction="mean")
    valid = target != ignore_index
    t0 = torch.where(valid, target, torch.zeros_like(target))
    nll = -logp.gather(1, t0[:, None]).squeeze(1)
    vw = torch.where(valid, weight.to(logp.dtype), torch.zeros_like(nll))
    if w is not None:
        vw = vw * w[t0]
    return (nll * vw).sum() / vw.sum().clamp_min(torch.finfo(vw.dtype).tiny)


def _bce_to_one(x: Tensor) -> Tensor:
    """BCE of ``x`` (in [0, 1]) against 1. A NaN ``x`` (a diverged step) gives a NaN loss term, so that the
    engine stops the run cleanly on its NaN check, instead of F.binary_cross_entropy's RuntimeError
    ("all elements of input should be between 0 and 1"); finite values are unchanged (no device sync)."""
    nan = torch.isnan(x)
    loss = F.binary_cross_entropy(torch.where(nan, torch.ones_like(x), x), torch.ones_like(x), reduction="none")
    return torch.where(nan, x, loss)


def _softmax(logits: Tensor) -> Tensor:
    return F.softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=1)


def _sem_scal_from_probs(probs: Tensor, target: Tensor, ignore_index: int, weight: Tensor | None = None) -> Tensor:
    """probs: Tensor  # [B, C, ...] softmax;  target: Tensor  # [B, ...];  weight: Tensor  # [B, ...]
    per-voxel importance weights (every sum over voxels weighted; None = 1)  ->  Tensor  # []"""
    B, C = probs.shape[:2]
    p = probs.reshape(B, C, -1)  # [B, C, N] (a view: no copy of the probabilities)
    t = target.reshape(B, -1).long()
    valid = t != ignore_index
    tv = t[valid]
    if tv.numel() == 0:
        return probs.sum() * 0.0
    if int(tv.min()) < 0 or int(tv.max()) >= C:
        raise ValueError(f"target labels must be in [0, {C}) or {ignore_index} (got {int(tv.min())}..{int(tv.max())})")
    vf = valid.to(p.dtype)  # [B, N]
    if weight is not None:
        vf = vf * weight.reshape(B, -1).to(p.dtype)
    wv = vf[valid]  # [M]
    M = wv.sum()
    sum_p = torch.einsum("bcn,bn->c", p, vf)  # sum(p) over valid voxels, per class
    t0 = torch.where(valid, t, torch.zeros_like(t))
    p_true = p.gather(1, t0[:, None]).squeeze(1)[valid]  # [M]: probability of each voxel's class
    inter = torch.zeros(C, dtype=p.dtype, device=p.device).index_add(0, tv, p_true * wv)  # sum(p * t)
    count = torch.zeros(C, dtype=p.dtype, device=p.device).index_add(0, tv, wv)  # sum(t)
    present = torch.bincount(tv, minlength=C) > 0
    neg = M - count  # sum(1 - t)
    spec_num = neg - sum_p + inter  # sum((1 - p)(1 - t))
    one = torch.ones_like(sum_p)
    zero = torch.zeros_like(sum_p)
    # the ratios are in [0, 1] mathematically; clamp away rounding before the BCE
    precision = (inter / torch.where(sum_p > 0, sum_p, one)).clamp(0.0, 1.0)
    recall = (inter / torch.where(present, count, one)).clamp(0.0, 1.0)
    spec = (spec_num / torch.where(neg > 0, neg, one)).clamp(0.0, 1.0)
    loss_c = (
        torch.where(present & (sum_p > 0), _bce_to_one(precision), zero)
        + torch.where(present, _bce_to_one(recall), zero)
        + torch.where(present & (neg > 0), _bce_to_one(spec), zero)
    )
    return loss_c.sum() / present.sum().to(loss_c.dtype)


def _geo_scal_from_empty(empty: Tensor, target: Tensor, ignore_index: int, empty_index: int,
                         weight: Tensor | None = None) -> Tensor:
    """empty: Tensor  # [B, ...] probability of the empty class;  target: Tensor  # [B, ...];
    weight: Tensor  # [B, ...] per-voxel importance weights (None = 1)"""
    t = target.reshape(-1)
    valid = t != ignore_index
    e = empty.reshape(-1)[valid]
    w = torch.ones_like(e) if weight is None else weight.reshape(-1)[valid].to(e.dtype)
    nonempty_t = (t[valid] != empty_index).to(e.dtype)
    nonempty_p = 1.0 - e
    inter = (w * nonempty_t * nonempty_p).sum()
    sum_q, sum_t = (w * nonempty_p).sum(), (w * nonempty_t).sum()
    sum_nt = (w * (1.0 - nonempty_t)).sum()
    terms = []
    if sum_q > 0:
        terms.append(_bce_to_one((inter / sum_q).clamp(0.0, 1.0)))
    if sum_t > 0:
        terms.append(_bce_to_one((inter / sum_t).clamp(0.0, 1.0)))
    if sum_nt > 0:
        terms.append(_bce_to_one(((w * (1.0 - nonempty_t) * e).sum() / sum_nt).clamp(0.0, 1.0)))
    if not terms:
        return empty.sum() * 0.0
    return torch.stack(terms).sum()


def sem_scal_loss(
    logits: Tensor,  # [B, n_classes, X, Y, Z]
    target: Tensor,  # [B, X, Y, Z] long
    ignore_index: int = 255,
    weight: Tensor | None = None,  # [B, X, Y, Z] per-voxel importance weights
) -> Tensor:  # []
    """MonoScene's semantic scene-class affinity loss.

    For each class ``c`` present among the valid voxels (``p = softmax(logits)[c]``, ``t = [target == c]``)::

        precision = sum(p * t) / sum(p)          (term only when sum(p) > 0)
        recall    = sum(p * t) / sum(t)
        spec      = sum((1 - p) * (1 - t)) / sum(1 - t)   (term only when sum(1 - t) > 0)
        loss_c    = BCE(precision, 1) + BCE(recall, 1) + BCE(spec, 1)

    and the loss is the mean of ``loss_c`` over the present classes (0 when every voxel is ignored).
    The per-class sums are gathered rather than looped (``sum((1 - p)(1 - t))`` is computed as
    ``sum(1 - t) - sum(p) + sum(p t)``), so memory stays at the softmax itself. With ``weight`` every
    sum over voxels is weighted by it (a class is present when any of its voxels is in the target).
    """
    return _sem_scal_from_probs(_softmax(logits), target, ignore_index, weight)


def geo_scal_loss(
    logits: Tensor,  # [B, n_classes, X, Y, Z]
    target: Tensor,  # [B, X, Y, Z] long
    ignore_index: int = 255,
    empty_index: int = 0,
    weight: Tensor | None = None,  # [B, X, Y, Z] per-voxel importance weights
) -> Tensor:  # []
    """MonoScene's geometric scene-class affinity loss on ``q = 1 - softmax(logits)[empty]`` and the
    non-empty target ``t = [target != empty]`` (valid voxels only)::

        precision = sum(q t) / sum(q),  recall = sum(q t) / sum(t),
        spec = sum((1 - q)(1 - t)) / sum(1 - t)
        loss = BCE(precision, 1) + BCE(recall, 1) + BCE(spec, 1)

    MonoScene divides without a guard (a target without occupied, or without empty, valid voxels
    gives NaN); here a term whose denominator is zero is left out. With ``weight`` every sum over voxels
    is weighted by it.
    """
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    empty = torch.exp(x[:, empty_index] - torch.logsumexp(x, dim=1))  # softmax(x)[empty] without [B, C, ...]
    return _geo_scal_from_empty(empty, target, ignore_index, empty_index, weight)


def lovasz_softmax_loss(
    logits: Tensor,  # [B, n_classes, ...]
    target: Tensor,  # [B, ...] long, ignore_index = ignored
    ignore_index: int = 255,
    weight: Tensor | None = None,  # [B, ...] per-voxel importance weights
) -> Tensor:  # []
    """Lovász-softmax (Berman et al. 2018, ``lovasz_softmax(probas, labels, classes='present')`` of the
    authors' code, over all non-ignored voxels of the batch): per class ``c`` present in the target, the
    errors ``e_i = |[y_i == c] - p_c(i)|`` sorted in decreasing order are weighted by the discrete
    gradient of the Jaccard loss along that order; the mean over the present classes. For one-hot
    probabilities it equals the mean over the present classes of ``1 - IoU_c``. With ``weight`` a voxel
    counts ``weight`` times in the intersections and unions (an integer weight k equals k copies of the
    voxel). 0 (with a gradient path) when every voxel is ignored."""
    probs = _softmax(logits)
    C = probs.shape[1]
    p = probs.movedim(1, -1).reshape(-1, C)
    y = target.reshape(-1).long()
    keep = y != ignore_index
    if not bool(keep.any()):
        return logits.sum() * 0.0
    p, y = p[keep], y[keep]
    w = torch.ones_like(p[:, 0]) if weight is None else weight.reshape(-1)[keep].to(p.dtype)
    present = torch.unique(y)
    fg = (y[:, None] == present[None]).to(p.dtype)  # [N, K]
    errors = (fg - p[:, present]).abs()
    errors, order = torch.sort(errors, dim=0, descending=True)
    fg = fg.gather(0, order)
    wk = w[order]  # [N, K]: each voxel's weight in each class's order
    gts = (fg * wk).sum(0)
    intersection = gts - (fg * wk).cumsum(0)
    union = gts + ((1.0 - fg) * wk).cumsum(0)
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], 0)
    return (errors * grad).sum(0).mean()


def ssc_losses(
    logits: Tensor,  # [B, n_classes, X, Y, Z]
    target: Tensor,  # [B, X, Y, Z] long
    class_weights: Tensor | None = None,  # [n_classes]
    ignore_index: int = 255,
    empty_index: int = 0,
    weight: Tensor | None = None,  # [B, X, Y, Z] per-voxel importance weights
) -> dict[str, Tensor]:
    """The three MonoScene losses sharing one log-softmax (cheaper than calling the three functions):
    ``{"ce": ce_ssc_loss, "sem_scal": sem_scal_loss, "geo_scal": geo_scal_loss}`` (same values)."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    target = target.long()
    logp = F.log_softmax(x, dim=1)
    if torch.any(target != ignore_index):
        ce = _weighted_nll(logp, target, class_weights, ignore_index, weight)
    else:
        ce = x.sum() * 0.0
    probs = logp.exp()
    return {
        "ce": ce,
        "sem_scal": _sem_scal_from_probs(probs, target, ignore_index, weight),
        "geo_scal": _geo_scal_from_empty(probs[:, empty_index], target, ignore_index, empty_index, weight),
    }
