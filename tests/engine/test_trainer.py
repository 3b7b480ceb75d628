from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
import torch

from occ_core.engine.checkpoint import load_checkpoint
from occ_core.engine.config import build_config
from occ_core.engine.pretrain import BINARY_PRETRAIN_STAGE
from occ_core.engine.trainer import (LAST, BEST, SSC_STAGE, Stage, TrainingDiverged, load_run_config, train,
                                     train_stages)
from occ_core.errors import OccError


def _cfg(method: str, data: Path, **changes):
    cfg = build_config(method, "tiny", overrides=[f"data.root={data}"])
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def test_run_folder_contents(probe_method, synthetic_prepared: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = train(_cfg(probe_method, synthetic_prepared), run, progress=False)
    assert 0 <= result["miou"] <= 100 and result["epochs_completed"] == 3 and result["frames"] == 2
    for name in ("config.yaml", LAST, BEST, "metrics.jsonl", "train.log", "final_metrics.json"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    text = (run / "config.yaml").read_text()
    assert "occ_version" in text and str(tmp_path) not in text and "!!python" not in text  # plain data, relative paths
    cfg = load_run_config(run)
    assert cfg.method == "probe" and not Path(cfg.data.root).is_absolute()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["type"] for r in rows} == {"train", "val"}
    assert len([r for r in rows if r["type"] == "val"]) == 3
    losses = [r["loss"] for r in rows if r["type"] == "train"]
    assert losses[-1] < losses[0]  # it learns


def test_resume_after_a_kill_matches_an_uninterrupted_run(probe_method, synthetic_prepared: Path, tmp_path: Path, monkeypatch):
    import _probe_method

    full = train(_cfg(probe_method, synthetic_prepared), tmp_path / "full", progress=False)

    real = _probe_method.Probe.losses
    state = {"n": 0}

    def dying(self, outputs, batch):
        state["n"] += 1
        if state["n"] == 4:  # second step of epoch 2 (2 training frames, batch 1)
            raise KeyboardInterrupt
        return real(self, outputs, batch)

    monkeypatch.setattr(_probe_method.Probe, "losses", dying)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(probe_method, synthetic_prepared), tmp_path / "killed", progress=False)
    monkeypatch.setattr(_probe_method.Probe, "losses", real)
    assert load_checkpoint(tmp_path / "killed" / LAST)["epoch"] == 0  # epoch 1 finished, epoch 2 lost
    assert [r["step"] for r in _rows(tmp_path / "killed")] == [1, 2, 2, 3]  # step 3 of the lost epoch was logged
    resumed = train(load_run_config(tmp_path / "killed"), tmp_path / "killed", resume=True, progress=False)
    assert resumed["miou"] == full["miou"] and resumed["iou"] == full["iou"]
    a, b = _weights(tmp_path / "full" / LAST), _weights(tmp_path / "killed" / LAST)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert _rows(tmp_path / "killed") == _rows(tmp_path / "full")  # the lost step 3 is logged once, values equal
    log = (tmp_path / "killed" / "train.log").read_text()
    assert "resumed after epoch 1 of 3 (step 2): continuing with epoch 2" in log
    assert "dropped 1 row(s) logged after step 2" in log


@pytest.mark.parametrize("cpu_amp", [False, True])
def test_cpu_amp_autocasts_training_steps_only(probe_method, synthetic_prepared: Path, tmp_path: Path, monkeypatch,
                                               cpu_amp: bool):
    """optim.cpu_amp: on CPU the training forward and losses run under bfloat16 autocast only when it is on
    (with optim.amp); validation stays float32 either way; the run still learns."""
    import _probe_method

    seen = {"train": set(), "val": set()}
    real = _probe_method.Probe.forward

    def spying(self, batch):
        seen["train" if self.training else "val"].add(torch.is_autocast_enabled("cpu"))
        return real(self, batch)

    monkeypatch.setattr(_probe_method.Probe, "forward", spying)
    result = train(_with_optim(_cfg(probe_method, synthetic_prepared), cpu_amp=cpu_amp), tmp_path / "run",
                   progress=False)
    assert seen == {"train": {cpu_amp}, "val": {False}}
    losses = [r["loss"] for r in _rows(tmp_path / "run") if r["type"] == "train"]
    assert result["steps"] == 6 and losses[-1] < losses[0]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_rows(a: list[dict], b: list[dict]) -> None:
    """Identical metrics.jsonl rows (every logged value bit for bit), each step once per row type."""
    assert a == b
    for rows in (a, b):
        keys = [(r["type"], r["step"]) for r in rows]
        assert len(keys) == len(set(keys)), keys


def test_resume_after_the_time_budget_finishes_the_cut_epoch(probe_method, synthetic_prepared: Path, tmp_path: Path):
    """A budget stop in the middle of an epoch records the batches done; the resume trains the rest of that
    epoch (not the next one), so it ends where an uninterrupted run ends."""
    full = train(_cfg(probe_method, synthetic_prepared), tmp_path / "full", progress=False)
    cut = train(_cfg(probe_method, synthetic_prepared, max_minutes=1e-6), tmp_path / "cut", progress=False)
    assert cut["stopped_by_time"] and cut["steps"] == 1
    extra = load_checkpoint(tmp_path / "cut" / LAST)["extra"]
    assert extra["truncated"] and extra["epoch_batches"] == 1
    cfg = dataclasses.replace(load_run_config(tmp_path / "cut"), max_minutes=0.0)  # --resume RUN --max-minutes 0
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed["steps"] == full["steps"] == 6 and resumed["miou"] == full["miou"]
    a, b = _weights(tmp_path / "full" / LAST), _weights(tmp_path / "cut" / LAST)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _rows(tmp_path / "cut") if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert "resumed in epoch 1 of 3 at step 1: the time budget had stopped it after 1 of 2 batches" in \
        (tmp_path / "cut" / "train.log").read_text()

    # a resume may lengthen a run (config.yaml records it) but not shorten it below what was trained
    with pytest.raises(OccError, match="already trained 3 epochs"):
        train(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=2)), tmp_path / "cut", resume=True,
              progress=False)
    longer = train(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=4)), tmp_path / "cut",
                   resume=True, progress=False)
    assert longer["steps"] == 8 and load_run_config(tmp_path / "cut").optim.epochs == 4
    assert "optim.epochs changed from 3 to 4" in (tmp_path / "cut" / "train.log").read_text()


def _with_optim(cfg, **changes):
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, **changes))


def test_max_steps_ends_inside_an_epoch_and_a_longer_resume_continues(probe_method, synthetic_prepared: Path,
                                                                            tmp_path: Path):
    """optim.max_steps (the quickstart's fitted length) stops the run inside its last epoch with a validation and
    a checkpoint; the cosine schedule decays over those steps; a resume at the end only validates; a resume
    that lengthens the run finishes the cut epoch (each step logged once)."""
    cosine = dict(schedule="cosine", warmup_steps=1, min_lr_ratio=0.01)
    cfg = _with_optim(_cfg(probe_method, synthetic_prepared), max_steps=3, **cosine)  # 3 epochs of 2 steps
    short = train(cfg, tmp_path / "short", progress=False)
    assert short["steps"] == 3 and short["epochs_completed"] == 2 and not short["stopped_by_time"]
    extra = load_checkpoint(tmp_path / "short" / LAST)["extra"]
    assert extra["truncated"] and extra["epoch_batches"] == 1 and extra["stopped_by"] == "max_steps"
    rows = _rows(tmp_path / "short")
    lrs = [r["lr"] for r in rows if r["type"] == "train"]
    assert len(lrs) == 3 and lrs[-1] == pytest.approx(cfg.optim.lr * 0.01)  # the schedule ends at its floor
    assert [r["step"] for r in rows if r["type"] == "val"] == [2, 3]  # after epoch 1 and at the last step

    again = train(load_run_config(tmp_path / "short"), tmp_path / "short", resume=True, progress=False)
    assert again["steps"] == 3 and again["miou"] == short["miou"]
    assert "optim.max_steps=3 reached, nothing left to train" in (tmp_path / "short" / "train.log").read_text()

    with pytest.raises(OccError, match="already trained 3 steps"):
        train(_with_optim(cfg, max_steps=2), tmp_path / "short", resume=True, progress=False)
    longer = train(_with_optim(cfg, max_steps=5), tmp_path / "short", resume=True, progress=False)
    assert longer["steps"] == 5 and load_run_config(tmp_path / "short").optim.max_steps == 5
    assert "optim.max_steps changed from 3 to 5 for this resume" in (tmp_path / "short" / "train.log").read_text()
    assert "optim.max_steps had stopped it after 1 of 2 batches" in (tmp_path / "short" / "train.log").read_text()
    assert [r["step"] for r in _rows(tmp_path / "short") if r["type"] == "train"] == [1, 2, 3, 4, 5]


def test_resume_uses_the_thread_count_of_the_run(probe_method, synthetic_prepared: Path, tmp_path: Path):
    """CPU reductions are split by thread, so a resume runs with the checkpoint's thread count (and gives
    the process its own back afterwards)."""
    mine = torch.get_num_threads()
    other = 2 if mine == 1 else 1
    cfg = _cfg(probe_method, synthetic_prepared)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=1))
    torch.set_num_threads(other)
    try:
        first = train(cfg, tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(mine)
    assert first["threads"] == other and load_checkpoint(tmp_path / "run" / LAST)["extra"]["threads"] == other
    assert first["deterministic"]  # always on CPU
    more = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=2))
    resumed = train(more, tmp_path / "run", resume=True, progress=False)
    assert resumed["threads"] == other and torch.get_num_threads() == mine
    assert f"using {other} CPU threads as the run did (this process had {mine})" in (tmp_path / "run" / "train.log").read_text()
    assert not torch.are_deterministic_algorithms_enabled()  # the process's setting is back


REAL = ["data.image_scale=0.15", "model.lifting.stride=8", "model.lifting.embed_dims=16", "model.lifting.num_heads=2",
        "optim.epochs=2", "val_every=1", "log_every=1"]


def test_real_method_is_reproducible_and_resumes_exactly(synthetic_prepared: Path, tmp_path: Path, monkeypatch):
    """The baseline (backbone, deformable attention, 3D UNet, BatchNorm, AdamW, flips): two runs with the
    same seed, and a run killed in epoch 2 and resumed, give the same metrics.jsonl and final weights bit
    for bit (CPU)."""
    import warnings

    from occ_core.models.core import SSCCore

    cfg = build_config("baseline", "tiny", overrides=[f"data.root={synthetic_prepared}", *REAL])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone
        first = train(cfg, tmp_path / "a", progress=False)
        second = train(cfg, tmp_path / "b", progress=False)
        assert first["steps"] == 4 and second["miou"] == first["miou"] and second["iou"] == first["iou"]
        _same_rows(_rows(tmp_path / "a"), _rows(tmp_path / "b"))
        a, b = _weights(tmp_path / "a" / LAST), _weights(tmp_path / "b" / LAST)
        assert all(torch.equal(a[k], b[k]) for k in a)  # BatchNorm running stats included

        real = SSCCore.losses
        state = {"n": 0}

        def dying(self, outputs, batch):
            state["n"] += 1
            if state["n"] == 4:  # second step of epoch 2 (2 training frames, batch 1)
                raise KeyboardInterrupt
            return real(self, outputs, batch)

        monkeypatch.setattr(SSCCore, "losses", dying)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "killed", progress=False)
        monkeypatch.setattr(SSCCore, "losses", real)
        assert load_checkpoint(tmp_path / "killed" / LAST)["epoch"] == 0
        resumed = train(load_run_config(tmp_path / "killed"), tmp_path / "killed", resume=True, progress=False)
    assert resumed["miou"] == first["miou"] and resumed["iou"] == first["iou"] and resumed["steps"] == 4
    _same_rows(_rows(tmp_path / "killed"), _rows(tmp_path / "a"))
    c = _weights(tmp_path / "killed" / LAST)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(probe_method, synthetic_prepared: Path, tmp_path: Path):
    cfg = _cfg(probe_method, synthetic_prepared)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, nan_after=4))
    with pytest.raises(TrainingDiverged, match=r"loss became NaN at epoch 2, step 4 .*last good checkpoint"):
        train(cfg, tmp_path / "run", progress=False)
    info = load_checkpoint(tmp_path / "run" / LAST)
    assert info["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "run" / LAST).values())


def test_nan_loss_in_the_first_epoch_names_no_checkpoint(probe_method, synthetic_prepared: Path, tmp_path: Path):
    cfg = _cfg(probe_method, synthetic_prepared)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, nan_after=1))
    with pytest.raises(TrainingDiverged, match="no checkpoint was written") as e:
        train(cfg, tmp_path / "run", progress=False)
    assert "last good checkpoint" not in str(e.value) and e.value.exit_code == 3
    assert not (tmp_path / "run" / LAST).exists()


def test_time_budget_stops_early_with_a_checkpoint(probe_method, synthetic_prepared: Path, tmp_path: Path):
    cfg = dataclasses.replace(_cfg(probe_method, synthetic_prepared), max_minutes=1e-6)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["stopped_by_time"] and result["steps"] == 1 and result["epochs_completed"] == 1
    assert (tmp_path / "run" / LAST).is_file()


def test_config_overrides_and_errors(probe_method, tmp_path: Path):
    cfg = build_config(probe_method, "tiny", overrides=["optim.lr=1e-3", "model.channels=7", "data.flip_prob=0",
                                                        "optim.milestones=[1, 2]"])
    assert cfg.optim.lr == 1e-3 and cfg.model.channels == 7 and cfg.data.flip_prob == 0.0
    assert cfg.optim.milestones == [1, 2]
    with pytest.raises(OccError, match="unknown key 'lrr'"):
        build_config(probe_method, "tiny", overrides=["optim.lrr=1"])
    with pytest.raises(OccError, match="expected an integer"):
        build_config(probe_method, "tiny", overrides=["optim.epochs=many"])
    with pytest.raises(OccError, match="no preset 'huge'"):
        build_config(probe_method, "huge")
    with pytest.raises(OccError, match="unknown method 'nope'"):
        build_config("nope")
    (tmp_path / "c.yaml").write_text("optim:\n  epochs: 9\nmodel:\n  channels: 2\n")
    cfg = build_config(probe_method, "tiny", config_file=tmp_path / "c.yaml", overrides=["optim.epochs=5"])
    assert cfg.optim.epochs == 5 and cfg.model.channels == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, run: str, tests_dir: str, stage: str = "ssc",
            overrides: tuple[str, ...] = ()) -> None:
    import os
    import sys

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OCC_NO_PROGRESS="1")
    sys.path.insert(0, tests_dir)
    from occ_core.registry import MethodSpec, register_method

    register_method(MethodSpec("probe", "test-only probe", "_probe_method"))
    torch.set_num_threads(1)
    cfg = build_config("probe", "tiny", overrides=[f"data.root={data}", "optim.epochs=2", *overrides])
    result = train(cfg, Path(run), progress=False, stage=BINARY_PRETRAIN_STAGE if stage == "binary" else SSC_STAGE)
    Path(run, f"rank{rank}.json").write_text(json.dumps(result))
    import torch.distributed as dist

    dist.destroy_process_group()


def test_two_process_gloo_training(synthetic_prepared: Path, tmp_path: Path):
    import torch.multiprocessing as mp

    run = tmp_path / "ddp"
    run.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(synthetic_prepared), str(run), str(Path(__file__).parent)), nprocs=2)
    r0 = json.loads((run / "rank0.json").read_text())
    r1 = json.loads((run / "rank1.json").read_text())
    assert r0["miou"] == r1["miou"] and r0["frames"] == 2  # confusion matrices summed across processes
    assert r0["steps"] == 2  # 2 frames split over 2 processes: 1 step per epoch
    assert (run / LAST).is_file() and not (run / "rank1").exists()


def test_two_process_fit_to_budget_agrees_on_the_length(probe_method, synthetic_prepared: Path, tmp_path: Path):
    """fit_to_budget with two processes: both re-fit the same length (the times are averaged over the ranks), so
    they stop at the same step (a disagreement would hang the collective calls) and config.yaml records it."""
    import torch.multiprocessing as mp

    run = tmp_path / "ddp"
    run.mkdir()
    sets = ("optim.schedule=cosine", "optim.warmup_steps=10", "optim.max_steps=2", "max_minutes=0.1",
            "fit_to_budget=true", "val_every=0")
    mp.spawn(_worker, args=(2, _free_port(), str(synthetic_prepared), str(run), str(Path(__file__).parent), "ssc",
                            sets), nprocs=2)
    r0 = json.loads((run / "rank0.json").read_text())
    r1 = json.loads((run / "rank1.json").read_text())
    assert r0["steps"] == r1["steps"] > 2  # re-fitted past the 2 steps fitted before (6 s hold far more)
    stored = load_run_config(run)
    assert stored.optim.max_steps == r0["steps"] or r0["stopped_by_time"]


# ------------------------------------------------------------------------------------------------
# Stages: binary pre-training on the same engine, stage lists
# ------------------------------------------------------------------------------------------------


def _binary_cfg(method: str, data: Path):
    cfg = _cfg(method, data)
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=2))


def test_binary_stage_resume_after_a_kill_matches_an_uninterrupted_run(probe_method, synthetic_prepared: Path,
                                                                       tmp_path: Path, monkeypatch):
    import _probe_method

    full = train(_binary_cfg(probe_method, synthetic_prepared), tmp_path / "full", progress=False, stage=BINARY_PRETRAIN_STAGE)
    assert full["stage"] == "binary-pretrain" and 0 <= full["val_iou"] <= 100 and full["steps"] == 4
    assert full["train_frames"] == 2 and "lidar_frames" in full
    for name in ("config.yaml", LAST, BEST, "metrics.jsonl", "final_metrics.json", "label_split.json"):
        assert (tmp_path / "full" / name).is_file(), name
    info = load_checkpoint(tmp_path / "full" / LAST)
    assert info["extra"]["stage"] == "binary-pretrain" and info["extra"]["best_metric"] == "iou"
    assert load_run_config(tmp_path / "full").data.binary_targets  # the stage's config is the stored one

    real = _probe_method.Probe.binary_losses
    state = {"n": 0}

    def dying(self, outputs, batch):
        state["n"] += 1
        if state["n"] == 3:  # first step of epoch 2 (2 training frames, batch 1)
            raise KeyboardInterrupt
        return real(self, outputs, batch)

    monkeypatch.setattr(_probe_method.Probe, "binary_losses", dying)
    with pytest.raises(KeyboardInterrupt):
        train(_binary_cfg(probe_method, synthetic_prepared), tmp_path / "killed", progress=False, stage=BINARY_PRETRAIN_STAGE)
    monkeypatch.setattr(_probe_method.Probe, "binary_losses", real)
    assert load_checkpoint(tmp_path / "killed" / LAST)["epoch"] == 0
    with pytest.raises(OccError, match="trained by stage 'binary-pretrain'"):  # the normal stage refuses it
        train(load_run_config(tmp_path / "killed"), tmp_path / "killed", resume=True, progress=False)
    resumed = train(load_run_config(tmp_path / "killed"), tmp_path / "killed", resume=True, progress=False,
                    stage=BINARY_PRETRAIN_STAGE)
    for k in ("val_iou", "val_precision", "val_recall", "steps", "epochs_completed"):
        assert resumed[k] == full[k], k
    a, b = _weights(tmp_path / "full" / LAST), _weights(tmp_path / "killed" / LAST)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert torch.equal(a["model.voxels"], torch.zeros_like(a["model.voxels"]))  # the semantic part did not train


def test_two_stages_chained(probe_method, synthetic_prepared: Path, tmp_path: Path):
    """A CIGOcc-like pair: stage 1 trains part of the model alone, stage 2 starts from it."""
    cfg = _cfg(probe_method, synthetic_prepared)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=1))
    first = Stage(name="one", parameters=lambda m: [m.conv.weight, m.conv.bias])
    second = Stage(name="two", parameters=lambda m: [p for n, p in m.named_parameters() if not n.startswith("conv.")])
    results = train_stages(cfg, tmp_path / "run", [first, second])
    assert [r["stage"] for r in results] == ["one", "two"] and results[0]["trainable_parameters"] == 4 * 27 + 4
    w1, w2 = _weights(tmp_path / "run" / "1-one" / LAST), _weights(tmp_path / "run" / "2-two" / LAST)
    assert torch.equal(w1["model.conv.weight"], w2["model.conv.weight"])  # initialised from stage 1, then kept
    assert torch.equal(w1["model.voxels"], torch.zeros_like(w1["model.voxels"]))  # stage 1 trained conv only
    assert not torch.equal(w2["model.voxels"], w1["model.voxels"])
    again = train_stages(cfg, tmp_path / "run", [first, second], resume=True)  # finished stages only re-validate
    assert [r["steps"] for r in again] == [r["steps"] for r in results] and again[1]["miou"] == results[1]["miou"]


def test_two_process_gloo_binary_stage(synthetic_prepared: Path, tmp_path: Path):
    import torch.multiprocessing as mp

    run = tmp_path / "ddp"
    run.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(synthetic_prepared), str(run), str(Path(__file__).parent), "binary"),
             nprocs=2)
    r0 = json.loads((run / "rank0.json").read_text())
    r1 = json.loads((run / "rank1.json").read_text())
    assert r0["val_iou"] == r1["val_iou"] and r0["val_frames"] == 2  # binary counts summed across processes
    assert r0["steps"] == 2 and (run / "label_split.json").is_file()
    w = _weights(run / LAST)
    assert torch.equal(w["model.voxels"], torch.zeros_like(w["model.voxels"]))


def test_new_run_dir_reuses_a_failed_start_but_not_a_run_with_a_checkpoint(tmp_path):
    from occ_core.engine.trainer import new_run_dir

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: x\n")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert new_run_dir(tmp_path / "runs", "m", "p", name="r1") == run  # no checkpoint: a failed start
    assert "failed before its first checkpoint" in (run / "train.log").read_text()
    assert not (run / "metrics.jsonl").exists()
    (run / "checkpoints").mkdir()
    assert new_run_dir(tmp_path / "runs", "m", "p", name="r1") == run  # an empty checkpoints/ too
    (run / LAST).write_bytes(b"x")
    with pytest.raises(OccError, match="run folder already exists"):
        new_run_dir(tmp_path / "runs", "m", "p", name="r1")


@pytest.mark.parametrize("fitted", [4, 1000])
def test_fit_to_budget_refits_the_length_to_the_time_measured_in_the_run(probe_method, synthetic_prepared: Path,
                                                                            tmp_path: Path, monkeypatch, fitted):
    """fit_to_budget: a cosine run whose fitted length is too short (4 steps) or too long (1000) for its budget
    is re-fitted at every epoch's end from the step time measured in the run, so it ends by its length with the
    schedule at its floor, inside the budget, and config.yaml records the new length. A fake clock makes every
    optimiser step take one second (validations none)."""
    import time as real_time
    from types import SimpleNamespace

    from occ_core.engine import trainer as trainer_module

    clock = [0.0]
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: clock[0],
                                                                strftime=real_time.strftime, time=real_time.time))
    adamw_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        clock[0] += 1.0
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    cosine = dict(schedule="cosine", warmup_steps=1, min_lr_ratio=0.01, max_steps=fitted, epochs=max(fitted // 2, 1))
    cfg = dataclasses.replace(_with_optim(_cfg(probe_method, synthetic_prepared), **cosine), max_minutes=0.2,
                              val_every=0)
    from occ_core.engine.trainer import ssc_datasets

    train_set, val_set = ssc_datasets(cfg, synthetic_prepared)
    assert len(train_set) == 2  # two steps an epoch
    # 12 s, 3 % kept back: after epoch 1 (2 s) the final validation (a third of a step a val frame) and 1-s steps
    expected = 2 + int((12 * 0.97 - 2 - len(val_set) / 3))
    assert expected not in (fitted, 12)

    without = train(dataclasses.replace(cfg, fit_to_budget=False), tmp_path / "fixed", progress=False)
    clock[0] = 0.0
    result = train(dataclasses.replace(cfg, fit_to_budget=True), tmp_path / "fit", progress=False)
    if fitted == 4:
        assert without["steps"] == 4 and not without["stopped_by_time"]  # ends 8 s before the budget
    else:
        assert without["stopped_by_time"] and without["steps"] == 13  # the budget cuts the schedule
    assert result["steps"] == expected and not result["stopped_by_time"]
    stored = load_run_config(tmp_path / "fit")
    assert stored.optim.max_steps == expected and stored.optim.epochs == -(-expected // 2) and stored.fit_to_budget
    lrs = [r["lr"] for r in _rows(tmp_path / "fit") if r["type"] == "train"]
    assert len(lrs) == expected and lrs[-1] == pytest.approx(cfg.optim.lr * 0.01)  # the schedule ends at its floor
    assert f"length re-fitted to the time left: {expected} steps (was {fitted})" in (tmp_path / "fit" / "train.log").read_text()


def test_fit_to_budget_refits_at_the_end_of_the_warm_up(probe_method, synthetic_prepared: Path, tmp_path: Path,
                                                        monkeypatch):
    """The first re-fit comes where the cosine starts, at the warm-up's end, so a pre-run step time that was far
    off (here steps slow down from 0.25 s to 1 s after step 4) does not bend the decay; the run still ends by its
    re-fitted length, inside the budget, at the schedule's floor."""
    import time as real_time
    from types import SimpleNamespace

    from occ_core.engine import trainer as trainer_module

    clock, steps = [0.0], [0]
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: clock[0],
                                                                strftime=real_time.strftime, time=real_time.time))
    adamw_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        steps[0] += 1
        clock[0] += 0.25 if steps[0] <= 4 else 1.0
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    cosine = dict(schedule="cosine", warmup_steps=11, min_lr_ratio=0.01, max_steps=40, epochs=20)
    cfg = dataclasses.replace(_with_optim(_cfg(probe_method, synthetic_prepared), **cosine), max_minutes=0.5,
                              val_every=0, fit_to_budget=True)
    result = train(cfg, tmp_path / "fit", progress=False)
    log = (tmp_path / "fit" / "train.log").read_text()
    assert "end of the warm-up (step 11)" in log
    assert not result["stopped_by_time"] and result["steps"] < 40  # 40 fitted before the run: too many
    assert load_run_config(tmp_path / "fit").optim.max_steps == result["steps"]
    lrs = [r["lr"] for r in _rows(tmp_path / "fit") if r["type"] == "train"]
    assert lrs[-1] == pytest.approx(cfg.optim.lr * 0.01)
    after = lrs[11:]
    assert all(a >= b - 1e-12 for a, b in zip(after, after[1:]))  # decays from the warm-up's end, never back up
