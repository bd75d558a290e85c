"""The items: a rendered synthetic catalog, or a real catalog's photos, titles and attribute columns.

Implements the items of the market design: *content beyond columns* starts here, as each item's
``continuous`` part, what its photo shows beyond the columns (the rendered latent's shade and
proportions, or a real photo's pixel statistics against items of its type).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrank.data.config import MarketConfig
from mmrank.data import render
from mmrank.data.content import beyond_type, pixel_statistics
from mmrank.data.market.workers import parallel_map
from mmrank.errors import DataError

# The market's attribute name -> the real catalog's column.
CATALOG_ATTRIBUTES = {"article_type": "article_type", "colour": "base_colour", "style": "usage",
                      "pattern": "sub_category"}


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
    has_image: np.ndarray | None = None  # (N,) bool: the logged row has its photo (None: all)
    has_title: np.ndarray | None = None  # (N,) bool: the logged row has its title (None: all)


def drop_modalities(cfg: MarketConfig, cat: Catalog) -> None:
    """Mark ``cfg.missing_image_share`` / ``missing_title_share`` of the items as logged without their
    photo / title (drawn from their own stream of the seed, and only when a share is set, so a market
    without missing modalities draws exactly as before). An item keeps at least one of the two."""
    n = len(cat.item_ids)
    cat.has_image, cat.has_title = np.ones(n, bool), np.ones(n, bool)
    if cfg.missing_image_share <= 0 and cfg.missing_title_share <= 0:
        return
    rng = np.random.default_rng([cfg.seed, 0x4D4F4F4E])
    u = rng.random(n)
    # disjoint draws: an item misses its photo, its title, or neither (never both)
    cat.has_image = ~(u < cfg.missing_image_share)
    cat.has_title = ~((u >= cfg.missing_image_share) &
                      (u < cfg.missing_image_share + cfg.missing_title_share))


def load_catalog(cfg: MarketConfig, rng: np.random.Generator) -> Catalog:
    """The real catalog ``cfg.catalog`` if set, else a synthetic one."""
    return real_catalog(cfg, rng) if cfg.catalog else synthetic_catalog(cfg, rng)


def render_chunk(args: tuple[list[tuple], int]) -> list[bytes]:
    """Product photos of ``rows`` (type, colour, pattern, style, seed, look) at ``size`` pixels."""
    rows, size = args
    return [render.render_item_image(t, c, p, s, seed, size, render.Look(look))
            for t, c, p, s, seed, look in rows]


def look_continuous(colour: str, look: np.ndarray) -> list[float]:
    """What a synthetic photo shows beyond the columns: its fill colour and proportions."""
    r, g, b = (v / 255.0 for v in render.shaded_colour(colour, render.Look(look)))
    return [(r + g + b) / 3, r - g, (r + g) / 2 - b, look[3], look[4], look[5]]


def synthetic_catalog(cfg: MarketConfig, rng: np.random.Generator) -> Catalog:
    """``cfg.n_items`` items with skewed attribute frequencies, a latent look, a title and a photo."""
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
    images = parallel_map(render_chunk, [(rows[i:i + 500], cfg.image_size) for i in range(0, n, 500)],
                          n, "rendering product photos")
    cont = np.array([look_continuous(names["colour"][i], latent[i]) for i in range(n)])
    return Catalog(item_ids, titles, images, attrs, vocab, {}, cont, latent)


def real_catalog(cfg: MarketConfig, rng: np.random.Generator) -> Catalog:
    """The catalog file ``cfg.catalog`` (a deterministic subset of ``cfg.n_items`` if larger)."""
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
