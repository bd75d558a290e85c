"""A tiny hand-made search-lists run for tests of re-ranking (no market needed).

:func:`write_tiny_lists` writes ``R/data/items.parquet`` (solid-colour 16x16 JPEGs, titles of a
colour word and a type word), ``R/data/query_images.parquet`` and ``R/data/lists.parquet`` (schema
LISTS). Behaviour is planted and simple: a candidate is clicked more often near the top, and far more
often when its colour matches the query's (text or photo); carts and purchases follow clicks, more
in region 0 for cheap items, more in region 1 for expensive ones. Histories hold clicks strictly before
the request's ``ts``. Deterministic for a seed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from mmrank.data.io import write_table
from mmrank.data.schemas import ITEMS, LISTS, QUERY_IMAGES

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "black": (15, 15, 15), "white": (240, 240, 240)}
TYPES = ["dress", "shirt", "shoe", "bag", "hat"]


def _jpeg(rgb: tuple[int, int, int], noise: np.ndarray) -> bytes:
    arr = np.clip(np.array(rgb, np.float32)[None, None, :] + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


TRUTH = "tiny_lists_truth.json"
P_BUY = 0.6


def _click_logit(match: np.ndarray, exam: np.ndarray) -> np.ndarray:
    return -1.2 + 2.2 * match + np.log(exam)


def _p_cart(region: int, cheap: np.ndarray) -> np.ndarray:
    return np.where(region == 1, np.where(cheap, 0.15, 0.6), np.where(cheap, 0.6, 0.15))


class TinyEvaluator:
    """The counterfactual evaluator of the tiny run (the interface of :class:`mmrank.data.truth.Evaluator`):
    the planted probabilities of a request's candidates when shown in a given order."""

    def __init__(self, run: str | Path) -> None:
        t = json.loads((Path(run) / TRUTH).read_text())
        self.t = t
        self.row = {int(r): i for i, r in enumerate(t["request_ids"])}
        self.item_row = {int(i): k for k, i in enumerate(t["item_ids"])}
        self.colour, self.price = np.array(t["colour"]), np.array(t["price"])

    def expected(self, request_ids, orders) -> dict[str, np.ndarray]:
        out = {k: np.zeros(len(orders)) for k in ("clicks", "carts", "purchases", "gmv")}
        for j, (rid, order) in enumerate(zip(request_ids, orders)):
            i = self.row[int(rid)]
            k = np.array([self.item_row[int(x)] for x in order[: self.t["n_shown"][i]]], np.int64)
            exam = 1.0 / (1.0 + np.arange(len(k)))
            p_click = 1 / (1 + np.exp(-_click_logit(self.colour[k] == self.t["want"][i], exam)))
            p_cart = p_click * _p_cart(self.t["region"][i], self.price[k] < self.t["median_price"])
            p_buy = p_cart * P_BUY
            out["clicks"][j], out["carts"][j], out["purchases"][j] = p_click.sum(), p_cart.sum(), p_buy.sum()
            out["gmv"][j] = float((p_buy * self.price[k]).sum())
        return out


def write_tiny_lists(run: str | Path, *, n_items: int = 120, n_users: int = 60, n_requests: int = 300,
                     n_candidates: int = 16, n_shown: int = 8, n_regions: int = 3, prod_match: float = 0.5, hist_len: int = 10, seed: int = 0) -> Path:
    """Write the tiny run into ``run``; returns ``run``. ``prod_match``: how much the production score
    knows of the query-colour match (0: nothing)."""
    run = Path(run)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    colour = rng.integers(len(names), size=n_items)
    typ = rng.integers(len(TYPES), size=n_items)
    price = np.round(np.exp(rng.normal(3.0, 0.5, size=n_items)), 2)
    item_ids = 1000 + np.arange(n_items, dtype=np.int64)
    images = [_jpeg(COLOURS[names[c]], rng.normal(0, 8, size=(16, 16, 3))) for c in colour]
    titles = [f"{names[c]} {TYPES[t]} item{i}" for i, (c, t) in enumerate(zip(colour, typ))]
    write_table(pa.table({"item_id": item_ids, "title": titles, "image": images,
                          "image_path": [None] * n_items, "category": [TYPES[t] for t in typ],
                          "price": price, "created_at": np.zeros(n_items, np.int64)}, schema=ITEMS), run / "data" / "items.parquet")
    user_region = rng.integers(n_regions, size=n_users)
    qimg_ids, qimg_bytes = [], []
    rows: dict[str, list] = {f.name: [] for f in LISTS}
    clicks_by_user: dict[int, list[tuple[int, int, int]]] = {u: [] for u in range(n_users)}
    sales = np.zeros(n_items, np.int64)
    split_ts = int(n_requests * 0.75) * 10
    truth: dict[str, list] = {"want": [], "n_shown": []}
    for r in range(n_requests):
        ts = 10 * r + 5
        u = int(rng.integers(n_users))
        want = int(rng.integers(len(names)))
        photo = rng.random() < 0.3
        qt = qi = None
        if photo:
            qi = f"q{seed}-{r}"
            qimg_ids.append(qi)
            qimg_bytes.append(_jpeg(COLOURS[names[want]], rng.normal(0, 8, size=(16, 16, 3))))
        else:
            qt = f"{names[want]} {TYPES[int(rng.integers(len(TYPES)))]}"
        match = colour == want
        w = np.where(match, 4.0, 1.0)
        cand = rng.choice(n_items, size=n_candidates, replace=False, p=w / w.sum())
        prod = rng.normal(0, 1, size=n_candidates) + prod_match * match[cand]
        order = np.argsort(-prod, kind="stable")
        cand, prod = cand[order], prod[order]
        pos = np.where(np.arange(n_candidates) < n_shown, np.arange(n_candidates), -1)
        region = int(user_region[u])
        exam = 1.0 / (1.0 + np.arange(n_candidates))
        logit_click = _click_logit(match[cand], exam)
        click = (rng.random(n_candidates) < 1 / (1 + np.exp(-logit_click))) & (pos >= 0)
        cheap = price[cand] < np.median(price)
        p_cart = _p_cart(region, cheap)
        cart = click & (rng.random(n_candidates) < p_cart)
        purchase = cart & (rng.random(n_candidates) < P_BUY)
        hist = [h for h in clicks_by_user[u] if h[2] < ts][-hist_len:]
        truth["want"].append(want)
        truth["n_shown"].append(n_shown)
        rows["request_id"].append(r)
        rows["ts"].append(ts)
        rows["user_id"].append(u)
        rows["region"].append(region)
        rows["query_text"].append(qt)
        rows["query_image"].append(qi)
        rows["item_ids"].append(item_ids[cand].tolist())
        rows["positions"].append(pos.tolist())
        rows["prod_scores"].append(prod.astype(np.float32).tolist())
        rows["prices"].append(price[cand].tolist())
        rows["sales"].append(sales[cand].tolist())
        rows["category_ids"].append(typ[cand].tolist())
        rows["clicks"].append(click.astype(np.int8).tolist())
        rows["carts"].append(cart.astype(np.int8).tolist())
        rows["purchases"].append(purchase.astype(np.int8).tolist())
        rows["hist_item_ids"].append([int(item_ids[h[0]]) for h in hist])
        rows["hist_category_ids"].append([int(h[1]) for h in hist])
        rows["hist_ts"].append([int(h[2]) for h in hist])
        rows["split"].append("train" if ts < split_ts else "test")
        for k in np.flatnonzero(click):
            clicks_by_user[u].append((int(cand[k]), int(typ[cand[k]]), ts))
        sales[cand[purchase]] += 1
    write_table(pa.table(rows, schema=LISTS), run / "data" / "lists.parquet")
    # the planted behaviour, for TinyEvaluator (kept outside R/data and R/truth)
    (run / TRUTH).write_text(json.dumps({**truth, "item_ids": item_ids.tolist(), "colour": colour.tolist(),
                                         "price": price.tolist(), "median_price": float(np.median(price)),
                                         "request_ids": rows["request_id"], "region": rows["region"]}))
    write_table(pa.table({"query_image": qimg_ids, "image": qimg_bytes}, schema=QUERY_IMAGES),
                run / "data" / "query_images.parquet")
    return run
