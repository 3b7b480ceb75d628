"""Exact SemanticKITTI (SSC) file formats.

Layout of one sequence (``dataset/sequences/XX/``)::

    calib.txt            P0..P3 (3x4 camera projections), Tr (velodyne -> cam0)
    poses.txt            one 3x4 cam0 pose per scan (row-major, 12 numbers a line)
    times.txt            one timestamp per scan
    image_2/NNNNNN.png   left colour camera;  image_3/ the right one
    velodyne/NNNNNN.bin  float32 x, y, z, reflectance
    labels/NNNNNN.label  uint32 per point: lower 16 bits semantic id, upper 16 instance id
    voxels/NNNNNN.bin        bit-packed 256x256x32 input occupancy (the voxelized single scan)
    voxels/NNNNNN.label      uint16 raw ids of the completed target
    voxels/NNNNNN.invalid    bit-packed: target voxels never observed
    voxels/NNNNNN.occluded   bit-packed: voxels hidden from the scanner

Bit-packed grids are unpacked most significant bit first; all grids reshape to [256, 256, 32] in
x, y, z order. Every reader checks the file size and raises :class:`~occ_core.errors.FormatError`
naming the file when it is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occ_core.errors import FormatError, MissingError
from occ_core.utils.atomic import write_bytes

# --------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------

GRID_SHAPE: tuple[int, int, int] = (256, 256, 32)
"""Voxel grid shape in x (forward), y (left), z (up) order."""

VOXEL_SIZE: float = 0.2
"""Voxel edge length in metres."""

GRID_ORIGIN: tuple[float, float, float] = (0.0, -25.6, -2.0)
"""Corner of voxel (0, 0, 0) in the velodyne frame, metres."""

N_VOXELS = GRID_SHAPE[0] * GRID_SHAPE[1] * GRID_SHAPE[2]
PACKED_BYTES = N_VOXELS // 8  # 262,144
LABEL_BYTES = N_VOXELS * 2  # 4,194,304

IGNORE = 255
"""Label of voxels the metric ignores (never observed, or a raw class outside the benchmark)."""

# --------------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------------

CLASS_NAMES: tuple[str, ...] = (
    "empty",
    "car",
    "bicycle",
    "motorcycle",
    "truck",
    "other-vehicle",
    "person",
    "bicyclist",
    "motorcyclist",
    "road",
    "parking",
    "sidewalk",
    "other-ground",
    "building",
    "fence",
    "vegetation",
    "trunk",
    "terrain",
    "pole",
    "traffic-sign",
)
"""The 20 SSC classes: 0 is empty, 1..19 the semantic classes of the benchmark."""

N_CLASSES = len(CLASS_NAMES)

RAW_NAMES: dict[int, str] = {
    0: "unlabeled", 1: "outlier", 10: "car", 11: "bicycle", 13: "bus", 15: "motorcycle",
    16: "on-rails", 18: "truck", 20: "other-vehicle", 30: "person", 31: "bicyclist",
    32: "motorcyclist", 40: "road", 44: "parking", 48: "sidewalk", 49: "other-ground",
    50: "building", 51: "fence", 52: "other-structure", 60: "lane-marking", 70: "vegetation",
    71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign", 99: "other-object",
    252: "moving-car", 253: "moving-bicyclist", 254: "moving-person", 255: "moving-motorcyclist",
    256: "moving-on-rails", 257: "moving-bus", 258: "moving-truck", 259: "moving-other-vehicle",
}
"""Raw SemanticKITTI ids (``semantic-kitti.yaml``)."""

LEARNING_MAP: dict[int, int] = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8,
    40: 9, 44: 10, 48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17,
    80: 18, 81: 19, 99: 0, 252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}
"""Raw id -> class index, the benchmark's ``learning_map``."""

LEARNING_MAP_INV: dict[int, int] = {
    0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48,
    12: 49, 13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
}
"""Class index -> raw id, the benchmark's ``learning_map_inv`` (used to write submissions)."""

# SemanticKITTI colour palette (BGR in semantic-kitti.yaml; stored here as RGB) per class index.
CLASS_COLORS_RGB: np.ndarray = np.array(
    [
        [0, 0, 0], [100, 150, 245], [100, 230, 245], [30, 60, 150], [80, 30, 180],
        [0, 0, 255], [255, 30, 30], [255, 40, 200], [150, 30, 90], [255, 0, 255],
        [255, 150, 255], [75, 0, 75], [175, 0, 75], [255, 200, 0], [255, 120, 50],
        [0, 175, 0], [135, 60, 0], [150, 240, 80], [255, 240, 150], [255, 0, 0],
    ],
    dtype=np.uint8,
)


def _build_remap_lut() -> np.ndarray:
    """uint8 lookup table over all 65,536 uint16 raw ids.

    Raw 0 maps to 0 (empty). A raw id that the learning map sends to 0 (outlier, other-structure,
    other-object) or that the map does not know becomes 255 (ignored).
    """
    lut = np.full(1 << 16, IGNORE, dtype=np.uint8)
    for raw, cls in LEARNING_MAP.items():
        lut[raw] = cls if cls != 0 else IGNORE
    lut[0] = 0
    return lut


REMAP_LUT: np.ndarray = _build_remap_lut()


def _build_inverse_lut() -> np.ndarray:
    """uint16 lookup table over uint8 class indices; 255 (ignore) is written as raw 0."""
    lut = np.zeros(256, dtype=np.uint16)
    for cls, raw in LEARNING_MAP_INV.items():
        lut[cls] = raw
    return lut


INVERSE_LUT: np.ndarray = _build_inverse_lut()


def remap_labels(raw: np.ndarray, invalid: np.ndarray | None = None) -> np.ndarray:
    """Raw SemanticKITTI ids (any integer array, upper 16 bits ignored) to class indices (uint8).

    Voxels where ``invalid`` is true become 255.
    """
    raw = np.asarray(raw)
    out = REMAP_LUT[(raw & 0xFFFF).astype(np.intp, copy=False)]
    if invalid is not None:
        out = out.copy() if out.base is not None else out
        out[np.asarray(invalid, dtype=bool)] = IGNORE
    return out


def inverse_remap(classes: np.ndarray) -> np.ndarray:
    """Class indices 0..19 to raw SemanticKITTI ids (uint16), for submissions.

    Raises ``ValueError`` on a value outside 0..19 or 255.
    """
    classes = np.asarray(classes)
    if classes.size:
        bad = (classes > 19) & (classes != IGNORE) | (classes < 0)
        if np.any(bad):
            raise ValueError(f"class index {int(classes[bad].flat[0])} outside 0..19")
    return INVERSE_LUT[classes.astype(np.intp, copy=False)]


# --------------------------------------------------------------------------------------------
# Voxel files
# --------------------------------------------------------------------------------------------


def _check_size(path: Path, expected: int) -> None:
    if not path.is_file():
        raise MissingError("file not found", path)
    size = path.stat().st_size
    if size != expected:
        raise FormatError(f"wrong file size: {size} bytes, expected {expected}", path)


def unpack_bits(packed: np.ndarray, shape: tuple[int, ...] = GRID_SHAPE) -> np.ndarray:
    """Unpack a bit-packed uint8 array (most significant bit first) to a bool grid."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8)).reshape(shape).astype(bool)


def pack_bits(grid: np.ndarray) -> np.ndarray:
    """Pack a bool grid (x, y, z order) to uint8, most significant bit first."""
    return np.packbits(np.asarray(grid, dtype=bool).reshape(-1))


def read_voxel_bits(path: str | Path, shape: tuple[int, ...] = GRID_SHAPE) -> np.ndarray:
    """Read a bit-packed ``.bin``, ``.invalid`` or ``.occluded`` grid as bool [256, 256, 32]."""
    path = Path(path)
    _check_size(path, int(np.prod(shape)) // 8)
    return unpack_bits(np.fromfile(path, dtype=np.uint8), shape)


def write_voxel_bits(path: str | Path, grid: np.ndarray) -> None:
    """Atomically write a bool grid as a bit-packed file."""
    grid = np.asarray(grid)
    if grid.shape != GRID_SHAPE:
        raise ValueError(f"grid shape {grid.shape}, expected {GRID_SHAPE}")
    write_bytes(path, pack_bits(grid).tobytes())


def read_voxel_label(path: str | Path, shape: tuple[int, ...] = GRID_SHAPE) -> np.ndarray:
    """Read a ``.label`` voxel file: uint16 raw ids, [256, 256, 32]."""
    path = Path(path)
    _check_size(path, int(np.prod(shape)) * 2)
    return np.fromfile(path, dtype="<u2").reshape(shape)


def write_voxel_label(path: str | Path, raw: np.ndarray) -> None:
    """Atomically write uint16 raw ids [256, 256, 32] as a ``.label`` voxel file."""
    raw = np.asarray(raw)
    if raw.shape != GRID_SHAPE:
        raise ValueError(f"label shape {raw.shape}, expected {GRID_SHAPE}")
    write_bytes(path, raw.astype("<u2").tobytes())


def read_target(label_path: str | Path, invalid_path: str | Path | None = None) -> np.ndarray:
    """Read a voxel target as class indices (uint8 [256, 256, 32]; 255 = ignored)."""
    raw = read_voxel_label(label_path)
    invalid = None if invalid_path is None else read_voxel_bits(invalid_path)
    return remap_labels(raw, invalid)


# --------------------------------------------------------------------------------------------
# Calibration, poses, times
# --------------------------------------------------------------------------------------------

CALIB_KEYS = ("P0", "P1", "P2", "P3", "Tr")


def read_calib(path: str | Path, keys: tuple[str, ...] = CALIB_KEYS) -> dict[str, np.ndarray]:
    """Read a KITTI odometry ``calib.txt``: each key maps to a 3x4 float64 matrix.

    Raises :class:`FormatError` naming the file on a malformed line or a missing key.
    """
    from occ_core.utils.io import read_lines

    path = Path(path)
    if not path.is_file():
        raise MissingError("calibration file not found", path)
    out: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(read_lines(path, "KITTI calib.txt"), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise FormatError(f"line {lineno}: expected 'KEY: 12 numbers'", path)
        key, value = line.split(":", 1)
        try:
            numbers = np.array([float(v) for v in value.split()], dtype=np.float64)
        except ValueError:
            raise FormatError(f"line {lineno} ({key.strip()}): not a list of numbers", path) from None
        if numbers.size != 12:
            raise FormatError(f"line {lineno} ({key.strip()}): {numbers.size} numbers, expected 12", path)
        out[key.strip()] = numbers.reshape(3, 4)
    for key in keys:
        if key not in out:
            raise FormatError(f"missing calibration key '{key}'", path)
    return out


def to_homogeneous(m34: np.ndarray) -> np.ndarray:
    """A 3x4 matrix extended to 4x4 with a last row (0, 0, 0, 1)."""
    m = np.eye(4, dtype=np.float64)
    m[:3, :4] = m34
    return m


def write_calib(path: str | Path, calib: dict[str, np.ndarray]) -> None:
    """Atomically write a ``calib.txt`` in the KITTI format (keys in the given order)."""
    lines = []
    for key, m in calib.items():
        m = np.asarray(m, dtype=np.float64)[:3, :4]
        lines.append(f"{key}: " + " ".join(f"{v:.12e}" for v in m.reshape(-1)))
    from occ_core.utils.atomic import write_text

    write_text(path, "\n".join(lines) + "\n")


def read_poses(path: str | Path) -> np.ndarray:
    """Read ``poses.txt``: [N, 4, 4] float64 cam0-to-world poses."""
    path = Path(path)
    if not path.is_file():
        raise MissingError("poses file not found", path)
    from occ_core.utils.io import read_lines

    rows = []
    for lineno, line in enumerate(read_lines(path, "poses file (12 numbers a line)"), 1):
        if not line.strip():
            continue
        try:
            numbers = [float(v) for v in line.split()]
        except ValueError:
            raise FormatError(f"line {lineno}: not a list of numbers", path) from None
        if len(numbers) != 12:
            raise FormatError(f"line {lineno}: {len(numbers)} numbers, expected 12", path)
        rows.append(numbers)
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    if rows:
        poses[:, :3, :4] = np.asarray(rows, dtype=np.float64).reshape(-1, 3, 4)
    return poses


def write_poses(path: str | Path, poses: np.ndarray) -> None:
    """Atomically write [N, 4, 4] (or [N, 3, 4]) poses as ``poses.txt``."""
    from occ_core.utils.atomic import write_text

    poses = np.asarray(poses, dtype=np.float64)[:, :3, :4].reshape(-1, 12)
    write_text(path, "".join(" ".join(f"{v:.9e}" for v in row) + "\n" for row in poses))


def read_times(path: str | Path) -> np.ndarray:
    """Read ``times.txt``: [N] float64 seconds."""
    path = Path(path)
    if not path.is_file():
        raise MissingError("times file not found", path)
    from occ_core.utils.io import read_lines

    values = []
    for lineno, line in enumerate(read_lines(path, "times file (one number a line)"), 1):
        if not line.strip():
            continue
        try:
            values.append(float(line))
        except ValueError:
            raise FormatError(f"line {lineno}: not a number", path) from None
    return np.asarray(values, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Scans
# --------------------------------------------------------------------------------------------


def read_scan(path: str | Path) -> np.ndarray:
    """Read a velodyne ``.bin``: [N, 4] float32 x, y, z, reflectance."""
    path = Path(path)
    if not path.is_file():
        raise MissingError("scan not found", path)
    size = path.stat().st_size
    if size % 16:
        raise FormatError(f"wrong file size: {size} bytes is not a multiple of 16 (4 float32 per point)", path)
    return np.fromfile(path, dtype="<f4").reshape(-1, 4)


def write_scan(path: str | Path, points: np.ndarray) -> None:
    """Atomically write [N, 4] float32 points as a velodyne ``.bin``."""
    points = np.asarray(points, dtype="<f4")
    if points.ndim != 2 or points.shape[1] != 4:
        raise ValueError(f"points shape {points.shape}, expected [N, 4]")
    write_bytes(path, points.tobytes())


def read_point_labels(path: str | Path, n_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``labels/NNNNNN.label``: (semantic raw id uint16 [N], instance id uint16 [N])."""
    path = Path(path)
    if not path.is_file():
        raise MissingError("point labels not found", path)
    size = path.stat().st_size
    if size % 4 or (n_points is not None and size != 4 * n_points):
        expected = "a multiple of 4" if n_points is None else f"{4 * n_points} for {n_points} points"
        raise FormatError(f"wrong file size: {size} bytes, expected {expected}", path)
    data = np.fromfile(path, dtype="<u4")
    return (data & 0xFFFF).astype(np.uint16), (data >> 16).astype(np.uint16)


def write_point_labels(path: str | Path, semantic: np.ndarray, instance: np.ndarray | None = None) -> None:
    """Atomically write per-point labels (semantic raw ids, optional instance ids)."""
    semantic = np.asarray(semantic, dtype=np.uint32) & 0xFFFF
    if instance is not None:
        semantic = semantic | (np.asarray(instance, dtype=np.uint32) << 16)
    write_bytes(path, semantic.astype("<u4").tobytes())


# --------------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------------


def find_sequences_dir(root: str | Path) -> Path:
    """The ``sequences`` folder for a root given as ``ROOT``, ``ROOT/dataset`` or ``.../sequences``."""
    root = Path(root)
    if not root.is_dir():
        raise MissingError("folder not found", root)
    for candidate in (root / "dataset" / "sequences", root / "sequences", root):
        if candidate.name == "sequences" and candidate.is_dir():
            return candidate
    raise MissingError("no 'dataset/sequences', 'sequences' folder found (expected ROOT/dataset/sequences/XX/)", root)


def list_ids(folder: Path, suffix: str) -> list[str]:
    """Sorted frame ids (six-digit stems) of the files ending in ``suffix`` in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# Dataset spec (everything the rest of the code may know about SemanticKITTI)
# --------------------------------------------------------------------------------------------

IMAGE_SIZE: tuple[int, int] = (1220, 370)
"""(width, height) of the benchmark loaders' crop of the KITTI images (``img[:370, :1220]``)."""

CAMERA = "image_2"
"""The camera the SSC benchmark uses (left colour camera)."""

SPLITS: dict[str, list[str]] = {
    "train": ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"],
    "val": ["08"],
    "test": [f"{i:02d}" for i in range(11, 22)],
}
"""The official SSC splits (sequences)."""

DISTANCE_EDGES_M: tuple[float, ...] = (0.0, 17.1, 34.2, 51.2)
"""Edges (metres) of the per-distance bands along the grid's forward x axis, from the LiDAR."""

CLASS_FREQUENCIES: tuple[float, ...] = (
    5.41773033e09,  # 0 empty
    1.57835390e07,  # 1 car
    1.25136000e05,  # 2 bicycle
    1.18809000e05,  # 3 motorcycle
    6.46799000e05,  # 4 truck
    8.21951000e05,  # 5 other-vehicle
    2.62978000e05,  # 6 person
    2.83696000e05,  # 7 bicyclist
    2.04750000e05,  # 8 motorcyclist
    6.16887030e07,  # 9 road
    4.50296100e06,  # 10 parking
    4.48836500e07,  # 11 sidewalk
    2.26992300e06,  # 12 other-ground
    5.68402180e07,  # 13 building
    1.57196520e07,  # 14 fence
    1.58442623e08,  # 15 vegetation
    2.06162300e06,  # 16 trunk
    3.69705220e07,  # 17 terrain
    1.15198800e06,  # 18 pole
    3.34146000e05,  # 19 traffic-sign
)
"""Voxel counts per class over the SemanticKITTI training targets at 1:1, as published in MonoScene's
``monoscene/data/semantic_kitti/params.py`` (``semantic_kitti_class_frequencies``) and reused
unchanged by VoxFormer, Symphonies and VPOcc: the class weights every published method trains with."""

FREQUENCIES_SOURCE = "published (MonoScene semantic_kitti_class_frequencies)"


def class_spec():
    """The 20 SSC classes as a :class:`~occ_core.data.spec.ClassSpec`."""
    from occ_core.data.spec import ClassSpec

    from_raw = [(raw, int(REMAP_LUT[raw])) for raw in sorted(LEARNING_MAP)]
    return ClassSpec(CLASS_NAMES, tuple(LEARNING_MAP_INV[i] for i in range(N_CLASSES)), tuple(from_raw),
                     CLASS_FREQUENCIES, FREQUENCIES_SOURCE, tuple(tuple(int(v) for v in c) for c in CLASS_COLORS_RGB))


def grid_spec():
    """The 256 x 256 x 32 grid of 0.2 m voxels in the velodyne frame."""
    from occ_core.data.spec import GridSpec

    return GridSpec(GRID_SHAPE, VOXEL_SIZE, GRID_ORIGIN, "velodyne")


def camera_spec(name: str = CAMERA, image_size: tuple[int, int] = IMAGE_SIZE):
    """A KITTI-layout camera cropped to the benchmark size from the top-left corner."""
    from occ_core.data.spec import CameraSpec

    return CameraSpec(name, image_size, (0, 0, image_size[0], image_size[1]))


def dataset_spec(cameras: tuple[str, ...] = (CAMERA,)):
    """The SemanticKITTI :class:`~occ_core.data.spec.DatasetSpec` (extra cameras of the synthetic
    data, ``image_4`` ..., have the benchmark crop too)."""
    from occ_core.data.spec import DatasetSpec, DistanceSpec

    return DatasetSpec("semantickitti", grid_spec(), class_spec(), tuple(camera_spec(c) for c in cameras),
                       {k: list(v) for k, v in SPLITS.items()}, ("invalid", "fov"),
                       DistanceSpec((0.0, 0.0, 0.0), "x", DISTANCE_EDGES_M), (1, 2, 4, 8))
