"""SurroundOcc (nuScenes): classes, grid, ground-truth files and the dataset spec.

::

    NUSCENES_ROOT/                               nuScenes tables and sensor files (nuscenes.NuScenes)
    OCC_ROOT/                                    (SurroundOcc's nuscenes_occ/samples; its parent is accepted)
      <LIDAR_TOP file name>.npy                  e.g. n008-...__LIDAR_TOP__1533151603547590.pcd.bin.npy

Each ``.npy`` holds the occupied voxels of one key frame as rows ``[x, y, z, class]`` of a 200 x 200 x 16 grid of
0.5 m over [-50, -50, -5, 50, 50, 3] m in the **LiDAR** frame of the sample. Class 0 is ignored (255 in the
prepared target; SurroundOcc's ``LoadOccupancy``), 1..16 the classes below (the OpenOccupancy list), voxels not
listed are empty. A voxel listed twice takes its last row (SurroundOcc's ``gt_to_voxel`` array assignment).
The metric (``openoccupancy``): IoU of occupied vs empty and mIoU over the 16 classes, ignored voxels left out
(SurroundOcc's ``evaluation_semantic``, :mod:`occ_core.metrics.openoccupancy`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occ_core.data.formats import openoccupancy as oo

NAME = "surroundocc"
CLASSES = oo.CLASSES
CLASS_NAMES = oo.CLASS_NAMES
GRID_SHAPE: tuple[int, int, int] = (200, 200, 16)
VOXEL_SIZE: float = 0.5
GRID_ORIGIN: tuple[float, float, float] = (-50.0, -50.0, -5.0)
SAMPLES_DIR = "samples"


def occ_dir(occ_root: str | Path) -> Path:
    """The folder holding the ``.npy`` files: ``OCC_ROOT`` itself, or ``OCC_ROOT/samples``."""
    root = Path(occ_root)
    return root / SAMPLES_DIR if (root / SAMPLES_DIR).is_dir() else root


def occ_path(occ_root: str | Path, lidar_filename: str) -> Path:
    return occ_dir(occ_root) / f"{Path(lidar_filename).name}.npy"


def read_occupancy(path: str | Path) -> np.ndarray:
    """The prepared target (uint8 [200, 200, 16]: 0 empty, 1..16, 255 ignored) of a SurroundOcc ``.npy``."""
    path = Path(path)
    a = oo._rows(path, (4,))
    return oo.sparse_to_dense(path, a[:, :3], a[:, 3], GRID_SHAPE, len(CLASS_NAMES), "last")


def check_occupancy(path: str | Path) -> None:
    oo._rows(Path(path), (4,), mmap=True)


def grid_spec():
    from occ_core.data.spec import GridSpec

    return GridSpec(GRID_SHAPE, VOXEL_SIZE, GRID_ORIGIN, "lidar")


def dataset_spec(image_sizes: dict[str, tuple[int, int]] | None = None, split_scenes=None, frequencies=None):
    """The SurroundOcc :class:`~occ_core.data.spec.DatasetSpec`: the 200 x 200 x 16 LiDAR-frame grid at 0.5 m, the
    OpenOccupancy classes, the six nuScenes cameras, metric ``openoccupancy``."""
    from dataclasses import replace

    spec = oo.dataset_spec(image_sizes, split_scenes, frequencies)
    return replace(spec, name=NAME, grid=grid_spec())
