"""Plug-in losses that any method gets through its config (e.g. GaussRender, ``loss.render``).

Every method's ``losses()`` calls :func:`plugin_losses` after its own losses; each plug-in looks at
the run's loss config and adds named terms only when it is enabled. A plug-in needs nothing from
the method but the contract of docs/design.md (``outputs["logits"]`` at ``model.output_scale()``,
``model.spec`` and the batch).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def plugin_losses(model: Any, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
    """Extra loss terms enabled in the model's loss config ``model.loss_cfg`` (empty when none is)."""
    loss_cfg = getattr(model, "loss_cfg", None)
    if loss_cfg is None:
        return {}
    out: dict[str, Tensor] = {}
    render_cfg = getattr(loss_cfg, "render", None)
    if render_cfg is not None and render_cfg.enabled:
        from occ_core.losses.render import gaussrender_losses

        out.update(gaussrender_losses(model, outputs, batch, render_cfg))
    return out
