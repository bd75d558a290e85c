"""The generator-evaluator mode (ARMMT's Sequence Generator + Sequence Evaluator): a generator proposes
lists by beam search, a list-aware evaluator scores whole lists.

For each request:

1. the generator scores every retrieved candidate (the model on the whole candidate set) and keeps a
   pool of the best ``n_shown + extra``;
2. beam search fills the ``n_shown`` slots one at a time: every beam is extended by each of its
   ``width`` best remaining pool candidates (by the generator), and every extended list is scored by the
   **evaluator**: the model run on that list alone (its list encoder sees exactly those candidates), the
   list's value being the sum over its candidates of the predicted purchase probability (or purchase
   probability x price for ``objective="gmv"``). The ``width`` best distinct lists survive;
3. the best list is shown ordered by the evaluator's per-candidate score, then the rest by the
   generator's score.

Example::

    >>> orders = beam_orders(model, data, data.lists.test_rows()[:100], width=3)   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

from mmrank.device import model_device
from mmrank.device import autocast
from mmrank.rerank.models import ListModel
from mmrank.rerank.trainer import RerankData, batch_for, predict


@torch.no_grad()
def _evaluate(model: ListModel, data: RerankData, rows: np.ndarray, lists: list[np.ndarray], objective: str,
              chunk: int = 512, bf16: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """Value of each list and its per-candidate scores (probability, times price for 'gmv'), on the
    model's device."""
    dev = model_device(model)
    values, per = np.zeros(len(lists)), []
    for a in range(0, len(lists), chunk):
        sub = lists[a:a + chunk]
        with autocast(dev, bf16):
            out = model(batch_for(data, rows[a:a + chunk], cand=sub, device=dev))
        p = torch.sigmoid(model.rank_scores(out).float()).double().cpu().numpy()
        for k, c in enumerate(sub):
            s = p[k, :len(c)]
            if objective == "gmv":
                s = s * data.lists.price[c]
            values[a + k] = s.sum()
            per.append(s)
    return values, per


@torch.no_grad()
def beam_orders(model: ListModel, data: RerankData, rows: np.ndarray, *, width: int = 3, extra: int = 6,
                objective: str = "purchases", bf16: bool = True) -> list[np.ndarray]:
    """One order (flat candidate indices, every retrieved candidate) per request of ``rows``; on the
    model's device (bf16 autocast on CUDA when ``bf16``)."""
    if objective not in ("purchases", "gmv"):
        raise ValueError(f"objective: expected 'purchases' or 'gmv', got {objective!r}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    model.eval()
    rows = np.asarray(rows)
    cands, scores = predict(model, data, rows, "all", bf16=bf16)
    gen = scores["rank"]
    n_shown = [int((data.lists.position[c] >= 0).sum()) for c in cands]
    pools = [c[np.argsort(-g, kind="stable")[: n + extra]] for c, g, n in zip(cands, gen, n_shown)]
    gscore = [dict(zip(c.tolist(), g.tolist())) for c, g in zip(cands, gen)]
    beams: list[list[tuple[list[int], float]]] = [[([], 0.0)] for _ in rows]
    for step in range(max(n_shown, default=0)):
        exp_rows, exp_lists, owner = [], [], []
        for i, r in enumerate(rows):
            if step >= n_shown[i]:
                continue
            seen: set[frozenset] = set()
            for chosen, _ in beams[i]:
                rest = [x for x in pools[i].tolist() if x not in chosen][:width]
                for x in rest:
                    key = frozenset(chosen + [x])
                    if key in seen:
                        continue
                    seen.add(key)
                    exp_rows.append(r)
                    exp_lists.append(np.array(chosen + [x], np.int64))
                    owner.append(i)
        if not exp_lists:
            break
        values, _ = _evaluate(model, data, np.array(exp_rows), exp_lists, objective, bf16=bf16)
        grouped: dict[int, list[tuple[list[int], float]]] = {}
        for i, lst, v in zip(owner, exp_lists, values):
            grouped.setdefault(i, []).append((lst.tolist(), float(v)))
        for i, cand_beams in grouped.items():
            cand_beams.sort(key=lambda t: -t[1])
            beams[i] = cand_beams[:width]
    best = [b[0][0] for b in beams]
    _, per = _evaluate(model, data, rows, [np.array(b, np.int64) for b in best], objective, bf16=bf16)
    orders = []
    for c, b, s, gs in zip(cands, best, per, gscore):
        shown = np.array(b, np.int64)[np.argsort(-s, kind="stable")]
        rest = [x for x in sorted(c.tolist(), key=lambda x: -gs[x]) if x not in set(b)]
        orders.append(np.concatenate([shown, np.array(rest, np.int64)]))
    return orders


__all__ = ["beam_orders"]
