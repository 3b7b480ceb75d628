"""A tiny synthetic surround-view (nuScenes + Occ3D) dataset, generated once per test session and shared by
the tests of the nuScenes writer, ``occ prepare occ3d`` and six-camera training (tests/data, tests/cli,
tests/models). Two scenes (scene-0061 mini_train, scene-0103 mini_val) of two samples, 160 x 90 images."""

from __future__ import annotations

from pathlib import Path

SCENES = ["scene-0061", "scene-0103"]
SAMPLES = 2
SIZE = (160, 90)
SEED = 5


def surround_raw(tmp_path_factory) -> Path:
    from occ_core.data.synthetic.nuscenes import generate_nuscenes

    root = tmp_path_factory.getbasetemp() / "surround" / "raw"
    if not (root / "v1.0-mini" / "sample.json").is_file():
        generate_nuscenes(root, scenes=SCENES, samples=SAMPLES, seed=SEED, image_size=SIZE, progress=False)
    return root


def surround_prepared(tmp_path_factory) -> Path:
    from occ_core.data.prepare.occ3d import prepare_occ3d

    raw = surround_raw(tmp_path_factory)
    out = raw.parent / "prepared"
    if not (out / "manifest.json").is_file():
        prepare_occ3d(raw, None, out, progress=False)
    return out
