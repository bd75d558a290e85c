"""`mmrank analyze scaling`: MOON's scaling study on one run: Acc@1 (image, text queries) and the
downstream gain ``GAUC(simtier+make) - GAUC(id)`` against

* ``pairs``: the number of training pairs (seeded nested subsamples of the run's training pairs;
  Acc@N always on the run's full test pairs), plus the full pairs of each ``extra_runs`` market
  (larger `market generate` sizes, trained with this run's settings, measured on their own splits);
* ``K``: the MoCo queue size (the number of negatives);
* ``L``: the CTR behaviour length (the history the CTR model reads; the encoder is the run's, so its
  Acc@1 does not move on this axis and only the downstream curves are fitted).

Each curve gets a power law ``y = a x^b`` fitted on log axes with a residual-bootstrap 95% interval of
``b`` (:func:`mmrank.analyze.fit.fit_power_law`; a curve with a value <= 0 is not fitted, and says
so) and a saturation point (:func:`mmrank.analyze.fit.saturation`: the first x after which every
doubling gains less than the threshold). Points are resumable files under
``R/analysis/scaling/points/``; writes ``R/analysis/scaling.json`` and ``scaling.png``. Behaviour is
simulated on a synthetic market.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.analyze.config import AnalyzeConfig
from mmrank.analyze.exchange import flat_metrics, console, progress
from mmrank.analyze.fit import saturation, try_power_law
from mmrank.analyze.points import PointBook, write_result
from mmrank.errors import ConfigError

AXES = {"pairs": "training pairs", "K": "queue size K (negatives)", "L": "behaviour length L"}
CURVES = ("acc@1.image", "acc@1.text", "gain", "gauc")


def _check(cfg: AnalyzeConfig) -> None:
    for name, values in (("fractions", cfg.fractions), ("queue_sizes", cfg.queue_sizes),
                         ("history_lens", cfg.history_lens)):
        if len(set(values)) < 2:
            raise ConfigError(f"scaling: {name} needs at least 2 distinct values (4 or more for a fit), "
                              f"got {values}")
    if any(not 0 < f <= 1 for f in cfg.fractions):
        raise ConfigError(f"scaling: fractions must lie in (0, 1], got {cfg.fractions}")
    from mmrank.data.schemas import HISTORY_LEN

    if any(not 1 <= n <= HISTORY_LEN for n in cfg.history_lens):
        raise ConfigError(f"scaling: history_lens must lie in [1, {HISTORY_LEN}] (the stored history), "
                          f"got {cfg.history_lens}")


def scaling_analysis(run: str | Path, cfg: AnalyzeConfig | None = None, *,
                     hardware: Any = None) -> dict[str, Any]:
    """Run (or resume) the scaling analysis on ``run``; returns what ``scaling.json`` holds.
    ``hardware`` (:class:`mmrank.device.HardwareConfig`; None: auto): where the models train."""
    from mmrank.analyze.bench import Bench

    run = Path(run)
    cfg = cfg or AnalyzeConfig()
    _check(cfg)
    t0 = time.time()
    bench = Bench(run, cfg, hardware=hardware)
    book = PointBook(run / "analysis" / "scaling")
    common = {"make_epochs": bench.make_epochs, "max_train_rows": bench.max_train_rows, "seeds": cfg.seeds,
              "ctr_model": bench.ctr.model.model_dump(mode="json"),
              "ctr_train": bench.ctr.train.model_dump(mode="json")}
    memo: dict[str, dict[str, Any]] = {}  # one encoder per distinct (config, share) within this process

    def encoder(mods: dict[str, Any]) -> dict[str, Any]:
        key = json.dumps([bench.variant_config("scl", mods).model_dump(mode="json"), mods.get("fraction", 1.0)])
        if key not in memo:
            memo[key] = bench.train_encoder("scl", mods)
        return memo[key]

    def id_gauc(seed: int, L: int | None) -> dict[str, Any]:
        name = f"id-seed{seed}" + ("" if L is None else f"-L{L}")
        return book.get(name, {**common, "seed": seed, "history_len": L},
                        lambda: bench.downstream("id", seed, history_len=L))

    def measure(enc: dict[str, Any], L: int | None) -> dict[str, Any]:
        per = [bench.downstream("simtier+make", s, enc["vectors"], "analysis:scaling", history_len=L)
               for s in range(cfg.seeds)]
        return {"metrics": flat_metrics(enc["metrics"]), "n_train_pairs": enc.get("n_train_pairs"),
                "encoder_seconds": enc["seconds"], "simtier+make": per}

    plan: list[tuple[str, str, float, dict[str, Any]]] = []
    for f in sorted(set(cfg.fractions)):
        plan.append(("pairs", f"pairs-f{f:g}", f, {"fraction": f} if f < 1 else {}))
    for k in sorted(set(cfg.queue_sizes)):
        plan.append(("K", f"K-{k}", k, {"queue_size": k}))
    for L in sorted(set(cfg.history_lens)):
        plan.append(("L", f"L-{L}", L, {}))
    axes: dict[str, list[dict[str, Any]]] = {a: [] for a in AXES}
    with progress() as bar:
        task = bar.add_task("scaling", total=len(plan) + len(cfg.extra_runs))
        for i, other in enumerate(cfg.extra_runs):
            bar.update(task, description=f"scaling: pairs of {other}")
            axes["pairs"].append(extra_run_point(run, Path(other), i, cfg, book, common,
                                                 hardware=bench.hardware))
            bar.advance(task)
        for axis, name, x, mods in plan:
            bar.update(task, description=f"scaling: {name}")
            L = int(x) if axis == "L" else None
            ids = [id_gauc(s, L) for s in range(cfg.seeds)]
            spec = {**common, "axis": axis, "x": x,
                    "pretrain": bench.variant_config("scl", mods).model_dump(mode="json"),
                    "fraction": mods.get("fraction", 1.0), "history_len": L}
            r = book.get(name, spec, lambda mods=mods, L=L: measure(encoder(mods), L))
            gains = [s["gauc"] - i["gauc"] for s, i in zip(r["simtier+make"], ids)]
            xv = float(r["n_train_pairs"]) if axis == "pairs" else float(x)
            pt = {"name": name, "x": xv, **r["metrics"], "gain": float(np.mean(gains)),
                  "gauc": float(np.mean([s["gauc"] for s in r["simtier+make"]])),
                  "id_gauc": float(np.mean([i["gauc"] for i in ids])), "gain_per_seed": gains}
            if axis == "pairs":
                pt["fraction"] = x
            axes[axis].append(pt)
            console.print(f"[analyze] {name:12s} x={xv:g} acc@1 image {pt.get('acc@1.image', float('nan')):.4f} "
                          f"text {pt.get('acc@1.text', float('nan')):.4f} gain {pt['gain']:+.4f} GAUC")
            bar.advance(task)
    result: dict[str, Any] = {"axes": {}, "seeds": cfg.seeds,
                              "saturation_rule": (f"the first measured x after which every doubling of x gains "
                                                  f"less than {cfg.acc_threshold} Acc@1 (accuracy curves) or "
                                                  f"{cfg.gain_threshold} GAUC (gain and gauc curves); null: "
                                                  f"still gaining at the largest x"),
                              "fit": "y = a * x^b by least squares on log axes; 95% interval of b from a "
                                     "residual bootstrap (seeded); curves with a value <= 0 are not fitted"}
    for axis, pts in axes.items():
        pts.sort(key=lambda p: p["x"])
        x = np.array([p["x"] for p in pts])
        curves = {}
        for c in CURVES:
            if axis == "L" and c.startswith("acc@"):
                continue  # the encoder is the same at every L
            if not all(c in p for p in pts):
                continue
            y = np.array([p[c] for p in pts])
            th = cfg.acc_threshold if c.startswith("acc@") else cfg.gain_threshold
            curves[c] = {"power_law": try_power_law(x, y, n_boot=cfg.n_boot, seed=cfg.boot_seed),
                         "saturation": saturation(x, y, th)}
        result["axes"][axis] = {"label": AXES[axis], "points": pts, "curves": curves}
    from mmrank.device import describe

    result.update(run=str(run), seconds=round(time.time() - t0, 1), device=describe(bench.device),
                  computed=book.computed,
                  reused=book.reused, settings=common,
                  note="behaviour is simulated (synthetic market); L axis: the run's scl encoder "
                       "settings, only the CTR history length changes")
    return write_result(run, "scaling", result, plot_scaling)


def extra_run_point(run: Path, other: Path, i: int, cfg: AnalyzeConfig, book: PointBook,
                    common: dict[str, Any], hardware: Any = None) -> dict[str, Any]:
    """A pairs-axis point from another run (a larger market): SCL with ``run``'s settings on all of
    ``other``'s training pairs, Acc@1 on ``other``'s test pairs, the gain over an ID model trained on
    ``other``'s CTR samples with the same seeds (each market is measured on its own test splits)."""
    import re

    from mmrank.analyze.bench import Bench
    from mmrank.lineage import digest_inputs, encoder_inputs

    if not (other / "data" / "pairs.parquet").exists():
        raise ConfigError(f"--extra-run {other}: no {other}/data/pairs.parquet (run `mmrank market generate "
                          f"--run {other}` first)")
    name = f"pairs-run{i}-" + re.sub(r"[^A-Za-z0-9._+-]", "_", other.resolve().name)
    spec = {**common, "axis": "pairs", "run": str(other.resolve()),
            "data": digest_inputs(encoder_inputs(other))}

    def compute() -> dict[str, Any]:
        b = Bench(other, cfg, settings_from=run, hardware=hardware)
        enc = b.train_encoder("scl", {})
        ids = [b.downstream("id", s) for s in range(cfg.seeds)]
        per = [b.downstream("simtier+make", s, enc["vectors"], "analysis:scaling") for s in range(cfg.seeds)]
        return {"metrics": flat_metrics(enc["metrics"]), "n_train_pairs": enc["n_train_pairs"],
                "encoder_seconds": enc["seconds"], "simtier+make": per, "id": ids}

    r = book.get(name, spec, compute)
    gains = [s["gauc"] - i_["gauc"] for s, i_ in zip(r["simtier+make"], r["id"])]
    pt = {"name": name, "x": float(r["n_train_pairs"]), **r["metrics"], "gain": float(np.mean(gains)),
          "gauc": float(np.mean([s["gauc"] for s in r["simtier+make"]])),
          "id_gauc": float(np.mean([i_["gauc"] for i_ in r["id"]])), "gain_per_seed": gains,
          "run": str(other)}
    console.print(f"[analyze] {name} x={pt['x']:g} acc@1 image {pt.get('acc@1.image', float('nan')):.4f} "
                  f"gain {pt['gain']:+.4f} GAUC")
    return pt


def plot_scaling(result: dict[str, Any], path: Path) -> Path:
    """One row per axis: Acc@1 (image, text), the downstream gain and GAUC on log axes (a panel with a
    value <= 0 keeps a linear y axis), with the fitted power laws and saturation points (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.NullFormatter below)

    fig, axs = plt.subplots(len(AXES), 3, figsize=(13, 3.2 * len(AXES)), squeeze=False)
    for row, (axis, a) in enumerate(result["axes"].items()):
        pts = a["points"]
        x = np.array([p["x"] for p in pts])
        for col, group in enumerate((("acc@1.image", "acc@1.text"), ("gain",), ("gauc",))):
            ax = axs[row, col]
            for c in group:
                if c not in a["curves"]:
                    continue
                y = np.array([p[c] for p in pts])
                (line,) = ax.plot(x, y, "o", label=c)
                pl = a["curves"][c]["power_law"]
                if pl.get("exponent") is not None:
                    xs = np.geomspace(x.min(), x.max(), 30)
                    ax.plot(xs, pl["a"] * xs ** pl["exponent"], "-", color=line.get_color(),
                            label=f"b={pl['exponent']:.3f} [{pl['ci'][0]:.3f}, {pl['ci'][1]:.3f}]")
                sat = a["curves"][c]["saturation"]["x"]
                if sat is not None:
                    ax.axvline(sat, color=line.get_color(), ls=":", lw=1)
            if col == 2:  # the ID model's GAUC beside simtier+make's (it moves on the L axis)
                ax.plot(x, [p["id_gauc"] for p in pts], "x", color="grey", label="id (GAUC)")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if all(p.get(c, 0) > 0 for c in group for p in pts if c in a["curves"]) and a["curves"]:
                ax.set_yscale("log")
            ax.set_xlabel(a["label"])
            ax.set_title(f"{('Acc@1', 'GAUC gain vs id', 'GAUC simtier+make')[col]} vs {a['label']}", fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
            else:
                ax.text(0.5, 0.5, "constant on this axis" if axis == "L" else "no data",
                        ha="center", transform=ax.transAxes, fontsize=8)
    fig.suptitle("Scaling (simulated behaviour)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
