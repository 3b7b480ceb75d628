"""Training augmentation in the loader: photometric jitter changes the pixels only, is reproducible
for a seed and epoch, differs between epochs, and is off outside training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from occ_core.data.loading.dataset import DataConfig, OccDataset, photometric

CFG = DataConfig(image_scale=0.1, target_scales=[2], flip_prob=0.0, color_jitter=0.4)


def test_photometric_definitions():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 0.8, (4, 5, 3)).astype(np.float32)
    assert np.allclose(photometric(img, (1.0, 1.0, 1.0)), img, atol=1e-6)
    assert np.allclose(photometric(img, (1.2, 1.0, 1.0)), np.clip(img * 1.2, 0, 1), atol=1e-6)
    grey = photometric(img, (1.0, 1.0, 0.0))  # saturation 0: every channel equals the luma
    assert np.allclose(grey[..., 0], grey[..., 1], atol=1e-6) and np.allclose(grey[..., 1], grey[..., 2], atol=1e-6)
    flat = photometric(img, (1.0, 0.0, 1.0))  # contrast 0: one grey level everywhere
    assert np.ptp(flat) < 1e-5


def test_jitter_only_in_training_reproducible_and_per_epoch(synthetic_prepared: Path):
    plain = OccDataset(synthetic_prepared, "train", dataclasses.replace(CFG, color_jitter=0.0), train=True, seed=3)
    jit = OccDataset(synthetic_prepared, "train", CFG, train=True, seed=3)
    again = OccDataset(synthetic_prepared, "train", CFG, train=True, seed=3)
    evals = OccDataset(synthetic_prepared, "train", CFG, train=False, seed=3)
    a, b, c, e = plain[0], jit[0], again[0], evals[0]
    assert not torch.equal(a["images"], b["images"])
    assert torch.equal(b["images"], c["images"])  # same seed, epoch, index
    assert torch.equal(a["images"], e["images"])  # no jitter outside training
    for k in ("depth", "intrinsics", "grid_to_cam", "target_1_2"):
        assert torch.equal(a[k], b[k]), k  # geometry and targets untouched
    jit.set_epoch(1)
    assert not torch.equal(jit[0]["images"], b["images"])
