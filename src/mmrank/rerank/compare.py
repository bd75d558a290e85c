"""`mmrank rerank compare`: every re-ranker and ablation, over seeds, judged by logged labels and by the
market's counterfactual evaluator; ``R/rerank/compare.json``, ``compare.md`` and plots.

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

Each figure is the mean and std over seeds (std with ddof=1; ``logged`` is deterministic, std 0),
overall and per region (``regions``). ``logged`` is the production order as logged.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.errors import ConfigError
from mmrank.eval import auc, ndcg_at_k
from mmrank.rerank.data import TASKS, candidate_index
from mmrank.rerank.models import ABLATIONS, MODELS
from mmrank.rerank.trainer import RerankData, RerankTrainConfig, fit, load_data, predict

MAIN_MODELS = ("dnn", "armmt", "armmt-concat", "prm", "mmoe", "esmm", "seqmd")
DEFAULT_MODELS = ("logged", *MAIN_MODELS, "seqmd-plain", *[a for a in ABLATIONS if a != "armmt-concat"])
GAINS = {"click": 1.0, "cart": 2.0, "purchase": 4.0}
METRICS = ("ndcg@10", "gmv@10", "expected_purchases", "expected_gmv", "expected_purchases_all", "expected_gmv_all")
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
    regions = data.lists.region[rows]
    out = _group_metrics(data, np.arange(len(rows)), cands, task_scores, rank, expected)
    out["regions"] = {str(int(r)): _group_metrics(data, np.flatnonzero(regions == r), cands, task_scores, rank, expected)
                      for r in np.unique(regions)}
    return out


def logged_result(data: RerankData, rows: np.ndarray, evaluator: Any | None) -> dict[str, Any]:
    """The production order as logged: shown candidates by position, all candidates in logged order."""
    cands = candidate_index(data.lists, rows, "shown")
    rank = [-data.lists.position[c].astype(np.float64) for c in cands]
    orders = [data.lists.item_id[c] for c in candidate_index(data.lists, rows, "all")]
    return evaluate_orders(data, rows, (cands, {t: rank for t in TASKS}, rank), orders, evaluator, orders)


def _task_scores(model, scores: dict[str, list]) -> dict[str, list]:
    """Each task's AUC reads its own head when the loss trained it (weight > 0), else the ranking head
    (ARMMT has no cart head; with lambda = 0 its click head is untrained)."""
    w = model.cfg.loss_weights
    return {t: scores[t] if t in scores and w.get(t, 0.0) > 0 else scores["rank"] for t in TASKS}


def model_result(model, data: RerankData, rows: np.ndarray, evaluator: Any | None) -> dict[str, Any]:
    cands, scores = predict(model, data, rows, "shown")
    task_scores = _task_scores(model, scores)
    orders = None
    if evaluator is not None:
        all_c, all_s = predict(model, data, rows, "all")
        orders = [data.lists.item_id[c[np.argsort(-s, kind="stable")]] for c, s in zip(all_c, all_s["rank"])]
    return evaluate_orders(data, rows, (cands, task_scores, scores["rank"]), orders, evaluator)


def beam_result(model, data: RerankData, rows: np.ndarray, evaluator: Any, width: int) -> dict[str, Any]:
    """:func:`model_result` with the evaluator shown the generator-evaluator (beam search) orders."""
    from mmrank.rerank.beam import beam_orders

    cands, scores = predict(model, data, rows, "shown")
    task_scores = _task_scores(model, scores)
    orders = [data.lists.item_id[o] for o in beam_orders(model, data, rows, width=width)]
    return evaluate_orders(data, rows, (cands, task_scores, scores["rank"]), orders, evaluator)


# ---------------------------------------------------------------------------------------------------
# Aggregation over seeds


def _one_thread_if_loaded() -> None:
    """On an oversubscribed machine (load >= cores) OpenMP spin-waiting makes 2 torch threads many
    times slower than 1 for these small models (measured: 92 s vs 2.4 s for 2,000 ARMMT training lists
    at load 8 on 2 cores); use one then."""
    from mmrank.threads import configure, machine_busy

    if machine_busy():
        configure(1, faiss=False)


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
    out["regions"] = {r: _aggregate_block([s["regions"][r] for s in per_seed]) for r in per_seed[0]["regions"]}
    return out


def _m(x: dict | None) -> float | None:
    return None if x is None else x.get("mean")


def acceptance(res: dict[str, Any], smallest_region: str | None) -> dict[str, Any]:
    """The issue's acceptance lines, computed from the figures (None where a figure is missing)."""
    def gt(a, b, path):
        va, vb = path(res.get(a, {})), path(res.get(b, {}))
        return None if va is None or vb is None else {"holds": va > vb, a: va, b: vb}

    cvr = lambda r: _m(r.get("auc", {}).get("purchase"))  # noqa: E731
    egmv = lambda r: _m(r.get("expected_gmv"))  # noqa: E731
    checks: dict[str, Any] = {
        "armmt > dnn, purchase (CVR) AUC": gt("armmt", "dnn", cvr),
        "armmt > armmt-concat, purchase (CVR) AUC": gt("armmt", "armmt-concat", cvr),
        "armmt > dnn, expected GMV": gt("armmt", "dnn", egmv),
        "armmt > armmt-concat, expected GMV": gt("armmt", "armmt-concat", egmv),
        "seqmd > mmoe, cart AUC": gt("seqmd", "mmoe", lambda r: _m(r.get("auc", {}).get("cart"))),
        "seqmd > mmoe, purchase AUC": gt("seqmd", "mmoe", cvr),
    }
    if "seqmd" in res and "mmoe" in res:
        a, b = res["seqmd"]["auc"]["click"], res["mmoe"]["auc"]["click"]
        if a["mean"] is not None and b["mean"] is not None:
            tol = max(a["std"] or 0.0, b["std"] or 0.0)
            checks["seqmd click AUC within one std of mmoe"] = {"holds": abs(a["mean"] - b["mean"]) <= tol,
                                                               "seqmd": a["mean"], "mmoe": b["mean"], "std": tol}
    if "seqmd" in res and "seqmd-no-mask" in res:
        gains = {}
        for r in res["seqmd"]["regions"]:
            x, y = cvr(res["seqmd"]["regions"][r]), cvr(res["seqmd-no-mask"]["regions"].get(r, {}))
            if x is not None and y is not None:
                gains[r] = x - y
        if gains and smallest_region in gains:
            checks["region mask helps most in the smallest region (purchase AUC gain)"] = {
                "holds": max(gains, key=gains.get) == smallest_region, "gain_by_region": gains,
                "smallest_region": smallest_region}
    for key, scope in (("expected_purchases", "re-ordering the logged list"),
                       ("expected_purchases_all", "choosing among every candidate")):
        logged = _m(res.get("logged", {}).get(key))
        if logged is not None:
            checks[f"every re-ranker beats logged on expected purchases ({scope})"] = {
                m: {"holds": _m(r.get(key)) > logged, "value": _m(r.get(key)), "logged": logged}
                for m, r in res.items() if m != "logged" and _m(r.get(key)) is not None}
    return checks


# ---------------------------------------------------------------------------------------------------


def compare(run: str | Path, *, seeds: int = 3, models: list[str] | None = None,
            train_cfg: RerankTrainConfig | None = None, encoder: Any | None = None, progress: bool = True,
            max_test_lists: int | None = None, data: RerankData | None = None, plots: bool = True,
            evaluator: Any | None = None, beam: int = 0, one_thread_if_busy: bool = True) -> dict[str, Any]:
    """Train and evaluate ``models`` (default: all, with the ablations) for ``seeds`` seeds; write
    ``R/rerank/compare.json``, ``compare.md`` and plots. Returns what compare.json holds. ``evaluator``
    overrides the run's (anything with ``expected(request_ids, orders)``). ``beam > 0`` adds
    ``armmt+beam``: each seed's ARMMT as generator and evaluator (:func:`mmrank.rerank.beam.beam_orders`,
    beam width ``beam``); it changes the order the evaluator sees, not the logged-label metrics."""
    run = Path(run)
    models = list(models or DEFAULT_MODELS)
    unknown = [m for m in models if m != "logged" and m not in MODELS]
    if unknown:
        raise ConfigError(f"--models: unknown {unknown[0]!r}; known: logged, {', '.join(MODELS)}")
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    t0 = time.perf_counter()
    if one_thread_if_busy:
        _one_thread_if_loaded()
    data = data or load_data(run, encoder=encoder)
    if evaluator is None:
        evaluator, ev_status = evaluator_for(run)
    else:
        ev_status = f"present ({type(evaluator).__name__})"
    rows = data.lists.test_rows()
    if max_test_lists is not None and len(rows) > max_test_lists:
        rows = rows[:max_test_lists]
    tcfg = train_cfg or RerankTrainConfig()
    res: dict[str, Any] = {}
    per_seed_all: dict[str, list] = {}
    for name in models:
        if name == "logged":
            r = logged_result(data, rows, evaluator)
            per_seed_all[name] = [r]
            res[name] = aggregate([r] * seeds)
            continue
        per_seed, secs, beamed = [], [], []
        for seed in range(seeds):
            model, info = fit(data, name, seed=seed, train_cfg=tcfg, progress=progress)
            per_seed.append(model_result(model, data, rows, evaluator))
            secs.append(info["seconds"])
            if beam and name == "armmt" and evaluator is not None:
                beamed.append(beam_result(model, data, rows, evaluator, beam))
        if beamed:
            per_seed_all["armmt+beam"] = beamed
            res["armmt+beam"] = aggregate(beamed)
            models = [*models, "armmt+beam"] if "armmt+beam" not in models else models
        per_seed_all[name] = per_seed
        res[name] = aggregate(per_seed)
        res[name]["train_seconds"] = float(np.mean(secs))
        if progress:
            a = res[name]["auc"]["purchase"]["mean"]
            print(f"{name}: purchase AUC {a if a is None else round(a, 4)}  "
                  f"expected GMV {_m(res[name]['expected_gmv'])}", flush=True)
    counts = {r: int((data.lists.region == int(r)).sum()) for r in map(str, np.unique(data.lists.region))}
    smallest = min(counts, key=counts.get) if counts else None
    out = dict(res)
    out["meta"] = {
        "run": str(run), "seeds": seeds, "models": models, "ablations": {k: v for k, v in ABLATIONS.items() if k in models},
        "evaluator": ev_status, "test_requests": int(len(rows)), "train_requests": int(len(data.train_rows(tcfg.max_train_lists))),
        "region_requests": counts, "smallest_region": smallest, "representations": data.feats.source if data.feats else None,
        "simulated": True, "train": tcfg.model_dump(mode="json"),
        "ndcg_gains": GAINS, "seconds": round(time.perf_counter() - t0, 1),
        "per_seed": {m: [{k: v for k, v in s.items() if k != "regions"} for s in ps] for m, ps in per_seed_all.items()},
    }
    out["meta"]["acceptance"] = acceptance(res, smallest)
    d = run / "rerank"
    d.mkdir(parents=True, exist_ok=True)
    out["meta"]["markdown"] = str(d / "compare.md")
    if plots:
        out["meta"]["plots"] = write_plots(out, d)
    (d / "compare.json").write_text(json.dumps(_clean(out), indent=2))
    (d / "compare.md").write_text(markdown(out))
    return out


def _clean(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x


def _fmt(s: dict | None, digits: int = 4) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(out: dict[str, Any]) -> str:
    meta = out["meta"]
    models = [m for m in meta["models"] if m in out]
    lines = [f"Re-ranking on `{meta['run']}` (behaviour **simulated**), {meta['seeds']} seed(s), "
             f"{meta['test_requests']} test requests; evaluator: {meta['evaluator']}.", "",
             "E[...]: the evaluator's expected purchases / GMV per request when the model re-orders the logged "
             "list; E[...] all: when it chooses among every retrieved candidate.", "",
             "| model | AUC click | AUC cart | AUC purchase | NDCG@10 | GMV@10 | E[purchases] | E[GMV] "
             "| E[purchases] all | E[GMV] all |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        r = out[m]
        lines.append(f"| {m} | {_fmt(r['auc']['click'])} | {_fmt(r['auc']['cart'])} | {_fmt(r['auc']['purchase'])} | "
                     f"{_fmt(r['ndcg@10'])} | {_fmt(r['gmv@10'], 2)} | {_fmt(r['expected_purchases'])} | "
                     f"{_fmt(r['expected_gmv'], 2)} | {_fmt(r['expected_purchases_all'])} | "
                     f"{_fmt(r['expected_gmv_all'], 2)} |")
    regions = list(out[models[0]]["regions"]) if models else []
    if regions:
        lines += ["", "Per region (all requests of the region: " + ", ".join(f"{r}: {meta['region_requests'].get(r)}" for r in regions)
                  + "): purchase AUC / E[GMV]", "",
                  "| model | " + " | ".join(f"region {r}" for r in regions) + " |",
                  "|---|" + "---|" * len(regions)]
        for m in models:
            cells = [f"{_fmt(out[m]['regions'][r]['auc']['purchase'])} / {_fmt(out[m]['regions'][r]['expected_gmv'], 2)}"
                     for r in regions]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Acceptance checks (computed from the figures above):", ""]
    for k, v in meta.get("acceptance", {}).items():
        if v is None:
            lines.append(f"- {k}: not measurable (a figure is missing)")
        elif "holds" in v:
            figs = {a: b for a, b in v.items() if isinstance(b, float)} or v.get("gain_by_region", {})
            lines.append(f"- {k}: **{'holds' if v['holds'] else 'does not hold'}** "
                         f"({', '.join(f'{a}={b:.4f}' for a, b in figs.items())})")
        else:
            bad = [m for m, x in v.items() if not x["holds"]]
            lines.append(f"- {k}: **{'holds' if not bad else 'does not hold for ' + ', '.join(bad)}**")
    return "\n".join(lines) + "\n"


def write_plots(out: dict[str, Any], d: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = out["meta"]
    models = [m for m in meta["models"] if m in out]
    paths = []
    panels = [("purchase AUC (logged labels)", lambda r: r["auc"]["purchase"]),
              ("NDCG@10 (logged labels)", lambda r: r["ndcg@10"]),
              ("expected purchases / request (evaluator)", lambda r: r["expected_purchases"]),
              ("expected GMV / request (evaluator)", lambda r: r["expected_gmv"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.32 * len(models) + 1.8))
    for ax, (title, get) in zip(axes, panels):
        vals = [get(out[m]) for m in models]
        y = np.arange(len(models))
        means = [v["mean"] if v["mean"] is not None else np.nan for v in vals]
        stds = [v["std"] if v["std"] is not None else 0.0 for v in vals]
        ax.barh(y, means, xerr=stds, color=["#999" if m == "logged" else "#3a7" for m in models])
        ax.set_yticks(y, models if ax is axes[0] else [""] * len(models))
        ax.set_title(title, fontsize=9)
        finite = [x for x in means if np.isfinite(x)]
        if finite:
            lo, hi = min(finite), max(finite)
            ax.set_xlim(lo - 0.15 * (hi - lo + 1e-9) - 1e-9, hi + 0.15 * (hi - lo + 1e-9) + 1e-9)
        ax.invert_yaxis()
    fig.suptitle(f"Re-ranking (simulated), mean ± std over {meta['seeds']} seed(s)", fontsize=10)
    fig.tight_layout()
    p = d / "compare.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))
    regions = list(out[models[0]]["regions"]) if models else []
    if regions:
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(models) * len(regions) / 2, 3.2))
        w = 0.8 / len(regions)
        x = np.arange(len(models))
        for k, r in enumerate(regions):
            means = [out[m]["regions"][r]["auc"]["purchase"]["mean"] or np.nan for m in models]
            stds = [out[m]["regions"][r]["auc"]["purchase"]["std"] or 0.0 for m in models]
            ax.bar(x + k * w, means, w, yerr=stds, label=f"region {r} ({meta['region_requests'].get(r)} req.)")
        ax.set_xticks(x + w * (len(regions) - 1) / 2, models, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("purchase AUC")
        ax.set_ylim(0.4, None)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = d / "compare_regions.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(str(p))
    return paths


__all__ = ["compare", "evaluator_for", "evaluate_orders", "logged_result", "model_result", "markdown"]
