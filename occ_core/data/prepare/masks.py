"""Per-image instance masks in a prepared folder (SAM's automatic masks, the synthetic generator's
instances, or any external generator's), read by the loader as ``masks`` (``DataConfig.load_masks``).

::

    OUT/masks/<sequence>/<frame_id>/<camera_name>.png    uint16 id image of the raw camera image
                                                           (same W x H), 0 = no mask, 1..K = mask k,
                                                           higher score first; each pixel holds the
                                                           best-scored mask covering it
    OUT/masks/<sequence>/<frame_id>/<camera_name>.json   {"format": "occ-masks", "version": 1,
                                                           "source", "size": [W, H],
                                                           "scores": [K], "areas": [K], ...}
    OUT/masks/masks.json                                  how the masks were made (options record)

``scores[k-1]`` is mask k's score (SAM: predicted IoU; synthetic and external masks without scores:
1.0), ``areas[k-1]`` its visible pixels in the id image. The id image is stored at the raw image's
size, so the loader crops, resizes (nearest) and flips it exactly like the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from occ_core.errors import FormatError, MissingError

MASKS_DIR = "masks"
RECORD = "masks.json"
"""``OUT/masks/masks.json``: the options the masks were made with (source, model, settings)."""
FORMAT = "occ-masks"
VERSION = 1
MAX_MASKS = 65535


def mask_path(root: str | Path, sequence: str, frame_id: str, camera: str) -> Path:
    """The id image of one camera image: ``OUT/masks/<sequence>/<frame_id>/<camera>.png``."""
    return Path(root) / MASKS_DIR / sequence / frame_id / f"{camera}.png"


def info_path(root: str | Path, sequence: str, frame_id: str, camera: str) -> Path:
    """The scores/areas file beside the id image (``<camera>.json``)."""
    return Path(root) / MASKS_DIR / sequence / frame_id / f"{camera}.json"


def read_id_image(path: str | Path, size: tuple[int, int] | None = None, what: str = "mask id image") -> np.ndarray:
    """A single-channel 8- or 16-bit PNG id image as uint16 [H, W]; FormatError naming ``path`` when it
    is unreadable, has colour channels or another bit depth, or is not ``size`` (W, H)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise MissingError(f"{what} missing (run 'occ prepare masks')", path)
    ids = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if ids is None:
        raise FormatError(f"unreadable {what} (not a PNG, truncated or damaged)", path)
    if ids.ndim != 2:
        raise FormatError(f"{what} has {ids.shape[2]} channels, expected one (a single-channel id image)", path)
    if ids.dtype not in (np.uint8, np.uint16):
        raise FormatError(f"{what} is {ids.dtype}, expected an 8- or 16-bit PNG", path)
    if size is not None and (ids.shape[1], ids.shape[0]) != tuple(size):
        raise FormatError(f"{what} is {ids.shape[1]}x{ids.shape[0]}, its camera image is {size[0]}x{size[1]}", path)
    return ids.astype(np.uint16, copy=False)


def image_size(path: str | Path) -> tuple[int, int]:
    """(W, H) of an image file from its header (PIL, no decoding); FormatError when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise FormatError(f"cannot read image ({e.__class__.__name__})", path) from None


def id_image(masks: list[np.ndarray], scores: list[float]) -> tuple[np.ndarray, list[int], list[int]]:
    """Masks (bool [H, W]) with scores -> (uint16 id image, kept mask indices by decreasing score,
    visible areas): id k marks the k-th best mask; where masks overlap the better score wins; masks left
    with no visible pixel get no id."""
    if not masks:
        raise ValueError("no masks: use np.zeros for the id image")
    order = sorted(range(len(masks)), key=lambda i: -float(scores[i]))  # stable: ties keep input order
    h, w = masks[0].shape
    best = np.full((h, w), -1, np.int64)
    for rank in reversed(range(len(order))):  # worst first, so better masks overwrite
        best[masks[order[rank]]] = rank
    counts = np.bincount(best[best >= 0].ravel(), minlength=len(order))
    visible = [r for r in range(len(order)) if counts[r] > 0][:MAX_MASKS]
    new_id = np.zeros(len(order) + 1, np.uint16)  # rank -> id (0 for dropped); index -1 -> 0
    for k, r in enumerate(visible):
        new_id[r] = k + 1
    ids = new_id[best]  # best == -1 reads new_id[-1] = 0
    return ids.astype(np.uint16), [order[r] for r in visible], [int(counts[r]) for r in visible]


def write_masks(root: str | Path, sequence: str, frame_id: str, camera: str, ids: np.ndarray,
                scores: list[float], areas: list[int], source: str, extra: dict[str, Any] | None = None) -> None:
    """Write one camera image's id image and its ``.json`` atomically (the PNG last: its presence marks
    the image done)."""
    import cv2

    from occ_core.utils.atomic import atomic_path, write_json

    ids = np.ascontiguousarray(ids, dtype=np.uint16)
    if len(scores) != int(ids.max(initial=0)) or len(areas) != len(scores):
        raise ValueError(f"{len(scores)} scores / {len(areas)} areas for ids up to {int(ids.max(initial=0))}")
    info = {"format": FORMAT, "version": VERSION, "source": source, "size": [int(ids.shape[1]), int(ids.shape[0])],
            "scores": [round(float(s), 6) for s in scores], "areas": [int(a) for a in areas]}
    info.update(extra or {})
    write_json(info_path(root, sequence, frame_id, camera), info, indent=None)
    png = mask_path(root, sequence, frame_id, camera)
    with atomic_path(png) as tmp:
        if not cv2.imwrite(os.fspath(tmp), ids, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
            raise OSError(f"could not write {png}")


def read_info(root: str | Path, sequence: str, frame_id: str, camera: str) -> dict[str, Any]:
    """The ``.json`` of one camera image's masks (scores, areas, source, size)."""
    from occ_core.utils.io import read_json

    path = info_path(root, sequence, frame_id, camera)
    if not path.is_file():
        raise MissingError("mask scores missing (run 'occ prepare masks')", path)
    info = read_json(path, "mask scores", expect=dict)
    if info.get("format") != FORMAT or not isinstance(info.get("scores"), list):
        raise FormatError(f"not an {FORMAT} file (keys format, scores, areas)", path)
    return info


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
