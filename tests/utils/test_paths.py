"""The output-path rule and plain names (occ_core.utils.paths)."""

from __future__ import annotations

from pathlib import Path

import pytest

from occ_core.errors import OccError
from occ_core.utils.paths import is_plain_name, output_dir, output_file, safe_name


def test_output_dir(tmp_path: Path):
    f = tmp_path / "F"
    f.write_text("x")
    assert output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert output_dir(tmp_path) == tmp_path
    with pytest.raises(OccError, match="exists and is not a folder") as e:
        output_dir(f, "prepared data folder")
    assert str(e.value).startswith(str(f)) and "prepared data folder" in str(e.value)
    with pytest.raises(OccError, match="is a file, not a folder"):
        output_dir(f / "sub" / "x")
    assert not (tmp_path / "new").exists()  # checked, never created


def test_output_file(tmp_path: Path):
    f = tmp_path / "F"
    f.write_text("x")
    assert output_file(f) == f  # overwriting a file is fine
    assert output_file(tmp_path / "a" / "b.json") == tmp_path / "a" / "b.json"
    with pytest.raises(OccError, match="is a folder"):
        output_file(tmp_path, "results file")
    with pytest.raises(OccError, match="is a file, not a folder") as e:
        output_file(f / "e.json", "results file")
    assert str(e.value).startswith(str(f / "e.json"))


@pytest.mark.parametrize("name", ["", ".", "..", "../../escape_run", "a/b", "a\\b", "/abs", "C:x", "C:\\x", "x\0y"])
def test_safe_name_rejects(name: str):
    assert not is_plain_name(name)
    with pytest.raises(OccError, match="run name .* must be a plain name"):
        safe_name(name, "run name")


@pytest.mark.parametrize("name", ["run1", "vpocc-tiny-20240101-120000", "a.b", "..hidden", "00"])
def test_safe_name_accepts(name: str):
    assert safe_name(name) == name
