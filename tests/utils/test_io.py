"""The checked text / JSON / YAML readers (occ_core.utils.io) and the atomic writer's error paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from occ_core.errors import FormatError, MissingError, OccError
from occ_core.utils.atomic import atomic_path, write_text
from occ_core.utils.io import check_kind, read_json, read_text, read_yaml


@pytest.mark.parametrize("data, problem", [
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    (b"P2: 1 2 3\x00\x00", "NUL byte"),
])
def test_read_text_rejects_binary(tmp_path: Path, data: bytes, problem: str):
    p = tmp_path / "calib.txt"
    p.write_bytes(data)
    with pytest.raises(FormatError, match=problem) as e:
        read_text(p, "calibration file")
    assert str(p) in str(e.value) and e.value.path == p


def test_read_text_missing_folder_and_bom(tmp_path: Path):
    with pytest.raises(MissingError, match="not found"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(FormatError, match="is a folder"):
        read_text(tmp_path)
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert read_text(tmp_path / "bom.txt") == "hello"


@pytest.mark.parametrize("text, expect, problem", [
    ('{"a": 1,\n "b": }', dict, "invalid JSON at line 2"),
    ("[1, 2]", dict, "expected a JSON object .* got a JSON list"),
    ('{"a": 1}', list, "expected a JSON list .* got a JSON object"),
    ("true", (dict, list), "got true or false"),
])
def test_read_json_errors(tmp_path: Path, text: str, expect, problem: str):
    p = tmp_path / "x.json"
    p.write_text(text)
    with pytest.raises(FormatError, match=problem):
        read_json(p, "thing", expect=expect)


def test_read_json_ok_and_check_kind(tmp_path: Path):
    p = tmp_path / "x.json"
    p.write_text('{"a": [1, 2]}')
    assert read_json(p, expect=dict) == {"a": [1, 2]}
    with pytest.raises(FormatError, match="frames: expected a JSON list, got a JSON object"):
        check_kind({}, list, p, "frames")


@pytest.mark.parametrize("text, problem", [
    ("a: [1, 2\n", "invalid YAML at line"),
    ("- 1\n- 2\n", "expected a mapping .* got a list"),
])
def test_read_yaml_errors(tmp_path: Path, text: str, problem: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(FormatError, match=problem):
        read_yaml(p)
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml") == {}


def test_atomic_errors_name_the_users_path(tmp_path: Path):
    blocker = tmp_path / "F"
    blocker.write_text("x")
    with pytest.raises(OccError, match="is a file, not a folder") as e:
        write_text(blocker / "e.json", "{}")
    assert str(e.value).startswith(str(blocker / "e.json"))
    target = tmp_path / "out.txt"
    with pytest.raises(OccError) as e:
        with atomic_path(target) as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    assert str(e.value) == f"{target}: cannot write (No space left on device)"
    with pytest.raises(FormatError) as e:
        with atomic_path(target) as tmp:
            raise FormatError("bad", tmp)
    assert ".tmp" not in str(e.value) and str(e.value) == f"{target}: bad"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["F"]  # no temporary file left


def test_atomic_onto_a_folder(tmp_path: Path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OccError, match="is a folder"):
        write_text(tmp_path / "d", "x")
