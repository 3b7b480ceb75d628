"""Fit a run's length to a time budget before it starts.

A learning-rate schedule that decays to its end (``optim.schedule=cosine``) needs the number of
steps up front, but a wall-clock budget (``max_minutes``) only says when to stop. :func:`fit_length`
measures a few real training steps of the run's own model and data on this machine, and returns the
number of steps that fills the budget; the run then records that number in its config, so it (and a
resume of it) is as deterministic as any other run. The time budget stays on as a safety net.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

RESERVE = 0.03
"""The share of a time budget a fitted run leaves for checkpoints and jitter."""


def seconds_per_step(cfg, root: str | Path, steps: int = 5, warmup: int = 3, datasets=None) -> float:
    """Median wall-clock seconds of a CPU training step (data loading, forward, losses, backward, AdamW) of
    ``cfg``'s model on the first training frames of ``root``, measured after ``warmup`` steps, with the
    kernels the run uses (on CPU training always runs with deterministic algorithms, whose backward of
    gathers and scatters is slower; bfloat16 autocast with ``optim.cpu_amp``). The first steps of a fresh
    model are slow (allocator growth, caches: on 2 cores 3.7, 2.8, 2.2 s, then 1.8 s), hence three warm-up
    steps and the median, not the mean. The model's state is thrown away; the global RNG state is restored."""
    from occ_core.data.loading.dataset import collate
    from occ_core.engine.trainer import build_model, determinism, ssc_datasets, train_autocast

    amp = train_autocast(cfg.optim, torch.device("cpu"))
    state = torch.random.get_rng_state()
    try:
        with determinism(torch.device("cpu"), deterministic=False):
            train_set, _ = datasets if datasets is not None else ssc_datasets(cfg, Path(root))
            model = build_model(cfg, train_set.spec)
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
            n = len(train_set)
            bs = cfg.optim.batch_size
            times: list[float] = []
            for k in range(warmup + steps):
                t = time.perf_counter()
                batch = collate([train_set[(k * bs + j) % n] for j in range(bs)])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    outputs = model(batch)
                    total = sum(model.losses(outputs, batch).values())
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                if k >= warmup:
                    times.append(time.perf_counter() - t)
            return float(statistics.median(times))
    finally:
        torch.random.set_rng_state(state)


def planned_seconds(steps: int, step_seconds: float, val_seconds: float, steps_per_epoch: int, val_every: int,
                    pending: int = 0, into_epoch: int = 0) -> float:
    """Seconds of ``steps`` optimiser steps started ``into_epoch`` steps into an epoch: each takes
    ``step_seconds``, and a validation of ``val_seconds`` follows every ``val_every`` epochs the steps touch
    (0: none in between) and the last one; ``pending`` validations are due before the first step."""
    epochs = max(1, math.ceil((into_epoch + steps) / steps_per_epoch))
    between = (epochs - 1) // val_every if val_every > 0 else 0
    return steps * step_seconds + val_seconds * (pending + between + 1)


def fit_steps(seconds: float, step_seconds: float, val_seconds: float, steps_per_epoch: int, val_every: int,
              pending: int = 0, into_epoch: int = 0) -> int:
    """The most optimiser steps whose :func:`planned_seconds` fit in ``seconds`` (same arguments); 0 when not
    even the validations fit."""
    s = max(float(step_seconds), 1e-9)
    lo, hi = 0, max(0, math.floor((seconds - val_seconds * (pending + 1)) / s))  # the plan grows with the steps
    while lo < hi:
        mid = (lo + hi + 1) // 2
        fits = planned_seconds(mid, s, val_seconds, steps_per_epoch, val_every, pending, into_epoch) <= seconds
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    return int(lo)


def fit_length(cfg, root: str | Path, minutes: float, reserve: float = RESERVE,
               step_seconds: float | None = None) -> dict[str, Any]:
    """The run length of ``cfg`` that fits in ``minutes`` on this machine, in optimiser steps (the last epoch
    may be partial: ``optim.max_steps``): training steps at the measured speed (``step_seconds`` if given), plus
    the validations (every ``cfg.val_every`` epochs and the final one) at about a third of a training step per
    frame, leaving ``reserve`` of the budget for checkpoints and jitter. At least one step. Returns max_steps,
    epochs (the epochs those steps touch), seconds_per_step, planned_s."""
    from occ_core.engine.trainer import ssc_datasets

    train_set, val_set = ssc_datasets(cfg, Path(root))
    s = step_seconds if step_seconds is not None else seconds_per_step(cfg, root, datasets=(train_set, val_set))
    steps_per_epoch = math.ceil(len(train_set) / cfg.optim.batch_size)
    val = len(val_set) * s / 3.0
    steps = max(1, fit_steps(minutes * 60.0 * (1.0 - reserve), s, val, steps_per_epoch, cfg.val_every))
    return {"max_steps": int(steps), "epochs": max(1, math.ceil(steps / steps_per_epoch)), "seconds_per_step": s,
            "planned_s": planned_seconds(steps, s, val, steps_per_epoch, cfg.val_every)}
