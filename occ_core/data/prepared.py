"""The prepared-data layout written by ``occ prepare`` and read by training and evaluation.

::

    OUT/
      manifest.json                    format, dataset, grid, image size, splits, frame list
      sequences/XX/geometry.npz        per-sequence calibration and voxel projections
                                       (P2, P3, Tr, K, projected_pix_S, pix_z_S, fov_mask_S for S in 1, 2, 4, 8)
      sequences/XX/frames/NNNNNN.npz   target_1_1, target_1_2, target_1_4, target_1_8 (uint8, 255 = ignore;
                                       absent on unlabeled frames), input_occ (bool), occluded (bool, if given)
      sequences/XX/depth/NNNNNN.png    sparse LiDAR depth in image_2, KITTI depth format
                                       (uint16, metres x 256, 0 = no point), cropped to 1220 x 370

Each frame record in the manifest names its raw files (stereo pair, scan, ...) relative to the raw
``sequences`` folder, which the manifest stores relative to OUT (``source``), so a prepared folder
holds no absolute path. Projections are per sequence because KITTI calibration is per sequence:
every frame's record points at its sequence's ``geometry.npz``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from occ_core.errors import FormatError, MissingError

FORMAT_NAME = "occ-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TARGET_KEYS = {1: "target_1_1", 2: "target_1_2", 4: "target_1_4", 8: "target_1_8"}

SPLITS_SEMANTICKITTI: dict[str, list[str]] = {
    "train": ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"],
    "val": ["08"],
    "test": [f"{i:02d}" for i in range(11, 22)],
}
SPLITS_KITTI360: dict[str, list[str]] = {
    "train": ["00", "02", "03", "04", "05", "07", "10"],
    "val": ["06"],
    "test": ["09"],
}


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

    @property
    def name(self) -> str:
        return f"{self.sequence}/{self.id}"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sequence": self.sequence, "id": self.id, "split": self.split,
                             "labeled": self.labeled, "files": self.files}
        if self.vp is not None:
            d["vp"] = list(self.vp)
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Frame":
        vp = d.get("vp")
        return Frame(str(d["sequence"]), str(d["id"]), str(d["split"]), bool(d["labeled"]),
                     dict(d.get("files", {})), None if vp is None else (float(vp[0]), float(vp[1])))


def frame_path(root: Path, sequence: str, frame_id: str) -> Path:
    return root / "sequences" / sequence / "frames" / f"{frame_id}.npz"


def depth_path(root: Path, sequence: str, frame_id: str) -> Path:
    return root / "sequences" / sequence / "depth" / f"{frame_id}.png"


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
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise FormatError(f"invalid JSON ({e.msg} at line {e.lineno})", path) from None
        if self.manifest.get("format") != FORMAT_NAME:
            raise FormatError(f"not an occ prepared manifest (format={self.manifest.get('format')!r})", path)
        if int(self.manifest.get("version", 0)) > FORMAT_VERSION:
            raise FormatError(f"prepared with a newer occ (format version {self.manifest['version']})", path)
        self._frames = [Frame.from_json(f) for f in self.manifest.get("frames", [])]
        self._geometry: dict[str, dict[str, np.ndarray]] = {}

    # -- metadata ------------------------------------------------------------------------------
    @property
    def dataset(self) -> str:
        return str(self.manifest.get("dataset", "semantickitti"))

    @property
    def splits(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.manifest.get("splits", {}).items()}

    @property
    def image_size(self) -> tuple[int, int]:
        w, h = self.manifest.get("image_size", (1220, 370))
        return int(w), int(h)

    @property
    def source(self) -> Path:
        """The raw ``sequences`` folder (resolved from the manifest's path relative to OUT)."""
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
    def _load_frame_npz(self, frame: Frame) -> Any:
        path = frame_path(self.root, frame.sequence, frame.id)
        if not path.is_file():
            raise MissingError("prepared frame missing (rerun 'occ prepare')", path)
        try:
            return np.load(path)
        except (OSError, ValueError) as e:
            raise FormatError(f"unreadable prepared frame ({e})", path) from None

    def load_target(self, frame: Frame, scale: int = 1) -> np.ndarray:
        """Target class indices at 1:``scale`` (uint8; 0 empty, 1..19, 255 ignored)."""
        if not frame.labeled:
            raise MissingError(f"frame {frame.name} has no target (unlabeled)", frame_path(self.root, frame.sequence, frame.id))
        with self._load_frame_npz(frame) as z:
            return z[TARGET_KEYS[scale]]

    def load_input(self, frame: Frame) -> np.ndarray:
        """Input occupancy (the voxelized single scan), bool [256, 256, 32]."""
        with self._load_frame_npz(frame) as z:
            return z["input_occ"].astype(bool)

    def load_arrays(self, frame: Frame, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays stored for a frame (all, or only ``keys``; each one is decompressed on demand)."""
        with self._load_frame_npz(frame) as z:
            missing = [k for k in keys or [] if k not in z.files]
            if missing:
                raise FormatError(f"prepared frame has no '{missing[0]}' (rerun 'occ prepare --force')",
                                  frame_path(self.root, frame.sequence, frame.id))
            return {k: z[k] for k in (z.files if keys is None else keys)}

    def load_depth(self, frame: Frame) -> np.ndarray | None:
        """Sparse depth in metres [H, W] float32 (0 = no point), or None if the frame has no scan."""
        import cv2

        path = depth_path(self.root, frame.sequence, frame.id)
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
            with np.load(path) as z:
                self._geometry[sequence] = {k: z[k] for k in z.files}
        return self._geometry[sequence]

    def raw_path(self, frame: Frame, key: str) -> Path | None:
        """Absolute path of a raw file of ``frame`` (image_2, image_3, velodyne, ...), or None."""
        rel = frame.files.get(key)
        return None if rel is None else self.source / rel
