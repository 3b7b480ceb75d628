"""Every registered method can memorise one synthetic frame (issue 14).

A model or a loss that cannot overfit a single frame has a bug. Each method's ``tiny`` preset, with its
loss scale set to 1:4 (64 x 64 x 8 for SemanticKITTI) to fit the suite's CPU budget, trains on one
training frame (no flips, AdamW at lr 3e-3, gradient clipping 5) until its training-mode prediction at
that scale reaches IoU >= 90 and mIoU >= 70 over the classes present in the frame, checked every
``CHECK_EVERY`` steps. Budget: at most ``MAX_STEPS`` steps. Measured on one core of a 2-core machine
(2026-12-02; ``python -m pytest -q -n 2 --durations=80``: vpocc 326 s, cigocc 188 s, tacocc 153 s, b2s 119 s,
baseline 84 s, lidar 72 s, checking every 10 steps then): vpocc reaches it at 65 steps (4.3 s a step), cigocc at
55 (2.9 s a step); the six take about 15 CPU minutes, the largest share of the suite. Neither
smaller images (x0.15: 4.1 s a step), a coarser loss scale (1:8: no faster) nor a coarser query volume (stride 8:
3.7x faster, but vpocc's IoU stalls near 78) cut it without weakening the check.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from occ_core.registry import available_methods

MAX_STEPS = 100
CHECK_EVERY = 5
IOU, MIOU = 90.0, 70.0
OPT_OUT: dict[str, str] = {}
"""method -> why it is not checked here (none today)."""


def frame_scores(pred: np.ndarray, target: np.ndarray, spec) -> tuple[float, float]:
    """(IoU, mIoU over the classes present in ``target``) of one frame, in percent."""
    from occ_core.metrics.ssc import SSCMetric

    m = SSCMetric(n_classes=spec.n_classes, class_names=list(spec.classes.names))
    m.process(pred.astype(np.uint8), target.astype(np.uint8))
    r = m.evaluate()
    present = [spec.classes.names[c] for c in range(1, spec.n_classes) if (target == c).any()]
    return r["iou"], float(np.mean([r["per_class"][n] for n in present]))


@pytest.mark.parametrize("method", sorted(m for m in available_methods() if m not in OPT_OUT))
def test_tiny_model_memorises_one_frame(method: str, synthetic_prepared: Path):
    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model

    spec = PreparedDataset(synthetic_prepared).spec
    sets = [f"data.root={synthetic_prepared}", "data.flip_prob=0", "model.loss_scale=4", "data.target_scales=[4]",
            "data.color_jitter=0"]
    if hasattr(build_config(method, "tiny").model, "supervise_full_grid"):
        sets.append("model.supervise_full_grid=false")  # memorise the target at the training output scale
    cfg = build_config(method, "tiny", overrides=sets)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone
        model = build_model(cfg, spec)
    batch = collate([OccDataset(synthetic_prepared, "train", cfg.data, train=True)[0]])
    scale = cfg.model.loss_scale
    target = batch["target" if scale == 1 else f"target_1_{scale}"][0].numpy()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    history = []
    for step in range(1, MAX_STEPS + 1):
        out = model(batch)
        loss = sum(model.losses(out, batch).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % CHECK_EVERY == 0:
            iou, miou = frame_scores(out["logits"].detach().argmax(1)[0].numpy(), target, spec)
            history.append((step, round(iou, 1), round(miou, 1)))
            if iou >= IOU and miou >= MIOU:
                break
    assert history and history[-1][1] >= IOU and history[-1][2] >= MIOU, f"{method} did not memorise: {history}"
