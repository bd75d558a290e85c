"""Residual k-means over item representations (TIGER's residual quantisation with k-means codebooks,
as TorchEasyRec's ``sid_rqkmeans``): level 1 clusters the vectors, each later level clusters what the
levels before it left (the residual), so an item's code ``(c_1, ..., c_L)`` reads coarse to fine and
``sum_l codebook_l[c_l]`` reconstructs its vector.

Codes use one rule everywhere, :func:`assign` (nearest codeword by L2 on the residual, lowest index on
a tie): the catalog's codes after training and a new item's codes at ingest time.

Example::

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    >>> books, codes, stats = residual_kmeans(x, levels=2, codes=8, seed=0)
    >>> books.shape, codes.shape
    ((2, 8, 8), (500, 2))
    >>> bool((assign(books, x) == codes).all())
    True
"""

from __future__ import annotations

import numpy as np

from mmrank.errors import ConfigError, DataError
from mmrank.threads import faiss_limited


def assign(codebooks: np.ndarray, vectors: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Codes ``(N, L)`` int64 of ``vectors (N, D)`` under ``codebooks (L, C, D)``: at each level the
    nearest codeword (squared L2) to the residual left by the levels before; ties go to the lowest
    index."""
    books = np.asarray(codebooks, np.float32)
    x = np.asarray(vectors, np.float32)
    if books.ndim != 3:
        raise DataError(f"codebooks: expected (levels, codes, dim), got shape {books.shape}", file="codebooks")
    if x.ndim != 2 or x.shape[1] != books.shape[2]:
        raise DataError(f"vectors: expected (N, {books.shape[2]}), got shape {x.shape}", file="vectors")
    out = np.zeros((len(x), books.shape[0]), np.int64)
    b64 = books.astype(np.float64)
    for s in range(0, len(x), chunk):
        r = x[s:s + chunk].astype(np.float64)
        for lvl, book in enumerate(b64):
            c = _nearest(book, r)
            out[s:s + chunk, lvl] = c
            r = r - book[c]
    return out


def _nearest(book: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Index of the nearest row of ``book (C, D)`` to each row of ``r (n, D)`` (float64; lowest on a tie)."""
    d = (book ** 2).sum(-1)[None, :] - 2.0 * r @ book.T                  # ||r - c||^2 - ||r||^2
    return d.argmin(axis=1)


def reconstruct(codebooks: np.ndarray, codes: np.ndarray, upto: int | None = None) -> np.ndarray:
    """``sum_{l < upto} codebook_l[code_l]``, ``(N, D)`` float64 (all levels by default)."""
    books = np.asarray(codebooks, np.float64)
    upto = books.shape[0] if upto is None else upto
    out = np.zeros((len(codes), books.shape[2]), np.float64)
    for lvl in range(upto):
        out += books[lvl][codes[:, lvl]]
    return out


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    proportional to its squared distance to the nearest centre so far. ``(k, D)`` float32."""
    n = len(x)
    out = np.empty((k, x.shape[1]), np.float32)
    out[0] = x[rng.integers(n)]
    d = ((x - out[0]) ** 2).sum(1)
    for i in range(1, k):
        total = d.sum()
        j = rng.choice(n, p=d / total) if total > 0 else rng.integers(n)
        out[i] = x[j]
        d = np.minimum(d, ((x - out[i]) ** 2).sum(1))
    return out


def residual_kmeans(vectors: np.ndarray, levels: int, codes: int, *, seed: int = 0, niter: int = 20,
                    nredo: int = 3, max_points_per_centroid: int = 256) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Train ``levels`` codebooks of ``codes`` codewords on ``vectors (N, D)`` with ``faiss.Kmeans``.

    Level ``l`` is trained on the residual ``x - sum_{k<l} codebook_k[c_k]``: ``nredo`` runs from
    k-means++ seeds (on at most ``codes * max_points_per_centroid`` points), the lowest objective
    kept; seeded by ``seed`` and the level, on one faiss thread (the same codebooks on every machine
    and thread count). On the mixture of ``tests/test_sid.py`` (8 orthonormal centres, 150 points
    each, C = 8) faiss's own random-sample seeding found the 8 clusters (ARI 1.0) with 2 of 10 seeds,
    k-means++ with 3 restarts with 8 of 10 (a merged pair of clusters otherwise, ARI 0.83).

    Returns ``(codebooks (L, C, D) float32, codes (N, L) int64, stats)``, ``stats`` one dict per level
    (:func:`level_stats`).
    """
    import faiss

    x = np.ascontiguousarray(vectors, np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"vectors: expected a non-empty (N, D) array, got shape {x.shape}", file="vectors")
    if not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise DataError("vector is not finite", file="vectors", row=row)
    if codes > len(x):
        raise ConfigError(f"codes: {codes} codewords per level need at least as many items, the table "
                          f"has {len(x)} (lower --codes)")
    n, dim = x.shape
    books = np.zeros((levels, codes, dim), np.float32)
    out = np.zeros((n, levels), np.int64)
    resid = x.astype(np.float64)
    with faiss_limited(1):
        for lvl in range(levels):
            rng = np.random.default_rng([seed, lvl])
            r32 = np.ascontiguousarray(resid, np.float32)
            cap = codes * max_points_per_centroid
            sample = r32 if n <= cap else r32[np.sort(rng.choice(n, cap, replace=False))]
            best = None
            for _ in range(nredo):
                km = faiss.Kmeans(dim, codes, niter=niter, seed=int(rng.integers(2**31)), verbose=False,
                                  max_points_per_centroid=max_points_per_centroid)
                km.train(sample, init_centroids=kmeans_pp(sample, codes, rng))
                if best is None or km.obj[-1] < best[0]:
                    best = (km.obj[-1], km.centroids.copy())
            books[lvl] = best[1]
            book = books[lvl].astype(np.float64)
            c = np.concatenate([_nearest(book, resid[s:s + 8192]) for s in range(0, n, 8192)])
            out[:, lvl] = c
            resid = resid - book[c]                                    # as assign() does
    return books, out, level_stats(x, books, out)


def level_stats(vectors: np.ndarray, codebooks: np.ndarray, codes: np.ndarray) -> list[dict]:
    """Per level: ``used`` codes, ``perplexity`` of the code distribution (``exp`` of its entropy; C
    when every code is used equally), and ``rel_mse``: ``sum ||x - x_hat_l||^2 / sum ||x||^2`` with
    ``x_hat_l`` the reconstruction from levels 1..l."""
    x = np.asarray(vectors, np.float64)
    total = float((x ** 2).sum()) or 1.0
    out = []
    for lvl in range(codebooks.shape[0]):
        counts = np.bincount(codes[:, lvl], minlength=codebooks.shape[1]).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        err = float(((x - reconstruct(codebooks, codes, lvl + 1)) ** 2).sum())
        out.append({"level": lvl + 1, "used": int((counts > 0).sum()), "codes": int(codebooks.shape[1]),
                    "perplexity": float(np.exp(-(p * np.log(p)).sum())), "rel_mse": err / total})
    return out


def disambiguate(item_ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The collision rule: items with the same full code ``(c_1..c_L)`` get a last token ``0, 1, 2,
    ...`` in increasing item id order (0 for an item alone in its code), so ``(codes, token)`` is
    unique per item. Returns ``(N,)`` int64."""
    ids = np.asarray(item_ids, np.int64)
    codes = np.asarray(codes, np.int64)
    if len(ids) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((ids, *codes.T[::-1]))                         # by code, then by item id
    sc = codes[order]
    new_group = np.r_[True, (sc[1:] != sc[:-1]).any(axis=1)]
    starts = np.flatnonzero(new_group)
    group = np.cumsum(new_group) - 1
    token = np.zeros(len(ids), np.int64)
    token[order] = np.arange(len(ids)) - starts[group]
    return token
