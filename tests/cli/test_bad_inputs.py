"""Bad inputs as users meet them (issue 13): every case ends as ONE line ``error: <path>: <problem>``,
exit status 2, no traceback, and nothing created or changed on disk (the whole case folder is
snapshotted before and after; the command runs with that folder as its working directory).

The table covers the subcommands whose inputs are checked here: prepare kitti / kitti360 / synthetic,
render, vp-estimate, eval (--pred, --json), predict (--out), quickstart (--out, --method, --set), and
train --config (the checked YAML reader). A case is (id, argv builder, text the error line must hold).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from occ_cli.main import app

runner = CliRunner()
GARBAGE = bytes(range(256)) * 4  # not UTF-8, NUL bytes, no structure


# ------------------------------------------------------------------------------------------------
# Fixtures: one tiny raw SemanticKITTI sequence (08, one labeled frame, an image), prepared once;
# every case works on its own copy.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    import cv2
    from _raw import write_raw_sequence

    from occ_core.data.prepare.pipeline import prepare_kitti

    root = tmp_path_factory.mktemp("bad_inputs")
    raw = root / "raw"
    seq = write_raw_sequence(raw, "08", [0], np.random.default_rng(0))
    (seq / "image_2").mkdir()
    cv2.imwrite(str(seq / "image_2" / "000000.png"), np.full((376, 1241, 3), 100, np.uint8))
    prepare_kitti(raw, root / "prepared", workers=1, progress=False)
    k360 = root / "raw360"
    (k360 / "data_2d_raw").mkdir(parents=True)
    (k360 / "calibration").mkdir()
    (k360 / "calibration" / "calib_cam_to_velo.txt").write_text(" ".join(["0.5"] * 12) + "\n")
    (k360 / "calibration" / "perspective.txt").write_text(
        "P_rect_00: " + " ".join(["1"] * 12) + "\nP_rect_01: " + " ".join(["1"] * 12) + "\n")
    return root


class Case:
    """Paths of one case under its own folder; raw / prepared copies are made on first use."""

    def __init__(self, base: Path, root: Path):
        self.base, self.root = base, root
        self.file = root / "F"  # an existing FILE where a folder (or a file's folder) is expected
        self.file.write_text("not a folder\n")
        self.empty = root / "empty"  # a prediction folder without predictions
        (self.empty / "sequences").mkdir(parents=True)

    def _copy(self, name: str) -> Path:
        dst = self.root / name
        if not dst.exists():
            shutil.copytree(self.base / name, dst)
        return dst

    @property
    def raw(self) -> Path:
        return self._copy("raw")

    @property
    def raw360(self) -> Path:
        return self._copy("raw360")

    @property
    def prepared(self) -> Path:
        return self._copy("prepared")

    @property
    def seq(self) -> Path:
        return self.raw / "dataset" / "sequences" / "08"

    @property
    def manifest(self) -> Path:
        return self.prepared / "manifest.json"

    @property
    def frame_npz(self) -> Path:
        return self.prepared / "sequences" / "08" / "frames" / "000000.npz"

    @property
    def geometry(self) -> Path:
        return self.prepared / "sequences" / "08" / "geometry.npz"

    def edit_manifest(self, change: Callable[[dict], object]) -> Path:
        """Apply ``change`` (which mutates the manifest data in place) and write the manifest back."""
        data = json.loads(self.manifest.read_text())
        change(data)
        self.manifest.write_text(json.dumps(data))
        return self.manifest

    def s(self, p: Path) -> str:
        return str(p)


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _damage_member(path: Path) -> Path:
    """Flip bytes inside the compressed data of the first member (the zip directory stays intact, so
    np.load opens it and fails only when the array is read)."""
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 16, min(start + 16 + 64, start + info.compress_size)):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def _eval(c: Case, *extra: str) -> list[str]:
    return ["eval", "--data", c.s(c.prepared), "--pred", c.s(c.empty), "--allow-missing", *extra]


def _render(c: Case, *extra: str) -> list[str]:
    return ["render", "--data", c.s(c.prepared), "--frame", "08/000000", "--out", c.s(c.root / "pics"),
            "--views", "bev", *extra]


def _vp_pose(c: Case) -> list[str]:
    return ["vp-estimate", "--data", c.s(c.raw), "--out", c.s(c.root / "vp"), "--method", "pose"]


def _quickstart(c: Case, *extra: str) -> list[str]:
    return ["quickstart", "--out", c.s(c.root / "qs"), "--frames", "1", *extra]


def _set_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _vp_out(c: Case, content: bytes) -> list[str]:
    _set_bytes(c.root / "vp" / "seq_08.json", content)
    return _vp_pose(c)


def _bad_record(c: Case, key: str, value) -> Path:
    def change(d):
        d["frames"][0][key] = value
    return c.edit_manifest(change)


# (id, setup(case) -> (argv, text the error line must contain)); the setup may damage files first.
CASES: list[tuple[str, Callable[[Case], tuple[list[str], str]]]] = [
    # 1. output paths: an existing file where a folder is expected (checked before any work)
    ("prepare-kitti-out-file", lambda c: (["prepare", "kitti", "--root", c.s(c.raw), "--out", c.s(c.file)], c.s(c.file))),
    ("prepare-kitti-out-under-file", lambda c: (["prepare", "kitti", "--root", c.s(c.raw), "--out", c.s(c.file / "o")],
                                                c.s(c.file / "o"))),
    ("prepare-kitti360-out-file", lambda c: (["prepare", "kitti360", "--root", c.s(c.raw360), "--out", c.s(c.file)],
                                             c.s(c.file))),
    ("prepare-synthetic-out-file", lambda c: (["prepare", "synthetic", "--out", c.s(c.file), "--frames", "1"], c.s(c.file))),
    ("prepare-synthetic-prepared-file", lambda c: (["prepare", "synthetic", "--out", c.s(c.root / "syn"), "--frames", "1",
                                                    "--prepared", c.s(c.file)], c.s(c.file))),
    ("render-out-file", lambda c: (["render", "--data", c.s(c.prepared), "--frame", "08/000000", "--out", c.s(c.file)],
                                   c.s(c.file))),
    ("render-out-under-file", lambda c: (["render", "--data", c.s(c.prepared), "--frame", "08/000000",
                                          "--out", c.s(c.file / "pics")], c.s(c.file / "pics"))),
    ("vp-estimate-out-file", lambda c: (["vp-estimate", "--data", c.s(c.raw), "--out", c.s(c.file)], c.s(c.file))),
    ("predict-out-file", lambda c: (["predict", "--run", c.s(c.root / "run"), "--out", c.s(c.file)], c.s(c.file))),
    ("quickstart-out-file", lambda c: (["quickstart", "--out", c.s(c.file)], c.s(c.file))),
    ("eval-json-parent-is-file", lambda c: (_eval(c, "--json", c.s(c.file / "e.json")), c.s(c.file / "e.json"))),
    ("train-out-file", lambda c: (["train", "--data", c.s(c.prepared), "--out", c.s(c.file)], c.s(c.file))),
    ("pretrain-binary-out-file", lambda c: (["pretrain-binary", "--data", c.s(c.prepared), "--out", c.s(c.file)],
                                            c.s(c.file))),
    # 2. binary garbage in text files
    ("prepare-kitti-calib-garbage", lambda c: (["prepare", "kitti", "--root", c.s(c.raw), "--out", c.s(c.root / "o")],
                                               c.s(_set_bytes(c.seq / "calib.txt", GARBAGE)))),
    ("vp-pose-calib-garbage", lambda c: (_vp_pose(c), c.s(_set_bytes(c.seq / "calib.txt", GARBAGE)))),
    ("vp-pose-poses-garbage", lambda c: (_vp_pose(c), c.s(_set_bytes(c.seq / "poses.txt", GARBAGE)))),
    ("prepare-kitti360-cam-to-velo-garbage", lambda c: (
        ["prepare", "kitti360", "--root", c.s(c.raw360), "--out", c.s(c.root / "o")],
        c.s(_set_bytes(c.raw360 / "calibration" / "calib_cam_to_velo.txt", GARBAGE)))),
    ("prepare-kitti360-perspective-garbage", lambda c: (
        ["prepare", "kitti360", "--root", c.s(c.raw360), "--out", c.s(c.root / "o")],
        c.s(_set_bytes(c.raw360 / "calibration" / "perspective.txt", GARBAGE)))),
    ("vp-estimate-vp-file-garbage", lambda c: (_vp_out(c, GARBAGE), "seq_08.json: not UTF-8 text")),
    ("eval-manifest-garbage", lambda c: (_eval(c), c.s(_set_bytes(c.manifest, GARBAGE)))),
    ("render-manifest-garbage", lambda c: (_render(c), c.s(_set_bytes(c.manifest, GARBAGE)))),
    ("eval-manifest-invalid-json", lambda c: (_eval(c), c.s(_set_bytes(c.manifest, b'{"format": "occ-prepared",\n')))),
    ("train-config-garbage", lambda c: (["train", "--data", c.s(c.prepared), "--out", c.s(c.root / "runs"),
                                         "--config", c.s(_set_bytes(c.root / "c.yaml", GARBAGE))], "c.yaml: not UTF-8")),
    ("train-config-invalid-yaml", lambda c: (["train", "--data", c.s(c.prepared), "--out", c.s(c.root / "runs"),
                                              "--config", c.s(_set_bytes(c.root / "c.yaml", b"optim: [1, 2\n"))],
                                             "c.yaml: invalid YAML")),
    # 3. valid JSON / YAML of the wrong shape
    ("eval-manifest-is-a-list", lambda c: (_eval(c), c.s(_set_bytes(c.manifest, b"[1, 2]")))),
    ("eval-frame-record-without-id", lambda c: (_eval(c), c.s(c.edit_manifest(lambda d: d["frames"][0].pop("id")))
                                                + ": frame record 0: missing key 'id'")),
    ("eval-frame-record-not-object", lambda c: (_eval(c), c.s(c.edit_manifest(lambda d: d.update(frames=[3])))
                                                + ": frame record 0: expected a JSON object")),
    ("eval-frames-not-a-list", lambda c: (_eval(c), c.s(c.edit_manifest(lambda d: d.update(frames={"a": 1}))))),
    ("vp-estimate-vp-file-list", lambda c: (_vp_out(c, b"[1, 2]"), "seq_08.json: expected a JSON object")),
    ("train-config-yaml-list", lambda c: (["train", "--data", c.s(c.prepared), "--out", c.s(c.root / "runs"),
                                           "--config", c.s(_set_bytes(c.root / "c.yaml", b"- 1\n- 2\n"))],
                                          "c.yaml: expected a mapping")),
    # 4. truncated or damaged prepared arrays
    ("eval-frame-npz-truncated", lambda c: (_eval(c), c.s(_truncate(c.frame_npz)))),
    ("eval-frame-npz-damaged-member", lambda c: (_eval(c), c.s(_damage_member(c.frame_npz)))),
    ("eval-frame-npz-garbage", lambda c: (_eval(c), c.s(_set_bytes(c.frame_npz, GARBAGE)) + ": not an .npz archive")),
    ("eval-frame-npz-empty", lambda c: (_eval(c), c.s(_set_bytes(c.frame_npz, b"")) + ": not an .npz archive")),
    ("render-frame-npz-truncated", lambda c: (_render(c), c.s(_truncate(c.frame_npz)))),
    ("render-geometry-truncated", lambda c: (_render(c)[:-2] + ["--views", "sensor"], c.s(_truncate(c.geometry)))),
    ("eval-fov-geometry-damaged", lambda c: (_eval(c, "--fov-only"), c.s(_damage_member(c.geometry)))),
    # 5. names from files must stay inside their folder
    ("eval-frame-id-escapes", lambda c: (_eval(c), c.s(_bad_record(c, "id", "../../../../../escape/x")))),
    ("eval-sequence-escapes", lambda c: (_eval(c), c.s(_bad_record(c, "sequence", "../../x")))),
    ("eval-sequence-absolute", lambda c: (_eval(c), c.s(_bad_record(c, "sequence", "/tmp/x")))),
    ("render-frame-id-backslash", lambda c: (_render(c), c.s(_bad_record(c, "id", "..\\..\\x")))),
    # 6. --set, checked before any data is generated (quickstart) or any training
    ("quickstart-set-without-equals", lambda c: (_quickstart(c, "--set", "optim.lr"), "expected key=value")),
    ("quickstart-set-model-without-equals", lambda c: (_quickstart(c, "--set", "model.backbone.name"), "expected key=value")),
    ("quickstart-set-bad-type", lambda c: (_quickstart(c, "--set", "optim.lr=abc"), "--set optim.lr: expected a number")),
    ("quickstart-set-unknown-model-key", lambda c: (_quickstart(c, "--set", "model.backbone.nam=1"),
                                                    "--set model.backbone: unknown key 'nam'")),
    ("quickstart-set-batch-size-0", lambda c: (_quickstart(c, "--set", "optim.batch_size=0"), "optim.batch_size=0")),
    ("quickstart-set-image-scale-0", lambda c: (_quickstart(c, "--set", "data.image_scale=0"), "data.image_scale=0.0: must be > 0")),
    ("quickstart-set-backbone-name", lambda c: (_quickstart(c, "--set", "model.backbone.name=resnet999"),
                                                "must be one of resnet101, resnet18, resnet34, resnet50")),
    ("quickstart-set-loss-scale", lambda c: (_quickstart(c, "--set", "model.loss_scale=3"), "model.loss_scale=3")),
    # 5. names from users stay inside their folder
    ("train-name-escapes", lambda c: (["train", "--data", c.s(c.prepared), "--out", c.s(c.root / "runs"),
                                       "--name", "../../escape_run"], "../../escape_run")),
    ("pretrain-binary-name-escapes", lambda c: (["pretrain-binary", "--data", c.s(c.prepared), "--out",
                                                 c.s(c.root / "runs"), "--name", "../escape"], "../escape")),
    ("train-set-batch-size-0", lambda c: (["train", "--data", c.s(c.prepared), "--out", c.s(c.root / "runs"),
                                           "--set", "optim.batch_size=0"], "optim.batch_size=0")),
    # 7. validated before the first stage
    ("quickstart-unknown-method", lambda c: (_quickstart(c, "--method", "foo"), "unknown method 'foo'")),
    ("quickstart-unknown-preset", lambda c: (_quickstart(c, "--preset", "huge"), "no preset 'huge'")),
    # already passing before issue 13 (kept so they stay that way)
    ("prepare-kitti-root-missing", lambda c: (["prepare", "kitti", "--root", c.s(c.root / "nope"), "--out", c.s(c.root / "o")],
                                              c.s(c.root / "nope"))),
    ("prepare-kitti360-root-missing", lambda c: (["prepare", "kitti360", "--root", c.s(c.root / "nope"),
                                                  "--out", c.s(c.root / "o")], c.s(c.root / "nope"))),
    ("prepare-kitti-bad-depth", lambda c: (["prepare", "kitti", "--root", c.s(c.raw), "--out", c.s(c.root / "o"),
                                            "--depth", "laser"], "--depth must be 'lidar' or 'sgbm'")),
    ("render-pred-and-run", lambda c: (["render", "--data", c.s(c.prepared), "--frame", "08/000000", "--out", c.s(c.root / "p"),
                                        "--pred", c.s(c.empty), "--run", c.s(c.root / "run")], "not both")),
    ("render-unknown-frame", lambda c: (_render(c)[:4] + ["99/000000"] + _render(c)[5:], "no frame '99/000000'")),
    ("render-data-missing", lambda c: (["render", "--data", c.s(c.root / "nope"), "--frame", "08/000000",
                                        "--out", c.s(c.root / "p")], c.s(c.root / "nope"))),
    ("vp-estimate-unknown-method", lambda c: (["vp-estimate", "--data", c.s(c.raw), "--out", c.s(c.root / "vp"),
                                               "--method", "magic"], "unknown method 'magic'")),
    ("eval-pred-missing", lambda c: (["eval", "--data", c.s(c.prepared), "--pred", c.s(c.root / "nope")], "nope")),
    ("predict-run-missing", lambda c: (["predict", "--run", c.s(c.root / "run"), "--out", c.s(c.root / "p")],
                                       c.s(c.root / "run"))),
]


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (p.is_dir(), 0 if p.is_dir() else st.st_size, st.st_mtime_ns)
    return out


def _id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("case_id, setup", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_is_one_error_line(case_id: str, setup, base: Path, tmp_path: Path, monkeypatch):
    case = Case(base, tmp_path)
    argv, needle = setup(case)
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory is seen too
    before = _snapshot(tmp_path)
    result = runner.invoke(app, argv)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle in lines[0], (needle, lines[0])
    assert ".tmp" not in lines[0] and "optim.optim" not in lines[0]
    assert _snapshot(tmp_path) == before, "files were created or changed by a refused run"


def test_prepare_refusals_are_one_line(raw_kitti: Path, tmp_path: Path):
    """A truncated voxel file of the last frame: one line, nothing written; other --depth: one line
    naming prepare.json."""
    out = tmp_path / "prep"
    bad = raw_kitti / "dataset" / "sequences" / "08" / "voxels" / "000010.occluded"
    good = bad.read_bytes()
    bad.write_bytes(good[:100])
    r = runner.invoke(app, ["prepare", "kitti", "--root", str(raw_kitti), "--out", str(out)])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [f"error: {bad}: wrong file size: 100 bytes, expected 262144"]
    assert not out.exists() or not any(out.rglob("*"))
    bad.write_bytes(good)
    r = runner.invoke(app, ["prepare", "kitti", "--root", str(raw_kitti), "--out", str(out), "--sequences", "00"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["prepare", "kitti", "--root", str(raw_kitti), "--out", str(out), "--sequences", "00",
                            "--depth", "sgbm"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"error: {out / 'prepare.json'}: prepared with --depth lidar; add --force to redo it with --depth sgbm"]
