"""`mmrank demo`: every stage that exists, on the embedded default (the synthetic market).

Each stage exposes ``demo_stage(run: Path, size: str) -> dict`` returning its headline figures (and
optionally a ``"markdown"`` table). The demo runs them in pipeline order and writes
``run/report/results.json`` and ``run/report/results.md``.
"""

from __future__ import annotations

import importlib
import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mmrank.data.market import generate_market, market_config
from mmrank.report.html import write_html_report

# Pipeline order: representations are pre-trained, stored, then used by the ranking models.
STAGES = [
    ("pretrain", "mmrank.pretrain", "Contrastive pre-training (Acc@N, Table 2 analogue)"),
    ("store", "mmrank.store", "Embedding table, ANN index and new-item ingestion"),
    ("ctr", "mmrank.ctr.stage", "Multimodal representations in the CTR model (Table 3 analogue)"),
    ("rerank", "mmrank.rerank.stage", "Re-ranking search lists: ARMMT, SEQ+MD and baselines (simulated)"),
]


def _market_summary(man: dict[str, Any]) -> dict[str, Any]:
    keep = ("oracle_auc", "attainable_auc", "rates", "history_len", "top1pct_share", "columns_r2")
    return {"source": man["source"], "counts": man["counts"], "ctr": round(man["ctr"], 4),
            "oracle_auc": round(man["oracle_auc"], 4), "seconds": man.get("seconds"),
            "surfaces": {name: {k: s[k] for k in keep} for name, s in man.get("surfaces", {}).items()}}


def run_demo(out: str | Path, size: str = "small", seed: int = 0) -> dict[str, Any]:
    """Run the whole pipeline into ``out``; returns what results.json holds."""
    console = Console()
    out = Path(out)
    results: dict[str, Any] = {"size": size, "seed": seed, "simulated": True,
                               "machine": f"{platform.machine()}, {platform.python_version()}",
                               "stages": {}}
    started = time.perf_counter()
    console.rule(f"mmrank demo: synthetic market ({size})")
    man = generate_market(market_config(size=size, seed=seed), out)
    results["stages"]["market"] = _market_summary(man)
    for name, srf in man.get("surfaces", {}).items():
        console.print(f"market {name}: oracle AUC {srf['oracle_auc']:.4f}, attainable {srf['attainable_auc']:.4f}, "
                      f"rates {srf['rates']}, columns R^2 {srf['columns_r2']:.2f}")
    console.print(f"market: {man['counts']} ({man.get('seconds')} s)")
    for name, module, title in STAGES:
        try:
            stage = importlib.import_module(module).demo_stage
        except (ModuleNotFoundError, AttributeError) as err:
            if isinstance(err, ModuleNotFoundError) and not (err.name or "").startswith("mmrank"):
                raise
            results["stages"][name] = {"skipped": f"{module}.demo_stage is not available"}
            continue
        console.rule(title)
        t0 = time.perf_counter()
        res = stage(out, size)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results["stages"][name] = res
        console.print(f"{name}: done in {res['seconds']} s")
    results["seconds"] = round(time.perf_counter() - started, 1)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (report / "results.md").write_text(render_markdown(results))
    write_html_report(results, report, _flat)
    console.print(f"wrote {report / 'results.md'} and results.json in {results['seconds']} s")
    return results


def _flat(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        if k == "markdown":
            continue
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", round(v, 4) if isinstance(v, float) else v))
    return rows


def render_markdown(results: dict[str, Any]) -> str:
    lines = [f"# mmrank demo results (size {results['size']}, seed {results['seed']})", "",
             "All behaviour is **simulated** (the synthetic market); figures come from "
             "`mmrank demo --size " + results["size"] + "`.", ""]
    titles = {"market": "Synthetic market"} | {n: t for n, _, t in STAGES}
    for name, res in results["stages"].items():
        lines += [f"## {titles.get(name, name)}", ""]
        rows = _flat(res)
        if "markdown" in res:  # the table says the nested figures; list only the scalars beside it
            lines += [res["markdown"].rstrip(), ""]
            rows = [(k, v) for k, v in rows if not isinstance(res.get(k), dict) and "." not in k]
        lines += ["| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        lines.append("")
    lines.append(f"Total: {results['seconds']} s.")
    return "\n".join(lines) + "\n"
