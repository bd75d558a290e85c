"""PNG plots of the CTR comparison (matplotlib, Agg backend): Table 3 as bars, Figure 6b (relative
improvement per item-frequency group and on new items) and Figure 6c (MAKE pre-training epochs).

Example::

    >>> paths = plot_ctr_compare(json.load(open("runs/demo/ctr/compare.json")), STRATEGIES,
    ...                          Path("runs/demo/report/plots"))   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ctr_compare(result: dict, strategies: tuple[str, ...], out_dir: Path) -> list[Path]:
    """Write ``ctr_strategies.png``, ``ctr_frequency_groups.png`` and ``ctr_make_epochs.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("gauc", "auc")):
        means = [_f(result[s][key]["mean"]) for s in strategies]
        stds = [_f(result[s][key]["std"]) for s in strategies]
        ax.bar(range(len(strategies)), means, yerr=stds, color="#4C72B0", capsize=3)
        ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
        lo = np.nanmin(means) - 3 * (np.nanmax(stds) if stds else 0) - 0.005
        ax.set_ylim(lo, np.nanmax(means) + 0.005)
        ax.set_title(f"{key.upper()} (mean ± std over {result.get('seeds')} seed(s))")
        if key == "auc" and result.get("oracle_auc_test") is not None:
            ax.axhline(_f(result["oracle_auc_test"]), color="grey", ls="--", lw=1, label="oracle (test)")
            ax.legend(loc="lower right", fontsize=8)
    paths.append(_save(fig, out_dir / "ctr_strategies.png"))

    if "id" in strategies:
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
        mm = [s for s in strategies if s != "id"]
        width = 0.8 / max(len(mm), 1)
        for ax, key, label in ((axes[0], "gauc", "GAUC change vs id (%)"),
                               (axes[1], "logloss", "LogLoss change vs id (%, lower is better)")):
            x = np.arange(9 if key == "gauc" else 8)
            for i, s in enumerate(mm):
                rel = result[s].get("relative", {})
                vals = [_f(v) * 100 for v in rel.get(f"groups_{key}", [None] * 8)]
                if key == "gauc":
                    vals.append(_f(rel.get("new_items_gauc")) * 100)
                ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=s)
            ax.axhline(0, color="black", lw=0.8)
            ax.set_xticks(x, [f"G{g}" for g in range(1, 9)] + (["new"] if key == "gauc" else []))
            ax.set_ylabel(label)
        axes[0].set_title("By item-frequency group, G1 rarest, and new items (Fig. 6b)")
        axes[0].legend(fontsize=7, ncol=3)
        paths.append(_save(fig, out_dir / "ctr_frequency_groups.png"))

    if result.get("epochs_curve"):
        c = result["epochs_curve"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["epochs"] for r in c], [_f(r["id_auc"]) for r in c], "o-", label="ID model")
        ax.plot([r["epochs"] for r in c], [_f(r["multimodal_auc"]) for r in c], "s-",
                label="multimodal (MAKE alone)")
        ax.set_xlabel("training epochs")
        ax.set_ylabel("test AUC")
        ax.set_title("ID vs multimodal parameters over epochs (Fig. 3)")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / "ctr_epochs.png"))

    if result.get("make_epochs_curve"):
        c = result["make_epochs_curve"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["epochs"] for r in c], [_f(r["gauc"]) for r in c], "o-", label="make GAUC")
        if "id" in result:
            ax.axhline(_f(result["id"]["gauc"]["mean"]), color="grey", ls="--", lw=1, label="id GAUC")
        ax.set_xlabel("MAKE pre-training epochs E (0 = joint training)")
        ax.set_ylabel("GAUC")
        ax.set_title("MAKE epochs (Fig. 6c)")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / "ctr_make_epochs.png"))
    return paths
