"""The item tower and the two query towers, in one embedding space (CIKM'24 Sec. 3, Table 1).

Backbone features (cached, frozen by default) go through per-modality projection heads shared by
items and queries of that modality (the paper pairs an image query with the item's image and a text
query with its title, through the same encoder):

* image query  -> ``normalize(g_img(h_img))``                      (B, D)
* text query   -> ``normalize(g_txt(h_txt))``                      (B, D)
* item         -> ``normalize(a + b + fuse([a, b]))`` with ``a = normalize(g_img(h_img))``,
  ``b = normalize(g_txt(h_title))``; ``fuse`` is an MLP whose last layer starts at zero.

``image_tail`` (optional) is the fine-tuned end of the image backbone (``trainable_blocks > 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """``(B, d_in) -> (B, d_out)``: a linear projection, then a residual MLP block in ``d_out``.

    ``h = W x``; ``out = h + MLP(LayerNorm(h))`` (Linear-GELU-Linear, width ``hidden``). The wide
    input (1280-d image features) meets one matrix only, which keeps a CPU step cheap.

    Example::

        >>> ProjectionHead(1280, 256)(torch.zeros(2, 1280)).shape
        torch.Size([2, 256])
    """

    def __init__(self, d_in: int, d_out: int, hidden: int = 512) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)
        self.mlp = nn.Sequential(nn.LayerNorm(d_out), nn.Linear(d_out, hidden), nn.GELU(),
                                 nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return h + self.mlp(h)


class SCLModel(nn.Module):
    """Item tower + text-query tower + image-query tower.

    Args:
        d_image: image backbone feature size (after the tail, if any).
        d_text: text backbone feature size.
        dim: output size D (nested prefixes of it also retrieve, see ``InfoNCELoss.nested_dims``).
        hidden: projection-head hidden size.
        image_tail: the trainable end of the image backbone, or None (frozen).

    Example::

        >>> m = SCLModel(1280, 384, dim=64)
        >>> m.item(torch.zeros(3, 1280), torch.zeros(3, 384)).shape
        torch.Size([3, 64])
    """

    def __init__(self, d_image: int, d_text: int, dim: int = 256, hidden: int = 512,
                 image_tail: nn.Module | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.image_tail = image_tail
        self.g_img = ProjectionHead(d_image, dim, hidden)
        self.g_txt = ProjectionHead(d_text, dim, hidden)
        self.fuse = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)

    def _img(self, h: torch.Tensor) -> torch.Tensor:
        if self.image_tail is not None:
            h = self.image_tail(h)
        return F.normalize(self.g_img(h), dim=-1)

    def image_query(self, h_img: torch.Tensor) -> torch.Tensor:
        """Image-query tower: ``(B, ...) -> (B, D)`` unit vectors."""
        return self._img(h_img)

    def text_query(self, h_txt: torch.Tensor) -> torch.Tensor:
        """Text-query tower: ``(B, d_text) -> (B, D)`` unit vectors."""
        return F.normalize(self.g_txt(h_txt), dim=-1)

    def item(self, h_img: torch.Tensor, h_title: torch.Tensor) -> torch.Tensor:
        """Item tower: image + title features -> ``(B, D)`` unit vectors."""
        a, b = self._img(h_img), self.text_query(h_title)
        return F.normalize(a + b + self.fuse(torch.cat([a, b], dim=-1)), dim=-1)


class OffTheShelf(nn.Module):
    """No training (the paper's CLIP-O): raw backbone features, normalised, side by side.

    item = ``[n(h_img), n(h_title)] / sqrt(2)``; image query = ``[n(h_img), 0]``; text query =
    ``[0, n(h_txt)]``. So an image query ranks items by image similarity and a text query by title
    similarity: the off-the-shelf encoders exactly, in one table. ``dim = d_image + d_text``.
    """

    def __init__(self, d_image: int, d_text: int) -> None:
        super().__init__()
        self.d_image, self.d_text = d_image, d_text
        self.dim = d_image + d_text

    def image_query(self, h_img: torch.Tensor) -> torch.Tensor:
        h = F.normalize(h_img.flatten(1), dim=-1)
        return torch.cat([h, h.new_zeros(h.shape[0], self.d_text)], dim=-1)

    def text_query(self, h_txt: torch.Tensor) -> torch.Tensor:
        h = F.normalize(h_txt, dim=-1)
        return torch.cat([h.new_zeros(h.shape[0], self.d_image), h], dim=-1)

    def item(self, h_img: torch.Tensor, h_title: torch.Tensor) -> torch.Tensor:
        a = F.normalize(h_img.flatten(1), dim=-1)
        b = F.normalize(h_title, dim=-1)
        return torch.cat([a, b], dim=-1) / 2 ** 0.5
