"""Hugging Face CLIP towers (``hf-clip:<hub name or local dir>``), for users who have a hub or weights.

One call builds one tower (``tower="image"`` or ``"text"``); both share the loaded model. Offline by
default (``local_files_only`` unless ``HF_HUB_OFFLINE=0``). Tested with a tiny random-initialised
``CLIPConfig`` saved to a directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mmrank.encoders.base import Encoder, ImagePreprocess, TextPreprocess
from mmrank.errors import ConfigError, MMRankError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MODELS: dict[str, Any] = {}


def _load(source: str) -> Any:
    from transformers import CLIPModel

    if source not in _MODELS:
        local = os.environ.get("HF_HUB_OFFLINE", "1") != "0" or Path(source).exists()
        try:
            _MODELS[source] = CLIPModel.from_pretrained(source, local_files_only=local).eval()
        except (OSError, ValueError) as err:
            raise MMRankError(f"hf-clip:{source}: cannot load a CLIP model ({err})") from None
    return _MODELS[source]


def _tensor(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFClipTower(Encoder):
    """One CLIP tower: projected embeddings ``(B, projection_dim)``; frozen (features are cached).

    Args:
        source: a hub name or a local directory holding a CLIP ``config.json`` + weights.
        tower: ``"image"`` (input ``(B, 3, S, S)``) or ``"text"`` (input ids + attention mask).
    """

    def __init__(self, source: str, tower: str) -> None:
        super().__init__()
        if tower not in ("image", "text"):
            raise ConfigError(f"hf-clip: tower must be 'image' or 'text', got {tower!r}")
        self.clip = _load(source)
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.source, self.modality = source, tower
        self.name = f"hf-clip:{source}"
        self.dim = int(self.clip.config.projection_dim)
        self.image_size = int(self.clip.config.vision_config.image_size)

    @torch.no_grad()
    def frozen(self, batch: Any) -> torch.Tensor:
        if self.modality == "image":
            return _tensor(self.clip.get_image_features(pixel_values=batch))
        return _tensor(self.clip.get_text_features(input_ids=batch["input_ids"],
                                                   attention_mask=batch["attention_mask"]))



def hf_clip(source: str, tower: str = "image", trainable_blocks: int = 0,
            image_size: int | None = None, max_length: int = 32) -> tuple[HFClipTower, Any]:
    """Registry factory. ``image_size`` defaults to the model's; the tokenizer comes from ``source``."""
    if trainable_blocks:
        raise ConfigError("hf-clip: fine-tuning is not supported (trainable_blocks must be 0)")
    enc = HFClipTower(source, tower)
    if tower == "image":
        size = image_size or enc.image_size
        if size != enc.image_size:
            raise ConfigError(f"hf-clip:{source}: image_size must be the model's "
                              f"{enc.image_size}, got {size}")
        return enc, ImagePreprocess(size, CLIP_MEAN, CLIP_STD)
    from transformers import AutoTokenizer

    local = os.environ.get("HF_HUB_OFFLINE", "1") != "0" or Path(source).exists()
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as err:
        raise MMRankError(f"hf-clip:{source}: no tokenizer found ({err})") from None
    return enc, TextPreprocess(tok, min(max_length, enc.clip.config.text_config.max_position_embeddings))
