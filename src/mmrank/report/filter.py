"""Evaluation code: how well the dynamic sample filter found the market's noisy pairs.

Training never reads ``R/truth/``; this module (reporting, not a training stage) does, through
:class:`mmrank.data.truth.Evaluator`, after the fact: each ``R/pretrain/<row>/dropped.json`` (the pairs the filter dropped, per epoch) is scored
against ``R/truth/noisy_pairs.parquet``, and each filtering row's Acc@1 is put beside the plain row's
(``scl``) from ``R/pretrain/compare_detail.json``. `mmrank report filter --run R`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmrank.durable import write_text
from mmrank.errors import MMRankError


def filter_report(run: str | Path) -> dict[str, Any]:
    """``{"rows": {dir: {"epochs": [{epoch, precision, recall, dropped, ...}], "all": {...}}},
    "noise_share": x, "acc@1": {row: {"image": .., "text": ..}}}``; written to
    ``R/pretrain/filter_report.json``."""
    from mmrank.data.truth import Evaluator

    run = Path(run)
    files = sorted((run / "pretrain").glob("*/dropped.json"))
    if not files:
        raise MMRankError(f"{run}/pretrain: no */dropped.json (train a row with the filter on: "
                          f"`mmrank pretrain compare --run {run} --variants scl,filter`)")
    ev = Evaluator(run)
    rows: dict[str, Any] = {}
    noise_share = None
    for f in files:
        d = json.loads(f.read_text())
        epochs = []
        union: set[int] = set()
        for e in d["epochs"]:
            union.update(e["pair_rows"])
            epochs.append({"epoch": e["epoch"], **ev.filter_precision(e["pair_rows"])})
        total = ev.filter_precision(sorted(union))
        noise_share = total["noise_share"]
        rows[f.parent.name] = {"epochs": epochs, "all": total}
    acc: dict[str, Any] = {}
    cpath = run / "pretrain" / "compare_detail.json"
    if cpath.exists():
        comp = json.loads(cpath.read_text()).get("variants", {})
        for name, r in comp.items():
            if isinstance(r, dict) and "acc@1" in r:
                acc[name] = {m: {"mean": r["acc@1"].get(m), "std": (r.get("std") or {}).get("acc@1", {}).get(m)}
                             for m in ("image", "text")}
    out = {"noise_share": noise_share, "rows": rows, "acc@1": acc,
           "note": "evaluation code: R/truth/noisy_pairs.parquet read after training, never by it"}
    write_text(run / "pretrain" / "filter_report.json", json.dumps(out, indent=1) + "\n")
    return out
