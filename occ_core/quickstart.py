"""``occ quickstart``: the whole pipeline on the built-in synthetic data, in one command.

generate synthetic data -> prepare -> train (``QUICKSTART_METHOD`` ``tiny`` by default; its length in steps
fitted to the time budget from a measured step time, cosine schedule) ->
evaluate the val split -> print the table (and write ``val_metrics.json``) -> a picture of the
first val frame (ground truth vs prediction, ``RUN/render/``). Every step is resumable:
rerunning the command reuses what is already there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from occ_core.errors import OccError


QUICKSTART_METHOD = "baseline"
"""The method the quickstart trains by default: the one that learned best in the budget (docs/results.md)."""
QUICKSTART_MINUTES = 9.0
QUICKSTART_SEQUENCES = ("00", "01", "02", "03", "04", "05", "08")
"""Six training sequences and the val sequence 08 (120 training frames at the default 20 a sequence)."""


def quickstart(out: str | Path = "quickstart", method: str = QUICKSTART_METHOD, preset: str = "tiny",
               train_minutes: float = QUICKSTART_MINUTES,
               frames: int | None = None, sequences: list[str] | None = None, workers: int = 2, seed: int = 0,
               overrides: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the pipeline under ``out``; returns the val metrics and the paths of each stage."""
    from occ_core.data.prepare.pipeline import prepare_kitti
    from occ_core.data.synthetic import generate_dataset
    from occ_core.engine.config import build_config
    from occ_core.engine.evaluate import evaluate_run
    from occ_core.engine.trainer import LAST, load_run_config, train
    from occ_core.utils.atomic import write_json

    from occ_core.utils.paths import output_dir

    # everything the user gave is checked before any data is generated
    out = output_dir(out, "quickstart folder")
    if train_minutes <= 0:
        raise OccError(f"--train-minutes must be positive (got {train_minutes})")
    if workers < 1:
        raise OccError(f"--workers must be a positive integer (got {workers})")
    if frames is not None and frames < 1:
        raise OccError(f"--frames must be a positive integer (got {frames})")
    raw, prepared, run = out / "synthetic", out / "prepared", out / "runs" / f"{method}-{preset}"
    train_overrides = [f"data.root={prepared.resolve()}", f"max_minutes={train_minutes}", f"seed={seed}",
                       *(overrides or [])]
    cfg = build_config(method, preset, overrides=train_overrides)  # unknown method / preset / bad --set
    from occ_core.config import parse_override

    user_length = any(parse_override(o)[0] in (["optim", "epochs"], ["optim", "max_steps"])
                      for o in overrides or [])  # checked above: the user's own length is not refitted
    if sequences is None:
        sequences = list(QUICKSTART_SEQUENCES)
    _check_sequences(sequences, frames, seed, workers)
    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    log(f"[1/4] synthetic data -> {raw}")
    generate_dataset(raw, sequences=sequences, frames=frames, seed=seed, workers=workers)
    stages["generate_s"] = time.perf_counter() - t0

    log(f"[2/4] prepare -> {prepared}")
    t = time.perf_counter()
    prepare_kitti(raw, prepared, workers=workers)
    stages["prepare_s"] = time.perf_counter() - t

    log(f"[3/4] train {method} ({preset}) for up to {train_minutes:g} min -> {run}")
    t = time.perf_counter()
    if (run / LAST).is_file():
        cfg = load_run_config(run)
        result = train(cfg, run, resume=True)
    else:
        if cfg.optim.schedule == "cosine" and not user_length:
            # a schedule that decays to its end needs the run's length: fit it, in steps, to the budget
            import dataclasses

            from occ_core.engine.calibrate import fit_length

            fit = fit_length(cfg, prepared, train_minutes)
            cfg = dataclasses.replace(cfg, fit_to_budget=True, optim=dataclasses.replace(
                cfg.optim, epochs=fit["epochs"], max_steps=fit["max_steps"]))
            log(f"      {fit['seconds_per_step']:.2f} s a training step here: {fit['max_steps']} steps "
                f"({fit['epochs']} epochs, the last one partial if need be) fit the budget (cosine learning-rate "
                f"schedule over them, re-fitted at the warm-up's end and every epoch's end from the step time measured "
                f"in the run; the time budget stays as a safety net)")
        result = train(cfg, run)
    stages["train_s"] = time.perf_counter() - t

    log("[4/4] evaluate the val split")
    t = time.perf_counter()
    from occ_core.models.backbone import quiet_random_init

    with quiet_random_init():  # the weights come from the run's checkpoint
        metrics = evaluate_run(run, split="val")
    stages["eval_s"] = time.perf_counter() - t
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.metrics.baselines import reference_scores

    refs = reference_scores(PreparedDataset(prepared), "val")  # what the model must beat, same split
    metrics["references"] = {name: {k: r[k] for k in ("iou", "miou", "precision", "recall")} for name, r in refs.items()}
    stages["total_s"] = time.perf_counter() - t0
    metrics.update({"stages": stages, "train": {k: result[k] for k in ("epochs_completed", "steps", "stopped_by_time")}})
    write_json(run / "val_metrics.json", metrics)
    picture = _write_picture(prepared, run, log)
    return {"metrics": metrics, "raw": raw, "prepared": prepared, "run": run, "picture": picture}


def _check_sequences(sequences: list[str], frames: int | None, seed: int, workers: int) -> None:
    """--sequences before any data is generated: names the generator knows, at least one training sequence and
    one of the val split (quickstart trains on the first and scores the second)."""
    from occ_core.data.formats.semantickitti import SPLITS
    from occ_core.data.prepare.layout import split_of
    from occ_core.data.synthetic.generate import _check_args

    names, _ = _check_args(sequences, frames, seed, workers)
    for split in ("train", "val"):
        if not any(split_of(s, SPLITS) == split for s in names):
            raise OccError(f"--sequences {','.join(names)}: no sequence of the {split} split (the SemanticKITTI "
                           f"{split} sequences are {', '.join(SPLITS[split])}); quickstart trains on the train "
                           "split and scores the val split")


def _write_picture(prepared: Path, run: Path, log: Callable[[str], None]) -> Path | None:
    """Ground truth vs prediction of the first labeled val frame, sensor view and BEV, into RUN/render/."""
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.render.views import frame_pictures, predict_frame

    data = PreparedDataset(prepared)
    frames = data.frames("val", labeled=True)
    if not frames:
        return None
    from occ_core.models.backbone import quiet_random_init

    with quiet_random_init():  # the weights come from the run's checkpoint
        pred = predict_frame(run, frames[0], data, device="auto")
    paths = frame_pictures(data, frames[0].name, run / "render", pred, views=("sensor", "bev"), scale=0.5)
    log(f"picture (ground truth vs prediction, frame {frames[0].name}): {paths[0]} (BEV: {paths[1]})")
    return paths[0]
