"""Request -> model batch: the rows of one or many /v1/rank requests as one CTR batch.

The rows go through the same code as the Parquet path: :func:`mmrank.ctr.scoring.samples_from_rows`
builds the :class:`~mmrank.ctr.data.CtrSamples` that :func:`~mmrank.ctr.data.load_samples` would read,
then :meth:`FeatureSpace.encode` and :func:`~mmrank.ctr.data.make_batch` (tested: identical logits).

What differs from training is where representations come from: instead of the run's whole table
loaded once, each batch carries the vectors of its own items (candidates and history), read from the
serving store at request time, so an item ingested a moment ago (on this process or another) is
scored from its content even though the ID model has never seen it.

On a device (``bundle.device``, CUDA): the batch, the vector table and the codes are assembled in
host memory (NumPy) and moved there at the end (pinned, non-blocking: :func:`mmrank.device.batch_to`);
``Built.vec_rows`` (the explanations' copy) stays on the host.

Example::

    >>> q = RankQuery(user_id=7, history=None, region=None, query=None,
    ...               candidates=np.array([3, 5, 8]))                         # doctest: +SKIP
    >>> built = build([q], bundle)                                          # doctest: +SKIP
    >>> logits = score(bundle.model, built.batch, built.vectors)            # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmrank.ctr.data import OOV
from mmrank.ctr.scoring import batch_of, encode_for_scoring, samples_from_rows
from mmrank.device import batch_to
from mmrank.vectors import l2_normalise

SERVE_POSITION = 0  # the slot candidates are scored for (the top one), as logged positions start at 0


@dataclass
class RankQuery:
    """One ranking request, parsed.

    ``history`` (item ids, most recent last) overrides the logs' history of ``user_id``; ``region``
    None means the user's last logged region (0 for an unknown user). ``positions`` (C,) optional:
    the slot of each candidate (default :data:`SERVE_POSITION`).
    """

    user_id: int | None
    history: np.ndarray | None
    region: int | None
    query: str | None
    candidates: np.ndarray
    positions: np.ndarray | None = None


@dataclass
class QueryRows:
    """Where one query's rows are in the merged batch, and what was left out."""

    start: int
    scored: np.ndarray       # (S,) candidate ids in the table, request order
    unknown: np.ndarray      # (U,) candidate ids the table does not know (not scored, reported)
    id_known: np.ndarray     # (S,) bool: the ID model knows the item (else: scored from content)
    user_known: bool         # the user is in the logs / the ID model's user vocabulary
    history: np.ndarray      # (L,) history used (last history_len)
    region: int

    @property
    def stop(self) -> int:
        return self.start + len(self.scored)


@dataclass
class Built:
    batch: dict[str, torch.Tensor]
    vectors: torch.Tensor | None     # (V, D) rows indexed by batch item_v / hist_item_v
    vec_ids: np.ndarray              # (V - 2,) ids of rows 2.. of ``vectors``
    vec_rows: np.ndarray             # the same rows as NumPy (for explanations)
    queries: list[QueryRows]
    codes: torch.Tensor | None = None  # (V, L) semantic IDs (code + 1) of the same rows (sid strategies)


def build(queries: list[RankQuery], bundle) -> Built:  # noqa: ANN001 (Bundle: avoid an import cycle)
    """Rows of every query -> one batch plus its vector table (see module docstring)."""
    store, space, history_len = bundle.store, bundle.space, bundle.history_len
    hists = []
    for q in queries:
        if q.history is not None:
            h = np.asarray(q.history, np.int64)
        elif q.user_id is not None:
            h = bundle.users.history(q.user_id)
        else:
            h = np.zeros(0, np.int64)
        hists.append(h[-history_len:])
    all_ids = np.unique(np.concatenate([np.asarray(q.candidates, np.int64) for q in queries] + hists))
    vecs, found = store.vectors(all_ids)
    known_ids = all_ids[found]
    cats, _ = store.meta(all_ids)

    def cat_of(ids: np.ndarray) -> np.ndarray:
        return cats[np.searchsorted(all_ids, ids)] if len(ids) else np.zeros(0, np.int32)

    out_rows: list[QueryRows] = []
    cols: dict[str, list] = {k: [] for k in ("user_id", "item_id", "category_id", "region", "position",
                                             "hist_item_ids", "hist_category_ids")}
    start = 0
    for q, h in zip(queries, hists):
        cand = np.asarray(q.candidates, np.int64)
        ok = found[np.searchsorted(all_ids, cand)]
        scored, unknown = cand[ok], cand[~ok]
        uid = -1 if q.user_id is None else int(q.user_id)
        region = q.region if q.region is not None else (bundle.users.region(uid) if uid >= 0 else None)
        region = int(region or 0)
        pos = (np.full(len(scored), SERVE_POSITION, np.int64) if q.positions is None
               else np.asarray(q.positions, np.int64)[ok])
        n = len(scored)
        cols["user_id"].append(np.full(n, uid, np.int64))
        cols["item_id"].append(scored)
        cols["category_id"].append(cat_of(scored))
        cols["region"].append(np.full(n, region, np.int64))
        cols["position"].append(pos)
        hc = cat_of(h)
        cols["hist_item_ids"] += [h] * n
        cols["hist_category_ids"] += [hc] * n
        out_rows.append(QueryRows(start=start, scored=scored, unknown=unknown,
                                  id_known=space.items.lookup(scored) != OOV,
                                  user_known=uid >= 0 and (uid in bundle.users
                                                           or bool(space.users.lookup(np.array([uid]))[0] != OOV)),
                                  history=h, region=region))
        start += n
    cat = {k: (np.concatenate(v) if k not in ("hist_item_ids", "hist_category_ids") else v)
           for k, v in cols.items()}
    samples = samples_from_rows(**cat, history_len=history_len)
    vec_rows = l2_normalise(vecs[found]) if len(known_ids) else np.zeros((0, store.dim), np.float32)
    uses_vectors = bundle.model.cfg.uses_vectors
    enc = encode_for_scoring(space, samples, known_ids if uses_vectors else None)
    batch = batch_of(enc, history_len)
    vectors = None
    if uses_vectors:
        table = np.zeros((len(known_ids) + 2, store.dim), np.float32)
        table[2:] = vec_rows
        vectors = torch.from_numpy(table)
    codes = None
    if getattr(bundle, "sid", None) is not None and bundle.model.cfg.uses_sid:
        # the catalog's codes, or codes assigned now from the stored codebooks (an item ingested a
        # moment ago): the same rows as the vectors
        rows = np.zeros((len(known_ids) + 2, bundle.sid.levels), np.int64)
        if len(known_ids):
            rows[2:] = bundle.sid.codes_for(known_ids, vec_rows) + 1
        codes = torch.from_numpy(rows)
    device = getattr(bundle, "device", None)
    if device is not None and device.type != "cpu":
        pin = getattr(bundle, "pin_memory", True)
        batch, vectors, codes = (batch_to(x, device, pin) for x in (batch, vectors, codes))
    return Built(batch=batch, vectors=vectors, vec_ids=known_ids, vec_rows=vec_rows, queries=out_rows,
                 codes=codes)


def simtier_histograms(built: Built, q: QueryRows, n_tiers: int) -> np.ndarray:
    """``(S, n_tiers)`` SimTier counts (Eq. 2, Algorithm 1) of each scored candidate against the
    query's history (history items without a vector are left out, as in the model)."""
    from mmrank.models.layers import SimTier

    def rows(ids: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(built.vec_ids, ids), max(len(built.vec_ids) - 1, 0))
        ok = built.vec_ids[pos] == ids if len(built.vec_ids) else np.zeros(len(ids), bool)
        return built.vec_rows[pos[ok]] if ok.any() else np.zeros((0, built.vec_rows.shape[1]), np.float32)

    target, hist = rows(q.scored), rows(q.history)
    if len(hist) == 0 or len(target) == 0:
        return np.zeros((len(q.scored), n_tiers), np.int64)
    t = torch.from_numpy(target)
    h = torch.from_numpy(hist).unsqueeze(0).expand(len(target), -1, -1)
    mask = torch.ones(h.shape[:2], dtype=torch.bool)
    return SimTier(n_tiers)(t, h, mask).round().to(torch.int64).numpy()
