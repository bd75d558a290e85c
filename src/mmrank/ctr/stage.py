"""The CTR stage on a run directory: train one strategy (:func:`train_strategy`), score a samples file
(:func:`predict_file`), the Table 3 analogue (:func:`compare`) and the demo's step (:func:`demo_stage`).

:func:`compare` trains every strategy over several seeds, with the frequency-group and new-item
breakdowns (Figure 6b) and the MAKE epochs curve (Figure 6c); it writes ``R/ctr/compare.json``, a
markdown table ``R/ctr/compare.md`` and PNG plots under ``R/report/plots/``. MAKE is pre-trained once
per seed and shared by ``make`` and ``simtier+make`` (``post+simtier+make`` pre-trains its own, on the
post-trained table, which :func:`compare` makes first when ``R/posttrain`` is missing; ``click-visual``
pre-trains its own, on the click-visual encoder's item table, embedded once); the epochs
curve pre-trains one MAKE (seed 0) for ``max(curve)`` epochs and snapshots it at each E of the curve.
Each trained strategy is written as :mod:`mmrank.ctr.artifacts` lays out.

Example::

    >>> from mmrank.ctr.stage import train_strategy
    >>> metrics = train_strategy(Path("runs/demo"), "simtier")        # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from mmrank.ctr.artifacts import load_model, save_model
from mmrank.ctr.data import load_samples
from mmrank.ctr.evaluate import N_GROUPS, evaluate, json_ready
from mmrank.ctr.models import CLICK_VISUAL_STRATEGIES, PAPER_STRATEGIES, POST_STRATEGIES, CtrConfig
from mmrank.ctr.rundata import RunData, build_model, fit_strategy, load_run, new_make
from mmrank.ctr.trainer import TrainConfig, placement, predict, pretrain_make
from mmrank.ctr.trainer import train as trainer_train
from mmrank.device import HardwareConfig, describe
from mmrank.errors import ConfigError

console = Console(stderr=True)

# The demo's settings per size (1 seed): MAKE epochs, the epochs curve, and the latest training rows
# used (the budget at size "small" is 5 minutes on 2 cores).
DEMO = {"tiny": dict(make_epochs=2, curve=(0, 2), max_train_rows=None),
        "small": dict(make_epochs=2, curve=(0, 2), max_train_rows=120_000),
        "default": dict(make_epochs=4, curve=(0, 1, 2, 4), max_train_rows=400_000)}


def train_strategy(run: Path, strategy: str, *, seed: int = 0, make_epochs: int = 4,
                   cfg: CtrConfig | None = None, train_cfg: TrainConfig | None = None,
                   data: RunData | None = None, progress: bool = True,
                   hardware: HardwareConfig | None = None) -> dict:
    """Train ``strategy`` on the run, evaluate on the test split, write ``R/ctr/<strategy>/``; on
    ``hardware``'s device (None: auto), recorded as ``metrics["device"]``."""
    run = Path(run)
    where = placement(hardware)             # resolved first: a device this machine lacks fails at once
    cfg = cfg or CtrConfig()
    post = strategy in POST_STRATEGIES
    if post and data is None:
        from mmrank.posttrain.stage import ensure_posttrain

        ensure_posttrain(run, progress=progress, hardware=hardware)
    if strategy in CLICK_VISUAL_STRATEGIES and data is None:   # the click-visual encoder's table
        from mmrank.pretrain.stage import variant_vectors

        data = load_run(run, vectors=variant_vectors(run, "click-visual"))
    data = data or load_run(run, with_vectors=strategy != "id", posttrained=post)
    ensure_codes(run, data, (strategy,))
    tcfg = train_cfg or TrainConfig()
    model, info = fit_strategy(data, strategy, seed=seed, make_epochs=make_epochs, cfg=cfg,
                               train_cfg=tcfg, progress=progress, hardware=hardware)
    probs = predict(model, data.enc, **where)
    metrics = evaluate(data, probs)
    metrics.update({"strategy": strategy, "seed": seed, "oracle_auc": data.manifest.get("oracle_auc"),
                    "device": describe(where["device"]),
                    "train_seconds": info["train"]["seconds"],
                    "make_pretrain_seconds": info.get("make_pretrain", {}).get("seconds")})
    out = run / "ctr" / strategy
    save_model(model, data.space, out, train_cfg=tcfg.model_copy(update={"seed": seed}),
               extra=model_extra(data, strategy, info), inputs=lineage_of(data))
    (out / "metrics.json").write_text(json.dumps(json_ready(metrics), indent=2))
    return metrics


def with_click_visual(run: Path, data: RunData) -> RunData:
    """The same samples, vocabularies and training rows with the item table of the click-visual
    encoder ``R/pretrain/click-visual`` (embedded once, :func:`mmrank.pretrain.stage.variant_vectors`;
    own SimTier counts; no semantic IDs)."""
    from mmrank.pretrain.stage import variant_vectors

    return data.with_table(*variant_vectors(run, "click-visual"))


def ensure_codes(run: Path, data: RunData, strategies: tuple[str, ...]) -> None:
    """Attach the run's semantic IDs to ``data`` when a strategy needs them (built on demand, with
    the default :class:`mmrank.sid.config.SidConfig`, when the run has none)."""
    from mmrank.ctr.representations import attach_codes

    if data.codes is None and any(CtrConfig(strategy=s).uses_sid for s in strategies):
        attach_codes(run, data, log=console.print)


def model_extra(data: RunData, strategy: str, info: dict) -> dict:
    """What ``config.json`` records beside the model: MAKE epochs, the representations and, for the
    semantic-ID strategies, the version of the codes (a hash of their codebooks)."""
    extra = {"make_epochs": info["make_epochs"], "representations": data.vec_source}
    if CtrConfig(strategy=strategy).uses_sid and data.sid is not None:
        extra["sid"] = data.sid.version
    return extra


def lineage_of(data: RunData) -> dict[str, str]:
    """What a model trained on ``data`` is made from: the tables read and the representations."""
    return {**data.inputs, **({"representations": data.vec_source} if data.vec_source else {})}


def predict_file(run: Path, strategy: str, samples: Path, out: Path, *,
                 hardware: HardwareConfig | None = None) -> int:
    """Score a CTR_SAMPLES file (``split`` may be anything) with ``R/ctr/<strategy>`` on ``hardware``'s
    device (None: auto); write Parquet ``request_id, item_id, position, score``. Returns the number of
    rows."""
    import pyarrow as pa

    from mmrank.data.io import write_table

    where = placement(hardware)
    model, space, _ = load_model(run, strategy, device=where["device"])
    data = load_samples(samples, require_split=False)
    # load_model re-attached the run's current representations: items created after training (out
    # of the ID vocabulary) still get theirs, as the real-time embedding table intends (Sec. 5)
    enc = space.encode(data)
    probs = predict(model, enc, np.arange(len(data)), progress=True, **where)
    table = pa.table({"request_id": pa.array(data.request_id), "item_id": pa.array(data.item_id),
                      "position": pa.array(data.position), "score": pa.array(probs.astype(np.float64))})
    write_table(table, out)
    return len(data)


def _mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray([v for v in values if v is not None and not np.isnan(v)], np.float64)
    if len(a) == 0:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def _aggregate(runs: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {k: _mean_std([r[k] for r in runs]) for k in ("auc", "gauc", "logloss")}
    out["groups"] = [{"group": g + 1, "n": runs[0]["groups"][g]["n"],
                      **{k: _mean_std([r["groups"][g][k] for r in runs])["mean"]
                         for k in ("auc", "gauc", "logloss")}}
                     for g in range(N_GROUPS)]
    out["new_items"] = {"n": runs[0]["new_items"]["n"],
                        "auc": _mean_std([r["new_items"]["auc"] for r in runs])["mean"],
                        "gauc": _mean_std([r["new_items"]["gauc"] for r in runs])["mean"]}
    out["seeds"] = [{k: r[k] for k in ("seed", "auc", "gauc", "logloss", "train_seconds")} for r in runs]
    if all("bias" in r for r in runs):
        from mmrank.report.bias import BIAS_KEYS

        out["bias"] = {k: _mean_std([r["bias"][k] for r in runs]) for k in BIAS_KEYS}
        out["bias"].update({k: runs[0]["bias"][k] for k in ("n_items", "low_n", "low_max")})
        for r, seed in zip(runs, out["seeds"]):
            seed["bias"] = {k: r["bias"][k] for k in BIAS_KEYS}
    return out


def _rel(v: float, base: float) -> float:
    return float((v - base) / abs(base)) if base else float("nan")


def compare(run: Path, *, seeds: int = 3, strategies: tuple[str, ...] = PAPER_STRATEGIES, make_epochs: int = 4,
            curve: tuple[int, ...] = (0, 1, 2, 4, 8), cfg: CtrConfig | None = None,
            train_cfg: TrainConfig | None = None, data: RunData | None = None, plots: bool = True,
            progress: bool = True, max_train_rows: int | None = None, epochs_curve: int = 0,
            add: bool = False, hardware: HardwareConfig | None = None) -> dict:
    """Train every strategy for ``seeds`` seeds, evaluate on the test split, write the comparison.

    ``max_train_rows`` trains on the latest rows of the training split only (the demo's budget).
    ``epochs_curve`` > 0 adds Figure 3: test AUC of the ID model and of the multimodal MAKE module
    alone after each of that many epochs (seed 0; the ID model is let past the one-epoch rule here).
    ``add`` keeps the rows of the run's existing comparison that ``strategies`` does not name (it must
    have been made with the same seeds, MAKE epochs, training and test rows and representations: see
    :func:`kept_rows`), so a new strategy joins a long comparison without training the others again.
    Everything trains and predicts on ``hardware``'s device (None: auto), recorded as ``device``."""
    run = Path(run)
    where = placement(hardware)             # resolved first: a device this machine lacks fails at once
    t0 = time.perf_counter()
    cfg = cfg or CtrConfig()
    tcfg = train_cfg or TrainConfig()
    multimodal = any(s != "id" for s in strategies) or bool(curve) or epochs_curve > 0  # MAKE needs them
    data = data or load_run(run, with_vectors=multimodal)
    data.limit_train(max_train_rows)
    ensure_codes(run, data, strategies)
    per: dict[str, list[dict]] = {s: [] for s in strategies}
    curve_res: dict[int, list[dict]] = {}
    # MAKE pre-trained once per seed on the pre-trained table; post+simtier+make and click-visual
    # pre-train their own, on their tables
    own_table = POST_STRATEGIES + CLICK_VISUAL_STRATEGIES
    shared_make = [s for s in strategies if CtrConfig(strategy=s).uses_make and s not in own_table]
    needs_make = bool(shared_make)
    post_data = None
    if any(s in POST_STRATEGIES for s in strategies):                  # on demand (issue 21)
        from mmrank.posttrain.stage import ensure_posttrain

        ensure_posttrain(run, progress=progress, hardware=hardware)
        post_data = data.with_posttrained(run)
    cv_data = None
    if any(s in CLICK_VISUAL_STRATEGIES for s in strategies):           # issue 22
        cv_data = with_click_visual(run, data)
    from mmrank.report.bias import RunBias   # evaluation code; None on a real log (no hidden appeal)

    exposure = RunBias.of_run(run, data.samples, data.enc.test_rows(), data.enc.train_rows())
    settings = {"model": cfg.model_dump(mode="json"), "train": tcfg.model_dump(mode="json"),
                "max_train_rows": max_train_rows}
    result: dict[str, Any] = {"oracle_auc": data.manifest.get("oracle_auc"),
                              "oracle_auc_test": data.manifest.get("oracle_auc_test"),
                              "seeds": seeds, "make_epochs": make_epochs,
                              "representations": data.vec_source,
                              **({"posttrain": post_data.vec_source} if post_data is not None else {}),
                              **({"click_visual": cv_data.vec_source} if cv_data is not None else {}),
                              "n_train": int(len(data.train_rows())),
                              "n_test": int((~data.samples.is_train).sum()), "settings": settings}
    kept, tables = kept_rows(run / "ctr" / "compare.json", result, strategies) if add else ({}, {})
    for seed in range(seeds):
        snapshots: dict[int, Any] = {}
        if needs_make or (seed == 0 and curve):
            make = new_make(data, cfg, seed)
            stops = set([make_epochs] + (list(curve) if seed == 0 else []))
            snapshots = {e: copy.deepcopy(make) for e in stops if e == 0}
            top = max(stops)
            if top > 0:
                pretrain_make(make, data.enc, data.train_rows(), epochs=top, cfg=tcfg.model_copy(update={"seed": seed}),
                              progress=progress, **where,
                              on_epoch_end=lambda e, m=make: snapshots.__setitem__(e, copy.deepcopy(m))
                              if e in stops else None)
        for s in strategies:
            mk = copy.deepcopy(snapshots[make_epochs]) if s in shared_make else None
            d = (post_data if s in POST_STRATEGIES else cv_data if s in CLICK_VISUAL_STRATEGIES
                 else data)   # post+simtier+make, click-visual: MAKE pre-trained on their own table
            model, info = fit_strategy(d, s, seed=seed, make_epochs=make_epochs, make=mk, cfg=cfg,
                                       train_cfg=tcfg, progress=progress, hardware=hardware)
            probs = predict(model, d.enc, **where)
            m = evaluate(d, probs)
            m.update({"seed": seed, "train_seconds": info["train"]["seconds"]})
            if exposure is not None:
                m["bias"] = exposure(probs)
            per[s].append(m)
            console.print(f"[ctr] seed {seed} {s:13s} auc {m['auc']:.4f} gauc {m['gauc']:.4f} "
                          f"logloss {m['logloss']:.4f} ({info['train']['seconds']:.0f}s)"
                          + (f" exposure bias {m['bias']['partial_spearman']:+.3f} low-imp gauc "
                             f"{m['bias']['low_gauc']:.4f}" if "bias" in m else ""))
            if seed == 0:
                save_model(model, d.space, run / "ctr" / s, train_cfg=tcfg,
                           extra=model_extra(d, s, info), inputs=lineage_of(d))
                (run / "ctr" / s / "metrics.json").write_text(json.dumps(json_ready(m), indent=2))
            if seed == 0 and s == "make" and make_epochs in curve:
                curve_res[make_epochs] = [m]
        if seed == 0:
            for e in curve:
                if e in curve_res:
                    continue
                model, info = fit_strategy(data, "make", seed=0, make_epochs=e,
                                           make=copy.deepcopy(snapshots[e]), cfg=cfg, train_cfg=tcfg,
                                           progress=progress, hardware=hardware)
                m = evaluate(data, predict(model, data.enc, **where))
                curve_res[e] = [m]
                console.print(f"[ctr] MAKE E={e}: auc {m['auc']:.4f} gauc {m['gauc']:.4f}")
    for s in strategies:
        result[s] = _aggregate(per[s])
    if kept:   # checked before any training (kept_rows above): the earlier rows first, then these
        console.print(f"[ctr] --add: kept {', '.join(kept)} from the earlier {run}/ctr/compare.json")
        rows = {s: result.pop(s) for s in strategies}
        result.update({"kept": list(kept), **kept, **rows})
        strategies = (*kept, *strategies)
        for key, source in tables.items():
            result.setdefault(key, source)
    if "id" in strategies:
        base = result["id"]
        for s in strategies:
            r = result[s]
            r["relative"] = {
                "auc": _rel(r["auc"]["mean"], base["auc"]["mean"]),
                "gauc": _rel(r["gauc"]["mean"], base["gauc"]["mean"]),
                "logloss": _rel(r["logloss"]["mean"], base["logloss"]["mean"]),
                "groups_auc": [_rel(g["auc"], b["auc"]) for g, b in zip(r["groups"], base["groups"])],
                "groups_gauc": [_rel(g["gauc"], b["gauc"]) for g, b in zip(r["groups"], base["groups"])],
                "groups_logloss": [_rel(g["logloss"], b["logloss"])
                                   for g, b in zip(r["groups"], base["groups"])],
                "new_items_auc": _rel(r["new_items"]["auc"], base["new_items"]["auc"]),
                "new_items_gauc": _rel(r["new_items"]["gauc"], base["new_items"]["gauc"]),
            }
    if curve_res:
        result["make_epochs_curve"] = [{"epochs": e, "auc": curve_res[e][0]["auc"],
                                        "gauc": curve_res[e][0]["gauc"],
                                        "logloss": curve_res[e][0]["logloss"]} for e in sorted(curve_res)]
    if epochs_curve > 0:
        result["epochs_curve"] = id_vs_multimodal_epochs(data, cfg, tcfg, epochs_curve, progress,
                                                         hardware=hardware)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["device"] = describe(where["device"])
    out = run / "ctr"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(json_ready(result), indent=2))
    (out / "compare.md").write_text(markdown_table(result, strategies))
    if plots:
        from mmrank.report.plots import plot_ctr_compare

        result["plots"] = [str(p) for p in plot_ctr_compare(result, strategies, run / "report" / "plots")]
        (out / "compare.json").write_text(json.dumps(json_ready(result), indent=2))
    return result


# What must match for `ctr compare --add` to put its rows beside an earlier comparison's.
SAME_COMPARISON = ("seeds", "make_epochs", "n_train", "n_test", "representations", "settings")


# The tables some strategies read instead of the run's own: kept rows bring the name of theirs along.
OWN_TABLES = {"posttrain": POST_STRATEGIES, "click_visual": CLICK_VISUAL_STRATEGIES}


def kept_rows(path: Path, result: dict[str, Any],
              strategies: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """The rows of the comparison at ``path`` that ``strategies`` does not name, in their order, without
    their ``relative`` block (it is recomputed against the merged ``id``), and the names of the own
    tables those rows read (:data:`OWN_TABLES`). Raises when it was made otherwise (any of
    :data:`SAME_COMPARISON` differs; a file older than ``settings`` is compared on the other keys). No
    file: nothing kept."""
    if not path.exists():
        return {}, {}
    old = json.loads(path.read_text())
    diff = [k for k in SAME_COMPARISON if k in old and old[k] != result.get(k)]
    if diff:
        raise ConfigError(f"--add: {path} was made with other {', '.join(diff)} "
                          f"({'; '.join(f'{k}={old[k]!r}' for k in diff)}); rerun without --add")
    kept = {k: {f: v for f, v in old[k].items() if f != "relative"} for k in _strategy_rows(old)
            if k not in strategies}
    return kept, {key: old[key] for key, users in OWN_TABLES.items()
                  if old.get(key) and any(k in users for k in kept)}


def _strategy_rows(comp: dict[str, Any]) -> list[str]:
    return [k for k, v in comp.items() if isinstance(v, dict) and "gauc" in v and "auc" in v]


def markdown_table(result: dict, strategies: tuple[str, ...] = PAPER_STRATEGIES) -> str:
    """Table 3 analogue in markdown (mean ± std over seeds, relative change against ``id``)."""
    oracle = result.get("oracle_auc")
    oracle_text = f"oracle AUC {oracle:.4f}" if oracle is not None else "no oracle (logged data)"
    lines = [f"CTR strategies ({result['seeds']} seed(s); {oracle_text}; "
             f"representations: {result.get('representations')}"
             + (f"; post-trained: {result['posttrain']}" if result.get("posttrain") else "")
             + (f"; click-visual: {result['click_visual']}" if result.get("click_visual") else "") + ")", "",
             "| strategy | AUC | GAUC | LogLoss | ΔAUC | ΔGAUC | ΔAUC group 1 | ΔAUC group 8 | ΔAUC new "
             "| ΔGAUC group 1 | ΔGAUC group 8 | ΔGAUC new |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in strategies:
        r = result[s]
        rel = r.get("relative", {})

        def pct(x: Any) -> str:
            return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:+.2f}%"

        g = rel.get("groups_gauc", [None] * N_GROUPS)
        a = rel.get("groups_auc", [None] * N_GROUPS)
        lines.append(f"| {s} | {r['auc']['mean']:.4f} ± {r['auc']['std']:.4f} | {r['gauc']['mean']:.4f} ± "
                     f"{r['gauc']['std']:.4f} | {r['logloss']['mean']:.4f} ± {r['logloss']['std']:.4f} | "
                     f"{pct(rel.get('auc'))} | {pct(rel.get('gauc'))} | {pct(a[0])} | {pct(a[-1])} | "
                     f"{pct(rel.get('new_items_auc'))} | {pct(g[0])} | {pct(g[-1])} | "
                     f"{pct(rel.get('new_items_gauc'))} |")
    if "id" in strategies:
        lines += ["", "LogLoss change vs id by item-frequency group, G1 rarest (Figure 6b; negative is better):",
                  "", "| strategy | " + " | ".join(f"G{g}" for g in range(1, N_GROUPS + 1)) + " |",
                  "|---|" + "---:|" * N_GROUPS]
        for s in strategies:
            if s == "id":
                continue
            vals = result[s].get("relative", {}).get("groups_logloss", [None] * N_GROUPS)
            lines.append(f"| {s} | " + " | ".join(
                "—" if v is None or np.isnan(v) else f"{100 * v:+.2f}%" for v in vals) + " |")
    if any("bias" in result[s] for s in strategies):
        lines += ["", "Exposure bias (simulated behaviour; measured by evaluation code against the items' "
                  "true appeal, which training never sees): Spearman of the mean test score per item with its training impressions, partial "
                  "on true appeal (and within appeal deciles, averaged; and raw), partial on the item's mean "
                  "true click probability over its test impressions (true CTR); GAUC on the test impressions "
                  "of the bottom quartile of items by training impressions:", "",
                  "| strategy | partial Spearman (appeal) | within appeal deciles | raw Spearman | "
                  "partial Spearman (true CTR) | GAUC low-impression |", "|---|---:|---:|---:|---:|---:|"]
        oracle_bias = None
        for s in strategies:
            b = result[s].get("bias")
            if b:
                oracle_bias = b["oracle_partial_spearman"]["mean"]
                lines.append(f"| {s} | " + " | ".join(
                    "—" if b[k]["mean"] is None or np.isnan(b[k]["mean"]) else
                    f"{b[k]['mean']:+.3f} ± {b[k]['std']:.3f}" if k != "low_gauc"
                    else f"{b[k]['mean']:.4f} ± {b[k]['std']:.4f}" for k in
                    ("partial_spearman", "spearman_within_deciles", "spearman", "partial_spearman_true_ctr",
                     "low_gauc")) + " |")
        if oracle_bias is not None and not np.isnan(oracle_bias):
            lines += ["", f"Reference: scoring each impression with its true click probability gives "
                      f"{oracle_bias:+.3f} in the first column (the simulated market's own exposure-CTR "
                      "relation at equal appeal)."]
    if "make_epochs_curve" in result:
        lines += ["", "MAKE pre-training epochs (Figure 6c): "
                  + ", ".join(f"E={c['epochs']}: GAUC {c['gauc']:.4f}" for c in result["make_epochs_curve"])]
    if "epochs_curve" in result:
        lines += ["", "Test AUC over training epochs (Figure 3; seed 0): "
                  + ", ".join(f"E={c['epochs']}: id {c['id_auc']:.4f} / multimodal {c['multimodal_auc']:.4f}"
                              for c in result["epochs_curve"])]
    return "\n".join(lines) + "\n"


def id_vs_multimodal_epochs(data: RunData, cfg: CtrConfig, tcfg: TrainConfig, epochs: int,
                            progress: bool = True, *, hardware: HardwareConfig | None = None) -> list[dict]:
    """Figure 3: test AUC after each epoch of the ID model (past the one-epoch rule) and of the
    multimodal model (the MAKE module alone: representations only, no ID parameter)."""
    where = placement(hardware)
    rows: dict[int, dict] = {e: {"epochs": e} for e in range(1, epochs + 1)}
    model = build_model(data, CtrConfig.model_validate({**cfg.model_dump(), "strategy": "id"}))
    trainer_train(model, data.enc, data.train_rows(), id_epochs=epochs, allow_id_multi_epoch=True,
                  cfg=tcfg, progress=progress, **where,
                  on_epoch_end=lambda e: rows[e].__setitem__("id_auc",
                                                             auc_of(data, predict(model, data.enc, **where))))
    make = new_make(data, cfg, tcfg.seed)
    pretrain_make(make, data.enc, data.train_rows(), epochs=epochs, cfg=tcfg, progress=progress, **where,
                  on_epoch_end=lambda e: rows[e].__setitem__("multimodal_auc",
                                                             auc_of(data, predict(make, data.enc, **where))))
    for e, r in rows.items():
        console.print(f"[ctr] epoch {e}: id auc {r['id_auc']:.4f}  multimodal auc {r['multimodal_auc']:.4f}")
    return list(rows.values())


def auc_of(data: RunData, probs: np.ndarray) -> float:
    from mmrank.eval import auc

    return float(auc(data.samples.label[data.enc.test_rows()].astype(np.int64), probs))


def demo_stage(run: Path, size: str, hardware: HardwareConfig | None = None) -> dict:
    """The CTR stage of ``mmrank demo``: a one-seed comparison of the six strategies on the run.

    Returns the headline figures: GAUC/AUC of each strategy, relative GAUC change against ``id``
    overall, on the rarest item group and on new items, the MAKE epochs curve, and ``oracle_auc``.
    """
    from mmrank import threads

    if size not in DEMO:
        raise ConfigError(f"size: expected one of {', '.join(DEMO)}, got {size!r}")
    threads.configure(min(2, threads.get()))
    r = compare(Path(run), seeds=1, progress=False, hardware=hardware, **DEMO[size])
    out = {"oracle_auc": r.get("oracle_auc"), "representations": r.get("representations"),
           "seconds": r.get("seconds"), "plots": r.get("plots", [])}
    for s in PAPER_STRATEGIES:
        rel = r[s].get("relative", {})
        out[s] = {"auc": r[s]["auc"]["mean"], "gauc": r[s]["gauc"]["mean"],
                  "logloss": r[s]["logloss"]["mean"], "rel_gauc": rel.get("gauc"),
                  "rel_gauc_group1": (rel.get("groups_gauc") or [None])[0],
                  "rel_gauc_group8": (rel.get("groups_gauc") or [None])[-1],
                  "rel_gauc_new_items": rel.get("new_items_gauc")}
    out["make_epochs_curve"] = r.get("make_epochs_curve")
    return out
