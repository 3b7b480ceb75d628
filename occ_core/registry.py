"""The method registry: every method is one name.

Importing this module is cheap (no torch): a method is described by a name, a one-line
description and the module that implements it. The module defines

* ``ModelConfig`` — a dataclass of the method's model settings (every field documented);
* ``PRESETS`` — ``{"tiny": fn, "paper": fn, ...}``, each ``fn(TrainConfig) -> TrainConfig``;
* ``build_model(cfg: TrainConfig) -> OccModel``.

Third-party packages add methods through the ``occ.methods`` entry-point group
(``name = "package.module"``) without touching occ; :func:`register_method` does the same at run
time (tests use it).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from occ_core.errors import OccError


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    module: str

    def load(self) -> ModuleType:
        try:
            mod = importlib.import_module(self.module)
        except ImportError as e:
            raise OccError(f"method '{self.name}': cannot import {self.module} ({e})") from None
        for attr in ("ModelConfig", "PRESETS", "build_model"):
            if not hasattr(mod, attr):
                raise OccError(f"method '{self.name}': module {self.module} defines no {attr}")
        return mod


_BUILTIN: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("baseline", "Shared core: depth-proposed voxel queries, deformable cross-attention, 3D UNet + ASPP.",
                   "occ_core.models.methods.baseline"),
        MethodSpec("vpocc", "VPOcc: vanishing-point zoom (VPZoomer), VP-guided cross-attention, spatial volume fusion.",
                   "occ_core.models.methods.vpocc"),
        MethodSpec("b2s", "B2S: binary occupancy module + semantic module (binary pre-training, offline auto-labelling).",
                   "occ_core.models.methods.b2s"),
        MethodSpec("cigocc", "CIGOcc: segmentation, graphics and depth features, deformable multi-level fusion, two stages, "
                   "SAM-mask distillation.", "occ_core.models.methods.cigocc"),
        MethodSpec("lidar", "LiDAR only: voxelised scan, sparse 3D encoder (spconv), 3D UNet + ASPP (the fusion baseline).",
                   "occ_core.models.methods.lidar"),
        MethodSpec("tacocc", "TACOcc: LiDAR + camera, target-adaptive bidirectional retrieval fusion, Gaussian "
                   "volume-rendering supervision.", "occ_core.models.methods.tacocc"),
    )
}
_EXTRA: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> None:
    """Add (or replace) a method at run time."""
    _EXTRA[spec.name] = spec


def _entry_point_methods() -> dict[str, MethodSpec]:
    from importlib.metadata import entry_points

    out = {}
    for ep in entry_points(group="occ.methods"):
        out[ep.name] = MethodSpec(ep.name, f"(plug-in from {ep.value})", ep.value)
    return out


def available_methods() -> dict[str, MethodSpec]:
    """Built-in methods whose module is present, plug-ins and run-time registrations."""
    methods = {name: spec for name, spec in _BUILTIN.items() if importlib.util.find_spec(spec.module) is not None}
    methods.update(_entry_point_methods())
    methods.update(_EXTRA)
    return methods


def get_method(name: str) -> MethodSpec:
    methods = available_methods()
    if name not in methods:
        raise OccError(f"unknown method '{name}' (available: {', '.join(sorted(methods)) or 'none'})")
    return methods[name]
