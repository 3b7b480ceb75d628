"""Export a run's network as a fixed-size ONNX or TorchScript model (``occ export --run``).

The exported model is the method's **own forward** (``model(batch)["logits"]`` in eval mode, or
``model.predict(batch)`` for ``outputs="labels"``) traced with ``torch.jit.trace``: nothing is
rewritten or patched. The models are written to export (docs/design.md): while tracing, the lifting
makes every voxel of its query grid a query and keeps the results where the query mask is true (no
data-dependent shapes), the depth proposal back-projects every pixel into a dump slot (no
``nonzero``), and the 3x3 / rigid / four-point-homography inverses are the closed forms of
:mod:`occ_core.geometry.linalg` (no ``torch.linalg``).

The exported model takes **positional tensors** (batch size 1, the run's cameras and image size)
instead of the batch dict and returns the class logits ``[1, n_classes, X, Y, Z]`` (float32) or the
labels ``[1, X, Y, Z]`` (uint8 class indices, ``model.predict``: B2S's threshold decision, the argmax
for the others), ``(X, Y, Z)`` the dataset grid of the run's spec. Its inputs are the batch tensors
the forward actually reads (found by recording the tensors one forward touches), in this order::

    images [1, V, 3, H, W] float32          each camera's benchmark crop resized by data.image_scale, ImageNet-normalised
    image_right [1, 3, H, W] float32        (stereo methods only)
    depth [1, V, 1, H, W] float32           sparse LiDAR depth in metres, 0 = no point
    intrinsics [1, V, 3, 3] float64         intrinsics of the network images (crop and resize folded in)
    grid_to_cam [1, V, 4, 4] float64        grid frame -> camera
    crop_to_image [1, V, 3, 3] float64      benchmark-crop pixels -> network-image pixels
    vp [1, V, 2] float32                    vanishing point (network-image pixels, NaN = unknown; VP methods)
    input_occ [1, X, Y, Z] float32          voxelized single scan (methods that read it)
    points_padded [1, N, 4] float32         LiDAR scan (x, y, z, intensity; grid frame), N fixed (LiDAR methods)
    points_count [1] int64                  valid rows of points_padded

The names, shapes, dtypes and meanings are stored in the file (ONNX ``metadata_props["occ_export"]``,
TorchScript extra file ``occ_export.json``) and printed by :func:`describe`.

ONNX export uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset 17
by default) on the trace: it works offline and needs only ``onnx``; ``exporter="dynamo"`` uses the
torch.export based one (needs ``onnxscript``). An operator ONNX lacks raises :class:`ExportError`
naming it.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from occ_core.errors import OccError

FORMATS = ("onnx", "torchscript")
OUTPUTS = ("logits", "labels")
METADATA_KEY = "occ_export"
TORCHSCRIPT_EXTRA = "occ_export.json"
DEFAULT_OPSET = 17

INPUT_DOCS: dict[str, str] = {
    "images": "each camera's benchmark crop resized by data.image_scale, RGB, ImageNet-normalised (cameras in the spec's order)",
    "image_right": "right stereo image, same processing as the first camera's image",
    "depth": "sparse LiDAR depth in metres in each network image (nearest point per pixel), 0 = none",
    "intrinsics": "intrinsics of the network images (benchmark crop and resize folded in; no flip at inference)",
    "grid_to_cam": "grid frame -> camera (x right, y down, z forward), last row 0 0 0 1",
    "crop_to_image": "benchmark-crop pixels -> network-image pixels (the resize, centre convention)",
    "vp": "vanishing point (u, v) in network-image pixels, NaN = unknown (image centre); first camera only",
    "input_occ": "voxelized single scan on the dataset grid (0/1)",
    "points_padded": "LiDAR scan in the grid frame (x, y, z in metres, intensity), fixed number of rows N "
                     "(model.lidar.export_points); rows past points_count are ignored (LiDAR methods)",
    "points_count": "number of valid rows of points_padded (int64; LiDAR methods)",
    "binary": "binary occupancy on the dataset grid (0 empty, 1 occupied, 255 unknown)",
    "target": "semantic target on the dataset grid (its binary occupancy is the input)",
}
"""Meaning of every input the exported models may take (batch keys, docs/design.md)."""

_FIRST_KEYS = ("images", "image_right", "depth", "intrinsics", "grid_to_cam", "crop_to_image", "vp", "input_occ",
               "points_padded", "points_count")
_SKIP_KEYS = ("frame", "points")  # not a tensor / a data-dependent number of rows


class ExportError(OccError):
    """The model cannot be exported (an operator the format lacks, a tracing failure)."""


class ExportModule(nn.Module):
    """Positional-tensor front of a method's own forward: ``forward(*inputs)`` with the tensors named by
    ``input_names`` (batch keys) -> ``model(batch)["logits"]`` ``[B, n_classes, X, Y, Z]`` float32
    (``outputs="logits"``) or ``model.predict(batch)`` ``[B, X, Y, Z]`` uint8 (``outputs="labels"``).

    The model is put in eval mode (logits at the dataset grid, BatchNorm statistics, no dropout)."""

    def __init__(self, model: nn.Module, input_names: Sequence[str], outputs: str = "logits"):
        super().__init__()
        if outputs not in OUTPUTS:
            raise OccError(f"unknown outputs '{outputs}' (logits, labels)")
        self.model = model.eval()
        self.input_names = tuple(input_names)
        self.outputs = outputs

    def forward(self, *inputs: Tensor) -> Tensor:
        batch = dict(zip(self.input_names, inputs))
        if self.outputs == "labels":
            return self.model.predict(batch).to(torch.uint8)
        return self.model(batch)["logits"]


# ------------------------------------------------------------------------------------------------
# Example inputs and input discovery
# ------------------------------------------------------------------------------------------------


def example_batch(run: str | Path, cfg, data: str | Path | None = None, split: str | None = None,
                  index: int = 0) -> dict[str, Any]:
    """Frame ``index`` of the run's prepared data as a batch of size 1 (``split``: default the run's
    validation split, else any frame), batched by :func:`occ_core.data.loading.dataset.collate`."""
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.engine.trainer import data_root
    from occ_core.errors import MissingError

    root = Path(data) if data is not None else data_root(cfg, Path(run))
    prepared = PreparedDataset(root)
    last: Exception | None = None
    for sp in ([split] if split else [cfg.data.val_split, "all"]):
        try:
            ds = OccDataset(prepared, sp, cfg.data, train=False, seed=cfg.seed, labeled_only=False)
        except MissingError as e:
            last = e
            continue
        if index >= len(ds):
            raise OccError(f"split '{sp}' has {len(ds)} frame(s), no frame {index}", root)
        return collate([ds[index]])
    assert last is not None
    raise last


def candidate_inputs(batch: dict[str, Any]) -> list[str]:
    """Tensor keys of a batch a forward may read: the documented inputs first (:data:`_FIRST_KEYS`),
    then any other tensor key in sorted order (a method reading e.g. ``binary`` gets it as an input)."""
    keys = [k for k in _FIRST_KEYS if k in batch]
    keys += sorted(k for k in batch if k not in keys)
    return [k for k in keys if torch.is_tensor(batch[k]) and k not in _SKIP_KEYS]


class _InputRecorder(torch.overrides.TorchFunctionMode):
    """Records which of the given tensors any torch function (or tensor method) touches."""

    def __init__(self, tensors: dict[str, Tensor]):
        super().__init__()
        self.ids = {id(t): k for k, t in tensors.items()}
        self.used: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_flatten

        for leaf in tree_flatten((args, kwargs or {}))[0]:
            if torch.is_tensor(leaf) and id(leaf) in self.ids:
                self.used.add(self.ids[id(leaf)])
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def reference_forward(model: nn.Module, batch: dict[str, Any], outputs: str = "logits") -> tuple[Tensor, list[str]]:
    """The PyTorch output of ``model`` (eval mode) on ``batch`` -- the logits, or ``model.predict``'s
    labels for ``outputs="labels"`` -- and the candidate inputs its forward reads."""
    if outputs not in OUTPUTS:
        raise OccError(f"unknown outputs '{outputs}' (logits, labels)")
    model.eval()
    names = candidate_inputs(batch)
    recorder = _InputRecorder({k: batch[k] for k in names})
    with recorder:
        out = model.predict(batch) if outputs == "labels" else model(batch)["logits"]
    return out, [k for k in names if k in recorder.used]


def _trace(module: nn.Module, inputs: tuple[Tensor, ...]) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on shape-derived Python ints (constant here)
        try:
            return torch.jit.trace(module, inputs, check_trace=False, strict=False)
        except Exception as e:  # tracing a data-dependent Python path, an untraceable op
            raise ExportError(f"cannot trace the model: {_first_line(e)}") from None


def build_export_module(model: nn.Module, batch: dict[str, Any], outputs: str = "logits",
                        names: Sequence[str] | None = None) -> tuple[ExportModule, torch.jit.ScriptModule, list[str]]:
    """The positional wrapper of ``model`` (its own forward, eval mode) over the inputs ``names``
    (default: those the forward reads, see :func:`reference_forward`) and its trace on ``batch``."""
    if names is None:
        names = reference_forward(model, batch, outputs)[1]
    wrapper = ExportModule(model, names, outputs)
    traced = _trace(wrapper, tuple(batch[k] for k in names))
    return wrapper, traced, list(names)


# ------------------------------------------------------------------------------------------------
# Writers
# ------------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0].strip()


_OP_PATTERNS = (
    re.compile(r"operator '([^']+)'"),  # legacy exporter: Exporting the operator 'aten::x' to ONNX ...
    re.compile(r"\b(aten(?:::|\.)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)"),  # dynamo: aten.x.default
    re.compile(r"\b((?:prim|onnx|torchvision|custom)::[A-Za-z0-9_]+)"),
)


def unsupported_op(e: BaseException) -> str | None:
    """The operator an exporter error complains about (``aten::linalg_inv``), if it names one."""
    text = str(e)
    for pat in _OP_PATTERNS:
        m = pat.search(text)
        if m:
            return m.group(1)
    return None


def export_onnx(module: nn.Module | torch.jit.ScriptModule, inputs: Sequence[Tensor], path: str | Path,
                input_names: Sequence[str], output_names: Sequence[str] = ("logits",),
                metadata: dict[str, Any] | None = None, opset: int = DEFAULT_OPSET,
                exporter: str = "torchscript") -> Path:
    """Write ``module(*inputs)`` as ONNX (atomically) with ``metadata`` as JSON under
    ``metadata_props["occ_export"]``. Raises :class:`ExportError` naming an unsupported operator."""
    import onnx

    from occ_core.utils.atomic import atomic_path

    if opset < 17:
        raise OccError(f"ONNX opset {opset} is too old (17 or newer)")
    if exporter not in ("torchscript", "dynamo"):
        raise OccError(f"unknown ONNX exporter '{exporter}' (torchscript, dynamo)")
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    prog = torch.onnx.export(module, tuple(inputs), dynamo=True, opset_version=opset,
                                             input_names=list(input_names), output_names=list(output_names),
                                             external_data=False, report=False, verify=False)
                    prog.save(str(tmp))
                else:
                    torch.onnx.export(module, tuple(inputs), str(tmp), dynamo=False, opset_version=opset,
                                      input_names=list(input_names), output_names=list(output_names),
                                      do_constant_folding=True)
        except ImportError as e:
            raise ExportError(f"the '{exporter}' ONNX exporter needs a missing package ({e})") from None
        except Exception as e:
            op = unsupported_op(e)
            if op is not None:
                raise ExportError(f"cannot export to ONNX (opset {opset}): operator '{op}' is not supported "
                                  f"({_first_line(e)})", path) from None
            raise ExportError(f"cannot export to ONNX (opset {opset}): {_first_line(e)}", path) from None
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        for key, value in {METADATA_KEY: json.dumps(metadata or {}), **_flat_props(metadata or {})}.items():
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
        model.producer_name = "occ"
        onnx.save(model, str(tmp))
    return path


def _flat_props(meta: dict[str, Any]) -> dict[str, str]:
    """A few human-readable ONNX metadata entries besides the JSON (Netron shows them)."""
    out = {}
    for key in ("method", "preset", "outputs", "occ_version"):
        if key in meta:
            out[key] = str(meta[key])
    if "inputs" in meta:
        out["input_names"] = ",".join(i["name"] for i in meta["inputs"])
        for i in meta["inputs"]:
            out[f"input.{i['name']}"] = f"{i['dtype']}{i['shape']}: {i['meaning']}"
    return out


def export_torchscript(traced: torch.jit.ScriptModule, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Save a traced module (atomically) with ``metadata`` as the extra file ``occ_export.json``."""
    from occ_core.utils.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata or {})})
    return path


# ------------------------------------------------------------------------------------------------
# Reading back and running
# ------------------------------------------------------------------------------------------------


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``occ_export`` metadata of an exported ONNX or TorchScript file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        return json.loads(props.get(METADATA_KEY, "{}"))
    extra = {TORCHSCRIPT_EXTRA: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_EXTRA] or "{}")


def import_onnxruntime():
    """``onnxruntime``, imported so that it writes nothing into the user's home: on import it creates
    ``$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime/`` (a device id and a telemetry database,
    ``~/.cache`` by default) whatever the telemetry setting, so the import runs with XDG_CACHE_HOME pointed at a
    temporary folder that is removed right after (the sessions write nothing there)."""
    import os
    import shutil
    import sys
    import tempfile

    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    scratch = tempfile.mkdtemp(prefix="occ-onnxruntime-")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = scratch
    try:
        import onnxruntime
    finally:
        if before is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = before
        shutil.rmtree(scratch, ignore_errors=True)
    return onnxruntime


class ExportedModel:
    """Run an exported file: ``ExportedModel(path)(*tensors)`` -> numpy array (ONNX runs on
    onnxruntime's CPU provider, TorchScript on torch CPU)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.kind = "onnx" if self.path.suffix == ".onnx" else "torchscript"
        if self.kind == "onnx":
            ort = import_onnxruntime()
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = int(threads)
                opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self.session.get_inputs()]
        else:
            self.module = torch.jit.load(str(self.path), map_location="cpu")
            self.input_names = list(read_metadata(self.path).get("input_names", []))

    def __call__(self, *inputs: Tensor | np.ndarray) -> np.ndarray:
        if self.kind == "onnx":
            feed = {n: (x.numpy() if torch.is_tensor(x) else np.asarray(x)) for n, x in zip(self.input_names, inputs)}
            return self.session.run(None, feed)[0]
        with torch.no_grad():
            out = self.module(*[torch.as_tensor(x) for x in inputs])
        return out.numpy()


def compare_outputs(reference: Tensor, got: np.ndarray, outputs: str = "logits") -> dict[str, float]:
    """Agreement of an exported model's output with the PyTorch one.

    ``outputs="logits"``: ``reference`` is the logits ``[B, C, X, Y, Z]``; returns ``argmax_agreement``
    (fraction of voxels whose argmax agrees) and ``max_abs_diff``. ``outputs="labels"``: ``reference``
    is ``model.predict``'s labels ``[B, X, Y, Z]``; returns ``label_agreement`` (fraction of equal voxels)."""
    ref = reference.detach().cpu()
    got_t = torch.from_numpy(np.asarray(got))
    if outputs == "labels":
        if tuple(got_t.shape) != tuple(ref.shape):
            raise ExportError(f"exported labels have shape {tuple(got_t.shape)}, PyTorch {tuple(ref.shape)}")
        return {"label_agreement": float((ref.long() == got_t.long()).double().mean())}
    if tuple(got_t.shape) != tuple(ref.shape):
        raise ExportError(f"exported logits have shape {tuple(got_t.shape)}, PyTorch {tuple(ref.shape)}")
    return {"argmax_agreement": float((ref.argmax(1) == got_t.argmax(1)).double().mean()),
            "max_abs_diff": float((got_t.float() - ref.float()).abs().max())}


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------


def input_specs(names: Sequence[str], batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Name, shape, dtype and meaning (:data:`INPUT_DOCS`) of the inputs ``names`` of ``batch``."""
    specs = []
    for n in names:
        t = batch[n]
        base = re.sub(r"_1_\d+$", "", n)  # target_1_S / binary_1_S: the same at 1:S
        specs.append({"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                      "meaning": INPUT_DOCS.get(base, INPUT_DOCS.get(n, ""))})
    return specs


def describe(meta: dict[str, Any]) -> str:
    """Human-readable summary of an exported model's metadata (inputs and outputs)."""
    lines = [f"{meta.get('method', '?')} ({meta.get('preset', '?')}) exported as {meta.get('format', '?')}"]
    for i in meta.get("inputs", []):
        lines.append(f"  in  {i['name']:<18} {i['dtype']:<8} {i['shape']}  {i['meaning']}")
    for o in [meta["output"]] if "output" in meta else []:
        lines.append(f"  out {o['name']:<18} {o['dtype']:<8} {o['shape']}  {o['meaning']}")
    return "\n".join(lines)


def output_spec(model: nn.Module, outputs: str) -> dict[str, Any]:
    """Name, shape, dtype and meaning of the exported output, from the model's dataset spec."""
    spec = model.spec
    grid = [int(g) for g in spec.grid.shape]
    names = list(spec.classes.names)
    classes = ", ".join(f"{i} {n}" for i, n in enumerate(names))
    if outputs == "logits":
        return {"name": "logits", "shape": [1, len(names), *grid], "dtype": "float32",
                "meaning": f"class logits on the {spec.name} grid {'x'.join(map(str, grid))} (model(batch)['logits'] in "
                           f"eval mode; the argmax is a class index: {classes})"}
    return {"name": "labels", "shape": [1, *grid], "dtype": "uint8",
            "meaning": f"class indices 0..{len(names) - 1} on the {spec.name} grid (model.predict: the method's own "
                       f"decision; {classes})"}


def export_model(run: str | Path, fmt: str, out: str | Path, checkpoint: str = "best", outputs: str = "logits",
                 data: str | Path | None = None, split: str | None = None, verify: bool = True,
                 opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> dict[str, Any]:
    """Export a run's network (``fmt``: onnx or torchscript) to ``out``; returns a summary with the
    input specs and, with ``verify``, the agreement of the exported model with PyTorch on the example
    frame (logits: ``argmax_agreement``, ``max_abs_diff``; labels: ``label_agreement`` with
    ``model.predict``)."""
    from occ_core import __version__
    from occ_core.engine.trainer import load_model

    if fmt not in FORMATS:
        raise OccError(f"unknown model format '{fmt}' ({', '.join(FORMATS)})")
    if outputs not in OUTPUTS:
        raise OccError(f"unknown outputs '{outputs}' (logits, labels)")
    run, out = Path(run), Path(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone warning when the run had no weights
        model, cfg = load_model(run, checkpoint, "cpu")
    batch = example_batch(run, cfg, data, split)
    if hasattr(model, "export_inputs"):  # e.g. LiDAR methods: the scan as a fixed-size padded tensor + count
        batch = model.export_inputs(batch)
    reference, names = reference_forward(model, batch, outputs)
    wrapper, traced, names = build_export_module(model, batch, outputs, names)
    inputs = tuple(batch[k] for k in names)
    spec = model.spec
    out_spec = output_spec(model, outputs)
    meta = {
        "occ_version": __version__, "format": fmt, "method": cfg.method, "preset": cfg.preset,
        "run": run.name, "checkpoint": checkpoint, "outputs": outputs, "n_classes": int(spec.n_classes),
        "dataset": spec.name, "grid": [int(g) for g in spec.grid.shape], "class_names": list(spec.classes.names),
        "cameras": list(spec.camera_names),
        "image_scale": float(cfg.data.image_scale), "example_frame": batch["frame"][0],
        "input_names": list(names), "inputs": input_specs(names, batch), "output": out_spec,
        "batch_size": 1, "exporter": exporter if fmt == "onnx" else "torch.jit.trace",
        "opset": opset if fmt == "onnx" else None,
        "notes": "the model's own forward; fixed input size; inputs as in docs/design.md (batch dim 1); "
                 "inference never flips",
    }
    if fmt == "onnx":
        export_onnx(traced if exporter == "torchscript" else wrapper, inputs, out, names, [out_spec["name"]],
                    meta, opset=opset, exporter=exporter)
    else:
        export_torchscript(traced, out, meta)
    summary: dict[str, Any] = {"out": str(out), "format": fmt, "inputs": meta["inputs"], "output": out_spec,
                               "bytes": out.stat().st_size}
    if verify:
        got = ExportedModel(out)(*inputs)
        summary.update(compare_outputs(reference, got, outputs))
    return summary
