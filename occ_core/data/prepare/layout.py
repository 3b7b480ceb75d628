"""The prepared-data layout written by ``occ prepare`` and read by training and evaluation.

::

    OUT/
      manifest.json                    format, dataset spec (grid, classes, cameras, masks, splits,
                                       distance bands; occ_core.data.spec), frame list
      sequences/XX/geometry.npz        per-sequence calibration and voxel projections
                                       (K_<camera>, T_<camera> (grid -> camera) for every camera of the spec;
                                       P2, P3, Tr, K, projected_pix_S, pix_z_S of the first camera, fov_mask_S
                                       (in view of any camera) for S in 1, 2, 4, 8)
      sequences/XX/frames/NNNNNN.npz   target_1_1, target_1_2, target_1_4, target_1_8 (uint8, 255 = ignore;
                                       absent on unlabeled frames), input_occ (bool), occluded (bool, if given)
      sequences/XX/depth/NNNNNN.png    sparse LiDAR depth in the first camera, KITTI depth format
                                       (uint16, metres x 256, 0 = no point), cropped to the camera's crop
      sequences/XX/depth_<camera>/     the same for every further camera of the spec

Each frame record in the manifest names its raw files (stereo pair, scan, ...) relative to the raw
``sequences`` folder, which the manifest stores relative to OUT (``source``), so a prepared folder
holds no absolute path. Projections are per sequence because KITTI calibration is per sequence:
every frame's record points at its sequence's ``geometry.npz``.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from occ_core.data.spec import DatasetSpec
from occ_core.errors import FormatError, MissingError
from occ_core.utils.io import kind_of, read_json
from occ_core.utils.paths import is_plain_name

FORMAT_NAME = "occ-prepared"
FORMAT_VERSION = 2
"""2: the manifest holds the dataset spec (``"spec"``) and per-camera calibration in geometry.npz."""
MANIFEST = "manifest.json"
TARGET_KEYS = {1: "target_1_1", 2: "target_1_2", 4: "target_1_4", 8: "target_1_8"}
NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError)
"""What ``np.load`` of a damaged ``.npz`` raises, on opening or (lazily) on reading an array."""
RERUN = "(rerun 'occ prepare --force')"


def read_npz(path: Path, keys: list[str] | None = None, what: str = "prepared frame",
             hint: str = RERUN) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (all, or only ``keys``), read eagerly; a truncated or damaged file
    or a missing key is a FormatError naming it. The one place prepared ``.npz`` files are opened. ``hint``
    ends the message (for files ``occ prepare`` did not write, such as predictions, pass ``""``)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive (np.load would try other formats)
            raise FormatError(f"not an .npz archive, truncated or damaged {hint}", path)
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys or [] if k not in z.files]
            if missing:
                raise FormatError(f"{what} has no '{missing[0]}' {hint}", path)
            return {k: z[k] for k in (z.files if keys is None else keys)}
    except FormatError:
        raise
    except NPZ_ERRORS as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"unreadable {what}, truncated or damaged ({detail}) {hint}", path) from None

def split_of(sequence: str, splits: dict[str, list[str]]) -> str:
    """The split a sequence belongs to ("train", "val", "test"), or "extra" when none lists it."""
    for name, seqs in splits.items():
        if sequence in seqs:
            return name
    return "extra"


@dataclass(frozen=True)
class Frame:
    """One prepared frame."""

    sequence: str
    id: str
    split: str
    labeled: bool
    files: dict[str, str | None] = field(default_factory=dict, compare=False, hash=False)
    """Raw files relative to the source ``sequences`` folder: image_2, image_3, velodyne, labels,
    voxel_bin, voxel_label, voxel_invalid, voxel_occluded (None when absent)."""
    vp: tuple[float, float] | None = field(default=None, compare=False, hash=False)
    """Vanishing point in image_2 pixels when the source provides one."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Dataset-specific record fields (plain JSON values): Occ3D frames keep ``prev`` / ``next`` (the
    neighbouring sample tokens of the scene, '' at its ends) and ``timestamp`` (LIDAR_TOP, microseconds)."""

    @property
    def name(self) -> str:
        return f"{self.sequence}/{self.id}"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sequence": self.sequence, "id": self.id, "split": self.split,
                             "labeled": self.labeled, "files": self.files}
        if self.vp is not None:
            d["vp"] = list(self.vp)
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @staticmethod
    def from_json(d: dict[str, Any], where: str | Path | None = None, index: int | None = None) -> "Frame":
        """A frame from its manifest record; a malformed record is a FormatError naming ``where`` (the
        manifest) and the record ``index``. ``sequence`` and ``id`` must be plain names (they become
        folder and file names), ``files`` relative paths."""
        rec = "frame record" if index is None else f"frame record {index}"
        if not isinstance(d, dict):
            raise FormatError(f"{rec}: expected a JSON object, got {kind_of(d)}", where)
        missing = [k for k in ("sequence", "id", "split", "labeled") if k not in d]
        if missing:
            raise FormatError(f"{rec}: missing key '{missing[0]}' (keys: sequence, id, split, labeled, files)", where)
        for key in ("sequence", "id"):
            value = d[key]
            if not isinstance(value, (str, int)) or isinstance(value, bool) or not is_plain_name(str(value)):
                raise FormatError(f"{rec}: {key} {value!r} is not a plain name (no '/', '\\', '..', "
                                  f"not absolute)", where)
        if not isinstance(d["split"], str):
            raise FormatError(f"{rec}: split must be a string, got {d['split']!r}", where)
        if not isinstance(d["labeled"], bool):
            raise FormatError(f"{rec}: labeled must be true or false, got {d['labeled']!r}", where)
        files = d.get("files") or {}
        if not isinstance(files, dict) or not all(isinstance(v, str) or v is None for v in files.values()):
            raise FormatError(f"{rec}: files must be an object {{key: relative path or null}}", where)
        for key, rel in files.items():
            if rel is not None and (Path(rel).is_absolute() or PureWindowsPath(rel).is_absolute()):
                raise FormatError(f"{rec}: files.{key} must be relative to the raw sequences folder, got {rel!r}",
                                  where)
        vp = d.get("vp")
        if vp is not None:
            try:
                vp = (float(vp[0]), float(vp[1]))
                if len(d["vp"]) != 2:
                    raise ValueError
            except (TypeError, ValueError, IndexError, KeyError):
                raise FormatError(f"{rec}: vp must be [x, y], got {d['vp']!r}", where) from None
        extra = d.get("extra") or {}
        if not isinstance(extra, dict):
            raise FormatError(f"{rec}: extra must be an object, got {kind_of(extra)}", where)
        return Frame(str(d["sequence"]), str(d["id"]), d["split"], d["labeled"], dict(files), vp, dict(extra))


def frame_path(root: Path, sequence: str, frame_id: str) -> Path:
    return root / "sequences" / sequence / "frames" / f"{frame_id}.npz"


def depth_path(root: Path, sequence: str, frame_id: str, camera: int = 0, name: str | None = None) -> Path:
    """Sparse depth PNG of camera number ``camera`` (``depth/`` for the first camera, ``depth_<name>/``
    for the others; ``name`` defaults to the index)."""
    folder = "depth" if camera == 0 else f"depth_{name if name is not None else camera}"
    return root / "sequences" / sequence / folder / f"{frame_id}.png"


def geometry_path(root: Path, sequence: str) -> Path:
    return root / "sequences" / sequence / "geometry.npz"


class PreparedDataset:
    """Read access to a folder written by ``occ prepare``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not self.root.is_dir():
            raise MissingError("prepared data folder not found", self.root)
        if not path.is_file():
            raise MissingError("not a prepared data folder (no manifest.json; run 'occ prepare' first)", self.root)
        self.manifest: dict[str, Any] = read_json(path, "prepared manifest", expect=dict)
        if self.manifest.get("format") != FORMAT_NAME:
            raise FormatError(f"not an occ prepared manifest (format={self.manifest.get('format')!r})", path)
        version = self.manifest.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise FormatError(f"format version must be an integer, got {version!r}", path)
        if version > FORMAT_VERSION:
            raise FormatError(f"prepared with a newer occ (format version {version})", path)
        frames = self.manifest.get("frames", [])
        if not isinstance(frames, list):
            raise FormatError(f"'frames' must be a list of frame records, got {kind_of(frames)}", path)
        if not isinstance(self.manifest.get("source", ""), str):
            raise FormatError("'source' must be the raw sequences folder relative to the prepared folder", path)
        self._frames = [Frame.from_json(f, path, i) for i, f in enumerate(frames)]
        self._geometry: dict[str, dict[str, np.ndarray]] = {}
        self._spec: DatasetSpec | None = None

    # -- metadata ------------------------------------------------------------------------------
    @property
    def dataset(self) -> str:
        return self.spec.name

    @property
    def spec(self) -> DatasetSpec:
        """The dataset spec (grid, classes, cameras, masks, splits, distance bands) of the manifest;
        folders prepared before the spec existed (format version 1) get their dataset module's."""
        if self._spec is None:
            where = self.root / MANIFEST
            if "spec" in self.manifest:
                self._spec = DatasetSpec.from_json(self.manifest["spec"], where)
            elif int(self.manifest.get("version", 0)) < 2:
                self._spec = legacy_spec(self.manifest, where)
            else:
                raise FormatError("manifest has no dataset spec (key 'spec'; rerun 'occ prepare')", where)
        return self._spec

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the first camera's benchmark crop."""
        return self.spec.cameras[0].image_size

    @property
    def splits(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.spec.splits.items()}

    @property
    def source(self) -> Path:
        """The raw ``sequences`` folder (resolved from the manifest's path relative to OUT)."""
        if "source" not in self.manifest:
            raise FormatError("manifest has no 'source' (the raw sequences folder; rerun 'occ prepare')",
                              self.root / MANIFEST)
        return (self.root / self.manifest["source"]).resolve()

    def frames(self, split: str | None = None, labeled: bool | None = None,
               sequences: list[str] | None = None) -> list[Frame]:
        """Frames, optionally restricted to a split, to (un)labeled frames, or to sequences."""
        out = self._frames
        if split is not None and split != "all":
            known = set(self.splits) | {f.split for f in out}
            if split not in known:
                raise MissingError(f"unknown split '{split}' (known: {', '.join(sorted(known))})", self.root / MANIFEST)
            out = [f for f in out if f.split == split]
        if labeled is not None:
            out = [f for f in out if f.labeled == labeled]
        if sequences is not None:
            out = [f for f in out if f.sequence in sequences]
        return list(out)

    def frame(self, name: str) -> Frame:
        """A frame by name ``SEQ/ID``."""
        for f in self._frames:
            if f.name == name:
                return f
        raise MissingError(f"no frame '{name}' in the prepared data", self.root / MANIFEST)

    # -- arrays --------------------------------------------------------------------------------
    def _load_frame_npz(self, frame: Frame, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays of a frame's ``.npz`` (all, or ``keys``), read eagerly (see :func:`read_npz`)."""
        path = frame_path(self.root, frame.sequence, frame.id)
        if not path.is_file():
            raise MissingError("prepared frame missing (rerun 'occ prepare')", path)
        return read_npz(path, keys, "prepared frame")

    def load_target(self, frame: Frame, scale: int = 1) -> np.ndarray:
        """Target class indices at 1:``scale`` (uint8; 0 empty, 1..19, 255 ignored)."""
        if not frame.labeled:
            raise MissingError(f"frame {frame.name} has no target (unlabeled)", frame_path(self.root, frame.sequence, frame.id))
        return self._load_frame_npz(frame, [TARGET_KEYS[scale]])[TARGET_KEYS[scale]]

    def load_input(self, frame: Frame) -> np.ndarray:
        """Input occupancy (the voxelized single scan), bool [256, 256, 32]."""
        return self._load_frame_npz(frame, ["input_occ"])["input_occ"].astype(bool)

    def load_arrays(self, frame: Frame, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays stored for a frame (all, or only ``keys``)."""
        return self._load_frame_npz(frame, None if keys is None else list(keys))

    def load_depth(self, frame: Frame, camera: int = 0) -> np.ndarray | None:
        """Sparse depth in metres [H, W] float32 of camera number ``camera`` (0 = no point), or None if
        the frame has no depth for it."""
        import cv2

        path = depth_path(self.root, frame.sequence, frame.id, camera, self.spec.cameras[camera].name)
        if not path.is_file():
            return None
        raw = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.dtype != np.uint16:
            raise FormatError("not a 16-bit depth PNG", path)
        return raw.astype(np.float32) / 256.0

    def geometry(self, sequence: str) -> dict[str, np.ndarray]:
        """Calibration and projections of a sequence (cached)."""
        if sequence not in self._geometry:
            path = geometry_path(self.root, sequence)
            if not path.is_file():
                raise MissingError("sequence geometry missing (rerun 'occ prepare')", path)
            self._geometry[sequence] = read_npz(path, None, "sequence geometry")
        return self._geometry[sequence]

    def calibration(self, sequence: str, frame_id: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(K 3x3, grid -> camera 4x4) float64 of every camera of the spec, in spec order, for a sequence, or
        for one of its frames where the calibration is per frame (nuScenes: ``K_<camera>`` [F, 3, 3] and
        ``T_<camera>`` [F, 4, 4] in geometry.npz, row ``i`` for the frame ``frames[i]``)."""
        geo = self.geometry(sequence)
        row = None
        if "frames" in geo:
            ids = [str(f) for f in geo["frames"]]
            if frame_id is None or str(frame_id) not in ids:
                raise FormatError(f"no calibration of frame '{frame_id}' in its sequence's per-frame calibration "
                                  "(rerun 'occ prepare')", geometry_path(self.root, sequence))
            row = ids.index(str(frame_id))
        out = []
        for i, cam in enumerate(self.spec.cameras):
            if f"K_{cam.name}" in geo:
                K, T = geo[f"K_{cam.name}"], geo[f"T_{cam.name}"]
                if row is not None:
                    K, T = K[row], T[row]
                out.append((K.astype(np.float64), T.astype(np.float64)))
            elif i == 0 and "K" in geo:  # format version 1: the single KITTI camera
                out.append((geo["K"].astype(np.float64), geo["Tr"].astype(np.float64)))
            else:
                raise FormatError(f"no calibration of camera '{cam.name}' (rerun 'occ prepare')",
                                  geometry_path(self.root, sequence))
        return out

    def load_points(self, frame: Frame) -> np.ndarray:
        """The frame's LiDAR scan in the grid frame, float32 [P, 4] (x, y, z, intensity); [0, 4] when it has none.
        KITTI layout: ``files.velodyne`` (the velodyne frame is the grid frame); nuScenes layout: ``files.lidar``
        (a ``.pcd.bin`` of 5 float32 per point) moved into the grid by the frame's stored ``lidar_to_ego``."""
        from occ_core.data.formats import semantickitti as sk

        if frame.files.get("velodyne"):
            return sk.read_scan(self.raw_path(frame, "velodyne")).astype(np.float32)
        if frame.files.get("lidar"):
            from occ_core.data.formats import occ3d

            pts = occ3d.read_points(self.raw_path(frame, "lidar"))
            T = self.load_arrays(frame, ["lidar_to_ego"])["lidar_to_ego"].astype(np.float64)
            xyz = pts[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
            return np.concatenate([xyz.astype(np.float32), pts[:, 3:4]], 1)
        return np.zeros((0, 4), np.float32)

    def raw_path(self, frame: Frame, key: str) -> Path | None:
        """Absolute path of a raw file of ``frame`` (image_2, image_3, velodyne, ...), or None."""
        rel = frame.files.get(key)
        return None if rel is None else self.source / rel


def legacy_spec(manifest: dict[str, Any], where: Path) -> DatasetSpec:
    """The spec of a version-1 manifest (written before the spec existed): its dataset module's."""
    from occ_core.data.formats import kitti360, semantickitti

    name = manifest.get("dataset", "semantickitti")
    if name == "semantickitti":
        return semantickitti.dataset_spec()
    if name == "kitti360":
        return kitti360.dataset_spec()
    raise FormatError(f"manifest has no dataset spec and an unknown dataset '{name}' (rerun 'occ prepare')", where)
