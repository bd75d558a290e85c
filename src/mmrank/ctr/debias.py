"""The visual debiasing block of the CTR model (issue 22, part 2), after the click-supervised visual
encoding abstract (``../shared/seeds/002_*``): "a debiasing network in the online CTR predictor adjusts
the visual features by contrasting high-impression items with selected items with lower impressions".

:class:`VisualDebias` maps the item's frozen visual (multimodal) representation ``v`` to an adjusted
feature ``a = normalize(MLP(v))`` that joins the CTR head's input (strategy ``debias`` =
``simtier+make`` with this block). While training, two auxiliary terms shape ``a``:

* **adversarial** (``debias_adv``): a small regressor predicts the item's impression count so far
  (``log1p``, standardised in the batch) from ``a`` through a gradient-reversal layer; the regressor
  learns to predict it, the adjustment learns to make ``a`` not predictive of it.
* **contrastive** (``debias_con``): each item of the batch with more impressions than the batch median
  (high) is paired with the lower-impression item of the batch whose *raw* representation is the most
  similar (its selected positive); an InfoNCE term over the lower-impression items pulls the adjusted
  features of the pair together, the other lower-impression items being negatives.

The impression counts are point-in-time: for each sample, the number of training samples of the same
item strictly before the sample's ``ts`` (:func:`impressions_so_far`, from the logged samples only,
never from ``R/truth/``); they are read from ``batch["impressions"]`` and needed only for the
auxiliary terms, so scoring (serving, new data) needs none.

Example::

    >>> import torch
    >>> block = VisualDebias(in_dim=8, cfg=DebiasConfig(dim=4))
    >>> v = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    >>> block(v).shape
    torch.Size([6, 4])
    >>> sorted(block.losses(v, block(v), torch.tensor([0., 1., 5., 9., 40., 2.]),
    ...                     torch.arange(6)))
    ['debias_adv', 'debias_con']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmrank.config import StrictModel

if TYPE_CHECKING:
    from mmrank.ctr.data import EncodedSamples


class DebiasConfig(StrictModel):
    """The :class:`VisualDebias` block (strategy ``debias``)."""

    dim: int = Field(16, ge=1, description="width of the adjusted visual feature joining the CTR head")
    hidden: int = Field(32, ge=1, description="hidden width of the adjustment and of the adversary")
    tau: float = Field(0.2, gt=0, description="temperature of the contrastive term")
    adv_weight: float = Field(0.5, ge=0, description="weight of the adversarial term (impression "
                              "count not predictable from the adjusted feature)")
    con_weight: float = Field(0.5, ge=0, description="weight of the contrastive term (high- vs "
                              "visually similar lower-impression items)")


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return -grad


def grad_reverse(x: torch.Tensor) -> torch.Tensor:
    """Identity forward; the gradient's sign flipped backward (the adversary's gradient-reversal layer)."""
    return _GradReverse.apply(x)


class VisualDebias(nn.Module):
    """Adjusts an item's visual features against its exposure (see the module docstring).

    Args:
        in_dim: width ``D`` of the representations.
        cfg: :class:`DebiasConfig`.

    ``forward(v (B, D)) -> a (B, dim)``; ``losses(v, a, impressions (B,), items (B,)) -> {"debias_adv",
    "debias_con"}`` (unweighted; the model weighs them with ``adv_weight`` and ``con_weight``).
    """

    def __init__(self, in_dim: int, cfg: DebiasConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DebiasConfig()
        self.out_dim = cfg.dim
        self.adjust = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.PReLU(), nn.Linear(cfg.hidden, cfg.dim))
        self.adversary = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.PReLU(), nn.Linear(cfg.hidden, 1))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.adjust(v), dim=-1)

    def losses(self, v: torch.Tensor, a: torch.Tensor, impressions: torch.Tensor,
               items: torch.Tensor) -> dict[str, torch.Tensor]:
        """The adversarial and contrastive terms over the distinct items of a batch."""
        uniq, first, inv = _first_of_each(items)
        v, a = v[first], a[first]           # one row per item (a is a function of v)
        latest = torch.zeros(len(uniq), dtype=a.dtype, device=a.device).scatter_reduce(
            0, inv, impressions.to(a.dtype).clamp_min(0), reduce="amax", include_self=False)
        imp = torch.log1p(latest)           # the item's latest count in the batch
        zero = a.sum() * 0.0
        # adversarial: the regressor minimises its error, the adjustment (reversed gradient) maximises it
        if len(uniq) > 1 and float(imp.std()) > 0:
            target = (imp - imp.mean()) / imp.std()
            adv = F.mse_loss(self.adversary(grad_reverse(a)).squeeze(-1), target)
        else:
            adv = zero
        # contrastive: high-impression anchors, the most visually similar lower-impression item positive
        med = imp.median()
        high, low = torch.nonzero(imp > med).squeeze(-1), torch.nonzero(imp <= med).squeeze(-1)
        if len(high) and len(low) > 1:
            with torch.no_grad():
                raw = F.normalize(v[high], dim=-1) @ F.normalize(v[low], dim=-1).T     # (H, L)
                pos = raw.argmax(dim=1)
            logits = a[high] @ a[low].T / self.cfg.tau
            con = F.cross_entropy(logits, pos)
        else:
            con = zero
        return {"debias_adv": adv, "debias_con": con}


def _first_of_each(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct values of ``items``, the index of each one's first occurrence, and each row's value
    index."""
    uniq, inv = torch.unique(items, return_inverse=True)
    first = torch.full((len(uniq),), len(items), dtype=torch.long, device=items.device)
    first = first.scatter_reduce(0, inv, torch.arange(len(items), device=items.device), reduce="amin")
    return uniq, first, inv


def impressions_so_far(item_ids: np.ndarray, ts: np.ndarray, is_train: np.ndarray) -> np.ndarray:
    """For each sample, the number of training samples (logged impressions) of the same item with a
    strictly earlier ``ts``: point-in-time exposure, from the logs only. Returns ``(N,)`` float32."""
    item_ids, ts = np.asarray(item_ids, np.int64), np.asarray(ts, np.int64)
    is_train = np.asarray(is_train, bool)
    if len(item_ids) == 0:
        return np.zeros(0, np.float32)
    _, code = np.unique(item_ids, return_inverse=True)
    t0 = int(ts.min())
    span = int(ts.max()) - t0 + 2
    key = code.astype(np.int64) * span + (ts - t0)
    train_keys = np.sort(key[is_train])
    before = np.searchsorted(train_keys, key, side="left")
    start = np.searchsorted(train_keys, code.astype(np.int64) * span, side="left")
    return (before - start).astype(np.float32)


def ensure_impressions(enc: EncodedSamples) -> None:
    """Add ``enc.extra["impressions"]`` (:func:`impressions_so_far` of every row) unless present."""
    if "impressions" in enc.extra:
        return
    raw = enc.raw
    enc.extra["impressions"] = impressions_so_far(raw.item_id, raw.ts, raw.is_train)
