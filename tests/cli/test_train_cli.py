"""End to end through the CLI: train -> eval --run -> predict -> eval --pred, and quickstart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from occ_cli.main import app

runner = CliRunner()
SMALL = ["data.image_scale=0.15", "model.lifting.grid=[32, 32, 4]", "model.lifting.embed_dims=16",
         "model.lifting.num_heads=2"]


def _sets(extra=()):
    out = []
    for s in [*SMALL, *extra]:
        out += ["--set", s]
    return out


def test_train_eval_predict_roundtrip(synthetic_prepared: Path, tmp_path: Path):
    r = runner.invoke(app, ["train", "--method", "baseline", "--data", str(synthetic_prepared), "--out", str(tmp_path),
                            "--name", "b", "--epochs", "1", *_sets(["val_every=1"])])
    assert r.exit_code == 0, r.output
    run = tmp_path / "b"
    assert "val IoU" in r.output and (run / "checkpoints" / "best.safetensors").is_file()

    r = runner.invoke(app, ["eval", "--run", str(run), "--split", "val", "--json", str(tmp_path / "run.json")])
    assert r.exit_code == 0, r.output
    direct = json.loads((tmp_path / "run.json").read_text())
    assert direct["frames"] == 2 and "car" in direct["per_class"]

    r = runner.invoke(app, ["predict", "--run", str(run), "--split", "val", "--out", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "pred" / "sequences" / "08" / "predictions").iterdir())
    assert [f.name for f in files] == ["000000.label", "000005.label"]
    assert all(f.stat().st_size == 256 * 256 * 32 * 2 for f in files)
    r = runner.invoke(app, ["eval", "--data", str(synthetic_prepared), "--pred", str(tmp_path / "pred"),
                            "--json", str(tmp_path / "pred.json")])
    assert r.exit_code == 0, r.output
    via_files = json.loads((tmp_path / "pred.json").read_text())
    # the submission files (through the inverse learning map) score exactly like the in-memory path
    assert via_files["iou"] == pytest.approx(direct["iou"]) and via_files["miou"] == pytest.approx(direct["miou"])
    assert via_files["per_class"] == pytest.approx(direct["per_class"])


def test_train_cli_errors(synthetic_prepared: Path, tmp_path: Path):
    r = runner.invoke(app, ["train", "--method", "nope", "--data", str(synthetic_prepared), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown method 'nope'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "--method", "vpocc", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--data is required" in r.output
    r = runner.invoke(app, ["train", "--method", "vpocc", "--data", str(synthetic_prepared), "--set", "optim.lr"])
    assert r.exit_code == 2 and "expected key=value" in r.output
    r = runner.invoke(app, ["train", "--method", "vpocc", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "prepared data folder not found" in r.output
    r = runner.invoke(app, ["eval", "--split", "val"])
    assert r.exit_code == 2 and "either --pred" in r.output
    r = runner.invoke(app, ["train", "--method", "vpocc", "--print-config"])
    assert r.exit_code == 0 and "model.vp.alpha" in r.output and "VPZoomer" in r.output


def test_quickstart_small(tmp_path: Path):
    args = ["quickstart", "--out", str(tmp_path / "qs"), "--frames", "1", "--sequences", "00,08", "--train-minutes", "0.01",
            "--method", "baseline",
            *_sets()]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "qs" / "runs" / "baseline-tiny" / "val_metrics.json").read_text())
    assert metrics["frames"] == 1 and set(metrics["stages"]) >= {"generate_s", "prepare_s", "train_s", "eval_s"}
    assert "mIoU" in r.output and "done in" in r.output
    from occ_core.engine.trainer import load_run_config

    assert load_run_config(tmp_path / "qs" / "runs" / "baseline-tiny").fit_to_budget  # the length follows the run
    refs = metrics["references"]  # the per-voxel prior and all-empty on the same split, printed beside
    assert set(refs) == {"all-empty", "per-voxel-prior"} and refs["all-empty"]["iou"] == 0.0
    assert "reference per-voxel-prior" in r.output and "reference all-empty" in r.output
    again = runner.invoke(app, args)  # a rerun reuses every stage
    assert again.exit_code == 0, again.output


@pytest.fixture
def probe_method():
    import sys

    from occ_core.registry import MethodSpec, register_method

    here = str(Path(__file__).resolve().parents[1] / "engine")
    if here not in sys.path:
        sys.path.insert(0, here)
    register_method(MethodSpec("probe", "test-only probe", "_probe_method"))
    return "probe"


def test_resume_takes_epochs_and_refuses_config_changes(probe_method, synthetic_prepared: Path, tmp_path: Path):
    """--resume continues a run with its config.yaml: --epochs lengthens it (and is written there), --set and
    the other config options are one-line errors; train.log says where the resume starts (1-based epochs)."""
    r = runner.invoke(app, ["train", "--method", probe_method, "--data", str(synthetic_prepared), "--out", str(tmp_path),
                            "--name", "p", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "p"
    for extra, named in ((["--set", "optim.lr=1"], "--set"), (["--method", probe_method], "--method"),
                         (["--data", str(synthetic_prepared)], "--data"), (["--preset", "tiny"], "--preset"),
                         (["--out", str(tmp_path)], "--out"), (["--init", str(run)], "--init"),
                         (["--name", "p"], "--name"), (["--print-config"], "--print-config")):
        r = runner.invoke(app, ["train", "--resume", str(run), *extra])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
        assert (f"{named} cannot be combined with it (only --epochs, --max-minutes and --deterministic can"
                in " ".join(r.output.split())), r.output
    r = runner.invoke(app, ["pretrain-binary", "--resume", str(run), "--set", "optim.lr=1"])
    assert r.exit_code == 2 and "--set cannot be combined with it" in " ".join(r.output.split()), r.output

    r = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3"])
    assert r.exit_code == 0, r.output
    assert "--epochs 3 applied to the resumed run (config.yaml had 2)" in " ".join(r.output.split())
    assert "done 3 epochs, 6 steps" in r.output
    log = (run / "train.log").read_text()
    assert "resumed after epoch 2 of 3 (step 4): continuing with epoch 3" in log
    from occ_core.engine.trainer import load_run_config

    assert load_run_config(run).optim.epochs == 3
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "train"]
    assert steps == sorted(set(steps))  # every step once

    r = runner.invoke(app, ["train", "--resume", str(run), "--deterministic"])  # finished: validates only
    assert r.exit_code == 0 and "done 3 epochs, 6 steps" in r.output, r.output
    assert f"next: occ eval --run {run}" in " ".join(r.output.split())  # says how to evaluate the run
    assert "resumed after epoch 3 of 3 (step 6): nothing left to train, validating only" in (run / "train.log").read_text()
    r = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2"])
    assert r.exit_code == 2 and "already trained 3 epochs" in r.output, r.output


def test_resume_with_epochs_ends_a_fitted_length(probe_method, synthetic_prepared: Path, tmp_path: Path):
    """--resume --epochs N of a run whose length was fitted to its budget (the quickstart's): N whole epochs,
    neither optim.max_steps nor fit_to_budget changes it any more, and config.yaml says so."""
    r = runner.invoke(app, ["train", "--method", probe_method, "--data", str(synthetic_prepared), "--out", str(tmp_path),
                            "--name", "q", "--set", "optim.schedule=cosine", "--set", "optim.max_steps=3",
                            "--set", "fit_to_budget=true"])  # no time budget: nothing to re-fit
    assert r.exit_code == 0, r.output
    from occ_core.engine.trainer import load_run_config

    run = tmp_path / "q"
    fitted = load_run_config(run)
    assert fitted.fit_to_budget and fitted.optim.max_steps == 3
    r = runner.invoke(app, ["train", "--resume", str(run), "--epochs", str(fitted.optim.epochs + 1)])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "no longer ends it (set to 0)" in text and "fit_to_budget set to false" in text
    stored = load_run_config(run)
    assert not stored.fit_to_budget and stored.optim.max_steps == 0 and stored.optim.epochs == fitted.optim.epochs + 1
    assert json.loads((run / "final_metrics.json").read_text())["steps"] == 2 * (fitted.optim.epochs + 1)
