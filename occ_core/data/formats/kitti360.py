"""SSCBench-KITTI360: layout, classes and calibration.

::

    ROOT/                                  (the folder holding data_2d_raw; ROOT/KITTI-360 is accepted too)
      data_2d_raw/2013_05_28_drive_00XX_sync/
        image_00/data_rect/NNNNNN.png      left camera (376 x 1408)
        image_01/data_rect/NNNNNN.png      right camera
        voxels/NNNNNN.{bin,label,invalid}  same 256x256x32 grid and bit packing as SemanticKITTI
      data_3d_raw/2013_05_28_drive_00XX_sync/velodyne_points/data/NNNNNNNNNN.bin   (optional scans)
      calibration/calib_cam_to_velo.txt, perspective.txt                           (optional)

Voxel ``.label`` files hold raw (SemanticKITTI-style) ids remapped with SSCBench's own learning
map to 19 classes (0 = empty). As in SSCBench's preprocessing, a voxel with a non-zero raw label is
never invalid. Where the calibration folder is absent the loaders' fixed calibration is used
(fx = fy = 552.554261, cx = 682.049453, cy = 238.769549 and SSCBench's cam-to-velo matrix).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occ_core.data.formats.semantickitti import IGNORE
from occ_core.errors import FormatError, MissingError

CLASS_NAMES: tuple[str, ...] = (
    "empty", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "road",
    "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "terrain",
    "pole", "traffic-sign", "other-structure", "other-object",
)

LEARNING_MAP: dict[int, int] = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 0, 32: 0,
    40: 7, 44: 8, 48: 9, 49: 10, 50: 11, 51: 12, 52: 17, 60: 7, 70: 13, 71: 0, 72: 14,
    80: 15, 81: 16, 99: 18, 252: 1, 253: 0, 254: 6, 255: 0, 256: 5, 257: 5, 258: 4, 259: 5,
}
"""SSCBench ``kitti360.yaml`` learning map (raw id -> class index)."""

LEARNING_MAP_INV: dict[int, int] = {
    0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 40, 8: 44, 9: 48, 10: 49, 11: 50,
    12: 51, 13: 70, 14: 72, 15: 80, 16: 81, 17: 52, 18: 99,
}

IMAGE_SIZE: tuple[int, int] = (1408, 376)
"""(width, height) the loaders crop images to."""

DEFAULT_K = np.array([[552.554261, 0.0, 682.049453], [0.0, 552.554261, 238.769549], [0.0, 0.0, 1.0]])
DEFAULT_CAM_TO_VELO = np.array(
    [
        [0.04307104361, -0.08829286498, 0.995162929, 0.8043914418],
        [-0.999004371, 0.007784614041, 0.04392796942, 0.2993489574],
        [-0.01162548558, -0.9960641394, -0.08786966659, -0.1770225824],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _build_remap_lut() -> np.ndarray:
    lut = np.full(1 << 16, IGNORE, dtype=np.uint8)
    for raw, cls in LEARNING_MAP.items():
        lut[raw] = cls if cls != 0 else IGNORE
    lut[0] = 0
    return lut


REMAP_LUT = _build_remap_lut()


def sequence_folder(seq: str) -> str:
    """``"06"`` -> ``"2013_05_28_drive_0006_sync"``."""
    return f"2013_05_28_drive_{int(seq):04d}_sync"


def sequence_name(folder: str) -> str | None:
    """``"2013_05_28_drive_0006_sync"`` -> ``"06"`` (None for other names)."""
    parts = folder.split("_")
    if len(parts) == 6 and folder.startswith("2013_05_28_drive_") and folder.endswith("_sync") and parts[4].isdigit():
        return f"{int(parts[4]):02d}"
    return None


def find_root(root: str | Path) -> Path:
    """The folder holding ``data_2d_raw`` for a root given as itself, its parent or ``KITTI-360``'s parent."""
    root = Path(root)
    if not root.is_dir():
        raise MissingError("folder not found", root)
    for candidate in (root, root / "KITTI-360", root.parent):
        if (candidate / "data_2d_raw").is_dir():
            return candidate
    raise MissingError("no 'data_2d_raw' folder found (expected ROOT/data_2d_raw/2013_05_28_drive_00XX_sync/)", root)


def _read_numbers(path: Path, key: str | None, count: int) -> np.ndarray:
    from occ_core.utils.io import read_lines

    for lineno, line in enumerate(read_lines(path, "KITTI-360 calibration file"), 1):
        if not line.strip():
            continue
        if key is not None:
            if not line.startswith(key + ":"):
                continue
            line = line.split(":", 1)[1]
        try:
            values = np.array([float(v) for v in line.split()])
        except ValueError:
            raise FormatError(f"line {lineno}: not a list of numbers", path) from None
        if values.size != count:
            raise FormatError(f"line {lineno}: {values.size} numbers, expected {count}", path)
        return values
    raise FormatError(f"missing calibration key '{key}'" if key else "empty calibration file", path)


def read_calibration(root: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(Tr velodyne -> camera 4x4, K 3x3, where it came from)."""
    calib = root / "calibration"
    c2v_path, persp_path = calib / "calib_cam_to_velo.txt", calib / "perspective.txt"
    if c2v_path.is_file() and persp_path.is_file():
        c2v = np.eye(4)
        c2v[:3, :4] = _read_numbers(c2v_path, None, 12).reshape(3, 4)
        P = _read_numbers(persp_path, "P_rect_00", 12).reshape(3, 4)
        return np.linalg.inv(c2v), P[:3, :3].copy(), "calibration/"
    return np.linalg.inv(DEFAULT_CAM_TO_VELO), DEFAULT_K.copy(), "SSCBench loader constants"


def read_right_projection(root: Path) -> np.ndarray | None:
    """P_rect_01 (3x4, the right camera) from ``calibration/perspective.txt``, or None when absent."""
    path = root / "calibration" / "perspective.txt"
    if not path.is_file():
        return None
    return _read_numbers(path, "P_rect_01", 12).reshape(3, 4)


# --------------------------------------------------------------------------------------------
# Dataset spec
# --------------------------------------------------------------------------------------------

SPLITS: dict[str, list[str]] = {
    "train": ["00", "02", "03", "04", "05", "07", "10"],
    "val": ["06"],
    "test": ["09"],
}
"""SSCBench-KITTI360 splits (sequences)."""


def dataset_spec(frequencies=None):
    """The SSCBench-KITTI360 :class:`~occ_core.data.spec.DatasetSpec`: the SemanticKITTI grid and
    camera conventions (image_00 as ``image_2``, cropped to 1408 x 376), its 19 classes; class
    ``frequencies`` are counted over the prepared training split (SSCBench publishes none)."""
    import dataclasses

    from occ_core.data.formats import semantickitti as sk
    from occ_core.data.spec import ClassSpec

    from_raw = [(raw, int(REMAP_LUT[raw])) for raw in sorted(LEARNING_MAP)]
    classes = ClassSpec(CLASS_NAMES, tuple(LEARNING_MAP_INV[i] for i in range(len(CLASS_NAMES))), tuple(from_raw),
                        frequencies, "counted over the prepared training split" if frequencies is not None else "")
    base = sk.dataset_spec()
    return dataclasses.replace(base, name="kitti360", classes=classes, cameras=(sk.camera_spec(sk.CAMERA, IMAGE_SIZE),),
                               splits={k: list(v) for k, v in SPLITS.items()})
