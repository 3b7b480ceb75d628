"""The dataset readers, the manifest frame records and the config messages go through the checked
readers / the key-path rule: one FormatError / OccError naming the file or the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from occ_core.errors import FormatError, OccError

GARBAGE = bytes(range(256))


@pytest.mark.parametrize("reader", ["read_calib", "read_poses", "read_times"])
def test_semantickitti_text_readers_reject_binary(tmp_path: Path, reader: str):
    from occ_core.data.formats import semantickitti as sk

    p = tmp_path / f"{reader}.txt"
    p.write_bytes(GARBAGE)
    with pytest.raises(FormatError, match="not UTF-8 text") as e:
        getattr(sk, reader)(p)
    assert str(e.value).startswith(str(p))


def test_kitti360_calibration_rejects_binary(tmp_path: Path):
    from occ_core.data.formats import kitti360

    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "calib_cam_to_velo.txt").write_bytes(GARBAGE)
    (tmp_path / "calibration" / "perspective.txt").write_text("P_rect_00: " + " ".join(["1"] * 12) + "\n")
    with pytest.raises(FormatError, match="calib_cam_to_velo.txt: not UTF-8"):
        kitti360.read_calibration(tmp_path)


def test_load_yaml(tmp_path: Path):
    from occ_core.config import load_yaml

    p = tmp_path / "c.yaml"
    p.write_bytes(GARBAGE)
    with pytest.raises(FormatError, match="c.yaml: not UTF-8"):
        load_yaml(p)
    with pytest.raises(OccError, match="is a folder"):
        load_yaml(tmp_path)


@pytest.mark.parametrize("record, problem", [
    ({"id": "000000", "split": "val", "labeled": True}, "frame record 3: missing key 'sequence'"),
    ({"sequence": "08", "id": "../../x", "split": "val", "labeled": True}, "frame record 3: id '../../x' is not a plain name"),
    ({"sequence": "..", "id": "0", "split": "val", "labeled": True}, "sequence '..' is not a plain name"),
    ({"sequence": "08", "id": "0", "split": "val", "labeled": "yes"}, "labeled must be true or false"),
    ({"sequence": "08", "id": "0", "split": "val", "labeled": True, "vp": [1]}, "vp must be"),
    ({"sequence": "08", "id": "0", "split": "val", "labeled": True, "files": {"image_2": "/etc/x"}}, "must be relative"),
    ([1, 2], "frame record 3: expected a JSON object, got a JSON list"),
])
def test_frame_record_errors_name_the_manifest(tmp_path: Path, record, problem: str):
    from occ_core.data.prepare.layout import Frame

    where = tmp_path / "manifest.json"
    with pytest.raises(FormatError, match=problem) as e:
        Frame.from_json(record, where, 3)
    assert str(e.value).startswith(str(where))


def test_frame_record_roundtrip():
    from occ_core.data.prepare.layout import Frame

    f = Frame("08", "000005", "val", True, {"image_2": "08/image_2/000005.png", "labels": None}, (600.0, 170.0))
    assert Frame.from_json(f.to_json()) == f and Frame.from_json(f.to_json()).vp == (600.0, 170.0)


def test_override_messages_name_the_key_once():
    from occ_core.engine.config import build_config

    cases = {
        "optim.lr=abc": "--set optim.lr: expected a number",
        "optim.lrr=1": "--set optim: unknown key 'lrr'",
        "model.backbone.nam=x": "--set model.backbone: unknown key 'nam'",
        "model.lifting.stride=x": "--set model.lifting.stride: expected an integer",
        "model.backbone.name": "expected key=value",
        "=3": "empty key",
        "optim.=3": "empty part",
        "optim=3": "--set optim: is a section",
        "optim.batch_size=0": "optim.batch_size=0: must be a positive integer",
        "data.image_scale=0": "data.image_scale=0.0: must be > 0",
        "model.loss_scale=3": "model.loss_scale=3: must be a stored target scale",
        "model.backbone.name=resnet999": "must be one of resnet101, resnet18, resnet34, resnet50",
    }
    for text, message in cases.items():
        with pytest.raises(OccError) as e:
            build_config("baseline", "tiny", overrides=[text])
        assert message in str(e.value), (text, str(e.value))
        assert "optim.optim" not in str(e.value) and "model.model" not in str(e.value)
    cfg = build_config("baseline", "tiny", overrides=["model.backbone.name=resnet34", "optim.batch_size=2"])
    assert cfg.model.backbone.name == "resnet34" and cfg.optim.batch_size == 2


def test_config_from_data_checks_ranges():
    from occ_core.config import to_dict
    from occ_core.engine.config import build_config, config_from_data

    data = to_dict(build_config("baseline", "tiny"))
    data["optim"]["batch_size"] = 0
    with pytest.raises(OccError, match=r"runs/x/config.yaml: optim.batch_size=0"):
        config_from_data(data, "runs/x/config.yaml")
