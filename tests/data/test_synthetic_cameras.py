"""Extra cameras of the synthetic dataset (generate_dataset(..., cameras=3)): image_4 / image_5."""

from __future__ import annotations

import json

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from occ_core.data.formats import semantickitti as sk
from occ_core.data.synthetic import generate_dataset
from occ_core.data.synthetic import generate as gen
from occ_core.errors import OccError
from occ_core.geometry.projection import transform_points

SEQ = "08"
FRAMES = 2
SEED = 3
IDS = ["000000", "000005"]
EXTRA = {4: 55.0, 5: -55.0}  # camera -> yaw (degrees, positive = toward velodyne +y, left)
GROUND = [40, 44, 48, 49, 72]  # raw ids of road, parking, sidewalk, other-ground, terrain
W, H = 1241, 376


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic3")
    summary = generate_dataset(out, sequences=[SEQ], frames=FRAMES, seed=SEED, workers=1, progress=False, cameras=3)
    assert summary["frames_written"] == FRAMES and summary["frames_skipped"] == 0
    return out


def _seq(root: Path) -> Path:
    return root / "dataset" / "sequences" / SEQ


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_extra_camera_files(three):
    d = _seq(three)
    for k in EXTRA:
        for fid in IDS:
            img = cv2.imread(str(d / f"image_{k}" / f"{fid}.png"), cv2.IMREAD_UNCHANGED)
            assert img.shape == (H, W, 3) and img.dtype == np.uint8 and img.std() > 20
            sem = cv2.imread(str(d / f"semantic_{k}" / f"{fid}.png"), cv2.IMREAD_UNCHANGED)
            assert sem.shape == (H, W) and sem.dtype == np.uint8 and sem.max() <= 19
            dep = cv2.imread(str(d / f"depth_{k}" / f"{fid}.png"), cv2.IMREAD_UNCHANGED)
            assert dep.shape == (H, W) and dep.dtype == np.uint16
            assert np.array_equal(dep == 0, sem == 0)  # sky: no class, no depth
            assert (sem > 0).mean() > 0.5
        assert sorted(p.stem for p in (d / f"image_{k}").iterdir()) == IDS
    # The three cameras see different things.
    imgs = [cv2.imread(str(d / f"image_{k}" / "000000.png")) for k in (2, 4, 5)]
    assert not np.array_equal(imgs[0], imgs[1]) and not np.array_equal(imgs[1], imgs[2])


def test_calib_keys_and_round_trip(three, tmp_path):
    path = _seq(three) / "calib.txt"
    keys = [line.split(":")[0] for line in path.read_text().splitlines() if line.strip()]
    assert keys == ["P0", "P1", "P2", "P3", "Tr", "P4", "Tr_4", "P5", "Tr_5"]  # extra keys after the standard ones
    calib = sk.read_calib(path)
    K = calib["P2"][:, :3]
    for k in EXTRA:
        assert np.allclose(calib[f"P{k}"], np.hstack([K, np.zeros((3, 1))]))
        R = calib[f"Tr_{k}"][:, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.linalg.det(R) == pytest.approx(1.0)
    # write_calib / read_calib keep the extra keys.
    sk.write_calib(tmp_path / "calib.txt", calib)
    again = sk.read_calib(tmp_path / "calib.txt", keys=tuple(keys))
    assert list(again) == keys
    for key in keys:
        assert np.allclose(again[key], calib[key], rtol=1e-11, atol=1e-12)


def test_yaw_and_mounting(three):
    calib = sk.read_calib(_seq(three) / "calib.txt")
    Tr = sk.to_homogeneous(calib["Tr"])
    c2_cam0 = gen.camera_centre(calib["P2"])  # image_2's centre in cam0 coordinates
    c2_velo = (np.linalg.inv(Tr) @ np.append(c2_cam0, 1.0))[:3]
    for k, yaw in EXTRA.items():
        cam_to_velo = np.linalg.inv(sk.to_homogeneous(calib[f"Tr_{k}"]))
        axis = cam_to_velo[:3, :3] @ [0.0, 0.0, 1.0]  # optical axis in the velodyne frame
        assert axis[2] == pytest.approx(0.0, abs=1e-9)  # level
        assert np.sign(axis[1]) == np.sign(yaw)  # camera 4 looks left (+y), camera 5 right (-y)
        assert np.degrees(np.arctan2(axis[1], axis[0])) == pytest.approx(yaw, abs=1e-6)
        down = cam_to_velo[:3, :3] @ [0.0, 1.0, 0.0]
        assert np.allclose(down, [0.0, 0.0, -1.0])  # camera y is down: yawed about the vertical axis
        assert np.allclose(cam_to_velo[:3, 3], c2_velo, atol=1e-9)  # mounted at image_2's centre


def _project(calib, tr_key, p_key, raw):
    idx = np.argwhere((raw > 0) & ~np.isin(raw, GROUND))  # solid objects (ground voxel centres float above it)
    centres = np.asarray(sk.GRID_ORIGIN) + (idx + 0.5) * sk.VOXEL_SIZE
    cam = transform_points(sk.to_homogeneous(calib[tr_key]), centres)
    P = calib[p_key]
    p = cam @ P[:, :3].T + P[:, 3]
    z = p[:, 2]
    zs = np.where(z > 0, z, 1.0)
    u, v = np.round(p[:, 0] / zs).astype(int), np.round(p[:, 1] / zs).astype(int)
    ok = (z > 1) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    return u[ok], v[ok], z[ok], sk.remap_labels(raw[tuple(idx[ok].T)])


def _agreement(d: Path, fid: str, k: int, tr_key: str, p_key: str, calib, raw) -> tuple[float, int, float]:
    """(fraction of projected object voxels the pixel sees past, first-surface voxels, their class match)."""
    sem = cv2.imread(str(d / f"semantic_{k}" / f"{fid}.png"), cv2.IMREAD_UNCHANGED)
    dep = cv2.imread(str(d / f"depth_{k}" / f"{fid}.png"), cv2.IMREAD_UNCHANGED).astype(np.float64) / 256
    dep[dep == 0] = np.inf
    u, v, z, cls = _project(calib, tr_key, p_key, raw)
    seen = dep[v, u]
    beyond = float((seen > z + 0.5).mean())  # the pixel sees through an occupied voxel: impossible
    front = np.abs(seen - z) < 0.3  # the voxel is the first surface along the pixel's ray
    match = float((sem[v[front], u[front]] == cls[front]).mean()) if front.any() else 0.0
    return beyond, int(front.sum()), match


def test_geometry_voxels_project_onto_depth_and_semantics(three):
    d = _seq(three)
    calib = sk.read_calib(d / "calib.txt")
    for fid in IDS:
        raw = sk.read_voxel_label(d / "voxels" / f"{fid}.label")
        for k in EXTRA:
            beyond, n_front, match = _agreement(d, fid, k, f"Tr_{k}", f"P{k}", calib, raw)
            assert beyond < 0.02, (fid, k, beyond)
            assert n_front > 2000, (fid, k, n_front)
            assert match > 0.9, (fid, k, match)
    # Control: camera 5's extrinsics on camera 4's images disagree (the check can fail).
    raw = sk.read_voxel_label(d / "voxels" / "000000.label")
    beyond, n_front, match = _agreement(d, "000000", 4, "Tr_5", "P4", calib, raw)
    assert beyond > 0.05 or match < 0.7


def test_default_output_unchanged(three, tmp_path):
    """cameras=1 writes the same files, byte for byte, as the cameras=1 part of cameras=3."""
    generate_dataset(tmp_path, sequences=[SEQ], frames=FRAMES, seed=SEED, workers=1, progress=False)
    one, all3 = _files(tmp_path), _files(three)
    # the generator's options record differs by its cameras; every data file is compared below
    assert json.loads(one.pop("synthetic.json"))["cameras"] == 1
    assert json.loads(all3.pop("synthetic.json"))["cameras"] == 3
    extra_dirs = {f"{kind}_{k}" for kind in ("image", "semantic", "depth") for k in EXTRA}
    extra_masks = {f"image_{k}.{ext}" for k in EXTRA for ext in ("png", "json")}  # masks/SEQ/ID/<camera>.*

    def is_extra(name: str) -> bool:
        return name.split("/")[-2] in extra_dirs or (name.startswith("masks/") and name.split("/")[-1] in extra_masks)

    calib = f"dataset/sequences/{SEQ}/calib.txt"
    expected = sorted(name for name in all3 if not is_extra(name))
    assert sorted(one) == expected
    assert not any(is_extra(name) for name in one)
    for name in expected:
        if name != calib:
            assert one[name] == all3[name], name
    lines1 = one[calib].decode().splitlines()
    assert [line.split(":")[0] for line in lines1] == ["P0", "P1", "P2", "P3", "Tr"]
    assert all3[calib].decode().splitlines()[:5] == lines1


def test_resume_adds_the_extra_cameras(three, tmp_path):
    """A cameras=1 dataset extended with cameras=3 gets the same files as a fresh cameras=3 run."""
    generate_dataset(tmp_path, sequences=[SEQ], frames=1, seed=SEED, progress=False)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.*") if "/000000." in p.as_posix()}
    summary = generate_dataset(tmp_path, sequences=[SEQ], frames=1, seed=SEED, progress=False, cameras=3)
    assert summary["frames_written"] == 1
    # Only the extra cameras were written: the stereo, LiDAR and voxel files are untouched.
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    got = _files(tmp_path)
    ref = _files(three)
    names = [name for name in got if "/000000." in name]
    assert len(names) == len(before) + 3 * len(EXTRA)
    for name in names:
        assert got[name] == ref[name], name
    assert sk.read_calib(_seq(tmp_path) / "calib.txt", keys=("P4", "Tr_4", "P5", "Tr_5"))


@pytest.mark.parametrize("cameras", [0, 2, 4, -1, 1.0, True, "3"])
def test_bad_cameras(tmp_path, cameras):
    with pytest.raises(OccError) as e:
        generate_dataset(tmp_path / "x", sequences=[SEQ], frames=1, progress=False, cameras=cameras)
    assert "\n" not in str(e.value) and "cameras" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_cli_cameras(three, tmp_path):
    from occ_cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["prepare", "synthetic", "--out", str(tmp_path / "bad"), "--sequences", SEQ,
                            "--frames", "1", "--cameras", "2"])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cameras must be 1 or 3" in lines[0] and "Traceback" not in r.output
    assert not (tmp_path / "bad").exists()
    # --cameras 3 reaches the generator: on a finished copy nothing is rendered, and calib.txt
    # (rewritten every run) keeps the extra keys.
    copy = tmp_path / "copy"
    shutil.copytree(three, copy)
    r = runner.invoke(app, ["prepare", "synthetic", "--out", str(copy), "--sequences", SEQ, "--frames", str(FRAMES),
                            "--seed", str(SEED), "--cameras", "3"])
    assert r.exit_code == 0, r.output
    assert "frames_written: 0" in r.output
    assert _files(copy) == _files(three)
