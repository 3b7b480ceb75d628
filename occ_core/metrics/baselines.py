"""Trivial references every accuracy claim is read against (docs/results.md).

* **all-empty**: every voxel empty (IoU 0, mIoU 0 by construction).
* **per-voxel prior**: for each voxel, the most frequent class over the labeled training frames
  (ignored voxels skipped), the same grid for every val frame: the scene layout without any image.
  On regular layouts (the synthetic streets) it is a strong reference, so a trained model's margin
  over it, not its raw IoU, says how much it sees.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from occ_core.data.spec import IGNORE


def per_voxel_prior(data, split: str = "train", frames: Sequence[Any] | None = None) -> np.ndarray:
    """uint8 grid (the dataset grid): the most frequent class of every voxel over the labeled ``frames``
    (default: every labeled frame of ``split``) of a :class:`PreparedDataset`; ties go to the lower class."""
    frames = list(data.frames(split, labeled=True) if frames is None else frames)
    if not frames:
        from occ_core.errors import MissingError

        raise MissingError(f"no labeled frames in split '{split}' for the per-voxel prior", data.root / "manifest.json")
    spec = data.spec
    counts = np.zeros((spec.n_classes, spec.grid.n_voxels), np.uint32)
    for f in frames:
        t = data.load_target(f).reshape(-1)
        for c in np.unique(t):
            if c != IGNORE:
                counts[c] += t == c
    return counts.argmax(axis=0).astype(np.uint8).reshape(spec.grid.shape)


def reference_scores(data, split: str = "val", prior: np.ndarray | None = None,
                     train_split: str = "train") -> dict[str, dict[str, Any]]:
    """``{"all-empty": scores, "per-voxel-prior": scores}`` on the labeled frames of ``split`` (the
    benchmark metric of the dataset spec; percent)."""
    from occ_core.metrics.ssc import SSCMetric

    spec = data.spec
    prior = per_voxel_prior(data, train_split) if prior is None else prior
    out = {}
    for name, pred in (("all-empty", np.zeros(spec.grid.shape, np.uint8)), ("per-voxel-prior", prior)):
        m = SSCMetric.for_spec(spec)
        for f in data.frames(split, labeled=True):
            m.process(pred, data.load_target(f))
        out[name] = m.evaluate()
    return out
