"""The synthetic surround-view dataset (``occ prepare synthetic --layout nuscenes``): nuscenes-devkit loads it
unchanged, its splits come from the devkit's mini split, the rig and files are nuScenes-like, the Occ3D labels
agree with the LiDAR, it is deterministic and resumable."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from _surround import SAMPLES, SCENES, SEED, SIZE, surround_raw

from occ_core.data.formats import occ3d
from occ_core.data.synthetic import nuscenes as N
from occ_core.data.synthetic import surround as S
from occ_core.errors import OccError


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return surround_raw(tmp_path_factory)


@pytest.fixture(scope="module")
def nusc(raw):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(raw), verbose=False)


def test_devkit_loads_it_with_every_table(raw, nusc):
    assert sorted(p.stem for p in (raw / "v1.0-mini").glob("*.json")) == sorted(occ3d.TABLES)
    assert [s["name"] for s in nusc.scene] == SCENES
    assert len(nusc.sample) == len(SCENES) * SAMPLES
    for scene in nusc.scene:
        tokens, tok = [], scene["first_sample_token"]
        while tok:
            tokens.append(tok)
            tok = nusc.get("sample", tok)["next"]
        assert len(tokens) == scene["nbr_samples"] == SAMPLES and tokens[-1] == scene["last_sample_token"]
    s = nusc.sample[0]
    assert set(s["data"]) == set(occ3d.CAMERAS) | {occ3d.LIDAR}
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    assert "scene-0061" in splits["mini_train"] and "scene-0103" in splits["mini_val"]


def test_cameras_lidar_and_poses_are_nuscenes_like(nusc):
    s = nusc.sample[1]
    times = {}
    for ch in occ3d.CAMERAS:
        sd = nusc.get("sample_data", s["data"][ch])
        img = cv2.imread(nusc.get_sample_data_path(sd["token"]))
        assert img.shape == (SIZE[1], SIZE[0], 3) and (sd["width"], sd["height"]) == SIZE
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        K = np.array(cs["camera_intrinsic"])
        assert K[0, 2] == SIZE[0] / 2 and K[0, 0] == pytest.approx(S.CAMERA_RIG[ch]["f"] * SIZE[0] / 1600)
        # the optical axis (camera z) points along the rig's yaw in the ego frame
        from pyquaternion import Quaternion

        z = Quaternion(cs["rotation"]).rotation_matrix[:, 2]
        yaw = np.degrees(np.arctan2(z[1], z[0]))
        assert abs((yaw - S.CAMERA_RIG[ch]["yaw"] + 180) % 360 - 180) < 1e-6 and abs(z[2]) < 1e-9
        times[ch] = sd["timestamp"]
        assert nusc.get("ego_pose", sd["ego_pose_token"])["timestamp"] == sd["timestamp"]
    lsd = nusc.get("sample_data", s["data"][occ3d.LIDAR])
    assert lsd["timestamp"] == s["timestamp"] and len(set(times.values())) == 6  # each camera fires at its own time
    from nuscenes.utils.data_classes import LidarPointCloud

    pc = LidarPointCloud.from_file(nusc.get_sample_data_path(lsd["token"]))
    raw5 = np.fromfile(nusc.get_sample_data_path(lsd["token"]), np.float32).reshape(-1, 5)
    assert pc.points.shape == (4, len(raw5)) and len(raw5) > 10_000
    assert set(np.unique(raw5[:, 4]).astype(int)) <= set(range(32)) and raw5[:, 4].max() == 31
    assert 0 <= raw5[:, 3].min() and raw5[:, 3].max() <= 255
    # ego poses move forward along the trajectory (2 Hz samples, ~5 m apart)
    p0 = np.array(nusc.get("ego_pose", nusc.get("sample_data", nusc.sample[0]["data"][occ3d.LIDAR])["ego_pose_token"])["translation"])
    p1 = np.array(nusc.get("ego_pose", lsd["ego_pose_token"])["translation"])
    assert 3.0 < np.linalg.norm(p1 - p0) < 7.0


def test_occ3d_labels_agree_with_the_lidar(raw, nusc):
    from pyquaternion import Quaternion

    for s in nusc.sample:
        scene = nusc.get("scene", s["scene_token"])["name"]
        gt = occ3d.read_gt(occ3d.gt_path(raw / "gts", scene, s["token"]))
        sem = gt["semantics"]
        assert sem.dtype == np.uint8 and {4, 11, 15}.issubset(set(np.unique(sem)))  # car, road, manmade
        assert gt["mask_camera"].mean() > 0.05 and gt["mask_lidar"].mean() > 0.05
        # LiDAR points (LIDAR_TOP frame -> ego) land in occupied voxels that the LiDAR mask marks as observed
        lsd = nusc.get("sample_data", s["data"][occ3d.LIDAR])
        cs = nusc.get("calibrated_sensor", lsd["calibrated_sensor_token"])
        pts = np.fromfile(nusc.get_sample_data_path(lsd["token"]), np.float32).reshape(-1, 5)[:, :3]
        ego = pts @ Quaternion(cs["rotation"]).rotation_matrix.T + np.array(cs["translation"])
        idx = np.floor((ego - np.array(occ3d.GRID_ORIGIN)) / occ3d.VOXEL_SIZE).astype(int)
        ok = ((idx >= 0) & (idx < np.array(occ3d.GRID_SHAPE))).all(1)
        hit = tuple(idx[ok].T)
        assert (sem[hit] != occ3d.FREE_ID).mean() > 0.9
        assert gt["mask_lidar"][hit].mean() > 0.9
        # below the ground nothing is observed
        assert not gt["mask_lidar"][:, :, 0].any() and not gt["mask_camera"][:, :, 0].any()


def test_same_seed_same_bytes_and_reruns_skip(raw, tmp_path):
    other = tmp_path / "again"
    N.write_sample(other, SEED, SCENES[1], SAMPLES, 1, SIZE)
    for rel in N.sample_files(SCENES[1], 1).values():
        assert (other / rel).read_bytes() == (raw / rel).read_bytes(), rel
    summary = N.generate_nuscenes(raw, scenes=SCENES, samples=SAMPLES, seed=SEED, image_size=SIZE, progress=False)
    assert summary["samples_written"] == 0 and summary["samples_skipped"] == len(SCENES) * SAMPLES
    rec = json.loads((raw / N.RECORD).read_text())
    assert rec["layout"] == "nuscenes" and rec["scenes"] == sorted(SCENES)
    with pytest.raises(OccError, match="--seed"):
        N.generate_nuscenes(raw, scenes=SCENES, samples=SAMPLES, seed=SEED + 1, image_size=SIZE, progress=False)
    with pytest.raises(OccError, match="not a v1.0-mini scene"):
        N.generate_nuscenes(tmp_path / "x", scenes=["scene-0001"], samples=2, progress=False)
