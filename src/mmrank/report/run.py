"""`mmrank report --run R`: what every stage of a run produced, on one page, labelled with its source.

Reads what exists (the data manifest and profile, ``R/encoder/metrics.json`` or
``R/pretrain/compare.json``, ``R/embeddings``, ``R/ctr/compare.json`` or
``R/ctr/<strategy>/metrics.json``) and writes ``R/report/results.json``, ``results.md`` and
``report.html``. A stage that has not run is listed as such. The heading says where the data came from:
simulated (the synthetic market, or behaviour simulated on a real catalog) or imported; every
substitute the import made (sampled negatives, item-to-item pairs, grey images...) is printed beside
the results it affects, and the data profile's warnings (``R/data/profile.json``, written by the import
and ``mmrank data profile``: figures too small to measure) beside them, its key figures in the data
section.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from mmrank.errors import MMRankError
from mmrank.report.html import write_html_report
from mmrank.report.tables import flatten, key_value_table


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pretrain(run: Path) -> dict[str, Any]:
    table = _load(run / "pretrain" / "compare.json")
    if table:
        from mmrank.pretrain.stage import markdown_table

        return {"variants": table, "markdown": markdown_table(table)}
    m = _load(run / "encoder" / "metrics.json")
    if not m:
        return {"skipped": "no R/encoder/metrics.json (run `mmrank pretrain --run R`)"}
    from mmrank.pretrain.stage import markdown_table

    return {"variant": m.get("variant"), "version": m.get("version"), "n_test": m.get("n_test"),
            "markdown": markdown_table({m.get("variant", "encoder"): m})}


def _embed(run: Path) -> dict[str, Any]:
    root = run / "embeddings"
    if not (root / "CURRENT").exists():
        return {"skipped": "no R/embeddings (run `mmrank embed --run R`)"}
    from mmrank.store.backends import open_table

    t = open_table(root)
    return {"version": t.version, "items": len(t), "dim": t.dim}


def _ctr(run: Path) -> dict[str, Any]:
    from mmrank.ctr.models import STRATEGIES

    comp = _load(run / "ctr" / "compare.json")
    rows = []
    if comp:
        for s in STRATEGIES:
            if s in comp:
                r = comp[s]
                rows.append((s, r["auc"]["mean"], r["gauc"]["mean"], r["logloss"]["mean"],
                             (r.get("relative") or {}).get("gauc")))
    else:
        for s in STRATEGIES:
            m = _load(run / "ctr" / s / "metrics.json")
            if m:
                rows.append((s, m.get("auc"), m.get("gauc"), m.get("logloss"), None))
        if rows and rows[0][0] == "id":
            base = rows[0][2]
            rows = [(s, a, g, ll, (g - base) / abs(base) if g is not None and base else None)
                    for s, a, g, ll, _ in rows]
    if not rows:
        return {"skipped": "no CTR results (run `mmrank ctr train` or `mmrank ctr compare`)"}

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    md = ["| strategy | AUC | GAUC | LogLoss | GAUC vs ID |", "|---|---:|---:|---:|---:|"]
    md += [f"| {s} | {f(a)} | {f(g)} | {f(ll)} | {'n/a' if r is None else f'{100 * r:+.2f}%'} |"
           for s, a, g, ll, r in rows]
    out: dict[str, Any] = {"markdown": "\n".join(md) + "\n",
                           "strategies": {s: {"auc": a, "gauc": g, "logloss": ll} for s, a, g, ll, _ in rows}}
    if comp:
        out.update(seeds=comp.get("seeds"), n_train=comp.get("n_train"), n_test=comp.get("n_test"),
                   representations=comp.get("representations"))
    return out


def _profile(run: Path) -> dict[str, Any] | None:
    """The key figures and warnings of ``R/data/profile.json`` (None when there is none)."""
    p = _load(run / "data" / "profile.json")
    if not isinstance(p, dict) or "items" not in p:
        return None
    from mmrank.data.profile import format_profile

    it, ev, pairs = p.get("items") or {}, p.get("events") or {}, p.get("pairs") or {}

    def per(name: str, key: str) -> Any:
        return (ev.get(name) or {}).get(key)

    figures = {"items": it.get("items"), "with_photo": it.get("with_photo"), "with_title": it.get("with_title"),
               "with_price": it.get("with_price"), "photo_side_median": (it.get("photo_side") or {}).get("median"),
               "events_per_user_median": per("events_per_user", "median"),
               "events_per_item_median": per("events_per_item", "median"),
               "buyers": per("purchases_per_user", "n"),
               "buyers_with_one_purchase": per("purchases_per_user", "share_with_one"),
               "pairs_train": pairs.get("train"), "pairs_test": pairs.get("test"),
               "repeats_merged": p.get("repeats_merged") or {}}
    acc = {k: f"{a['value']:.4f} (95% interval {a['interval'][0]:.3f}..{a['interval'][1]:.3f}, n={a['n']})"
           for k, a in (p.get("acc") or {}).items()}
    try:
        text = format_profile(p)
    except (KeyError, TypeError, ValueError):  # a profile written by another version
        text = "\n".join(f"warning: {w}" for w in p.get("warnings") or [])
    return {"figures": figures, "acc": acc, "warnings": list(p.get("warnings") or []), "text": text}


def source_label(manifest: dict[str, Any]) -> str:
    """One line: where the run's data came from, and whether its behaviour is simulated."""
    if manifest.get("imported"):
        return (f"Imported data: {manifest.get('source')}. Behaviour is as the imported files log it "
                "(not simulated by mmrank).")
    if manifest:
        return f"Simulated: {manifest.get('source')}."
    return "No data manifest."


def write_report(run: str | Path) -> dict[str, Any]:
    """Collect every stage's results of ``run`` into ``R/report/`` (json, md, html)."""
    run = Path(run)
    mpath = run / "data" / "manifest.json"
    if not mpath.exists():
        raise MMRankError(f"{mpath}: no such file (generate a market or import data into {run} first)")
    manifest = _load(mpath) or {}
    subs = manifest.get("substitutes") or {}
    counts = manifest.get("counts", {})
    results: dict[str, Any] = {
        "run": str(run), "source": source_label(manifest), "simulated": bool(manifest.get("simulated")),
        "substitutes": subs,
        "stages": {"data": {"counts": counts, "ctr": manifest.get("ctr"), "split_ts": manifest.get("split_ts"),
                            "oracle_auc": manifest.get("oracle_auc")},
                   "pretrain": _pretrain(run), "embed": _embed(run), "ctr": _ctr(run)},
    }
    if "import" in manifest:
        imp = manifest["import"]
        results["stages"]["data"].update(span=imp.get("span"), rates=imp.get("rates"),
                                         items_without=imp.get("items_without"),
                                         events_naming_unknown_items=imp.get("events_naming_unknown_items"))
    profile = _profile(run)
    if profile is not None:
        results["profile_warnings"] = profile["warnings"]
        results["stages"]["data"].update(profile=profile["figures"], acc=profile["acc"],
                                         markdown="Data profile (`mmrank data profile`):\n\n"
                                         + "\n".join(f"- {ln}" for ln in profile["text"].splitlines()))
    if (run / "ctr" / "compare.json").exists():
        for png in sorted((run / "ctr" / "plots").glob("*.png")) if (run / "ctr" / "plots").exists() else []:
            (run / "report" / "plots").mkdir(parents=True, exist_ok=True)
            (run / "report" / "plots" / png.name).write_bytes(png.read_bytes())
    labels = {"pretrain": subs.get("pairs"), "ctr": subs.get("impressions")}
    lines = [f"# mmrank report: {run}", "", f"**{results['source']}**", ""]
    if subs:
        lines += ["What the data lacked, and what stands in for it:", ""]
        lines += [f"- **{k}**: {v}" for k, v in subs.items()]
        lines.append("")
    warns = results.get("profile_warnings") or []
    if warns:
        lines += ["What the data profile warns of:", ""] + [f"- **warning**: {w}" for w in warns] + [""]
    for name, res in results["stages"].items():
        lines += [f"## {name}", ""]
        if labels.get(name):
            lines += [f"> substitute: {labels[name]}", ""]
        if "markdown" in res:
            lines += [res["markdown"].rstrip(), ""]
        rows = flatten(res)
        if rows:
            lines += key_value_table(rows) + [""]
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    note = html.escape(results["source"]) + "".join(
        f"<br><b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in subs.items()) + "".join(
        f"<br><b>warning</b>: {html.escape(w)}" for w in warns)
    write_html_report(results, out, title=f"mmrank report: {run.name}", note=note)
    return results
