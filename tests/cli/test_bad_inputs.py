"""Bad inputs as users meet them (issue 13): every case ends as ONE line ``error: <path>: <problem>``,
exit status 2, no traceback, and nothing created or changed on disk (the whole case folder is
snapshotted before and after; the command runs with that folder as its working directory).

The table covers every subcommand: prepare kitti / kitti360 / synthetic (both layouts) / occ3d /
openoccupancy / surroundocc / masks, render, vp-estimate, eval (--pred, --run, --json, the Occ3D options),
predict, export, quickstart, train (--config, --set of every method's own fields, --resume) and
pretrain-binary. A case is (id, argv builder, text the error line must hold). Usage errors of typer itself
(unknown option, missing option or value, a value of the wrong type) are checked for every subcommand by
``test_usage_error_is_one_line``. The shared inputs (the tiny SemanticKITTI sequence, the synthetic surround
dataset, a run folder) are snapshotted too: a refused run changes nothing anywhere.
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


SMALL = ["data.image_scale=0.15", "model.lifting.stride=8", "model.lifting.embed_dims=16", "model.lifting.num_heads=2"]


@pytest.fixture(scope="module")
def run(base: Path) -> Path:
    """A baseline run folder (config.yaml + a freshly initialised checkpoint) on the tiny prepared folder."""
    import dataclasses
    import warnings

    import torch

    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.checkpoint import save_checkpoint
    from occ_core.engine.config import build_config, save_config
    from occ_core.engine.trainer import LAST, build_model

    folder = base / "run"
    torch.manual_seed(0)
    cfg = build_config("baseline", "tiny", overrides=[f"data.root={base / 'prepared'}", *SMALL])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone
        model = build_model(cfg, PreparedDataset(base / "prepared").spec)
    folder.mkdir()
    save_config(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root="../prepared")), folder / "config.yaml")
    save_checkpoint(folder / LAST, model)
    return folder


@pytest.fixture(scope="module")
def surround(tmp_path_factory) -> tuple[Path, Path]:
    """The session's tiny synthetic nuScenes + Occ3D dataset (tests/_surround.py) and its prepared folder."""
    from _surround import surround_prepared, surround_raw

    return surround_raw(tmp_path_factory), surround_prepared(tmp_path_factory)


class Case:
    """Paths of one case under its own folder; raw / prepared copies are made on first use. ``run``,
    ``nus`` (raw nuScenes layout) and ``occ3d`` (prepared) are shared and must be left as they are."""

    def __init__(self, base: Path, root: Path, run: Path | None = None, surround: tuple[Path, Path] | None = None):
        self.base, self.root = base, root
        self.run = run
        self.nus, self.occ3d = surround if surround is not None else (None, None)
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

    @property
    def nus_copy(self) -> Path:
        """A copy of the raw nuScenes-layout dataset that a case may damage."""
        dst = self.root / "nus"
        if not dst.exists():
            shutil.copytree(self.nus, dst)
        return dst

    def occ3d_val_sample(self) -> tuple[str, str]:
        frame = next(f for f in json.loads((self.occ3d / "manifest.json").read_text())["frames"] if f["split"] == "val")
        return frame["sequence"], frame["id"]


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


def _train(c: Case, method: str, *sets: str, data: Path | None = None) -> list[str]:
    argv = ["train", "--method", method, "--data", c.s(data or c.prepared), "--out", c.s(c.root / "runs")]
    for x in sets:
        argv += ["--set", x]
    return argv


def _with_images(c: Case) -> Path:
    """The prepared copy with the raw copy beside it (the prepared folder reads the camera images from there)."""
    assert c.raw.is_dir()
    return c.prepared


def _changed_run(c: Case) -> Path:
    """A copy of the run whose config.yaml was edited after training (wider features than its checkpoint)."""
    assert c.prepared.is_dir()  # the copy's data.root (../prepared)
    run = c.root / "run"
    shutil.copytree(c.run, run)
    cfg = run / "config.yaml"
    text = cfg.read_text()
    assert "embed_dims: 16" in text
    cfg.write_text(text.replace("embed_dims: 16", "embed_dims: 32"))
    return run


def _garbage_occ3d_gt(c: Case) -> Path:
    scene, token = c.occ3d_val_sample()
    return _set_bytes(c.nus_copy / "gts" / scene / token / "labels.npz", GARBAGE)


def _occ3d_pred(c: Case, content: bytes) -> Path:
    """A prediction folder whose every val sample's labels.npz holds ``content``."""
    for f in json.loads((c.occ3d / "manifest.json").read_text())["frames"]:
        if f["split"] == "val":
            _set_bytes(c.root / "pred3d" / f["sequence"] / f["id"] / "labels.npz", content)
    return c.root / "pred3d"


# Commands added after the first corpus (issue 13, item 3): the nuScenes-family prepares, masks, the synthetic
# nuScenes layout, the newer methods' own config fields, the Occ3D eval options, pretrain-binary, export, predict,
# and --resume with options it does not apply.
NEWER_CASES: list[tuple[str, Callable[[Case], tuple[list[str], str]]]] = [
    # occ prepare occ3d
    ("prepare-occ3d-out-file", lambda c: (["prepare", "occ3d", "--nuscenes", c.s(c.nus), "--out", c.s(c.file)], c.s(c.file))),
    ("prepare-occ3d-nuscenes-missing", lambda c: (["prepare", "occ3d", "--nuscenes", c.s(c.root / "nope"),
                                                   "--out", c.s(c.root / "o")], c.s(c.root / "nope"))),
    ("prepare-occ3d-gts-missing", lambda c: (["prepare", "occ3d", "--nuscenes", c.s(c.nus), "--gts", c.s(c.root / "nope"),
                                              "--out", c.s(c.root / "o")], c.s(c.root / "nope"))),
    ("prepare-occ3d-gt-garbage", lambda c: (["prepare", "occ3d", "--nuscenes", c.s(c.nus_copy), "--out", c.s(c.root / "o")],
                                            c.s(_garbage_occ3d_gt(c)))),
    ("prepare-occ3d-bad-shard", lambda c: (["prepare", "occ3d", "--nuscenes", c.s(c.nus), "--out", c.s(c.root / "o"),
                                            "--shard", "3/2"], "--shard must be I/N")),
    ("prepare-occ3d-merge-nothing", lambda c: (["prepare", "occ3d", "--out", c.s(c.root / "o"), "--merge"],
                                               c.s(c.root / "o" / "shards"))),
    ("prepare-occ3d-bad-version", lambda c: (["prepare", "occ3d", "--nuscenes", c.s(c.nus), "--out", c.s(c.root / "o"),
                                              "--version", "v9"], "--version must be one of")),
    ("prepare-occ3d-on-kitti-raw", lambda c: (["prepare", "occ3d", "--nuscenes", c.s(c.raw), "--out", c.s(c.root / "o")],
                                              c.s(c.raw))),
    # occ prepare openoccupancy / surroundocc
    ("prepare-openoccupancy-out-file", lambda c: (["prepare", "openoccupancy", "--nuscenes", c.s(c.nus), "--occ",
                                                   c.s(c.empty), "--out", c.s(c.file)], c.s(c.file))),
    ("prepare-openoccupancy-gt-missing", lambda c: (["prepare", "openoccupancy", "--nuscenes", c.s(c.nus), "--occ",
                                                     c.s(c.empty), "--out", c.s(c.root / "o")],
                                                    "openoccupancy ground truth missing")),
    ("prepare-surroundocc-occ-missing", lambda c: (["prepare", "surroundocc", "--nuscenes", c.s(c.nus), "--occ",
                                                    c.s(c.root / "nope"), "--out", c.s(c.root / "o")], c.s(c.root / "nope"))),
    ("prepare-surroundocc-nuscenes-missing", lambda c: (["prepare", "surroundocc", "--nuscenes", c.s(c.root / "nope"),
                                                         "--occ", c.s(c.empty), "--out", c.s(c.root / "o")],
                                                        c.s(c.root / "nope"))),
    # occ prepare masks
    ("prepare-masks-data-missing", lambda c: (["prepare", "masks", "--data", c.s(c.root / "nope"), "--masks", c.s(c.empty)],
                                              c.s(c.root / "nope"))),
    ("prepare-masks-neither", lambda c: (["prepare", "masks", "--data", c.s(c.prepared)], "give either --sam")),
    ("prepare-masks-sam-garbage", lambda c: (["prepare", "masks", "--data", c.s(_with_images(c)), "--sam",
                                              c.s(_set_bytes(c.root / "sam.pth", GARBAGE))], c.s(c.root / "sam.pth"))),
    ("prepare-masks-dir-missing", lambda c: (["prepare", "masks", "--data", c.s(c.prepared), "--masks", c.s(c.root / "nope")],
                                             c.s(c.root / "nope"))),
    ("prepare-masks-bad-model", lambda c: (["prepare", "masks", "--data", c.s(_with_images(c)), "--sam", c.s(c.file),
                                            "--model", "vit_x"], "unknown SAM model 'vit_x'")),
    # occ prepare synthetic --layout nuscenes
    ("prepare-synthetic-nuscenes-out-file", lambda c: (["prepare", "synthetic", "--layout", "nuscenes", "--out", c.s(c.file)],
                                                       c.s(c.file))),
    ("prepare-synthetic-nuscenes-prepared-file", lambda c: (["prepare", "synthetic", "--layout", "nuscenes", "--out",
                                                             c.s(c.root / "s"), "--prepared", c.s(c.file)], c.s(c.file))),
    ("prepare-synthetic-nuscenes-image-size", lambda c: (["prepare", "synthetic", "--layout", "nuscenes", "--out",
                                                          c.s(c.root / "s"), "--image-size", "abc"], "(--image-size)")),
    ("prepare-synthetic-nuscenes-frames", lambda c: (["prepare", "synthetic", "--layout", "nuscenes", "--out",
                                                      c.s(c.root / "s"), "--frames", "1"], "(--frames)")),
    ("prepare-synthetic-nuscenes-scene", lambda c: (["prepare", "synthetic", "--layout", "nuscenes", "--out",
                                                     c.s(c.root / "s"), "--scenes", "scene-9"], "not a v1.0-mini scene")),
    ("prepare-synthetic-nuscenes-cameras", lambda c: (["prepare", "synthetic", "--layout", "nuscenes", "--out",
                                                       c.s(c.root / "s"), "--cameras", "3"], "drop --sequences / --cameras")),
    ("prepare-synthetic-bad-layout", lambda c: (["prepare", "synthetic", "--layout", "waymo", "--out", c.s(c.root / "s")],
                                                "--layout must be kitti or nuscenes")),
    ("prepare-synthetic-cameras-2", lambda c: (["prepare", "synthetic", "--out", c.s(c.root / "s"), "--cameras", "2"],
                                               "(--cameras)")),
    # occ train: the newer methods' own config fields (checked by build_config, before any run folder)
    ("train-lidar-base-channels-0", lambda c: (_train(c, "lidar", "model.lidar.base_channels=0"),
                                               "model.lidar.base_channels=0: must be a positive integer")),
    ("train-lidar-blocks-negative", lambda c: (_train(c, "lidar", "model.lidar.blocks=-1"), "model.lidar.blocks=-1")),
    ("train-lidar-backend", lambda c: (_train(c, "lidar", "model.lidar.backend=foo"), "model.lidar.backend='foo'")),
    ("train-lidar-without-points", lambda c: (_train(c, "lidar", "data.load_points=false"), "set data.load_points=true")),
    ("train-tacocc-no-radii", lambda c: (_train(c, "tacocc", "model.fusion.image_radii=[]"), "model.fusion.image_radii=[]")),
    ("train-tacocc-render-backend", lambda c: (_train(c, "tacocc", "model.render.backend=foo"), "model.render.backend='foo'")),
    ("train-tacocc-sequential-without-neighbours", lambda c: (_train(c, "tacocc", "model.render.sequential=true"),
                                                             "set data.neighbours")),
    ("train-cigocc-depth-bins-0", lambda c: (_train(c, "cigocc", "model.extractors.depth_bins=0"),
                                             "model.extractors.depth_bins=0")),
    ("train-cigocc-stages", lambda c: (_train(c, "cigocc", "model.stages=[3]"), "model.stages must be")),
    ("train-cigocc-sam-without-masks", lambda c: (_train(c, "cigocc", "model.sam.weight=1", data=c.occ3d),
                                                  "no SAM masks in the prepared folder")),
    ("train-decoder-norm", lambda c: (_train(c, "baseline", "model.decoder.norm=foo"), "model.decoder.norm='foo'")),
    # ... and one the model itself refuses when it is built (still before the run folder, and its line alone)
    ("train-tacocc-image-level", lambda c: (_train(c, "tacocc", *SMALL, "model.fusion.image_level=9", data=c.occ3d),
                                            "model.fusion.image_level must be in")),
    ("train-vp-folder-missing", lambda c: (["train", "--method", "vpocc", "--data", c.s(c.occ3d), "--out",
                                            c.s(c.root / "runs"), "--vp", c.s(c.root / "nope")], c.s(c.root / "nope"))),
    ("train-init-missing", lambda c: (_train(c, "baseline", *SMALL, data=c.occ3d) + ["--init", c.s(c.root / "nope")],
                                      c.s(c.root / "nope"))),
    # --resume: every option it does not apply is refused (a whitelist: --epochs, --max-minutes, --deterministic)
    ("train-resume-with-out", lambda c: (["train", "--resume", c.s(c.run), "--out", c.s(c.root / "runs")],
                                         "--out cannot be combined with it")),
    ("train-resume-with-set-and-name", lambda c: (["train", "--resume", c.s(c.run), "--set", "optim.lr=1", "--name", "x"],
                                                  "--set, --name cannot be combined with it")),
    ("pretrain-binary-resume-with-out", lambda c: (["pretrain-binary", "--resume", c.s(c.run), "--out", c.s(c.root / "r")],
                                                   "--out cannot be combined with it")),
    # occ pretrain-binary
    ("pretrain-binary-no-binary-module", lambda c: (["pretrain-binary", "--method", "baseline", "--data", c.s(c.prepared),
                                                     "--out", c.s(c.root / "runs")], "use --method b2s")),
    ("pretrain-binary-label-fraction", lambda c: (["pretrain-binary", "--data", c.s(c.prepared), "--out",
                                                   c.s(c.root / "runs"), "--label-fraction", "2"], "--label-fraction")),
    ("pretrain-binary-data-missing", lambda c: (["pretrain-binary", "--data", c.s(c.root / "nope"), "--out",
                                                 c.s(c.root / "runs")], c.s(c.root / "nope"))),
    ("pretrain-binary-resume-not-binary", lambda c: (["pretrain-binary", "--resume", c.s(c.run)], "use --method b2s")),
    # occ eval: the Occ3D / RayIoU options and --run
    ("eval-kitti-no-camera-mask", lambda c: (_eval(c, "--no-camera-mask"), "--no-camera-mask applies to Occ3D data")),
    ("eval-kitti-no-rayiou", lambda c: (_eval(c, "--no-rayiou"), "--no-rayiou applies to Occ3D data")),
    ("eval-occ3d-fov-only", lambda c: (["eval", "--data", c.s(c.occ3d), "--pred", c.s(c.empty), "--fov-only"],
                                       "--fov-only applies to SemanticKITTI-family data")),
    ("eval-occ3d-no-predictions", lambda c: (["eval", "--data", c.s(c.occ3d), "--pred", c.s(c.empty)], c.s(c.empty))),
    ("eval-occ3d-prediction-garbage", lambda c: (["eval", "--data", c.s(c.occ3d), "--pred", c.s(_occ3d_pred(c, GARBAGE))],
                                                 c.s(c.root / "pred3d"))),
    ("eval-run-checkpoint-missing", lambda c: (["eval", "--run", c.s(c.run), "--checkpoint", c.s(c.root / "nope")],
                                               c.s(c.root / "nope"))),
    ("eval-run-other-dataset", lambda c: (["eval", "--run", c.s(c.run), "--data", c.s(c.occ3d)],
                                          c.s(c.occ3d) + ": occ3d data does not fit the run")),
    # occ predict
    ("predict-bad-split", lambda c: (["predict", "--run", c.s(c.run), "--out", c.s(c.root / "p"), "--split", "bogus"],
                                     "unknown split 'bogus'")),
    ("predict-checkpoint-garbage", lambda c: (["predict", "--run", c.s(c.run), "--out", c.s(c.root / "p"), "--checkpoint",
                                               c.s(_set_bytes(c.root / "c.safetensors", GARBAGE))], c.s(c.root / "c.safetensors"))),
    ("predict-other-dataset", lambda c: (["predict", "--run", c.s(c.run), "--out", c.s(c.root / "p"), "--data", c.s(c.occ3d)],
                                         c.s(c.occ3d) + ": occ3d data does not fit the run")),
    ("predict-config-changed-after-training", lambda c: (["predict", "--run", c.s(_changed_run(c)), "--out",
                                                         c.s(c.root / "p")], "checkpoint does not fit the model")),
    ("predict-device", lambda c: (["predict", "--run", c.s(c.run), "--out", c.s(c.root / "p"), "--device", "tpu"],
                                  "unknown device 'tpu'")),
    ("render-run-other-dataset", lambda c: (["render", "--run", c.s(c.run), "--data", c.s(c.occ3d), "--frame",
                                             "/".join(c.occ3d_val_sample()), "--out", c.s(c.root / "pics")],
                                            "occ3d data does not fit the run")),
    # occ export
    ("export-run-missing", lambda c: (["export", "--run", c.s(c.root / "nope"), "--format", "torchscript", "--out",
                                       c.s(c.root / "m.pt")], c.s(c.root / "nope"))),
    ("export-bad-format", lambda c: (["export", "--run", c.s(c.run), "--format", "foo", "--out", c.s(c.root / "m.pt")],
                                     "--run exports --format onnx or torchscript")),
    ("export-out-under-file", lambda c: (["export", "--run", c.s(c.run), "--format", "torchscript", "--out",
                                          c.s(c.file / "m.pt")], c.s(c.file / "m.pt"))),
    ("export-out-is-folder", lambda c: (["export", "--run", c.s(c.run), "--format", "torchscript", "--out", c.s(c.empty)],
                                        c.s(c.empty))),
    ("export-bad-outputs", lambda c: (["export", "--run", c.s(c.run), "--format", "torchscript", "--out",
                                       c.s(c.root / "m.pt"), "--outputs", "foo"], "--outputs must be logits or labels")),
    ("export-old-opset", lambda c: (["export", "--run", c.s(c.run), "--format", "onnx", "--out", c.s(c.root / "m.onnx"),
                                     "--opset", "5", "--no-verify"], "opset 5")),
    ("export-submission-incomplete", lambda c: (["export", "--pred", c.s(c.empty), "--format", "semantickitti-submission",
                                                 "--out", c.s(c.root / "s.zip"), "--data", c.s(c.prepared), "--split", "val"],
                                                c.s(c.empty))),
    ("export-submission-out-under-file", lambda c: (["export", "--pred", c.s(c.empty), "--format",
                                                     "semantickitti-submission", "--out", c.s(c.file / "s.zip")],
                                                    c.s(c.file / "s.zip"))),
    # the rest
    ("vp-estimate-workers-0", lambda c: (["vp-estimate", "--data", c.s(c.raw), "--out", c.s(c.root / "vp"), "--workers", "0"],
                                         "--workers must be at least 1")),
    ("quickstart-no-val-sequence", lambda c: (_quickstart(c, "--sequences", "00"), "--sequences 00: no sequence of the val")),
]


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
    *NEWER_CASES,
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
def test_bad_input_is_one_error_line(case_id: str, setup, base: Path, run: Path, surround: tuple[Path, Path],
                                     tmp_path: Path, monkeypatch):
    case = Case(base, tmp_path, run, surround)
    argv, needle = setup(case)
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory is seen too
    before = _snapshot(tmp_path)
    shared = [_snapshot(p) for p in (base, *surround)]
    result = runner.invoke(app, argv)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle in lines[0], (needle, lines[0])
    assert ".tmp" not in lines[0] and "optim.optim" not in lines[0]
    assert _snapshot(tmp_path) == before, "files were created or changed by a refused run"
    assert [_snapshot(p) for p in (base, *surround)] == shared, "a shared input was changed by a refused run"


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


# ------------------------------------------------------------------------------------------------
# Usage errors of typer itself, for every subcommand: one line 'error: occ CMD: ...', exit 2
# ------------------------------------------------------------------------------------------------


def _commands() -> list[tuple[list[str], object]]:
    """(path, click command) of every leaf subcommand of the app."""
    import typer.main

    out = []

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append((path, cmd))

    walk(typer.main.get_command(app), [])
    return out


COMMANDS = _commands()


def _usage_cases() -> list:
    cases = []
    for path, cmd in COMMANDS:
        name = " ".join(path)
        options = [p for p in cmd.params if getattr(p, "opts", None) and p.opts[0].startswith("--")]
        cases.append(pytest.param([*path, "--bogus"], f"occ {name}: no such option: --bogus", id=f"{name}-unknown-option"))
        valued = next(p for p in options if not getattr(p, "is_flag", False) and p.name != "help")
        cases.append(pytest.param([*path, valued.opts[0]], f"occ {name}: option '{valued.opts[0]}' requires an argument",
                                  id=f"{name}-missing-value"))
        required = [p for p in options if p.required]
        if required:
            cases.append(pytest.param(list(path), f"occ {name}: missing option '{required[0].opts[0]}'",
                                      id=f"{name}-missing-option"))
    cases += [
        pytest.param(["bogus"], "occ: no such command 'bogus'", id="unknown-command"),
        pytest.param(["prepare", "bogus"], "occ prepare: no such command 'bogus'", id="prepare-unknown-command"),
        pytest.param(["--bogus"], "occ: no such option: --bogus", id="root-unknown-option"),
        pytest.param(["prepare", "kitti", "--root", "r", "--out", "o", "--workers", "abc"],
                     "occ prepare kitti: invalid value for '--workers'", id="workers-not-an-integer"),
        pytest.param(["train", "--epochs", "x"], "'--epochs': expected a valid integer, got 'x'", id="epochs-not-an-integer"),
        pytest.param(["train", "--max-minutes", "soon"], "'--max-minutes'", id="max-minutes-not-a-number"),
        pytest.param(["render", "--frame", "08/000000", "--out", "o", "--scale", "big"], "'--scale'", id="scale-not-a-number"),
        pytest.param(["prepare", "kitti", "--root", "r", "--out", "o", "--force", "true"],
                     "boolean options are plain flags", id="force-true"),
        pytest.param(["eval", "--split"], "occ eval: option '--split' requires an argument", id="eval-split-without-value"),
    ]
    return cases


@pytest.mark.parametrize("argv, needle", _usage_cases())
def test_usage_error_is_one_line(argv: list[str], needle: str, tmp_path: Path, monkeypatch):
    """typer/click usage errors end as ONE line naming the command and the option (no usage text, no rich
    box), exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, argv)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle in lines[0], (needle, lines[0])
    assert "╭" not in result.output and "Usage:" not in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def test_every_subcommand_is_covered_by_the_usage_cases():
    assert len(COMMANDS) >= 15 and {" ".join(p) for p, _ in COMMANDS} >= {
        "train", "eval", "export", "predict", "pretrain-binary", "prepare kitti", "prepare occ3d", "prepare masks"}


def test_usage_error_of_the_console_script():
    """The installed entry point (not only typer's test runner): one line on stderr, nothing on stdout, status 2;
    --help still prints the help and exits 0; no arguments print the help (status 2, as click does)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "occ_cli.main", "train", "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--bogus" in lines[0], r.stderr
    r = subprocess.run([sys.executable, "-m", "occ_cli.main", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--resume" in r.stdout and r.stderr == ""
