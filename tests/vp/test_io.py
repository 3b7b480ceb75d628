"""VPOcc vanishing point files: round trip, published-format compatibility, malformed files."""

from __future__ import annotations

import json
import os.path as osp
from pathlib import Path

import pytest

from occ_core.errors import FormatError, MissingError
from occ_core.vp import io as vpio


def test_round_trip(tmp_path: Path):
    points = {"000005": (600.123456, 180.5), "000000": (612.0, 185.2157)}
    path = tmp_path / "vp" / "seq_08.json"
    vpio.write_vp_file(path, "08", points)
    back = vpio.read_vp_file(path)
    assert set(back) == {("08", "000000"), ("08", "000005")}
    assert back[("08", "000005")] == pytest.approx((600.1235, 180.5))
    assert back[("08", "000000")] == (612.0, 185.2157)
    assert vpio.sequence_points(back, "08")["000000"] == (612.0, 185.2157)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_written_file_is_the_published_format(tmp_path: Path):
    vpio.write_vp_file(tmp_path / "seq_00.json", "00", {"000000": (602.5, 175.25)})
    data = json.loads((tmp_path / "seq_00.json").read_text())
    assert data == {"SemanticKITTI/dataset/sequences/00/image_2/000000.png": [[602.5, 175.25]]}
    # exactly how VPOcc's SemanticKITTI loader looks a frame up
    base_dict = "SemanticKITTI/dataset/sequences/" + "00" + "/image_2"
    assert data[osp.join(base_dict, "000000" + ".png")][0] == [602.5, 175.25]


def test_reads_published_kitti_and_kitti360_files(tmp_path: Path):
    (tmp_path / "seq_00.json").write_text(json.dumps({
        "SemanticKITTI/dataset/sequences/00/image_2/000000.png": [[609.47, 171.88]],
        "SemanticKITTI/dataset/sequences/00/image_2/000005.png": [[606.0, 172.5]],
    }))
    (tmp_path / "seq_2013_05_28_drive_0000_sync.json").write_text(json.dumps({
        "KITTI-360/2013_05_28_drive_0000_sync/image_00/000000.png": [[702.0, 240.5]],
    }))
    (tmp_path / "notes.txt").write_text("not a vp file")
    vps = vpio.read_vp_dir(tmp_path)
    assert vps == {("00", "000000"): (609.47, 171.88), ("00", "000005"): (606.0, 172.5),
                   ("2013_05_28_drive_0000_sync", "000000"): (702.0, 240.5)}
    assert set(vpio.read_vp_dir(tmp_path, sequences=["00"])) == {("00", "000000"), ("00", "000005")}
    assert vpio.vp_key("2013_05_28_drive_0000_sync", "000000") == "KITTI-360/2013_05_28_drive_0000_sync/image_00/000000.png"


def test_key_helpers():
    assert vpio.vp_key("08", "000123") == "SemanticKITTI/dataset/sequences/08/image_2/000123.png"
    assert vpio.parse_vp_key("SemanticKITTI/dataset/sequences/08/image_2/000123.png") == ("08", "000123")
    assert vpio.parse_vp_key("/abs/data/dataset/sequences/08/image_2/000123.png") == ("08", "000123")
    assert vpio.parse_vp_key("KITTI-360/2013_05_28_drive_0009_sync/image_00/data_rect/0000000042.png") == (
        "2013_05_28_drive_0009_sync", "0000000042")
    assert vpio.parse_vp_key("somewhere/else.png") is None


def test_tolerates_a_flat_point(tmp_path: Path):
    path = tmp_path / "seq_01.json"
    path.write_text(json.dumps({"SemanticKITTI/dataset/sequences/01/image_2/000000.png": [600, 180]}))
    assert vpio.read_vp_file(path) == {("01", "000000"): (600.0, 180.0)}


@pytest.mark.parametrize("content,message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"foo.png": [[1, 2]]}', "entry 'foo.png'"),
    ('{"SemanticKITTI/dataset/sequences/00/image_2/000000.png": [[1]]}', "expected [[x, y]]"),
    ('{"SemanticKITTI/dataset/sequences/00/image_2/000000.png": "x"}', "expected [[x, y]]"),
    ('{"SemanticKITTI/dataset/sequences/00/image_2/000000.png": [[NaN, 1]]}', "finite"),
])
def test_malformed_file_names_it(tmp_path: Path, content: str, message: str):
    path = tmp_path / "seq_00.json"
    path.write_text(content)
    with pytest.raises(FormatError) as e:
        vpio.read_vp_file(path)
    assert str(path) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_folder(tmp_path: Path):
    with pytest.raises(MissingError):
        vpio.read_vp_file(tmp_path / "seq_00.json")
    with pytest.raises(MissingError):
        vpio.read_vp_dir(tmp_path / "nope")
