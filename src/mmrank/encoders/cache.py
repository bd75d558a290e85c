"""Encode once, cache on disk: frozen-backbone features under ``R/features/<encoder>_<S>px_t<k>/``.

Each cached table is ``<tag>.npy`` (float32; float16 for un-pooled activation maps) next to
``<tag>.json`` holding the row count and a SHA-256 of the row keys (item ids, query strings, image
refs) plus a source fingerprint (a run's table: its content digest, :mod:`mmrank.lineage`); a mismatch
re-encodes. ``lineage.json`` in each directory records the source of every table cached there.
Loading never unpickles (``allow_pickle=False``).

The encoder runs on ``device`` (its batches moved there, :func:`mmrank.encoders.base.frozen_on`); the
features come back to host memory as float32 NumPy, so the files are the same whatever the device.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrank.durable import replacing, write_text


def cache_key(name: str, modality: str, image_size: int | None, trainable_blocks: int) -> str:
    """Directory name for an encoder's features: its name, input size and trainable-block count."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
    size_part = f"_{image_size}px" if modality == "image" and image_size else ""
    return f"{slug}{size_part}_t{trainable_blocks}"


def _digest(keys: Sequence[str], fingerprint: str) -> str:
    h = hashlib.sha256(fingerprint.encode())
    for k in keys:
        h.update(k.encode())
        h.update(b"\0")
    return h.hexdigest()


@torch.no_grad()
def encode(encoder: Any, preprocess: Callable[[list[Any]], Any], n: int,
           inputs: Callable[[int, int], list[Any]], batch_size: int = 128,
           progress: str | None = None, device: torch.device | None = None) -> np.ndarray:
    """Run ``encoder.frozen`` over rows ``0..n`` in batches; ``inputs(a, z)`` gives raw rows ``a..z``.

    ``device`` (None: where the encoder is): the encoder is moved there and each batch with it.
    Returns ``(n, ...)`` float32 features (the frozen part's output), in host memory.
    """
    from mmrank.encoders.base import frozen_on

    if device is not None and isinstance(encoder, torch.nn.Module):
        encoder.to(device)
    chunks: list[np.ndarray] = []
    starts = range(0, n, batch_size)
    if progress and n > batch_size:
        from rich.progress import track

        starts = track(starts, description=progress, total=len(starts), transient=True)
    for a in starts:
        z = min(a + batch_size, n)
        chunks.append(frozen_on(encoder, preprocess(inputs(a, z)), device).detach().float().cpu().numpy())
    if not chunks:
        shape = (0, encoder.dim)
        return np.zeros(shape, np.float32)
    return np.concatenate(chunks)


def source_fingerprint(path: Path) -> str:
    """What cached rows of a source file depend on beyond their keys: a run's table
    (``R/data/<table>.parquet``) by its content digest (:func:`mmrank.lineage.table_digest`), any other
    file by its name, size and mtime."""
    from mmrank.lineage import table_digest

    digest = table_digest(path)
    if digest is not None:
        return f"data/{Path(path).stem}:{digest}"
    st = os.stat(path)
    return f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}"


def read_cached(cache_dir: Path, key: str, tag: str, keys: Sequence[str],
                fingerprint: str = "") -> np.ndarray | None:
    """The cached table ``cache_dir/<key>/<tag>.npy`` as stored (float32, or float16 for activation
    maps) if it still holds exactly ``keys`` from the same source, else None."""
    return _load_valid(Path(cache_dir) / key, tag, len(keys), _digest(keys, fingerprint))


def _load_valid(d: Path, tag: str, n: int, digest: str) -> np.ndarray | None:
    npy, meta = d / f"{tag}.npy", d / f"{tag}.json"
    if not (npy.exists() and meta.exists()):
        return None
    info = json.loads(meta.read_text())
    if info.get("digest") != digest or info.get("n") != n:
        return None
    return np.load(npy, allow_pickle=False)


def cached_features(build: Callable[[], tuple[Any, Callable[[list[Any]], Any]]], key: str,
                    keys: Sequence[str], inputs: Callable[[int, int], list[Any]],
                    cache_dir: Path | None, tag: str, fingerprint: str = "",
                    batch_size: int = 128, device: torch.device | None = None) -> np.ndarray:
    """Features of ``len(keys)`` rows, read from ``cache_dir/<key>/<tag>.npy`` when still valid.

    Args:
        build: returns ``(encoder, preprocess)``; called only when the cache misses.
        key: :func:`cache_key` of the encoder.
        keys: one string per row identifying its content (an item id, a query text, an image ref).
        inputs: ``inputs(a, z)`` -> the raw inputs of rows ``a..z`` (bytes, PIL images or strings).
        cache_dir: ``R/features`` (None: no cache).
        tag: table name, e.g. ``items_image``.
        fingerprint: anything else the content depends on (the source file's size and mtime).
        device: where the encoder runs on a miss (None: where ``build`` leaves it); the table
            written is float32 (float16 for activation maps) in host memory either way.

    Returns:
        ``(len(keys), ...)`` float32: the encoder's frozen-part output per row.
    """
    digest = _digest(keys, fingerprint)
    d = Path(cache_dir) / key if cache_dir is not None else None
    hit = _load_valid(d, tag, len(keys), digest) if d is not None else None
    if hit is not None:
        return hit.astype(np.float32, copy=False)
    encoder, preprocess = build()
    feats = encode(encoder, preprocess, len(keys), inputs, batch_size,
                   progress=f"encoding {tag} ({encoder.name})", device=device)
    # Activation maps are stored in float16; return exactly what a later cache hit will return.
    store = feats.astype(np.float16) if feats.ndim > 2 else feats
    feats = store.astype(np.float32, copy=False)
    if d is not None:
        npy, meta = d / f"{tag}.npy", d / f"{tag}.json"
        d.mkdir(parents=True, exist_ok=True)
        with replacing(npy) as f:
            np.save(f, store, allow_pickle=False)
        write_text(meta, json.dumps({"n": len(keys), "digest": digest, "encoder": encoder.name,
                                     "shape": list(store.shape), "dtype": str(store.dtype)}))
        from mmrank import lineage

        made = (lineage.read(d) or {}).get("inputs", {})
        lineage.stamp(d, {**made, tag: fingerprint})
    return feats
