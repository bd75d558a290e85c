"""`mmrank data profile`: what a run's data holds, before anything trains on it.

Items with a photo / title / price, photo sizes, events per user and per item, purchases per user,
pre-training pairs and their split, repeated events merged (and the rule), and warnings where a figure
is too small to measure: with fewer than :data:`MIN_TEST_PAIRS` test pairs Acc@N is printed only with
its 95% binomial (Wilson) interval. :func:`profile_run` returns the dict (``R/data/profile.json``),
:func:`format_profile` its lines (``short=True``: the few the import prints).

Example::

    >>> wilson(8, 10)
    (0.49, 0.943)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrank.data.import_summary import REPEATS_RULE
from mmrank.data.photos import is_placeholder, photo_size

MIN_TEST_PAIRS = 500
MIN_PHOTO_SHARE = 0.5


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson interval of a proportion ``k / n`` (``k`` may be a rate times ``n``)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(max(0.0, c - h), 3), round(min(1.0, c + h), 3))


def _dist(counts: np.ndarray) -> dict[str, Any]:
    if not len(counts):
        return {"n": 0}
    return {"n": int(len(counts)), "mean": round(float(counts.mean()), 3), "median": float(np.median(counts)),
            "p90": float(np.quantile(counts, 0.9)), "max": int(counts.max()),
            "share_with_one": round(float((counts == 1).mean()), 4)}


def _items(data: Path) -> dict[str, Any]:
    names = pq.read_schema(data / "items.parquet").names
    t = pq.read_table(data / "items.parquet", columns=[c for c in ("item_id", "title", "price", "image",
                                                                   "image_path") if c in names])
    n = t.num_rows
    manifest = _manifest(data)
    without = (manifest.get("import") or {}).get("items_without") or {}
    blobs = t.column("image").to_pylist() if "image" in names else [None] * n
    paths = t.column("image_path").to_pylist() if "image_path" in names else [None] * n
    sizes = []
    for b, p in zip(blobs, paths):
        if b is None and p:
            f = Path(p) if Path(p).is_absolute() else data / p
            b = f.read_bytes() if f.is_file() else None
        if not is_placeholder(b):
            sizes.append(photo_size(b))
    sizes = [s for s in sizes if s is not None]
    side = np.asarray([max(s) for s in sizes], np.int64)
    price = t.column("price").to_numpy()
    return {"items": n, "with_photo": len(sizes), "with_title": n - int(without.get("title", 0)),
            "with_price": int((price > 0).sum()),
            "photo_side": ({"median": int(np.median(side)), "min": int(side.min()), "max": int(side.max()),
                            "median_width": int(np.median([s[0] for s in sizes])),
                            "median_height": int(np.median([s[1] for s in sizes]))} if len(side) else None)}


def _events(data: Path) -> dict[str, Any]:
    path = data / "events.parquet"
    sampled = "sampled" in pq.read_schema(path).names  # imported logs without impressions flag them
    ev = pq.read_table(path, columns=["user_id", "item_id", "event"] + (["sampled"] if sampled else []))
    if sampled:
        ev = ev.filter(pc.invert(ev.column("sampled")))
    act = ev.filter(pc.not_equal(ev.column("event"), "impression"))
    buy = ev.filter(pc.equal(ev.column("event"), "purchase"))
    per = {}
    for name, t, key in (("events_per_user", act, "user_id"), ("events_per_item", act, "item_id"),
                         ("purchases_per_user", buy, "user_id")):
        _, c = np.unique(t.column(key).to_numpy(), return_counts=True)
        per[name] = _dist(c)
    return per


def _pairs(data: Path) -> dict[str, Any]:
    p = data / "pairs.parquet"
    if not p.exists():
        return {"train": 0, "test": 0}
    split = pq.read_table(p, columns=["split"]).column("split")
    return {"train": int(pc.sum(pc.equal(split, "train")).as_py() or 0),
            "test": int(pc.sum(pc.equal(split, "test")).as_py() or 0)}


def _manifest(data: Path) -> dict[str, Any]:
    p = data / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _acc(run: Path, n_test: int) -> dict[str, Any]:
    """Acc@N of the run's encoder (when pre-trained) with its 95% interval over its test pairs."""
    p = run / "encoder" / "metrics.json"
    if not p.exists():
        return {}
    m = json.loads(p.read_text())
    out = {}
    for acc in ("acc@1", "acc@5"):
        for mod, v in (m.get(acc) or {}).items():
            n = int((m.get("n_test") or {}).get(mod) or n_test)
            if v is not None and n:
                out[f"{acc} {mod}"] = {"value": round(v, 4), "n": n, "interval": wilson(v * n, n)}
    return out


def _warnings(prof: dict[str, Any]) -> list[str]:
    w = []
    n_test = prof["pairs"]["test"]
    if n_test < MIN_TEST_PAIRS:
        lo, hi = wilson(n_test / 2, n_test)
        w.append(f"only {n_test} test pairs (< {MIN_TEST_PAIRS}): Acc@N is too small to measure; "
                 f"at 50% its 95% interval is {lo:.2f}..{hi:.2f}" if n_test else
                 f"no test pairs: Acc@N cannot be measured")
    it = prof["items"]
    if it["items"] and it["with_photo"] / it["items"] < MIN_PHOTO_SHARE:
        w.append(f"only {it['with_photo']} of {it['items']} items have a photo: the rest train on a grey "
                 "placeholder")
    ppu = prof["events"]["purchases_per_user"]
    if ppu.get("n") and ppu["share_with_one"] > 0.5:
        w.append(f"{ppu['share_with_one']:.0%} of buyers bought once: few users give a pair or a history")
    return w


def profile_run(run: str | Path) -> dict[str, Any]:
    """The profile of ``run/data`` (see the module docstring)."""
    run = Path(run)
    data = run / "data"
    imp = _manifest(data).get("import") or {}
    prof: dict[str, Any] = {"items": _items(data), "events": _events(data), "pairs": _pairs(data),
                            "repeats_merged": (imp.get("lists") or {}).get("repeats_merged", {}),
                            "repeats_rule": REPEATS_RULE}
    prof["acc"] = _acc(run, prof["pairs"]["test"])
    prof["warnings"] = _warnings(prof)
    return prof


def write_profile(run: str | Path) -> dict[str, Any]:
    """:func:`profile_run`, also written to ``run/data/profile.json``."""
    prof = profile_run(run)
    (Path(run) / "data" / "profile.json").write_text(json.dumps(prof, indent=2, sort_keys=True))
    return prof


def format_profile(p: dict[str, Any], short: bool = False) -> str:
    it, ev, pairs = p["items"], p["events"], p["pairs"]
    n = max(it["items"], 1)
    ps = it.get("photo_side")
    lines = [f"items: {it['items']}, with photo {it['with_photo']} ({it['with_photo'] / n:.0%}), with title "
             f"{it['with_title']}, with price {it['with_price']}"
             + (f"; photos {ps['median_width']}x{ps['median_height']} px median (larger side "
                f"{ps['min']}..{ps['max']})" if ps else "; no real photos"),
             f"pre-training pairs: {pairs['train']} train, {pairs['test']} test"]
    if not short:
        for name in ("events_per_user", "events_per_item", "purchases_per_user"):
            d = ev[name]
            lines.append(f"{name.replace('_', ' ')}: " + (
                f"{d['n']} with any, mean {d['mean']}, median {d['median']:g}, p90 {d['p90']:g}, max {d['max']}, "
                f"{d['share_with_one']:.0%} with one" if d.get("n") else "none"))
        merged = p.get("repeats_merged") or {}
        lines.append(f"repeated events merged: " + (", ".join(f"{v} {k}s" for k, v in merged.items())
                                                    if merged else "none") + f" ({p['repeats_rule']})")
        for k, a in (p.get("acc") or {}).items():
            lo, hi = a["interval"]
            lines.append(f"{k}: {a['value']:.4f} (95% interval {lo:.3f}..{hi:.3f}, {a['n']} test pairs)")
    lines += [f"warning: {w}" for w in p["warnings"]]
    return "\n".join(lines)
