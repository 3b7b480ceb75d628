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

from occ_core.data.loading.targets import (BinaryOccupancy, LabelFraction, LidarBinaryConfig, SemanticTargets,
                                          TargetSource)
from occ_core.data.prepare.layout import Frame, PreparedDataset
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
    """Resize factor applied to every camera's benchmark crop (the dataset spec's cameras)."""
    cameras: list[str] = field(default_factory=list)
    """Cameras fed to the model, in this order (names from the dataset spec); empty: every camera."""
    target_scales: list[int] = field(default_factory=lambda: [1, 8])
    """Target scales loaded: 1 gives 'target', S > 1 gives 'target_1_S'."""
    load_right: bool = False
    """Also load the right image (image_3)."""
    load_input_occ: bool = False
    """Also load the voxelized single scan as 'input_occ'."""
    load_points: bool = False
    """Also load the LiDAR scan as 'points' (grid frame; batched as [sum P, 5]: batch index, x, y, z, intensity)."""
    flip_prob: float = 0.5
    """Probability of a random horizontal flip of the images in training (each camera's image, depth, intrinsics
    and VP mirrored together; the scene is not)."""
    color_jitter: float = 0.0
    """Photometric jitter in training: brightness, contrast and saturation each scaled by a factor drawn
    uniformly from [1 - j, 1 + j], per camera image (0 = off). Geometry is untouched."""
    vp_dir: str = ""
    """Folder of VPOcc-format VP files (seq_XX.json); empty: the VP stored with the prepared frame (synthetic
    data), else the image centre."""
    max_frames: int = 0
    """Use at most this many training frames (0 = all); for quick experiments."""
    num_workers: int = 0
    """DataLoader worker processes."""
    load_masks: bool = False
    """Also load each camera image's instance masks as 'masks' (int64 [V, H, W], 0 = no mask, k = the k-th best
    mask; from the prepared folder's masks/, written by 'occ prepare masks'), cropped, resized (nearest) and
    flipped exactly as the images."""
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
    neighbours: list[int] = field(default_factory=list)
    """Frame offsets (e.g. [-1, 1]) whose images and poses are also loaded as 'nbr_images' / 'nbr_grid_to_cam' /
    'nbr_valid' (occ_core/data/loading/neighbours.py; TACOcc's sequential rendering; KITTI-layout poses)."""


def photometric(img: np.ndarray, factors: tuple[float, float, float]) -> np.ndarray:
    """Brightness, contrast and saturation jitter of an RGB float image in [0, 1] (torchvision's
    ColorJitter order and definitions: contrast around the mean grey, saturation towards the grey image)."""
    b, c, sat = factors
    img = np.clip(img * b, 0.0, 1.0)
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = np.clip((img - grey.mean()) * c + grey.mean(), 0.0, 1.0)
    grey = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return np.clip((img - grey) * sat + grey, 0.0, 1.0)


def _read_image(path: Path, crop: tuple[int, int, int, int], scale: float,
                jitter: tuple[float, float, float] | None = None) -> np.ndarray:
    """RGB float32 [3, H, W], ImageNet-normalised: the ``crop`` (x0, y0, w, h) of the image resized by ``scale``
    (with :func:`photometric` ``jitter`` factors applied first, when given)."""
    import cv2

    if path is None:
        raise MissingError("frame has no image for this camera", "manifest.json")
    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MissingError("cannot read image", path)
    x0, y0, w, h = crop
    if img.shape[0] < y0 + h or img.shape[1] < x0 + w:
        raise OccError(f"image is {img.shape[1]}x{img.shape[0]}, smaller than the benchmark crop {w}x{h}", path)
    img = img[y0:y0 + h, x0:x0 + w, ::-1]
    if scale != 1.0:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    img = img.astype(np.float32) / 255.0
    if jitter is not None:
        img = photometric(img, jitter)
    img = (img - IMAGENET_MEAN) / IMAGENET_STD
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


def crop_to_image(scale: float, width: int, flip: bool) -> np.ndarray:
    """float64 [3, 3]: benchmark-crop pixels -> network-image pixels (centre convention): resize by
    ``scale`` (``u' = (u + 0.5) * scale - 0.5``), then optionally mirror (``u' -> W - 1 - u'``, W the
    resized width)."""
    A = np.array([[scale, 0.0, 0.5 * scale - 0.5], [0.0, scale, 0.5 * scale - 0.5], [0.0, 0.0, 1.0]])
    if flip:
        A = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ A
    return A


def crop_intrinsics(K: np.ndarray, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    """Intrinsics of the crop (x0, y0, w, h) of an image with intrinsics ``K``."""
    K = np.asarray(K, np.float64).copy()
    if crop is not None:
        K[0, 2] -= crop[0]
        K[1, 2] -= crop[1]
    return K


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: tensors stacked along a new batch dim, except ``points`` ([P_i, 4] per sample),
    which are concatenated with the batch index in front ([sum P_i, 5]: b, x, y, z, intensity)."""
    points = [s.get("points") for s in samples]
    rest = [{k: v for k, v in s.items() if k != "points"} for s in samples]
    batch = torch.utils.data.default_collate(rest)
    if points[0] is not None:
        batch["points"] = torch.cat([torch.cat([torch.full((len(p), 1), float(i)), p], 1) for i, p in enumerate(points)])
    return batch


class InputOccupancy(TargetSource):
    """``input_occ`` (float32 [X, Y, Z]): the voxelized single scan stored with the frame (``data.load_input_occ``;
    an input, read with the targets)."""

    def arrays(self, frame: Frame) -> list[str]:
        return ["input_occ"]

    def __call__(self, frame: Frame, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {"input_occ": torch.from_numpy(arrays["input_occ"].astype(np.float32))}


class OccDataset(torch.utils.data.Dataset):
    """Frames of one split of a prepared folder as batch dicts (see docs/design.md)."""

    semantic_frames: set[str] | None = None
    """B2S label-fraction selection: training frames that keep semantics (None: every labeled frame)."""

    def __init__(self, data: PreparedDataset | str | Path, split: str, cfg: DataConfig, train: bool = False,
                 seed: int = 0, labeled_only: bool = True, frames: list[Frame] | None = None):
        self.data = data if isinstance(data, PreparedDataset) else PreparedDataset(data)
        self.cfg = cfg
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.spec = self.data.spec  # checked before the frames: an unknown camera has no frames
        if cfg.cameras:
            try:
                self.spec = self.spec.with_cameras(list(cfg.cameras))
            except ValueError as e:
                raise OccError(f"data.cameras: {e}", self.data.root / "manifest.json") from None
        binary = BinaryOccupancy.build(self.data, cfg.lidar, sorted(set(cfg.target_scales) | {1})) \
            if cfg.binary_targets else None
        if frames is None:
            frames = self.data.frames(split, labeled=True if labeled_only else None)
            first = self.data.spec.cameras[0].name if not cfg.cameras else cfg.cameras[0]
            frames = [f for f in frames if f.files.get(first)]
            if train and cfg.max_frames > 0:
                frames = frames[: cfg.max_frames]
            frames = self._b2s_frames(split, frames, labeled_only, binary)
        if not frames:
            raise MissingError(f"no {'labeled ' if labeled_only else ''}frames with images in split '{split}'",
                               self.data.root / "manifest.json")
        self.frames = frames
        all_names = self.data.spec.camera_names
        self.camera_index = [all_names.index(c.name) for c in self.spec.cameras]
        self.scale = float(cfg.image_scale)
        sizes = {c.image_size for c in self.spec.cameras}
        if len(sizes) > 1:
            raise OccError(f"cameras of different crop sizes ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}) "
                           "cannot be batched", self.data.root / "manifest.json")
        self.image_size = next(iter(sizes))  # (W, H) of the benchmark crop
        self.out_size = (round(self.image_size[0] * self.scale), round(self.image_size[1] * self.scale))
        self._vps: dict[tuple[str, str], tuple[float, float]] | None = None
        for frame in self.frames if cfg.vp_dir else ():  # --vp read and checked up front (before a run folder)
            self._vp(frame)
        for sc in cfg.target_scales:
            if sc not in self.spec.scales:
                raise OccError(f"data.target_scales: {sc} is not a stored scale ({', '.join(map(str, self.spec.scales))})")
        self.sources = self._target_sources(binary)

    def _target_sources(self, binary: BinaryOccupancy | None) -> list[TargetSource]:
        """What each frame's arrays become (docs/design.md, occ_core.data.loading.targets), in batch-key order."""
        cfg = self.cfg
        # validation and binary targets need the 1:1 target; training only the scales it asks for
        scales = sorted(set(cfg.target_scales) | ({1} if (not self.train or cfg.binary_targets) else set()))
        sources: list[TargetSource] = [SemanticTargets(self.spec, scales, self.data.root)]
        if cfg.load_input_occ:
            sources.append(InputOccupancy())
        if binary is not None:
            sources.append(binary)
        if binary is not None or self.semantic_frames is not None:
            sources.append(LabelFraction(self.semantic_frames, self.spec, cfg.target_scales))
        if cfg.neighbours:
            from occ_core.data.loading.neighbours import NeighbourFrames

            sources.append(NeighbourFrames(self.data, self.spec, self.camera_index, cfg.neighbours, self.scale,
                                           self.out_size))
        return sources

    def __len__(self) -> int:
        return len(self.frames)

    def _b2s_frames(self, split: str, frames: list[Frame], labeled_only: bool,
                    binary: BinaryOccupancy | None) -> list[Frame]:
        """B2S: the label-fraction selection, and unlabeled frames that have LiDAR binary occupancy."""
        cfg = self.cfg
        self.semantic_frames: set[str] | None = None  # None: every labeled frame keeps its semantics
        if self.train and cfg.label_fraction < 1.0:
            self.semantic_frames = LabelFraction.select(frames, cfg.label_fraction, cfg.label_seed)
            if binary is None:
                frames = [f for f in frames if f.name in self.semantic_frames]
        if binary is not None and (self.train or not labeled_only):
            names = {f.name for f in frames}
            first = self.data.spec.cameras[0].name if not cfg.cameras else cfg.cameras[0]
            extra = [f for f in self.data.frames(split, labeled=False) if f.files.get(first) and f.name not in names]
            frames = frames + [f for f in extra if binary.lidar.available(f)]
            frames = [f for f in frames if binary.available(f)]
        return frames

    def has_semantics(self, frame: Frame) -> bool:
        """Whether ``frame``'s semantic target is used (labeled and not withheld by data.label_fraction)."""
        return frame.labeled and (self.semantic_frames is None or frame.name in self.semantic_frames)

    def _masks(self, frame: Frame, cam, flip: bool) -> np.ndarray:
        """int64 [H, W]: the camera image's mask ids (occ_core.data.prepare.masks), cropped like the image,
        resized by ``data.image_scale`` with nearest-neighbour sampling at pixel centres and mirrored with it."""
        import cv2

        from occ_core.data.prepare.masks import mask_path, read_id_image

        path = mask_path(self.data.root, frame.sequence, frame.id, cam.name)
        ids = read_id_image(path)
        x0, y0, w, h = cam.crop or (0, 0, *cam.image_size)
        if ids.shape[0] < y0 + h or ids.shape[1] < x0 + w:
            raise OccError(f"mask id image is {ids.shape[1]}x{ids.shape[0]}, smaller than the benchmark crop {w}x{h}",
                           path)
        ids = ids[y0:y0 + h, x0:x0 + w]
        if self.scale != 1.0:
            ids = cv2.resize(ids, self.out_size, interpolation=cv2.INTER_NEAREST_EXACT)
        if flip:
            ids = ids[:, ::-1]
        return np.ascontiguousarray(ids).astype(np.int64)

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

    def jitter(self, index: int, camera: int) -> tuple[float, float, float] | None:
        """The photometric factors of one camera image of training item ``index`` this epoch (None: off)."""
        j = self.cfg.color_jitter
        if not self.train or j <= 0:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, index, 7919, camera])
        return tuple(float(v) for v in rng.uniform(1.0 - j, 1.0 + j, 3))

    def __getitem__(self, index: int) -> dict[str, Any]:
        frame = self.frames[index]
        cfg, s = self.cfg, self.scale
        w, h = self.out_size
        flip = self.flipped(index)
        out: dict[str, Any] = {"frame": frame.name}
        calib = self.data.calibration(frame.sequence, frame.id)
        images, depths, Ks, Ts, As, vps = [], [], [], [], [], []
        for cam, i in zip(self.spec.cameras, self.camera_index):
            crop = cam.crop or (0, 0, *cam.image_size)
            image = _read_image(self.data.raw_path(frame, cam.name), crop, s, self.jitter(index, i))
            depth = self.data.load_depth(frame, i)
            depth = np.zeros((h, w), np.float32) if depth is None else resize_sparse_depth(depth, s)
            A = crop_to_image(s, w, flip)
            K, T = calib[i]
            vp = self._vp(frame) if i == 0 else None
            vp_arr = np.array([np.nan, np.nan]) if vp is None else (A @ np.array([vp[0], vp[1], 1.0]))[:2]
            if flip:
                image = image[:, :, ::-1]
                depth = depth[:, ::-1]
            images.append(np.ascontiguousarray(image))
            depths.append(np.ascontiguousarray(depth)[None])
            Ks.append(A @ crop_intrinsics(K, cam.crop))
            Ts.append(T)
            As.append(A)
            vps.append(vp_arr)
        out["images"] = torch.from_numpy(np.stack(images))
        out["depth"] = torch.from_numpy(np.stack(depths))
        out["intrinsics"] = torch.from_numpy(np.stack(Ks))
        out["grid_to_cam"] = torch.from_numpy(np.stack(Ts))
        out["crop_to_image"] = torch.from_numpy(np.stack(As))
        out["vp"] = torch.from_numpy(np.stack(vps).astype(np.float32))
        if cfg.load_masks:
            out["masks"] = torch.from_numpy(np.stack([self._masks(frame, cam, flip) for cam in self.spec.cameras]))
        if cfg.load_right:
            right = _read_image(self.data.raw_path(frame, "image_3"), (0, 0, *self.image_size), s)
            out["image_right"] = torch.from_numpy(np.ascontiguousarray(right[:, :, ::-1]) if flip else right)
        if cfg.load_points:
            out["points"] = torch.from_numpy(self._points(frame))
        keys = list(dict.fromkeys(k for src in self.sources for k in src.arrays(frame)))
        arrays = self.data.load_arrays(frame, keys) if keys else {}  # the frame's stored arrays, read once
        for src in self.sources:
            out.update(src(frame, arrays))
        return out

    def _points(self, frame: Frame) -> np.ndarray:
        """The frame's LiDAR scan in the grid frame, float32 [P, 4] (x, y, z, intensity); [0, 4] when none."""
        return self.data.load_points(frame)
