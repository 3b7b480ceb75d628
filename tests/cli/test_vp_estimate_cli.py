"""`occ vp-estimate` end to end on a tiny dataset written here: both methods, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from occ_cli.main import app

import cv2  # noqa: E402  (a dependency: a missing cv2 fails, it does not skip)

runner = CliRunner()
VP = (640.0, 180.0)
CX, CY = 607.1928, 185.2157  # principal point of conftest.kitti_calib()


def _image(seed: int) -> np.ndarray:
    """1241x376 noise with segments on rays through VP (the road edges of a toy street)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(110, 12, (376, 1241, 3)).clip(0, 255).astype(np.uint8)
    for k in range(36):
        ang = np.radians(rng.choice([-1, 1]) * rng.uniform(20, 70) + rng.choice([0, 180]))
        r0 = rng.uniform(60, 400)
        p0 = np.array(VP) + r0 * np.array([np.cos(ang), np.sin(ang)])
        p1 = np.array(VP) + (r0 + rng.uniform(80, 250)) * np.array([np.cos(ang), np.sin(ang)])
        cv2.line(img, tuple(int(round(v * 16)) for v in p0), tuple(int(round(v * 16)) for v in p1),
                 (235, 235, 235) if k % 2 else (20, 20, 20), 2, cv2.LINE_AA, shift=4)
    return img


@pytest.fixture
def vp_data(tmp_path: Path) -> Path:
    from _raw import kitti_calib

    from occ_core.data.formats import semantickitti as sk

    root = tmp_path / "raw"
    seq = root / "dataset" / "sequences" / "00"
    (seq / "image_2").mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(seq / "image_2" / f"{i:06d}.png"), _image(i))
    sk.write_calib(seq / "calib.txt", kitti_calib())
    poses = np.tile(np.eye(4), (30, 1, 1))
    poses[:, 2, 3] = np.arange(30) * 1.0  # straight ahead along the optical axis
    sk.write_poses(seq / "poses.txt", poses)
    return root


def _lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def _run(*args: str):
    return runner.invoke(app, ["vp-estimate", *args])


def test_lines_end_to_end_resume_and_force(vp_data: Path, tmp_path: Path):
    out = tmp_path / "vp"
    r = _run("--data", str(vp_data), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "4 estimated, 0 already done" in r.output
    data = json.loads((out / "seq_00.json").read_text())
    assert sorted(data) == [f"SemanticKITTI/dataset/sequences/00/image_2/{i:06d}.png" for i in range(4)]
    for value in data.values():
        assert len(value) == 1 and len(value[0]) == 2
        assert np.hypot(value[0][0] - VP[0], value[0][1] - VP[1]) < 3.0, value
    before = (out / "seq_00.json").read_text()

    r = _run("--data", str(vp_data), "--out", str(out))  # resume: nothing to do
    assert r.exit_code == 0 and "0 estimated, 4 already done" in r.output, r.output
    assert (out / "seq_00.json").read_text() == before

    del data["SemanticKITTI/dataset/sequences/00/image_2/000002.png"]  # as if killed before these
    del data["SemanticKITTI/dataset/sequences/00/image_2/000003.png"]
    data["SemanticKITTI/dataset/sequences/00/image_2/000001.png"] = [[1.0, 2.0]]
    (out / "seq_00.json").write_text(json.dumps(data))
    r = _run("--data", str(vp_data / "dataset"), "--out", str(out), "--workers", "2")
    assert r.exit_code == 0 and "2 estimated, 2 already done" in r.output, r.output  # in 2 processes
    data = json.loads((out / "seq_00.json").read_text())
    key = "SemanticKITTI/dataset/sequences/00/image_2/{}.png".format
    assert len(data) == 4 and data[key("000001")] == [[1.0, 2.0]]  # kept, not recomputed
    assert all(data[key(f)] == json.loads(before)[key(f)] for f in ("000002", "000003"))  # same in workers

    r = _run("--data", str(vp_data), "--out", str(out), "--force", "--sequences", "0")
    assert r.exit_code == 0 and "4 estimated, 0 already done" in r.output, r.output
    assert json.loads((out / "seq_00.json").read_text())["SemanticKITTI/dataset/sequences/00/image_2/000001.png"] != [[1.0, 2.0]]


def test_pose_end_to_end(vp_data: Path, tmp_path: Path):
    out = tmp_path / "vp"
    r = _run("--data", str(vp_data / "dataset" / "sequences"), "--out", str(out), "--method", "pose")
    assert r.exit_code == 0, r.output
    from occ_core.vp.io import read_vp_dir

    vps = read_vp_dir(out)
    assert sorted(vps) == [("00", f"{i:06d}") for i in range(4)]
    for x, y in vps.values():
        assert abs(x - CX) < 1e-3 and abs(y - CY) < 1e-3


def _one_error_line(result, *needles: str) -> None:
    assert result.exit_code != 0, result.output
    lines = _lines(result)
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_errors_are_one_line(vp_data: Path, tmp_path: Path):
    out = str(tmp_path / "vp")
    seqs = vp_data / "dataset" / "sequences"
    _one_error_line(_run("--data", str(tmp_path / "nope"), "--out", out), "nope", "folder not found")
    _one_error_line(_run("--data", str(vp_data), "--out", out, "--sequences", "05"), "sequence 05 not found")
    _one_error_line(_run("--data", str(vp_data), "--out", out, "--method", "magic"), "unknown method 'magic'")

    (seqs / "01").mkdir()
    _one_error_line(_run("--data", str(vp_data), "--out", out), "01", "image_2")
    _one_error_line(_run("--data", str(vp_data), "--out", out, "--sequences", "01"), "no image_2 folder")
    (seqs / "01").rmdir()

    (seqs / "00" / "poses.txt").rename(seqs / "00" / "poses.bak")
    _one_error_line(_run("--data", str(vp_data), "--out", out, "--method", "pose"), "poses.txt", "not found")
    (seqs / "00" / "poses.bak").rename(seqs / "00" / "poses.txt")
    (seqs / "00" / "poses.txt").write_text("1 0 0\n")
    _one_error_line(_run("--data", str(vp_data), "--out", out, "--method", "pose"), "poses.txt", "3 numbers, expected 12")

    Path(out).mkdir()
    (Path(out) / "seq_00.json").write_text("{broken")
    _one_error_line(_run("--data", str(vp_data), "--out", out), "seq_00.json", "invalid JSON")
    assert (Path(out) / "seq_00.json").read_text() == "{broken"  # left alone

    (seqs / "00" / "image_2" / "000003.png").write_bytes(b"not a png")
    _one_error_line(_run("--data", str(vp_data), "--out", out, "--force"), "000003.png", "cannot read image")
    # the frames finished before the failure are kept
    kept = json.loads((Path(out) / "seq_00.json").read_text())
    assert len(kept) == 3
