"""Search queries: what each search request wants, the words or photo that state it, and how well an
item matches it.

Implements the search half of the market design's *two surfaces*: a search request's intent is a target
item near one of the user's interest centres, sold in the region and alive; a text query states some of
its attributes (and, on a synthetic catalog, words for its look), a photo query is the user's photo of
it. :func:`match` is how a production system scores items against the query.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from mmrank.data.config import MarketConfig
from mmrank.data import render
from mmrank.data.behaviour import near_similarity
from mmrank.data.market.catalog import Catalog
from mmrank.data.market.requests import Requests
from mmrank.data.market.retrieval import Groups
from mmrank.data.market.tastes import taste
from mmrank.data.market.workers import parallel_map
from mmrank.data.market.world import World, horizon, per_region

# How strongly each stated attribute of a text query counts as a match.
MATCH_W = {"article_type": 1.5, "colour": 1.0, "pattern": 0.6, "style": 0.6}
# How often a text query states each attribute of its target.
SAY_P = {"article_type": 1.0, "colour": 0.6, "pattern": 0.3, "style": 0.3}


@dataclass
class Intents:
    """One row per search request (in request order): its target and what its query states."""

    target: np.ndarray       # (S,) the item the user wants (a catalog row)
    is_image: np.ndarray     # (S,) bool: a photo query (else text)
    say: dict[str, np.ndarray]  # attribute -> (S,) bool: the query states it
    say_latent: np.ndarray   # (S, len(LATENT_WORDS)) bool: the query names that side of the look
    text: list[str]          # (S,) the text query's words
    live_type: np.ndarray    # (S,) items of the target's type alive in the region at the request
    row: np.ndarray          # (n_requests,) request -> its row here (-1 for display requests)
    is_both: np.ndarray | None = None  # (S,) bool: words and a photo (None: no such query)

    @property
    def has_photo(self) -> np.ndarray:
        """(S,) bool: the query carries a photo (photo-only or both)."""
        return self.is_image if self.is_both is None else self.is_image | self.is_both


def draw_intents(cfg: MarketConfig, cat: Catalog, world: World, req: Requests, by_region: Groups,
                 by_type: Groups, live_region: np.ndarray, rng: np.random.Generator) -> Intents:
    """Draw each search request's target among 40 live items of its region, by the user's taste."""
    b = cfg.behaviour
    photo_w = per_region(b.region_photo_weight, cfg.n_regions)
    title_w = per_region(b.region_title_weight, cfg.n_regions)
    n_types = len(cat.vocab["article_type"])
    s_idx = np.flatnonzero(req.search)
    n_s = len(s_idx)
    pool = by_region.draw(req.region[s_idx].astype(np.int64), live_region[s_idx], 40, rng)
    frac_s = req.ts[s_idx] / horizon(cfg)
    t_aff = taste(world, b, req.user[s_idx], frac_s, np.maximum(pool, 0),
                  photo_w[req.region[s_idx]], title_w[req.region[s_idx]])
    t_aff = np.where(pool >= 0, t_aff + world.visible[np.maximum(pool, 0)], -np.inf)
    target = pool[np.arange(n_s), np.argmax(t_aff + rng.gumbel(size=t_aff.shape), axis=1)]
    target = np.where(target >= 0, target, 0)
    is_image = rng.random(n_s) < cfg.image_query_share
    say = {k: (rng.random(n_s) < p) | is_image for k, p in SAY_P.items()}
    say_latent = rng.random((n_s, len(render.LATENT_WORDS))) < 0.25
    text = query_text(cat, target, say, say_latent, rng)
    live_type = by_type.live(req.region[s_idx].astype(np.int64) * n_types + cat.attrs["article_type"][target],
                             req.ts[s_idx])
    row = np.full(len(req.ts), -1, np.int64)
    row[s_idx] = np.arange(n_s)
    is_both = None
    if cfg.both_query_share > 0:  # own stream: a market without such queries draws as before
        rng_b = np.random.default_rng([cfg.seed, 0x424F5448])
        p = cfg.both_query_share / max(1.0 - cfg.image_query_share, 1e-12)
        is_both = ~is_image & (rng_b.random(n_s) < p)
    return Intents(target, is_image, say, say_latent, text, live_type, row, is_both)


def attribute_words(cat: Catalog) -> dict[str, list[list[str]]]:
    """attribute -> value code -> the words a query may use for it (``[""]``: none)."""
    if cat.latent is None:  # a real catalog: its own attribute values, lower-cased
        out = {name: [[v.lower()] if v != "Unknown" else [""] for v in vocab]
               for name, vocab in cat.vocab.items()}
        out["pattern"] = [[""] for _ in cat.vocab["pattern"]]  # sub-category words add little
        return out
    table = {"article_type": render.TYPE_WORDS, "colour": render.COLOUR_WORDS,
             "pattern": render.PATTERN_WORDS, "style": render.STYLE_WORDS}
    return {name: [[w for w in table[name][v] if w] or [""] for v in vocab]
            for name, vocab in cat.vocab.items()}


def query_text(cat: Catalog, target: np.ndarray, say: dict[str, np.ndarray], say_latent: np.ndarray,
               rng: np.random.Generator) -> list[str]:
    """Words for what each text query states about its target item (the item itself is hidden)."""
    words = attribute_words(cat)
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


def match(cat: Catalog, world: World, intents: Intents, q: np.ndarray, items: np.ndarray) -> np.ndarray:
    """How well ``items`` (B, S) match the queries ``q``: stated attributes for text, the look for photos."""
    target = intents.target[q]
    text = np.zeros(items.shape)
    for name, w in MATCH_W.items():
        said = intents.say[name][q]
        text += w * (said[:, None] & (cat.attrs[name][items] == cat.attrs[name][target][:, None]))
    if cat.latent is not None:
        for j, name in enumerate(render.LATENT_WORDS):
            d = render.LATENT_NAMES.index(name)
            said = intents.say_latent[q, j] & (np.abs(cat.latent[target, d]) > 0.0)
            sign = np.sign(cat.latent[target, d])[:, None]
            text += 0.5 * said[:, None] * sign * cat.latent[items, d]
    same_type = cat.attrs["article_type"][items] == cat.attrs["article_type"][target][:, None]
    # Looks like the photo: a Gaussian kernel twice as wide as the look-alike one (power 1/4).
    looks = near_similarity(world.content[items], world.content[target][:, None, :]) ** 0.25
    photo = 1.0 * same_type + 3.0 * looks
    out = np.where(intents.is_image[q][:, None], photo, text)
    if intents.is_both is not None:  # words and a photo: both count, half each
        out = np.where(intents.is_both[q][:, None], 0.5 * (photo + text), out)
    return out


@dataclass
class QueryColumns:
    """The events' query columns, one entry per request (None on display requests and the other kind)."""

    text: list[str | None]
    image: list[str | None]   # the query photo's opaque id
    image_rows: np.ndarray    # requests with a photo query, in request order


def query_columns(cfg: MarketConfig, req: Requests, intents: Intents) -> QueryColumns:
    """Each search request's query text, or its query photo's id (by the seed and request id)."""
    s_idx = np.flatnonzero(req.search)
    image: list[str | None] = [None] * len(req.ts)
    text: list[str | None] = [None] * len(req.ts)
    for i, r in enumerate(s_idx):
        if intents.has_photo[i]:
            image[r] = render.query_image_id(cfg.seed, int(r))
        if not intents.is_image[i]:
            text[r] = intents.text[i]
    return QueryColumns(text, image, s_idx[intents.has_photo])


def photo_chunk(args: tuple[list[bytes], list[int], int]) -> list[bytes]:
    """Query photos (JPEG) of item photos ``images``, one seed each."""
    images, seeds, size = args
    out = []
    for b, s in zip(images, seeds):
        buf = io.BytesIO()
        render.render_query_image(b, s).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def take_query_photos(cfg: MarketConfig, cat: Catalog, intents: Intents, n: int,
                      rng: np.random.Generator) -> list[bytes]:
    """The user's photo of each photo query's target item (``n`` of them, in request order)."""
    targets = intents.target[intents.has_photo]
    seeds = rng.integers(0, 1 << 31, size=n)
    chunks = [([cat.images[t] for t in targets[i:i + 1000]], list(seeds[i:i + 1000]), cfg.image_size)
              for i in range(0, n, 1000)]
    return parallel_map(photo_chunk, chunks, n, "taking query photos") if chunks else []
