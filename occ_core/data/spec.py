"""The dataset spec: everything the rest of the code may know about a dataset.

``occ prepare`` writes it into the prepared folder's ``manifest.json`` (key ``"spec"``); training,
models, losses, metrics, rendering and export read it from there (:attr:`PreparedDataset.spec
<occ_core.data.prepare.layout.PreparedDataset.spec>`) and nothing else. Dataset constants (grids, class
lists, cameras, splits) live only in the dataset modules (:mod:`occ_core.data.formats.semantickitti`,
:mod:`occ_core.data.formats.kitti360`) and the synthetic generator; each of those builds its spec here.

The spec is plain data (``to_json`` / ``from_json``) so it is stored in a manifest and a run's
checkpoint metadata, never as pickled classes.

Conventions:

* **grid**: ``shape`` ``(X, Y, Z)`` voxels of ``voxel_size`` metres per axis; ``origin`` the minimum
  corner of voxel ``(0, 0, 0)`` in ``frame`` (``velodyne`` for the KITTI family, ``ego`` for Occ3D,
  ``lidar`` for SurroundOcc / OpenOccupancy). Flat index ``x * Y * Z + y * Z + z``. The grid at
  scale ``S`` has ``shape // S`` voxels of ``voxel_size * S``.
* **classes**: index 0 is empty after the remapping done at prepare time, 255 is ignored;
  ``to_raw[i]`` is the dataset's own id of class ``i`` (submission files), ``from_raw`` the
  inverse (raw id -> class, unknown raw ids -> 255). ``frequencies`` are the voxel counts per class
  from which the cross-entropy class weights are derived.
* **cameras**: in the order of the batch's camera axis; ``image_size`` is the (width, height) of
  the benchmark crop ``crop = (x0, y0, width, height)`` of the raw image.
* **masks**: the evaluation masks a frame carries: ``invalid`` (folded into the targets as 255 at
  prepare time), ``fov`` (voxel centre in view of a camera, from the calibration), ``camera`` /
  ``lidar`` (visibility masks stored with the frame, Occ3D).
* **distance**: per-distance bands of the metric, measured from ``origin`` (the sensor, in the grid
  frame) along ``axis`` (``"x"``: forward distance, KITTI; ``"radial"``: horizontal range).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from occ_core.errors import FormatError

IGNORE = 255
"""Target value of voxels the losses and metrics ignore."""

GRID_FRAMES = ("velodyne", "ego", "lidar")
DISTANCE_AXES = ("x", "radial")
MASKS = ("invalid", "fov", "camera", "lidar")
METRICS = ("ssc", "occ3d", "openoccupancy")
"""Benchmark metric families: ssc (SemanticKITTI / KITTI-360 SSC: IoU over occupied vs empty, mIoU over
the classes, invalid voxels ignored), occ3d (Occ3D-nuScenes: mIoU over the non-free classes with the
camera mask, RayIoU), openoccupancy (OpenOccupancy / SurroundOcc: IoU and mIoU, noise ignored)."""


@dataclass(frozen=True)
class GridSpec:
    """A voxel grid in a sensor frame."""

    shape: tuple[int, int, int]
    """Voxels along x, y, z at full resolution."""
    voxel_size: tuple[float, float, float]
    """Voxel edge lengths (metres) along x, y, z."""
    origin: tuple[float, float, float]
    """Minimum corner of voxel (0, 0, 0) in ``frame`` (metres)."""
    frame: str = "velodyne"
    """Frame the grid is in: velodyne, ego or lidar."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        vs = self.voxel_size
        vs = (float(vs),) * 3 if isinstance(vs, (int, float)) else tuple(float(v) for v in vs)
        object.__setattr__(self, "voxel_size", vs)
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        if len(self.shape) != 3 or len(self.voxel_size) != 3 or len(self.origin) != 3:
            raise ValueError("grid shape, voxel_size and origin need three values each")
        if self.frame not in GRID_FRAMES:
            raise ValueError(f"grid frame must be one of {', '.join(GRID_FRAMES)} (got {self.frame!r})")

    @property
    def size(self) -> tuple[float, float, float]:
        """Extent (metres) along x, y, z."""
        return tuple(n * v for n, v in zip(self.shape, self.voxel_size))  # type: ignore[return-value]

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    def scaled(self, scale: int) -> "GridSpec":
        """The grid at 1:``scale`` (same extent, ``scale`` times larger voxels)."""
        if any(s % scale for s in self.shape):
            raise ValueError(f"grid {self.shape} is not divisible by {scale}")
        return GridSpec(tuple(s // scale for s in self.shape), tuple(v * scale for v in self.voxel_size),
                        self.origin, self.frame)

    def divisor(self, shape: Sequence[int]) -> int:
        """The integer ``S`` with ``shape == self.shape // S`` (ValueError when there is none)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or shape[0] <= 0 or self.shape[0] % shape[0]:
            raise ValueError(f"grid {shape} is not the dataset grid {self.shape} divided by an integer")
        s = self.shape[0] // shape[0]
        if tuple(n // s for n in self.shape) != shape or any(n % s for n in self.shape):
            raise ValueError(f"grid {shape} is not the dataset grid {self.shape} divided by an integer")
        return s

    def centres(self, scale: int = 1) -> np.ndarray:
        """Voxel centres at 1:``scale`` in the grid frame, [X*Y*Z, 3] float64, C order."""
        g = self.scaled(scale)
        axes = [g.origin[i] + (np.arange(g.shape[i]) + 0.5) * g.voxel_size[i] for i in range(3)]
        xx, yy, zz = np.meshgrid(*axes, indexing="ij")
        return np.stack([xx.reshape(-1), yy.reshape(-1), zz.reshape(-1)], axis=1)

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "voxel_size": list(self.voxel_size), "origin": list(self.origin),
                "frame": self.frame}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "GridSpec":
        return GridSpec(tuple(d["shape"]), tuple(d["voxel_size"]) if isinstance(d["voxel_size"], list)
                        else d["voxel_size"], tuple(d["origin"]), str(d.get("frame", "velodyne")))


@dataclass(frozen=True)
class ClassSpec:
    """The prepared classes (0 = empty, 255 = ignore) and their raw ids."""

    names: tuple[str, ...]
    """Class names; index 0 is empty."""
    to_raw: tuple[int, ...]
    """Raw dataset id of each class (``learning_map_inv``)."""
    from_raw: tuple[tuple[int, int], ...]
    """(raw id, class) pairs (``learning_map`` after the 0 -> ignore rules); unknown raw ids -> 255."""
    frequencies: tuple[float, ...] | None = None
    """Voxel counts per class that the cross-entropy class weights are derived from (None: all ones)."""
    frequencies_source: str = ""
    """Where ``frequencies`` come from (a publication, or 'counted over the prepared training split')."""
    colors: tuple[tuple[int, int, int], ...] | None = None
    """RGB colour per class for pictures (None: a generated palette)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "to_raw", tuple(int(r) for r in self.to_raw))
        object.__setattr__(self, "from_raw", tuple((int(a), int(b)) for a, b in self.from_raw))
        if self.frequencies is not None:
            object.__setattr__(self, "frequencies", tuple(float(f) for f in self.frequencies))
        if self.colors is not None:
            object.__setattr__(self, "colors", tuple(tuple(int(c) for c in rgb) for rgb in self.colors))
        n = len(self.names)
        if not 2 <= n < IGNORE:
            raise ValueError(f"need 2..254 classes (got {n})")
        if len(self.to_raw) != n:
            raise ValueError(f"to_raw has {len(self.to_raw)} entries for {n} classes")
        if self.frequencies is not None and len(self.frequencies) != n:
            raise ValueError(f"{len(self.frequencies)} class frequencies for {n} classes")
        if self.colors is not None and len(self.colors) != n:
            raise ValueError(f"{len(self.colors)} class colours for {n} classes")

    @property
    def n(self) -> int:
        return len(self.names)

    def remap_lut(self, size: int = 1 << 16) -> np.ndarray:
        """uint8 [size]: raw id -> class (255 for unknown raw ids)."""
        lut = np.full(size, IGNORE, np.uint8)
        for raw, cls in self.from_raw:
            if 0 <= raw < size:
                lut[raw] = cls
        return lut

    def inverse_lut(self) -> np.ndarray:
        """uint32 [256]: class -> raw id (0 for values that are not classes)."""
        lut = np.zeros(256, np.uint32)
        lut[: self.n] = self.to_raw
        return lut

    def palette(self) -> np.ndarray:
        """uint8 [n, 3] RGB colours (the dataset's, else evenly spaced hues; empty is black)."""
        if self.colors is not None:
            return np.asarray(self.colors, np.uint8)
        import colorsys

        cols = [(0, 0, 0)] + [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(self.n - 1, 1), 0.75, 0.95))
                              for i in range(self.n - 1)]
        return np.asarray(cols, np.uint8)

    def weights(self) -> np.ndarray:
        """float32 [n]: cross-entropy weights ``1 / log(f + 0.001)`` (MonoScene), all ones without
        frequencies. Classes never seen (count <= 1) get the largest weight of the seen ones."""
        if self.frequencies is None:
            return np.ones(self.n, np.float32)
        f = np.asarray(self.frequencies, np.float64)
        seen = f > 1.0  # a count of 1 would give 1 / log(1.001) ~ 1000
        w = np.ones(self.n, np.float64)
        w[seen] = 1.0 / np.log(f[seen] + 0.001)
        if (~seen).any():
            w[~seen] = w[seen].max() if seen.any() else 1.0
        return w.astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"names": list(self.names), "empty": 0, "ignore": IGNORE, "to_raw": list(self.to_raw),
                             "from_raw": [list(p) for p in self.from_raw]}
        if self.frequencies is not None:
            d["frequencies"] = list(self.frequencies)
            d["frequencies_source"] = self.frequencies_source
        if self.colors is not None:
            d["colors"] = [list(c) for c in self.colors]
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> "ClassSpec":
        f = d.get("frequencies")
        c = d.get("colors")
        return ClassSpec(tuple(d["names"]), tuple(d["to_raw"]), tuple(tuple(p) for p in d["from_raw"]),
                         None if f is None else tuple(f), str(d.get("frequencies_source", "")),
                         None if c is None else tuple(tuple(x) for x in c))


@dataclass(frozen=True)
class CameraSpec:
    """One camera of the frames."""

    name: str
    """Camera name (``image_2`` for KITTI; ``CAM_FRONT`` ... for nuScenes); also the key of the frame
    record's raw file."""
    image_size: tuple[int, int]
    """(width, height) of the benchmark crop."""
    crop: tuple[int, int, int, int] | None = None
    """(x0, y0, width, height) of the crop in the raw image (None: the whole raw image)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        if self.crop is not None:
            object.__setattr__(self, "crop", tuple(int(c) for c in self.crop))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "image_size": list(self.image_size),
                "crop": None if self.crop is None else list(self.crop)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "CameraSpec":
        c = d.get("crop")
        return CameraSpec(str(d["name"]), tuple(d["image_size"]), None if c is None else tuple(c))


@dataclass(frozen=True)
class DistanceSpec:
    """How the metric's per-distance bands are measured."""

    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Sensor position in the grid frame (metres)."""
    axis: str = "x"
    """x: forward distance (KITTI); radial: horizontal range from the origin."""
    edges: tuple[float, ...] = ()
    """Band edges (metres); empty: no bands."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        if self.axis not in DISTANCE_AXES:
            raise ValueError(f"distance axis must be one of {', '.join(DISTANCE_AXES)} (got {self.axis!r})")

    def to_json(self) -> dict[str, Any]:
        return {"origin": list(self.origin), "axis": self.axis, "edges": list(self.edges)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "DistanceSpec":
        return DistanceSpec(tuple(d.get("origin", (0, 0, 0))), str(d.get("axis", "x")), tuple(d.get("edges", ())))


@dataclass(frozen=True)
class DatasetSpec:
    """Everything about a prepared dataset that code outside the dataset modules may use."""

    name: str
    """Dataset name (semantickitti, kitti360, ...)."""
    grid: GridSpec
    """The target grid."""
    classes: ClassSpec
    """Classes and their raw ids."""
    cameras: tuple[CameraSpec, ...]
    """Cameras of every frame, in batch order."""
    splits: dict[str, list[str]] = field(default_factory=dict)
    """Split name -> sequences (or scenes)."""
    masks: tuple[str, ...] = ("invalid",)
    """Evaluation masks the frames carry (invalid, fov, camera, lidar)."""
    distance: DistanceSpec = field(default_factory=DistanceSpec)
    """Per-distance bands of the metric."""
    scales: tuple[int, ...] = (1, 2, 4, 8)
    """Downsampling factors of the stored targets."""
    metric: str = "ssc"
    """Benchmark metric family `occ eval` scores with (one of METRICS)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "masks", tuple(self.masks))
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        bad = [m for m in self.masks if m not in MASKS]
        if bad:
            raise ValueError(f"unknown mask(s) {', '.join(bad)} (known: {', '.join(MASKS)})")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r} (known: {', '.join(METRICS)})")
        if not self.cameras:
            raise ValueError("a dataset spec needs at least one camera")

    @property
    def n_classes(self) -> int:
        return self.classes.n

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def grid_at(self, scale: int) -> tuple[int, int, int]:
        """Grid shape at 1:``scale``."""
        return self.grid.scaled(scale).shape

    def with_cameras(self, names: Sequence[str]) -> "DatasetSpec":
        """The spec restricted to the cameras ``names`` (in that order)."""
        by = {c.name: c for c in self.cameras}
        missing = [n for n in names if n not in by]
        if missing:
            raise ValueError(f"unknown camera(s) {', '.join(missing)} (known: {', '.join(by)})")
        return dataclasses.replace(self, cameras=tuple(by[n] for n in names))

    def distance_bands(self, scale: int = 1) -> dict[str, np.ndarray]:
        """Band label -> bool mask [X, Y, Z] of the voxels whose centre is in the band (at 1:``scale``).

        A voxel belongs to ``[lo, hi)`` when its centre's distance from ``distance.origin`` (forward
        x, or horizontal range) satisfies ``lo <= d < hi`` up to a millionth of a voxel (17.1 m is
        exactly a voxel centre at 0.2 m and goes to the upper band)."""
        from occ_core.metrics.ssc import band_label

        g = self.grid.scaled(scale)
        c = g.centres().reshape(*g.shape, 3) - np.asarray(self.distance.origin)
        d = c[..., 0] if self.distance.axis == "x" else np.hypot(c[..., 0], c[..., 1])
        eps = 1e-6 * min(g.voxel_size[:2])
        e = self.distance.edges
        return {band_label(lo, hi): (d >= lo - eps) & (d < hi - eps) for lo, hi in zip(e[:-1], e[1:])}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "grid": self.grid.to_json(), "classes": self.classes.to_json(),
                "cameras": [c.to_json() for c in self.cameras], "splits": {k: list(v) for k, v in self.splits.items()},
                "masks": list(self.masks), "distance": self.distance.to_json(), "scales": list(self.scales),
                "metric": self.metric}

    @staticmethod
    def from_json(d: Any, where: Any = "spec") -> "DatasetSpec":
        """Rebuild a spec from plain data; FormatError naming ``where`` when it is malformed."""
        try:
            if not isinstance(d, dict):
                raise TypeError(f"expected an object, got {type(d).__name__}")
            return DatasetSpec(
                name=str(d["name"]), grid=GridSpec.from_json(d["grid"]), classes=ClassSpec.from_json(d["classes"]),
                cameras=tuple(CameraSpec.from_json(c) for c in d["cameras"]),
                splits={str(k): [str(s) for s in v] for k, v in d.get("splits", {}).items()},
                masks=tuple(d.get("masks", ("invalid",))), distance=DistanceSpec.from_json(d.get("distance", {})),
                scales=tuple(d.get("scales", (1, 2, 4, 8))), metric=str(d.get("metric", "ssc")),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise FormatError(f"malformed dataset spec ({what})", where) from None


def count_classes(target: np.ndarray, n_classes: int) -> np.ndarray:
    """int64 [n_classes]: voxels of each class in a target grid (255 and other values not counted)."""
    t = np.asarray(target).reshape(-1)
    counts = np.bincount(t, minlength=256)[:n_classes]
    return counts.astype(np.int64)

