"""The item tower and the two query towers, in one embedding space (CIKM'24 Sec. 3, Table 1).

Backbone features (cached, frozen by default) go through per-modality projection heads shared by
items and queries of that modality (the paper pairs an image query with the item's image and a text
query with its title, through the same encoder):

* image query  -> ``normalize(g_img(h_img))``                      (B, D)
* text query   -> ``normalize(g_txt(h_txt))``                      (B, D)
* item         -> ``normalize(a + b + fuse([a, b]))`` with ``a = normalize(g_img(h_img))``,
  ``b = normalize(g_txt(h_title))``; ``fuse`` is an MLP whose last layer starts at zero.

``image_tail`` (optional) is the fine-tuned end of the image backbone (``trainable_blocks > 0``).

Missing modalities (issue 20): ``has_img`` / ``has_txt`` (B,) bool zero the projected vector of an
absent photo or title (None: present). With ``moe=True`` the fusion is a modality-driven mixture of
experts (:class:`ModalityMoE`, MOON2.0): the item and query towers share it, and a sample's modality
composition (image only, text only, both) picks its expert, beside a shared expert.
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


# The experts of :class:`ModalityMoE`, in order: one per modality composition, then the shared one.
EXPERTS = ("image", "text", "both", "shared")
IMAGE_ONLY, TEXT_ONLY, BOTH = 0, 1, 2


def composition(has_img: torch.Tensor, has_txt: torch.Tensor) -> torch.Tensor:
    """(B,) long: ``IMAGE_ONLY`` | ``TEXT_ONLY`` | ``BOTH`` (a sample with neither counts as both:
    it has nothing to route by)."""
    out = torch.full(has_img.shape, BOTH, dtype=torch.long, device=has_img.device)
    out[has_img & ~has_txt] = IMAGE_ONLY
    out[~has_img & has_txt] = TEXT_ONLY
    return out


class ModalityMoE(nn.Module):
    """Modality-driven mixture of experts (MOON2.0 Sec. 3): ``(a, b, comp) -> (B, D)``.

    Each expert is an MLP on ``[a, b]`` (2D -> D, last layer zero at the start, so the tower starts as
    the plain ``a + b``). A learned router scores the four experts from ``[a, b]``; a sample may use
    only the expert of its modality composition and the shared expert (the others are masked out
    before the softmax), so the mixture is ``g_c * E_c + g_s * E_shared`` with ``g_c + g_s = 1``.
    ``last_load`` (4,) is the mean gate of each expert over the last batch (sums to 1).

    Example::

        >>> moe = ModalityMoE(8, 16)
        >>> a = torch.randn(3, 8)
        >>> moe(a, a, torch.tensor([0, 1, 2])).shape
        torch.Size([3, 8])
    """

    def __init__(self, dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in EXPERTS)
        for e in self.experts:
            nn.init.zeros_(e[-1].weight)
            nn.init.zeros_(e[-1].bias)
        self.router = nn.Linear(2 * dim, len(EXPERTS))
        allowed = torch.zeros(3, len(EXPERTS), dtype=torch.bool)
        for c in (IMAGE_ONLY, TEXT_ONLY, BOTH):
            allowed[c, c] = allowed[c, len(EXPERTS) - 1] = True
        self.register_buffer("allowed", allowed, persistent=False)
        self.last_load: torch.Tensor | None = None

    def gates(self, x: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        """(B, 4) routing weights: softmax of the router over the experts the composition allows."""
        logits = self.router(x).masked_fill(~self.allowed[comp], float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b], dim=-1)
        g = self.gates(x, comp)
        self.last_load = g.detach().mean(0)
        out = x.new_zeros(a.shape, dtype=torch.promote_types(x.dtype, torch.float32))  # fp32 sum
        for e, expert in enumerate(self.experts):
            rows = torch.nonzero(g[:, e] > 0).squeeze(1)  # each expert runs on its samples only
            if rows.numel():
                out = out.index_add(0, rows, (g[rows, e:e + 1] * expert(x[rows])).to(out.dtype))
        return out


def _mask(x: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    return x if present is None else x * present.to(x.dtype)[:, None]


class SCLModel(nn.Module):
    """Item tower + text-query tower + image-query tower.

    Args:
        d_image: image backbone feature size (after the tail, if any).
        d_text: text backbone feature size.
        dim: output size D (nested prefixes of it also retrieve, see ``InfoNCELoss.nested_dims``).
        hidden: projection-head hidden size.
        image_tail: the trainable end of the image backbone, or None (frozen).
        moe: fuse through a :class:`ModalityMoE` (items and queries) instead of the plain MLP.

    Example::

        >>> m = SCLModel(1280, 384, dim=64)
        >>> m.item(torch.zeros(3, 1280), torch.zeros(3, 384)).shape
        torch.Size([3, 64])
    """

    def __init__(self, d_image: int, d_text: int, dim: int = 256, hidden: int = 512,
                 image_tail: nn.Module | None = None, moe: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.image_tail = image_tail
        self.g_img = ProjectionHead(d_image, dim, hidden)
        self.g_txt = ProjectionHead(d_text, dim, hidden)
        self.fuse = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)
        self.moe = ModalityMoE(dim, hidden) if moe else None
        # {"item" | "query": [sum of gates (4,), samples]} while a trainer tallies the router's load
        self.tally: dict[str, list] | None = None

    def _route(self, a: torch.Tensor, b: torch.Tensor, comp: torch.Tensor, role: str) -> torch.Tensor:
        assert self.moe is not None
        out = self.moe(a, b, comp)
        if self.tally is not None and self.moe.last_load is not None:
            load = self.moe.last_load.float()
            slot = self.tally.setdefault(role, [torch.zeros(len(EXPERTS), device=load.device), 0])
            slot[0] += load * a.shape[0]
            slot[1] += a.shape[0]
        return out

    def router_load(self) -> dict[str, dict[str, float]]:
        """The tallied mean gate per expert, by tower (each sums to 1); empty without MoE/tally."""
        return {role: {e: float(x) for e, x in zip(EXPERTS, (s / max(n, 1)).tolist())}
                for role, (s, n) in (self.tally or {}).items() if n}

    def _img(self, h: torch.Tensor) -> torch.Tensor:
        if self.image_tail is not None:
            h = self.image_tail(h)
        return F.normalize(self.g_img(h), dim=-1)

    def _txt(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.g_txt(h), dim=-1)

    def _single(self, v: torch.Tensor, comp: int) -> torch.Tensor:
        """A one-modality query: the plain tower's unit vector, or through its MoE expert."""
        if self.moe is None:
            return v
        z = torch.zeros_like(v)
        a, b = (v, z) if comp == IMAGE_ONLY else (z, v)
        c = torch.full((v.shape[0],), comp, dtype=torch.long, device=v.device)
        return F.normalize(v + self._route(a, b, c, "query"), dim=-1)

    def image_query(self, h_img: torch.Tensor) -> torch.Tensor:
        """Image-query tower: ``(B, ...) -> (B, D)`` unit vectors."""
        return self._single(self._img(h_img), IMAGE_ONLY)

    def text_query(self, h_txt: torch.Tensor) -> torch.Tensor:
        """Text-query tower: ``(B, d_text) -> (B, D)`` unit vectors."""
        return self._single(self._txt(h_txt), TEXT_ONLY)

    def item(self, h_img: torch.Tensor, h_title: torch.Tensor, has_img: torch.Tensor | None = None,
             has_txt: torch.Tensor | None = None, role: str = "item") -> torch.Tensor:
        """Item tower: image + title features -> ``(B, D)`` unit vectors; ``has_img`` / ``has_txt``
        (B,) bool mark a missing photo or title (None: present)."""
        a, b = _mask(self._img(h_img), has_img), _mask(self._txt(h_title), has_txt)
        if self.moe is None:
            return F.normalize(a + b + self.fuse(torch.cat([a, b], dim=-1)), dim=-1)
        n = a.shape[0]
        yes = torch.ones(n, dtype=torch.bool, device=a.device)
        comp = composition(yes if has_img is None else has_img.bool(),
                           yes if has_txt is None else has_txt.bool())
        return F.normalize(a + b + self._route(a, b, comp, role), dim=-1)

    def query(self, h_img: torch.Tensor, h_txt: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """A query of any composition (``modality`` (B,): 0 text, 1 image, 2 both, as
        :mod:`mmrank.pretrain.data`): a both-query goes through the item tower's fusion."""
        has_txt, has_img = modality != 1, modality != 0
        return self.item(h_img, h_txt, has_img, has_txt, role="query")

    def item_image_title(self, h_img: torch.Tensor, h_title: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The item's image and title alone, each through its single-modality tower (the pair
        the item-level alignment term contrasts): two ``(B, D)`` unit-vector tensors."""
        return self.image_query(h_img), self.text_query(h_title)


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
