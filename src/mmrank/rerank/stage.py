"""The re-ranking stage on a run directory: train one model (:func:`train_model`, written as
:mod:`mmrank.rerank.artifacts` lays out), every re-ranker and ablation over seeds (:func:`compare`:
``R/rerank/compare.json``, ``compare.md`` and plots, judged as :mod:`mmrank.rerank.evaluate` says), and
the demo's step (:func:`demo_stage`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.ctr.evaluate import json_ready
from mmrank.device import HardwareConfig, describe, resolve_device
from mmrank.errors import ConfigError
from mmrank.rerank.artifacts import save_model
from mmrank.rerank.evaluate import (GAINS, aggregate, beam_result, evaluator_for, logged_result,
                                    model_result, prod_order_result)
from mmrank.rerank.offpolicy import ESTIMATORS, OffPolicy, summary
from mmrank.rerank.models import ABLATIONS, BASELINES, MODELS
from mmrank.rerank.trainer import RerankData, RerankTrainConfig, fit, load_data

MAIN_MODELS = ("dnn", "armmt", "armmt-concat", "prm", "mmoe", "esmm", "seqmd")
COUNTERFACTUAL_MODELS = ("dnn-ips", "armmt-ips")
DEFAULT_MODELS = ("logged", "prod-order", *MAIN_MODELS, *COUNTERFACTUAL_MODELS, "seqmd-plain", *[a for a in ABLATIONS if a != "armmt-concat"])

# The demo's settings per size (1 seed).
DEMO = {"tiny": dict(models=["logged", "dnn", "armmt", "armmt-concat", "seqmd", "mmoe"], max_train_lists=None),
        "small": dict(models=["logged", "dnn", "armmt", "armmt-concat", "mmoe", "seqmd"], max_train_lists=20_000),
        "default": dict(models=None, max_train_lists=60_000)}


def one_thread_if_loaded() -> None:
    """On an oversubscribed machine (load >= cores) OpenMP spin-waiting makes 2 torch threads many
    times slower than 1 for these small models; use one then."""
    from mmrank.threads import configure, machine_busy

    if machine_busy():
        configure(1, faiss=False)


def train_model(run: str | Path, name: str, *, seed: int = 0, train_cfg: RerankTrainConfig | None = None,
                encoder: Any | None = None, progress: bool = True, one_thread_if_busy: bool = True,
                hardware: HardwareConfig | None = None) -> dict:
    """Train model ``name`` on the run's training lists, evaluate on the test lists, write
    ``R/rerank/<name>/``; returns the metrics. On ``hardware``'s device (None: auto), recorded as
    ``device``."""
    run = Path(run)
    hw = hardware or HardwareConfig()
    dev = resolve_device(hw.device)         # first: a device this machine lacks fails at once
    if one_thread_if_busy:
        one_thread_if_loaded()
    data = load_data(run, encoder=encoder)
    tcfg = train_cfg or RerankTrainConfig()
    model, info = fit(data, name, seed=seed, train_cfg=tcfg, progress=progress, hardware=hw)
    evaluator, status = evaluator_for(run)
    metrics = model_result(model, data, data.lists.test_rows(), evaluator, bf16=hw.bf16)
    metrics.update({"model": name, "seed": seed, "evaluator": status, "device": describe(dev),
                    "train_seconds": info["seconds"],
                    "train_loss": info["loss"], "test_requests": int(len(data.lists.test_rows()))})
    out = run / "rerank" / name
    save_model(model, data, out, tcfg, {"seed": seed})
    (out / "metrics.json").write_text(json.dumps(json_ready(metrics), indent=2))
    return metrics


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
                for m, r in res.items() if m not in BASELINES and _m(r.get(key)) is not None}
    logged_all = _m(res.get("logged", {}).get("expected_purchases_all"))
    for m in COUNTERFACTUAL_MODELS:
        v = res.get(m, {}).get("expected_purchases_all") or {}
        if logged_all is not None and v.get("mean") is not None:
            checks[f"{m} beats logged by more than one std on expected purchases (choosing among every "
                   "candidate)"] = {"holds": v["mean"] - logged_all > (v["std"] or 0.0), m: v["mean"],
                                    "logged": logged_all, "std": v["std"] or 0.0}
    return checks



def compare(run: str | Path, *, seeds: int = 3, models: list[str] | None = None,
            train_cfg: RerankTrainConfig | None = None, encoder: Any | None = None, progress: bool = True,
            max_test_lists: int | None = None, data: RerankData | None = None, plots: bool = True,
            evaluator: Any | None = None, beam: int = 0, one_thread_if_busy: bool = True,
            hardware: HardwareConfig | None = None) -> dict[str, Any]:
    """Train and evaluate ``models`` (default: all, with the ablations) for ``seeds`` seeds; write
    ``R/rerank/compare.json``, ``compare.md`` and plots. Returns what compare.json holds. ``evaluator``
    overrides the run's (anything with ``expected(request_ids, orders)``). ``beam > 0`` adds
    ``armmt+beam``: each seed's ARMMT as generator and evaluator (:func:`mmrank.rerank.beam.beam_orders`,
    beam width ``beam``); it changes the order the evaluator sees, not the logged-label metrics. Models
    train and score on ``hardware``'s device (None: auto), recorded as ``meta.device``."""
    run = Path(run)
    hw = hardware or HardwareConfig()
    dev = resolve_device(hw.device)         # first: a device this machine lacks fails at once
    models = list(models or DEFAULT_MODELS)
    unknown = [m for m in models if m not in BASELINES and m not in MODELS]
    if unknown:
        raise ConfigError(f"--models: unknown {unknown[0]!r}; known: {', '.join(BASELINES)}, {', '.join(MODELS)}")
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    t0 = time.perf_counter()
    if one_thread_if_busy:
        one_thread_if_loaded()
    data = data or load_data(run, encoder=encoder)
    if evaluator is None:
        evaluator, ev_status = evaluator_for(run)
    else:
        ev_status = f"present ({type(evaluator).__name__})"
    rows = data.lists.test_rows()
    if max_test_lists is not None and len(rows) > max_test_lists:
        rows = rows[:max_test_lists]
    tcfg = train_cfg or RerankTrainConfig()
    opol = OffPolicy(data.lists, rows, data.train_rows(tcfg.max_train_lists))
    res: dict[str, Any] = {}
    per_seed_all: dict[str, list] = {}
    for name in models:
        if name in BASELINES:
            r = logged_result(data, rows, evaluator) if name == "logged" else \
                prod_order_result(data, rows, evaluator, opol)
            per_seed_all[name] = [r]
            res[name] = aggregate([r] * seeds)
            continue
        per_seed, secs, beamed = [], [], []
        for seed in range(seeds):
            model, info = fit(data, name, seed=seed, train_cfg=tcfg, progress=progress, hardware=hw)
            per_seed.append(model_result(model, data, rows, evaluator, opol, bf16=hw.bf16))
            secs.append(info["seconds"])
            if beam and name == "armmt" and evaluator is not None:
                beamed.append(beam_result(model, data, rows, evaluator, beam, bf16=hw.bf16))
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
    out["offpolicy"] = offpolicy_table(res, opol)
    out["meta"] = {
        "run": str(run), "seeds": seeds, "models": models, "ablations": {k: v for k, v in ABLATIONS.items() if k in models},
        "evaluator": ev_status, "test_requests": int(len(rows)), "train_requests": int(len(data.train_rows(tcfg.max_train_lists))),
        "region_requests": counts, "smallest_region": smallest, "representations": data.feats.source if data.feats else None,
        "simulated": True, "train": tcfg.model_dump(mode="json"), "device": describe(dev),
        "ndcg_gains": GAINS, "seconds": round(time.perf_counter() - t0, 1),
        "per_seed": {m: [{k: v for k, v in s.items() if k != "regions"} for s in ps] for m, ps in per_seed_all.items()},
    }
    out["meta"]["acceptance"] = acceptance(res, smallest)
    d = run / "rerank"
    d.mkdir(parents=True, exist_ok=True)
    out["meta"]["markdown"] = str(d / "compare.md")
    if plots:
        out["meta"]["plots"] = write_plots(out, d)
    (d / "compare.json").write_text(json.dumps(json_ready(out), indent=2))
    (d / "compare.md").write_text(markdown(out))
    return out


_TRUTH = {"clicks": "expected_clicks_all", "purchases": "expected_purchases_all", "gmv": "expected_gmv_all"}


def offpolicy_table(res: dict[str, Any], opol: OffPolicy) -> dict[str, Any]:
    """Per model (every one with estimates): the evaluator's true clicks, purchases and GMV per request of
    its order among every candidate and each estimator's estimate (means over seeds); per estimator its
    bias, RMSE and rank correlation across models."""
    models = [m for m, r in res.items() if "offpolicy" in r]
    truth = {m: {k: _m(res[m].get(t)) for k, t in _TRUTH.items()} for m in models}
    est = {m: {e: {k: _m(v) for k, v in res[m]["offpolicy"][e].items()} for e in ESTIMATORS} for m in models}
    return {"logging": "stochastic (logged propensities)" if opol.stochastic else
            "deterministic (no propensities: IPS/SNIPS/DR only see orders that repeat the logged one)",
            "click_model_theta": [round(float(t), 4) for t in opol.models["click"].theta],
            "truth": truth, "estimates": est,
            "summary": summary(truth, est, {k: k for k in _TRUTH})}


def offpolicy_markdown(op: dict[str, Any]) -> list[str]:
    if not op or not op.get("estimates"):
        return []
    models = list(op["estimates"])
    f = lambda v, d=4: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = ["", f"Off-policy estimates of each model's order among every candidate (logging policy: "
             f"{op['logging']}); true = the evaluator's expectation, per request.", "",
             "| model | true purchases | " + " | ".join(f"{e} purchases" for e in ESTIMATORS)
             + " | true GMV | " + " | ".join(f"{e} GMV" for e in ESTIMATORS) + " |",
             "|---|" + "---|" * (2 * len(ESTIMATORS) + 2)]
    for m in models:
        t, e = op["truth"][m], op["estimates"][m]
        lines.append(f"| {m} | {f(t['purchases'])} | " + " | ".join(f(e[x]['purchases']) for x in ESTIMATORS)
                     + f" | {f(t['gmv'], 2)} | " + " | ".join(f(e[x]['gmv'], 2) for x in ESTIMATORS) + " |")
    lines += ["", "Per estimator, across the models above: bias (mean estimate - truth), RMSE and Spearman rank "
              "correlation of its model order with the true order.", "",
              "| estimator | metric | bias | RMSE | rank corr. |", "|---|---|---|---|---|"]
    for e in ESTIMATORS:
        for k in _TRUTH:
            v = op["summary"][e][k]
            d = 2 if k == "gmv" else 4
            lines.append(f"| {e} | {k} | {f(v['bias'], d)} | {f(v['rmse'], d)} | {f(v['spearman'], 3)} |")
    return lines


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
    lines += offpolicy_markdown(out.get("offpolicy", {}))
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



def demo_stage(run: Path, size: str, hardware: HardwareConfig | None = None) -> dict:
    """The re-ranking stage of ``mmrank demo``: a one-seed comparison on the run's lists.

    Returns per model: purchase (CVR) AUC, NDCG@10 and the evaluator's expected purchases and GMV, and
    the markdown table (``R/rerank/compare.md``).
    """
    import torch

    if size not in DEMO:
        raise ConfigError(f"size: expected one of {', '.join(DEMO)}, got {size!r}")
    lists = Path(run) / "data" / "lists.parquet"
    import pyarrow.parquet as pq

    if not lists.exists() or "item_ids" not in pq.read_schema(lists).names:
        return {"skipped": f"{lists} has no search-surface candidate lists (a market from before the LISTS schema "
                           "of issue 9); re-generate the market"}
    from mmrank.threads import configure

    configure(min(2, torch.get_num_threads()), faiss=False)
    cfg = DEMO[size]
    r = compare(Path(run), seeds=1, models=cfg["models"], progress=False, hardware=hardware,
                train_cfg=RerankTrainConfig(max_train_lists=cfg["max_train_lists"]))
    meta = r["meta"]
    out = {"evaluator": meta["evaluator"], "test_requests": meta["test_requests"], "plots": meta.get("plots", []),
           "markdown": Path(meta["markdown"]).read_text()}
    for m in meta["models"]:
        out[m] = {"auc_purchase": r[m]["auc"]["purchase"]["mean"], "ndcg@10": r[m]["ndcg@10"]["mean"],
                  "expected_purchases": r[m]["expected_purchases"]["mean"],
                  "expected_gmv": r[m]["expected_gmv"]["mean"]}
    return out
