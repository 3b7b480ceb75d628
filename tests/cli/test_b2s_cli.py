"""`occ pretrain-binary`, fine-tuning from it with `occ train --init`, and one-line CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from occ_cli.main import app

runner = CliRunner()
SMALL = ["--set", "data.image_scale=0.15", "--set", "model.lifting.grid=[32, 32, 4]", "--set", "model.lifting.embed_dims=16",
         "--set", "model.lifting.num_heads=2"]


def _weights(path: Path, prefix: str):
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}


def test_pretrain_binary_then_fine_tune(synthetic_prepared: Path, tmp_path: Path):
    result = runner.invoke(app, ["pretrain-binary", "--data", str(synthetic_prepared), "--out", str(tmp_path), "--name", "pre",
                                 "--label-fraction", "0.5", "--epochs", "1", *SMALL])
    assert result.exit_code == 0, result.output
    run = tmp_path / "pre"
    for name in ("config.yaml", "checkpoints/last.safetensors", "metrics.jsonl", "final_metrics.json", "label_split.json"):
        assert (run / name).is_file(), name
    split = json.loads((run / "label_split.json").read_text())
    assert split["n_labeled"] == 1 and split["n_binary_only"] == 1 and split["fraction"] == 0.5
    metrics = json.loads((run / "final_metrics.json").read_text())
    assert metrics["steps"] == 2 and 0 <= metrics["val_iou"] <= 100  # both training frames give binary occupancy
    assert "data:" in (run / "config.yaml").read_text() and "method: b2s" in (run / "config.yaml").read_text()

    result = runner.invoke(app, ["train", "--method", "b2s", "--data", str(synthetic_prepared), "--out", str(tmp_path),
                                 "--name", "ft", "--init", str(run), "--epochs", "1", "--set", "data.label_fraction=0.5",
                                 "--set", "model.freeze_binary=true", *SMALL])
    assert result.exit_code == 0, result.output
    a = _weights(run / "checkpoints" / "last.safetensors", "model.binary_head.")
    b = _weights(tmp_path / "ft" / "checkpoints" / "last.safetensors", "model.binary_head.")
    assert a and all(bool((a[k] == b[k]).all()) for k in a)  # loaded and kept frozen
    c = _weights(run / "checkpoints" / "last.safetensors", "model.sem_head.")
    d = _weights(tmp_path / "ft" / "checkpoints" / "last.safetensors", "model.sem_head.")
    assert any(not bool((c[k] == d[k]).all()) for k in c)  # the semantic module learned


def test_pretrain_binary_resume(synthetic_prepared: Path, tmp_path: Path):
    args = ["pretrain-binary", "--data", str(synthetic_prepared), "--out", str(tmp_path), "--name", "pre", "--epochs", "1", *SMALL]
    assert runner.invoke(app, args).exit_code == 0
    run = tmp_path / "pre"
    first = json.loads((run / "final_metrics.json").read_text())
    result = runner.invoke(app, ["pretrain-binary", "--resume", str(run)])  # finished: validates again, no step
    assert result.exit_code == 0, result.output
    again = json.loads((run / "final_metrics.json").read_text())
    assert again["steps"] == first["steps"] and again["val_iou"] == first["val_iou"] and again["stage"] == "binary-pretrain"
    result = runner.invoke(app, ["train", "--resume", str(run)])  # not the normal stage's run folder
    assert result.exit_code != 0 and "trained by stage 'binary-pretrain'" in result.output


@pytest.mark.parametrize("args, message", [
    (["--label-fraction", "2"], "--label-fraction must be in [0, 1]"),
    (["--method", "baseline"], "binary occupancy module"),
    (["--set", "model.mode=autolabel"], "binary occupancy module"),
])
def test_cli_errors_are_one_line(synthetic_prepared: Path, tmp_path: Path, args, message):
    result = runner.invoke(app, ["pretrain-binary", "--data", str(synthetic_prepared), "--out", str(tmp_path), *args])
    assert result.exit_code != 0
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_missing_data_is_one_line(tmp_path: Path):
    result = runner.invoke(app, ["pretrain-binary", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)])
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "nope" in lines[0]
