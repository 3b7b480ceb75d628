"""Every registered method trains for two steps on the tiny synthetic fixture (nerfstudio-style)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from occ_core.data.prepare.layout import PreparedDataset
from occ_core.data.loading.dataset import OccDataset, collate
from occ_core.engine.config import build_config
from occ_core.engine.trainer import build_model
from occ_core.registry import available_methods

SMALL = ["data.image_scale=0.15", "model.lifting.grid=[32, 32, 4]", "model.lifting.embed_dims=16",
         "model.lifting.num_heads=2"]


@pytest.mark.parametrize("method", sorted(m for m in available_methods() if m in ("baseline", "vpocc")))
def test_method_trains_two_steps(method: str, synthetic_prepared: Path):
    torch.manual_seed(0)
    cfg = build_config(method, "tiny", overrides=[f"data.root={synthetic_prepared}", *SMALL])
    spec = PreparedDataset(synthetic_prepared).spec
    assert spec.n_classes == 20
    cfg = dataclasses.replace(cfg, n_classes=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone warning
        model = build_model(cfg, spec)
    data = OccDataset(synthetic_prepared, "train", cfg.data, train=True)
    batch = collate([data[0]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(2):
        out = model(batch)
        losses = model.losses(out, batch)
        assert set(losses) == {"ce", "sem_scal", "geo_scal", "empty_above", "empty_unlabelled"}  # tiny: both empty terms
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)  # the image matters
        opt.step()
        totals.append(float(total))
    model.eval()
    pred = model.predict(batch)
    assert pred.shape == (1, 256, 256, 32) and pred.dtype == torch.int64
    assert int(pred.min()) >= 0 and int(pred.max()) < 20


def test_presets_resolve_for_every_method():
    for method in ("baseline", "vpocc"):
        for preset in ("tiny", "paper"):
            cfg = build_config(method, preset)
            assert cfg.method == method and cfg.preset == preset
    paper = build_config("vpocc", "paper")
    assert paper.optim.lr == 2e-4 and paper.optim.weight_decay == 1e-4 and paper.optim.epochs == 30
    assert paper.optim.milestones == [25] and paper.optim.gamma == 0.1
    assert paper.model.lifting.num_layers == 3 and paper.model.lifting.num_points == 9 and paper.model.lifting.num_heads == 8
    assert paper.model.vp.alpha == 0.2 and paper.model.vp.beta == 50.0
    assert paper.data.image_scale == 1.0 and paper.data.flip_prob == 0.5
