"""ResNet image backbones in plain torch, with torchvision's exact module and parameter names.

A state dict saved from torchvision (``torch.save(torchvision.models.resnet50(...).state_dict(), p)``)
loads into :class:`ResNet` key for key (its ``fc.*`` classifier is not built and its keys are
ignored), so pretrained ImageNet weights can be used without depending on torchvision::

    backbone = build_backbone("resnet50", weights="resnet50-0676ba61.pth", out_indices=(1, 2, 3))
    feats = backbone(image)  # list of [B, C_i, H / s_i, W / s_i], s_i in (8, 16, 32)

Stage ``i`` of ``out_indices`` is ``layer{i+1}``: 0 -> stride 4, 1 -> 8, 2 -> 16, 3 -> 32.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from occ_core.errors import FormatError, MissingError, OccWarning

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "RESNET_SPECS",
    "LoadReport",
    "build_backbone",
    "load_weights",
    "RandomInitWarning",
    "quiet_random_init",
]


class RandomInitWarning(OccWarning):
    """A backbone was built without pretrained weights (the CLI prints it as one 'warning:' line)."""


_QUIET = contextvars.ContextVar("occ_backbone_quiet_random_init", default=False)


@contextlib.contextmanager
def quiet_random_init():
    """Build backbones without the random-initialisation warning inside this block: for models whose
    weights come from a checkpoint right after (``load_model``), where the warning would be wrong."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


# Convs are built without their default initialisation (ResNet._init_weights re-initialises every
# conv anyway); this halves the construction time of the deeper networks.
def _conv(*args, **kwargs) -> nn.Conv2d:
    return skip_init(nn.Conv2d, *args, **kwargs)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return _conv(in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return _conv(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet-18/34 block: two 3x3 convs (names conv1, bn1, conv2, bn2, downsample)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor  # [B, inplanes, H, W] -> [B, planes, H / stride, W / stride]"""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50/101 block (stride on the 3x3 conv, "ResNet v1.5"):
    1x1 -> 3x3 -> 1x1 (names conv1..conv3, bn1..bn3, downsample)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor  # [B, inplanes, H, W] -> [B, 4 * planes, H / stride, W / stride]"""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNET_SPECS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}
"""Block type and blocks per stage of each supported depth (torchvision's table)."""

STAGE_STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)


class ResNet(nn.Module):
    """A torchvision-compatible ResNet trunk returning multi-scale feature maps.

    Only the stages up to ``max(out_indices)`` are built (the others would get no gradient);
    their keys in a full checkpoint are ignored by :func:`load_weights`, as are ``fc.*``.

    Attributes:
        out_indices: selected stages (0..3 = layer1..layer4).
        out_channels: channels of each returned map, in order.
        strides: stride of each returned map, in order (4, 8, 16 or 32).
    """

    def __init__(
        self,
        depth: str = "resnet18",
        out_indices: Sequence[int] = (1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
    ):
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"unknown backbone '{depth}' (choose one of {', '.join(RESNET_SPECS)})")
        out_indices = tuple(sorted(set(int(i) for i in out_indices)))
        if not out_indices or min(out_indices) < 0 or max(out_indices) > 3:
            raise ValueError(f"out_indices must be a non-empty subset of 0..3 (got {out_indices})")
        if frozen_stages > 4 or frozen_stages < -1:
            raise ValueError(f"frozen_stages must be in -1..4 (got {frozen_stages})")
        block, layers = RESNET_SPECS[depth]
        self.depth = depth
        self.out_indices = out_indices
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = bool(norm_eval)
        self.num_stages = max(out_indices) + 1

        self.inplanes = 64
        self.conv1 = _conv(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        for i in range(self.num_stages):
            setattr(self, f"layer{i + 1}", self._make_layer(block, widths[i], layers[i], stride=1 if i == 0 else 2))
        self.stage_channels = [w * block.expansion for w in widths]  # type: ignore[attr-defined]
        self.out_channels = [self.stage_channels[i] for i in out_indices]
        self.strides = [STAGE_STRIDES[i] for i in out_indices]
        self._init_weights()
        self._freeze_stages()

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        # torchvision's initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage_modules(self, i: int) -> list[nn.Module]:
        return [self.conv1, self.bn1] if i == 0 else [getattr(self, f"layer{i}")]

    def _freeze_stages(self) -> None:
        """Freeze the stem (``frozen_stages >= 0``) and layer1..layer{frozen_stages}."""
        for i in range(0, min(self.frozen_stages, self.num_stages) + 1):
            for m in self._stage_modules(i):
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def ignored_key(self, key: str) -> bool:
        """Whether a checkpoint key is deliberately not loaded (classifier, stages not built)."""
        if key.startswith("fc."):
            return True
        if key.startswith("layer") and key[5:6].isdigit():
            return int(key[5]) > self.num_stages
        return False

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: Tensor  # [B, 3, H, W] (ImageNet-normalised)

        Returns the selected stages: list of ``[B, out_channels[i], ceil(H / strides[i]), ...]``.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


# -----------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What :func:`load_weights` did: keys loaded, module keys left at their initial value, and
    checkpoint keys that were not used (the ignored ``fc.*`` / unbuilt stages are listed apart)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors is a dependency
            raise FormatError("reading .safetensors needs the 'safetensors' package", path) from e
        try:
            return load_file(os.fspath(path), device="cpu")
        except Exception as e:
            raise FormatError(f"not a readable safetensors file ({type(e).__name__}: {e})", path) from e
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise FormatError(f"not a readable torch checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                          path) from e
    # common wrappers: {"state_dict": ...}, {"model": ...}
    for k in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and k in obj and isinstance(obj[k], dict):
            obj = obj[k]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise FormatError("expected a state dict (a mapping of parameter names to tensors)", path)
    return obj


def _strip_prefix(sd: dict[str, Tensor], own: set[str]) -> dict[str, Tensor]:
    """Drop a common wrapper prefix ('module.', 'backbone.', ...) when that makes keys match."""
    if any(k in own for k in sd):
        return sd
    for prefix in ("module.", "backbone.", "img_backbone.", "encoder.", "model."):
        stripped = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if any(k in own for k in stripped):
            return stripped
    return sd


def load_weights(module: nn.Module, path: str | os.PathLike, strict_shapes: bool = True) -> LoadReport:
    """Load a torchvision-format state dict (``.pth``/``.pt`` via ``torch.load(weights_only=True)``,
    or ``.safetensors``) into ``module``.

    Keys are matched by name. ``fc.*`` and stages the module does not build are ignored. Missing or
    unexpected keys are reported with ``warnings.warn`` (and returned in the :class:`LoadReport`).

    Raises:
        MissingError: the file does not exist.
        FormatError: the file cannot be read, no key matches, or a matching key has the wrong shape.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingError("backbone weights file not found (pass an existing .pth/.pt/.safetensors file)", p)
    sd = _read_state_dict(p)
    own = module.state_dict()
    sd = _strip_prefix(sd, set(own))
    ignored_fn = getattr(module, "ignored_key", lambda k: False)
    report = LoadReport(path=str(p))
    to_load: dict[str, Tensor] = {}
    bad_shapes = []
    for k, v in sd.items():
        if k in own:
            if tuple(v.shape) != tuple(own[k].shape):
                bad_shapes.append(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}")
            else:
                to_load[k] = v
        elif ignored_fn(k):
            report.ignored.append(k)
        else:
            report.unexpected.append(k)
    if bad_shapes and strict_shapes:
        more = f" (+{len(bad_shapes) - 3} more)" if len(bad_shapes) > 3 else ""
        raise FormatError(f"shape mismatch for {len(bad_shapes)} key(s): {'; '.join(bad_shapes[:3])}{more} "
                          f"- is this checkpoint for a different backbone?", p)
    if not to_load:
        example = next(iter(sd), "<empty>")
        raise FormatError(f"no parameter name matches the model (file has {len(sd)} keys, e.g. '{example}'; "
                          f"expected torchvision ResNet names like 'layer1.0.conv1.weight')", p)
    module.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = [k for k in own if k not in to_load and not k.endswith("num_batches_tracked")]
    if report.missing or report.unexpected:
        parts = []
        if report.missing:
            parts.append(f"{len(report.missing)} missing (left at random init, e.g. {report.missing[:3]})")
        if report.unexpected:
            parts.append(f"{len(report.unexpected)} unexpected (unused, e.g. {report.unexpected[:3]})")
        warnings.warn(f"{p}: loaded {len(report.loaded)} tensors; " + "; ".join(parts), OccWarning, stacklevel=2)
    return report


def build_backbone(
    name: str = "resnet18",
    weights: str | os.PathLike | None = None,
    out_indices: Sequence[int] = (1, 2, 3),
    frozen_stages: int = -1,
    norm_eval: bool = False,
    warn: bool = True,
) -> ResNet:
    """Build a ResNet trunk and load ``weights`` (torchvision state dict) if given.

    Without weights the network is randomly initialised and a :class:`RandomInitWarning` says how to
    pass them, unless ``warn`` is False or the call is inside :func:`quiet_random_init` (a checkpoint
    is loaded next).
    """
    model = ResNet(name, out_indices=out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval)
    if weights:
        load_weights(model, weights)
    elif warn and not _QUIET.get():
        warnings.warn(
            f"backbone {name}: no pretrained weights given, using random initialisation (results will be far "
            f"below published ones); pass ImageNet weights with --set model.backbone.weights=PATH "
            f"(a torchvision {name} state dict, .pth or .safetensors)",
            RandomInitWarning,
            stacklevel=2,
        )
    return model
