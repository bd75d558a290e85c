"""How a re-ranker is judged: by logged labels and by the market's counterfactual evaluator, per model and
seed, and aggregated over seeds (:mod:`mmrank.rerank.stage` runs it for every model in `mmrank rerank compare`).

Per model and seed, on the test requests:

* from logged labels, on the **shown** candidates (the only ones with labels) scored as the list the
  user saw: AUC per task (click, cart, purchase; a model without a head for a task is scored with its
  ranking head, e.g. ARMMT's CVR for cart, and so is a head whose loss weight is 0), NDCG@10 with gains purchase 4 > cart 2 > click 1 (the
  highest event of a candidate; mean over requests with any event), GMV@10 (price x purchase over the
  model's top 10 of the shown, mean per request);
* from the evaluator (:class:`mmrank.data.truth.Evaluator`, reading ``R/truth/``), the expected purchases
  and GMV per request (mean over requests) when the model's order is shown (its first ``n_shown``):

  - ``expected_purchases`` / ``expected_gmv``: the re-ranker re-orders the list the production stage
    handed it, i.e. the ``n_shown`` candidates of the logged list (the usual scope of a re-ranker:
    PRM and ARMMT re-rank the ranker's top-N);
  - ``expected_purchases_all`` / ``expected_gmv_all``: the re-ranker chooses among **every** retrieved
    candidate (about 50). Labels exist only for shown candidates, so this asks the model about
    candidates unlike any it was trained on (selection bias); reported as it comes out. Without ``R/truth/`` (or without
  :mod:`mmrank.data.truth`) these are reported absent (``mean``/``std`` null) and ``meta.evaluator`` says why.

* with ``offpolicy`` given, each off-policy estimator's estimate (:mod:`mmrank.rerank.offpolicy`, from
  the logs alone) of the clicks, purchases and GMV per request of the model's order among every candidate,
  beside the evaluator's ``expected_*_all``.

Each figure is the mean and std over seeds (std with ddof=1; ``logged`` is deterministic, std 0),
overall and per region (``regions``). ``logged`` is the production order as logged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.eval import auc, ndcg_at_k
from mmrank.rerank.data import TASKS, candidate_index
from mmrank.rerank.trainer import RerankData, predict

GAINS = {"click": 1.0, "cart": 2.0, "purchase": 4.0}
METRICS = ("ndcg@10", "gmv@10", "expected_purchases", "expected_gmv", "expected_purchases_all", "expected_gmv_all",
           "expected_clicks_all")
K = 10


def evaluator_for(run: Path) -> tuple[Any | None, str]:
    """The run's counterfactual evaluator, or ``(None, why not)``."""
    if not (Path(run) / "truth").exists():
        return None, f"absent: {run}/truth/ does not exist (a market without ground truth)"
    try:
        from mmrank.data.truth import Evaluator
    except ImportError as err:
        return None, f"absent: mmrank.data.truth is not available ({err})"
    return Evaluator(run), "present"


def _safe_auc(y: np.ndarray, s: np.ndarray) -> float:
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    return auc(y, s)


def _relevance(data: RerankData, idx: np.ndarray) -> np.ndarray:
    rel = np.zeros(len(idx))
    for t, g in GAINS.items():
        rel = np.maximum(rel, g * data.lists.label(t)[idx])
    return rel


def _group_metrics(data: RerankData, sel: np.ndarray, cands: list[np.ndarray], task_scores: dict[str, list],
                   rank: list[np.ndarray], expected: dict[str, np.ndarray | None]) -> dict[str, Any]:
    """Metrics over the requests at positions ``sel`` of ``cands``/``rank``."""
    lists = data.lists
    out: dict[str, Any] = {"n_requests": int(len(sel)), "auc": {}}
    idx = np.concatenate([cands[i] for i in sel]) if len(sel) else np.zeros(0, np.int64)
    for t in TASKS:
        s = np.concatenate([task_scores[t][i] for i in sel]) if len(sel) else np.zeros(0)
        out["auc"][t] = _safe_auc(lists.label(t)[idx].astype(np.int64), s)
    # NDCG@10 over requests with any event, GMV@10
    width = max((len(cands[i]) for i in sel), default=1)
    rel = np.zeros((len(sel), width))
    sc = np.zeros((len(sel), width))
    mask = np.zeros((len(sel), width), bool)
    gmv = np.zeros(len(sel))
    for j, i in enumerate(sel):
        c = cands[i]
        rel[j, :len(c)] = _relevance(data, c)
        sc[j, :len(c)] = rank[i]
        mask[j, :len(c)] = True
        top = c[np.argsort(-rank[i], kind="stable")[:K]]
        gmv[j] = float((lists.price[top] * lists.purchase[top]).sum())
    any_rel = rel.max(axis=1) > 0 if len(sel) else np.zeros(0, bool)
    out["ndcg@10"] = ndcg_at_k(rel[any_rel], sc[any_rel], K, mask[any_rel]) if any_rel.any() else float("nan")
    out["gmv@10"] = float(gmv.mean()) if len(sel) else float("nan")
    for key in METRICS[2:]:
        v = expected.get(key)
        out[key] = float(np.mean(v[sel])) if v is not None and len(sel) else None
    return out


def shown_first_orders(data: RerankData, rows: np.ndarray, cands: list[np.ndarray],
                       rank: list[np.ndarray]) -> list[np.ndarray]:
    """Item-id orders that show the logged list's candidates re-ordered by ``rank`` (scores of the
    shown candidates ``cands``), then the other candidates in the logged order."""
    out = []
    for r, c, s in zip(rows, cands, rank):
        every = np.arange(data.lists.offsets[r], data.lists.offsets[r + 1])
        rest = every[data.lists.position[every] < 0]
        out.append(data.lists.item_id[np.concatenate([c[np.argsort(-s, kind="stable")], rest])])
    return out


def evaluate_orders(data: RerankData, rows: np.ndarray, shown: tuple[list, dict, list],
                    orders: list[np.ndarray] | None, evaluator: Any | None,
                    orders_shown: list[np.ndarray] | None = None) -> dict[str, Any]:
    """All metrics of one model and seed: ``shown = (candidates, {task: scores}, ranking scores)`` on the
    shown candidates; for the evaluator, ``orders`` one item-id array per request choosing among every
    candidate (``*_all``) and ``orders_shown`` re-ordering the logged list (default: by the ranking
    scores of ``shown``)."""
    cands, task_scores, rank = shown
    expected: dict[str, np.ndarray | None] = {}
    if evaluator is not None:
        rid = data.lists.request_id[rows]
        res = evaluator.expected(rid, orders_shown or shown_first_orders(data, rows, cands, rank))
        expected["expected_purchases"] = np.asarray(res["purchases"], np.float64)
        expected["expected_gmv"] = np.asarray(res["gmv"], np.float64)
        if orders is not None:
            res = evaluator.expected(rid, orders)
            expected["expected_purchases_all"] = np.asarray(res["purchases"], np.float64)
            expected["expected_gmv_all"] = np.asarray(res["gmv"], np.float64)
            expected["expected_clicks_all"] = np.asarray(res["clicks"], np.float64)
    regions = data.lists.region[rows]
    out = _group_metrics(data, np.arange(len(rows)), cands, task_scores, rank, expected)
    out["regions"] = {str(int(r)): _group_metrics(data, np.flatnonzero(regions == r), cands, task_scores, rank, expected)
                      for r in np.unique(regions)}
    return out


def logged_result(data: RerankData, rows: np.ndarray, evaluator: Any | None) -> dict[str, Any]:
    """The production order as logged: shown candidates by position, then the others in logged order
    (with a deterministic production policy: all candidates in the logged order)."""
    cands = candidate_index(data.lists, rows, "shown")
    rank = [-data.lists.position[c].astype(np.float64) for c in cands]
    orders = shown_first_orders(data, rows, cands, rank)
    return evaluate_orders(data, rows, (cands, {t: rank for t in TASKS}, rank), orders, evaluator, orders)


def prod_order_result(data: RerankData, rows: np.ndarray, evaluator: Any | None,
                      offpolicy: Any | None = None) -> dict[str, Any]:
    """The deterministic production order (descending production score) over every candidate: what a
    stochastic production policy would show at temperature 0 without exploration."""
    cands = candidate_index(data.lists, rows, "shown")
    rank = [data.lists.prod_score[c].astype(np.float64) for c in cands]
    flat = [c[np.argsort(-data.lists.prod_score[c], kind="stable")] for c in candidate_index(data.lists, rows, "all")]
    out = evaluate_orders(data, rows, (cands, {t: rank for t in TASKS}, rank),
                          [data.lists.item_id[f] for f in flat], evaluator)
    if offpolicy is not None:
        out["offpolicy"] = offpolicy.estimate(flat)
    return out


def _task_scores(model, scores: dict[str, list]) -> dict[str, list]:
    """Each task's AUC reads its own head when the loss trained it (weight > 0), else the ranking head
    (ARMMT has no cart head; with lambda = 0 its click head is untrained)."""
    w = model.cfg.loss_weights
    return {t: scores[t] if t in scores and w.get(t, 0.0) > 0 else scores["rank"] for t in TASKS}


def model_result(model, data: RerankData, rows: np.ndarray, evaluator: Any | None,
                 offpolicy: Any | None = None, bf16: bool = True) -> dict[str, Any]:
    """All metrics of ``model`` (scored on its device; bf16 autocast on CUDA when ``bf16``); with
    ``offpolicy`` (:class:`mmrank.rerank.offpolicy.OffPolicy` of ``rows``) also ``offpolicy``: each
    estimator's estimate of its order among every candidate."""
    cands, scores = predict(model, data, rows, "shown", bf16=bf16)
    task_scores = _task_scores(model, scores)
    orders, flat = None, None
    if evaluator is not None or offpolicy is not None:
        all_c, all_s = predict(model, data, rows, "all", bf16=bf16)
        flat = [c[np.argsort(-s, kind="stable")] for c, s in zip(all_c, all_s["rank"])]
        orders = [data.lists.item_id[f] for f in flat]
    out = evaluate_orders(data, rows, (cands, task_scores, scores["rank"]), orders if evaluator is not None else None,
                          evaluator)
    if offpolicy is not None:
        out["offpolicy"] = offpolicy.estimate(flat)
    return out


def beam_result(model, data: RerankData, rows: np.ndarray, evaluator: Any, width: int,
                bf16: bool = True) -> dict[str, Any]:
    """:func:`model_result` with the evaluator shown the generator-evaluator (beam search) orders."""
    from mmrank.rerank.beam import beam_orders

    cands, scores = predict(model, data, rows, "shown", bf16=bf16)
    task_scores = _task_scores(model, scores)
    orders = [data.lists.item_id[o] for o in beam_orders(model, data, rows, width=width, bf16=bf16)]
    return evaluate_orders(data, rows, (cands, task_scores, scores["rank"]), orders, evaluator)


# ---------------------------------------------------------------------------------------------------
# Aggregation over seeds


def _stat(values: list) -> dict[str, float | None]:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}


def _aggregate_block(per_seed: list[dict]) -> dict[str, Any]:
    out = {"auc": {t: _stat([s["auc"][t] for s in per_seed]) for t in TASKS}}
    for m in METRICS:
        out[m] = _stat([s[m] for s in per_seed])
    out["n_requests"] = per_seed[0]["n_requests"]
    return out


def aggregate(per_seed: list[dict]) -> dict[str, Any]:
    out = _aggregate_block(per_seed)
    if all("offpolicy" in s for s in per_seed) and per_seed:
        est = per_seed[0]["offpolicy"]
        out["offpolicy"] = {e: {m: _stat([s["offpolicy"][e][m] for s in per_seed]) for m in est[e]} for e in est}
    out["regions"] = {r: _aggregate_block([s["regions"][r] for s in per_seed]) for r in per_seed[0]["regions"]}
    return out
