"""Export a run's network as a fixed-size ONNX or TorchScript model (``occ export --run``).

The exported model takes **positional tensors** (batch size 1, the run's image size) instead of the
batch dict, and returns the class logits ``[1, n_classes, 256, 256, 32]`` (float32) or the labels
``[1, 256, 256, 32]`` (uint8 class indices, the argmax). Its inputs are the batch tensors the method's
forward actually reads, in this order (found by recording the tensors one forward touches)::

    image [1, 3, H, W] float32        ImageNet-normalised left image (benchmark crop resized by data.image_scale)
    image_right [1, 3, H, W] float32  (stereo methods only)
    depth [1, 1, H, W] float32        sparse LiDAR depth in metres, 0 = no point
    K [1, 3, 3] float32               intrinsics of the resized image
    Tr [1, 4, 4] float32              velodyne -> cam0 (last row 0 0 0 1)
    vp [1, 2] float32                 vanishing point (resized-image pixels, NaN = unknown; VPOcc only)
    projected_pix_S [1, N_S, 2] float32   voxel centres projected into the resized image (u, v)
    fov_mask_S [1, N_S] bool              voxel centre in view

The names, shapes, dtypes and meanings are stored in the file (ONNX ``metadata_props["occ_export"]``,
TorchScript extra file ``occ_export.json``) and printed by :func:`describe`.

Exportability. Two parts of the models are rewritten for export (on a copy of the model; the
weights and the maths are unchanged):

* The voxel-query lifting selects the depth-proposed, in-view voxels with ``nonzero`` and pads them to
  the longest row (a data-dependent shape). The exported lifting runs the attention on **every**
  voxel of the query grid and keeps the result only where the mask is true (``torch.where``); each
  query's attention and FFN depend on that query alone, so the selected voxels get the same values.
  This costs the attention of the unselected voxels (measured in docs/export.md).
* The depth proposal back-projects with ``torch.linalg.inv`` and ``nonzero``; the exported one uses
  the closed-form 3x3 inverse, a rigid 4x4 inverse and a scatter into a dump slot. VPOcc's VPZoomer
  solves 8x8 systems (``linalg.solve``) and inverts homographies; the exported one uses the closed-form
  four-point homography (unit square to quadrilateral, Heckbert). All in float64 as in the model.

ONNX export uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset 17
by default): it works offline and needs only ``onnx``; ``exporter="dynamo"`` uses the torch.export
based one (needs ``onnxscript``). An operator ONNX lacks raises :class:`ExportError` naming it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import types
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.errors import OccError

FORMATS = ("onnx", "torchscript")
OUTPUTS = ("logits", "labels")
METADATA_KEY = "occ_export"
TORCHSCRIPT_EXTRA = "occ_export.json"
DEFAULT_OPSET = 17

INPUT_DOCS: dict[str, str] = {
    "image": "left image, benchmark crop resized by data.image_scale, RGB, ImageNet-normalised",
    "image_right": "right image, same processing as image",
    "depth": "sparse LiDAR depth in metres at the image resolution (nearest point per pixel), 0 = none",
    "K": "intrinsics of the resized image (P2's 3x3 part scaled)",
    "Tr": "velodyne -> cam0 rigid transform (last row 0 0 0 1)",
    "vp": "dominant vanishing point (u, v) in resized-image pixels, NaN = unknown (image centre)",
    "projected_pix": "voxel centres at scale S projected into the resized image, (u, v) pixels, C order of the 256/S x 256/S x 32/S grid",
    "fov_mask": "voxel centre at scale S in view",
    "pix_z": "voxel centre depth at scale S (metres)",
    "input_occ": "voxelized single scan (0/1)",
}
"""Meaning of every input the exported models may take."""

_FIRST_KEYS = ("image", "image_right", "depth", "K", "Tr", "vp")
_SKIP_KEYS = ("flipped", "frame")


class ExportError(OccError):
    """The model cannot be exported (an operator the format lacks, a tracing failure)."""


# ------------------------------------------------------------------------------------------------
# Exportable replacements (closed forms, masks instead of data-dependent shapes)
# ------------------------------------------------------------------------------------------------


def adjugate3x3(m: Tensor) -> Tensor:
    """Adjugate of ``m [..., 3, 3]`` (``inverse * det``), closed form."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    rows = [
        torch.stack([e * i - f * h, c * h - b * i, b * f - c * e], -1),
        torch.stack([f * g - d * i, a * i - c * g, c * d - a * f], -1),
        torch.stack([d * h - e * g, b * g - a * h, a * e - b * d], -1),
    ]
    return torch.stack(rows, -2)


def inverse3x3(m: Tensor) -> Tensor:
    """Inverse of ``m [..., 3, 3]`` by the adjugate (exportable ``torch.linalg.inv``)."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return adjugate3x3(m) / det[..., None, None]


def inverse_rigid4x4(T: Tensor) -> Tensor:
    """Inverse of ``T [..., 4, 4]`` whose last row is ``0 0 0 1`` (upper-left block inverted exactly)."""
    A_inv = inverse3x3(T[..., :3, :3])
    t = -(A_inv @ T[..., :3, 3:4])
    top = torch.cat([A_inv, t], -1)
    return torch.cat([top, T[..., 3:4, :]], -2)


def _square_to_quad(q: Tensor) -> Tensor:
    """Homography ``[..., 3, 3]`` mapping the unit square (0,0),(1,0),(1,1),(0,1) to ``q [..., 4, 2]``."""
    x0, x1, x2, x3 = q[..., 0, 0], q[..., 1, 0], q[..., 2, 0], q[..., 3, 0]
    y0, y1, y2, y3 = q[..., 0, 1], q[..., 1, 1], q[..., 2, 1], q[..., 3, 1]
    sx, sy = x0 - x1 + x2 - x3, y0 - y1 + y2 - y3
    dx1, dx2, dy1, dy2 = x1 - x2, x3 - x2, y1 - y2, y3 - y2
    den = dx1 * dy2 - dx2 * dy1
    g = (sx * dy2 - dx2 * sy) / den
    h = (dx1 * sy - sx * dy1) / den
    one = torch.ones_like(g)
    rows = [
        torch.stack([x1 - x0 + g * x1, x3 - x0 + h * x3, x0], -1),
        torch.stack([y1 - y0 + g * y1, y3 - y0 + h * y3, y0], -1),
        torch.stack([g, h, one], -1),
    ]
    return torch.stack(rows, -2)


def homography4(src: Tensor, dst: Tensor) -> Tensor:
    """The homography ``H [..., 3, 3]`` (``H[2, 2] = 1``) with ``dst ~ H @ [src, 1]`` for four point
    pairs ``[..., 4, 2]``: closed form, no linear solve (same result as the 8x8 DLT)."""
    Hm = _square_to_quad(dst) @ adjugate3x3(_square_to_quad(src))
    return Hm / Hm[..., 2:3, 2:3]


def _solve_homography_export(src: Tensor, dst: Tensor) -> Tensor:
    if src.shape[-2] != 4 or dst.shape[-2] != 4:
        return _ORIGINALS["solve_homography"](src, dst)
    out_dtype = torch.promote_types(src.dtype, dst.dtype)
    if not out_dtype.is_floating_point:
        out_dtype = torch.get_default_dtype()
    s, d = torch.broadcast_tensors(src.to(torch.float64), dst.to(torch.float64))
    return homography4(s, d).to(out_dtype)


def _zoom_sampling_grid_export(vp: Tensor, image_size: Sequence[int], alpha: float = 0.2,
                               dtype: torch.dtype | None = None) -> Tensor:
    """:func:`occ_core.geometry.homography.zoom_sampling_grid` without ``linalg``: the inverse
    homographies are the homographies from the target rectangles back to the source trapezoids."""
    from occ_core.geometry import homography as hg

    W, H = int(image_size[0]), int(image_size[1])
    vp = torch.as_tensor(vp)
    c = hg.vp_zoom_corners(vp.double(), (W, H), alpha)
    Hl_inv, Hr_inv = homography4(c["dst_left"], c["src_left"]), homography4(c["dst_right"], c["src_right"])
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64, device=vp.device),
                            torch.arange(W, dtype=torch.float64, device=vp.device), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(1, H * W, 2)
    left = (pix[..., 0] + 0.5 <= W / 2.0).expand(vp.shape[0], -1)
    src = hg._split(pix, left, Hl_inv, Hr_inv)
    scale = src.new_tensor([2.0 / W, 2.0 / H])
    grid = (src + 0.5) * scale - 1.0
    return grid.reshape(-1, H, W, 2).to(dtype or (vp.dtype if vp.is_floating_point() else torch.float32))


_ORIGINALS: dict[str, Any] = {}


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """Swap the homography helpers of :mod:`occ_core.geometry.homography` for exportable closed forms
    while tracing (restored on exit)."""
    from occ_core.geometry import homography as hg

    saved = {"solve_homography": hg.solve_homography, "zoom_sampling_grid": hg.zoom_sampling_grid}
    _ORIGINALS.update(saved)
    hg.solve_homography = _solve_homography_export
    hg.zoom_sampling_grid = _zoom_sampling_grid_export
    try:
        yield
    finally:
        hg.solve_homography = saved["solve_homography"]
        hg.zoom_sampling_grid = saved["zoom_sampling_grid"]


def dense_depth_proposal(proposal: nn.Module, depth: Tensor, K: Tensor, Tr: Tensor) -> Tensor:
    """:class:`~occ_core.models.lifting.DepthProposal` without ``nonzero`` / ``linalg``: every pixel is
    back-projected; pixels without depth or outside the grid write into a dump slot.

    Returns Tensor  # [B, X*Y*Z] bool (unflipped images: inference never flips)."""
    B, _, H, W = depth.shape
    X, Y, Z = proposal.grid_shape
    N = X * Y * Z
    d = depth[:, 0].double().reshape(B, H * W)  # [B, HW]
    valid = d > 0
    if proposal.max_depth is not None:
        valid = valid & (d <= proposal.max_depth)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64, device=depth.device),
                          torch.arange(W, dtype=torch.float64, device=depth.device), indexing="ij")
    u, v = u.reshape(1, H * W), v.reshape(1, H * W)
    pix = torch.stack([u * d, v * d, d], dim=-1)  # [B, HW, 3]
    K_inv = inverse3x3(K.double())  # [B, 3, 3]
    cam = pix @ K_inv.transpose(1, 2)
    T_inv = inverse_rigid4x4(Tr.double())
    velo = cam @ T_inv[:, :3, :3].transpose(1, 2) + T_inv[:, None, :3, 3]
    origin = torch.tensor(proposal.origin, dtype=torch.float64, device=depth.device)
    size = torch.tensor(proposal.voxel_size, dtype=torch.float64, device=depth.device)
    idx = torch.floor((velo - origin) / size)
    inside = valid & ((idx >= 0) & (idx < torch.tensor([X, Y, Z], dtype=torch.float64, device=depth.device))).all(-1)
    idx = torch.where(inside[..., None], idx, torch.zeros_like(idx)).long()
    flat = idx[..., 0] * (Y * Z) + idx[..., 1] * Z + idx[..., 2]
    flat = torch.where(inside, flat, torch.full_like(flat, N))  # dump slot N
    occ = torch.zeros(B, N + 1, dtype=torch.float32, device=depth.device)
    occ = occ.scatter(1, flat, torch.ones_like(flat, dtype=torch.float32))[:, :N]
    if proposal.dilate > 0:
        k = 2 * proposal.dilate + 1
        occ = F.max_pool3d(occ.view(B, 1, X, Y, Z), k, stride=1, padding=proposal.dilate).view(B, N)
    return occ > 0


def _dense_lifting_forward(self, feats: Sequence[Tensor], batch: dict[str, Any], return_mask: bool = False):
    """:meth:`VoxelQueryLifting.forward` with masks instead of the selected-query padding: every voxel
    is a query; the attention result is kept where the query mask is true (bound as ``forward`` on
    the lifting modules of the exported copy)."""
    if len(feats) != self.num_levels:
        raise ValueError(f"lifting built for {self.num_levels} feature levels, got {len(feats)}")
    B, C = feats[0].shape[:2]
    N = self.num_voxels
    X, Y, Z = self.grid_shape
    pix_all, fov = self.projections(batch)
    mask = dense_depth_proposal(self.proposal, batch["depth"], batch["K"], batch["Tr"]) & fov
    base = (self.positional_volume() + self.mask_token[:, None, None, None]).view(1, C, N).expand(B, C, N)
    if self.query_embed.shape[0] > 1:
        q = self.query_embed[None].expand(B, N, C)
    else:
        q = self.query_embed.expand(B, N, C)
    qpos = self.positional()[None].expand(B, N, C)
    pix = torch.where(mask[..., None], pix_all, torch.zeros_like(pix_all))  # finite everywhere
    ref = self.reference_points(batch, pix)
    index = torch.arange(N, device=pix.device)[None].expand(B, N)
    kw = self.attention_kwargs(batch, index, pix, ref, feats)
    for layer in self.layers:
        q = layer(q, feats, ref, query_pos=qpos, query_mask=mask, **kw)
    out = torch.where(mask[:, None, :], q.transpose(1, 2), base)
    vol = out.reshape(B, C, X, Y, Z)
    return (vol, mask) if return_mask else vol


def make_exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose voxel-query liftings use the dense, mask-based forward."""
    from occ_core.models.lifting import VoxelQueryLifting

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, VoxelQueryLifting):
            module.forward = types.MethodType(_dense_lifting_forward, module)
    return model


class ExportModule(nn.Module):
    """Positional-tensor front of a method: ``forward(*inputs)`` with the tensors named by
    ``input_names`` (batch keys) -> logits ``[B, n_classes, 256, 256, 32]`` or labels
    ``[B, 256, 256, 32]`` uint8."""

    def __init__(self, model: nn.Module, input_names: Sequence[str], outputs: str = "logits"):
        super().__init__()
        if outputs not in OUTPUTS:
            raise OccError(f"unknown outputs '{outputs}' (logits, labels)")
        self.model = model
        self.input_names = tuple(input_names)
        self.outputs = outputs

    def forward(self, *inputs: Tensor) -> Tensor:
        batch = dict(zip(self.input_names, inputs))
        logits = self.model(batch)["logits"]
        if self.outputs == "labels":
            return logits.argmax(dim=1).to(torch.uint8)
        return logits


# ------------------------------------------------------------------------------------------------
# Example inputs and input discovery
# ------------------------------------------------------------------------------------------------


def example_batch(run: str | Path, cfg, data: str | Path | None = None, split: str | None = None) -> dict[str, Any]:
    """One frame of the run's prepared data as a batch of size 1 (``split``: default the run's
    validation split, else any frame)."""
    from occ_core.data.prepared import PreparedDataset
    from occ_core.data.torch_dataset import OccDataset
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
        return torch.utils.data.default_collate([ds[0]])
    assert last is not None
    raise last


def candidate_inputs(batch: dict[str, Any]) -> list[str]:
    """Tensor keys of a batch a forward may read, in the documented order (targets excluded)."""
    keys = [k for k in _FIRST_KEYS if k in batch]
    scales = sorted({int(k.rsplit("_", 1)[1]) for k in batch if k.startswith("projected_pix_")})
    for s in scales:
        keys += [k for k in (f"projected_pix_{s}", f"fov_mask_{s}", f"pix_z_{s}") if k in batch]
    if "input_occ" in batch:
        keys.append("input_occ")
    return [k for k in keys if torch.is_tensor(batch[k]) and k not in _SKIP_KEYS]


def _trace(module: nn.Module, inputs: tuple[Tensor, ...]) -> torch.jit.ScriptModule:
    with export_patches(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.trace(module, inputs, check_trace=False, strict=False)
        except Exception as e:  # tracing a data-dependent Python path, an untraceable op
            raise ExportError(f"cannot trace the model: {_first_line(e)}") from None


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
def reference_forward(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, list[str]]:
    """The PyTorch logits of ``model`` on ``batch`` and the candidate inputs its forward reads."""
    names = candidate_inputs(batch)
    recorder = _InputRecorder({k: batch[k] for k in names})
    with recorder:
        logits = model(batch)["logits"]
    return logits, [k for k in names if k in recorder.used]


def build_export_module(model: nn.Module, batch: dict[str, Any], outputs: str = "logits",
                        names: Sequence[str] | None = None) -> tuple[ExportModule, torch.jit.ScriptModule, list[str]]:
    """The exportable wrapper of ``model`` over the inputs ``names`` (default: those the forward
    reads, see :func:`reference_forward`) and its trace."""
    if names is None:
        names = reference_forward(model, batch)[1]
    wrapper = ExportModule(make_exportable(model), names, outputs)
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
            with export_patches(), torch.no_grad(), warnings.catch_warnings():
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


class ExportedModel:
    """Run an exported file: ``ExportedModel(path)(*tensors)`` -> numpy array (ONNX runs on
    onnxruntime's CPU provider, TorchScript on torch CPU)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.kind = "onnx" if self.path.suffix == ".onnx" else "torchscript"
        if self.kind == "onnx":
            import onnxruntime as ort

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
    """Agreement of an exported model's output with the PyTorch logits ``[B, C, X, Y, Z]``:
    ``argmax_agreement`` (fraction of voxels) and, for logits, ``max_abs_diff``."""
    ref = reference.detach().cpu()
    labels_ref = ref.argmax(1).numpy()
    if outputs == "labels":
        return {"argmax_agreement": float((labels_ref == got.astype(np.int64)).mean())}
    got_t = torch.from_numpy(np.asarray(got))
    return {"argmax_agreement": float((labels_ref == got_t.argmax(1).numpy()).mean()),
            "max_abs_diff": float((got_t - ref).abs().max())}


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------


def input_specs(names: Sequence[str], batch: dict[str, Any]) -> list[dict[str, Any]]:
    specs = []
    for n in names:
        t = batch[n]
        base = n.rsplit("_", 1)[0] if n.rsplit("_", 1)[-1].isdigit() else n
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


def export_model(run: str | Path, fmt: str, out: str | Path, checkpoint: str = "best", outputs: str = "logits",
                 data: str | Path | None = None, split: str | None = None, verify: bool = True,
                 opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> dict[str, Any]:
    """Export a run's network (``fmt``: onnx or torchscript) to ``out``; returns a summary with the
    input specs and, with ``verify``, the agreement of the exported model with PyTorch on the example
    frame (``argmax_agreement``, ``max_abs_diff``)."""
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
    reference, names = reference_forward(model, batch)
    wrapper, traced, names = build_export_module(model, batch, outputs, names)
    inputs = tuple(batch[k] for k in names)
    n_classes = int(getattr(model, "n_classes", cfg.n_classes or 20))
    grid = [256, 256, 32]
    out_spec = ({"name": "logits", "shape": [1, n_classes, *grid], "dtype": "float32",
                 "meaning": "class logits (argmax = class index; 0 empty, 1..19 SemanticKITTI classes)"}
                if outputs == "logits" else
                {"name": "labels", "shape": [1, *grid], "dtype": "uint8",
                 "meaning": "class indices 0..n_classes-1 (argmax of the logits)"})
    meta = {
        "occ_version": __version__, "format": fmt, "method": cfg.method, "preset": cfg.preset,
        "run": run.name, "checkpoint": checkpoint, "outputs": outputs, "n_classes": n_classes,
        "image_scale": float(cfg.data.image_scale), "example_frame": batch["frame"][0],
        "input_names": list(names), "inputs": input_specs(names, batch), "output": out_spec,
        "batch_size": 1, "exporter": exporter if fmt == "onnx" else "torch.jit.trace",
        "opset": opset if fmt == "onnx" else None,
        "notes": "fixed input size; inputs as in docs/design.md (batch dim 1); inference never flips",
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
