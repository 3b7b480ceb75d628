"""DataConfig(load_masks=True): 'masks' [B, V, H, W] int64, cropped / resized (nearest) / flipped like the images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from occ_core.data.loading.dataset import DataConfig, OccDataset, collate
from occ_core.data.prepare.layout import PreparedDataset
from occ_core.data.prepare.masks import id_image, mask_path, write_masks
from occ_core.errors import OccError

BLOCK = 4  # ids constant on 4x4 pixel blocks, so nearest and area sampling agree at scale 1/2


def pattern(w: int, h: int) -> np.ndarray:
    v, u = np.mgrid[0:h, 0:w]
    return (1 + (u // BLOCK) + 400 * (v // BLOCK) % 60000).astype(np.uint16)


@pytest.fixture
def masked(synthetic_prepared: Path, tmp_path_factory) -> Path:
    """A prepared folder sharing ``synthetic_prepared``'s frames (symlinked) with masks of its own."""
    root = synthetic_prepared.parent / f"masked_{tmp_path_factory.mktemp('m').name}"
    root.mkdir()
    shutil.copy(synthetic_prepared / "manifest.json", root / "manifest.json")
    (root / "sequences").symlink_to(synthetic_prepared / "sequences", target_is_directory=True)
    data = PreparedDataset(root)
    for f in data.frames("val"):
        for cam in data.spec.cameras:
            w, h = data.image_size[0] + 21, data.image_size[1] + 6  # the raw image is larger than the crop
            ids = pattern(w, h)
            k = int(ids.max())
            write_masks(root, f.sequence, f.id, cam.name, ids, [1.0] * k, [1] * k, "test")
    yield root
    shutil.rmtree(root)


@pytest.mark.parametrize("scale,flip", [(1.0, False), (0.5, False), (0.5, True)])
def test_masks_follow_the_image_geometry(masked: Path, scale: float, flip: bool):
    cfg = DataConfig(root=str(masked), image_scale=scale, load_masks=True, flip_prob=1.0 if flip else 0.0)
    ds = OccDataset(masked, "val", cfg, train=flip)
    batch = collate([ds[0], ds[1]])
    m = batch["masks"]
    B, V, _, H, W = batch["images"].shape
    assert m.dtype == torch.int64 and m.shape == (B, V, H, W)
    # each network pixel holds the id of the crop pixel that crop_to_image maps onto it
    A = batch["crop_to_image"][0, 0].numpy()
    x0, y0 = (ds.spec.cameras[0].crop or (0, 0))[:2]
    vv, uu = np.mgrid[0:H, 0:W]
    src = np.linalg.inv(A) @ np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)])
    su = np.floor(src[0] + 0.5 + 1e-9).astype(int).reshape(H, W)  # + 0.5: the nearest (centre) pixel
    sv = np.floor(src[1] + 0.5 + 1e-9).astype(int).reshape(H, W)
    full = pattern(su.max() + x0 + 1, sv.max() + y0 + 1).astype(np.int64)
    assert torch.equal(m[0, 0], torch.from_numpy(full[sv + y0, su + x0]))
    if flip:
        unflipped = OccDataset(masked, "val", DataConfig(root=str(masked), image_scale=scale, load_masks=True),
                               train=False)[0]["masks"]
        assert torch.equal(m[0], unflipped.flip(-1))


def test_nearest_resize_uses_pixel_centres(masked: Path):
    """At scale 1/2 network pixel u samples crop pixel 2u + 1 (the centre rule of INTER_NEAREST_EXACT)."""
    ds = OccDataset(masked, "val", DataConfig(root=str(masked), image_scale=0.5, load_masks=True))
    f = ds.frames[0]
    cam = ds.spec.cameras[0]
    path = mask_path(masked, f.sequence, f.id, cam.name)
    import cv2

    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    v, u = np.mgrid[0:ids.shape[0], 0:ids.shape[1]]
    cv2.imwrite(str(path), (1 + u + 2000 * (v % 30)).astype(np.uint16))  # distinct per pixel
    got = ds[0]["masks"][0].numpy()
    x0, y0 = (cam.crop or (0, 0))[:2]
    exp_u = x0 + 2 * np.arange(got.shape[1]) + 1
    exp_v = y0 + 2 * np.arange(got.shape[0]) + 1
    assert np.array_equal(got, (1 + exp_u[None, :] + 2000 * (exp_v[:, None] % 30)))


def test_missing_or_bad_masks_are_one_line_errors(masked: Path):
    ds = OccDataset(masked, "val", DataConfig(root=str(masked), load_masks=True))
    f = ds.frames[0]
    path = mask_path(masked, f.sequence, f.id, ds.spec.cameras[0].name)
    path.write_bytes(b"not a png")
    with pytest.raises(OccError, match="unreadable mask id image"):
        ds[0]
    path.unlink()
    with pytest.raises(OccError, match="run 'occ prepare masks'"):
        ds[0]
    # without load_masks nothing is read
    assert "masks" not in OccDataset(masked, "val", DataConfig(root=str(masked)))[0]


def test_id_image_orders_by_score_and_resolves_overlaps():
    a = np.zeros((4, 6), bool)
    a[:, :3] = True
    b = np.zeros((4, 6), bool)
    b[:, 2:5] = True
    c = np.zeros((4, 6), bool)
    c[0, 0] = True  # hidden under the better-scored a
    ids, kept, areas = id_image([a, b, c], [0.5, 0.9, 0.1])
    assert kept == [1, 0] and areas == [12, 8]
    assert ids.dtype == np.uint16
    assert ids[0].tolist() == [2, 2, 1, 1, 1, 0]


def test_write_masks_json(tmp_path: Path):
    ids = np.array([[0, 1], [2, 2]], np.uint16)
    write_masks(tmp_path, "00", "000000", "image_2", ids, [0.9, 0.8], [1, 2], "sam", {"model": "vit_b"})
    info = json.loads((tmp_path / "masks/00/000000/image_2.json").read_text())
    assert info == {"format": "occ-masks", "version": 1, "source": "sam", "size": [2, 2], "scores": [0.9, 0.8],
                    "areas": [1, 2], "model": "vit_b"}
    with pytest.raises(ValueError):
        write_masks(tmp_path, "00", "000000", "image_2", ids, [0.9], [1], "sam")
