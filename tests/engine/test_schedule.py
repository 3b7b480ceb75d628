"""The learning-rate schedules of OptimConfig (step per epoch; cosine per optimiser step)."""

import math

import pytest
import torch

from occ_core.engine.config import OptimConfig
from occ_core.engine.trainer import lr_scheduler


def _lrs(optim: OptimConfig, steps_per_epoch: int, n: int, per_step: bool) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=optim.lr)
    sched = lr_scheduler(opt, optim, steps_per_epoch)
    out = []
    for k in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_step or (k + 1) % steps_per_epoch == 0:
            sched.step()
    return out


def test_cosine_warms_up_then_decays_to_the_floor():
    optim = OptimConfig(lr=1e-3, epochs=4, schedule="cosine", warmup_steps=5, min_lr_ratio=0.1)
    lrs = _lrs(optim, 10, 40, per_step=True)
    assert lrs[0] == pytest.approx(1e-3 / 5) and lrs[4] == pytest.approx(1e-3)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[4:], lrs[5:]))  # monotone after the warm-up
    # halfway through the decay the factor is (1 + floor) / 2
    mid = 5 + (40 - 5) // 2
    t = (mid - 5) / 35
    assert lrs[mid] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))))
    assert lrs[-1] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 34 / 35))))


def test_step_schedule_is_per_epoch_milestones():
    optim = OptimConfig(lr=1e-3, epochs=3, milestones=[2], gamma=0.1)
    lrs = _lrs(optim, 4, 12, per_step=False)
    assert lrs[:8] == [pytest.approx(1e-3)] * 8 and lrs[8:] == [pytest.approx(1e-4)] * 4


def test_cosine_state_survives_a_json_round_trip():
    """Checkpoints store the scheduler state as JSON; a resumed schedule continues where it was."""
    import json

    optim = OptimConfig(lr=1e-3, epochs=2, schedule="cosine", warmup_steps=2)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=optim.lr)
    sched = lr_scheduler(opt, optim, 5)
    for _ in range(6):
        opt.step()
        sched.step()
    state = json.loads(json.dumps(sched.state_dict()))
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    sched2 = lr_scheduler(opt2, optim, 5)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_fit_length_fills_the_budget_in_steps(monkeypatch):
    """The quickstart's length: steps at the measured speed plus the validations fill the budget, the last epoch
    partial if need be; a validation every val_every epochs costs steps."""
    from types import SimpleNamespace

    from occ_core.engine import calibrate, trainer

    monkeypatch.setattr(trainer, "ssc_datasets", lambda cfg, root: (list(range(50)), list(range(12))))
    cfg = SimpleNamespace(optim=SimpleNamespace(batch_size=1), val_every=0)
    fit = calibrate.fit_length(cfg, "unused", minutes=10.0, reserve=0.0, step_seconds=1.0)
    # 600 s: the final validation (12 frames x 1/3 s = 4 s), then 596 one-second steps = 11.92 epochs of 50
    assert fit["max_steps"] == 596 and fit["epochs"] == 12 and fit["planned_s"] == pytest.approx(600)
    cfg.val_every = 5  # two more validations (after epochs 5 and 10): 8 s fewer steps
    fit = calibrate.fit_length(cfg, "unused", minutes=10.0, reserve=0.0, step_seconds=1.0)
    assert fit["max_steps"] == 588 and fit["epochs"] == 12 and fit["planned_s"] <= 600
    cfg.val_every = 4  # validations after epochs 4 and 8 only (588 steps end inside epoch 12)
    assert calibrate.fit_length(cfg, "unused", minutes=10.0, reserve=0.0, step_seconds=1.0)["max_steps"] == 588
    fit = calibrate.fit_length(cfg, "unused", minutes=0.01, step_seconds=1.0)  # at least one step
    assert fit["max_steps"] == 1 and fit["epochs"] == 1


def test_fit_steps_counts_the_validation_due_now_and_the_ones_ahead():
    from occ_core.engine.calibrate import fit_steps

    # 100 s, 1-s steps, 10 steps an epoch, no validation: 100 steps
    assert fit_steps(100.0, 1.0, 0.0, 10, val_every=1) == 100
    # a 4-s validation after every epoch and the last: n steps touch ceil(n/10) epochs -> n + 4 ceil(n/10) <= 100
    assert fit_steps(100.0, 1.0, 4.0, 10, val_every=1) == 70  # 70 + 7 x 4 = 98; 71 + 8 x 4 = 103
    # one validation due before the first step costs its 4 s
    assert fit_steps(100.0, 1.0, 4.0, 10, val_every=1, pending=1) == 68  # 68 + 4 + 7 x 4 = 100
    # no time for the validations: no step
    assert fit_steps(3.0, 1.0, 4.0, 10, val_every=1) == 0
    # started 6 steps into an epoch, 70 steps touch 8 epochs (6 + 70 = 76): 70 + 8 x 4 > 100; 68 + 8 x 4 = 100
    assert fit_steps(100.0, 1.0, 4.0, 10, val_every=1, into_epoch=6) == 68
