"""Neighbouring frames for sequential rendering (TACOcc's ``model.render.sequential``): ``data.neighbours``.

For every offset ``k`` in ``data.neighbours`` (e.g. ``[-1, 1]``) the batch gets frame ``i + k`` of the same
sequence:

* ``nbr_images`` float32 [K, V, 3, H, W]: each camera's image of that frame, processed like ``images``
  (benchmark crop, ``data.image_scale``, ImageNet-normalised) but **never mirrored or jittered** (the
  rendering losses compare them with renders of the unmirrored crop);
* ``nbr_grid_to_cam`` float64 [K, V, 4, 4]: the current frame's grid -> that frame's camera, from the poses;
* ``nbr_valid`` bool [K]: whether the neighbour exists (image and pose); invalid entries are zeros /
  the current frame's ``grid_to_cam``.

Poses: the KITTI layout's ``poses.txt`` of the raw sequence (cam0 poses; ``Tr`` velodyne -> cam0 from the
sequence geometry): the grid (velodyne ``i``) goes to velodyne ``j`` by ``inv(Tr) inv(pose_j) pose_i Tr``
(:func:`occ_core.data.loading.targets.relative_transform`), then to camera ``j`` by the camera's
``grid_to_cam``. Frames of other layouts (no ``poses.txt``) get ``nbr_valid = False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from occ_core.data.loading.targets import TargetSource, relative_transform


class NeighbourFrames(TargetSource):
    """``nbr_images`` / ``nbr_grid_to_cam`` / ``nbr_valid`` (see the module docstring)."""

    def __init__(self, data, spec, camera_index: Sequence[int], offsets: Sequence[int], image_scale: float,
                 out_size: tuple[int, int]):
        self.data = data
        self.spec = spec
        self.camera_index = list(camera_index)
        self.offsets = [int(k) for k in offsets]
        self.scale = float(image_scale)
        self.out_size = out_size
        self._poses: dict[str, np.ndarray | None] = {}

    def poses(self, sequence: str) -> np.ndarray | None:
        if sequence not in self._poses:
            from occ_core.data.formats import semantickitti as sk

            try:
                path = self.data.source / sequence / "poses.txt"
            except Exception:  # no raw source recorded
                path = None
            self._poses[sequence] = sk.read_poses(path) if path is not None and path.is_file() else None
        return self._poses[sequence]

    def neighbour_path(self, frame, camera: str, j: int) -> Path | None:
        """The raw image of frame ``j`` of ``frame``'s sequence for ``camera`` (same folder and naming)."""
        p = self.data.raw_path(frame, camera)
        if p is None:
            return None
        q = p.with_name(f"{j:0{len(frame.id)}d}{p.suffix}")
        return q if q.is_file() else None

    def __call__(self, frame, arrays) -> dict[str, torch.Tensor]:
        from occ_core.data.loading.dataset import _read_image

        K, V = len(self.offsets), len(self.camera_index)
        w, h = self.out_size
        images = np.zeros((K, V, 3, h, w), np.float32)
        calib = self.data.calibration(frame.sequence)
        T_cur = np.stack([calib[i][1] for i in self.camera_index])
        Ts = np.repeat(T_cur[None], K, 0).astype(np.float64)
        valid = np.zeros(K, bool)
        poses = self.poses(frame.sequence)
        geo = self.data.geometry(frame.sequence)
        if poses is not None and "Tr" in geo and frame.id.isdigit():
            i = int(frame.id)
            Tr = np.asarray(geo["Tr"], np.float64)
            if Tr.shape == (3, 4):
                Tr = np.vstack([Tr, [0.0, 0.0, 0.0, 1.0]])
            for n, k in enumerate(self.offsets):
                j = i + k
                if not (0 <= j < len(poses)) or i >= len(poses):
                    continue
                paths = [self.neighbour_path(frame, cam.name, j) for cam in self.spec.cameras]
                if any(p is None for p in paths):
                    continue
                for v, (cam, p) in enumerate(zip(self.spec.cameras, paths)):
                    images[n, v] = _read_image(p, cam.crop or (0, 0, *cam.image_size), self.scale)
                M = relative_transform(poses[j], poses[i], Tr)  # grid (velodyne i) -> velodyne j
                Ts[n] = T_cur @ M
                valid[n] = True
        return {"nbr_images": torch.from_numpy(images), "nbr_grid_to_cam": torch.from_numpy(Ts),
                "nbr_valid": torch.from_numpy(valid)}
