"""`mmrank demo`: every stage, on the embedded default (the synthetic market).

Each stage's ``stage.py`` has ``demo_stage(run: Path, size: str) -> dict`` returning its headline
figures (and optionally a ``"markdown"`` table). The demo generates the market, runs the stages in
pipeline order and writes ``run/report/results.json``, ``results.md`` and ``report.html``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mmrank.ctr import stage as ctr_stage
from mmrank.data.market import generate_market, market_config
from mmrank.device import HardwareConfig, describe, resolve_device
from mmrank.pretrain import stage as pretrain_stage
from mmrank.report.html import write_html_report
from mmrank.report.tables import flatten, key_value_table
from mmrank.rerank import stage as rerank_stage
from mmrank.store import stage as store_stage

# Pipeline order: representations are pre-trained, stored, then used by the ranking models.
STAGES = [
    ("pretrain", pretrain_stage.demo_stage, "Contrastive pre-training (Acc@N, Table 2 analogue)"),
    ("store", store_stage.demo_stage, "Embedding table, ANN index and new-item ingestion"),
    ("ctr", ctr_stage.demo_stage, "Multimodal representations in the CTR model (Table 3 analogue)"),
    ("rerank", rerank_stage.demo_stage, "Re-ranking search lists: ARMMT, SEQ+MD and baselines (simulated)"),
]


def _market_summary(man: dict[str, Any]) -> dict[str, Any]:
    keep = ("oracle_auc", "attainable_auc", "rates", "history_len", "top1pct_share", "columns_r2")
    return {"source": man["source"], "counts": man["counts"], "ctr": round(man["ctr"], 4),
            "oracle_auc": round(man["oracle_auc"], 4), "seconds": man.get("seconds"),
            "surfaces": {name: {k: s[k] for k in keep} for name, s in man.get("surfaces", {}).items()}}


def run_demo(run: str | Path, size: str = "small", seed: int = 0,
             hardware: HardwareConfig | None = None) -> dict[str, Any]:
    """Run the whole pipeline into the run directory ``run``; returns what results.json holds.

    ``hardware``: where every stage trains and scores (None: ``HardwareConfig()``, auto)."""
    hw = hardware or HardwareConfig()
    device = resolve_device(hw.device)  # a device this machine lacks fails here, before any work
    console = Console()
    run = Path(run)
    results: dict[str, Any] = {"size": size, "seed": seed, "simulated": True,
                               "machine": f"{platform.machine()}, {platform.python_version()}",
                               "device": describe(device),
                               "stages": {}}
    started = time.perf_counter()
    console.rule(f"mmrank demo: synthetic market ({size})")
    man = generate_market(market_config(size=size, seed=seed), run)
    results["stages"]["market"] = _market_summary(man)
    for name, srf in man.get("surfaces", {}).items():
        console.print(f"market {name}: oracle AUC {srf['oracle_auc']:.4f}, attainable {srf['attainable_auc']:.4f}, "
                      f"rates {srf['rates']}, columns R^2 {srf['columns_r2']:.2f}")
    console.print(f"market: {man['counts']} ({man.get('seconds')} s)")
    for name, demo_stage, title in STAGES:
        console.rule(title)
        t0 = time.perf_counter()
        res = demo_stage(run, size, hardware=hw)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results["stages"][name] = res
        console.print(f"{name}: done in {res['seconds']} s")
    results["seconds"] = round(time.perf_counter() - started, 1)
    report = run / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (report / "results.md").write_text(render_markdown(results))
    write_html_report(results, report)
    console.print(f"wrote {report / 'results.md'} and results.json in {results['seconds']} s")
    return results


def render_markdown(results: dict[str, Any]) -> str:
    lines = [f"# mmrank demo results (size {results['size']}, seed {results['seed']})", "",
             "All behaviour is **simulated** (the synthetic market); figures come from "
             "`mmrank demo --size " + results["size"] + "`.", ""]
    titles = {"market": "Synthetic market"} | {n: t for n, _, t in STAGES}
    for name, res in results["stages"].items():
        lines += [f"## {titles.get(name, name)}", ""]
        rows = flatten(res)
        if "markdown" in res:  # the table says the nested figures; list only the scalars beside it
            lines += [res["markdown"].rstrip(), ""]
            rows = [(k, v) for k, v in rows if not isinstance(res.get(k), dict) and "." not in k]
        lines += key_value_table(rows) + [""]
    lines.append(f"Total: {results['seconds']} s.")
    return "\n".join(lines) + "\n"
