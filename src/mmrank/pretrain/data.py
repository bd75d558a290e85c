"""Pre-training data from the logs (Sec. 3.2, Table 1): <query, purchased item> pairs + hard negatives.

Reads ``R/data/items.parquet``, ``R/data/pairs.parquet`` (schema ``PAIRS``) and the query photos of
``R/data/query_images.parquet`` (by opaque id), and turns everything into cached frozen-backbone
features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from mmrank.encoders.cache import cache_key, cached_features, read_cached, source_fingerprint
from mmrank.errors import DataError

TEXT, IMAGE, BOTH = 0, 1, 2  # a pair's query: text, photo, or both (issue 20)


@dataclass
class Catalog:
    """Items: ids (N,), titles, image bytes (row order of the items file)."""

    item_ids: np.ndarray
    titles: list[str]
    images: list[bytes]
    path: Path

    def rows_of(self, ids: np.ndarray, file: str, column: str) -> np.ndarray:
        """Row of each id; a DataError naming ``file``, the row and ``column`` for an unknown id."""
        order = np.argsort(self.item_ids, kind="stable")
        sorted_ids = self.item_ids[order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        bad = sorted_ids[pos] != ids
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(f"unknown item_id {int(ids[r])} (not in {self.path.name})", file=file,
                            row=r, column=column)
        return order[pos]


def read_catalog(run: Path) -> Catalog:
    """``R/data/items.parquet``: ids, titles and image bytes (:func:`mmrank.data.io.read_items`)."""
    from mmrank.data.io import read_items

    path = Path(run) / "data" / "items.parquet"
    if not path.exists():
        raise DataError("no such file (run `mmrank market generate --run R` or `mmrank data import` "
                        "first)", file=str(path))
    t = read_items(path, ["item_id", "title"])
    ids = t.column("item_id").to_numpy()
    return Catalog(ids.astype(np.int64), t.column("title").to_pylist(), t.column("image").to_pylist(),
                   path)


@dataclass
class PairTable:
    """Pairs as arrays (P rows): modality, query text or image ref, positive/negative item rows."""

    modality: np.ndarray        # (P,) int8: TEXT | IMAGE | BOTH
    query_text: list[str | None]
    query_image: list[str | None]
    pos: np.ndarray             # (P,) item row
    neg: np.ndarray             # (P,) item row of one hard negative, -1 if none
    test: np.ndarray            # (P,) bool
    ts: np.ndarray              # (P,)
    request_id: np.ndarray | None = None  # (P,) the pair's request (names dropped pairs)


def read_pairs(run: Path, catalog: Catalog, seed: int = 0) -> PairTable:
    """``R/data/pairs.parquet`` -> :class:`PairTable`; one hard negative drawn per pair (seeded)."""
    from mmrank.data.io import read_table

    path = Path(run) / "data" / "pairs.parquet"
    if not path.exists():
        raise DataError("no such file (the market writes it: `mmrank market generate`)",
                        file=str(path))
    t = read_table(path, "pairs")
    f = str(path)
    mod_s = t.column("query_modality").to_pylist()
    qt, qi = t.column("query_text").to_pylist(), t.column("query_image").to_pylist()
    modality = np.empty(len(mod_s), np.int8)
    for r, (m, a, b) in enumerate(zip(mod_s, qt, qi)):
        if m == "text":
            if not a:
                raise DataError("text query without query_text", file=f, row=r, column="query_text")
            modality[r] = TEXT
        elif m == "image":
            if not b:
                raise DataError("image query without query_image", file=f, row=r,
                                column="query_image")
            modality[r] = IMAGE
        elif m == "both":
            if not a or not b:
                raise DataError("'both' query without query_text and query_image", file=f, row=r,
                                column="query_text" if not a else "query_image")
            modality[r] = BOTH
        else:
            raise DataError(f"expected 'text', 'image' or 'both', got {m!r}", file=f, row=r,
                            column="query_modality")
    split = t.column("split").to_pylist()
    for r, s in enumerate(split):
        if s not in ("train", "test"):
            raise DataError(f"expected 'train' or 'test', got {s!r}", file=f, row=r, column="split")
    pos = catalog.rows_of(t.column("pos_item_id").to_numpy().astype(np.int64), f, "pos_item_id")
    negs = t.column("hard_neg_item_ids").combine_chunks()
    offsets = negs.offsets.to_numpy()
    flat = negs.flatten().to_numpy().astype(np.int64)
    flat_rows = catalog.rows_of(flat, f, "hard_neg_item_ids") if len(flat) else flat
    counts = np.diff(offsets)
    rng = np.random.default_rng(seed)
    pick = offsets[:-1] + (rng.random(len(counts)) * np.maximum(counts, 1)).astype(np.int64)
    neg = np.full(len(counts), -1, np.int64)
    has = counts > 0
    neg[has] = flat_rows[pick[has]]
    return PairTable(modality, qt, qi, pos.astype(np.int64), neg,
                     np.asarray([s == "test" for s in split]), t.column("ts").to_numpy(),
                     t.column("request_id").to_numpy().astype(np.int64))


def read_query_images(run: Path, wanted: set[str]) -> dict[str, bytes]:
    """The photos of ``wanted`` query ids from ``R/data/query_images.parquet``; names a missing one."""
    import pyarrow.compute as pc

    from mmrank.data.io import read_table

    if not wanted:
        return {}
    path = Path(run) / "data" / "query_images.parquet"
    t = read_table(path, "query_images")
    t = t.filter(pc.is_in(t.column("query_image"), value_set=pa.array(sorted(wanted), pa.string())))
    photos = dict(zip(t.column("query_image").to_pylist(), t.column("image").to_pylist()))
    missing = sorted(wanted - photos.keys())
    if missing:
        raise DataError(f"query image {missing[0]!r} (named in pairs.parquet) has no photo",
                        file=str(path), column="query_image")
    return photos


@dataclass
class Features:
    """Cached backbone features: items' images and titles, and the queries (deduplicated)."""

    item_img: torch.Tensor      # (N, ...) image frozen-part output
    item_txt: torch.Tensor      # (N, d_text)
    text_q: torch.Tensor        # (Nt, d_text) one row per distinct query text
    image_q: torch.Tensor       # (Ni, ...) one row per distinct image ref
    qrow: np.ndarray            # (P,) row of each pair's query in text_q or image_q (BOTH: text_q)
    qrow_image: np.ndarray | None = None  # (P,) a BOTH query's row in image_q (-1 for the others)


def native_image_size(catalog: Catalog, cap: int = 224) -> tuple[int, str]:
    """The median larger side of the catalog's real photos (the grey placeholder of an item without
    one excluded), capped at ``cap`` (EfficientNet-Lite0's ImageNet input); and how it was chosen."""
    from mmrank.data.photos import PLACEHOLDER_SIDE, median_side, real_sides

    side = median_side(catalog.images)
    if side is None:
        return PLACEHOLDER_SIDE, f"{PLACEHOLDER_SIDE} px: no item has a real photo (placeholders only)"
    n = len(real_sides(catalog.images))
    size = min(side, cap)
    return size, (f"{size} px: the median side of {n} real photos ({side} px)"
                  + (f", capped at the encoder's {cap} px input" if side > cap else ""))


def query_index(pairs: PairTable) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """The distinct query texts and photo refs, in first-seen order, and each pair's row in them:
    ``(qrow (P,), qrow_image (P,), texts, refs)`` as :class:`Features` holds them (a ``BOTH`` query:
    its text's row in ``qrow``, its photo's in ``qrow_image``; -1 for the others)."""
    qrow = np.zeros(len(pairs.modality), np.int64)
    qrow_image = np.full(len(pairs.modality), -1, np.int64)
    texts: dict[str, int] = {}
    refs: dict[str, int] = {}
    for r, m in enumerate(pairs.modality):
        if m == TEXT:
            qrow[r] = texts.setdefault(pairs.query_text[r], len(texts))
        elif m == IMAGE:
            qrow[r] = refs.setdefault(pairs.query_image[r], len(refs))
        else:  # BOTH: the text row in qrow, the photo's row beside it
            qrow[r] = texts.setdefault(pairs.query_text[r], len(texts))
            qrow_image[r] = refs.setdefault(pairs.query_image[r], len(refs))
    return qrow, qrow_image, list(texts), list(refs)


def build_features(run: Path, catalog: Catalog, pairs: PairTable, image_encoder: str,
                   text_encoder: str, image_size: int, trainable_blocks: int,
                   cache: bool = True, device: torch.device | None = None) -> Features:
    """Encode (or read from ``R/features/``) every input the trainer and the evaluation need; the
    encoders run on ``device`` (None: the CPU) and the features come back to host memory."""
    from mmrank import encoders

    cache_dir = Path(run) / "features" if cache else None
    fp = source_fingerprint(catalog.path)
    built: dict[str, tuple] = {}

    def build_img() -> tuple:
        if "img" not in built:
            built["img"] = encoders.create_tower(image_encoder, "image", image_size=image_size,
                                                 trainable_blocks=trainable_blocks)
        return built["img"]

    def build_txt() -> tuple:
        if "txt" not in built:
            built["txt"] = encoders.create_tower(text_encoder, "text")
        return built["txt"]

    ikey = cache_key(image_encoder, "image", image_size, trainable_blocks)
    tkey = cache_key(text_encoder, "text", None, 0)
    item_keys, title_keys = item_feature_keys(catalog.item_ids, catalog.titles)
    item_img = cached_features(build_img, ikey, item_keys,
                               lambda a, z: catalog.images[a:z], cache_dir, "items_image", fp,
                               device=device)
    item_txt = cached_features(build_txt, tkey, title_keys,
                               lambda a, z: catalog.titles[a:z], cache_dir, "items_title", fp,
                               device=device)

    qrow, qrow_image, text_list, ref_list = query_index(pairs)
    photos = read_query_images(run, set(ref_list))

    def render(a: int, z: int) -> list:
        return [photos[ref] for ref in ref_list[a:z]]

    text_q = cached_features(build_txt, tkey, text_list, lambda a, z: text_list[a:z], cache_dir,
                             "queries_text", fp, device=device)
    qpath = Path(run) / "data" / "query_images.parquet"
    image_q = cached_features(build_img, ikey, ref_list, render, cache_dir, "queries_image",
                              source_fingerprint(qpath) if qpath.exists() else fp, device=device)
    as_t = torch.from_numpy
    d_img_shape = item_img.shape[1:]
    if len(ref_list) == 0:
        image_q = np.zeros((0, *d_img_shape), np.float32)
    return Features(as_t(np.ascontiguousarray(item_img)), as_t(np.ascontiguousarray(item_txt)),
                    as_t(np.ascontiguousarray(text_q)), as_t(np.ascontiguousarray(image_q)), qrow,
                    qrow_image)


def item_feature_keys(item_ids: np.ndarray, titles: list[str]) -> tuple[list[str], list[str]]:
    """Row keys of the ``items_image`` and ``items_title`` caches (ids; id and title)."""
    keys = [str(int(i)) for i in item_ids]
    return keys, [f"{k}\t{t}" for k, t in zip(keys, titles)]


def encoder_cache_keys(config: dict) -> tuple[str, str]:
    """The ``R/features/`` directories of an encoder's image and text backbone outputs
    (``R/encoder/config.json``'s backbones, image size and trainable blocks)."""
    return (cache_key(config["image_encoder"], "image", config["image_size"], config["trainable_blocks"]),
            cache_key(config["text_encoder"], "text", None, 0))


def cached_item_features(run: str | Path, config: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(item ids, image features, title features)`` of ``R/data/items.parquet`` from the pre-training
    cache, when they are exactly what the encoder of ``config`` (``R/encoder/config.json``) would
    compute: same backbones, image size and trainable blocks, the items file unchanged since, and the
    image features stored in float32 (pooled outputs of a frozen backbone; activation maps for a
    trainable tail are stored in float16, so they are re-encoded instead). Else None.
    """
    from mmrank.data.io import read_table

    if config.get("image_finetune") or config.get("text_finetune_layers"):
        return None  # fine-tuned end to end: its backbones are not the frozen ones cached there
    path = Path(run) / "data" / "items.parquet"
    cache_dir = Path(run) / "features"
    if not path.exists() or not cache_dir.exists():
        return None
    t = read_table(path, "items", ["item_id", "title"])
    ids = t.column("item_id").to_numpy().astype(np.int64)
    img_keys, txt_keys = item_feature_keys(ids, t.column("title").to_pylist())
    fp = source_fingerprint(path)
    ikey, tkey = encoder_cache_keys(config)
    img = read_cached(cache_dir, ikey, "items_image", img_keys, fp)
    if img is None or img.dtype != np.float32 or img.ndim != 2:
        return None
    txt = read_cached(cache_dir, tkey, "items_title", txt_keys, fp)
    if txt is None or txt.dtype != np.float32:
        return None
    return ids, img, txt
