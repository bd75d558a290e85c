"""The encoder protocol and image preprocessing shared by every tower.

An encoder is split in two: ``frozen(batch) -> h`` (run once, its output cached on disk) and
``trainable(h) -> (B, dim)`` (the last blocks plus pooling, fine-tuned when ``trainable_blocks > 0``).
With ``trainable_blocks == 0`` the trainable part has no parameters and ``h`` is the pooled feature.

On a device: :func:`batch_to` moves what a preprocess returns (a tensor, a dict of tensors; a list of
strings stays on the host) and :func:`frozen_on` runs the frozen part there, its output on the device
whatever the encoder returns (the hashing text featuriser builds its counts on the host).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from mmrank.device import batch_to

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def frozen_on(encoder: "Encoder", batch: Any, device: torch.device | None, pin: bool = True) -> torch.Tensor:
    """``encoder.frozen(batch)`` with ``batch`` moved to ``device``; the output on ``device`` too (None:
    where the encoder leaves it)."""
    h = encoder.frozen(batch_to(batch, device, pin))
    return h if device is None else h.to(device)


class Encoder(nn.Module):
    """One tower. Subclasses set ``name``, ``modality``, ``dim`` and implement ``frozen``.

    ``forward(batch)`` is ``tail(frozen(batch))``: ``batch`` is what the preprocess returns (a
    ``(B, 3, S, S)`` tensor for images, a dict of ``(B, L)`` tensors for text). ``tail`` is ``None``
    when the backbone is frozen (``trainable_blocks == 0``); then ``frozen`` returns ``(B, dim)``.
    """

    name: str = ""
    modality: str = ""
    dim: int = 0
    trainable_blocks: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.tail: nn.Module | None = None

    def frozen(self, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        """Run the frozen part (no gradients); its output is what the feature cache stores."""
        raise NotImplementedError

    def own_state(self) -> dict[str, torch.Tensor]:
        """Weights of the frozen part that no package ships (a from-scratch CNN); else empty."""
        return {}

    def forward(self, batch: Any) -> torch.Tensor:
        with torch.no_grad():
            h = self.frozen(batch)
        return h if self.tail is None else self.tail(h)


class ImagePreprocess:
    """Bytes or PIL images -> ``(B, 3, S, S)`` float tensor.

    Non-square photos (the real catalog's 60x80) are padded to a square with ``background`` first, so
    the product is not distorted, then resized to ``size`` and normalised with ``mean``/``std``.
    """

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, background: int = 255) -> None:
        self.size = int(size)
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, np.float32).reshape(1, 1, 3)
        self.background = background

    def to_array(self, img: bytes | Image.Image) -> np.ndarray:
        """One image -> ``(S, S, 3)`` uint8."""
        if isinstance(img, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(img)))
        img = img.convert("RGB")
        w, h = img.size
        if w != h:
            side = max(w, h)
            canvas = Image.new("RGB", (side, side), (self.background,) * 3)
            canvas.paste(img, ((side - w) // 2, (side - h) // 2))
            img = canvas
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)

    def normalise(self, arr: np.ndarray) -> torch.Tensor:
        """``(B, S, S, 3)`` uint8 -> ``(B, 3, S, S)`` float32."""
        x = (arr.astype(np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def __call__(self, images: Sequence[bytes | Image.Image]) -> torch.Tensor:
        if len(images) == 0:
            return torch.zeros(0, 3, self.size, self.size)
        return self.normalise(np.stack([self.to_array(i) for i in images]))


class PixelPreprocess(ImagePreprocess):
    """Bytes or PIL images -> ``(B, 3, S, S)`` **uint8** pixels (padded to a square and resized as
    :class:`ImagePreprocess` does, not normalised): the input of a network fine-tuned end to end,
    which normalises inside (:class:`mmrank.encoders.image.PixelNet`). A cache of these costs a
    quarter of float32.
    """

    def normalise(self, arr: np.ndarray) -> torch.Tensor:
        """``(B, S, S, 3)`` uint8 -> ``(B, 3, S, S)`` uint8."""
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))

    def __call__(self, images: Sequence[bytes | Image.Image]) -> torch.Tensor:
        if len(images) == 0:
            return torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)
        return self.normalise(np.stack([self.to_array(i) for i in images]))


class TextPreprocess:
    """Strings -> ``{"input_ids": (B, L), "attention_mask": (B, L)}`` with a Hugging Face tokenizer."""

    def __init__(self, tokenizer: Any, max_length: int = 32) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        out = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
