"""Time per training step of a method's ``tiny`` preset with and without the GaussRender loss (CPU).

    python bench/bench_render_loss.py                        # vpocc tiny, 2 threads, default render config
    python bench/bench_render_loss.py --method baseline --steps 6
    python bench/bench_render_loss.py --set loss.render.views=[sensor,bev,random] --set loss.render.image_scale=0.35
    python bench/bench_render_loss.py --data PREPARED          # an existing prepared folder (else a small synthetic one)

Both models start from the same weights and see the same frames; the two settings alternate step by
step (so that load from other jobs hits both alike) after one warm-up step each. Prints the median
and best ms/step of each (wall clock, and CPU time of the process, which load from other jobs
disturbs less), the ratios, and the median time of the rendering loss alone (forward +
its share of the backward is not separable, so that figure is the loss forward only).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _data(path: str | None) -> Path:
    if path:
        return Path(path)
    from occ_core.data.prepare.pipeline import prepare_kitti
    from occ_core.data.synthetic import generate_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench_render_loss_"))
    generate_dataset(tmp / "raw", sequences=["00", "08"], frames=3, seed=0, workers=2, progress=False)
    prepare_kitti(tmp / "raw", tmp / "prepared", workers=2, progress=False)
    return tmp / "prepared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="vpocc")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--data", default=None)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per setting")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model
    from occ_core.losses.render import gaussrender_losses

    root = _data(args.data)
    base = build_config(args.method, args.preset, overrides=[f"data.root={root}", *args.overrides])
    spec = PreparedDataset(root).spec
    if base.data.cameras:
        spec = spec.with_cameras(list(base.data.cameras))
    base = dataclasses.replace(base, n_classes=spec.n_classes)
    with_r = dataclasses.replace(base, loss=dataclasses.replace(base.loss, render=dataclasses.replace(base.loss.render, enabled=True)))
    without = dataclasses.replace(base, loss=dataclasses.replace(base.loss, render=dataclasses.replace(base.loss.render, enabled=False)))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m_off = build_model(without, spec)
        m_on = build_model(with_r, spec)
    m_on.load_state_dict(copy.deepcopy(m_off.state_dict()))
    data = OccDataset(root, base.data.train_split, base.data, train=True, seed=0)
    models = {"without": m_off, "with": m_on}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=base.optim.lr) for k, m in models.items()}
    times: dict[str, list[float]] = {"without": [], "with": []}
    cpu: dict[str, list[float]] = {"without": [], "with": []}
    render_fwd: list[float] = []
    n_gauss: list[int] = []
    for step in range(args.steps + 1):
        batch = collate([data[step % len(data)]])
        for name, model in models.items():
            model.train()
            t0, c0 = time.perf_counter(), time.process_time()
            out = model(batch)
            losses = model.losses(out, batch)
            total = sum(losses.values())
            opts[name].zero_grad(set_to_none=True)
            total.backward()
            opts[name].step()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if step > 0:
                times[name].append(dt)
                cpu[name].append(dc)
            if name == "with" and step > 0:
                with torch.no_grad():
                    t1 = time.perf_counter()
                    gaussrender_losses(model, {k: v.detach() for k, v in out.items()}, batch, with_r.loss.render)
                    render_fwd.append(time.perf_counter() - t1)
                    probs0 = torch.softmax(out["logits"][0].detach(), 0)[0]
                    sc = model.output_scale()
                    tgt = batch["target" if sc == 1 else f"target_1_{sc}"][0]
                    kept = ((probs0 <= 1 - with_r.loss.render.keep) | ((tgt != 0) & (tgt != 255))) & (tgt != 255)
                    n_gauss.append(int(kept.sum()))
            print(f"step {step} {name:8s} {dt * 1000:8.0f} ms (cpu {dc * 1000:6.0f} ms)  "
                  + " ".join(f"{k}={float(v.detach()):.3f}" for k, v in losses.items()),
                  flush=True)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    best = {k: min(v) * 1000 for k, v in times.items()}
    rc = with_r.loss.render
    print(f"\n{args.method} {args.preset}, {args.threads} threads, {args.steps} steps each; render views {rc.views}, "
          f"sensor scale {rc.image_scale}, BEV {rc.bev_resolution} m/px, keep {rc.keep}")
    print(f"without render loss: median {med['without']:.0f} ms/step (best {best['without']:.0f})")
    print(f"with render loss:    median {med['with']:.0f} ms/step (best {best['with']:.0f})")
    print(f"ratio: median {med['with'] / med['without']:.2f}x (best {best['with'] / best['without']:.2f}x)")
    cmed = {k: statistics.median(v) * 1000 for k, v in cpu.items()}
    print(f"CPU time (all threads): median {cmed['without']:.0f} vs {cmed['with']:.0f} ms/step, ratio {cmed['with'] / cmed['without']:.2f}x")
    print(f"render loss forward alone: median {statistics.median(render_fwd) * 1000:.0f} ms; "
          f"predicted Gaussians (kept, not ignored): median {statistics.median(n_gauss):,}")


if __name__ == "__main__":
    main()
