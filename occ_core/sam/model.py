"""The ``Sam`` wrapper, the official model sizes and checkpoint loading.

``load_sam(path, model=None)`` reads an official checkpoint (``sam_vit_b_01ec64.pth``,
``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``: a plain state dict) with
``torch.load(weights_only=True)``, reads the architecture from the tensor shapes
(:func:`config_from_state_dict`), names it (vit_b / vit_l / vit_h, or ``custom`` for other sizes)
and refuses a checkpoint of another size than ``model`` when one is asked for. Every problem with the
file is one :class:`~occ_core.errors.OccError` line naming it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from occ_core.errors import FormatError, MissingError, OccError
from occ_core.sam.decoder import MaskDecoder, PromptEncoder, TwoWayTransformer
from occ_core.sam.encoder import ImageEncoderViT


@dataclass(frozen=True)
class SamConfig:
    """SAM's architecture (the official values are those of ``build_sam.py``; only the encoder differs
    between vit_b, vit_l and vit_h)."""

    encoder_embed_dim: int = 768
    """ViT width."""
    encoder_depth: int = 12
    """ViT blocks."""
    encoder_num_heads: int = 12
    """ViT attention heads."""
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    """Blocks with global attention; the others attend within windows."""
    image_size: int = 1024
    """Side of the square encoder input (images are resized to this long side and zero-padded)."""
    patch_size: int = 16
    """ViT patch size; the image embedding is image_size / patch_size on a side."""
    window_size: int = 14
    """Window side (tokens) of the windowed-attention blocks."""
    prompt_embed_dim: int = 256
    """Width of the image embedding, the prompt embeddings and the two-way transformer."""
    mask_in_chans: int = 16
    """Hidden channels of the prompt encoder's mask-input downscaling."""
    decoder_depth: int = 2
    """Two-way transformer blocks."""
    decoder_mlp_dim: int = 2048
    """Two-way transformer MLP width."""
    decoder_num_heads: int = 8
    """Two-way transformer heads (not visible in the weights; 8 in every official model)."""
    iou_head_hidden_dim: int = 256
    """Width of the IoU prediction head."""

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return d


SAM_CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
}
"""The official model sizes (``segment_anything/build_sam.py``)."""

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Image encoder + prompt encoder + mask decoder, with SAM's pixel normalisation and mask resizing."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, image_encoder: ImageEncoderViT, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder,
                 pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD, config: SamConfig | None = None) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.Tensor(list(pixel_mean)).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.Tensor(list(pixel_std)).view(-1, 1, 1), False)
        self.config = config
        self.name = "custom"

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise pixel values ([..., 3, h, w], 0..255 RGB) and zero-pad to the square input."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        padh = self.image_encoder.img_size - h
        padw = self.image_encoder.img_size - w
        return F.pad(x, (0, padw, 0, padh))

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, ...],
                          original_size: tuple[int, ...]) -> torch.Tensor:
        """Low-resolution mask logits [B, M, h, w] -> logits at the original image size (upscale to the
        encoder input, drop the padding, resize), bilinear as in the official code."""
        size = self.image_encoder.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


def build_sam(config: SamConfig | str = "vit_b") -> Sam:
    """A SAM model of ``config`` (a :class:`SamConfig` or a name of :data:`SAM_CONFIGS`) with the
    default (random) initialisation, in eval mode."""
    name = "custom"
    if isinstance(config, str):
        if config not in SAM_CONFIGS:
            raise OccError(f"unknown SAM model '{config}' (known: {', '.join(SAM_CONFIGS)})")
        name, config = config, SAM_CONFIGS[config]
    else:
        name = next((k for k, v in SAM_CONFIGS.items() if v == config), "custom")
    c = config
    emb = c.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=c.encoder_depth, embed_dim=c.encoder_embed_dim, img_size=c.image_size, mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=c.encoder_num_heads, patch_size=c.patch_size,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(c.encoder_global_attn_indexes),
            window_size=c.window_size, out_chans=c.prompt_embed_dim),
        prompt_encoder=PromptEncoder(embed_dim=c.prompt_embed_dim, image_embedding_size=(emb, emb),
                                     input_image_size=(c.image_size, c.image_size), mask_in_chans=c.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=c.decoder_depth, embedding_dim=c.prompt_embed_dim,
                                          mlp_dim=c.decoder_mlp_dim, num_heads=c.decoder_num_heads),
            transformer_dim=c.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=c.iou_head_hidden_dim),
        config=c,
    )
    sam.name = name
    return sam.eval()


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

_PATCH = "image_encoder.patch_embed.proj.weight"


def config_from_state_dict(sd: dict[str, torch.Tensor], where: str | Path | None = None) -> SamConfig:
    """The architecture a SAM state dict was made for, read from its tensor shapes (the decoder's head
    count, which no weight shows, is the official 8). A FormatError naming ``where`` when it is not a
    SAM state dict."""
    try:
        patch = sd[_PATCH]
        embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
        image_size = int(sd["image_encoder.pos_embed"].shape[1]) * patch_size
        depth = 0
        while f"image_encoder.blocks.{depth}.attn.qkv.weight" in sd:
            depth += 1
        if depth == 0:
            raise KeyError("image_encoder.blocks.0.attn.qkv.weight")
        rel = [int(sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) for i in range(depth)]
        head_dim = int(sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        full = 2 * (image_size // patch_size) - 1
        global_idx = tuple(i for i, r in enumerate(rel) if r == full)
        windowed = [r for r in rel if r != full]
        window = (windowed[0] + 1) // 2 if windowed else 14
        prompt_dim = int(sd["image_encoder.neck.0.weight"].shape[0])
        mask_in = int(sd["prompt_encoder.mask_downscaling.3.weight"].shape[0])
        dec_depth = 0
        while f"mask_decoder.transformer.layers.{dec_depth}.norm1.weight" in sd:
            dec_depth += 1
        mlp_dim = int(sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0])
        iou_hidden = int(sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0])
    except (KeyError, IndexError, AttributeError, TypeError) as e:
        raise FormatError(f"not a SAM checkpoint (no tensor '{e.args[0] if e.args else e}' of the expected shape)",
                          where) from None
    if head_dim <= 0 or embed_dim % head_dim:
        raise FormatError(f"not a SAM checkpoint (encoder width {embed_dim}, relative-position width {head_dim})",
                          where)
    return SamConfig(embed_dim, depth, embed_dim // head_dim, global_idx, image_size, patch_size, window,
                     prompt_dim, mask_in, dec_depth, mlp_dim, 8, iou_hidden)


def model_name(config: SamConfig) -> str:
    """vit_b / vit_l / vit_h for the official sizes, else ``custom``."""
    return next((k for k, v in SAM_CONFIGS.items() if v == config), "custom")


def describe(config: SamConfig) -> str:
    return f"width {config.encoder_embed_dim}, {config.encoder_depth} blocks"


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a SAM checkpoint file (``torch.load(weights_only=True)``); OccError naming
    ``path`` when it is missing, not loadable, or not a state dict."""
    path = Path(path)
    if not path.exists():
        raise MissingError("SAM checkpoint not found", path)
    if not path.is_file():
        raise OccError("is not a file (expected a SAM checkpoint .pth)", path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and torch errors all mean an unreadable file
        if "Weights only load failed" in str(e):
            with open(path, "rb") as f:
                head = f.read(4)
            if head[:2] == b"PK" or head[:1] == b"\x80":  # a torch zip / legacy pickle holding other objects
                raise FormatError("not a plain state dict of tensors (holds other Python objects; "
                                  "torch.load(weights_only=True) refuses it)", path) from None
        raise FormatError(f"unreadable SAM checkpoint: truncated, damaged or not a torch file "
                          f"({type(e).__name__})", path) from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FormatError("not a SAM checkpoint (expected a plain state dict of tensors)", path)
    return sd


def load_sam(path: str | Path, model: str | None = None, device: str | torch.device = "cpu") -> Sam:
    """The SAM model stored in checkpoint ``path`` (weights loaded strictly), on ``device``, in eval mode.

    ``model`` (vit_b, vit_l, vit_h) asks for a size: a checkpoint of another size is refused. None
    takes whatever the checkpoint holds (its ``name`` says which; ``custom`` for non-official sizes).
    """
    if model is not None and model not in SAM_CONFIGS:
        raise OccError(f"unknown SAM model '{model}' (known: {', '.join(SAM_CONFIGS)})")
    sd = read_checkpoint(path)
    cfg = config_from_state_dict(sd, path)
    name = model_name(cfg)
    if model is not None and name != model:
        raise OccError(f"checkpoint holds a {name} model ({describe(cfg)}), not {model} "
                       f"({describe(SAM_CONFIGS[model])}); pass --model {name}" if name != "custom" else
                       f"checkpoint holds a SAM of another size ({describe(cfg)}), not {model} "
                       f"({describe(SAM_CONFIGS[model])})", path)
    sam = build_sam(cfg)
    try:
        result = sam.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise FormatError(f"not a SAM checkpoint of this architecture ({detail[:200]})", path) from None
    problems = [f"missing '{k}'" for k in result.missing_keys] + [f"unexpected '{k}'" for k in result.unexpected_keys]
    if problems:
        raise FormatError(f"not a SAM checkpoint of this architecture ({problems[0]}"
                          f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''})", path)
    return sam.to(device).eval()


__all__ = ["PIXEL_MEAN", "PIXEL_STD", "SAM_CONFIGS", "Sam", "SamConfig", "build_sam", "config_from_state_dict",
           "describe", "load_sam", "model_name", "read_checkpoint"]
