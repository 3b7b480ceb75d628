"""SemanticKITTI SSC submission zips: validation against the split and the server's layout."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from occ_core.data.formats import semantickitti as sk
from occ_core.errors import OccError

TEST_FRAMES = [("11", "000000"), ("11", "000005"), ("15", "000010")]


def write_manifest(root: Path, frames=TEST_FRAMES, dataset: str = "semantickitti") -> Path:
    """A minimal prepared folder: the manifest is all the submission export reads."""
    from occ_core.data.formats import kitti360, semantickitti
    from occ_core.data.prepare.layout import FORMAT_NAME, FORMAT_VERSION, split_of

    root.mkdir(parents=True, exist_ok=True)
    spec = (kitti360 if dataset == "kitti360" else semantickitti).dataset_spec()
    records = [{"sequence": s, "id": i, "split": split_of(s, spec.splits), "labeled": False, "files": {}}
               for s, i in frames + [("08", "000000")]]
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "dataset": dataset, "source": ".",
                "spec": spec.to_json(), "frames": records}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def random_classes(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(sk.GRID_SHAPE) < 0.3, rng.integers(0, 20, sk.GRID_SHAPE), 0).astype(np.uint8)


def write_preds(pred: Path, frames=TEST_FRAMES, npy_for: tuple[str, str] | None = None) -> dict[tuple[str, str], np.ndarray]:
    classes = {}
    for k, (seq, fid) in enumerate(frames):
        c = random_classes(k)
        classes[(seq, fid)] = c
        folder = pred / "sequences" / seq / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        if (seq, fid) == npy_for:
            np.save(folder / f"{fid}.npy", c.astype(np.int64))
        else:
            sk.inverse_remap(c).astype("<u2").tofile(folder / f"{fid}.label")
    return classes


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "prepared")


def test_zip_has_the_server_layout_and_round_trips(data: Path, tmp_path: Path):
    from occ_core.data.formats.submission import check_zip, write_submission

    pred = tmp_path / "pred"
    classes = write_preds(pred, npy_for=("15", "000010"))
    out = tmp_path / "sub" / "submission.zip"
    summary = write_submission(pred, out, data, "test", description="method: test\n")
    assert summary["frames"] == 3 and summary["label_files"] == 2 and summary["npy_files"] == 1
    assert check_zip(out, TEST_FRAMES) == []  # semantic-kitti-api validate_submission.py --task completion
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert {"sequences/", "sequences/11/", "sequences/11/predictions/", "sequences/15/predictions/"} <= set(names)
        assert "description.txt" in names and zf.read("description.txt") == b"method: test\n"
        for (seq, fid), c in classes.items():
            raw = np.frombuffer(zf.read(f"sequences/{seq}/predictions/{fid}.label"), dtype="<u2")
            assert raw.size == sk.N_VOXELS
            np.testing.assert_array_equal(sk.remap_labels(raw).reshape(sk.GRID_SHAPE), c)  # .npy converted too
    assert [p.name for p in out.parent.iterdir()] == ["submission.zip"]  # atomic: no temporary left


def test_problems_are_listed_with_file_names_and_nothing_is_written(data: Path, tmp_path: Path):
    from occ_core.data.formats.submission import SubmissionError, validate_predictions, write_submission

    pred = tmp_path / "pred"
    write_preds(pred, frames=TEST_FRAMES[:2])  # 15/000010 missing
    folder = pred / "sequences" / "11" / "predictions"
    bad = sk.inverse_remap(random_classes(9))
    bad.reshape(-1)[:7] = 252  # moving-car: a raw id, but not a benchmark class
    bad.astype("<u2").tofile(folder / "000005.label")
    (folder / "000001.label").write_bytes(b"\0" * 10)  # not a frame of the split
    report = validate_predictions(pred, data, "test")
    assert not report.ok and len(report.problems) == 3
    text = str(report.error())
    assert "15/predictions/000010.label: missing" in text
    assert "000005.label: raw id 252 ('moving-car') is not a benchmark class (7 voxels)" in text
    assert "000001.label: not a frame of split 'test'" in text and "\n" not in text
    out = tmp_path / "submission.zip"
    with pytest.raises(SubmissionError):
        write_submission(pred, out, data, "test")
    assert not out.exists() and not list(tmp_path.glob(".*.tmp*"))


@pytest.mark.parametrize("what, expect", [
    ("short", "bytes, expected 4194304"),
    ("npy_range", "class index 20 outside 0..19"),
    ("npy_shape", "shape (256, 256), expected (256, 256, 32)"),
    ("npy_float", "dtype float32, expected integer"),
])
def test_file_checks(data: Path, tmp_path: Path, what: str, expect: str):
    from occ_core.data.formats.submission import validate_predictions

    pred = tmp_path / "pred"
    write_preds(pred)
    folder = pred / "sequences" / "11" / "predictions"
    (folder / "000000.label").unlink()
    if what == "short":
        np.zeros(100, "<u2").tofile(folder / "000000.label")
    elif what == "npy_range":
        c = random_classes(0).astype(np.int32)
        c[0, 0, 0] = 20
        np.save(folder / "000000.npy", c)
    elif what == "npy_shape":
        np.save(folder / "000000.npy", np.zeros((256, 256), np.uint8))
    else:
        np.save(folder / "000000.npy", np.zeros(sk.GRID_SHAPE, np.float32))
    report = validate_predictions(pred, data, "test")
    assert len(report.problems) == 1 and "000000" in report.problems[0] and expect in report.problems[0], report.problems


def test_options_and_other_datasets(tmp_path: Path):
    from occ_core.data.formats.submission import validate_predictions, write_submission

    pred = tmp_path / "pred"
    write_preds(pred)
    with pytest.raises(OccError, match="must be a .zip"):
        write_submission(pred, tmp_path / "sub.tar", write_manifest(tmp_path / "a"), "test")
    with pytest.raises(OccError, match="for SemanticKITTI; the prepared data is 'kitti360'"):
        validate_predictions(pred, write_manifest(tmp_path / "b", dataset="kitti360"), "test")
    with pytest.raises(OccError, match="no 'sequences' folder"):
        validate_predictions(tmp_path / "a", None, "test")
    report = validate_predictions(pred, None, "test")  # no prepared data: the files found, completeness unchecked
    assert report.ok and report.frames == 3 and report.unchecked_split
