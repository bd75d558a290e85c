"""Lazy Adam for embedding tables with sparse gradients.

Only the rows a batch touched are updated (their moments and their weights), as in TensorFlow's
LazyAdam and :class:`torch.optim.SparseAdam`, whose updates this reproduces exactly (tested against it).
SparseAdam builds several sparse tensors per step (``coalesce``, ``sparse_mask``, sparse adds); here the
gradient rows are summed per unique id with one ``index_add_`` and the moments are gathered/scattered
with ``index_select``/``index_copy_``, in less time per step (``benchmarks/ctr_throughput.py`` measures
the whole model against DeepCTR-Torch).

Example::

    >>> import torch
    >>> emb = torch.nn.Embedding(10, 4, sparse=True)
    >>> opt = LazyAdam(emb.parameters(), lr=0.1)
    >>> emb(torch.tensor([1, 1, 3])).sum().backward()
    >>> before = emb.weight.detach().clone()
    >>> opt.step()
    >>> (emb.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    [1, 3]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LazyAdam(torch.optim.Optimizer):
    """Adam on the rows present in each (sparse, uncoalesced) gradient; other rows keep their moments.

    Args:
        params: parameters whose gradients are sparse (``nn.Embedding(..., sparse=True)``).
        lr, betas, eps: as :class:`torch.optim.Adam` (no weight decay, as SparseAdam).

    The step count is per parameter (bias correction as SparseAdam).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise RuntimeError("LazyAdam expects sparse gradients (nn.Embedding(..., sparse=True)); "
                                       "use torch.optim.Adam for dense parameters")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                ids = grad._indices()[0]
                values = grad._values().reshape(ids.shape[0], -1)
                uniq, inverse = torch.unique(ids, return_inverse=True)          # (U,), (nnz,)
                g = values.new_zeros(uniq.shape[0], values.shape[1]).index_add_(0, inverse, values)
                flat_m = state["exp_avg"].view(p.shape[0], -1)
                flat_v = state["exp_avg_sq"].view(p.shape[0], -1)
                m = flat_m.index_select(0, uniq).mul_(b1).add_(g, alpha=1 - b1)
                v = flat_v.index_select(0, uniq).mul_(b2).addcmul_(g, g, value=1 - b2)
                flat_m.index_copy_(0, uniq, m)
                flat_v.index_copy_(0, uniq, v)
                t = state["step"]                                               # as SparseAdam:
                step_size = group["lr"] * (1 - b2 ** t) ** 0.5 / (1 - b1 ** t)
                denom = v.sqrt_().add_(group["eps"])
                flat_p = p.view(p.shape[0], -1)        # distinct rows: gathered, updated, copied back
                rows = flat_p.index_select(0, uniq).add_(m.div_(denom), alpha=-step_size)
                flat_p.index_copy_(0, uniq, rows)      # (cheaper than index_add_ with an alpha)
        return loss
