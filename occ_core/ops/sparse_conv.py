"""Sparse 3D convolution: a public wrapper over spconv with a dense pure-torch twin.

Two data forms, one set of modules:

* :class:`SparseVoxels` -- the active sites as ``features [N, C]`` and ``indices [N, 4]`` (int32
  ``b, x, y, z``) on a grid ``spatial_shape = (X, Y, Z)`` (spconv's ``SparseConvTensor`` layout, the
  spatial axes in our grid order). Convolutions run through **spconv** when it imports, the tensor is
  float32 (or half on CUDA) and the call is not traced; otherwise through the dense twin (densify,
  convolve, gather the output sites back).
* :class:`MaskedVolume` -- ``dense [B, C, X, Y, Z]`` plus ``mask [B, X, Y, Z]`` bool of the active
  sites (zero features elsewhere). Always the dense twin: no data-dependent shapes, so a model in this
  form traces and exports (ONNX / TorchScript).

The dense twin is the definition the tests hold spconv to:

* **submanifold** (``subm=True``): output sites = input sites;
  ``out = conv3d(dense * mask, W, padding=(k-1)/2 * dilation) * mask``;
* **strided / regular** (``subm=False``): output site ``o`` is active when its receptive field holds an
  active input site (spconv's ``get_indice_pairs`` rule: some kernel tap ``i = o * stride - padding +
  k * dilation`` is active), i.e. ``conv3d(mask, ones) > 0``; ``out = conv3d(dense * mask, W, stride,
  padding, dilation) * out_mask``; output spatial shape ``(X + 2p - d (k - 1) - 1) // s + 1``.

The bias is added on active output sites only. Weights are stored in spconv's layout
``[out, kx, ky, kz, in]`` whichever backend runs, so checkpoints do not depend on spconv being present.

On the CPU spconv's default implicit-GEMM algorithm does not run; the wrapper picks
``spconv.ConvAlgo.Native`` for CPU tensors (and spconv's default, implicit GEMM, for CUDA ones).
spconv's CPU kernels give wrong values for float64 (measured), so float64 tensors use the dense twin.
If spconv fails to import, every call uses the dense twin and a warning says so once.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SparseVoxels",
    "MaskedVolume",
    "SparseConv3d",
    "SparseBatchNorm",
    "SparseReLU",
    "spconv_available",
    "spconv_unavailable_reason",
    "dense_sparse_conv3d",
    "conv_output_shape",
]

BACKENDS = ("auto", "spconv", "torch")

_SPCONV: Any = None
_SPCONV_ERROR: str | None = None
_WARNED = False


def _import_spconv():
    """spconv.pytorch (imported once, quietly: it emits FutureWarnings about torch.cuda.amp), or None."""
    global _SPCONV, _SPCONV_ERROR
    if _SPCONV is None and _SPCONV_ERROR is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import spconv.pytorch as sp  # noqa: F401
                from spconv.core import ConvAlgo  # noqa: F401
            _SPCONV = sp
            _quiet_fx_warning()
        except Exception as e:  # ImportError, a broken CUDA build, a missing cumm ...
            _SPCONV_ERROR = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return _SPCONV


def _quiet_fx_warning() -> None:
    """spconv's SparseConvTensor calls torch.fx's ``is_fx_tracing``, which logs a deprecation line once per
    process (a torch-internal message users cannot act on): spend that one call with its logger disabled."""
    import logging

    warn = getattr(getattr(torch.fx, "_symbolic_trace", None), "is_fx_tracing_warning", None)
    if warn is None:
        return
    log = logging.getLogger("torch.fx._symbolic_trace")
    disabled, log.disabled = log.disabled, True
    try:
        warn()
    finally:
        log.disabled = disabled


def spconv_available() -> bool:
    """Whether spconv imports here."""
    return _import_spconv() is not None


def spconv_unavailable_reason() -> str:
    """Why spconv does not import ('' when it does)."""
    _import_spconv()
    return _SPCONV_ERROR or ""


def _warn_fallback() -> None:
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(f"spconv does not import ({spconv_unavailable_reason()}): sparse convolutions use the "
                      "dense pure-torch twin (same values, more memory and time)", RuntimeWarning, stacklevel=3)


def _exporting() -> bool:
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting())


# ------------------------------------------------------------------------------------------------
# Data forms
# ------------------------------------------------------------------------------------------------


@dataclass
class SparseVoxels:
    """Active voxel sites: ``features [N, C]``, ``indices [N, 4]`` int32 (b, x, y, z), ``spatial_shape``
    (X, Y, Z), ``batch_size``."""

    features: Tensor
    indices: Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int
    _sp: Any = field(default=None, repr=False, compare=False)
    """spconv's tensor of these sites (its index-pair cache), when spconv made them."""

    def replace(self, features: Tensor) -> "SparseVoxels":
        return SparseVoxels(features, self.indices, self.spatial_shape, self.batch_size, self._sp)

    def flat_index(self) -> Tensor:
        """Tensor  # [N] long: ``((b * X + x) * Y + y) * Z + z``."""
        X, Y, Z = self.spatial_shape
        i = self.indices.long()
        return ((i[:, 0] * X + i[:, 1]) * Y + i[:, 2]) * Z + i[:, 3]

    def dense(self) -> Tensor:
        """Tensor  # [B, C, X, Y, Z]: features at their sites, 0 elsewhere (differentiable)."""
        X, Y, Z = self.spatial_shape
        B, C = self.batch_size, self.features.shape[1]
        out = self.features.new_zeros(B * X * Y * Z, C)
        out = out.index_copy(0, self.flat_index(), self.features)
        return out.view(B, X, Y, Z, C).permute(0, 4, 1, 2, 3)

    def mask(self) -> Tensor:
        """Tensor  # [B, X, Y, Z] bool of the active sites."""
        X, Y, Z = self.spatial_shape
        m = torch.zeros(self.batch_size * X * Y * Z, dtype=torch.bool, device=self.features.device)
        m[self.flat_index()] = True
        return m.view(self.batch_size, X, Y, Z)

    def to_masked(self) -> "MaskedVolume":
        return MaskedVolume(self.dense(), self.mask())

    @staticmethod
    def from_dense(dense: Tensor, mask: Tensor) -> "SparseVoxels":
        """The active sites of ``mask [B, X, Y, Z]`` with their features from ``dense [B, C, X, Y, Z]``
        (sites in C order of ``[B, X, Y, Z]``)."""
        idx = mask.nonzero()
        feats = dense.permute(0, 2, 3, 4, 1)[mask]
        return SparseVoxels(feats, idx.to(torch.int32), tuple(int(s) for s in mask.shape[1:]), int(mask.shape[0]))


@dataclass
class MaskedVolume:
    """``dense [B, C, X, Y, Z]`` (zero off the active sites) and ``mask [B, X, Y, Z]`` bool."""

    dense: Tensor
    mask: Tensor

    def replace(self, dense: Tensor) -> "MaskedVolume":
        return MaskedVolume(dense, self.mask)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.mask.shape[1:])

    def to_sparse(self) -> SparseVoxels:
        return SparseVoxels.from_dense(self.dense, self.mask)


# ------------------------------------------------------------------------------------------------
# The dense twin
# ------------------------------------------------------------------------------------------------


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 3:
        raise ValueError(f"expected an int or 3 ints, got {v!r}")
    return t


def conv_output_shape(shape: Sequence[int], kernel_size, stride, padding, dilation) -> tuple[int, int, int]:
    """Output spatial shape of a regular (strided) sparse convolution (spconv's rule, = conv3d's)."""
    k, s, p, d = _triple(kernel_size), _triple(stride), _triple(padding), _triple(dilation)
    return tuple((n + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate(shape))


def dense_sparse_conv3d(dense: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                        padding=0, dilation=1, subm: bool = True) -> tuple[Tensor, Tensor]:
    """The pure-torch reference of one sparse convolution on a masked dense volume.

    dense: Tensor  # [B, C, X, Y, Z];  mask: Tensor  # [B, X, Y, Z] bool;
    weight: Tensor  # [O, kx, ky, kz, C] (spconv layout);  bias: Tensor  # [O] or None.
    Returns (out Tensor  # [B, O, X', Y', Z'] zero off the output sites, out_mask Tensor  # [B, X', Y', Z'] bool).
    ``subm``: submanifold (stride 1, 'same' padding of (k - 1) / 2 * dilation, output sites = input sites).
    """
    w = weight.permute(0, 4, 1, 2, 3)  # [O, C, kx, ky, kz]
    k = tuple(int(s) for s in w.shape[2:])
    d = _triple(dilation)
    m = mask[:, None].to(dense.dtype)
    x = dense * m
    if subm:
        if any(kk % 2 == 0 for kk in k):
            raise ValueError(f"submanifold convolution needs odd kernel sizes, got {k}")
        pad = tuple((kk - 1) // 2 * dd for kk, dd in zip(k, d))
        out = F.conv3d(x, w, None, 1, pad, d)
        out_mask = mask
    else:
        out = F.conv3d(x, w, None, _triple(stride), _triple(padding), d)
        ones = torch.ones((1, 1, *k), dtype=dense.dtype, device=dense.device)
        out_mask = F.conv3d(m, ones, None, _triple(stride), _triple(padding), d)[:, 0] > 0.5
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1, 1)
    out = out * out_mask[:, None].to(out.dtype)
    return out, out_mask


# ------------------------------------------------------------------------------------------------
# Modules
# ------------------------------------------------------------------------------------------------


class SparseConv3d(nn.Module):
    """Submanifold (``subm=True``) or regular / strided (``subm=False``) sparse 3D convolution.

    Args:
        in_channels, out_channels: channels.
        kernel_size, stride, padding, dilation: as conv3d (``subm``: stride 1, padding (k - 1) / 2 * dilation).
        bias: learn a bias (added on active output sites).
        subm: submanifold convolution (output sites = input sites).
        backend: ``auto`` (spconv for :class:`SparseVoxels` when it imports, the tensor is float32/half and
            the call is not traced; else the dense twin), ``spconv`` (required: error if it cannot run) or
            ``torch`` (always the dense twin). :class:`MaskedVolume` inputs always use the dense twin.
        indice_key: spconv's key for sharing the index pairs between submanifold layers of one resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3,
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, bias: bool = False, subm: bool = True, backend: str = "auto",
                 indice_key: str | None = None):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _triple(kernel_size)
        self.dilation = _triple(dilation)
        self.subm = bool(subm)
        if self.subm:
            if any(k % 2 == 0 for k in self.kernel_size):
                raise ValueError(f"submanifold convolution needs odd kernel sizes, got {self.kernel_size}")
            self.stride = (1, 1, 1)
            self.padding = tuple((k - 1) // 2 * d for k, d in zip(self.kernel_size, self.dilation))
        else:
            self.stride, self.padding = _triple(stride), _triple(padding)
        self.backend = backend
        self.indice_key = indice_key
        self.weight = nn.Parameter(torch.empty(self.out_channels, *self.kernel_size, self.in_channels))
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None
        fan_in = self.in_channels * math.prod(self.kernel_size)
        nn.init.kaiming_uniform_(self.weight.view(self.out_channels, -1), a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self._ops: dict[str, Any] = {}  # spconv op objects per algorithm (not modules: no parameters of their own)

    def extra_repr(self) -> str:
        kind = "subm" if self.subm else f"stride={self.stride}, padding={self.padding}"
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, {kind}, backend={self.backend}"

    # -- backends ------------------------------------------------------------------------------
    def uses_spconv(self, x: SparseVoxels) -> bool:
        """Whether a call on ``x`` runs through spconv."""
        if self.backend == "torch" or _exporting():
            return False
        ok_dtype = x.features.dtype == torch.float32 or (x.features.is_cuda and x.features.dtype in
                                                         (torch.float16, torch.bfloat16))
        if self.backend == "spconv":
            if not spconv_available():
                raise RuntimeError(f"backend='spconv' cannot run: {spconv_unavailable_reason()}")
            if not ok_dtype:
                raise RuntimeError(f"backend='spconv' does not run {x.features.dtype} on {x.features.device.type}")
            return True
        if not spconv_available():
            _warn_fallback()
            return False
        return ok_dtype

    def _op(self, device: torch.device):
        sp = _import_spconv()
        from spconv.core import ConvAlgo

        algo = ConvAlgo.Native if device.type == "cpu" else None
        key = "native" if algo is not None else "default"
        if key not in self._ops:
            cls = sp.SubMConv3d if self.subm else sp.SparseConv3d
            kw = dict(stride=self.stride, padding=self.padding) if not self.subm else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                op = cls(self.in_channels, self.out_channels, self.kernel_size, dilation=self.dilation, bias=False,
                         indice_key=self.indice_key, algo=algo, **kw)
            op.weight = None  # the weight is ours (passed at every call)
            self._ops[key] = op
        return self._ops[key]

    def _spconv_forward(self, x: SparseVoxels) -> SparseVoxels:
        if math.prod(self.kernel_size) == 1 and self.stride == (1, 1, 1) and self.padding == (0, 0, 0):
            # spconv's own 1x1x1 shortcut reads its [O, 1, 1, 1, I] weight as [I, O] (measured: wrong
            # values); a 1x1x1 convolution on unchanged sites is a linear map of the features
            feats = x.features @ self.weight.reshape(self.out_channels, self.in_channels).t().to(x.features.dtype)
            if self.bias is not None:
                feats = feats + self.bias.to(feats.dtype)
            return x.replace(feats)
        sp = _import_spconv()
        op = self._op(x.features.device)
        st = x._sp if x._sp is not None else sp.SparseConvTensor(
            x.features, x.indices.to(torch.int32).contiguous(), list(x.spatial_shape), x.batch_size)
        st = st.replace_feature(x.features.contiguous())
        out = op._conv_forward(self.training, st, self.weight.to(x.features.dtype), None)
        feats = out.features
        if self.bias is not None:
            feats = feats + self.bias.to(feats.dtype)
        # keeps spconv's tensor (its index-pair cache, indice_key) for the next layer
        return SparseVoxels(feats, out.indices, tuple(int(s) for s in out.spatial_shape), x.batch_size, out)

    def forward(self, x: SparseVoxels | MaskedVolume) -> SparseVoxels | MaskedVolume:
        if isinstance(x, MaskedVolume):
            out, m = dense_sparse_conv3d(x.dense, x.mask, self.weight, self.bias, self.stride, self.padding,
                                         self.dilation, self.subm)
            return MaskedVolume(out, m)
        if x.features.shape[1] != self.in_channels:
            raise ValueError(f"sparse conv built for {self.in_channels} channels, got {x.features.shape[1]}")
        if self.uses_spconv(x):
            return self._spconv_forward(x)
        out, m = dense_sparse_conv3d(x.dense(), x.mask(), self.weight.to(x.features.dtype),
                                     None if self.bias is None else self.bias.to(x.features.dtype),
                                     self.stride, self.padding, self.dilation, self.subm)
        if self.subm:  # same sites, same order as the input
            X, Y, Z = x.spatial_shape
            flat = out.permute(0, 2, 3, 4, 1).reshape(-1, out.shape[1])
            return x.replace(flat.index_select(0, x.flat_index()))
        return SparseVoxels.from_dense(out, m)


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the active sites' features (both data forms; statistics over active sites only)."""

    def forward(self, x):  # type: ignore[override]
        if isinstance(x, SparseVoxels):
            return x.replace(super().forward(x.features))
        dense, mask = x.dense, x.mask
        m = mask[:, None].to(dense.dtype)
        if self.training or not self.track_running_stats:
            n = m.sum().clamp_min(1)
            mean = (dense * m).sum((0, 2, 3, 4)) / n
            var = (((dense - mean.view(1, -1, 1, 1, 1)) * m) ** 2).sum((0, 2, 3, 4)) / n
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                    unbiased = var * n / (n - 1).clamp_min(1)
                    self.running_mean.mul_(1 - mom).add_(mom * mean)
                    self.running_var.mul_(1 - mom).add_(mom * unbiased)
        else:
            mean, var = self.running_mean, self.running_var
        y = (dense - mean.view(1, -1, 1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)
        return MaskedVolume(y * m, mask)


class SparseReLU(nn.Module):
    """ReLU on the active sites (zero stays zero off them)."""

    def forward(self, x):
        if isinstance(x, SparseVoxels):
            return x.replace(F.relu(x.features))
        return x.replace(F.relu(x.dense))


class SparseSequential(nn.Sequential):
    """nn.Sequential over the sparse modules (either data form)."""
