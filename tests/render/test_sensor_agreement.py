"""Camera conventions end to end: the synthetic ground-truth voxels rendered from the sensor camera
agree with the generator's own per-pixel class image (semantic_2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occ_core.data.prepare.layout import PreparedDataset
from occ_core.render.views import sensor_agreement


def test_render_agrees_with_the_generator_class_image(synthetic_prepared: Path):
    data = PreparedDataset(synthetic_prepared)
    results = [sensor_agreement(data, f.name, scale=0.5, scale_factor=0.35) for f in data.frames(labeled=True)[::2]]
    for r in results:
        assert r["fraction_of_image"] > 0.3  # most of the image sees labelled geometry
        assert r["agreement"] > 0.8, r
        assert r["interior_agreement"] > 0.9, r
    assert np.mean([r["interior_agreement"] for r in results]) > 0.93


def test_agreement_breaks_when_the_convention_is_wrong(synthetic_prepared: Path):
    """A mirrored or shifted class image agrees much less: the figure above measures alignment."""
    import cv2

    data = PreparedDataset(synthetic_prepared)
    fr = data.frames(labeled=True)[0]
    sem = cv2.imread(str(data.source / fr.sequence / "semantic_2" / f"{fr.id}.png"), cv2.IMREAD_UNCHANGED)
    dep = cv2.imread(str(data.source / fr.sequence / "depth_2" / f"{fr.id}.png"), cv2.IMREAD_UNCHANGED) / 256.0
    W, H = data.image_size
    sem, dep = sem[:H, :W], dep[:H, :W]
    good = sensor_agreement(data, fr.name, scale=0.35, scale_factor=0.35)
    mirrored = sensor_agreement(data, fr.name, scale=0.35, scale_factor=0.35, class_image=sem[:, ::-1], depth_image=dep[:, ::-1])
    shifted = sensor_agreement(data, fr.name, scale=0.35, scale_factor=0.35, class_image=np.roll(sem, 12, axis=0),
                               depth_image=np.roll(dep, 12, axis=0))
    assert mirrored["agreement"] < good["agreement"] - 0.1
    assert shifted["agreement"] < good["agreement"] - 0.05
