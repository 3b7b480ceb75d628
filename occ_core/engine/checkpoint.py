"""Checkpoints as safetensors files, written atomically.

One file holds the model weights (``model.*``), the optimiser state tensors (``optim.<param>.<key>``)
and the RNG states (``rng.*``); the safetensors metadata (strings) hold the epoch, step, the
optimiser's and scheduler's non-tensor state as JSON, and the occ version. Nothing is pickled, so a
checkpoint loads with ``safetensors`` alone and after the code moves.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from occ_core import __version__
from occ_core.errors import FormatError, MissingError
from occ_core.utils.atomic import atomic_path


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, epoch: int = 0, step: int = 0, extra: dict[str, Any] | None = None) -> None:
    """Atomically write a checkpoint (see module docstring)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, str] = {"occ_version": __version__, "epoch": str(epoch), "step": str(step),
                            "extra": json.dumps(extra or {})}
    if optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer"] = json.dumps(opt_meta)
    if scheduler is not None:
        meta["scheduler"] = json.dumps(scheduler.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    meta["rng_numpy"] = json.dumps(np.random.get_state()[1].tolist())
    meta["rng_numpy_pos"] = json.dumps(list(np.random.get_state()[2:]))
    meta["rng_python"] = json.dumps(random.getstate()[1])
    # shared storages (tied weights) must be cloned for safetensors
    seen: dict[int, str] = {}
    for k in list(tensors):
        ptr = tensors[k].untyped_storage().data_ptr() if tensors[k].numel() else -1
        if ptr in seen and ptr != -1:
            tensors[k] = tensors[k].clone()
        seen[ptr] = k
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(path: str | Path, model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, restore_rng: bool = False, strict: bool = True) -> dict[str, Any]:
    """Load a checkpoint into the given objects; returns ``{"epoch", "step", "extra", "occ_version", "skipped"}``.

    A tensor whose shape differs from the model's is a FormatError with ``strict``; without it (``--init``) it
    is left out (``skipped`` names them), and a checkpoint of which nothing fits is a FormatError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingError("checkpoint not found", path)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"not a readable safetensors checkpoint ({e})", path) from None
    skipped: list[str] = []
    if model is not None:
        state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        own = model.state_dict()
        wrong = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        if wrong and strict:  # load_state_dict would raise a multi-line RuntimeError
            k = wrong[0]
            raise FormatError(f"checkpoint does not fit the model: {len(wrong)} tensor(s) of another shape, e.g. {k} "
                              f"{list(state[k].shape)} in the checkpoint, {list(own[k].shape)} in the model (was "
                              "config.yaml changed after training?)", path)
        if wrong:  # strict=False (--init): the parameters that match in name and shape
            skipped = wrong
            state = {k: v for k, v in state.items() if k not in set(wrong)}
            if not any(k in own for k in state):
                raise FormatError(f"no tensor of the checkpoint fits the model ({len(wrong)} of another shape, e.g. "
                                  f"{wrong[0]}): another method or model size", path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if strict and (missing or unexpected):
            raise FormatError(f"checkpoint does not fit the model (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})", path)
    if optimizer is not None and "optimizer" in meta:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, json.loads(meta["optimizer"])))
    if scheduler is not None and "scheduler" in meta:
        sched = json.loads(meta["scheduler"])
        if isinstance(sched.get("milestones"), dict):  # a Counter of int epochs; JSON made the keys strings
            from collections import Counter

            sched["milestones"] = Counter({int(k): v for k, v in sched["milestones"].items()})
        scheduler.load_state_dict(sched)
    if restore_rng:
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
        if "rng_numpy" in meta:
            pos = json.loads(meta["rng_numpy_pos"])
            np.random.set_state(("MT19937", np.array(json.loads(meta["rng_numpy"]), dtype=np.uint32), *pos))
        if "rng_python" in meta:
            random.setstate((3, tuple(json.loads(meta["rng_python"])), None))
    return {"epoch": int(meta.get("epoch", 0)), "step": int(meta.get("step", 0)),
            "extra": json.loads(meta.get("extra", "{}")), "occ_version": meta.get("occ_version"), "skipped": skipped}
