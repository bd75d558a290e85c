"""The synthetic market: the embedded default data set, and a ground truth to measure models against.

Items have latent attributes (article type, colour, pattern, style, price band) that their photos and
titles show, plus a quality that only behaviour reveals. Users live in regions (markets) with different
tastes; their interest drifts over the simulated days. A visit issues a query (words, or a photo of a
wanted item "taken by the user"), is shown a ranked list, and clicks, adds to cart and buys with known
probabilities that include position bias. New items keep arriving.

With ``catalog`` set, a real catalog's photos, titles and attribute columns are used as they are; only
users, prices, arrival times, qualities and behaviour are simulated (the manifest says so).

Everything is vectorised over requests; the same config (seed included) gives byte-identical files.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import Progress

from mmrank.config import SIZES, MarketConfig, build, load_yaml, save_yaml
from mmrank.data import render
from mmrank.data.io import write_table
from mmrank.data.render import query_image_ref, render_query_image  # noqa: F401  (public API)
from mmrank.data.samples import build_ctr_samples, build_lists, build_pairs
from mmrank.errors import DataError

DAY = 86_400
HISTORY_LEN = 50
CATALOG_ATTRIBUTES = {"article_type": "article_type", "colour": "base_colour", "style": "usage",
                      "pattern": "sub_category"}


def market_config(size: str = "default", config: str | Path | None = None, **overrides: Any) -> MarketConfig:
    """Resolve a :class:`MarketConfig`: size preset, then YAML file, then explicit overrides."""
    if size not in SIZES:
        raise DataError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}", column="size")
    data: dict[str, Any] = dict(SIZES[size])
    if config is not None:
        data.update(load_yaml(MarketConfig, config).model_dump(exclude_unset=True))
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build(MarketConfig, data, "market config")


# ----------------------------------------------------------------------------------------------- items
@dataclass
class Catalog:
    """Items as arrays; ``attrs[name]`` are integer codes into ``vocab[name]``; row i = item_ids[i]."""

    item_ids: np.ndarray
    titles: list[str]
    images: list[bytes]
    attrs: dict[str, np.ndarray]
    vocab: dict[str, list[str]]
    extra_columns: dict[str, pa.Array]


def _render_chunk(args: tuple[list[tuple[str, str, str, str, int]], int]) -> list[bytes]:
    rows, size = args
    return [render.render_item_image(t, c, p, s, seed, size) for t, c, p, s, seed in rows]


def synthetic_catalog(cfg: MarketConfig, rng: np.random.Generator) -> Catalog:
    types, colours = list(render.ARTICLE_TYPES), list(render.COLOURS)
    vocab = {"article_type": types, "colour": colours, "pattern": render.PATTERNS,
             "style": render.STYLES}
    n = cfg.n_items
    # Attribute frequencies are themselves skewed, as in a real catalog.
    attrs = {k: rng.choice(len(v), size=n, p=rng.dirichlet(np.full(len(v), 3.0))).astype(np.int32)
             for k, v in vocab.items()}
    brands = rng.integers(len(render.BRANDS), size=n)
    titles = [render.make_title(types[attrs["article_type"][i]], colours[attrs["colour"][i]],
                                render.PATTERNS[attrs["pattern"][i]], render.STYLES[attrs["style"][i]],
                                render.BRANDS[brands[i]], rng) for i in range(n)]
    item_ids = np.arange(1, n + 1, dtype=np.int64) * 7 + 100_000  # not 0..n-1: ids are not indices
    rows = [(types[attrs["article_type"][i]], colours[attrs["colour"][i]],
             render.PATTERNS[attrs["pattern"][i]], render.STYLES[attrs["style"][i]],
             cfg.seed * 1_000_003 + int(item_ids[i])) for i in range(n)]
    chunk = 500
    chunks = [(rows[i:i + chunk], cfg.image_size) for i in range(0, n, chunk)]
    images: list[bytes] = []
    with Progress(transient=True) as progress:
        task = progress.add_task("rendering product photos", total=n)
        with ProcessPoolExecutor(max_workers=2) as pool:
            for out in pool.map(_render_chunk, chunks):
                images.extend(out)
                progress.advance(task, len(out))
    return Catalog(item_ids, titles, images, attrs, vocab, {})


def real_catalog(cfg: MarketConfig, rng: np.random.Generator) -> Catalog:
    path = Path(cfg.catalog)  # type: ignore[arg-type]
    if not path.exists():
        raise DataError("no such catalog file", file=str(path))
    names = pq.read_schema(path).names
    for col in ("item_id", "title", "image", *CATALOG_ATTRIBUTES.values()):
        if col not in names:
            raise DataError(f"missing column (a catalog needs item_id, title, image and "
                            f"{', '.join(CATALOG_ATTRIBUTES.values())})", file=str(path), row=0,
                            column=col)
    table = pq.read_table(path)
    if table.num_rows > cfg.n_items:  # a deterministic subset
        keep = np.sort(rng.choice(table.num_rows, size=cfg.n_items, replace=False))
        table = table.take(pa.array(keep))
    ids = table.column("item_id").to_numpy()
    titles = table.column("title").to_pylist()
    images = table.column("image").to_pylist()
    for i, (t, b) in enumerate(zip(titles, images)):
        if not t or b is None:
            raise DataError("empty title or image", file=str(path), row=i,
                            column="title" if not t else "image")
    attrs, vocab = {}, {}
    for name, col in CATALOG_ATTRIBUTES.items():
        values = pc.fill_null(table.column(col).cast(pa.string()), "Unknown")
        uniq, codes = np.unique(np.asarray(values.to_pylist(), dtype=object).astype(str),
                                return_inverse=True)
        attrs[name], vocab[name] = codes.astype(np.int32), [str(u) for u in uniq]
    extra = {c: table.column(c).combine_chunks() for c in names
             if c not in ("item_id", "title", "image", "price", "created_at", "category")}
    return Catalog(ids.astype(np.int64), titles, images, attrs, vocab, extra)


# ------------------------------------------------------------------------------------------ the model
@dataclass
class Truth:
    """Hidden parameters of the behaviour model (what a model should recover)."""

    quality: np.ndarray        # (I,) item quality only behaviour reveals
    pop: np.ndarray            # (I,) exposure weight (Zipf)
    price_z: np.ndarray        # (I,) standardised log price
    user_region: np.ndarray    # (U,)
    user_activity: np.ndarray  # (U,) probability of each user being the visitor
    w0: dict[str, np.ndarray]  # attribute -> (U, V) preferences at t = 0
    w1: dict[str, np.ndarray]  # attribute -> (U, V) preferences at the end (interest drift)
    price_sens: np.ndarray     # (U,)
    region_conv: np.ndarray    # (R,) purchase propensity per market


def simulate_truth(cfg: MarketConfig, cat: Catalog, rng: np.random.Generator) -> Truth:
    n_items, n_users, n_regions = len(cat.item_ids), cfg.n_users, cfg.n_regions
    quality = rng.normal(0.0, cfg.quality_std, size=n_items)
    ranks = rng.permutation(n_items) + 1
    pop = 1.0 / ranks.astype(np.float64) ** cfg.zipf_exponent
    user_region = rng.integers(n_regions, size=n_users).astype(np.int16)
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    # Attribute weights: a region's taste plus the user's own; the end point differs (drift).
    scale = {"article_type": 1.2, "colour": 1.0, "pattern": 0.8, "style": 0.9}
    w0, w1 = {}, {}
    for name, values in cat.vocab.items():
        v = len(values)
        region_taste = rng.normal(0.0, 0.6, size=(n_regions, v))
        own = rng.normal(0.0, 1.0, size=(n_users, v))
        w0[name] = scale[name] * (region_taste[user_region] + own)
        moved = rng.normal(0.0, 1.0, size=(n_users, v))
        w1[name] = scale[name] * (region_taste[user_region] + (1 - cfg.drift) * own
                                  + cfg.drift * moved)
    price_sens = np.abs(rng.normal(0.6, 0.3, size=n_users))
    region_conv = rng.normal(0.0, 0.5, size=n_regions)
    return Truth(quality, pop, np.zeros(n_items), user_region, activity / activity.sum(), w0, w1,
                 price_sens, region_conv)


def _prices(cat: Catalog, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = len(cat.item_ids)
    band = rng.integers(0, 5, size=n)
    type_level = rng.uniform(2.5, 4.5, size=len(cat.vocab["article_type"]))
    log_price = type_level[cat.attrs["article_type"]] + 0.35 * band + rng.normal(0, 0.15, size=n)
    price = np.round(np.exp(log_price), 2)
    return price, band.astype(np.int8)


def _softmax_sample(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per row of ``logits`` (B, V) by the Gumbel-max trick."""
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)


def _draw_from_prefix(groups: np.ndarray, n_live: np.ndarray, cum_w: np.ndarray, members: np.ndarray,
                      starts: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``k`` items per request from the live prefix of its group, weighted by popularity.

    Items of a group are stored in creation order, so the items alive at time t are a prefix.
    ``cum_w`` are per-group cumulative weights laid end to end (group g occupies
    ``starts[g]:starts[g+1]``). Returns item indices (B, k).
    """
    lo = starts[groups]
    hi = lo + np.maximum(n_live, 1) - 1
    base = np.where(lo > 0, cum_w[np.maximum(lo - 1, 0)], 0.0)
    total = cum_w[hi] - base
    u = base[:, None] + rng.random((len(groups), k)) * total[:, None]
    pos = np.searchsorted(cum_w, u, side="right")
    pos = np.clip(pos, lo[:, None], hi[:, None])
    return members[pos]


def _grouped(codes: np.ndarray, created: np.ndarray, weight: np.ndarray, n_groups: int):
    order = np.lexsort((created, codes))  # by group, then creation time
    counts = np.bincount(codes, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)])
    w = weight[order]
    cum_w = np.empty_like(w)
    for g in range(n_groups):  # cumulative within each group, laid end to end
        a, b = starts[g], starts[g + 1]
        cum_w[a:b] = np.cumsum(w[a:b]) + (cum_w[a - 1] if a > 0 else 0.0)
    return order, starts, cum_w, created[order]


def _dedupe_rows(cands: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` distinct entries of each row of ``cands`` (B, M), order kept (M >= k)."""
    b, m = cands.shape
    order = np.argsort(cands, axis=1, kind="stable")
    srt = np.take_along_axis(cands, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    keep = ~dup
    rank = np.cumsum(keep, axis=1) - 1
    rank = np.where(keep & (rank < k), rank, k)  # slot k = discard
    out = np.full((b, k + 1), -1, dtype=cands.dtype)
    rows = np.repeat(np.arange(b), m)
    out[rows, rank.ravel()] = cands.ravel()
    out = out[:, :k]
    # Rows with too few distinct candidates keep a repeat rather than a hole.
    holes = out < 0
    if holes.any():
        out[holes] = np.broadcast_to(cands[:, :1], out.shape)[holes]
    return out


def generate_market(cfg: MarketConfig, out: str | Path) -> dict[str, Any]:
    """Generate the market into ``out/data/``; returns the manifest (also written as manifest.json)."""
    started = time.perf_counter()
    out = Path(out)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(cfg.seed)
    r_cat, r_truth, r_req, r_beh, r_time = (np.random.default_rng(s) for s in root.spawn(5))

    cat = real_catalog(cfg, r_cat) if cfg.catalog else synthetic_catalog(cfg, r_cat)
    n_items = len(cat.item_ids)
    truth = simulate_truth(cfg, cat, r_truth)
    price, band = _prices(cat, r_truth)
    log_p = np.log(price)
    # Price relative to the article type's typical price: what a shopper weighs.
    type_codes = cat.attrs["article_type"]
    type_mean = np.bincount(type_codes, weights=log_p) / np.maximum(np.bincount(type_codes), 1)
    truth.price_z = (log_p - type_mean[type_codes]) / 0.4

    horizon = cfg.n_days * DAY
    created = np.where(r_time.random(n_items) < cfg.initial_item_share, 0,
                       r_time.integers(1, horizon, size=n_items)).astype(np.int64)
    n_types = len(cat.vocab["article_type"])

    # ------------------------------------------------------------------ requests (visits)
    n_req = max(1, cfg.n_impressions // cfg.list_size)
    req_ts = np.sort(r_req.integers(DAY // 4, horizon, size=n_req)).astype(np.int64)
    req_user = r_req.choice(cfg.n_users, size=n_req, p=truth.user_activity).astype(np.int64)
    frac = (req_ts / horizon)[:, None]
    intent = {}
    for name in cat.vocab:
        w_t = (1 - frac) * truth.w0[name][req_user] + frac * truth.w1[name][req_user]
        intent[name] = _softmax_sample(w_t, r_req)
    is_image = r_req.random(n_req) < cfg.image_query_share

    # Candidate retrieval: items of the wanted type alive at the request time, by popularity,
    # plus popular items of any type.
    members_t, starts_t, cum_t, created_t = _grouped(type_codes, created, truth.pop, n_types)
    zeros = np.zeros(n_items, dtype=np.int32)
    members_a, starts_a, cum_a, created_a = _grouped(zeros, created, truth.pop, 1)
    live_t = np.empty(n_req, dtype=np.int64)
    q_type = intent["article_type"]
    for g in range(n_types):
        sel = q_type == g
        a, b = starts_t[g], starts_t[g + 1]
        live_t[sel] = np.searchsorted(created_t[a:b], req_ts[sel], side="right")
    has_type = live_t > 0
    live_a = np.searchsorted(created_a, req_ts, side="right")
    k = cfg.list_size
    n_match = int(round(0.7 * k))
    c_type = _draw_from_prefix(np.where(has_type, q_type, 0), live_t, cum_t, members_t, starts_t,
                               2 * k, r_req)
    c_any = _draw_from_prefix(np.zeros(n_req, dtype=np.int64), live_a, cum_a, members_a, starts_a,
                              2 * k, r_req)
    c_type = np.where(has_type[:, None], c_type, c_any)
    cands = np.concatenate([c_type[:, :n_match], c_any[:, :k - n_match], c_type[:, n_match:],
                            c_any[:, k - n_match:]], axis=1)
    shown = _dedupe_rows(cands, k)  # (B, k) item indices

    # Image queries: a photo of an alive item with the wanted type and colour, taken by the user.
    seed_item = c_type[:, 0].copy()
    colour_match = cat.attrs["colour"][c_type] == intent["colour"][:, None]
    first = np.argmax(colour_match, axis=1)
    has_colour = colour_match.any(axis=1)
    seed_item[has_colour] = c_type[has_colour, first[has_colour]]
    # What the query expresses: every attribute of the photo, or the words of a text query.
    q_attr = {name: np.where(is_image, cat.attrs[name][seed_item], intent[name]) for name in cat.vocab}
    say = {"article_type": np.ones(n_req, bool), "colour": r_req.random(n_req) < 0.7,
           "pattern": r_req.random(n_req) < 0.4, "style": r_req.random(n_req) < 0.4}
    for name in say:
        say[name] |= is_image
    query_text, query_image = _query_strings(cat, cfg, q_attr, say, is_image, seed_item, r_req)

    # Production ranker: popularity and query match, with noise; positions 0..k-1.
    rel = np.zeros(shown.shape)
    rel_w = {"article_type": 1.5, "colour": 0.8, "pattern": 0.5, "style": 0.5}
    for name in cat.vocab:
        rel += rel_w[name] * (say[name][:, None] & (cat.attrs[name][shown] == q_attr[name][:, None]))
    prod_score = 0.6 * np.log(truth.pop[shown]) + rel + r_req.gumbel(size=shown.shape)
    order = np.argsort(-prod_score, axis=1, kind="stable")
    shown = np.take_along_axis(shown, order, axis=1)
    rel = np.take_along_axis(rel, order, axis=1)

    # ------------------------------------------------------------------ behaviour (the known model)
    aff = np.zeros(shown.shape)
    for name in cat.vocab:
        w_t = (1 - frac) * truth.w0[name][req_user] + frac * truth.w1[name][req_user]  # (B, V)
        aff += np.take_along_axis(w_t, cat.attrs[name][shown], axis=1)
    sens = truth.price_sens[req_user][:, None]
    region = truth.user_region[req_user]
    fresh = np.exp(-np.maximum(req_ts[:, None] - created[shown], 0) / (3 * DAY))
    positions = np.arange(k)[None, :]
    exam = 1.0 / (1.0 + positions) ** 0.7  # position bias: probability of examining a slot
    click_logit = -2.7 + 0.9 * rel + 0.55 * aff + truth.quality[shown] - 0.5 * sens * truth.price_z[shown] \
        + 0.3 * fresh
    p_click = exam * _sigmoid(click_logit)
    p_cart = _sigmoid(-1.0 + 0.35 * aff + 0.7 * truth.quality[shown] - 0.8 * sens * truth.price_z[shown]
                      + 0.3 * rel)
    p_buy = _sigmoid(-0.6 + 0.25 * aff + 0.5 * truth.quality[shown] - 0.6 * sens * truth.price_z[shown]
                     + truth.region_conv[region][:, None])
    clicked = r_beh.random(shown.shape) < p_click
    carted = clicked & (r_beh.random(shown.shape) < p_cart)
    bought = carted & (r_beh.random(shown.shape) < p_buy)

    # ------------------------------------------------------------------ tables
    split_ts = int(np.quantile(req_ts, 0.8))
    new_item_ts = split_ts - DAY
    items = _items_table(cat, price, band, created)
    write_table(items, data_dir / "items.parquet", row_group_size=2048)
    users = pa.table({"user_id": pa.array(np.arange(cfg.n_users, dtype=np.int64)),
                      "region": pa.array(truth.user_region)})
    write_table(users, data_dir / "users.parquet")
    events = _events_table(cat, shown, clicked, carted, bought, req_ts, req_user, region,
                           query_text, query_image)
    write_table(events, data_dir / "events.parquet")
    req_ids = np.arange(n_req, dtype=np.int64)
    truth_tbl = pa.table({
        "request_id": pa.array(np.repeat(req_ids, k)),
        "position": pa.array(np.tile(np.arange(k, dtype=np.int16), n_req)),
        "item_id": pa.array(cat.item_ids[shown].ravel()),
        "p_click": pa.array(p_click.ravel()), "p_cart": pa.array((p_click * p_cart).ravel()),
        "p_purchase": pa.array((p_click * p_cart * p_buy).ravel()),
    })
    write_table(truth_tbl, data_dir / "truth.parquet")
    item_truth = pa.table({"item_id": pa.array(cat.item_ids), "quality": pa.array(truth.quality),
                           "popularity": pa.array(truth.pop)})
    write_table(item_truth, data_dir / "truth_items.parquet")

    pairs = build_pairs(events, split_ts)
    write_table(pairs, data_dir / "pairs.parquet")
    samples = build_ctr_samples(events, items, split_ts, HISTORY_LEN)
    write_table(samples, data_dir / "ctr_samples.parquet")
    lists = build_lists(events, items, split_ts)
    write_table(lists, data_dir / "lists.parquet")

    from mmrank.eval import auc
    oracle = float(auc(clicked.ravel().astype(np.int8), p_click.ravel()))
    test = req_ts >= split_ts
    oracle_test = float(auc(clicked[test].ravel().astype(np.int8), p_click[test].ravel()))
    manifest = {
        "simulated": True,
        "source": (f"real catalog {cfg.catalog} (photos, titles, attributes real; users, prices, "
                   f"arrival times and behaviour simulated)") if cfg.catalog
        else "synthetic market (items, photos, titles, users and behaviour all simulated)",
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "counts": {"items": items.num_rows, "users": users.num_rows, "requests": int(n_req),
                   "impressions": int(shown.size), "clicks": int(clicked.sum()),
                   "carts": int(carted.sum()), "purchases": int(bought.sum()),
                   "events": events.num_rows, "pairs": pairs.num_rows,
                   "ctr_samples": samples.num_rows, "lists": lists.num_rows},
        "ctr": float(clicked.mean()),
        "oracle_auc": oracle,
        "oracle_auc_test": oracle_test,
        "split_ts": split_ts,
        "new_item_ts": new_item_ts,
        "horizon_ts": int(horizon),
        "history_len": HISTORY_LEN,
        "attributes": {name: vocab for name, vocab in cat.vocab.items()},
        "attribute_columns": (CATALOG_ATTRIBUTES if cfg.catalog
                              else {n: n for n in cat.vocab}),
    }
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    save_yaml(cfg, out / "config.yaml", section="market")
    manifest["seconds"] = round(time.perf_counter() - started, 1)  # not written: files stay identical
    return manifest


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _query_strings(cat: Catalog, cfg: MarketConfig, q_attr: dict[str, np.ndarray],
                   say: dict[str, np.ndarray], is_image: np.ndarray, seed_item: np.ndarray,
                   rng: np.random.Generator) -> tuple[list[str | None], list[str | None]]:
    n = len(is_image)
    texts: list[str | None] = [None] * n
    refs: list[str | None] = [None] * n
    words = _attribute_words(cat)
    picks = rng.integers(0, 1 << 30, size=(n, 4))
    order = ["style", "colour", "pattern", "article_type"]
    for i in range(n):
        if is_image[i]:
            refs[i] = query_image_ref(cat.item_ids[seed_item[i]], int(picks[i, 0]) + cfg.seed)
            continue
        parts = []
        for j, name in enumerate(order):
            if say[name][i]:
                options = words[name][q_attr[name][i]]
                w = options[picks[i, j] % len(options)]
                if w:
                    parts.append(w)
        texts[i] = " ".join(parts)
    return texts, refs


def _attribute_words(cat: Catalog) -> dict[str, list[list[str]]]:
    if cat.extra_columns:  # a real catalog: its own attribute values, lower-cased
        out = {name: [[v.lower()] if v != "Unknown" else [""] for v in vocab]
               for name, vocab in cat.vocab.items()}
        out["pattern"] = [[""] for _ in cat.vocab["pattern"]]  # sub-category words add little
        return out
    table = {"article_type": render.TYPE_WORDS, "colour": render.COLOUR_WORDS,
             "pattern": render.PATTERN_WORDS, "style": render.STYLE_WORDS}
    return {name: [table[name][v] for v in vocab] for name, vocab in cat.vocab.items()}


def _items_table(cat: Catalog, price: np.ndarray, band: np.ndarray, created: np.ndarray) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "item_id": pa.array(cat.item_ids, pa.int64()),
        "title": pa.array(cat.titles, pa.string()),
        "image": pa.array(cat.images, pa.binary()),
        "category": pa.array([cat.vocab["article_type"][c] for c in cat.attrs["article_type"]],
                             pa.string()),
        "price": pa.array(price, pa.float64()),
        "created_at": pa.array(created, pa.int64()),
    }
    if not cat.extra_columns:
        for name, vocab in cat.vocab.items():
            cols[name] = pa.array([vocab[c] for c in cat.attrs[name]], pa.string())
    else:
        for name, arr in cat.extra_columns.items():
            cols[name] = arr
    cols["price_band"] = pa.array(band, pa.int8())
    return pa.table(cols)


def _events_table(cat: Catalog, shown: np.ndarray, clicked: np.ndarray, carted: np.ndarray,
                  bought: np.ndarray, req_ts: np.ndarray, req_user: np.ndarray, region: np.ndarray,
                  query_text: list[str | None], query_image: list[str | None]) -> pa.Table:
    b, k = shown.shape
    req = np.repeat(np.arange(b, dtype=np.int64), k)
    pos = np.tile(np.arange(k, dtype=np.int16), b)
    parts = []
    for code, mask in enumerate([np.ones_like(clicked), clicked, carted, bought]):
        m = mask.ravel()
        parts.append((req[m], pos[m], shown.ravel()[m], np.full(m.sum(), code, np.int8)))
    r = np.concatenate([p[0] for p in parts])
    p = np.concatenate([p[1] for p in parts])
    it = np.concatenate([p_[2] for p_ in parts])
    ev = np.concatenate([p_[3] for p_ in parts])
    order = np.lexsort((ev, p, r))  # by request, position, then funnel step
    r, p, it, ev = r[order], p[order], it[order], ev[order]
    names = pa.array(["impression", "click", "cart", "purchase"])
    qt = pa.array(query_text, pa.string()).take(pa.array(r))
    qi = pa.array(query_image, pa.string()).take(pa.array(r))
    return pa.table({
        "ts": pa.array(req_ts[r]), "user_id": pa.array(req_user[r]),
        "item_id": pa.array(cat.item_ids[it]), "request_id": pa.array(r),
        "position": pa.array(p), "event": names.take(pa.array(ev)),
        "query_text": qt, "query_image": qi, "region": pa.array(region[r].astype(np.int16)),
    })
