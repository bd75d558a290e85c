"""Losses of semantic-aware contrastive learning (CIKM'24 SCL, Sec. 3.3 and 6.1.2), importable alone.

Every loss is an ``nn.Module`` whose ``forward`` returns a dict of named terms; the total is their sum.

* :class:`InfoNCELoss`: Eq. 1 with a learnable temperature, over in-batch keys plus an optional queue
  of K negatives; optional nested (Matryoshka) prefix dimensions.
* :class:`MomentumQueue`: MoCo's memory bank of K keys (K up to the paper's 196,800).
* :func:`momentum_update`: the momentum (EMA) key encoder update.
* :class:`TripletLoss`: margin loss on <query, positive, hard negative>.

Example::

    >>> import torch
    >>> from mmrank.pretrain.losses import InfoNCELoss, MomentumQueue, TripletLoss
    >>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    >>> k = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    >>> queue = MomentumQueue(dim=8, size=16)
    >>> terms = InfoNCELoss()(q, k, queue=queue.keys, queue_valid=queue.valid)
    >>> sorted(terms)
    ['contrastive_loss']
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def nested_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` coordinates of ``x`` re-normalised (a Matryoshka prefix): ``(B, D) -> (B, dim)``."""
    return F.normalize(x[..., :dim], dim=-1)


class InfoNCELoss(nn.Module):
    """InfoNCE, Eq. 1: ``-log exp(q.k+ / tau) / sum_i exp(q.k_i / tau)`` over in-batch keys and a queue.

    Args:
        init_temperature: tau at the start; learnable (as ``log(1/tau)``, CLIP-style) unless
            ``learnable=False``.
        max_scale: upper bound on ``1/tau`` (CLIP clamps at 100).
        nested_dims: Matryoshka prefix sizes; the loss is the mean over prefixes, one term each
            (``contrastive_loss@64``, ...). Empty: one term ``contrastive_loss`` on the full vectors.
        name: the key of the returned term(s).

    ``forward(q, k, pos_index=None, queue=None, q_ids=None, k_ids=None, queue_ids=None,
    queue_valid=None)``:

    * ``q`` (B, D) queries; ``k`` (M, D) in-batch keys (M >= B, e.g. all ranks' keys);
    * ``pos_index`` (B,) the column of each query's positive in ``k`` (default ``arange(B)``);
    * ``queue`` (K, D) extra negatives (no gradient), ``queue_valid`` (K,) bool for filled slots;
    * ``q_ids`` (B,), ``k_ids`` (M,), ``queue_ids`` (K,): item ids; a key with the positive's id
      other than the positive itself is masked out (the same item bought twice is no negative).

    All vectors are expected L2-normalised (prefixes are re-normalised here).
    """

    def __init__(self, init_temperature: float = 0.07, learnable: bool = True, max_scale: float = 100.0,
                 nested_dims: Sequence[int] = (), name: str = "contrastive_loss") -> None:
        super().__init__()
        scale = torch.tensor(math.log(1.0 / init_temperature))
        self.logit_scale = nn.Parameter(scale, requires_grad=learnable)
        self.max_log_scale = math.log(max_scale)
        self.nested_dims = tuple(int(d) for d in nested_dims)
        self.name = name

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().clamp(max=self.max_log_scale).exp())

    def _one(self, q: torch.Tensor, k: torch.Tensor, pos_index: torch.Tensor,
             queue: torch.Tensor | None, mask_k: torch.Tensor | None,
             mask_queue: torch.Tensor | None) -> torch.Tensor:
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        # Scale before masking: a masked -inf times the scale would give a NaN gradient of tau.
        logits = (q @ k.t()) * scale                                     # (B, M)
        if mask_k is not None:
            logits = logits.masked_fill(mask_k, float("-inf"))
        if queue is not None and queue.shape[0]:
            lq = (q @ queue.t()) * scale                                 # (B, K)
            if mask_queue is not None:
                lq = lq.masked_fill(mask_queue, float("-inf"))
            logits = torch.cat([logits, lq], dim=1)
        return F.cross_entropy(logits, pos_index)

    def forward(self, q: torch.Tensor, k: torch.Tensor, pos_index: torch.Tensor | None = None,
                queue: torch.Tensor | None = None, q_ids: torch.Tensor | None = None,
                k_ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None,
                queue_valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b = q.shape[0]
        if pos_index is None:
            pos_index = torch.arange(b, device=q.device)
        mask_k = None
        if q_ids is not None and k_ids is not None:
            mask_k = q_ids[:, None] == k_ids[None, :]                    # (B, M) same item
            mask_k[torch.arange(b), pos_index] = False                   # ... but not the positive
        mask_queue = None
        if queue is not None:
            if queue_valid is not None:
                mask_queue = ~queue_valid[None, :].expand(b, -1)
            if q_ids is not None and queue_ids is not None:
                same = q_ids[:, None] == queue_ids[None, :]
                mask_queue = same if mask_queue is None else (mask_queue | same)
        if not self.nested_dims:
            return {self.name: self._one(q, k, pos_index, queue, mask_k, mask_queue)}
        w = 1.0 / len(self.nested_dims)
        out = {}
        for d in self.nested_dims:
            qd, kd = nested_normalize(q, d), nested_normalize(k, d)
            qu = nested_normalize(queue, d) if queue is not None else None
            out[f"{self.name}@{d}"] = w * self._one(qd, kd, pos_index, qu, mask_k, mask_queue)
        return out


class TripletLoss(nn.Module):
    """Triplet margin loss on <query, positive, hard negative> (the paper's [23]; Sec. 6.1.2).

    ``mean(relu(margin - q.p + q.n))`` over rows with a hard negative, at each nested dimension.

    Args:
        margin: the required gap between the positive's and the negative's cosine similarity.
        weight: multiplier of the term.
        nested_dims: Matryoshka prefixes (empty: full vectors only).

    ``forward(q (B, D), pos (B, D), neg (B, D), valid (B,) bool)`` -> ``{"triplet_loss": ...}``.
    """

    def __init__(self, margin: float = 0.2, weight: float = 1.0, nested_dims: Sequence[int] = ()) -> None:
        super().__init__()
        self.margin, self.weight = float(margin), float(weight)
        self.nested_dims = tuple(int(d) for d in nested_dims)

    def forward(self, q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        dims = self.nested_dims or (q.shape[-1],)
        total = q.new_zeros(())
        for d in dims:
            qd, pd, nd = nested_normalize(q, d), nested_normalize(pos, d), nested_normalize(neg, d)
            gap = F.relu(self.margin - (qd * pd).sum(-1) + (qd * nd).sum(-1))   # (B,)
            if valid is not None:
                gap = gap * valid.to(gap.dtype)
                denom = valid.sum().clamp_min(1).to(gap.dtype)
            else:
                denom = torch.tensor(float(gap.shape[0]), dtype=gap.dtype)
            total = total + gap.sum() / denom
        return {"triplet_loss": self.weight * total / len(dims)}


class MomentumQueue(nn.Module):
    """MoCo's memory bank: a FIFO of the last K keys (and their item ids), K up to 196,800.

    Buffers: ``keys`` (K, D), ``ids`` (K,) int64, ``valid`` (K,) bool, ``ptr`` () int64. Enqueue the
    keys of *all* ranks (gathered in rank order) so every rank holds the same queue.

    Example::

        >>> import torch
        >>> q = MomentumQueue(dim=4, size=3)
        >>> q.enqueue(torch.eye(4)[:2], torch.tensor([7, 8]))
        >>> int(q.valid.sum()), q.ids.tolist()
        (2, [7, 8, -1])
    """

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.size = int(size)
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("valid", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, ids: torch.Tensor) -> None:
        """Write ``keys`` (N, D) and ``ids`` (N,) over the oldest slots."""
        n = keys.shape[0]
        if n >= self.size:
            keys, ids, n = keys[-self.size:], ids[-self.size:], self.size
        p = int(self.ptr)
        idx = (torch.arange(n) + p) % self.size
        self.keys[idx] = keys.detach().to(self.keys.dtype)
        self.ids[idx] = ids.to(torch.long)
        self.valid[idx] = True
        self.ptr.fill_((p + n) % self.size)


@torch.no_grad()
def momentum_update(online: nn.Module, momentum: nn.Module, m: float) -> None:
    """MoCo's key encoder: ``theta_k <- m * theta_k + (1 - m) * theta_q`` (buffers copied)."""
    for po, pm in zip(online.parameters(), momentum.parameters()):
        pm.mul_(m).add_(po.detach(), alpha=1.0 - m)
    for bo, bm in zip(online.buffers(), momentum.buffers()):
        bm.copy_(bo)
