"""Latency per frame of exported networks: onnxruntime CPU vs PyTorch CPU.

For each method x preset (untrained weights: latency does not depend on them) on one frame of a
prepared folder:

* ``torch``       -- the model as trained/evaluated (``model(batch)`` eagerly: the selected voxel queries only);
* ``torchscript`` -- the traced export run by torch (the model's own forward while tracing: every voxel
  of the query grid is a query, the mask keeps the results);
* ``onnxruntime`` -- the exported ONNX file (the same trace) on onnxruntime's CPU provider;

plus the export time, the file size and the agreement with ``torch`` (argmax, max |logit diff|).

    python bench/bench_export.py --data PREPARED [--methods baseline,vpocc,b2s] [--presets tiny,paper]
        [--repeats 3] [--threads 2] [--json out.json]

PREPARED: any prepared folder, e.g. the synthetic one of 'occ quickstart' or
``python -c "from occ_core.data.synthetic import generate_dataset; ..."`` + 'occ prepare kitti'.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def bench_one(method: str, preset: str, data: Path, repeats: int, threads: int, tmp: Path) -> dict:
    import onnxruntime as ort

    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model, run_spec
    from occ_core.export.model import (ExportedModel, build_export_module, compare_outputs, export_onnx,
                                       reference_forward)

    torch.manual_seed(0)
    data = data.resolve()
    cfg = build_config(method, preset, overrides=[f"data.root={data}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, run_spec(cfg, data)).eval()
    ds = OccDataset(data, cfg.data.val_split, cfg.data, labeled_only=False)
    batch = collate([ds[0]])
    row: dict = {"method": method, "preset": preset, "cameras": int(batch["images"].shape[1]),
                 "image": list(batch["images"].shape[-2:]), "grid": list(model.lifting.grid_shape),
                 "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    reference, names = reference_forward(model, batch)
    with torch.no_grad():
        row["torch_s"], row["torch_min_s"] = _time(lambda: model(batch)["logits"], repeats)
    t = time.perf_counter()
    _, traced, names = build_export_module(model, batch, "logits", names)
    inputs = [batch[k] for k in names]
    row["trace_s"] = time.perf_counter() - t
    with torch.no_grad():
        row["torchscript_s"], _ = _time(lambda: traced(*inputs), repeats)
    t = time.perf_counter()
    out = tmp / f"{method}-{preset}.onnx"
    try:
        export_onnx(traced, inputs, out, names, ["logits"], {"method": method, "preset": preset})
    except Exception as e:  # report, do not stop the other rows
        row["onnx_error"] = str(e)
        return row
    row["export_s"] = row["trace_s"] + time.perf_counter() - t
    row["onnx_MB"] = out.stat().st_size / 1e6
    del traced
    gc.collect()
    runner = ExportedModel(out, threads=threads)
    row.update(compare_outputs(reference, runner(*inputs)))
    row["onnxruntime_s"], row["onnxruntime_min_s"] = _time(lambda: runner(*inputs), repeats)
    row["ort_version"] = ort.__version__
    out.unlink()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="prepared data folder (example frame)")
    ap.add_argument("--methods", default="baseline,vpocc,b2s")
    ap.add_argument("--presets", default="tiny,paper")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for preset in args.presets.split(","):
                try:
                    row = bench_one(method, preset, args.data, args.repeats, args.threads, Path(tmp))
                except Exception as e:  # e.g. out of memory for the paper preset
                    row = {"method": method, "preset": preset, "error": f"{type(e).__name__}: {e}"}
                rows.append(row)
                print(json.dumps(row), flush=True)
                gc.collect()
    print(f"\n| method | preset | image | grid | params (M) | torch (s) | torchscript (s) | onnxruntime (s) | export (s) | ONNX (MB) | argmax agree | max Δlogit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r or "onnx_error" in r:
            print(f"| {r['method']} | {r['preset']} | failed: {r.get('error') or r.get('onnx_error')} |")
            continue
        print(f"| {r['method']} | {r['preset']} | {r['image'][1]}x{r['image'][0]} | {'x'.join(map(str, r['grid']))} | "
              f"{r['params_M']:.1f} | {r['torch_s']:.2f} | {r['torchscript_s']:.2f} | {r['onnxruntime_s']:.2f} | "
              f"{r['export_s']:.0f} | {r['onnx_MB']:.0f} | {100 * r['argmax_agreement']:.4f}% | {r['max_abs_diff']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
