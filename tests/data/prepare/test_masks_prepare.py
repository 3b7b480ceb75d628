"""occ prepare masks: SAM (random tiny weights) and external id images into PREPARED/masks/; resumable,
options recorded, one error line for bad inputs; occ prepare kitti imports the masks beside dataset/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from occ_cli.main import app
from occ_core.data.prepare.masks import id_image, mask_path, prepare_masks, read_id_image
from occ_core.errors import OccError
from occ_core.sam import build_sam
from occ_core.sam.generator import AutomaticMaskGenerator
from occ_core.sam.model import SamConfig

runner = CliRunner()
TINY = SamConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                 image_size=128, window_size=4, prompt_embed_dim=32, mask_in_chans=8, decoder_depth=1,
                 decoder_mlp_dim=32, iou_head_hidden_dim=16)
LOOSE = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}  # random weights: keep all
W, H = 1241, 376


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A raw sequence 08 with two frames and blocky image_2s, prepared; a tiny random SAM checkpoint."""
    from _raw import write_raw_sequence

    from occ_core.data.prepare.pipeline import prepare_kitti

    root = tmp_path_factory.mktemp("masks")
    seq = write_raw_sequence(root / "raw", "08", [0, 5], np.random.default_rng(0), scans=False)
    (seq / "image_2").mkdir()
    for i, fid in enumerate(("000000", "000005")):
        blocks = np.random.default_rng(1 + i).integers(0, 256, (8, 20, 3)).astype(np.uint8)
        cv2.imwrite(str(seq / "image_2" / f"{fid}.png"), cv2.resize(blocks, (W, H), interpolation=cv2.INTER_NEAREST))
    prepare_kitti(root / "raw", root / "prepared", progress=False)
    torch.manual_seed(0)
    sam = build_sam(TINY)
    with torch.no_grad():  # sharper random logits, so that masks differ from point to point
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[2].weight.mul_(30)
    torch.save(sam.state_dict(), root / "tiny_sam.pth")
    return root


@pytest.fixture
def case(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base / "raw", tmp_path / "raw")
    shutil.copytree(base / "prepared", tmp_path / "prepared")
    shutil.copy(base / "tiny_sam.pth", tmp_path / "tiny_sam.pth")
    return tmp_path


def _image(case: Path) -> np.ndarray:
    return cv2.imread(str(case / "raw/dataset/sequences/08/image_2/000000.png"))[:, :, ::-1]


def test_sam_masks_are_the_generator_output_as_an_id_image(case: Path):
    out = case / "prepared"
    s = prepare_masks(out, sam=case / "tiny_sam.pth", points_per_side=4, points_per_batch=5, progress=False,
                      settings=LOOSE)
    assert (s["images"], s["written"], s["skipped"], s["model"]) == (2, 2, 0, "custom")
    ids = read_id_image(mask_path(out, "08", "000000", "image_2"), (W, H))
    info = json.loads((out / "masks/08/000000/image_2.json").read_text())
    # the same generator run directly, then the id-image rule
    from occ_core.sam import load_sam

    records = AutomaticMaskGenerator(load_sam(case / "tiny_sam.pth"), points_per_side=4, **LOOSE).generate(_image(case))
    assert len(records) > 1
    ref, kept, areas = id_image([r["segmentation"] for r in records], [r["predicted_iou"] for r in records])
    assert np.array_equal(ids, ref)
    assert len(kept) == len(info["scores"]) == int(ids.max()) and s["masks"] > len(kept)
    assert info["scores"] == [round(records[i]["predicted_iou"], 6) for i in kept]
    assert info["scores"] == sorted(info["scores"], reverse=True)
    assert info["areas"] == areas == np.bincount(ids.ravel(), minlength=len(kept) + 1)[1:].tolist()
    record = json.loads((out / "masks/masks.json").read_text())
    assert record["source"] == "sam" and record["points_per_side"] == 4 and record["pred_iou_thresh"] == 0.0


def test_resume_record_and_force(case: Path):
    out, ckpt = case / "prepared", case / "tiny_sam.pth"
    prepare_masks(out, sam=ckpt, points_per_side=2, progress=False)  # official thresholds: no mask passes
    png = mask_path(out, "08", "000000", "image_2")
    first = png.read_bytes()
    assert read_id_image(png).max() == 0
    s = prepare_masks(out, sam=ckpt, points_per_side=2, progress=False)
    assert (s["written"], s["skipped"]) == (0, 2)
    png.unlink()
    (png.parent / ".image_2.abcd1234.tmp.png").write_bytes(b"half")  # a killed run's temp file
    s = prepare_masks(out, sam=ckpt, points_per_side=2, progress=False)
    assert s["written"] == 1 and png.read_bytes() == first  # the one deleted
    assert not list(png.parent.glob(".*.tmp*"))
    with pytest.raises(OccError, match="points_per_side 2; add --force"):
        prepare_masks(out, sam=ckpt, points_per_side=3, progress=False)
    s = prepare_masks(out, sam=ckpt, points_per_side=3, force=True, progress=False)
    assert s["written"] == 2


def test_external_masks_are_renumbered_by_score_then_area(case: Path):
    ext = case / "ext" / "08" / "000000"
    ext.mkdir(parents=True)
    (case / "ext" / "08" / "000005").mkdir()
    cv2.imwrite(str(case / "ext" / "08" / "000005" / "image_2.png"), np.full((H, W), 3, np.uint8))  # 8-bit
    ids = np.zeros((H, W), np.uint16)
    ids[:100, :100] = 7        # 10000 pixels
    ids[200:, :] = 300         # the largest
    ids[100:150, 500:600] = 9  # 5000 pixels
    cv2.imwrite(str(ext / "image_2.png"), ids)
    s = prepare_masks(case / "prepared", masks=case / "ext", progress=False)
    got = read_id_image(mask_path(case / "prepared", "08", "000000", "image_2"))
    assert s["masks"] == 3 + 1
    assert np.all(read_id_image(mask_path(case / "prepared", "08", "000005", "image_2")) == 1)
    assert got[300, 0] == 1 and got[0, 0] == 2 and got[120, 550] == 3 and got[160, 10] == 0
    info = json.loads((case / "prepared/masks/08/000000/image_2.json").read_text())
    assert info["ids"] == [300, 7, 9] and info["scores"] == [1.0, 1.0, 1.0]
    assert info["areas"] == [176 * W, 10000, 5000]
    # with scores beside it (id k's score at k-1), scores decide
    scores = [0.0] * 300
    scores[6], scores[8], scores[299] = 0.9, 0.5, 0.1
    (ext / "image_2.json").write_text(json.dumps({"scores": scores}))
    prepare_masks(case / "prepared", masks=case / "ext", force=True, progress=False)
    got = read_id_image(mask_path(case / "prepared", "08", "000000", "image_2"))
    assert got[0, 0] == 1 and got[120, 550] == 2 and got[300, 0] == 3
    png = mask_path(case / "prepared", "08", "000000", "image_2")
    before = png.read_bytes()
    s = prepare_masks(case / "prepared", masks=case / "ext", force=True, workers=2, progress=False)
    assert s["written"] == 2 and png.read_bytes() == before  # the worker-pool path writes the same


def _cli(argv: list[str]) -> str:
    r = runner.invoke(app, ["prepare", "masks", *argv])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert "Traceback" not in r.output, r.output
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def _pngs(case: Path) -> list[Path]:
    return sorted((case / "prepared").rglob("masks/**/*.png"))


def test_bad_inputs_are_one_error_line_and_write_nothing(case: Path):
    d = ["--data", str(case / "prepared")]
    assert "SAM checkpoint not found" in _cli(d + ["--sam", str(case / "none.pth")])
    (case / "bad.pth").write_bytes(b"\x00garbage" * 10)
    assert "unreadable SAM checkpoint" in _cli(d + ["--sam", str(case / "bad.pth")])
    line = _cli(d + ["--sam", str(case / "tiny_sam.pth"), "--model", "vit_b"])
    assert "not vit_b" in line and "tiny_sam.pth" in line
    assert "unknown SAM model" in _cli(d + ["--sam", str(case / "tiny_sam.pth"), "--model", "vit_q"])
    assert "not a prepared data folder" in _cli(["--data", str(case / "raw"), "--sam", str(case / "tiny_sam.pth")])
    assert "either --sam" in _cli(d)
    assert "either --sam" in _cli(d + ["--sam", str(case / "tiny_sam.pth"), "--masks", str(case)])
    assert "mask folder not found" in _cli(d + ["--masks", str(case / "nothing")])
    ext = case / "ext" / "08" / "000000"
    ext.mkdir(parents=True)
    assert "no mask id image" in _cli(d + ["--masks", str(case / "ext")])
    cv2.imwrite(str(ext / "image_2.png"), np.zeros((H, W - 1), np.uint16))
    assert f"is {W - 1}x{H}, its camera image" in _cli(d + ["--masks", str(case / "ext")])
    cv2.imwrite(str(ext / "image_2.png"), np.zeros((H, W, 3), np.uint8))
    assert "single-channel" in _cli(d + ["--masks", str(case / "ext")])
    (ext / "image_2.png").write_bytes(b"garbage")
    assert "unreadable mask id image" in _cli(d + ["--masks", str(case / "ext")])
    assert _pngs(case) == []


def test_a_second_run_into_the_same_folder_is_refused(case: Path):
    from occ_core.data.prepare.pipeline import _lock

    lock = _lock(case / "prepared")
    try:
        with pytest.raises(OccError, match="another 'occ prepare'"):
            prepare_masks(case / "prepared", sam=case / "tiny_sam.pth", points_per_side=2, progress=False)
    finally:
        lock.close()


def test_cli_runs_and_prepare_kitti_imports_masks_beside_dataset(case: Path):
    r = runner.invoke(app, ["prepare", "masks", "--data", str(case / "prepared"), "--sam", str(case / "tiny_sam.pth"),
                            "--points-per-side", "2"])
    assert r.exit_code == 0, r.output
    assert "2 written" in r.output and "SAM custom" in r.output
    # masks beside dataset/ (the synthetic generator's layout) come in with occ prepare kitti
    from occ_core.data.prepare.pipeline import prepare_kitti

    beside = case / "raw" / "masks" / "08" / "000000"
    beside.mkdir(parents=True)
    (beside.parent / "000005").mkdir()
    cv2.imwrite(str(beside.parent / "000005" / "image_2.png"), np.zeros((H, W), np.uint16))  # no masks
    ids = np.zeros((H, W), np.uint16)
    ids[10:20, 10:20] = 4
    cv2.imwrite(str(beside / "image_2.png"), ids)
    (beside / "image_2.json").write_text(json.dumps({"format": "occ-masks", "source": "synthetic",
                                                     "scores": [1.0] * 4, "kinds": ["a", "b", "c", "thing"]}))
    s = prepare_kitti(case / "raw", case / "fresh", progress=False)
    assert s["masks"] == 1
    info = json.loads((case / "fresh/masks/08/000000/image_2.json").read_text())
    assert info["origin"] == "synthetic" and info["kinds"] == ["thing"] and info["areas"] == [100]
    # a folder that already holds SAM masks keeps them
    s = prepare_kitti(case / "raw", case / "prepared", progress=False)
    assert s["masks"] is None
    assert json.loads((case / "prepared/masks/masks.json").read_text())["source"] == "sam"
