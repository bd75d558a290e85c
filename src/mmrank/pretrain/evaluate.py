"""Acc@N of Eq. 6 on the test pairs, for image and text queries, at the full and each nested dimension.

For each query modality, D = the test pairs with that modality and S = the set of their positives
(the paper's test set is one modality at a time). Scores are dot products of L2-normalised vectors;
``mmrank.eval.acc_at_n`` counts the hits (exact search over all of S; a test cross-checks it against
a FAISS ``IndexFlatIP``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmrank.eval.metrics import expected_hits
from mmrank.pretrain.data import IMAGE, TEXT, Features, PairTable
from mmrank.vectors import l2_normalise

MODALITIES = (("image", IMAGE), ("text", TEXT))


@torch.no_grad()
def _batched(fn, x: torch.Tensor, bs: int = 1024) -> torch.Tensor:
    return torch.cat([fn(x[a:a + bs]) for a in range(0, x.shape[0], bs)]) if x.shape[0] else x


@torch.no_grad()
def test_vectors(model: torch.nn.Module, feats: Features, pairs: PairTable,
                 modality: int) -> tuple[np.ndarray, np.ndarray]:
    """``(D, dim)`` query vectors and ``(D, dim)`` positive item vectors of one modality's test pairs."""
    rows = np.flatnonzero(pairs.test & (pairs.modality == modality))
    if modality == TEXT:
        q = _batched(model.text_query, feats.text_q[feats.qrow[rows]])
    else:
        q = _batched(model.image_query, feats.image_q[feats.qrow[rows]])
    uniq, inv = np.unique(pairs.pos[rows], return_inverse=True)
    items = _batched(lambda i: model.item(feats.item_img[i], feats.item_txt[i]),
                     torch.from_numpy(uniq))
    return q.numpy(), items.numpy()[inv.reshape(-1)]


def evaluate(model: torch.nn.Module, feats: Features, pairs: PairTable,
             nested_dims: Sequence[int] = (), ns: Sequence[int] = (1, 5)) -> dict:
    """``{"acc@1": {"image": x, "text": y}, "acc@5": {...}, "n_test": {...}, "nested": {d: {...}}}``.

    A modality with no test pairs gets ``None``.
    """
    from mmrank.eval import acc_at_n

    was = model.training
    model.eval()
    out: dict = {f"acc@{n}": {} for n in ns}
    out["n_test"] = {}
    nested: dict[str, dict] = {}
    full = getattr(model, "dim", None)
    dims = [d for d in nested_dims if full is None or d < full]
    for name, m in MODALITIES:
        q, p = test_vectors(model, feats, pairs, m)
        out["n_test"][name] = int(q.shape[0])
        if q.shape[0] == 0:
            for n in ns:
                out[f"acc@{n}"][name] = None
            continue
        acc = acc_at_n(q, p, list(ns))
        for n in ns:
            out[f"acc@{n}"][name] = float(acc[n])
        for d in dims:
            acc_d = acc_at_n(l2_normalise(q[:, :d]), l2_normalise(p[:, :d]), list(ns))
            slot = nested.setdefault(str(d), {f"acc@{n}": {} for n in ns})
            for n in ns:
                slot[f"acc@{n}"][name] = float(acc_d[n])
    if nested:
        out["nested"] = nested
    model.train(was)
    return out


def popularity(pairs: PairTable, ns: Sequence[int] = (1, 5)) -> dict:
    """Acc@N of the popularity-only reference: every query ranks S by training purchases.

    The same list for every query, scored like :func:`evaluate`: items with equal purchase counts are
    tied, and a tie is broken uniformly at random (the expected hit, :func:`mmrank.eval.metrics.expected_hits`),
    so the many items bought equally often neither help nor hurt the row.
    """
    out: dict = {f"acc@{n}": {} for n in ns}
    out["n_test"] = {}
    train_counts = np.bincount(pairs.pos[~pairs.test], minlength=int(pairs.pos.max(initial=0)) + 1)
    for name, m in MODALITIES:
        rows = np.flatnonzero(pairs.test & (pairs.modality == m))
        out["n_test"][name] = int(len(rows))
        s_counts = np.sort(train_counts[np.unique(pairs.pos[rows])])
        c = train_counts[pairs.pos[rows]]
        better = len(s_counts) - np.searchsorted(s_counts, c, side="right")
        tied = np.searchsorted(s_counts, c, side="right") - np.searchsorted(s_counts, c, side="left") - 1
        for n in ns:
            out[f"acc@{n}"][name] = float(expected_hits(better, tied, n).mean()) if len(rows) else None
    return out
