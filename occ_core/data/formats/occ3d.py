"""Occ3D-nuScenes: classes, grid, cameras, ground-truth files and the dataset spec.

::

    NUSCENES_ROOT/                          (nuscenes.NuScenes(version, dataroot=NUSCENES_ROOT))
      v1.0-trainval/*.json | v1.0-mini/*.json   the nuScenes tables (read through nuscenes-devkit)
      samples/CAM_FRONT/*.jpg ...           key-frame camera images, samples/LIDAR_TOP/*.pcd.bin
    GTS/                                    (Occ3D-nuScenes ground truth, often NUSCENES_ROOT/gts)
      <scene name>/<sample token>/labels.npz  semantics, mask_lidar, mask_camera: uint8 [200, 200, 16]

The grid is 200 x 200 x 16 voxels of 0.4 m over [-40, -40, -1, 40, 40, 5.4] m in the ego frame of
the sample (the ego pose at the LIDAR_TOP timestamp). Occ3D ids 0..16 are the classes below and 17
is free; prepared classes put free at 0 and Occ3D id ``i`` at ``i + 1`` (the spec's ``to_raw`` /
``from_raw`` give the Occ3D ids back). The metric counts voxels where ``mask_camera`` is set by
default and averages the per-class IoU over ids 0..16 (free excluded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occ_core.errors import FormatError, MissingError

NAME = "occ3d"

OCC3D_CLASSES: tuple[str, ...] = (
    "others", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain", "manmade",
    "vegetation",
)
"""Occ3D-nuScenes ids 0..16 (17 is free)."""
FREE_ID = 17
CLASS_NAMES: tuple[str, ...] = ("free",) + OCC3D_CLASSES
"""Prepared classes: 0 = free, class i = Occ3D id i - 1."""

CLASS_COLORS_RGB: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (0, 0, 0), (255, 120, 50), (255, 192, 203), (255, 255, 0), (0, 150, 245), (0, 255, 255),
    (200, 180, 0), (255, 0, 0), (255, 240, 150), (135, 60, 0), (160, 32, 240), (255, 0, 255), (139, 137, 137),
    (75, 0, 75), (150, 240, 80), (230, 230, 250), (0, 175, 0),
)
"""Colours of the Occ3D visualisation code (free first, black; 'others' black as there)."""

GRID_SHAPE: tuple[int, int, int] = (200, 200, 16)
VOXEL_SIZE: float = 0.4
GRID_ORIGIN: tuple[float, float, float] = (-40.0, -40.0, -1.0)
GT_KEYS: tuple[str, ...] = ("semantics", "mask_lidar", "mask_camera")

CAMERAS: tuple[str, ...] = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                            "CAM_BACK_RIGHT")
"""The six cameras in the order of the batch's camera axis (the order of BEVFormer / Occ3D infos)."""
MOSAIC: tuple[tuple[str, ...], ...] = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
                                       ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
"""How ``occ render`` tiles the six cameras (front row, back row)."""
LIDAR = "LIDAR_TOP"
IMAGE_SIZE: tuple[int, int] = (1600, 900)
"""(width, height) of the real nuScenes camera images."""

VERSIONS: tuple[str, ...] = ("v1.0-trainval", "v1.0-mini")
TABLES: tuple[str, ...] = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
                           "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")
"""The tables ``nuscenes.NuScenes`` loads (every one must exist, the map table non-empty)."""

DISTANCE_EDGES_M: tuple[float, ...] = (0.0, 20.0, 40.0, 57.0)
"""Per-distance bands (horizontal range from the ego origin; the grid's corners are 56.6 m away)."""

_REMAP = np.full(256, 255, np.uint8)
_REMAP[:FREE_ID] = np.arange(1, FREE_ID + 1)
_REMAP[FREE_ID] = 0
REMAP_LUT = _REMAP
"""uint8 [256]: Occ3D id -> prepared class (free 17 -> 0, i -> i + 1, anything else -> 255)."""
_INV = np.zeros(256, np.uint8)
_INV[1:FREE_ID + 1] = np.arange(FREE_ID)
_INV[0] = FREE_ID
INVERSE_LUT = _INV
"""uint8 [256]: prepared class -> Occ3D id."""


def splits(version: str) -> dict[str, list[str]]:
    """train / val scene names of ``version`` from the devkit's official splits (``create_splits_scenes``):
    train 700 / val 150 for v1.0-trainval, mini_train 8 / mini_val 2 for v1.0-mini."""
    from nuscenes.utils.splits import create_splits_scenes

    s = create_splits_scenes(verbose=False)
    if version.endswith("mini"):
        return {"train": list(s["mini_train"]), "val": list(s["mini_val"])}
    return {"train": list(s["train"]), "val": list(s["val"])}


def gt_path(gts: Path, scene: str, token: str) -> Path:
    return Path(gts) / scene / token / "labels.npz"


def read_gt(path: Path) -> dict[str, np.ndarray]:
    """``semantics`` (uint8 Occ3D ids), ``mask_lidar`` and ``mask_camera`` (bool) [200, 200, 16] of a
    labels.npz; a missing file, key, wrong shape or id is a one-line error naming the file."""
    from occ_core.data.prepare.layout import read_npz

    path = Path(path)
    if not path.is_file():
        raise MissingError("Occ3D ground truth missing (expected labels.npz with semantics, mask_lidar, "
                           "mask_camera)", path)
    z = read_npz(path, None, "Occ3D labels.npz", hint="")
    out = {}
    for key in GT_KEYS:
        if key not in z:
            raise FormatError(f"Occ3D labels.npz has no '{key}' (keys: {', '.join(sorted(z)) or 'none'})", path)
        a = z[key]
        if a.shape != GRID_SHAPE:
            raise FormatError(f"'{key}' has shape {tuple(a.shape)}, expected {GRID_SHAPE}", path)
        out[key] = a
    sem = out["semantics"]
    if not np.issubdtype(sem.dtype, np.integer) or (sem.size and (int(sem.min()) < 0 or int(sem.max()) > FREE_ID)):
        raise FormatError(f"'semantics' must hold Occ3D ids 0..{FREE_ID}", path)
    out["semantics"] = sem.astype(np.uint8)
    out["mask_lidar"] = out["mask_lidar"].astype(bool)
    out["mask_camera"] = out["mask_camera"].astype(bool)
    return out


def check_gt(path: Path) -> None:
    """Check a labels.npz without decompressing it (the ``.npy`` headers of its members): it exists, is an
    archive, and has semantics, mask_lidar and mask_camera of shape [200, 200, 16]. One line naming the file."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise MissingError("Occ3D ground truth missing (expected labels.npz with semantics, mask_lidar, "
                           "mask_camera)", path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for key in GT_KEYS:
                if f"{key}.npy" not in names:
                    have = ", ".join(sorted(n[:-4] for n in names if n.endswith(".npy"))) or "none"
                    raise FormatError(f"Occ3D labels.npz has no '{key}' (keys: {have})", path)
                with zf.open(f"{key}.npy") as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, _ = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0(f))
                if tuple(shape) != GRID_SHAPE:
                    raise FormatError(f"'{key}' has shape {tuple(shape)}, expected {GRID_SHAPE}", path)
    except FormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise FormatError(f"not a readable .npz archive ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                          path) from None


def read_points(path: Path) -> np.ndarray:
    """A nuScenes ``.pcd.bin`` sweep: float32 [N, 5] (x, y, z, intensity, ring) in the sensor frame."""
    path = Path(path)
    if not path.is_file():
        raise MissingError("LiDAR sweep not found", path)
    size = path.stat().st_size
    if size % 20:
        raise FormatError(f"wrong file size: {size} bytes is not a multiple of 20 (5 float32 per point)", path)
    return np.fromfile(path, dtype="<f4").reshape(-1, 5)


def write_gt(path: Path, semantics: np.ndarray, mask_lidar: np.ndarray, mask_camera: np.ndarray) -> None:
    """An Occ3D labels.npz (uint8 arrays, compressed, written atomically)."""
    from occ_core.utils.atomic import save_npz

    save_npz(path, semantics=np.asarray(semantics, np.uint8), mask_lidar=np.asarray(mask_lidar, np.uint8),
             mask_camera=np.asarray(mask_camera, np.uint8))


def prediction_path(out: Path, scene: str, token: str) -> Path:
    """``OUT/<scene>/<sample token>/labels.npz``: where ``occ predict`` writes an Occ3D prediction."""
    return Path(out) / scene / token / "labels.npz"


def write_prediction(out: Path, scene: str, token: str, semantics: np.ndarray) -> Path:
    """An Occ3D-style prediction: ``labels.npz`` with ``semantics`` (uint8 Occ3D ids, 17 = free, [200, 200, 16])."""
    from occ_core.utils.atomic import save_npz

    sem = np.asarray(semantics)
    if sem.shape != GRID_SHAPE:
        raise ValueError(f"prediction shape {sem.shape}, expected {GRID_SHAPE}")
    path = prediction_path(out, scene, token)
    save_npz(path, semantics=sem.astype(np.uint8))
    return path


def read_prediction(path: Path) -> np.ndarray:
    """``semantics`` (uint8 Occ3D ids [200, 200, 16]) of a prediction or ground-truth labels.npz."""
    from occ_core.data.prepare.layout import read_npz

    path = Path(path)
    if not path.is_file():
        raise MissingError("prediction missing (expected labels.npz with 'semantics')", path)
    sem = read_npz(path, ["semantics"], "Occ3D labels.npz", hint="")["semantics"]
    if sem.shape != GRID_SHAPE:
        raise FormatError(f"'semantics' has shape {tuple(sem.shape)}, expected {GRID_SHAPE}", path)
    if sem.size and int(sem.max()) > FREE_ID:
        raise FormatError(f"'semantics' must hold Occ3D ids 0..{FREE_ID}", path)
    return sem.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Dataset spec
# --------------------------------------------------------------------------------------------


def class_spec(frequencies=None):
    from occ_core.data.spec import ClassSpec

    to_raw = tuple(int(INVERSE_LUT[i]) for i in range(len(CLASS_NAMES)))
    from_raw = tuple((raw, int(REMAP_LUT[raw])) for raw in range(FREE_ID + 1))
    return ClassSpec(CLASS_NAMES, to_raw, from_raw, frequencies,
                     "counted over the prepared training split" if frequencies is not None else "", CLASS_COLORS_RGB)


def grid_spec():
    from occ_core.data.spec import GridSpec

    return GridSpec(GRID_SHAPE, VOXEL_SIZE, GRID_ORIGIN, "ego")


def dataset_spec(image_sizes: dict[str, tuple[int, int]] | None = None, split_scenes=None, frequencies=None,
                 cameras: tuple[str, ...] = CAMERAS):
    """The Occ3D-nuScenes :class:`~occ_core.data.spec.DatasetSpec`: the 200 x 200 x 16 ego grid, the 17
    classes + free, the six cameras (whole images: ``image_sizes`` camera -> (W, H), default 1600 x 900),
    masks camera and lidar, metric occ3d, radial distance bands."""
    from occ_core.data.spec import CameraSpec, DatasetSpec, DistanceSpec

    sizes = image_sizes or {}
    cams = tuple(CameraSpec(c, tuple(sizes.get(c, IMAGE_SIZE)), None) for c in cameras)
    return DatasetSpec(NAME, grid_spec(), class_spec(frequencies), cams,
                       {k: list(v) for k, v in (split_scenes or {}).items()}, ("camera", "lidar"),
                       DistanceSpec((0.0, 0.0, 0.0), "radial", DISTANCE_EDGES_M), (1, 2, 4, 8), "occ3d")
