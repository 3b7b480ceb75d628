"""`occ export` through the typer app: a network as TorchScript, a submission zip, one-line errors."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from occ_cli.main import app

runner = CliRunner()
TESTS = Path(__file__).resolve().parents[1]


def _load(path: str):
    name = Path(path).stem
    spec = importlib.util.spec_from_file_location(f"_occ_export_{name}", TESTS / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


M = _load("export/test_export_model.py")  # make_run
S = _load("data/formats/test_submission.py")  # write_manifest, write_preds


def one_error_line(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_export_run_torchscript_labels(synthetic_prepared: Path, tmp_path: Path):
    """``occ export --outputs labels`` of a B2S run is ``model.predict`` (its threshold decision, as
    ``occ predict``), checked by the command on the example frame; the file runs on any inputs of the
    documented shapes."""
    run = M.make_run("b2s", synthetic_prepared, tmp_path / "run")
    out = tmp_path / "model.pt"
    result = runner.invoke(app, ["export", "--run", str(run), "--format", "torchscript", "--out", str(out),
                                 "--outputs", "labels"])
    assert result.exit_code == 0, result.output
    assert "labels equal to model.predict on 100.0000% of the voxels" in result.output
    assert "in  grid_to_cam" in result.output and "out labels" in result.output
    module = torch.jit.load(str(out))
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.export.model import read_metadata

    grid = PreparedDataset(synthetic_prepared).spec.grid.shape
    meta = read_metadata(out)
    assert meta["output"]["shape"] == [1, *grid] and meta["outputs"] == "labels"
    dummy = {i["name"]: torch.zeros(i["shape"], dtype=getattr(torch, i["dtype"])) for i in meta["inputs"]}
    H, W = dummy["images"].shape[-2:]
    dummy["intrinsics"][:] = torch.tensor([[50.0, 0, W / 2], [0, 50, H / 2], [0, 0, 1]], dtype=torch.float64)
    dummy["grid_to_cam"][:] = torch.tensor([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    dummy["crop_to_image"][:] = torch.eye(3, dtype=torch.float64)
    labels = module(*[dummy[n] for n in meta["input_names"]])
    assert labels.shape == (1, *grid) and labels.dtype == torch.uint8


def test_export_errors_are_one_line(tmp_path: Path):
    line = one_error_line(runner.invoke(app, ["export", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]))
    assert "exactly one of --run" in line
    line = one_error_line(runner.invoke(app, ["export", "--run", str(tmp_path), "--format", "semantickitti-submission",
                                              "--out", str(tmp_path / "m.onnx")]))
    assert "--run exports --format onnx or torchscript" in line
    line = one_error_line(runner.invoke(app, ["export", "--run", str(tmp_path), "--format", "onnx", "--out",
                                              str(tmp_path / "m.onnx"), "--no-verify"]))
    assert "not a run folder" in line


def test_export_submission_and_check(tmp_path: Path):
    data = S.write_manifest(tmp_path / "prepared")
    pred = tmp_path / "pred"
    S.write_preds(pred)
    out = tmp_path / "submission.zip"
    result = runner.invoke(app, ["export", "--pred", str(pred), "--format", "semantickitti-submission", "--out", str(out),
                                 "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "3 frames of split 'test'" in result.output
    with zipfile.ZipFile(out) as zf:
        assert len([n for n in zf.namelist() if n.endswith(".label")]) == 3
    result = runner.invoke(app, ["export", "--pred", str(pred), "--format", "semantickitti-submission", "--check",
                                 "--data", str(data)])
    assert result.exit_code == 0 and "ok" in result.output

    (pred / "sequences" / "15" / "predictions" / "000010.label").unlink()
    np.zeros(3, "<u2").tofile(pred / "sequences" / "11" / "predictions" / "000000.label")
    line = one_error_line(runner.invoke(app, ["export", "--pred", str(pred), "--format", "semantickitti-submission",
                                              "--check", "--data", str(data)]))
    assert "2 problem(s)" in line and "000000.label: 6 bytes" in line and "000010.label: missing" in line
    out2 = tmp_path / "bad.zip"
    one_error_line(runner.invoke(app, ["export", "--pred", str(pred), "--format", "semantickitti-submission",
                                       "--out", str(out2), "--data", str(data)]))
    assert not out2.exists()


@pytest.mark.parametrize("args, expect", [
    (["--format", "onnx"], "--pred exports --format semantickitti-submission"),
    (["--format", "semantickitti-submission"], "--out FILE.zip is required"),
])
def test_submission_option_errors(tmp_path: Path, args, expect):
    line = one_error_line(runner.invoke(app, ["export", "--pred", str(tmp_path), *args]))
    assert expect in line


def test_onnxruntime_writes_nothing_into_the_home_folder(tmp_path: Path):
    """onnxruntime creates ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ (device id, telemetry db) when it is
    imported; occ imports it through import_onnxruntime, which leaves HOME untouched and the environment as it was."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env["HOME"] = str(home)
    code = ("import os\nfrom occ_core.export.model import import_onnxruntime\nort = import_onnxruntime()\n"
            "assert ort.get_available_providers()\nprint(os.environ.get('XDG_CACHE_HOME'))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
