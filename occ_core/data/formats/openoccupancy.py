"""OpenOccupancy (nuScenes-Occupancy): classes, grid, ground-truth files and the dataset spec.

::

    NUSCENES_ROOT/                               nuScenes tables and sensor files (nuscenes.NuScenes)
    OCC_ROOT/                                    (nuScenes-Occupancy, e.g. data/nuScenes-Occupancy)
      scene_<scene token>/occupancy/<LIDAR_TOP sample_data token>.npy

Each ``.npy`` holds the occupied voxels of one key frame as integer rows ``[z, y, x, class]`` (or
``[z, y, x, vx, vy, vz, class]`` with velocities; the class is the last column) of a 512 x 512 x 40 grid of
0.2 m over [-51.2, -51.2, -5, 51.2, 51.2, 3] m in the **LiDAR** frame of the sample. Class 0 is *noise* (ignored:
255 in the prepared target), 1..16 the classes below; voxels not listed are empty (class 0 of the prepared
classes). A voxel listed more than once gets the most frequent label (ties: the lowest), as OpenOccupancy's
loader (``nb_process_label``) does. The metric (``openoccupancy``): IoU of occupied vs empty and mIoU over the
16 classes, noise ignored (:mod:`occ_core.metrics.openoccupancy`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occ_core.errors import FormatError, MissingError

NAME = "openoccupancy"
CLASSES: tuple[str, ...] = (
    "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian", "traffic_cone",
    "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain", "manmade", "vegetation",
)
"""Raw ids 1..16 (0 is noise)."""
CLASS_NAMES: tuple[str, ...] = ("empty",) + CLASSES
"""Prepared classes: 0 = empty (not listed), class i = raw id i."""
NOISE = 0
GRID_SHAPE: tuple[int, int, int] = (512, 512, 40)
VOXEL_SIZE: float = 0.2
GRID_ORIGIN: tuple[float, float, float] = (-51.2, -51.2, -5.0)
COLUMNS = "zyx"
"""Order of the voxel index columns in the files."""
CLASS_COLORS_RGB: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (255, 120, 50), (255, 192, 203), (255, 255, 0), (0, 150, 245), (0, 255, 255), (200, 180, 0),
    (255, 0, 0), (255, 240, 150), (135, 60, 0), (160, 32, 240), (255, 0, 255), (139, 137, 137), (75, 0, 75),
    (150, 240, 80), (230, 230, 250), (0, 175, 0),
)


def occ_path(occ_root: str | Path, scene_token: str, lidar_token: str) -> Path:
    return Path(occ_root) / f"scene_{scene_token}" / "occupancy" / f"{lidar_token}.npy"


def _rows(path: Path, widths: tuple[int, ...], mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise MissingError(f"{NAME} ground truth missing", path)
    try:
        a = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise FormatError(f"not a readable .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                          path) from None
    if a.ndim != 2 or a.shape[1] not in widths:
        raise FormatError(f"expected rows of {' or '.join(map(str, widths))} values, got shape {tuple(a.shape)}", path)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise FormatError(f"expected integer voxel indices and classes, got dtype {a.dtype}", path)
    return a


def sparse_to_dense(path: Path, idx: np.ndarray, labels: np.ndarray, shape: tuple[int, int, int],
                    n_classes: int, vote: str) -> np.ndarray:
    """Dense uint8 [X, Y, Z] from voxel indices [N, 3] (x, y, z) and raw labels [N] (0 = noise -> 255, listed
    voxels get their class, others 0). ``vote``: ``"majority"`` (most frequent label of a voxel listed twice,
    ties the lowest; OpenOccupancy) or ``"last"`` (the last row; SurroundOcc's array assignment). Indices outside
    the grid, non-integer values or labels above the classes are one-line errors naming ``path``."""
    if idx.size and (not np.array_equal(idx, np.round(idx)) or not np.array_equal(labels, np.round(labels))):
        raise FormatError("voxel indices and classes must be whole numbers", path)
    idx = idx.astype(np.int64)
    labels = labels.astype(np.int64)
    bad = ~np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise FormatError(f"row {r}: voxel {idx[r].tolist()} (x, y, z) is outside the {shape} grid", path)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        v = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise FormatError(f"class {v} is not a class id 0..{n_classes - 1} (0 = noise)", path)
    lab = np.where(labels == 0, 255, labels).astype(np.int64)
    flat = (idx[:, 0] * shape[1] + idx[:, 1]) * shape[2] + idx[:, 2]
    out = np.zeros(int(np.prod(shape)), np.uint8)
    if vote == "last":
        u, first = np.unique(flat[::-1], return_index=True)  # the last row of each voxel
        out[u] = lab[::-1][first]
    else:
        keys, counts = np.unique(flat * 256 + lab, return_counts=True)
        f, l = keys // 256, keys % 256
        order = np.lexsort((l, -counts, f))  # per voxel: most frequent first, then the lowest label
        f, l = f[order], l[order]
        first = np.r_[True, f[1:] != f[:-1]]
        out[f[first]] = l[first]
    return out.reshape(shape)


def read_occupancy(path: str | Path) -> np.ndarray:
    """The prepared target (uint8 [512, 512, 40]: 0 empty, 1..16, 255 noise) of an OpenOccupancy ``.npy``."""
    path = Path(path)
    a = _rows(path, (4, 7))
    zyx = a[:, :3]
    return sparse_to_dense(path, zyx[:, ::-1], a[:, -1], GRID_SHAPE, len(CLASS_NAMES), "majority")


def check_occupancy(path: str | Path) -> None:
    """Check a file's header (exists, a 2-D array of 4 or 7 columns) without reading its rows."""
    _rows(Path(path), (4, 7), mmap=True)


def class_spec(frequencies=None):
    from occ_core.data.spec import ClassSpec

    n = len(CLASS_NAMES)
    return ClassSpec(CLASS_NAMES, tuple(range(n)), tuple((i, i) for i in range(n)), frequencies,
                     "counted over the prepared training split" if frequencies is not None else "", CLASS_COLORS_RGB)


def grid_spec():
    from occ_core.data.spec import GridSpec

    return GridSpec(GRID_SHAPE, VOXEL_SIZE, GRID_ORIGIN, "lidar")


def dataset_spec(image_sizes: dict[str, tuple[int, int]] | None = None, split_scenes=None, frequencies=None):
    """The OpenOccupancy :class:`~occ_core.data.spec.DatasetSpec`: the 512 x 512 x 40 LiDAR-frame grid, 16 classes
    + empty (noise folded into the targets as 255, mask ``invalid``), the six nuScenes cameras, metric
    ``openoccupancy``. ``to_raw`` / ``from_raw`` are the identity: predictions use 0 for empty."""
    from occ_core.data.formats import occ3d
    from occ_core.data.spec import CameraSpec, DatasetSpec

    sizes = image_sizes or {}
    cams = tuple(CameraSpec(c, tuple(sizes.get(c, occ3d.IMAGE_SIZE)), None) for c in occ3d.CAMERAS)
    return DatasetSpec(NAME, grid_spec(), class_spec(frequencies), cams,
                       {k: list(v) for k, v in (split_scenes or {}).items()}, ("invalid",), scales=(1, 2, 4, 8),
                       metric="openoccupancy")
