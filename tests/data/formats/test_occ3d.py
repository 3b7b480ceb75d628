"""Occ3D-nuScenes: the format module, ``occ prepare occ3d`` on the synthetic surround dataset (per-frame
calibration folded at each camera's timestamp, targets with free = 0, masks and poses per frame, shards +
merge, idempotent reruns) and malformed inputs (one line naming the file)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _surround import SAMPLES, SCENES, SEED, SIZE, surround_prepared, surround_raw

from occ_core.data.formats import occ3d
from occ_core.data.prepare.layout import PreparedDataset
from occ_core.data.prepare.occ3d import prepare_occ3d
from occ_core.errors import FormatError, MissingError, OccError


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return surround_raw(tmp_path_factory)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return surround_prepared(tmp_path_factory)


def test_class_luts_round_trip():
    ids = np.arange(occ3d.FREE_ID + 1, dtype=np.uint8)
    cls = occ3d.REMAP_LUT[ids]
    assert cls[occ3d.FREE_ID] == 0 and list(cls[:occ3d.FREE_ID]) == list(range(1, 18))
    spec = occ3d.dataset_spec()
    assert np.array_equal(spec.classes.inverse_lut()[cls], ids)
    assert np.array_equal(spec.classes.remap_lut()[ids], cls)
    assert spec.metric == "occ3d" and set(spec.masks) == {"camera", "lidar"} and spec.grid.frame == "ego"
    assert spec.grid.shape == occ3d.GRID_SHAPE and spec.camera_names == list(occ3d.CAMERAS)


def test_prepared_frames_carry_targets_masks_poses_and_neighbours(raw, prepared):
    data = PreparedDataset(prepared)
    spec = data.spec
    assert spec.name == "occ3d" and spec.splits == {"train": [SCENES[0]], "val": [SCENES[1]]}
    assert all(c.image_size == SIZE for c in spec.cameras)
    assert spec.classes.frequencies is not None and spec.classes.frequencies[0] > 0
    frames = data.frames()
    assert len(frames) == len(SCENES) * SAMPLES
    first, second = data.frames(sequences=[SCENES[0]])
    assert first.extra["prev"] == "" and first.extra["next"] == second.id and second.extra["prev"] == first.id
    assert first.extra["timestamp"] < second.extra["timestamp"]
    arr = data.load_arrays(second)
    gt = occ3d.read_gt(occ3d.gt_path(raw / "gts", second.sequence, second.id))
    assert np.array_equal(arr["target_1_1"], occ3d.REMAP_LUT[gt["semantics"]]) and 255 not in arr["target_1_1"]
    assert np.array_equal(arr["mask_camera"], gt["mask_camera"]) and arr["mask_camera"].dtype == bool
    assert np.array_equal(arr["mask_lidar"], gt["mask_lidar"])
    assert arr["target_1_8"].shape == spec.grid_at(8) and arr["ego_to_world"].dtype == np.float64
    # the ego moves ~5 m between samples; the LiDAR sits 1.73 m above the ego origin
    d = np.linalg.norm(arr["ego_to_world"][:3, 3] - data.load_arrays(first, ["ego_to_world"])["ego_to_world"][:3, 3])
    assert 3.0 < d < 7.0 and arr["lidar_to_ego"][2, 3] == pytest.approx(1.73)
    pts = data.load_points(second)
    assert pts.shape[1] == 4 and len(pts) > 10_000
    idx = np.floor((pts[:, :3] - np.array(spec.grid.origin)) / 0.4).astype(int)
    ok = ((idx >= 0) & (idx < np.array(spec.grid.shape))).all(1)
    assert (arr["target_1_1"][tuple(idx[ok].T)] > 0).mean() > 0.9  # the sweep is in the grid (ego) frame
    assert np.array_equal(arr["input_occ"][tuple(idx[ok].T)], np.ones(ok.sum(), bool))


def test_per_frame_calibration_projects_exactly_into_each_camera(raw, prepared):
    """The sparse depth of a camera (LiDAR points through the stored grid -> camera) equals the renderer's depth:
    the ego pose at the camera's own timestamp is folded in (CAM_BACK fires 25 ms after the LiDAR: at ~10 m/s
    ignoring that would move it by ~0.25 m)."""
    from occ_core.data.synthetic import nuscenes as N
    from occ_core.data.synthetic import surround as S

    data = PreparedDataset(prepared)
    frame = data.frames(sequences=[SCENES[0]])[1]
    calib = data.calibration(frame.sequence, frame.id)
    assert not np.allclose(calib[3][1], data.calibration(frame.sequence, data.frames(sequences=[SCENES[0]])[0].id)[3][1])
    scene = N._scene(SEED, SCENES[0], SAMPLES)
    scan = N.scan_of(1)
    E = S.ego_to_scene(scene, scan)
    for k, ch in enumerate(data.spec.camera_names):
        t = N.camera_time(scan, ch)
        truth = np.linalg.inv(S.ego_to_scene(scene, t) @ S.camera_to_ego(ch)) @ E  # grid -> camera at t_cam
        assert np.allclose(calib[k][1], truth, atol=1e-6), ch
        assert np.allclose(calib[k][0], S.intrinsics(ch, SIZE))
    k = data.spec.camera_names.index("CAM_BACK")
    unfolded = np.linalg.inv(S.camera_to_ego("CAM_BACK"))  # the ego pose at the LiDAR's time, wrongly
    assert np.linalg.norm(calib[k][1][:3, 3] - unfolded[:3, 3]) > 0.1
    # and the stored sparse depth agrees with the renderer's depth image of that camera
    for ch in ("CAM_BACK", "CAM_FRONT_LEFT"):
        k = data.spec.camera_names.index(ch)
        K = S.intrinsics(ch, SIZE)
        _, depth = S.render_view(scene, S.ego_to_scene(scene, N.camera_time(scan, ch)) @ S.camera_to_ego(ch), K,
                                 S.sun_map(scene, scan), np.random.default_rng(0), SIZE)
        sparse = data.load_depth(frame, k)
        m = (sparse > 0) & (depth > 0)
        assert m.sum() > 200
        assert np.median(np.abs(sparse[m] - depth[m])) < 0.1 and np.mean(np.abs(sparse[m] - depth[m]) < 0.1) > 0.6


def test_rerun_skips_and_shards_merge_to_the_same_manifest(raw, prepared, tmp_path):
    again = prepare_occ3d(raw, None, prepared, progress=False)
    assert again["written"] == 0 and again["skipped"] == len(SCENES) * SAMPLES
    out = tmp_path / "sharded"
    with pytest.raises(MissingError, match="no shard records"):
        prepare_occ3d(None, None, out, merge=True, progress=False)
    prepare_occ3d(raw, None, out, shard="1/2", progress=False)
    with pytest.raises(MissingError, match="1 of 2 shards not finished"):
        prepare_occ3d(None, None, out, merge=True, progress=False)
    prepare_occ3d(raw, None, out, shard="0/2", progress=False)
    prepare_occ3d(None, None, out, merge=True, progress=False)
    a = json.loads((prepared / "manifest.json").read_text())
    b = json.loads((out / "manifest.json").read_text())
    a.pop("source"), b.pop("source")
    assert a == b
    with pytest.raises(OccError, match="--shard must be I/N"):
        prepare_occ3d(raw, None, out, shard="2/2", progress=False)


# ------------------------------------------------------------------------------------------------
# Malformed inputs: one line naming the file
# ------------------------------------------------------------------------------------------------


def _copy_tables(raw, tmp_path):
    """A nuScenes root with copied tables and the sample files linked."""
    root = tmp_path / "nus"
    root.mkdir()
    shutil.copytree(raw / "v1.0-mini", root / "v1.0-mini")
    for name in ("samples", "maps"):
        (root / name).symlink_to(raw / name)
    return root


def _copy_gts(raw, tmp_path):
    gts = tmp_path / "gts"
    shutil.copytree(raw / "gts", gts)
    return gts


def test_missing_table(raw, tmp_path):
    root = _copy_tables(raw, tmp_path)
    (root / "v1.0-mini" / "calibrated_sensor.json").unlink()
    with pytest.raises(MissingError) as e:
        prepare_occ3d(root, raw / "gts", tmp_path / "out", progress=False)
    assert str(root / "v1.0-mini" / "calibrated_sensor.json") in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_broken_table_names_it(raw, tmp_path):
    root = _copy_tables(raw, tmp_path)
    (root / "v1.0-mini" / "ego_pose.json").write_text("[{")
    with pytest.raises(FormatError, match="not valid JSON") as e:
        prepare_occ3d(root, raw / "gts", tmp_path / "out", progress=False)
    assert str(root / "v1.0-mini" / "ego_pose.json") in str(e.value)


@pytest.mark.parametrize("bad", ["no_mask_camera", "wrong_shape"])
def test_bad_labels_npz(raw, tmp_path, bad):
    gts = _copy_gts(raw, tmp_path)
    path = next(iter(sorted(gts.glob("*/*/labels.npz"))))
    z = dict(np.load(path))
    if bad == "no_mask_camera":
        z.pop("mask_camera")
        match = "no 'mask_camera'"
    else:
        z["semantics"] = z["semantics"][:, :, :8]
        match = r"'semantics' has shape \(200, 200, 8\)"
    np.savez_compressed(path, **z)
    with pytest.raises(FormatError, match=match) as e:
        prepare_occ3d(raw, gts, tmp_path / "out", progress=False)
    assert str(path) in str(e.value)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_sample_token_not_in_the_tables(raw, tmp_path):
    gts = _copy_gts(raw, tmp_path)
    src = next(iter(sorted(gts.glob(f"{SCENES[0]}/*"))))
    stray = gts / SCENES[0] / ("f" * 32)
    shutil.copytree(src, stray)
    with pytest.raises(FormatError, match="sample token not in the nuScenes v1.0-mini tables") as e:
        prepare_occ3d(raw, gts, tmp_path / "out", progress=False)
    assert str(stray / "labels.npz") in str(e.value)


def test_missing_labels_npz(raw, tmp_path):
    gts = _copy_gts(raw, tmp_path)
    path = next(iter(sorted(gts.glob(f"{SCENES[1]}/*/labels.npz"))))
    path.unlink()
    with pytest.raises(MissingError, match="Occ3D ground truth missing") as e:
        prepare_occ3d(raw, gts, tmp_path / "out", progress=False)
    assert str(path) in str(e.value)
