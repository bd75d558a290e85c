"""A small, real item encoder with the interface of ``mmrank.pretrain.item_encoder.load_item_encoder``.

For tests and examples of the store that must not wait on a pre-trained encoder: a hashed
bag-of-words text tower and a two-layer CNN image tower (16x16 input), randomly initialised from a
seed, so the same seed gives the same weights and the same version id. It is not a good encoder; it
is a deterministic one that really reads titles and decodes images (an undecodable image fails).

Example::

    >>> enc = TinyItemEncoder(dim=32, seed=0)
    >>> enc.encode_text(["red shirt"]).shape
    (1, 32)
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np
import torch
from torch import nn

from mmrank.data.io import decode_image

_BUCKETS = 2048


class _TinyTowers(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.text = nn.EmbeddingBag(_BUCKETS, dim, mode="mean")
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.image = nn.Linear(16 * 4 * 4, dim)

    def text_forward(self, token_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``(T,)`` token ids + ``(B,)`` offsets -> ``(B, D)``."""
        return self.text(token_ids, offsets)

    def image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 16, 16)`` -> ``(B, D)``."""
        return self.image(self.conv(pixels).flatten(1))


class TinyItemEncoder:
    """``encode_items(titles, images)``, ``encode_text``, ``encode_images`` -> ``(N, dim)`` float32,
    L2-normalised; ``version`` is a hash of the weights."""

    def __init__(self, dim: int = 32, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.towers = _TinyTowers(dim)
        with torch.no_grad():
            for p in self.towers.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        self.towers.eval()
        self.dim, self.name = dim, "tiny"
        h = hashlib.sha1()
        for k, v in self.towers.state_dict().items():
            h.update(k.encode())
            h.update(v.numpy().tobytes())
        self.version = f"tiny-{dim}-{h.hexdigest()[:10]}"

    def _tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, offsets = [], []
        for t in texts:
            offsets.append(len(ids))
            words = t.lower().split() or [""]
            ids += [zlib.crc32(w.encode()) % _BUCKETS for w in words]
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)

    def _pixels(self, images: list[bytes]) -> torch.Tensor:
        arr = [np.asarray(decode_image(b).resize((16, 16)), dtype=np.float32) / 255.0 for b in images]
        return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def _norm(x: torch.Tensor) -> np.ndarray:
        return nn.functional.normalize(x, dim=-1).numpy().astype(np.float32)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self._norm(self.towers.text_forward(*self._tokens(texts)))

    @torch.no_grad()
    def encode_images(self, images: list[bytes]) -> np.ndarray:
        return self._norm(self.towers.image_forward(self._pixels(images)))

    @torch.no_grad()
    def encode_items(self, titles: list[str], images: list[bytes]) -> np.ndarray:
        t = self.towers.text_forward(*self._tokens(titles))
        i = self.towers.image_forward(self._pixels(images))
        return self._norm(nn.functional.normalize(t, dim=-1) + nn.functional.normalize(i, dim=-1))
