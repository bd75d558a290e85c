"""Scoring one batch of /v1/rank requests on a forward thread: build one CTR batch from every query,
run one forward, split the results per query (and re-rank each when the bundle has a re-ranker).

The forward runs on the bundle's device (its batch moved there by :func:`mmrank.serve.builder.build`),
under bf16 autocast on CUDA when the bundle says so; the logits come back to the host as float32."""

from __future__ import annotations

import numpy as np

from mmrank.serve.builder import RankQuery, build, simtier_histograms
from mmrank.serve.bundle import Bundle, RerankInput


def run_batch(bundle: Bundle, queries: list[RankQuery], explain: list[bool], worker: int = 0) -> list[dict]:
    """Build one batch from every query, run one forward (with forward thread ``worker``'s model),
    split the results per query."""
    built = build(queries, bundle)
    n_rows = sum(len(q.scored) for q in built.queries)
    logits = forward(bundle, built, worker) if n_rows else np.zeros(0, np.float32)
    out = []
    for q, rows, ex in zip(queries, built.queries, explain):
        lg = logits[rows.start:rows.stop].astype(np.float64)
        prob = 1.0 / (1.0 + np.exp(-lg))
        order = np.argsort(-lg, kind="stable")
        titles = bundle.store.meta(rows.scored)[1] if ex else None
        hist = simtier_histograms(built, rows, bundle.n_tiers) if ex else None
        items = [{"item_id": int(rows.scored[i]), "rank": r, "score": float(prob[i]), "logit": float(lg[i]),
                  "id_known": bool(rows.id_known[i]),
                  "title": titles[i] if titles is not None else None,
                  "simtier": hist[i].tolist() if hist is not None else None}
                 for r, i in enumerate(order)]
        res = {"bundle": bundle.id, "strategy": bundle.strategy, "encoder_version": bundle.encoder_version,
               "user_known": rows.user_known, "history_length": int(len(rows.history)),
               "region": rows.region, "items": items,
               "unknown": [{"item_id": int(i), "reason": "not in the embedding table "
                            f"(encoder version {bundle.encoder_version})"} for i in rows.unknown],
               "reranked": None, "rerank_status": bundle.rerank_status}
        if bundle.reranker is not None and len(order):
            res["reranked"] = _rerank(bundle, built, q, rows, order, prob)
        out.append(res)
    return out


def forward(bundle: Bundle, built, worker: int = 0) -> np.ndarray:  # noqa: ANN001 (Built)
    """One forward of ``built`` with forward thread ``worker``'s model, on the bundle's device (bf16
    autocast on CUDA when the bundle's ``bf16``): ``(rows,)`` float32 logits in host memory."""
    from mmrank.ctr.scoring import score

    return score(bundle.model_for(worker), built.batch, built.vectors, built.codes,
                 bf16=bundle.bf16).numpy()


def _rerank(bundle: Bundle, built, q: RankQuery, rows, order: np.ndarray, prob: np.ndarray) -> list[dict]:
    def vec(ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(built.vec_ids, ids)
        ok = (pos < len(built.vec_ids)) & (built.vec_ids[np.minimum(pos, len(built.vec_ids) - 1)] == ids)
        return built.vec_rows[pos[ok]]

    ids = rows.scored[order]
    cats, _ = bundle.store.meta(ids)
    inp = RerankInput(item_ids=ids, ctr_scores=prob[order].astype(np.float32), item_vectors=vec(ids),
                      category_ids=cats, hist_item_ids=rows.history, hist_vectors=vec(rows.history),
                      user_id=q.user_id, region=rows.region, query=q.query)
    r = bundle.reranker.rerank(inp)
    w = r.modality_weights
    return [{"item_id": int(ids[i]), "rank": k, "score": float(r.scores[i]),
             "modality_weights": w[i] if w is not None else None} for k, i in enumerate(r.order)]


def run_rerank_batch(bundle: Bundle, lists: list, explain: list[bool], worker: int = 0) -> list[dict]:
    """Score a batch of /v1/rerank lists (prepared by :meth:`mmrank.rerank.serving.ListReranker.prepare`)
    with the bundle's re-ranker in one forward."""
    if bundle.reranker is None:
        raise NoReranker(bundle.rerank_status)
    out = bundle.reranker.score(lists)
    for r in out:
        r["bundle"] = bundle.id
    return out


class NoReranker(RuntimeError):
    """The bundle swapped in while a /v1/rerank request waited has no re-ranker."""
