"""Losses of semantic-aware contrastive learning (CIKM'24 SCL, Sec. 3.3 and 6.1.2), importable alone.

Every loss is an ``nn.Module`` whose ``forward`` returns a dict of named terms; the total is their sum.

* :class:`InfoNCELoss`: Eq. 1 with a learnable temperature, over in-batch keys plus an optional queue
  of K negatives; optional nested (Matryoshka) prefix dimensions.
* :class:`MomentumQueue`: MoCo's memory bank of K keys (K up to the paper's 196,800).
* :func:`momentum_update`: the momentum (EMA) key encoder update.
* :class:`TripletLoss`: margin loss on <query, positive, hard negative>.
* :class:`AlignmentLoss`: MOON2.0's item-level image-title InfoNCE.
* :class:`ClickVisualLoss`: click-supervised image-tower InfoNCE + a two-view self-supervised term.

Example::

    >>> import torch
    >>> from mmrank.pretrain.losses import InfoNCELoss, MomentumQueue, TripletLoss
    >>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    >>> k = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    >>> queue = MomentumQueue(dim=8, size=16)
    >>> terms = InfoNCELoss()(q, k, queue=queue.keys, queue_valid=queue.valid)
    >>> sorted(terms)
    ['contrastive_loss']
    >>> queue.enqueue(k, torch.arange(4))  # in training, pass the queue itself (cached prefixes)
    >>> sorted(InfoNCELoss(nested_dims=(4, 8))(q, k, queue=queue, q_ids=torch.arange(4)))
    ['contrastive_loss@4', 'contrastive_loss@8']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from mmrank.device import full_precision



def nested_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` coordinates of ``x`` re-normalised (a Matryoshka prefix): ``(B, D) -> (B, dim)``."""
    return F.normalize(x[..., :dim], dim=-1)


class QueueView(NamedTuple):
    """The filled slots of a queue, ready for :class:`InfoNCELoss` (``n`` filled slots).

    * ``keys``: per nested dim ``d``, the L2-normalised ``d``-prefixes ``(n, d)``; under ``None``, the
      raw keys ``(n, D)`` (what the loss uses without nested dims);
    * ``sorted_ids`` (n,): the slots' item ids, ascending (None: no same-id masking);
    * ``order`` (n,): the row in ``keys[...]`` of each entry of ``sorted_ids``.
    """

    keys: dict[int | None, torch.Tensor]
    sorted_ids: torch.Tensor | None
    order: torch.Tensor | None


def _filled(valid: torch.Tensor | None, size: int) -> tuple[int, torch.Tensor | None]:
    """``(n, rows)``: the number of valid slots, and their indices unless they are ``0..n-1``."""
    if valid is None:
        return size, None
    n = int(valid.sum())
    if n == 0 or bool(valid[:n].all()):
        return n, None  # a queue fills from slot 0 and stays full: a slice, no copy
    return n, torch.nonzero(valid).squeeze(1)


def queue_view(keys: torch.Tensor, valid: torch.Tensor | None = None, ids: torch.Tensor | None = None,
               dims: Sequence[int | None] = (None,)) -> QueueView:
    """A :class:`QueueView` of a plain ``(K, D)`` queue tensor (computed afresh; see
    :meth:`MomentumQueue.view` for the cached one)."""
    n, rows = _filled(valid, keys.shape[0])
    filled = keys[:n] if rows is None else keys[rows]
    out = {d: filled if d is None else nested_normalize(filled, d) for d in dims}
    if ids is None:
        return QueueView(out, None, None)
    fid = ids[:n] if rows is None else ids[rows]
    sorted_ids, order = torch.sort(fid)
    return QueueView(out, sorted_ids, order)


def same_id_pairs(q_ids: torch.Tensor, sorted_ids: torch.Tensor,
                  order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)``: every (query, queue row) pair with the same item id, without a dense
    ``(B, K)`` compare: two binary searches of ``q_ids`` (B,) in the sorted queue ids, O(B log K)."""
    q_ids = q_ids.to(sorted_ids.dtype)
    lo = torch.searchsorted(sorted_ids, q_ids)
    cnt = torch.searchsorted(sorted_ids, q_ids, right=True) - lo
    total = int(cnt.sum())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.long, device=q_ids.device)
        return empty, empty
    rows = torch.repeat_interleave(torch.arange(q_ids.shape[0], device=q_ids.device), cnt)
    start = torch.repeat_interleave(lo - (torch.cumsum(cnt, 0) - cnt), cnt)
    return rows, order[start + torch.arange(total, device=q_ids.device)]


class _QueueLogSumExp(torch.autograd.Function):
    """``lse_i = log sum_j exp(x_i . y_j + bias_j)`` over the unmasked ``j``: ``x`` (B, d), ``y`` (n, d),
    ``bias`` (n,) or None (no gradient) -> (B,).

    The queue's share of Eq. 1's denominator, in one pass over the queue and without a ``(B, n)``
    tensor, as flash attention does with its keys and values (here both are the queue). The forward
    walks the queue in blocks of ``chunk`` keys; each block's logits ``s = x @ y_c^T`` (B, c) stay in
    cache: masked pairs set to ``-inf``, exponentiated against a per-row shift (fixed from the
    logits' bound when the keys are unit vectors, else a running row max), summed into the
    running denominator and, when ``x`` wants a gradient, multiplied into the running
    ``sum_j exp(s_j) y_j``. That sum over the denominator is the gradient's direction
    ``softmax(s) @ y``, so the backward is ``grad x = g * (softmax(s) @ y)``: the same two matmuls as
    storing the logits for the backward, one elementwise pass fewer and no ``(B, n)`` write or read.
    A queue that wants a gradient (rare; normally the queue holds detached momentum keys) gets it
    from a second pass that recomputes each block's softmax. Masked pairs have weight exactly 0; a
    row with every key masked gives ``-inf`` and a zero gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                chunk: int, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n = x.shape[0], y.shape[0]
        blocks = _blocks(n, chunk, rows, cols)
        want_o = ctx.needs_input_grad[0]
        buf = x.new_empty(b * min(chunk, n))
        # Cosine logits are bounded: with unit keys (the queue's normalised prefixes) |x_i . y_j| <=
        # |x_i|, so one shift per row fixed in advance keeps every exp in range, and a block needs
        # no running max (two passes over it fewer). Checked after the pass: a row whose sum
        # overflowed or underflowed (keys far from unit length, or at a scale near 100 no key
        # close to the query) is redone with the running max.
        bound = x.norm(dim=1) + (bias.max() if bias is not None and bias.numel() else 0.0)
        shift = (bound - _EXP_HEADROOM).clamp(min=0.0)
        z, o = _exp_pass(x, y, bias, blocks, buf, shift, want_o)
        in_range = (z > _MIN_SUM) & torch.isfinite(z)
        if rows.numel():
            in_range |= torch.bincount(rows, minlength=b) >= n           # every key masked: z = 0
        ok = in_range.all() if o is None else in_range.all() & torch.isfinite(o).all()
        if not bool(ok):                                                 # (one host sync)
            shift, z, o = _running_max_pass(x, y, bias, blocks, buf, want_o)
        lse = shift + z.log()
        p_y = torch.where(z[:, None] > 0, o / z[:, None], 0.0) if o is not None else None
        # The queue itself is kept only for its own gradient: with a detached queue, keys enqueued
        # between this forward and its backward change nothing (the gradient is of the keys used).
        ctx.save_for_backward(p_y, *((x, y, bias, lse) if ctx.needs_input_grad[1] else ()))
        ctx.blocks, ctx.chunk = blocks, chunk
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        p_y, *rest = ctx.saved_tensors
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = g[:, None] * p_y
        if ctx.needs_input_grad[1]:                                      # a queue that wants grad
            x, y, bias, lse = rest
            gy = torch.zeros_like(y)
            gx_rows = g[:, None] * x
            buf = x.new_empty(x.shape[0] * min(ctx.chunk, y.shape[0]))
            for c0, w, r, k in ctx.blocks:
                s = _block_logits(x, y, bias, buf, c0, w, r, k)
                p = s.sub_(lse[:, None]).exp_().nan_to_num_(nan=0.0)     # softmax; 0 on masked rows
                torch.mm(p.t(), gx_rows, out=gy[c0:c0 + w])
        return gx, gy, None, None, None, None


_EXP_HEADROOM = 60.0   # exp(60) * 196,800 keys stays far below fp32's max (3.4e38)
_MIN_SUM = 1e-20       # a row sum below this may have lost its terms to underflow: redo the row


def _exp_pass(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, blocks: list,
              buf: torch.Tensor, shift: torch.Tensor,
              want_o: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(z, o)``: ``z_i = sum_j exp(s_ij - shift_i)`` and, if ``want_o``,
    ``o_i = sum_j exp(s_ij - shift_i) y_j``, with a per-row shift fixed in advance
    (:class:`_QueueLogSumExp` checks that it kept the sums in range)."""
    b = x.shape[0]
    z = x.new_zeros(b)
    o = x.new_zeros(b, x.shape[1]) if want_o else None
    for c0, w, r, k in blocks:
        s = _block_logits(x, y, bias, buf, c0, w, r, k)
        if s.device.type != "cpu" or bool(shift.any()):  # (no host sync per block on a GPU)
            s.sub_(shift[:, None])
        s.exp_()
        z.add_(s.sum(dim=1))
        if o is not None:  # (not in-place addmm_, which torch.utils.flop_counter does not count)
            o = torch.addmm(o, s, y[c0:c0 + w])
    return z, o


def _running_max_pass(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, blocks: list,
                      buf: torch.Tensor,
                      want_o: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(top, z, o)`` as :func:`_exp_pass` with ``shift = top``, the row max, kept as a running max
    (each block's exps taken against it and the earlier sums rescaled): safe for any logits."""
    b = x.shape[0]
    top = x.new_full((b,), float("-inf"))
    z = x.new_zeros(b)
    o = x.new_zeros(b, x.shape[1]) if want_o else None
    for c0, w, r, k in blocks:
        s = _block_logits(x, y, bias, buf, c0, w, r, k)
        new = torch.maximum(top, torch.amax(s, dim=1))
        shift = torch.where(torch.isfinite(new), new, torch.zeros_like(new))  # all masked so far
        s.sub_(shift[:, None]).exp_()
        rescale = torch.exp(top - shift)
        z.mul_(rescale).add_(s.sum(dim=1))
        if o is not None:
            o = torch.addmm(o.mul_(rescale[:, None]), s, y[c0:c0 + w])
        top = new
    return top, z, o


def _blocks(n: int, chunk: int, rows: torch.Tensor, cols: torch.Tensor) -> list:
    """``(start, width, masked rows, masked cols - start)`` for each block of ``chunk`` queue keys."""
    nc = -(-n // chunk)
    bounds = [0] * (nc + 1)
    if rows.numel():
        cols, perm = torch.sort(cols)
        rows = rows[perm]
        bounds = torch.searchsorted(cols, torch.arange(nc + 1, device=cols.device) * chunk).tolist()
    return [(c * chunk, min(chunk, n - c * chunk), rows[bounds[c]:bounds[c + 1]],
             cols[bounds[c]:bounds[c + 1]] - c * chunk) for c in range(nc)]


def _block_logits(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, buf: torch.Tensor,
                  c0: int, w: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """One block's ``(B, w)`` logits ``x @ y_c^T + bias_c`` in ``buf``, masked pairs ``-inf``."""
    s = torch.mm(x, y[c0:c0 + w].t(), out=buf[:x.shape[0] * w].view(x.shape[0], w))
    if bias is not None:                                                 # per-key offset (logQ)
        s.add_(bias[c0:c0 + w])
    if rows.numel():
        s[rows, cols] = float("-inf")
    return s


class InfoNCELoss(nn.Module):
    """InfoNCE, Eq. 1: ``-log exp(q.k+ / tau) / sum_i exp(q.k_i / tau)`` over in-batch keys and a queue.

    Args:
        init_temperature: tau at the start; learnable (as ``log(1/tau)``, CLIP-style) unless
            ``learnable=False``.
        max_scale: upper bound on ``1/tau`` (CLIP clamps at 100).
        nested_dims: Matryoshka prefix sizes; the loss is the mean over prefixes, one term each
            (``contrastive_loss@64``, ...). Empty: one term ``contrastive_loss`` on the full vectors.
        name: the key of the returned term(s).
        chunk: queue keys per block of the queue term; any value gives the same loss, only the speed
            differs (fewer, larger blocks mean fewer small ops per step; ``benchmarks/pretrain_throughput.py``
            measures the step).

    ``forward(q, k, pos_index=None, queue=None, q_ids=None, k_ids=None, queue_ids=None,
    queue_valid=None)``:

    * ``q`` (B, D) queries; ``k`` (M, D) in-batch keys (M >= B, e.g. all ranks' keys);
    * ``pos_index`` (B,) the column of each query's positive in ``k`` (default ``arange(B)``);
    * ``queue`` (K, D) extra negatives (normally no gradient), ``queue_valid`` (K,) bool for filled
      slots;
      or ``queue`` a :class:`MomentumQueue` (its ids and filled slots are used, and its normalised
      prefixes and sorted ids are cached between enqueues: the fast path for training);
    * ``q_ids`` (B,), ``k_ids`` (M,), ``queue_ids`` (K,): item ids; a key with the positive's id
      other than the positive itself is masked out (the same item bought twice is no negative).
    * ``log_q`` (N,): the log-probability of each item id being drawn as a positive (its share of
      the training pairs); needs the ids. Every key's logit ``q.k / tau`` becomes ``q.k / tau -
      log_q[id]`` (sampling-bias correction, Yi et al., RecSys'19): in-batch and queue negatives are
      drawn by purchase frequency, so uncorrected, Eq. 1 learns ``p(item | query) / p(item)`` and
      pushes popular items away from every query; corrected, it learns ``p(item | query)``, which
      is what Acc@N over purchases rewards.

    All vectors are expected L2-normalised (prefixes are re-normalised here).

    The queue term never materialises the ``(B, M + K)`` logits: the loss is
    ``logaddexp(lse(in-batch logits), lse(queue logits)) - positive logit``, the queue's
    log-sum-exp computed by :class:`_QueueLogSumExp` with the same-id pairs found by binary search
    (:func:`same_id_pairs`); the value equals cross-entropy over the concatenated masked logits.
    """

    def __init__(self, init_temperature: float = 0.07, learnable: bool = True, max_scale: float = 100.0,
                 nested_dims: Sequence[int] = (), name: str = "contrastive_loss",
                 chunk: int = 16384) -> None:
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        scale = torch.tensor(math.log(1.0 / init_temperature))
        self.logit_scale = nn.Parameter(scale, requires_grad=learnable)
        self.max_log_scale = math.log(max_scale)
        self.nested_dims = tuple(int(d) for d in nested_dims)
        self.name = name
        self.chunk = int(chunk)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().clamp(max=self.max_log_scale).exp())

    def _one(self, q: torch.Tensor, k: torch.Tensor, pos_index: torch.Tensor,
             mask_k: torch.Tensor | None, queue: torch.Tensor | None,
             masked: tuple[torch.Tensor, torch.Tensor], k_bias: torch.Tensor | None = None,
             queue_bias: torch.Tensor | None = None) -> torch.Tensor:
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        # Scale before masking: a masked -inf times the scale would give a NaN gradient of tau.
        logits = (q @ k.t()) * scale                                     # (B, M)
        if k_bias is not None:
            logits = logits + k_bias[None, :]
        if mask_k is not None:
            logits = logits.masked_fill(mask_k, float("-inf"))
        if queue is None or not queue.shape[0]:
            return F.cross_entropy(logits, pos_index)
        # The queue's logits are scaled through q (B, d), never as a (B, K) product; masked
        # queue logits are -inf inside _QueueLogSumExp and never multiplied by the scale.
        lse_queue = _QueueLogSumExp.apply(q * scale, queue, *masked, self.chunk, queue_bias)  # (B,)
        lse = torch.logaddexp(torch.logsumexp(logits, dim=1), lse_queue)
        positive = logits.gather(1, pos_index[:, None]).squeeze(1)
        return (lse - positive).mean()

    def forward(self, q: torch.Tensor, k: torch.Tensor, pos_index: torch.Tensor | None = None,
                queue: torch.Tensor | MomentumQueue | None = None, q_ids: torch.Tensor | None = None,
                k_ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None,
                queue_valid: torch.Tensor | None = None,
                log_q: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if isinstance(queue, torch.Tensor):
            queue = queue.float()
        with full_precision(q):           # fp32 logits under a bf16 autocast (inputs cast here)
            return self._forward(q.float(), k.float(), pos_index, queue, q_ids, k_ids, queue_ids,
                                 queue_valid, log_q)

    def _forward(self, q: torch.Tensor, k: torch.Tensor, pos_index: torch.Tensor | None,
                 queue: torch.Tensor | MomentumQueue | None, q_ids: torch.Tensor | None,
                 k_ids: torch.Tensor | None, queue_ids: torch.Tensor | None,
                 queue_valid: torch.Tensor | None, log_q: torch.Tensor | None) -> dict[str, torch.Tensor]:
        b = q.shape[0]
        if log_q is not None and (q_ids is None or k_ids is None):
            raise ValueError("InfoNCELoss: log_q (the logQ correction) needs q_ids and k_ids")
        if pos_index is None:
            pos_index = torch.arange(b, device=q.device)
        mask_k = None
        if q_ids is not None and k_ids is not None:
            mask_k = q_ids[:, None] == k_ids[None, :]                    # (B, M) same item
            mask_k[torch.arange(b, device=q.device), pos_index] = False  # ... but not the positive
        dims: tuple[int | None, ...] = self.nested_dims or (None,)
        view = None
        if isinstance(queue, MomentumQueue):
            if queue_ids is not None or queue_valid is not None:
                raise ValueError("InfoNCELoss: queue_ids/queue_valid come from the MomentumQueue; "
                                 "pass them only with a plain queue tensor")
            view = queue.view(dims, with_ids=q_ids is not None)
        elif queue is not None:
            view = queue_view(queue, queue_valid, queue_ids if q_ids is not None else None, dims)
        none = torch.zeros(0, dtype=torch.long, device=q.device)
        masked = (none, none)
        if view is not None and view.sorted_ids is not None and q_ids is not None:
            masked = same_id_pairs(q_ids, view.sorted_ids, view.order)
        k_bias = queue_bias = None
        if log_q is not None:
            k_bias = -log_q[k_ids]                                       # (M,)
            if view is not None:
                if view.sorted_ids is None:
                    raise ValueError("InfoNCELoss: log_q with a queue needs the queue's item ids")
                slot_ids = torch.empty_like(view.sorted_ids).index_copy_(0, view.order, view.sorted_ids)
                queue_bias = -log_q[slot_ids]                            # (n,) filled slots
        if not self.nested_dims:
            qu = view.keys[None] if view is not None else None
            return {self.name: self._one(q, k, pos_index, mask_k, qu, masked, k_bias, queue_bias)}
        w = 1.0 / len(self.nested_dims)
        out = {}
        for d in self.nested_dims:
            qd, kd = nested_normalize(q, d), nested_normalize(k, d)
            qu = view.keys[d] if view is not None else None
            out[f"{self.name}@{d}"] = w * self._one(qd, kd, pos_index, mask_k, qu, masked, k_bias,
                                                    queue_bias)
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
        q, pos, neg = q.float(), pos.float(), neg.float()           # fp32 under a bf16 autocast
        total = q.new_zeros(())
        for d in dims:
            qd, pd, nd = nested_normalize(q, d), nested_normalize(pos, d), nested_normalize(neg, d)
            gap = F.relu(self.margin - (qd * pd).sum(-1) + (qd * nd).sum(-1))   # (B,)
            if valid is not None:
                gap = gap * valid.to(gap.dtype)
                denom = valid.sum().clamp_min(1).to(gap.dtype)
            else:
                denom = torch.tensor(float(gap.shape[0]), dtype=gap.dtype, device=gap.device)
            total = total + gap.sum() / denom
        return {"triplet_loss": self.weight * total / len(dims)}


class MomentumQueue(nn.Module):
    """MoCo's memory bank: a FIFO of the last K keys (and their item ids), K up to 196,800.

    Buffers: ``keys`` (K, D), ``ids`` (K,) int64, ``valid`` (K,) bool, ``ptr`` () int64. Enqueue the
    keys of *all* ranks (gathered in rank order) so every rank holds the same queue.

    Pass the queue itself to :class:`InfoNCELoss` (``queue=the_queue``): :meth:`view` keeps the
    normalised nested prefixes of the keys (updated for the enqueued rows only) and the sorted ids
    between enqueues, so a step does not redo that O(K D) work for every nested dim (memory: one
    (K, d) tensor per nested dim, 352 MB at K=196,800 with 64/128/256). The caches are not state
    (not in ``state_dict``); any change to the buffers made other than by :meth:`enqueue`
    (``load_state_dict``, ``.to()``, in-place edits) is detected by their version counters and the
    caches are rebuilt. Enqueue after the backward of a loss that used the queue (as MoCo's trainer
    here does): the loss keeps the cached keys for its backward, and autograd refuses (an in-place
    modification error) a backward after they were overwritten.

    Example::

        >>> import torch
        >>> q = MomentumQueue(dim=4, size=3)
        >>> q.enqueue(torch.eye(4)[:2], torch.tensor([7, 8]))
        >>> int(q.valid.sum()), q.ids.tolist()
        (2, [7, 8, -1])
        >>> v = q.view((2,))
        >>> v.keys[2].shape, v.sorted_ids.tolist()
        (torch.Size([2, 2]), [7, 8])
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
        self._clear_cache()

    def _clear_cache(self) -> None:
        self._prefixes: dict[int, torch.Tensor] = {}   # d -> (K, d) normalised prefixes of all slots
        self._sorted: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fill: tuple[int, torch.Tensor | None] | None = None
        self._stamp: tuple[int, ...] | None = self._state_stamp()

    def _state_stamp(self) -> tuple[int, ...]:
        """Identity and version counter of each buffer: changes with any in-place write or move."""
        return tuple(x for t in (self.keys, self.ids, self.valid)
                     for x in (t.data_ptr(), t._version))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, ids: torch.Tensor) -> None:
        """Write ``keys`` (N, D) and ``ids`` (N,) over the oldest slots."""
        n = keys.shape[0]
        if n >= self.size:
            keys, ids, n = keys[-self.size:], ids[-self.size:], self.size
        cached = self._stamp == self._state_stamp()
        p = int(self.ptr)
        idx = (torch.arange(n, device=self.keys.device) + p) % self.size
        self.keys[idx] = keys.detach().to(self.keys.dtype)
        self.ids[idx] = ids.to(torch.long)
        self.valid[idx] = True
        self.ptr.fill_((p + n) % self.size)
        if not cached:
            self._clear_cache()
            return
        new = self.keys[idx]
        for d, t in self._prefixes.items():                  # only the N new rows are normalised
            t[idx] = nested_normalize(new, d)
        self._sorted, self._fill = None, None
        self._stamp = self._state_stamp()

    @torch.no_grad()
    def view(self, dims: Sequence[int | None] = (None,), with_ids: bool = True) -> QueueView:
        """The filled slots as a :class:`QueueView`: normalised ``d``-prefixes for each ``d`` in
        ``dims`` (``None``: the raw keys), and the ids sorted (if ``with_ids``). Cached."""
        if self._stamp != self._state_stamp():
            self._clear_cache()
        if self._fill is None:
            self._fill = _filled(self.valid, self.size)
        n, rows = self._fill
        out = {}
        for d in dims:
            if d is None:
                full = self.keys
            else:
                if d not in self._prefixes:
                    self._prefixes[d] = nested_normalize(self.keys, d)
                full = self._prefixes[d]
            out[d] = full[:n] if rows is None else full[rows]
        if not with_ids:
            return QueueView(out, None, None)
        if self._sorted is None:
            self._sorted = torch.sort(self.ids[:n] if rows is None else self.ids[rows])
        return QueueView(out, *self._sorted)


@torch.no_grad()
def momentum_update(online: nn.Module, momentum: nn.Module, m: float) -> None:
    """MoCo's key encoder: ``theta_k <- m * theta_k + (1 - m) * theta_q`` (buffers copied)."""
    pm = list(momentum.parameters())
    if pm:  # one fused kernel per op on CUDA (the same per-tensor mul and add on the CPU)
        po = [p.detach() for p in online.parameters()]
        torch._foreach_mul_(pm, m)
        torch._foreach_add_(pm, po, alpha=1.0 - m)
    for bo, bm in zip(online.buffers(), momentum.buffers()):
        bm.copy_(bo)


class AlignmentLoss(nn.Module):
    """MOON2.0's item-level alignment: InfoNCE of each product's image against its own title, in batch.

    ``forward(img, title, ids=None, present=None)``: ``img``, ``title`` (B, D) unit vectors of the same
    B items; ``ids`` (B,) item ids (a second copy of an item in the batch is no negative);
    ``present`` (B,) bool, the items with both a photo and a title (only they are anchors and keys).
    Returns ``{name: weight * InfoNCE(img -> title)}`` with its own learnable temperature; an empty
    selection gives 0.

    Example::

        >>> x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
        >>> sorted(AlignmentLoss(weight=0.5)(x, x))
        ['align_loss']
    """

    def __init__(self, weight: float = 0.5, init_temperature: float = 0.07,
                 name: str = "align_loss") -> None:
        super().__init__()
        self.weight = float(weight)
        self.name = name
        self.nce = InfoNCELoss(init_temperature, name=name)

    def forward(self, img: torch.Tensor, title: torch.Tensor, ids: torch.Tensor | None = None,
                present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if present is not None:
            keep = torch.nonzero(present.bool()).squeeze(1)
            img, title = img[keep], title[keep]
            ids = ids[keep] if ids is not None else None
        if img.shape[0] < 2:
            return {self.name: img.new_zeros(())}
        term = self.nce(img, title, q_ids=ids, k_ids=ids)[self.name]
        return {self.name: self.weight * term}


class ClickVisualLoss(nn.Module):
    """Click-supervised contrastive visual encoding with an unbiased self-supervised term (issue 22).

    Two InfoNCE terms on the image tower's unit vectors, each over in-batch negatives with its own
    learnable temperature:

    * ``click_visual_loss`` = ``click_weight`` * InfoNCE(photo of a clicked item -> photo of the item
      the same user clicked next): the click data's supervision (fine-grained: what users treat as
      alike). A key showing the anchor's own item, or the positive's item again, is no negative.
    * ``view_ssl_loss`` = ``view_weight`` * InfoNCE(view x -> view y of the same photo): the
      unbiased term (items drawn uniformly from the catalog, not by exposure). A key of the same
      item is no negative.

    ``forward(first, second, view_a, view_b, ...)`` returns both terms; :meth:`click_term` and
    :meth:`view_term` compute one each (the trainer gathers keys across ranks between them).

    Args:
        click_weight, view_weight: the terms' weights.
        init_temperature: tau at the start (learnable, as ``log(1/tau)``, clamped at 1/100).

    Example::

        >>> x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
        >>> sorted(ClickVisualLoss()(x, x, x, x))
        ['click_visual_loss', 'view_ssl_loss']
    """

    CLICK, VIEW = "click_visual_loss", "view_ssl_loss"

    def __init__(self, click_weight: float = 0.5, view_weight: float = 0.5,
                 init_temperature: float = 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        self.click_weight, self.view_weight = float(click_weight), float(view_weight)
        init = torch.tensor(math.log(1.0 / init_temperature))
        self.click_scale = nn.Parameter(init.clone())
        self.view_scale = nn.Parameter(init.clone())
        self.max_log_scale = math.log(max_scale)

    def _nce(self, q: torch.Tensor, k: torch.Tensor, pos_index: torch.Tensor,
             not_negative: torch.Tensor | None, log_scale: torch.Tensor) -> torch.Tensor:
        """Eq. 1 over in-batch keys: ``q`` (B, D), ``k`` (M, D), ``pos_index`` (B,), ``not_negative``
        (B, M) bool keys masked out (the positive itself never is)."""
        with full_precision(q):                                     # fp32 logits under autocast
            logits = (q.float() @ k.float().t()) * log_scale.clamp(max=self.max_log_scale).exp()
            if not_negative is not None:
                drop = not_negative.clone()
                drop[torch.arange(q.shape[0], device=q.device), pos_index] = False
                logits = logits.masked_fill(drop, float("-inf"))
            return F.cross_entropy(logits, pos_index)

    def click_term(self, first: torch.Tensor, second: torch.Tensor, pos_index: torch.Tensor | None = None,
                   first_ids: torch.Tensor | None = None, second_ids: torch.Tensor | None = None,
                   key_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``first`` (B, D) anchors, ``second`` (M, D) keys (all ranks'); ``pos_index`` (B,) each
        anchor's next click in ``second``; ``first_ids``, ``second_ids`` (B,) the anchors' and their
        positives' items, ``key_ids`` (M,) the keys' items."""
        b = first.shape[0]
        if b == 0:
            return {self.CLICK: first.new_zeros(())}
        if pos_index is None:
            pos_index = torch.arange(b, device=first.device)
        mask = None
        if key_ids is not None and second_ids is not None:
            mask = second_ids[:, None] == key_ids[None, :]
            if first_ids is not None:
                mask |= first_ids[:, None] == key_ids[None, :]
        return {self.CLICK: self.click_weight * self._nce(first, second, pos_index, mask, self.click_scale)}

    def view_term(self, view_a: torch.Tensor, view_b: torch.Tensor, pos_index: torch.Tensor | None = None,
                  ids: torch.Tensor | None = None, key_ids: torch.Tensor | None = None
                  ) -> dict[str, torch.Tensor]:
        """``view_a`` (B, D) one view of B photos, ``view_b`` (M, D) another view (all ranks');
        ``ids`` (B,), ``key_ids`` (M,) their items."""
        b = view_a.shape[0]
        if b == 0:
            return {self.VIEW: view_a.new_zeros(())}
        if pos_index is None:
            pos_index = torch.arange(b, device=view_a.device)
        mask = None if ids is None or key_ids is None else ids[:, None] == key_ids[None, :]
        return {self.VIEW: self.view_weight * self._nce(view_a, view_b, pos_index, mask, self.view_scale)}

    def forward(self, first: torch.Tensor, second: torch.Tensor, view_a: torch.Tensor,
                view_b: torch.Tensor, first_ids: torch.Tensor | None = None,
                second_ids: torch.Tensor | None = None, view_ids: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """Both terms, in one process (keys = this batch)."""
        return {**self.click_term(first, second, None, first_ids, second_ids, second_ids),
                **self.view_term(view_a, view_b, None, view_ids, view_ids)}
