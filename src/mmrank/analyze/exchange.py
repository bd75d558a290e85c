"""`mmrank analyze exchange-rate`: MOON's exchange rate of the pre-training metrics (CIKM'24 Figure 6a).

For each encoder checkpoint (reused from ``R/pretrain/`` or trained here on the cached features:
fewer epochs, a smaller width, another queue size, a share of the pairs) the intermediate metrics
(Acc@1 / Acc@5 of image and text queries, and of image+text queries where the run has them) and the
downstream gain ``GAUC(simtier+make) - GAUC(id)`` on the CTR test split, with the same CTR seeds for
every checkpoint (the ID model does not depend on the checkpoint: it is trained once per seed). Then,
per metric, the OLS slope of gain on metric with a bootstrap 95% interval over checkpoints and the
Spearman rank correlation (:mod:`mmrank.analyze.fit`), and the metric with the best exchange rate.

Every finished checkpoint and ID model is a point file under ``R/analysis/exchange_rate/points/``
(:class:`mmrank.analyze.points.PointBook`): a killed run resumes from them. Writes
``R/analysis/exchange_rate.json`` and ``exchange_rate.png``. Behaviour is simulated on a synthetic
market.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mmrank.analyze.config import AnalyzeConfig
from mmrank.analyze.fit import best_metric, exchange_rate
from mmrank.analyze.points import PointBook, write_result
from mmrank.errors import ConfigError

console = Console(stderr=True)
METRICS = [f"acc@{n}.{m}" for n in (1, 5) for m in ("image", "text", "both")]


def progress() -> Progress:
    """The analyses' progress bar over points (the trainers' own bars show inside it)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def checkpoint_names(run: Path, specs: list[str]) -> list[str]:
    """The checkpoints ``specs`` name, in order, without repeats: ``reuse`` expands to every encoder
    directory under ``R/pretrain/`` (``<variant>`` and ``<variant>.seed<S>``)."""
    out: list[str] = []
    for s in specs:
        if s == "reuse":
            d = Path(run) / "pretrain"
            found = sorted(p.name for p in d.iterdir() if (p / "version.txt").exists()) if d.exists() else []
            out += [n for n in found if n not in out]
        elif s not in out:
            out.append(s)
    return out


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``{"acc@1": {"image": x, ...}, ...}`` -> ``{"acc@1.image": x, ...}`` (None values left out)."""
    out = {}
    for n in (1, 5):
        for m, v in (metrics.get(f"acc@{n}") or {}).items():
            if v is not None:
                out[f"acc@{n}.{m}"] = float(v)
    return out


def exchange_rate_analysis(run: str | Path, cfg: AnalyzeConfig | None = None, *,
                           hardware: Any = None) -> dict[str, Any]:
    """Run (or resume) the exchange-rate analysis on ``run``; returns what ``exchange_rate.json`` holds.
    ``hardware`` (:class:`mmrank.device.HardwareConfig`; None: auto): where the models train."""
    from mmrank.analyze.bench import Bench, parse_point

    run = Path(run)
    cfg = cfg or AnalyzeConfig()
    t0 = time.time()
    names = checkpoint_names(run, cfg.points)
    plan: list[tuple[str, str, dict[str, Any]]] = []
    for n in names:
        base = n.split(".seed")[0]
        if "@" not in n and (run / "pretrain" / n / "version.txt").exists():
            plan.append((n, "reuse", {}))
        else:
            variant, mods = parse_point(base if "@" not in n else n)
            plan.append((n, "train", mods))
    if len(plan) < 2:
        raise ConfigError(f"exchange rate: {len(plan)} checkpoint(s) ({', '.join(names) or 'none'}); need "
                          f"at least 2 (5 or more for a meaningful slope): add --points")
    bench = Bench(run, cfg, hardware=hardware)
    book = PointBook(run / "analysis" / "exchange_rate")
    common = {"make_epochs": bench.make_epochs, "max_train_rows": bench.max_train_rows,
              "ctr_model": bench.ctr.model.model_dump(mode="json"),
              "ctr_train": bench.ctr.train.model_dump(mode="json")}
    ids: dict[int, dict[str, Any]] = {}
    points: list[dict[str, Any]] = []
    with progress() as bar:
        task = bar.add_task("exchange rate", total=cfg.seeds + len(plan))
        for seed in range(cfg.seeds):
            bar.update(task, description=f"exchange rate: id seed {seed}")
            ids[seed] = book.get(f"id-seed{seed}", {**common, "seed": seed},
                                 lambda s=seed: bench.downstream("id", s))
            bar.advance(task)
        for name, how, mods in plan:
            bar.update(task, description=f"exchange rate: {name}")
            spec = {**common, "checkpoint": name, "how": how, "seeds": cfg.seeds,
                    "pretrain": None if how == "reuse" else bench.variant_config(
                        parse_point(name)[0], mods).model_dump(mode="json")}
            if how == "reuse":
                spec["version"] = (run / "pretrain" / name / "version.txt").read_text().strip()

            def compute(name: str = name, how: str = how, mods: dict = mods) -> dict[str, Any]:
                enc = bench.reuse_encoder(f"pretrain/{name}") if how == "reuse" else \
                    bench.train_encoder(parse_point(name)[0], mods)
                per_seed = []
                for seed in range(cfg.seeds):
                    d = bench.downstream("simtier+make", seed, enc["vectors"], f"analysis:{name}")
                    per_seed.append({**d, "seed": seed})
                return {"metrics": flat_metrics(enc["metrics"]), "encoder_seconds": enc["seconds"],
                        "dim": int(enc["vectors"].shape[1]), "simtier+make": per_seed}
            r = book.get(name, spec, compute)
            gains = [s["gauc"] - ids[s["seed"]]["gauc"] for s in r["simtier+make"]]
            points.append({"checkpoint": name, "how": how, **r, "gain": float(np.mean(gains)),
                           "gain_per_seed": gains,
                           "rel_gain": float(np.mean([g / ids[s["seed"]]["gauc"]
                                                      for g, s in zip(gains, r["simtier+make"])]))})
            console.print(f"[analyze] {name:28s} acc@1 image {r['metrics'].get('acc@1.image', float('nan')):.4f} "
                          f"text {r['metrics'].get('acc@1.text', float('nan')):.4f}  gain "
                          f"{points[-1]['gain']:+.4f} GAUC")
            bar.advance(task)
    result = summarise(points, ids, cfg)
    from mmrank.device import describe

    result.update(run=str(run), seconds=round(time.time() - t0, 1), device=describe(bench.device),
                  computed=book.computed, reused=book.reused, settings=common,
                  note="behaviour is simulated (synthetic market); gain = GAUC(simtier+make) - GAUC(id) "
                       "on the CTR test split, mean over the same seeds for every checkpoint")
    return write_result(run, "exchange_rate", result, plot_exchange_rate)


def summarise(points: list[dict[str, Any]], ids: dict[int, dict[str, Any]],
              cfg: AnalyzeConfig) -> dict[str, Any]:
    """Per intermediate metric (those every checkpoint has): slope, interval, Spearman; the best."""
    gain = np.array([p["gain"] for p in points])
    rates: dict[str, dict[str, Any]] = {}
    for m in METRICS:
        if all(m in p["metrics"] for p in points):
            x = np.array([p["metrics"][m] for p in points])
            if np.ptp(x) > 0:
                rates[m] = exchange_rate(x, gain, cfg.n_boot, cfg.boot_seed)
    best, rule = best_metric(rates)
    return {"checkpoints": points, "id": {str(k): v for k, v in ids.items()}, "seeds": cfg.seeds,
            "exchange_rates": rates, "best_metric": best, "rule": rule}


def plot_exchange_rate(result: dict[str, Any], path: Path) -> Path:
    """Figure 6a: downstream gain against each intermediate metric, one panel per metric, with the
    OLS line (slope and Spearman in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = result["exchange_rates"]
    pts = result["checkpoints"]
    n = max(1, len(rates))
    cols = 2 if n == 4 else min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    gain = np.array([p["gain"] for p in pts]) * 100
    for ax, (m, r) in zip(axes.flat, rates.items()):
        x = np.array([p["metrics"][m] for p in pts])
        ax.scatter(x, gain, color="tab:blue", zorder=3)
        for xi, gi, p in zip(x, gain, pts):
            ax.annotate(p["checkpoint"], (xi, gi), fontsize=6, xytext=(3, 2), textcoords="offset points")
        xs = np.linspace(x.min(), x.max(), 20)
        ax.plot(xs, 100 * (r["intercept"] + r["slope"] * xs), color="tab:red")
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.2f}"
        star = " (best)" if m == result["best_metric"] else ""
        ax.set_title(f"{m}{star}\nslope {r['slope']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}], "
                     f"ρ {rho}", fontsize=8)
        ax.set_xlabel(m)
        ax.set_ylabel("GAUC gain vs id (points)")
        ax.axhline(0, color="grey", lw=0.5)
    for ax in list(axes.flat)[len(rates):]:
        ax.axis("off")
    fig.suptitle("Exchange rate: downstream gain vs pre-training metric (simulated behaviour)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
