"""The trivial references: per-voxel prior (most frequent training class) and all-empty."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from occ_core.data.formats import semantickitti as sk
from occ_core.data.spec import GridSpec
from occ_core.metrics.baselines import per_voxel_prior, reference_scores


class _Data:
    """A duck-typed prepared dataset on a 4 x 2 x 2 grid."""

    def __init__(self, frames: dict[str, list[np.ndarray]]):
        self.spec = dataclasses.replace(sk.dataset_spec(), grid=GridSpec((4, 2, 2), 0.2, (0.0, -0.2, -0.2)))
        self._frames = {split: [(split, i) for i in range(len(ts))] for split, ts in frames.items()}
        self._targets = {(split, i): t for split, ts in frames.items() for i, t in enumerate(ts)}
        self.root = Path(".")

    def frames(self, split, labeled=None):
        return self._frames.get(split, [])

    def load_target(self, frame, scale=1):
        return self._targets[frame]


def test_prior_is_the_per_voxel_mode_ignoring_255_with_ties_to_the_lower_class():
    a = np.full((4, 2, 2), 9, np.uint8)
    b = a.copy()
    c = a.copy()
    a[0, 0, 0], b[0, 0, 0], c[0, 0, 0] = 13, 13, 9  # 13 wins 2:1
    a[1, 0, 0], b[1, 0, 0], c[1, 0, 0] = 255, 255, 11  # only one labelled vote
    a[2, 0, 0], b[2, 0, 0], c[2, 0, 0] = 15, 14, 255  # tie -> lower class
    prior = per_voxel_prior(_Data({"train": [a, b, c]}))
    assert prior[0, 0, 0] == 13 and prior[1, 0, 0] == 11 and prior[2, 0, 0] == 14
    assert prior[3, 1, 1] == 9 and prior.dtype == np.uint8 and prior.shape == (4, 2, 2)


def test_reference_scores_on_val():
    train = np.zeros((4, 2, 2), np.uint8)
    train[:2] = 9
    val = train.copy()
    val[3] = 13
    scores = reference_scores(_Data({"train": [train], "val": [val]}))
    assert scores["all-empty"]["iou"] == 0.0 and scores["all-empty"]["miou"] == 0.0
    assert abs(scores["per-voxel-prior"]["iou"] - 200 / 3) < 1e-9  # 8 road voxels found, 4 building voxels missed
    assert scores["per-voxel-prior"]["per_class"]["road"] == 100.0
