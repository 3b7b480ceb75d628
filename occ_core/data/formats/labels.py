"""Per-sample ``labels.npz`` predictions of the nuScenes-family datasets (Occ3D, OpenOccupancy, SurroundOcc).

``occ predict`` on a nuScenes-family run writes, and ``occ eval --pred`` reads::

    PRED/<scene name>/<sample token>/labels.npz     semantics: integer [X, Y, Z] in the dataset's own ids

the layout of Occ3D's ground truth (``gts/<scene>/<token>/labels.npz``; other keys such as the masks are
allowed and ignored). The ids are the dataset's raw ids (Occ3D: 0..16 classes, 17 free; OpenOccupancy and
SurroundOcc: 0 empty, 1..16) and are mapped to prepared classes with the spec's ``from_raw``. A missing
``semantics``, a wrong shape or dtype, or an id that is no class of the dataset is a one-line
:class:`~occ_core.errors.FormatError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occ_core.errors import FormatError

FILE = "labels.npz"
KEY = "semantics"


def prediction_path(pred: str | Path, scene: str, token: str) -> Path:
    return Path(pred) / scene / token / FILE


def find_prediction(pred: str | Path, scene: str, token: str) -> Path | None:
    path = prediction_path(pred, scene, token)
    return path if path.is_file() else None


def load_prediction(path: str | Path, spec) -> np.ndarray:
    """The prediction of ``path`` as prepared class indices (uint8, the spec's grid)."""
    from occ_core.data.prepare.layout import read_npz

    path = Path(path)
    a = read_npz(path, [KEY], "prediction labels.npz", hint="")[KEY]
    shape = tuple(spec.grid.shape)
    if a.shape != shape:
        raise FormatError(f"'{KEY}' has shape {tuple(a.shape)}, expected {shape}", path)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise FormatError(f"'{KEY}' must hold integer class ids, got dtype {a.dtype}", path)
    known = {raw for raw, cls in spec.classes.from_raw if cls < spec.n_classes}
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > 255:
        raise FormatError(f"'{KEY}' holds id {lo if lo < 0 else hi}, not an id of {spec.name}", path)
    a = a.astype(np.uint8)
    present = np.flatnonzero(np.bincount(a.reshape(-1), minlength=256))
    bad = [int(v) for v in present if int(v) not in known]
    if bad:
        raise FormatError(f"'{KEY}' holds id {bad[0]}, not a class id of {spec.name} "
                          f"(ids: {', '.join(str(r) for r in sorted(known))})", path)
    lut = spec.classes.remap_lut(256)
    return lut[a]


def write_prediction(pred: str | Path, scene: str, token: str, classes: np.ndarray, spec) -> Path:
    """Write prepared class indices as ``PRED/<scene>/<token>/labels.npz`` (``semantics`` uint8 in the
    dataset's own ids, atomically); returns the path."""
    from occ_core.utils.atomic import save_npz

    path = prediction_path(pred, scene, token)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = spec.classes.inverse_lut()[np.asarray(classes, np.int64)].astype(np.uint8)
    save_npz(path, **{KEY: raw})
    return path
