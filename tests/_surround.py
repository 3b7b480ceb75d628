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


SMALL_SETS = ["data.image_scale=0.25", "model.lifting.embed_dims=16", "model.lifting.num_heads=2",
              "model.lifting.grid=[50, 50, 4]", "model.loss_scale=4", "data.target_scales=[4]",
              "model.supervise_full_grid=false"]
"""Config overrides that make a tiny model on this data (the CLI tests' --set values)."""


def cli_sets(sets) -> list[str]:
    """``["--set", s, ...]`` for each override."""
    out: list[str] = []
    for s in sets:
        out += ["--set", s]
    return out
