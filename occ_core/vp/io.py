"""Vanishing point files in VPOcc's published format.

One JSON file per sequence, ``VPDIR/seq_XX.json``, mapping an image path to a list holding one
``[x, y]`` in pixels of the full, uncropped image::

    {"SemanticKITTI/dataset/sequences/00/image_2/000000.png": [[602.1, 175.0]], ...}

KITTI-360 files (``seq_2013_05_28_drive_0000_sync.json``) use keys
``KITTI-360/2013_05_28_drive_0000_sync/image_00/NNNNNN.png``; both are read. Readers key the
result by ``(sequence, frame id)``: ``("00", "000000")`` or
``("2013_05_28_drive_0000_sync", "000000")``. Any malformed file raises
:class:`~occ_core.errors.FormatError` naming it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Mapping

from occ_core.errors import FormatError, MissingError
from occ_core.utils.atomic import write_json
from occ_core.utils.io import read_json

KITTI_PREFIX = "SemanticKITTI/dataset/sequences"

_KITTI_KEY = re.compile(r"(?:^|/)sequences/(?P<seq>[^/]+)/image_2/(?P<fid>[^/]+)\.png$")
_K360_KEY = re.compile(r"(?:^|/)KITTI-360/(?P<seq>[^/]+)/image_0[01]/(?:data_rect/)?(?P<fid>[^/]+)\.png$")
_FILE_NAME = re.compile(r"^seq_(?P<seq>.+)\.json$")

VPMap = dict[tuple[str, str], tuple[float, float]]


def vp_key(sequence: str, frame_id: str) -> str:
    """The VPOcc key of a frame: KITTI-360 drives (``2013_..._sync``) get the KITTI-360 form."""
    if sequence.startswith("2013_") or "drive" in sequence:
        return f"KITTI-360/{sequence}/image_00/{frame_id}.png"
    return f"{KITTI_PREFIX}/{sequence}/image_2/{frame_id}.png"


def parse_vp_key(key: str) -> tuple[str, str] | None:
    """``(sequence, frame id)`` of a key in either published form, or None if it is neither."""
    key = key.replace("\\", "/")
    for pattern in (_KITTI_KEY, _K360_KEY):
        m = pattern.search(key)
        if m:
            return m.group("seq"), m.group("fid")
    return None


def vp_file_name(sequence: str) -> str:
    return f"seq_{sequence}.json"


def _point(value, key: str, path: Path) -> tuple[float, float]:
    """[[x, y]] (published) or [x, y] (tolerated) -> (x, y)."""
    try:
        if isinstance(value, list) and len(value) >= 1 and isinstance(value[0], list):
            value = value[0]
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError
        x, y = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise FormatError(f"entry '{key}': expected [[x, y]]", path) from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise FormatError(f"entry '{key}': not a finite point", path)
    return x, y


def read_vp_file(path: str | Path) -> VPMap:
    """``{(sequence, frame id): (x, y)}`` from one VPOcc JSON file."""
    path = Path(path)
    if not path.is_file():
        raise MissingError("vanishing point file not found", path)
    data = read_json(path, "vanishing point file ({image path: [[x, y]]})", expect=dict)
    out: VPMap = {}
    for key, value in data.items():
        parsed = parse_vp_key(key)
        if parsed is None:
            raise FormatError(f"entry '{key}': not a '{KITTI_PREFIX}/XX/image_2/NNNNNN.png' "
                              f"or 'KITTI-360/<seq>/image_00/NNNNNN.png' key", path)
        out[parsed] = _point(value, key, path)
    return out


def read_vp_dir(folder: str | Path, sequences: Iterable[str] | None = None) -> VPMap:
    """All ``seq_*.json`` files of ``folder`` (or only those of ``sequences``) merged."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingError("vanishing point folder not found", folder)
    wanted = None if sequences is None else {str(s) for s in sequences}
    out: VPMap = {}
    for path in sorted(folder.iterdir()):
        m = _FILE_NAME.match(path.name)
        if not m or not path.is_file():
            continue
        if wanted is not None and m.group("seq") not in wanted:
            continue
        out.update(read_vp_file(path))
    return out


def vp_dict(points: Mapping[str, tuple[float, float]], sequence: str, decimals: int = 4) -> dict[str, list]:
    """``{frame id: (x, y)}`` of one sequence -> the published JSON object (sorted by frame)."""
    out = {}
    for fid in sorted(points):
        x, y = points[fid]
        out[vp_key(sequence, fid)] = [[round(float(x), decimals), round(float(y), decimals)]]
    return out


def write_vp_file(path: str | Path, sequence: str, points: Mapping[str, tuple[float, float]]) -> None:
    """Atomically write ``{frame id: (x, y)}`` of ``sequence`` as a VPOcc JSON file."""
    write_json(path, vp_dict(points, sequence))


def sequence_points(vps: VPMap, sequence: str) -> dict[str, tuple[float, float]]:
    """``{frame id: (x, y)}`` of one sequence from a ``read_vp_*`` result."""
    return {fid: xy for (seq, fid), xy in vps.items() if seq == sequence}
