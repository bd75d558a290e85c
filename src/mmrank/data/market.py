"""The synthetic market: the embedded default data set, and a ground truth to measure models against.

What drives behaviour is visible the way it is in a shop, and what is hidden stays under ``R/truth/``:

* **Content beyond columns.** Each item has a content vector (:mod:`mmrank.data.content`): a continuous
  part that its photo shows (in synthetic mode a latent rendered into the pixels: shade, proportions,
  trim; on a real catalog, colour and shape statistics of the real photo) and fixed embeddings of the
  coarse columns (type, pattern, style) that titles name. Part of an item's appeal is a function of
  that content; the rest is hidden. Users have a few interest centres in content space, drifting over
  time, and come back to near-duplicates of what they recently clicked.
* **Two surfaces**, as in the papers. *Display* (query-free feeds: the CTR task) and *search* (text or
  photo queries stating what the user wants: the pre-training pairs and the re-ranking lists). A search
  request retrieves about 50 candidates, orders them by a logged production score and shows the top
  10-20; clicks, carts and the one purchase among carted items follow :mod:`mmrank.data.behaviour`,
  with list effects (price comparison, substitution, choice among carted).
* **Regions that differ in kind**: uneven sizes, their own price sensitivity, position decay, weight on
  photos vs titles, taste centres, outside option, list length, and a partly regional assortment.
* **Burn-in**: the first ``burn_in_days`` are simulated (their clicks fill histories) but yield no
  samples, so that active users have histories of realistic length.

With ``catalog`` set, a real catalog's photos, titles and attribute columns are used as they are; users,
prices, arrival times and behaviour are simulated (the manifest says so).

Everything is vectorised per time chunk (a chunk sees the clicks of earlier chunks); the same config,
seed included, gives byte-identical files.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import Progress

from mmrank.config import build, load_yaml, save_yaml
from mmrank.data.config import SIZES, BehaviourConfig, MarketConfig
from mmrank.data import render
from mmrank.data.behaviour import ListInputs, draw_outcomes, examination, list_probabilities, \
    near_similarity, sigmoid
from mmrank.data.content import beyond_type, content_scale, content_space, pixel_statistics, standardise
from mmrank.data.io import write_table
from mmrank.data.samples import build_ctr_samples, build_lists, build_pairs
from mmrank.errors import ConfigError, DataError
from mmrank.lineage import stamp_data

DAY = 86_400
HISTORY_LEN = 50
RECENT = 10          # recent clicks a user comes back to
N_CHUNKS_PER_DAY = 4
CATALOG_ATTRIBUTES = {"article_type": "article_type", "colour": "base_colour", "style": "usage",
                      "pattern": "sub_category"}
# How strongly each stated attribute of a text query counts as a match.
MATCH_W = {"article_type": 1.5, "colour": 1.0, "pattern": 0.6, "style": 0.6}
SAY_P = {"article_type": 1.0, "colour": 0.6, "pattern": 0.3, "style": 0.3}


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
    """Items as arrays; ``attrs[name]`` are integer codes into ``vocab[name]``; row i = item_ids[i].

    ``continuous`` (N, C) is what the photo shows beyond the columns: the rendered latent's colour and
    proportions (synthetic) or the real photo's pixel statistics.
    """

    item_ids: np.ndarray
    titles: list[str]
    images: list[bytes]
    attrs: dict[str, np.ndarray]
    vocab: dict[str, list[str]]
    extra_columns: dict[str, pa.Array]
    continuous: np.ndarray
    latent: np.ndarray | None = None  # (N, 6) the synthetic look, in [-1, 1]


def _render_chunk(args: tuple[list[tuple], int]) -> list[bytes]:
    rows, size = args
    return [render.render_item_image(t, c, p, s, seed, size, render.Look(look))
            for t, c, p, s, seed, look in rows]


def _look_continuous(colour: str, look: np.ndarray) -> list[float]:
    """What a synthetic photo shows beyond the columns: its fill colour and proportions."""
    r, g, b = (v / 255.0 for v in render.shaded_colour(colour, render.Look(look)))
    return [(r + g + b) / 3, r - g, (r + g) / 2 - b, look[3], look[4], look[5]]


def synthetic_catalog(cfg: MarketConfig, rng: np.random.Generator) -> Catalog:
    types, colours = list(render.ARTICLE_TYPES), list(render.COLOURS)
    vocab = {"article_type": types, "colour": colours, "pattern": render.PATTERNS,
             "style": render.STYLES}
    n = cfg.n_items
    # Attribute frequencies are themselves skewed, as in a real catalog.
    attrs = {k: rng.choice(len(v), size=n, p=rng.dirichlet(np.full(len(v), 3.0))).astype(np.int32)
             for k, v in vocab.items()}
    latent = rng.uniform(-1.0, 1.0, size=(n, len(render.LATENT_NAMES)))
    brands = rng.integers(len(render.BRANDS), size=n)
    names = {k: [v[c] for c in attrs[k]] for k, v in vocab.items()}
    titles = [render.make_title(names["article_type"][i], names["colour"][i], names["pattern"][i],
                                names["style"][i], render.BRANDS[brands[i]], rng,
                                render.Look(latent[i])) for i in range(n)]
    item_ids = np.arange(1, n + 1, dtype=np.int64) * 7 + 100_000  # not 0..n-1: ids are not indices
    rows = [(names["article_type"][i], names["colour"][i], names["pattern"][i], names["style"][i],
             cfg.seed * 1_000_003 + int(item_ids[i]), tuple(latent[i])) for i in range(n)]
    images = _parallel(_render_chunk, [(rows[i:i + 500], cfg.image_size) for i in range(0, n, 500)],
                       n, "rendering product photos")
    cont = np.array([_look_continuous(names["colour"][i], latent[i]) for i in range(n)])
    return Catalog(item_ids, titles, images, attrs, vocab, {}, cont, latent)


def _parallel(fn, chunks: list, total: int, what: str) -> list:
    out: list = []
    with Progress(transient=True) as progress:
        task = progress.add_task(what, total=total)
        with ProcessPoolExecutor(max_workers=2) as pool:
            for part in pool.map(fn, chunks):
                out.extend(part)
                progress.advance(task, len(part))
    return out


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
    # What the photo shows beyond its columns: its colour, and how it looks among items of its type.
    cont = beyond_type(pixel_statistics(images), attrs["article_type"])
    return Catalog(ids.astype(np.int64), titles, images, attrs, vocab, extra, cont)


# ------------------------------------------------------------------------------------- hidden world
def _per_region(values: list, n_regions: int) -> np.ndarray:
    return np.array([values[min(r, len(values) - 1)] for r in range(n_regions)])


@dataclass
class World:
    """Everything hidden about items and users (written under ``R/truth/``)."""

    content: np.ndarray      # (I, D) content vectors (standardised, scaled by content_scale(D))
    from_photo: np.ndarray   # (D,) bool: dimensions photos show (else titles name them)
    visible: np.ndarray      # (I,) appeal the content shows
    hidden: np.ndarray       # (I,) appeal only behaviour reveals
    pop: np.ndarray          # (I,) production exposure weight (long-tailed)
    price: np.ndarray        # (I,)
    price_z: np.ndarray      # (I,) log price against the item type's typical price
    created: np.ndarray      # (I,)
    home: np.ndarray         # (I,) home region
    available: np.ndarray    # (I, R) bool: sold in region r
    user_region: np.ndarray  # (U,)
    activity: np.ndarray     # (U,) probability of each user being the visitor
    centres0: np.ndarray     # (U, K, D) interest centres at t = 0
    centres1: np.ndarray     # (U, K, D) at the end (drift)
    n_centres: np.ndarray    # (U,)
    sens: np.ndarray         # (U,) price sensitivity


def build_world(cfg: MarketConfig, cat: Catalog, rng: np.random.Generator) -> World:
    b = cfg.behaviour
    n_items, n_users, n_regions = len(cat.item_ids), cfg.n_users, cfg.n_regions
    # The columns' share of the content space: type, pattern and style (the colour is in the photo's
    # part); on a real catalog, article type, usage and sub-category.
    dims = {"article_type": 2, "pattern": 1, "style": 1}
    content, from_photo = content_space(cat.continuous, cat.attrs, dims, rng)
    d = content.shape[1]
    direction = rng.normal(size=d)
    visible = b.visible_appeal_std * standardise(content @ direction[:, None])[:, 0]
    hidden = rng.normal(0.0, b.hidden_appeal_std, size=n_items)
    # Exposure: better items tend to be more popular; a Zipf law over the resulting ranks.
    order = np.argsort(-(visible + hidden + rng.gumbel(size=n_items)), kind="stable")
    ranks = np.empty(n_items)
    ranks[order] = np.arange(1, n_items + 1)
    pop = 1.0 / ranks ** cfg.zipf_exponent

    band = rng.integers(0, 5, size=n_items)
    type_codes = cat.attrs["article_type"]
    type_level = rng.uniform(2.5, 4.5, size=len(cat.vocab["article_type"]))
    log_p = type_level[type_codes] + 0.35 * band + 0.1 * visible + rng.normal(0, 0.15, size=n_items)
    price = np.round(np.exp(log_p), 2)
    log_p = np.log(price)
    type_mean = np.bincount(type_codes, weights=log_p) / np.maximum(np.bincount(type_codes), 1)
    price_z = (log_p - type_mean[type_codes]) / 0.4

    horizon = (b.burn_in_days + cfg.n_days) * DAY
    created = np.where(rng.random(n_items) < cfg.initial_item_share, 0,
                       rng.integers(1, horizon, size=n_items)).astype(np.int64)
    shares = _per_region(b.region_shares, n_regions).astype(np.float64)
    shares /= shares.sum()
    home = rng.choice(n_regions, size=n_items, p=shares).astype(np.int16)
    regional = rng.random(n_items) < b.regional_assortment
    available = np.where(regional[:, None], np.arange(n_regions)[None, :] == home[:, None], True)

    user_region = rng.choice(n_regions, size=n_users, p=shares).astype(np.int16)
    activity = rng.lognormal(0.0, 1.5, size=n_users)
    k = b.centres_max
    # Centres spread like the content itself (each dimension at the content space's scale).
    s = content_scale(d)
    region_centres = rng.normal(0.0, s, size=(n_regions, 4, d))
    pick = rng.integers(4, size=(n_users, k))
    centres0 = 0.7 * region_centres[user_region[:, None], pick] + rng.normal(0.0, 0.7 * s, size=(n_users, k, d))
    centres1 = centres0 + cfg.drift * rng.normal(0.0, s, size=(n_users, k, d))
    n_centres = rng.integers(1, k + 1, size=n_users)
    sens = _per_region(b.region_price_sensitivity, n_regions)[user_region] * rng.lognormal(0, 0.3, n_users)
    return World(content, from_photo, visible, hidden, pop, price, price_z, created, home, available,
                 user_region, activity / activity.sum(), centres0, centres1, n_centres, sens)


def taste(world: World, b: BehaviourConfig, users: np.ndarray, frac: np.ndarray, items: np.ndarray,
          photo_w: np.ndarray, title_w: np.ndarray) -> np.ndarray:
    """Content appeal of ``items`` (B, S) to ``users`` (B,) at time fraction ``frac`` (B,).

    A log-sum-exp over the user's interest centres of a Gaussian kernel in content space, whose
    dimensions are weighted by the region's weight on photos (``photo_w``) and titles (``title_w``).
    """
    c = (1 - frac)[:, None, None] * world.centres0[users] + frac[:, None, None] * world.centres1[users]
    w = np.where(world.from_photo[None, :], photo_w[:, None], title_w[:, None])  # (B, D)
    v = world.content[items]  # (B, S, D)
    d2 = np.einsum("bsd,bd->bs", v * v, w)[:, :, None] - 2 * np.einsum("bsd,bkd,bd->bsk", v, c, w) \
        + np.einsum("bkd,bkd,bd->bk", c, c, w)[:, None, :]
    logit = -d2 / (2 * b.taste_bandwidth ** 2)
    k_mask = np.arange(c.shape[1])[None, :] < world.n_centres[users][:, None]
    logit = np.where(k_mask[:, None, :], logit, -np.inf)
    mx = logit.max(axis=2, keepdims=True)
    lse = mx[..., 0] + np.log(np.exp(logit - mx).sum(axis=2))
    return b.taste_weight * (lse - np.log(world.n_centres[users])[:, None] + 4.0)


def revisit(world: World, recent: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Max near-duplicate similarity of ``items`` (B, S) to the user's recent clicks ``recent`` (B, M)."""
    has = recent >= 0
    v = world.content[items][:, :, None, :]
    r = world.content[np.maximum(recent, 0)][:, None, :, :]
    sim = near_similarity(v, r)
    return np.where(has[:, None, :], sim, 0.0).max(axis=2, initial=0.0)


# --------------------------------------------------------------------------------------- retrieval
@dataclass
class Groups:
    """Items of each group in creation order (so the items alive at t are a prefix), with cumulative
    exposure weights laid end to end (group g occupies ``starts[g]:starts[g+1]``)."""

    members: np.ndarray
    starts: np.ndarray
    cum_w: np.ndarray
    created: np.ndarray

    @classmethod
    def of(cls, member: np.ndarray, code: np.ndarray, created: np.ndarray, weight: np.ndarray,
           n_groups: int) -> "Groups":
        order = np.lexsort((created[member], code))
        member, code = member[order], code[order]
        counts = np.bincount(code, minlength=n_groups)
        starts = np.concatenate([[0], np.cumsum(counts)])
        # Cumulative weights laid end to end: group g's live prefix is a contiguous range.
        cum_w = np.cumsum(weight[member])
        return cls(member, starts, cum_w, created[member])

    def live(self, groups: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """How many items of each request's group exist at its time."""
        out = np.zeros(len(groups), np.int64)
        for g in np.unique(groups):
            sel = groups == g
            a, z = self.starts[g], self.starts[g + 1]
            out[sel] = np.searchsorted(self.created[a:z], ts[sel], side="right")
        return out

    def draw(self, groups: np.ndarray, n_live: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` items per request from the live prefix of its group, by exposure; -1 if none live."""
        last = len(self.cum_w) - 1
        lo = np.minimum(self.starts[groups], last)
        hi = np.minimum(lo + np.maximum(n_live, 1) - 1, last)
        base = np.where(lo > 0, self.cum_w[np.maximum(lo - 1, 0)], 0.0)
        total = self.cum_w[hi] - base
        u = base[:, None] + rng.random((len(groups), k)) * total[:, None]
        pos = np.clip(np.searchsorted(self.cum_w, u, side="right"), lo[:, None], hi[:, None])
        out = self.members[pos]
        return np.where((n_live > 0)[:, None], out, -1)


def _dedupe_rows(cands: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` distinct non-negative entries of each row of ``cands`` (B, M), order kept; -1 pads."""
    b, m = cands.shape
    order = np.argsort(cands, axis=1, kind="stable")
    srt = np.take_along_axis(cands, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    keep = ~dup & (cands >= 0)
    rank = np.cumsum(keep, axis=1) - 1
    rank = np.where(keep & (rank < k), rank, k)  # slot k = discard
    out = np.full((b, k + 1), -1, dtype=cands.dtype)
    rows = np.repeat(np.arange(b), m)
    out[rows, rank.ravel()] = cands.ravel()
    return out[:, :k]


def _top_by(score: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``items`` sorted by descending ``score`` (-1 entries last), cut to ``k``."""
    score = np.where(items >= 0, score, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(items, order, axis=1), np.take_along_axis(score, order, axis=1)


def content_neighbours(content: np.ndarray, k: int = 10) -> np.ndarray:
    """(I, k) nearest items in content space (FAISS exact search), the item itself excluded."""
    import faiss

    x = np.ascontiguousarray(content, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, nn = index.search(x, k + 1)
    own = nn == np.arange(len(x))[:, None]
    # Drop the item itself (or, among exact duplicates, the last column).
    drop = np.where(own.any(axis=1), np.argmax(own, axis=1), k)
    keep = np.ones_like(nn, dtype=bool)
    keep[np.arange(len(x)), drop] = False
    return nn[keep].reshape(len(x), k).astype(np.int64)


# ------------------------------------------------------------------------------------------ queries
def _attribute_words(cat: Catalog) -> dict[str, list[list[str]]]:
    if cat.latent is None:  # a real catalog: its own attribute values, lower-cased
        out = {name: [[v.lower()] if v != "Unknown" else [""] for v in vocab]
               for name, vocab in cat.vocab.items()}
        out["pattern"] = [[""] for _ in cat.vocab["pattern"]]  # sub-category words add little
        return out
    table = {"article_type": render.TYPE_WORDS, "colour": render.COLOUR_WORDS,
             "pattern": render.PATTERN_WORDS, "style": render.STYLE_WORDS}
    return {name: [[w for w in table[name][v] if w] or [""] for v in vocab]
            for name, vocab in cat.vocab.items()}


def _query_text(cat: Catalog, target: np.ndarray, say: dict[str, np.ndarray], say_latent: np.ndarray,
                rng: np.random.Generator) -> list[str]:
    """Words for what each text query states about its target item (the item itself is hidden)."""
    words = _attribute_words(cat)
    picks = rng.integers(0, 1 << 30, size=(len(target), 5))
    out = []
    for i, t in enumerate(target):
        parts = []
        if cat.latent is not None:
            for j, name in enumerate(render.LATENT_WORDS):
                if say_latent[i, j]:
                    x = cat.latent[t, render.LATENT_NAMES.index(name)]
                    low, high = render.LATENT_WORDS[name]
                    options = high if x > 0 else low
                    if options:
                        parts.append(options[picks[i, 4] % len(options)])
        for j, name in enumerate(("style", "colour", "pattern", "article_type")):
            if say[name][i]:
                options = words[name][cat.attrs[name][t]]
                w = options[picks[i, j] % len(options)]
                if w:
                    parts.append(w)
        out.append(" ".join(parts))
    return out


def _photo_chunk(args: tuple[list[bytes], list[int], int]) -> list[bytes]:
    import io

    images, seeds, size = args
    out = []
    for b, s in zip(images, seeds):
        buf = io.BytesIO()
        render.render_query_image(b, s).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# -------------------------------------------------------------------------------------- simulation
@dataclass
class Requests:
    ts: np.ndarray
    user: np.ndarray
    region: np.ndarray
    search: np.ndarray       # bool: search (else display)
    engagement: np.ndarray   # hidden per-request mood


INTERCEPTS = {"display_click": "display_intercept", "search_click": "search_intercept",
              "cart_per_click": "cart_intercept", "display_purchase_per_cart": "display_buy_intercept",
              "search_purchase_per_cart": "buy_intercept"}


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


def calibrate(cfg: MarketConfig, cat: Catalog, world: World, rounds: int = 3,
              ) -> tuple[BehaviourConfig, dict[str, Any]]:
    """The five intercepts fitted to ``behaviour.target_rates`` by pilot simulations.

    Each round simulates the whole horizon for the first tenth of the users (at least 5,000 of them,
    or all; their share of the impressions, so histories keep their length) and moves every
    intercept by the logit gap between its target rate and the rate the pilot reached. Returns the calibrated behaviour and a record of
    the rounds (for the manifest). The pilots draw from their own random stream.
    """
    b = cfg.behaviour
    missing = [k for k in INTERCEPTS if k not in b.target_rates]
    if missing:
        raise ConfigError(f"behaviour.target_rates: missing key '{missing[0]}' "
                          f"(expected {', '.join(INTERCEPTS)})")
    n_u = min(cfg.n_users, max(5_000, cfg.n_users // 10))
    keep = slice(0, n_u)
    pilot_world = replace(world, user_region=world.user_region[keep], centres0=world.centres0[keep],
                          centres1=world.centres1[keep], n_centres=world.n_centres[keep],
                          sens=world.sens[keep],
                          activity=world.activity[keep] / world.activity[keep].sum())
    rng = np.random.default_rng([cfg.seed, 0xCA11B])
    rounds_log = []
    for _ in range(rounds):
        share = float(world.activity[keep].sum())  # their share of all visits
        pilot = cfg.model_copy(update={"n_users": n_u, "behaviour": b,
                                       "n_impressions": max(1000, int(cfg.n_impressions * share))})
        req = _draw_requests(pilot, pilot_world, rng)
        log, _ = simulate(pilot, cat, pilot_world, req, rng, rng)
        search = req.search[_cat(log.slot_req, np.int64)]
        click, cart, buy = (_cat(x, bool) for x in (log.slot_click, log.slot_cart, log.slot_buy))
        rates = {"display_click": click[~search].mean(), "search_click": click[search].mean(),
                 "cart_per_click": cart.sum() / max(click.sum(), 1),
                 "display_purchase_per_cart": buy[~search].sum() / max(cart[~search].sum(), 1),
                 "search_purchase_per_cart": buy[search].sum() / max(cart[search].sum(), 1)}
        rounds_log.append({"intercepts": {f: round(getattr(b, f), 4) for f in INTERCEPTS.values()},
                           "rates": {k: round(float(v), 4) for k, v in rates.items()}})
        b = b.model_copy(update={f: getattr(b, f) + _logit(b.target_rates[k]) - _logit(rates[k])
                                 for k, f in INTERCEPTS.items()})
    final = {f: round(getattr(b, f), 4) for f in INTERCEPTS.values()}
    return b.model_copy(update=final), {"targets": dict(b.target_rates), "rounds": rounds_log,
                                        "intercepts": final,
                                        "pilot": {"users": n_u, "impressions": pilot.n_impressions}}


def _draw_requests(cfg: MarketConfig, world: World, rng: np.random.Generator) -> Requests:
    b = cfg.behaviour
    horizon = (b.burn_in_days + cfg.n_days) * DAY
    total = cfg.n_impressions * horizon / (cfg.n_days * DAY)
    shares = _per_region(b.region_shares, cfg.n_regions)
    mean_shown = float(np.dot(shares / shares.sum(), _per_region(b.region_shown, cfg.n_regions)))
    n_disp = int(round(total * b.display_share / b.display_slots))
    n_search = int(round(total * (1 - b.display_share) / mean_shown))
    n = max(2, n_disp + n_search)
    ts = np.sort(rng.integers(0, horizon, size=n)).astype(np.int64)
    search = rng.permutation(np.r_[np.zeros(n - n_search, bool), np.ones(n_search, bool)])
    user = rng.choice(cfg.n_users, size=n, p=world.activity).astype(np.int64)
    return Requests(ts, user, world.user_region[user], search,
                    rng.normal(0.0, b.engagement_std, size=n))


class _Recent:
    """Each user's last ``RECENT`` clicked items (-1 = none), updated chunk by chunk."""

    def __init__(self, n_users: int) -> None:
        self.items = np.full((n_users, RECENT), -1, np.int64)
        self.ts = np.full((n_users, RECENT), -1, np.int64)

    def add(self, users: np.ndarray, ts: np.ndarray, items: np.ndarray) -> None:
        if not len(users):
            return
        uniq = np.unique(users)
        u = np.concatenate([np.repeat(uniq, RECENT), users])
        t = np.concatenate([self.ts[uniq].ravel(), ts])
        it = np.concatenate([self.items[uniq].ravel(), items])
        order = np.lexsort((t, u))
        u, t, it = u[order], t[order], it[order]
        end = np.searchsorted(u, uniq, side="right")
        idx = end[:, None] - RECENT + np.arange(RECENT)[None, :]
        self.items[uniq], self.ts[uniq] = it[idx], t[idx]


@dataclass
class Logged:
    """The simulated logs, as flat arrays (one row per shown slot or per candidate)."""

    slot_req: list
    slot_pos: list
    slot_item: list
    slot_click: list
    slot_cart: list
    slot_buy: list
    slot_p: list          # (n, 4): p_click, p_cart, p_purchase, p_click attainable
    cand_req: list
    cand_item: list
    cand_score: list
    cand_base: list       # (n, 3): base_u, base_c, base_v without engagement
    content_part: list    # (n,) content part of the click logit (taste + visible appeal), shown slots
    slot_user: list


@dataclass
class _Sim:
    """What every time chunk of the simulation reads (and ``recent``/``log``, which it updates)."""

    cfg: MarketConfig
    cat: Catalog
    world: World
    req: Requests
    rng: np.random.Generator
    recent: "_Recent"
    log: Logged
    by_region: Groups
    by_type: Groups
    live_region: np.ndarray
    neighbours: np.ndarray
    query: dict[str, Any]
    s_pos: np.ndarray       # request -> row of the search-intent arrays in ``query``
    decay: np.ndarray       # per region
    photo_w: np.ndarray
    title_w: np.ndarray
    outside: np.ndarray
    shown_n: np.ndarray
    horizon: int


def simulate(cfg: MarketConfig, cat: Catalog, world: World, req: Requests, rng: np.random.Generator,
             rng_q: np.random.Generator) -> tuple[Logged, dict[str, Any]]:
    b = cfg.behaviour
    n_regions, horizon = cfg.n_regions, (b.burn_in_days + cfg.n_days) * DAY
    decay = _per_region(b.region_position_decay, n_regions)
    photo_w = _per_region(b.region_photo_weight, n_regions)
    title_w = _per_region(b.region_title_weight, n_regions)
    outside = _per_region(b.region_outside_option, n_regions)
    shown_n = _per_region(b.region_shown, n_regions)
    types = cat.attrs["article_type"]
    n_types = len(cat.vocab["article_type"])

    # Retrieval groups: items sold in a region (display, any-type search) and by region and type.
    reg_item, reg_code = np.nonzero(world.available)
    by_region = Groups.of(reg_item, reg_code.astype(np.int64), world.created, world.pop, n_regions)
    by_type = Groups.of(reg_item, reg_code.astype(np.int64) * n_types + types[reg_item],
                        world.created, world.pop, n_regions * n_types)
    neighbours = content_neighbours(world.content)
    live_region = by_region.live(req.region.astype(np.int64), req.ts)

    # Search intents: a target item near one of the user's interest centres, drawn from what is sold
    # in the region and alive; the query states some of its attributes, or is a photo of it.
    s_idx = np.flatnonzero(req.search)
    n_s = len(s_idx)
    pool = by_region.draw(req.region[s_idx].astype(np.int64), live_region[s_idx], 40, rng_q)
    frac_s = req.ts[s_idx] / horizon
    t_aff = taste(world, b, req.user[s_idx], frac_s, np.maximum(pool, 0),
                  photo_w[req.region[s_idx]], title_w[req.region[s_idx]])
    t_aff = np.where(pool >= 0, t_aff + world.visible[np.maximum(pool, 0)], -np.inf)
    target = pool[np.arange(n_s), np.argmax(t_aff + rng_q.gumbel(size=t_aff.shape), axis=1)]
    target = np.where(target >= 0, target, 0)
    is_image = rng_q.random(n_s) < cfg.image_query_share
    say = {k: (rng_q.random(n_s) < p) | is_image for k, p in SAY_P.items()}
    say_latent = rng_q.random((n_s, len(render.LATENT_WORDS))) < 0.25
    q_text = _query_text(cat, target, say, say_latent, rng_q)
    live_type = by_type.live(req.region[s_idx].astype(np.int64) * n_types + types[target],
                             req.ts[s_idx])
    query = {"target": target, "is_image": is_image, "say": say, "say_latent": say_latent,
             "text": q_text, "live_type": live_type}
    s_pos = np.full(len(req.ts), -1, np.int64)
    s_pos[s_idx] = np.arange(n_s)

    sim = _Sim(cfg, cat, world, req, rng, _Recent(cfg.n_users), Logged(*[[] for _ in fields(Logged)]),
               by_region, by_type, live_region, neighbours, query, s_pos, decay, photo_w, title_w,
               outside, shown_n, horizon)
    chunk_edges = np.searchsorted(req.ts, np.arange(0, horizon + 1, DAY // N_CHUNKS_PER_DAY))
    with Progress(transient=True) as progress:
        task = progress.add_task("simulating behaviour", total=len(req.ts))
        for a, z in zip(chunk_edges[:-1], chunk_edges[1:]):
            if z <= a:
                continue
            rows = np.arange(a, z)
            clicks = []
            for surface_rows, fn in ((rows[~req.search[rows]], _display_chunk),
                                     (rows[req.search[rows]], _search_chunk)):
                if len(surface_rows):
                    clicks.append(fn(sim, surface_rows))
            users = np.concatenate([c[0] for c in clicks])
            sim.recent.add(users, np.concatenate([c[1] for c in clicks]), np.concatenate([c[2] for c in clicks]))
            progress.advance(task, len(rows))
    return sim.log, query


def _display_chunk(sim: _Sim, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A display feed: candidates from popularity and from look-alikes of recent clicks, ordered by a
    production score that knows popularity and (noisily) hidden appeal, the top ``display_slots``
    shown; each slot is clicked, carted and bought independently. Returns the clicks."""
    cfg, world, req, rng, recent = sim.cfg, sim.world, sim.req, sim.rng, sim.recent
    decay, photo_w, title_w, outside, horizon = sim.decay, sim.photo_w, sim.title_w, sim.outside, sim.horizon
    b = cfg.behaviour
    n, k = len(rows), b.display_slots
    region = req.region[rows].astype(np.int64)
    users = req.user[rows]
    rec = recent.items[users]
    popular = sim.by_region.draw(region, sim.live_region[rows], 2 * k, rng)
    seed_slot = rng.integers(RECENT, size=(n, k))
    seeds = np.take_along_axis(rec, seed_slot, axis=1)
    look = sim.neighbours[np.maximum(seeds, 0), rng.integers(sim.neighbours.shape[1], size=(n, k))]
    ok = (seeds >= 0) & (world.created[look] <= req.ts[rows][:, None]) & world.available[look, region[:, None]]
    look = np.where(ok, look, -1)
    cands = _dedupe_rows(np.concatenate([look[:, : k // 2], popular], axis=1), 2 * k)
    safe = np.maximum(cands, 0)
    prod = 0.5 * np.log(world.pop[safe]) + 0.4 * world.hidden[safe] + 0.6 * np.isin(cands, look) \
        + rng.normal(0, 0.5, size=cands.shape)
    shown, _ = _top_by(prod, cands, k)
    mask = shown >= 0
    item = np.maximum(shown, 0)
    frac = req.ts[rows] / horizon
    r = region
    tst = taste(world, b, users, frac, item, photo_w[r], title_w[r])
    content_part = tst + world.visible[item]
    fresh = np.exp(-np.maximum(req.ts[rows][:, None] - world.created[item], 0) / (3 * DAY))
    s = world.sens[users][:, None]
    u = b.display_intercept + content_part + world.hidden[item] + b.revisit_weight * revisit(world, rec, item) \
        - 0.5 * s * world.price_z[item] + 0.3 * fresh
    exam = examination(np.broadcast_to(np.arange(k), (n, k)), decay[r])
    eps = req.engagement[rows][:, None]
    p_click = exam * sigmoid(u + eps)
    p_click_att = exam * _marginal_sigmoid(u, b.engagement_std)
    c = b.cart_intercept + 0.4 * (world.visible[item] + world.hidden[item]) + 0.3 * tst - 0.6 * s * world.price_z[item]
    v = b.display_buy_intercept + 0.5 * (world.visible[item] + world.hidden[item]) - 0.6 * s * world.price_z[item] \
        - outside[r][:, None]
    clicked = mask & (rng.random((n, k)) < p_click)
    carted = clicked & (rng.random((n, k)) < sigmoid(c))
    bought = carted & (rng.random((n, k)) < sigmoid(v))
    p = np.stack([p_click, p_click * sigmoid(c), p_click * sigmoid(c) * sigmoid(v), p_click_att], axis=-1)
    _log_slots(sim.log, rows, shown, mask, clicked, carted, bought, p, content_part, users)
    return _clicks_of(req, rows, shown, clicked)


def _search_chunk(sim: _Sim, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A search request: retrieve candidates matching the query, order them by the production score,
    show the top ``region_shown``; behaviour by :mod:`mmrank.data.behaviour` (list effects). Returns
    the clicks."""
    cfg, cat, world, req, rng, recent, log = sim.cfg, sim.cat, sim.world, sim.req, sim.rng, sim.recent, sim.log
    query, decay, outside, horizon = sim.query, sim.decay, sim.outside, sim.horizon
    b = cfg.behaviour
    n_c = b.search_candidates
    region = req.region[rows].astype(np.int64)
    users = req.user[rows]
    q = sim.s_pos[rows]
    target = query["target"][q]
    n_types = len(cat.vocab["article_type"])
    typed = sim.by_type.draw(region * n_types + cat.attrs["article_type"][target], query["live_type"][q],
                             2 * n_c, rng)
    anyt = sim.by_region.draw(region, sim.live_region[rows], n_c, rng)
    cands = _dedupe_rows(np.concatenate([typed, anyt], axis=1), 3 * n_c)
    safe = np.maximum(cands, 0)
    match = _match(cat, world, query, q, safe, b)
    retrieval = match + 0.3 * np.log(world.pop[safe]) + 0.7 * rng.gumbel(size=cands.shape)
    cands, _ = _top_by(retrieval, cands, n_c)
    safe = np.maximum(cands, 0)
    match = _match(cat, world, query, q, safe, b)
    prod = match + 0.35 * np.log(world.pop[safe]) + 0.3 * world.hidden[safe] + rng.normal(0, 0.4, size=cands.shape)
    cands, prod = _top_by(prod, cands, n_c)
    safe = np.maximum(cands, 0)
    match = _match(cat, world, query, q, safe, b)
    frac = req.ts[rows] / horizon
    tst = taste(world, b, users, frac, safe, sim.photo_w[region], sim.title_w[region])
    appeal = world.visible[safe] + world.hidden[safe]
    rec = revisit(world, recent.items[users], safe)
    base_u = b.search_intercept + b.query_match_weight * match + tst + appeal + b.revisit_weight * rec
    base_c = b.cart_intercept + 0.25 * match + 0.4 * appeal + 0.3 * tst
    base_v = b.buy_intercept + 0.5 * appeal + 0.3 * tst + 0.3 * match
    k = int(sim.shown_n.max())
    n_shown = sim.shown_n[region]
    mask = (cands[:, :k] >= 0) & (np.arange(k)[None, :] < n_shown[:, None])
    x = ListInputs(base_u[:, :k], base_c[:, :k], base_v[:, :k], np.log(world.price[safe[:, :k]]),
                   world.content[safe[:, :k]], mask, world.sens[users], decay[region], outside[region],
                   req.engagement[rows], b.substitution)
    out = draw_outcomes(x, rng)
    probs = list_probabilities(x)
    att = _marginal_click(x, b.engagement_std)
    p = np.stack([probs["click"], probs["cart"], probs["purchase"], att], axis=-1)
    shown = np.where(mask, cands[:, :k], -1)
    _log_slots(log, rows, shown, mask, out["click"], out["cart"], out["purchase"], p,
               tst[:, :k] + world.visible[safe[:, :k]], users)
    valid = cands >= 0
    log.cand_req.append(np.repeat(rows, valid.sum(axis=1)))
    log.cand_item.append(cands[valid])
    log.cand_score.append(prod[valid].astype(np.float32))
    log.cand_base.append(np.stack([base_u[valid], base_c[valid], base_v[valid]], axis=1))
    return _clicks_of(req, rows, shown, out["click"])


def _match(cat: Catalog, world: World, query: dict, q: np.ndarray, items: np.ndarray,
           b: BehaviourConfig) -> np.ndarray:
    """How well ``items`` (B, S) match each query: stated attributes for text, the look for photos."""
    target = query["target"][q]
    text = np.zeros(items.shape)
    for name, w in MATCH_W.items():
        said = query["say"][name][q]
        text += w * (said[:, None] & (cat.attrs[name][items] == cat.attrs[name][target][:, None]))
    if cat.latent is not None:
        for j, name in enumerate(render.LATENT_WORDS):
            d = render.LATENT_NAMES.index(name)
            said = query["say_latent"][q, j] & (np.abs(cat.latent[target, d]) > 0.0)
            sign = np.sign(cat.latent[target, d])[:, None]
            text += 0.5 * said[:, None] * sign * cat.latent[items, d]
    same_type = cat.attrs["article_type"][items] == cat.attrs["article_type"][target][:, None]
    # Looks like the photo: a Gaussian kernel twice as wide as the look-alike one (power 1/4).
    looks = near_similarity(world.content[items], world.content[target][:, None, :]) ** 0.25
    photo = 1.0 * same_type + 3.0 * looks
    return np.where(query["is_image"][q][:, None], photo, text)


def _marginal_sigmoid(u: np.ndarray, std: float, n: int = 16) -> np.ndarray:
    """E[sigmoid(u + e)] over e ~ N(0, std^2), by Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    return sum(wi * sigmoid(u + std * xi) for xi, wi in zip(x, w))


def _marginal_click(x: ListInputs, std: float, n: int = 16) -> np.ndarray:
    """P(click) with the request's hidden engagement integrated out (what no model input carries)."""
    nodes, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    u, _, _ = x.utilities()
    u = u - x.engagement[:, None]
    pos = np.broadcast_to(np.arange(u.shape[1]), u.shape)
    exam = examination(pos, x.decay)
    return np.where(x.mask, exam * sum(wi * sigmoid(u + std * xi) for xi, wi in zip(nodes, w)), 0.0)


def _log_slots(log: Logged, rows, shown, mask, clicked, carted, bought, p, content_part, users) -> None:
    r, k = np.nonzero(mask)
    log.slot_req.append(rows[r])
    log.slot_pos.append(k.astype(np.int16))
    log.slot_item.append(shown[r, k])
    log.slot_click.append(clicked[r, k])
    log.slot_cart.append(carted[r, k])
    log.slot_buy.append(bought[r, k])
    log.slot_p.append(p[r, k])
    log.content_part.append(content_part[r, k])
    log.slot_user.append(users[r])


def _clicks_of(req: Requests, rows, shown, clicked):
    r, k = np.nonzero(clicked)
    return req.user[rows][r], req.ts[rows][r], shown[r, k]


# ----------------------------------------------------------------------------------------- tables
def _cat(parts: list, dtype=None) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=dtype or np.float64)
    out = np.concatenate(parts)
    return out.astype(dtype) if dtype is not None else out


def generate_market(cfg: MarketConfig, out: str | Path) -> dict[str, Any]:
    """Generate the market: tables under ``out/data/``, the hidden world under ``out/truth/``.

    Returns the manifest (also written as ``out/data/manifest.json``).
    """
    started = time.perf_counter()
    out = Path(out)
    data_dir, truth_dir = out / "data", out / "truth"
    data_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    b = cfg.behaviour
    root = np.random.SeedSequence(cfg.seed)
    r_cat, r_world, r_req, r_beh, r_q, r_photo = (np.random.default_rng(s) for s in root.spawn(6))

    cat = real_catalog(cfg, r_cat) if cfg.catalog else synthetic_catalog(cfg, r_cat)
    world = build_world(cfg, cat, r_world)
    calibration = None
    if cfg.calibrate if cfg.calibrate is not None else bool(cfg.catalog):
        b, calibration = calibrate(cfg, cat, world)
        # Written to R/config.yaml as fitted, with calibrate off: that file regenerates this market.
        cfg = cfg.model_copy(update={"behaviour": b, "calibrate": False})
    req = _draw_requests(cfg, world, r_req)
    log, query = simulate(cfg, cat, world, req, r_beh, r_q)

    slot_req = _cat(log.slot_req, np.int64)
    order = np.lexsort((_cat(log.slot_pos, np.int16), slot_req))
    slot = {"req": slot_req[order], "pos": _cat(log.slot_pos, np.int16)[order],
            "item": _cat(log.slot_item, np.int64)[order], "click": _cat(log.slot_click, bool)[order],
            "cart": _cat(log.slot_cart, bool)[order], "buy": _cat(log.slot_buy, bool)[order],
            "p": np.concatenate(log.slot_p)[order], "content": _cat(log.content_part)[order],
            "user": _cat(log.slot_user, np.int64)[order]}
    cand_req = _cat(log.cand_req, np.int64)
    c_order = np.argsort(cand_req, kind="stable")
    cand = {"req": cand_req[c_order], "item": _cat(log.cand_item, np.int64)[c_order],
            "score": _cat(log.cand_score, np.float32)[c_order],
            "base": np.concatenate(log.cand_base)[c_order] if log.cand_base else np.zeros((0, 3))}

    # Query photos: the user's photo of the target item, by an opaque id.
    s_idx = np.flatnonzero(req.search)
    q_image: list[str | None] = [None] * len(req.ts)
    q_text: list[str | None] = [None] * len(req.ts)
    img_rows = s_idx[query["is_image"]]
    for i, r in enumerate(s_idx):
        if query["is_image"][i]:
            q_image[r] = render.query_image_id(cfg.seed, int(r))
        else:
            q_text[r] = query["text"][i]
    targets = query["target"][query["is_image"]]
    photo_seeds = r_photo.integers(0, 1 << 31, size=len(img_rows))
    chunks = [([cat.images[t] for t in targets[i:i + 1000]], list(photo_seeds[i:i + 1000]),
               cfg.image_size) for i in range(0, len(img_rows), 1000)]
    photos = _parallel(_photo_chunk, chunks, len(img_rows), "taking query photos") if chunks else []

    start_ts = b.burn_in_days * DAY
    logged = req.ts >= start_ts
    split_ts = int(np.quantile(req.ts[logged], 0.8)) if logged.any() else start_ts
    new_item_ts = split_ts - DAY
    surface = np.where(req.search, "search", "display")

    items = _items_table(cat, world.price, world.created)
    write_table(items, data_dir / "items.parquet", row_group_size=2048)
    users = pa.table({"user_id": pa.array(np.arange(cfg.n_users, dtype=np.int64)),
                      "region": pa.array(world.user_region)})
    write_table(users, data_dir / "users.parquet")
    events = _events_table(cat, slot, req, surface, q_text, q_image)
    write_table(events, data_dir / "events.parquet")
    write_table(pa.table({"query_image": pa.array([q_image[r] for r in img_rows], pa.string()),
                          "image": pa.array(photos, pa.binary())}), data_dir / "query_images.parquet",
                row_group_size=2048)
    candidates = pa.table({"request_id": pa.array(cand["req"]),
                           "item_id": pa.array(cat.item_ids[cand["item"]]),
                           "prod_score": pa.array(cand["score"])})
    write_table(candidates, data_dir / "candidates.parquet")

    pairs = build_pairs(events, split_ts, start_ts)
    write_table(pairs, data_dir / "pairs.parquet")
    samples = build_ctr_samples(events, items, split_ts, HISTORY_LEN, start_ts)
    write_table(samples, data_dir / "ctr_samples.parquet")
    lists = build_lists(events, items, split_ts, start_ts, candidates, HISTORY_LEN)
    write_table(lists, data_dir / "lists.parquet")

    _write_truth(truth_dir, cfg, cat, world, req, slot, cand, query, s_idx)
    surfaces = _surface_stats(cfg, cat, world, req, slot, start_ts, split_ts)
    display = surfaces["display"]
    logged_slot = req.ts[slot["req"]] >= start_ts  # after the burn-in
    manifest = {
        "simulated": True,
        "source": (f"real catalog {cfg.catalog} (photos, titles, attributes real; users, prices, "
                   f"arrival times and behaviour simulated)") if cfg.catalog
        else "synthetic market (items, photos, titles, users and behaviour all simulated)",
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "counts": {"items": items.num_rows, "users": users.num_rows, "requests": int(len(req.ts)),
                   "logged_requests": int(logged.sum()),
                   "impressions": int(logged_slot.sum()), "clicks": int(slot["click"][logged_slot].sum()),
                   "carts": int(slot["cart"][logged_slot].sum()),
                   "purchases": int(slot["buy"][logged_slot].sum()),
                   "simulated_impressions": int(len(slot["req"])),
                   "events": events.num_rows, "pairs": pairs.num_rows, "query_images": len(photos),
                   "ctr_samples": samples.num_rows, "lists": lists.num_rows,
                   "candidates": candidates.num_rows},
        "surfaces": surfaces,
        "calibration": calibration,
        "ctr": display["rates"]["click"],
        "oracle_auc": display["oracle_auc"],
        "oracle_auc_test": display["oracle_auc_test"],
        "attainable_auc": display["attainable_auc"],
        "start_ts": int(start_ts),
        "split_ts": split_ts,
        "new_item_ts": new_item_ts,
        "horizon_ts": int((b.burn_in_days + cfg.n_days) * DAY),
        "history_len": HISTORY_LEN,
        "attributes": {name: vocab for name, vocab in cat.vocab.items()},
        "attribute_columns": (CATALOG_ATTRIBUTES if cfg.catalog
                              else {n: n for n in cat.vocab}),
    }
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    stamp_data(data_dir)  # the tables' digests (data/lineage.json, mmrank.lineage)
    save_yaml(cfg, out / "config.yaml", section="market")
    manifest["seconds"] = round(time.perf_counter() - started, 1)  # not written: files stay identical
    return manifest


def _write_truth(truth_dir: Path, cfg: MarketConfig, cat: Catalog, world: World, req: Requests,
                 slot: dict, cand: dict, query: dict, s_idx: np.ndarray) -> None:
    """Everything hidden, for the evaluator and for eval code (never for a training stage)."""
    b = cfg.behaviour
    d = world.content.shape[1]
    write_table(pa.table({
        "item_id": pa.array(cat.item_ids),
        "content": pa.FixedSizeListArray.from_arrays(pa.array(world.content.ravel().astype(np.float32)), d),
        "visible_appeal": pa.array(world.visible), "hidden_appeal": pa.array(world.hidden),
        "popularity": pa.array(world.pop), "home_region": pa.array(world.home),
        "log_price": pa.array(np.log(world.price)),
    }), truth_dir / "items.parquet")
    if cat.latent is not None:
        write_table(pa.table({"item_id": pa.array(cat.item_ids),
                              **{f"latent_{n}": pa.array(cat.latent[:, j])
                                 for j, n in enumerate(render.LATENT_NAMES)}}),
                    truth_dir / "latent.parquet")
    write_table(pa.table({"item_id": pa.array(cat.item_ids),
                          **{f"continuous_{j}": pa.array(cat.continuous[:, j])
                             for j in range(cat.continuous.shape[1])}}),
                truth_dir / "continuous.parquet")
    region = req.region.astype(np.int64)
    target = np.full(len(req.ts), -1, np.int64)
    target[s_idx] = cat.item_ids[query["target"]]
    image = np.zeros(len(req.ts), bool)
    image[s_idx] = query["is_image"]
    write_table(pa.table({
        "request_id": pa.array(np.arange(len(req.ts), dtype=np.int64)),
        "surface": pa.array(np.where(req.search, "search", "display")),
        "region": pa.array(req.region), "user_id": pa.array(req.user),
        "engagement": pa.array(req.engagement),
        "sensitivity": pa.array(world.sens[req.user]),
        "position_decay": pa.array(_per_region(b.region_position_decay, cfg.n_regions)[region]),
        "outside_option": pa.array(_per_region(b.region_outside_option, cfg.n_regions)[region]),
        "n_shown": pa.array(np.where(req.search, _per_region(b.region_shown, cfg.n_regions)[region],
                                     b.display_slots).astype(np.int16)),
        "target_item_id": pa.array(target), "photo_query": pa.array(image),
    }), truth_dir / "requests.parquet")
    p = slot["p"]
    write_table(pa.table({
        "request_id": pa.array(slot["req"]), "position": pa.array(slot["pos"]),
        "item_id": pa.array(cat.item_ids[slot["item"]]),
        "p_click": pa.array(p[:, 0]), "p_cart": pa.array(p[:, 1]), "p_purchase": pa.array(p[:, 2]),
        "p_click_attainable": pa.array(p[:, 3]), "content_logit": pa.array(slot["content"]),
    }), truth_dir / "slots.parquet")
    write_table(pa.table({
        "request_id": pa.array(cand["req"]), "item_id": pa.array(cat.item_ids[cand["item"]]),
        "base_click": pa.array(cand["base"][:, 0]), "base_cart": pa.array(cand["base"][:, 1]),
        "base_buy": pa.array(cand["base"][:, 2]),
    }), truth_dir / "candidates.parquet")
    (truth_dir / "behaviour.json").write_text(json.dumps(b.model_dump(mode="json"), indent=2))


def _surface_stats(cfg: MarketConfig, cat: Catalog, world: World, req: Requests, slot: dict,
                   start_ts: int, split_ts: int) -> dict[str, Any]:
    from mmrank.eval import auc

    out: dict[str, Any] = {}
    search_req = req.search[slot["req"]]
    logged = req.ts[slot["req"]] >= start_ts
    for name, sel in (("display", ~search_req & logged), ("search", search_req & logged)):
        clicked = slot["click"][sel]
        if not sel.any():
            continue
        p = slot["p"][sel]
        test = req.ts[slot["req"][sel]] >= split_ts
        imp_counts = np.bincount(slot["item"][sel], minlength=len(cat.item_ids))
        top = np.argsort(-imp_counts, kind="stable")[: max(1, len(imp_counts) // 100)]
        lens = _prior_clicks(req, slot, sel)
        out[name] = {
            "impressions": int(sel.sum()),
            "requests": int(len(np.unique(slot["req"][sel]))),
            "oracle_auc": round(float(auc(clicked.astype(np.int8), p[:, 0])), 4),
            "oracle_auc_test": round(float(auc(clicked[test].astype(np.int8), p[test, 0])), 4)
            if test.any() and clicked[test].any() else None,
            "attainable_auc": round(float(auc(clicked.astype(np.int8), p[:, 3])), 4),
            "rates": {"click": round(float(clicked.mean()), 4),
                      "cart_per_click": round(float(slot["cart"][sel].sum() / max(clicked.sum(), 1)), 4),
                      "purchase_per_cart": round(float(slot["buy"][sel].sum()
                                                       / max(slot["cart"][sel].sum(), 1)), 4),
                      "purchase_per_impression": round(float(slot["buy"][sel].mean()), 5)},
            "history_len": {"median": float(np.median(lens)), "p90": float(np.quantile(lens, 0.9)),
                            "share_empty": round(float((lens == 0).mean()), 4)},
            "top1pct_share": round(float(imp_counts[top].sum() / max(imp_counts.sum(), 1)), 4),
            "columns_r2": round(_columns_r2(cfg, cat, world, req, slot, sel), 4),
        }
    return out


def _prior_clicks(req: Requests, slot: dict, sel: np.ndarray) -> np.ndarray:
    """Number of the user's clicks strictly before each selected impression (uncapped)."""
    c = slot["click"]
    c_user, c_ts = slot["user"][c], req.ts[slot["req"][c]]
    key = np.sort(c_user.astype(np.int64) << 32 | c_ts)
    u, t = slot["user"][sel].astype(np.int64), req.ts[slot["req"][sel]]
    return np.searchsorted(key, u << 32 | t, side="left") - np.searchsorted(key, u << 32, side="left")


def _columns_r2(cfg: MarketConfig, cat: Catalog, world: World, req: Requests, slot: dict,
                sel: np.ndarray, n: int = 20_000, others: int = 8) -> float:
    """Share of the content part of the click logit that the categorical columns alone explain.

    For a sample of impressions, the columns' best guess of the content part (the user's taste plus
    the visible appeal) is its mean over other items of the same column values (the same cell), for
    the same user at the same time; R^2 = 1 - SSE / SST of that guess.
    """
    rng = np.random.default_rng(cfg.seed + 17)
    idx = np.flatnonzero(sel)
    idx = rng.choice(idx, size=min(n, len(idx)), replace=False)
    cell = np.zeros(len(cat.item_ids), np.int64)
    for name in sorted(cat.attrs):
        cell = cell * (int(cat.attrs[name].max()) + 1) + cat.attrs[name]
    order = np.argsort(cell, kind="stable")
    srt = cell[order]
    item = slot["item"][idx]
    lo = np.searchsorted(srt, cell[item], side="left")
    hi = np.searchsorted(srt, cell[item], side="right")
    size = hi - lo
    ok = size > 1
    idx, item, lo, size = idx[ok], item[ok], lo[ok], size[ok]
    pick = order[lo[:, None] + (rng.random((len(idx), others)) * size[:, None]).astype(np.int64)]
    pick = np.where(pick == item[:, None], -1, pick)  # leave the item itself out
    b = cfg.behaviour
    r = req.region[slot["req"][idx]].astype(np.int64)
    users = slot["user"][idx]
    frac = req.ts[slot["req"][idx]] / ((b.burn_in_days + cfg.n_days) * DAY)
    guess = taste(world, b, users, frac, np.maximum(pick, 0),
                  _per_region(b.region_photo_weight, cfg.n_regions)[r],
                  _per_region(b.region_title_weight, cfg.n_regions)[r]) + world.visible[np.maximum(pick, 0)]
    valid = pick >= 0
    has = valid.any(axis=1)
    guess = np.where(valid, guess, 0.0).sum(axis=1)[has] / valid.sum(axis=1)[has]
    actual = slot["content"][idx][has]
    if len(actual) < 2:
        return float("nan")
    return float(1.0 - np.sum((actual - guess) ** 2) / np.sum((actual - actual.mean()) ** 2))


def _items_table(cat: Catalog, price: np.ndarray, created: np.ndarray) -> pa.Table:
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
    return pa.table(cols)


def _events_table(cat: Catalog, slot: dict, req: Requests, surface: np.ndarray,
                  query_text: list[str | None], query_image: list[str | None]) -> pa.Table:
    parts = []
    for code, mask in enumerate([np.ones_like(slot["click"]), slot["click"], slot["cart"], slot["buy"]]):
        parts.append((slot["req"][mask], slot["pos"][mask], slot["item"][mask],
                      np.full(int(mask.sum()), code, np.int8)))
    r = np.concatenate([p[0] for p in parts])
    p = np.concatenate([p[1] for p in parts])
    it = np.concatenate([p_[2] for p_ in parts])
    ev = np.concatenate([p_[3] for p_ in parts])
    order = np.lexsort((ev, p, r))  # by request, position, then funnel step
    r, p, it, ev = r[order], p[order], it[order], ev[order]
    names = pa.array(["impression", "click", "cart", "purchase"])
    take = pa.array(r)
    return pa.table({
        "ts": pa.array(req.ts[r]), "user_id": pa.array(req.user[r]),
        "item_id": pa.array(cat.item_ids[it]), "request_id": pa.array(r),
        "position": pa.array(p), "event": names.take(pa.array(ev)),
        "query_text": pa.array(query_text, pa.string()).take(take),
        "query_image": pa.array(query_image, pa.string()).take(take),
        "region": pa.array(req.region[r].astype(np.int16)),
        "surface": pa.array(surface[r]),
    })
