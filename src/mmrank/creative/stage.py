"""The creative stages as Python functions (the CLI is a thin shell over these).

- :func:`generate`: creatives, their hidden appeal and the creative log of a market run.
- :func:`compare`: train the selector with several seeds and evaluate default, logged, random,
  selector and oracle choices with the evaluator; writes ``R/creative/compare.{json,md}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.creative.config import CreativeConfig
from mmrank.creative.market import generate_creatives
from mmrank.creative.selector import NAMES, Creatives, Selector, explain, user_context, words
from mmrank.errors import MMRankError


def generate(cfg: CreativeConfig, run: str | Path) -> dict:
    """``mmrank creative generate``: see :func:`mmrank.creative.market.generate_creatives`."""
    return generate_creatives(cfg, run)


def load_log(run: str | Path):
    """``R/data/creative_log.parquet`` as a DataFrame (checked: propensities of each row sum to 1)."""
    import pyarrow.parquet as pq

    from mmrank.errors import DataError

    path = Path(run) / "data" / "creative_log.parquet"
    if not path.exists():
        raise DataError("no creative log here (run `mmrank creative generate` first)", file=str(path))
    log = pq.read_table(path).to_pandas()
    sums = np.array([float(np.sum(p)) for p in log["propensities"]])
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-6)
    if len(bad):
        raise DataError(f"propensities sum to {sums[bad[0]]:.6f}, not 1", file=str(path), row=int(bad[0]),
                        column="propensities")
    return log


@dataclass
class Prepared:
    """The log, the creatives and every row's point-in-time user context (all from ``R/data/``)."""

    log: object
    creatives: Creatives
    rows: np.ndarray        # each log row's item row in ``creatives``
    alt: np.ndarray
    n: np.ndarray
    n_regions: int
    history: int


def prepare(cfg: CreativeConfig, run: str | Path) -> Prepared:
    """Read ``R/data/creative_log.parquet`` and ``R/data/creatives.parquet``; compute the user context.
    Reads nothing under ``R/truth/``."""
    import json

    log = load_log(run)
    cr = Creatives.load(run)
    rows = cr.rows(log["item_id"].to_numpy())
    alt, n = user_context(log, cr.attr_by_creative, cfg.history)
    users = Path(run) / "data" / "manifest.json"
    n_regions = int(log["region"].max()) + 1
    if users.exists():
        n_regions = max(n_regions, int(json.loads(users.read_text()).get("n_regions", n_regions)))
    return Prepared(log, cr, rows, alt, n, n_regions, cfg.history)


def train_selector(cfg: CreativeConfig, run: str | Path, seed: int = 0,
                   prepared: Prepared | None = None, context: bool = True,
                   device: Any = None) -> Selector:
    """Fit the selector on the log's ``train`` rows (IPW by the logged propensities). Reads only
    ``R/data/``. ``context=False``: without the user context (an ablation: region and attributes only).
    ``device``: a torch device to fit on (None: the CPU)."""
    p = prepared or prepare(cfg, run)
    tr = (p.log["split"] == "train").to_numpy()
    shown = p.log["creative_id"].to_numpy()[tr]
    alt, n = (p.alt[tr], p.n[tr]) if context else (np.zeros_like(p.alt[tr]), np.zeros_like(p.n[tr]))
    return Selector.fit(p.creatives.attr_by_creative[shown], p.log["region"].to_numpy()[tr], alt, n,
                        p.log["click"].to_numpy()[tr], p.log["propensity"].to_numpy()[tr], cfg,
                        seed=seed, n_regions=p.n_regions, device=device)


def explain_row(sel: Selector, p: Prepared, i: int, k: int) -> str:
    """The explanation of choosing creative ``k`` for log row ``i``."""
    cr = p.creatives
    r = p.rows[i]
    log = p.log
    user, ts = log["user_id"].iloc[i], log["ts"].iloc[i]
    past = log[(log["user_id"] == user) & (log["ts"] < ts) & (log["click"] == 1)].sort_values("ts",
                                                                                             kind="stable")
    clicks = [words(cr.attr_by_creative[c]) for c in past["creative_id"].to_numpy()[-p.history:]]
    contrib = sel.contributions(cr.attrs[r][None], np.array([log["region"].iloc[i]]), p.alt[i][None],
                                p.n[i][None])[0]
    gain = {a: float(contrib[k, j] - contrib[0, j]) for j, a in enumerate(NAMES)}
    return explain(words(cr.attrs[r, k]), words(cr.attrs[r, 0]),
                   {"clicks": clicks, "region": int(log["region"].iloc[i])}, gain)


def compare(cfg: CreativeConfig, run: str | Path, seeds: int = 3, *, hardware: Any = None) -> dict:
    """Expected CTR and purchases over the log's test impressions for the default creative, the logging
    policy, uniform random, the selector (mean and std over ``seeds`` training seeds) and the oracle
    (each impression's best creative by the hidden truth); writes ``R/creative/compare.{json,md}`` and
    the seed-0 selector to ``R/creative/selector.json``. ``hardware``
    (:class:`mmrank.device.HardwareConfig`; None: auto): where the selectors are fitted."""
    import json

    from mmrank.creative.evaluate import CreativeTruth

    from mmrank.device import HardwareConfig, describe, resolve_device

    dev = resolve_device((hardware or HardwareConfig()).device)
    run = Path(run)
    p = prepare(cfg, run)
    te = np.flatnonzero((p.log["split"] == "test").to_numpy())
    if not len(te):
        raise MMRankError(f"{run}/data/creative_log.parquet: no test impressions")
    sels = [train_selector(cfg, run, seed=s, prepared=p, device=dev) for s in range(seeds)]
    test = p.log.iloc[te]
    cids = p.creatives.creative_ids[p.rows[te]]                      # (T, K)
    attrs = p.creatives.attrs[p.rows[te]]
    reg, alt, n = test["region"].to_numpy(), p.alt[te], p.n[te]
    picks = [s.choose(attrs, reg, alt, n) for s in sels]
    plain = [train_selector(cfg, run, seed=s, prepared=p, context=False, device=dev) for s in range(seeds)]
    plain_picks = [s.choose(attrs, reg, np.zeros_like(alt), np.zeros_like(n)) for s in plain]
    # --- evaluation: the only part that reads R/truth/ ---
    truth = CreativeTruth(run)
    pc, pp = truth.probabilities(test, cids)
    prop = np.stack(test["propensities"].to_numpy())
    k = cids.shape[1]

    def policy(w: np.ndarray) -> dict[str, float]:
        return {"ctr": float((pc * w).sum(1).mean()), "purchases": float((pp * w).sum(1).mean())}

    one = lambda idx: np.eye(k)[idx]                                 # noqa: E731
    rows = {"default": policy(one(np.zeros(len(te), np.int64))), "logged": policy(prop),
            "random": policy(np.full((len(te), k), 1.0 / k))}
    per_seed = [policy(one(pk)) for pk in picks]
    for name, runs in (("selector (no user context)", [policy(one(pk)) for pk in plain_picks]),
                       ("selector", per_seed)):
        rows[name] = {m: float(np.mean([s[m] for s in runs])) for m in ("ctr", "purchases")}
        rows[name].update({f"{m}_std": float(np.std([s[m] for s in runs])) for m in ("ctr", "purchases")})
    rows["oracle"] = policy(one(np.argmax(pc, axis=1)))
    gain = rows["oracle"]["ctr"] - rows["default"]["ctr"]
    share = (rows["selector"]["ctr"] - rows["default"]["ctr"]) / gain if gain > 0 else None
    chosen = picks[0]
    changed = np.flatnonzero(chosen != 0)
    examples = []
    for j in changed[:3]:
        i = int(te[j])
        examples.append({"impression_id": int(p.log["impression_id"].iloc[i]),
                         "item_id": int(p.log["item_id"].iloc[i]),
                         "chosen": int(cids[j, chosen[j]]), "default": int(cids[j, 0]),
                         "reason": explain_row(sels[0], p, i, int(chosen[j]))})
    out = {"run": str(run), "seeds": seeds, "device": describe(dev), "test_impressions": int(len(te)),
           "train_impressions": int(len(p.log) - len(te)), "per_item": int(k),
           "exploration": float(prop[0, 1:].sum()) if len(prop) else None,
           "policies": rows, "selector_per_seed": per_seed, "selector_share_of_oracle_gain": share,
           "selector_changed_share": float(np.mean(chosen != 0)), "examples": examples,
           "note": "SIMULATED market: creative effects and clicks are drawn by `mmrank creative generate`; "
                   "expected values are computed from the hidden truth. Purchases assume a creative scales "
                   "P(purchase) as it scales P(click). Selector seeds vary its initialisation and minibatch "
                   "order on one log. 'selector (no user context)' is an ablation: the same model trained "
                   "and applied without the user's recent clicks."}
    d = run / "creative"
    d.mkdir(parents=True, exist_ok=True)
    sels[0].save(d / "selector.json")
    (d / "compare.json").write_text(json.dumps(out, indent=2) + "\n")
    (d / "compare.md").write_text(render_md(out))
    return out


def render_md(out: dict) -> str:
    """The comparison as a Markdown table."""
    lines = [f"# Creative selection on {out['run']} (simulated)", "",
             f"{out['test_impressions']} test impressions (the latest by time), {out['per_item']} creatives "
             f"per item, logging exploration {out['exploration']:.2f} (assumed). Selector: mean ± std over "
             f"{out['seeds']} training seeds.", "",
             "| policy | expected CTR | expected purchases / impression |", "|---|---:|---:|"]
    for name, r in out["policies"].items():
        if "ctr_std" in r:
            lines.append(f"| {name} | {r['ctr']:.5f} ± {r['ctr_std']:.5f} | {r['purchases']:.5f} ± "
                         f"{r['purchases_std']:.5f} |")
        else:
            lines.append(f"| {name} | {r['ctr']:.5f} | {r['purchases']:.5f} |")
    share = out["selector_share_of_oracle_gain"]
    lines += ["", "Selector's share of the oracle's CTR gain over the default: "
              + (f"{100 * share:.1f}%" if share is not None else "n/a (the oracle gains nothing)")
              + f"; it changes the creative on {100 * out['selector_changed_share']:.1f}% of impressions.",
              ""]
    if out["examples"]:
        lines += ["Example explanations:", ""]
        lines += [f"- item {e['item_id']}, creative {e['chosen']} over default {e['default']}: {e['reason']}"
                  for e in out["examples"]]
        lines.append("")
    lines += [out["note"], ""]
    return "\n".join(lines)
