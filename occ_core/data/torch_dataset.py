"""PyTorch dataset over a prepared folder: the batch layout of docs/design.md.

Augmentation is deterministic: whether frame ``i`` is flipped in epoch ``e`` depends only on
``(seed, e, i)``, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from occ_core.data.binary import LidarBinaryConfig
from occ_core.data.prepared import Frame, PreparedDataset
from occ_core.errors import MissingError, OccError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class DataConfig:
    """What the data loader feeds a method."""

    root: str = ""
    """Prepared data folder (written by 'occ prepare'); stored relative to the run folder."""
    train_split: str = "train"
    """Split to train on."""
    val_split: str = "val"
    """Split to validate on (only labeled frames are used)."""
    image_scale: float = 1.0
    """Resize factor applied to the cropped benchmark image (1220x370 for KITTI)."""
    projection_scales: list[int] = field(default_factory=lambda: [2])
    """Voxel scales (1, 2, 4, 8) whose projections (projected_pix_S, fov_mask_S, pix_z_S) are loaded."""
    target_scales: list[int] = field(default_factory=lambda: [1, 8])
    """Target scales loaded: 1 gives 'target', S > 1 gives 'target_1_S'."""
    load_right: bool = False
    """Also load the right image (image_3)."""
    load_input_occ: bool = False
    """Also load the voxelized single scan as 'input_occ'."""
    flip_prob: float = 0.5
    """Probability of a random horizontal flip in training (image, depth, projections and VP mirrored)."""
    vp_dir: str = ""
    """Folder of VPOcc-format VP files (seq_XX.json); empty: the VP stored with the prepared frame (synthetic
    data), else the image centre."""
    max_frames: int = 0
    """Use at most this many training frames (0 = all); for quick experiments."""
    num_workers: int = 0
    """DataLoader worker processes."""
    binary_targets: bool = False
    """Also load binary occupancy as 'binary' / 'binary_1_S' (uint8 as int64: 0 empty, 1 occupied, 255 unknown):
    from the semantic target (class > 0) on labeled frames, else from LiDAR scans accumulated along the poses
    (data.lidar); in training, unlabeled frames with scans join the training set (B2S)."""
    label_fraction: float = 1.0
    """Keep semantic targets on this fraction of the labeled training frames (chosen by label_seed); the others
    are dropped, or with binary_targets kept with binary occupancy only (targets set to 255)."""
    label_seed: int = 0
    """Seed of the label-fraction selection (independent of the training seed)."""
    lidar: LidarBinaryConfig = field(default_factory=LidarBinaryConfig)
    """Binary occupancy from accumulated LiDAR scans (frames with no target; binary_targets only)."""


def _read_image(path: Path, size: tuple[int, int], scale: float) -> np.ndarray:
    import cv2

    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MissingError("cannot read image", path)
    w, h = size
    if img.shape[0] < h or img.shape[1] < w:
        raise OccError(f"image is {img.shape[1]}x{img.shape[0]}, smaller than the benchmark crop {w}x{h}", path)
    img = img[:h, :w, ::-1]
    if scale != 1.0:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    img = (img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def resize_sparse_depth(depth: np.ndarray, scale: float) -> np.ndarray:
    """Resize a sparse depth map keeping the nearest point per output pixel (0 = none)."""
    if scale == 1.0:
        return depth
    h, w = depth.shape
    oh, ow = round(h * scale), round(w * scale)
    vs, us = np.nonzero(depth > 0)
    z = depth[vs, us]
    ou = np.clip(((us + 0.5) * scale).astype(np.int64), 0, ow - 1)
    ov = np.clip(((vs + 0.5) * scale).astype(np.int64), 0, oh - 1)
    out = np.full(oh * ow, np.inf, dtype=np.float32)
    np.minimum.at(out, ov * ow + ou, z)
    out[np.isinf(out)] = 0.0
    return out.reshape(oh, ow)


def scale_pixels(pix: np.ndarray, scale: float) -> np.ndarray:
    """Pixel coordinates (centre convention) of the original image in the resized image."""
    return ((pix.astype(np.float32) + 0.5) * scale - 0.5).astype(np.float32)


class OccDataset(torch.utils.data.Dataset):
    """Frames of one split of a prepared folder as batch dicts (see docs/design.md)."""

    semantic_frames: set[str] | None = None
    """B2S label-fraction selection: training frames that keep semantics (None: every labeled frame)."""
    _lidar = None

    def __init__(self, data: PreparedDataset | str | Path, split: str, cfg: DataConfig, train: bool = False,
                 seed: int = 0, labeled_only: bool = True, frames: list[Frame] | None = None):
        self.data = data if isinstance(data, PreparedDataset) else PreparedDataset(data)
        self.cfg = cfg
        self.train = train
        self.seed = seed
        self.epoch = 0
        if frames is None:
            frames = self.data.frames(split, labeled=True if labeled_only else None)
            frames = [f for f in frames if f.files.get("image_2")]
            if train and cfg.max_frames > 0:
                frames = frames[: cfg.max_frames]
            frames = self._binary_frames(split, frames, labeled_only)
        if not frames:
            raise MissingError(f"no {'labeled ' if labeled_only else ''}frames with images in split '{split}'",
                               self.data.root / "manifest.json")
        self.frames = frames
        self.image_size = self.data.image_size  # (W, H) of the benchmark crop
        self.scale = float(cfg.image_scale)
        self.out_size = (round(self.image_size[0] * self.scale), round(self.image_size[1] * self.scale))
        self._vps: dict[tuple[str, str], tuple[float, float]] | None = None
        for s in list(cfg.projection_scales) + list(cfg.target_scales):
            if s not in (1, 2, 4, 8):
                raise OccError(f"data scales must be 1, 2, 4 or 8 (got {s})")

    def __len__(self) -> int:
        return len(self.frames)

    def _binary_frames(self, split: str, frames: list[Frame], labeled_only: bool) -> list[Frame]:
        """B2S: the label-fraction selection, and unlabeled frames that have LiDAR binary occupancy."""
        cfg = self.cfg
        self.semantic_frames: set[str] | None = None  # None: every labeled frame keeps its semantics
        self._lidar = None
        if cfg.binary_targets:
            from occ_core.data.binary import LidarBinarySource

            self._lidar = LidarBinarySource(self.data, cfg.lidar)
        if self.train and cfg.label_fraction < 1.0:
            from occ_core.data.binary import select_labeled

            self.semantic_frames = set(select_labeled([f.name for f in frames if f.labeled], cfg.label_fraction,
                                                      cfg.label_seed))
            if not cfg.binary_targets:
                frames = [f for f in frames if f.name in self.semantic_frames]
        if cfg.binary_targets and (self.train or not labeled_only):
            names = {f.name for f in frames}
            extra = [f for f in self.data.frames(split, labeled=False) if f.files.get("image_2") and f.name not in names]
            frames = frames + [f for f in extra if self._lidar.available(f)]
            frames = [f for f in frames if f.labeled or self._lidar.available(f)]
        return frames

    def has_semantics(self, frame: Frame) -> bool:
        """Whether ``frame``'s semantic target is used (labeled and not withheld by data.label_fraction)."""
        return frame.labeled and (self.semantic_frames is None or frame.name in self.semantic_frames)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # ---------------------------------------------------------------------------------------
    def _vp(self, frame: Frame) -> tuple[float, float] | None:
        if self.cfg.vp_dir:
            if self._vps is None:
                from occ_core.vp.io import read_vp_dir

                self._vps = read_vp_dir(self.cfg.vp_dir)
            vp = self._vps.get((frame.sequence, frame.id))
            if vp is None:
                raise MissingError(f"no vanishing point for frame {frame.name}", Path(self.cfg.vp_dir) / f"seq_{frame.sequence}.json")
            return vp
        return frame.vp

    def flipped(self, index: int) -> bool:
        if not self.train or self.cfg.flip_prob <= 0:
            return False
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return bool(rng.random() < self.cfg.flip_prob)

    def __getitem__(self, index: int) -> dict[str, Any]:
        frame = self.frames[index]
        cfg, s = self.cfg, self.scale
        w, h = self.out_size
        geo = self.data.geometry(frame.sequence)
        flip = self.flipped(index)
        out: dict[str, Any] = {"frame": frame.name}

        image = _read_image(self.data.raw_path(frame, "image_2"), self.image_size, s)
        depth = self.data.load_depth(frame)
        depth = np.zeros((h, w), np.float32) if depth is None else resize_sparse_depth(depth, s)
        K = geo["K"].astype(np.float32).copy()
        K[:2] *= s
        K[0, 2] += 0.5 * s - 0.5
        K[1, 2] += 0.5 * s - 0.5
        vp = self._vp(frame)
        vp_arr = np.array([np.nan, np.nan], np.float32) if vp is None else scale_pixels(np.array(vp), s)

        if flip:
            image = np.ascontiguousarray(image[:, :, ::-1])
            depth = np.ascontiguousarray(depth[:, ::-1])
            vp_arr[0] = w - 1 - vp_arr[0]
        out["image"] = torch.from_numpy(image)
        out["depth"] = torch.from_numpy(depth[None].copy())
        if cfg.load_right:
            right = _read_image(self.data.raw_path(frame, "image_3"), self.image_size, s)
            out["image_right"] = torch.from_numpy(np.ascontiguousarray(right[:, :, ::-1]) if flip else right)
        out["K"] = torch.from_numpy(K)
        out["Tr"] = torch.from_numpy(geo["Tr"].astype(np.float32))
        out["vp"] = torch.from_numpy(vp_arr)
        out["flipped"] = torch.tensor(flip)
        for sc in cfg.projection_scales:
            pix = scale_pixels(geo[f"projected_pix_{sc}"], s)
            if flip:
                pix[:, 0] = w - 1 - pix[:, 0]
            out[f"projected_pix_{sc}"] = torch.from_numpy(pix)
            out[f"fov_mask_{sc}"] = torch.from_numpy(geo[f"fov_mask_{sc}"])
            out[f"pix_z_{sc}"] = torch.from_numpy(geo[f"pix_z_{sc}"])
        arrays: dict[str, np.ndarray] = {}
        # validation and binary targets need the 1:1 target; training only the scales it asks for
        target_scales = sorted(set(cfg.target_scales) | ({1} if (not self.train or cfg.binary_targets) else set()))
        if frame.labeled or cfg.load_input_occ:
            keys = [f"target_1_{sc}" for sc in target_scales] if frame.labeled else []
            arrays = self.data.load_arrays(frame, keys + (["input_occ"] if cfg.load_input_occ else []))
            if frame.labeled:
                for sc in target_scales:
                    key = "target" if sc == 1 else f"target_1_{sc}"
                    out[key] = torch.from_numpy(arrays[f"target_1_{sc}"].astype(np.int64))
            if cfg.load_input_occ:
                out["input_occ"] = torch.from_numpy(arrays["input_occ"].astype(np.float32))
        if cfg.binary_targets or self.semantic_frames is not None:
            self._add_binary(frame, out, arrays if frame.labeled else None)
        return out

    def _add_binary(self, frame: Frame, out: dict[str, Any], arrays: dict[str, np.ndarray] | None) -> None:
        from occ_core.data.binary import binary_from_semantic, downsample_binary

        cfg = self.cfg
        scales = sorted(set(cfg.target_scales) | {1})
        if cfg.binary_targets:
            if arrays is not None:
                binary = {sc: binary_from_semantic(arrays[f"target_1_{sc}"]) for sc in scales}
            else:
                if self._lidar is None:
                    from occ_core.data.binary import LidarBinarySource

                    self._lidar = LidarBinarySource(self.data, cfg.lidar)
                full = self._lidar(frame)
                if full is None:
                    raise MissingError(f"frame {frame.name} has neither a target nor LiDAR scans for binary occupancy",
                                       self.data.root / "manifest.json")
                binary = {sc: downsample_binary(full, sc) for sc in scales}
            for sc in scales:
                out["binary" if sc == 1 else f"binary_1_{sc}"] = torch.from_numpy(binary[sc].astype(np.int64))
        semantics = self.has_semantics(frame)
        out["has_semantics"] = torch.tensor(semantics)
        if not semantics:  # binary only: ignore every voxel of the semantic targets (same keys for collation)
            for sc in cfg.target_scales:
                key = "target" if sc == 1 else f"target_1_{sc}"
                shape = (256 // sc, 256 // sc, 32 // sc)
                out[key] = torch.full(shape, 255, dtype=torch.int64)
