"""Frozen per-modality representations of candidates and queries, computed once per encoder version and
cached under ``R/rerank/features/<version>/``.

* Items: ``image`` = the encoder's image tower on the item photo, ``text`` = its text tower on the title
  (the two parts the item tower of :class:`mmrank.pretrain.model.SCLModel` fuses into the embedding
  table's vector), L2-normalised, one row per item of ``R/data/items.parquet``.
* Queries: a text query through the text tower, a photo query (``R/data/query_images.parquet``, by
  opaque id) through the image tower. Every vector lives in the encoder's shared space.

The encoder is the run's (``R/encoder``, the one that filled ``R/embeddings``), unless
``R/rerank/encoder.json`` says ``{"encoder": "tiny", "dim": D}`` (the small deterministic
:class:`~mmrank.store.tiny_encoder.TinyItemEncoder`, for examples and tests without a pre-trained
encoder); in Python, any object with
``version``, ``encode_text`` and ``encode_images`` works (tests pass a
:class:`mmrank.store.tiny_encoder.TinyItemEncoder`). Caches are safetensors (never pickles).

Example::

    >>> feats = load_features(run, lists)                      # doctest: +SKIP
    >>> feats.tables["image"].shape, feats.queries.shape       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.numpy import load_file, save_file

from mmrank.errors import DataError, MMRankError
from mmrank.rerank.data import Lists
from mmrank.vectors import l2_normalise

MODALITIES = ("image", "text")


@dataclass
class ModalFeatures:
    """``item_ids (N,)`` sorted; ``tables[m] (N + 2, D)`` float32 rows indexed by
    ``ListSpace.vec_items`` (rows 0 and 1 zero: padding, unknown); ``queries (R, D)``, one row per
    request of the lists (zero for a request without a query); ``source`` names the encoder version."""

    item_ids: np.ndarray
    tables: dict[str, torch.Tensor]
    queries: torch.Tensor
    source: str

    @property
    def dim(self) -> int:
        return int(self.queries.shape[1])


def _digest(keys: list[str]) -> str:
    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode())
        h.update(b"\0")
    return h.hexdigest()


def _encode_batches(fn, inputs: list[Any], batch: int, label: str) -> np.ndarray:
    from rich.progress import track

    out = []
    starts = range(0, len(inputs), batch)
    for a in track(starts, description=label, total=len(starts), transient=True, disable=len(starts) < 4):
        out.append(np.asarray(fn(inputs[a:a + batch]), np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _is_run_encoder(encoder: Any) -> bool:
    """A :class:`mmrank.pretrain.item_encoder.ItemEncoder` (its frozen backbone features are cached)."""
    return all(hasattr(encoder, a) for a in ("model", "config", "image_backbone", "image_preprocess",
                                             "text_backbone", "text_preprocess"))


@torch.inference_mode()
def _heads(fn, h: np.ndarray, batch: int = 512) -> np.ndarray:
    return np.concatenate([fn(torch.from_numpy(h[a:a + batch])).float().numpy() for a in range(0, len(h), batch)])


def _frozen_cached(run: Path, encoder: Any, modality: str, keys: list[str], inputs, tag: str) -> np.ndarray:
    """Frozen backbone features through ``R/features/`` (shared with pre-training: the same key and
    fingerprint, so the catalog's are usually there already)."""
    from mmrank.encoders.cache import cached_features, source_fingerprint
    from mmrank.pretrain.data import encoder_cache_keys

    ikey, tkey = encoder_cache_keys(encoder.config)
    if modality == "image":
        key, build = ikey, lambda: (encoder.image_backbone, encoder.image_preprocess)  # noqa: E731
    else:
        key, build = tkey, lambda: (encoder.text_backbone, encoder.text_preprocess)  # noqa: E731
    fp = source_fingerprint(run / "data" / "items.parquet")
    return cached_features(build, key, keys, inputs, run / "features", tag, fp)


def _item_features(run: Path, encoder: Any, cache: Path | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from mmrank.data.io import iter_items

    path = run / "data" / "items.parquet"
    if not path.exists():
        raise DataError("no such file (generate a market or import a catalog first)", file=str(path))
    from mmrank.encoders.cache import source_fingerprint

    key = source_fingerprint(path)
    f = cache / "items.safetensors" if cache else None
    if f is not None and f.exists():
        meta = json.loads((cache / "items.json").read_text())
        if meta.get("source") == key:
            a = load_file(str(f))
            return a["item_ids"], {m: a[m] for m in MODALITIES}
    ids, titles, images = [], [], []
    for batch in iter_items(path, ["item_id", "title"], batch_size=256):   # images as bytes, however given
        ids.append(batch.column("item_id").to_numpy())
        titles += batch.column("title").to_pylist()
        images += batch.column("image").to_pylist()
    ids = np.concatenate(ids).astype(np.int64)
    if _is_run_encoder(encoder):   # the towers on the backbone features pre-training cached
        from mmrank.pretrain.data import item_feature_keys

        img_keys, txt_keys = item_feature_keys(ids, titles)
        h_img = _frozen_cached(run, encoder, "image", img_keys, lambda a, z: images[a:z], "items_image")
        h_txt = _frozen_cached(run, encoder, "text", txt_keys, lambda a, z: titles[a:z], "items_title")
        image = l2_normalise(_heads(encoder.model.image_query, h_img))
        text = l2_normalise(_heads(encoder.model.text_query, h_txt))
    else:
        text = l2_normalise(_encode_batches(encoder.encode_text, titles, 256, "encoding item titles"))
        image = l2_normalise(_encode_batches(encoder.encode_images, images, 64, "encoding item photos"))
    order = np.argsort(ids, kind="stable")
    out = {"item_ids": ids[order], "image": image[order], "text": text[order]}
    if f is not None:
        cache.mkdir(parents=True, exist_ok=True)
        save_file(out, str(f))
        (cache / "items.json").write_text(json.dumps({"source": key, "n": int(len(ids))}))
    return out["item_ids"], {m: out[m] for m in MODALITIES}


def encode_queries(run: str | Path, encoder: Any, keys: list[str]) -> np.ndarray:
    """``(len(keys), D)`` L2-normalised query vectors for query keys as :class:`~mmrank.rerank.data.Lists`
    holds them: ``"text:<query>"`` through the text tower, ``"image:<opaque id>"`` (a photo of
    ``R/data/query_images.parquet``) through the image tower, ``""`` (no query) a zero row. The one
    encoding path of training, ``mmrank rerank apply`` and the service's ``/v1/rerank``."""
    run = Path(run)
    texts = [k[5:] for k in keys if k.startswith("text:")]
    img_ids = [k[6:] for k in keys if k.startswith("image:")]
    images: dict[str, bytes] = {}
    if img_ids:
        qpath = run / "data" / "query_images.parquet"
        if not qpath.exists():
            raise DataError(f"{len(img_ids)} requests have photo queries but the file is missing",
                            file=str(qpath))
        t = pq.read_table(qpath, columns=["query_image", "image"])
        wanted = set(img_ids)
        for qid, img in zip(t.column("query_image").to_pylist(), t.column("image").to_pylist()):
            if qid in wanted:
                images[qid] = img
        missing = [q for q in img_ids if q not in images]
        if missing:
            raise DataError(f"query photo {missing[0]!r} is not in the file ({len(missing)} missing)",
                            file=str(qpath), column="query_image")
    tv = _encode_batches(encoder.encode_text, texts, 256, "encoding text queries")
    iv = _encode_batches(encoder.encode_images, [images[q] for q in img_ids], 64, "encoding photo queries")
    dim = tv.shape[1] if len(texts) else (iv.shape[1] if len(img_ids) else int(encoder.dim))
    vecs = np.zeros((len(keys), dim), np.float32)
    kt = [i for i, k in enumerate(keys) if k.startswith("text:")]
    ki = [i for i, k in enumerate(keys) if k.startswith("image:")]
    if kt:
        vecs[kt] = l2_normalise(tv)
    if ki:
        vecs[ki] = l2_normalise(iv)
    return vecs


def _query_features(run: Path, lists: Lists, encoder: Any, cache: Path | None) -> np.ndarray:
    keys = sorted(set(q for q in lists.query if q))
    f = cache / "queries.safetensors" if cache else None
    from mmrank.encoders.cache import source_fingerprint

    qpath = run / "data" / "query_images.parquet"
    digest = _digest(keys + ([source_fingerprint(qpath)] if qpath.exists() else []))
    vecs = None
    if f is not None and f.exists() and json.loads((cache / "queries.json").read_text()).get("digest") == digest:
        vecs = load_file(str(f))["vectors"]
    if vecs is None:
        vecs = encode_queries(run, encoder, keys)
        if f is not None:
            cache.mkdir(parents=True, exist_ok=True)
            save_file({"vectors": vecs}, str(f))
            (cache / "queries.json").write_text(json.dumps({"digest": digest, "n": len(keys)}))
    pos = {k: i for i, k in enumerate(keys)}
    out = np.zeros((len(lists), vecs.shape[1]), np.float32)
    has = np.array([bool(q) for q in lists.query])
    if has.any():
        out[has] = vecs[[pos[q] for q in lists.query if q]]
    return out


def feature_encoder(run: str | Path, encoder: Any | None = None) -> Any:
    """The encoder the run's re-rankers read representations from: ``encoder`` if given, else the
    small deterministic one ``R/rerank/encoder.json`` names, else the run's (``R/encoder``)."""
    run = Path(run)
    choice = run / "rerank" / "encoder.json"
    if encoder is None and choice.exists():
        spec = json.loads(choice.read_text())
        if spec.get("encoder") != "tiny":
            raise MMRankError(f"{choice}: 'encoder' must be 'tiny' (or remove the file to use {run}/encoder), "
                              f"got {spec.get('encoder')!r}")
        from mmrank.store.tiny_encoder import TinyItemEncoder

        encoder = TinyItemEncoder(dim=int(spec.get("dim", 32)), seed=int(spec.get("seed", 0)))
    if encoder is None:
        try:
            from mmrank.pretrain.item_encoder import load_item_encoder
        except ImportError as err:  # pragma: no cover
            raise MMRankError(f"no item encoder available (mmrank.pretrain: {err})") from None
        encoder = load_item_encoder(run)
    return encoder


def item_tables(run: str | Path, encoder: Any, cache: bool = True) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """``(item_ids (N,) sorted, {modality: (N + 2, D)})``: the catalog's frozen representations with
    rows 0 and 1 zero (padding, unknown), as :class:`ModalFeatures` holds them (cached)."""
    run = Path(run)
    d = run / "rerank" / "features" / str(encoder.version) if cache else None
    ids, tables = _item_features(run, encoder, d)
    full = {}
    for m, v in tables.items():
        t = np.zeros((len(ids) + 2, v.shape[1]), np.float32)
        t[2:] = v
        full[m] = torch.from_numpy(t)
    return ids, full


def load_features(run: str | Path, lists: Lists, encoder: Any | None = None, cache: bool = True) -> ModalFeatures:
    """Per-modality item vectors and one query vector per request (see the module doc)."""
    run = Path(run)
    encoder = feature_encoder(run, encoder)
    d = run / "rerank" / "features" / str(encoder.version) if cache else None
    ids, full = item_tables(run, encoder, cache)
    queries = _query_features(run, lists, encoder, d)
    return ModalFeatures(ids, full, torch.from_numpy(queries), f"encoder:{encoder.version}")
