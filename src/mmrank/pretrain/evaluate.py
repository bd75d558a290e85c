"""Acc@N of Eq. 6 on the test pairs, for image and text queries, at the full and each nested dimension.

For each query modality, D = the test pairs with that modality and S = the set of their positives
(the paper's test set is one modality at a time). Scores are dot products of L2-normalised vectors;
``mmrank.eval.acc_at_n`` counts the hits (exact search over all of S; a test cross-checks it against
a FAISS ``IndexFlatIP``).

Issue 20: ``by_item_modality`` splits each query modality's Acc@N by what its positive item has
(``both`` = photo and title, ``image_only``, ``text_only``; from ``items.parquet``'s ``has_image`` /
``has_title``, all ``both`` when the columns are absent). Each query still ranks all of S, so the
groups' hits, weighted by their ``n_test``, add up to the query modality's Acc@N.

Device: the towers run where the model's weights are (CUDA after a CUDA run), in fp32 (no autocast:
the figures do not depend on bf16); the cached features move there a batch at a time and the
vectors come back to the host for the scoring.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmrank.device import model_device, to_device
from mmrank.eval.metrics import expected_hits
from mmrank.pretrain.data import BOTH, IMAGE, TEXT, Features, PairTable
from mmrank.vectors import l2_normalise

MODALITIES = (("image", IMAGE), ("text", TEXT))
ITEM_MODALITIES = ("both", "image_only", "text_only")


def item_modality(run, catalog_ids: np.ndarray) -> np.ndarray:
    """``(N,)`` codes into :data:`ITEM_MODALITIES` of the catalog rows (``catalog_ids`` order), from
    ``R/data/items.parquet``'s ``has_image`` / ``has_title`` (absent columns: every item has both)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    path = Path(run) / "data" / "items.parquet"
    names = pq.read_schema(path).names
    codes = np.zeros(len(catalog_ids), np.int8)
    if "has_image" not in names and "has_title" not in names:
        return codes
    cols = ["item_id"] + [c for c in ("has_image", "has_title") if c in names]
    t = pq.read_table(path, columns=cols)
    ids = t.column("item_id").to_numpy()
    n = len(ids)
    img = np.asarray(t.column("has_image").to_pylist(), bool) if "has_image" in names else np.ones(n, bool)
    txt = np.asarray(t.column("has_title").to_pylist(), bool) if "has_title" in names else np.ones(n, bool)
    code = np.where(img & txt, 0, np.where(img, 1, 2)).astype(np.int8)
    order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids[order], catalog_ids), 0, max(n - 1, 0))
    codes[:] = code[order[pos]]
    return codes




@torch.no_grad()
def _batched(fn, x: torch.Tensor, bs: int = 1024, device: torch.device | None = None) -> torch.Tensor:
    """``fn`` over ``x`` in batches of ``bs`` rows, each moved to ``device`` (default: where ``x`` is);
    the output on the host, in fp32."""
    if not x.shape[0]:
        return x
    dev = device or x.device
    return torch.cat([fn(to_device(x[a:a + bs], dev)).float().cpu() for a in range(0, x.shape[0], bs)])


@torch.no_grad()
def test_vectors(model: torch.nn.Module, feats: Features, pairs: PairTable,
                 modality: int, item_codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(D, dim)`` query vectors and ``(D, dim)`` positive item vectors of one modality's test pairs.
    A ``BOTH`` query (``feats.qrow``: its words' row in ``text_q``, ``feats.qrow_image``: its photo's
    row in ``image_q``) goes through the model's ``query(h_img, h_txt, modality)`` when it has one
    (the MOON2.0 tower), else it is the mean of the text and image query vectors. ``item_codes``
    (:data:`ITEM_MODALITIES` codes per catalog row) tell a tower that takes them which items lack a
    photo or a title."""
    import inspect

    dev = model_device(model)
    rows = np.flatnonzero(pairs.test & (pairs.modality == modality))
    if modality == TEXT:
        q = _batched(model.text_query, feats.text_q[feats.qrow[rows]], device=dev)
    elif modality == IMAGE:
        q = _batched(model.image_query, feats.image_q[feats.qrow[rows]], device=dev)
    else:
        t = feats.text_q[feats.qrow[rows]]
        i = feats.image_q[feats.qrow_image[rows]]
        query = getattr(model, "query", None)
        if query is not None:
            q = query(to_device(i, dev), to_device(t, dev),
                      torch.full((len(rows),), BOTH, dtype=torch.long, device=dev)).float().cpu()
        else:
            norm = torch.nn.functional.normalize
            q = norm(norm(_batched(model.text_query, t, device=dev), dim=-1)
                     + norm(_batched(model.image_query, i, device=dev), dim=-1),
                     dim=-1) if len(rows) else t
    uniq, inv = np.unique(pairs.pos[rows], return_inverse=True)
    takes_flags = "has_img" in inspect.signature(model.item).parameters
    if item_codes is not None and takes_flags:
        codes = torch.from_numpy(np.asarray(item_codes, np.int64))
        items = _batched(lambda r: model.item(*(to_device(x, dev) for x in (
            feats.item_img[r], feats.item_txt[r], codes[r] != ITEM_MODALITIES.index("text_only"),
            codes[r] != ITEM_MODALITIES.index("image_only")))), torch.from_numpy(uniq))
    else:
        items = _batched(lambda r: model.item(to_device(feats.item_img[r], dev),
                                              to_device(feats.item_txt[r], dev)), torch.from_numpy(uniq))
    return q.numpy(), items.numpy()[inv.reshape(-1)]


def evaluate(model: torch.nn.Module, feats: Features, pairs: PairTable,
             nested_dims: Sequence[int] = (), ns: Sequence[int] = (1, 5),
             item_codes: np.ndarray | None = None) -> dict:
    """``{"acc@1": {"image": x, "text": y}, "acc@5": {...}, "n_test": {...}, "nested": {d: {...}},
    "by_item_modality": {"acc@1": {"image": {"both": .., "image_only": .., "text_only": ..}, ...},
    "n_test": {...}}}``.

    A modality (or item-modality group) with no test pairs gets ``None``. ``item_codes``: each catalog
    row's code into :data:`ITEM_MODALITIES` (:func:`item_modality`); None: every item has both.
    """
    from mmrank.eval import acc_at_n
    from mmrank.eval.metrics import retrieval_ranks

    was = model.training
    model.eval()
    out: dict = {f"acc@{n}": {} for n in ns}
    out["n_test"] = {}
    nested: dict[str, dict] = {}
    full = getattr(model, "dim", None)
    dims = [d for d in nested_dims if full is None or d < full]
    codes = item_codes if item_codes is not None else np.zeros(int(pairs.pos.max(initial=0)) + 1, np.int8)
    by_item: dict = {f"acc@{n}": {} for n in ns}
    by_item["n_test"] = {}
    mods = list(MODALITIES)
    if (pairs.test & (pairs.modality == BOTH)).any() and getattr(feats, "qrow_image", None) is not None:
        mods.append(("both", BOTH))  # only when there are such test pairs: other outputs keep their shape
    for name, m in mods:
        q, p = test_vectors(model, feats, pairs, m, item_codes)
        out["n_test"][name] = int(q.shape[0])
        group = codes[pairs.pos[np.flatnonzero(pairs.test & (pairs.modality == m))]]
        by_item["n_test"][name] = {g: int((group == k).sum()) for k, g in enumerate(ITEM_MODALITIES)}
        if q.shape[0] == 0:
            for n in ns:
                out[f"acc@{n}"][name] = None
                by_item[f"acc@{n}"][name] = {g: None for g in ITEM_MODALITIES}
            continue
        acc = acc_at_n(q, p, list(ns))
        for n in ns:
            out[f"acc@{n}"][name] = float(acc[n])
        ranks = retrieval_ranks(q, p)
        for n in ns:
            hits = expected_hits(ranks.better, ranks.tied, n)
            by_item[f"acc@{n}"][name] = {g: float(hits[group == k].mean()) if (group == k).any() else None
                                         for k, g in enumerate(ITEM_MODALITIES)}
        for d in dims:
            acc_d = acc_at_n(l2_normalise(q[:, :d]), l2_normalise(p[:, :d]), list(ns))
            slot = nested.setdefault(str(d), {f"acc@{n}": {} for n in ns})
            for n in ns:
                slot[f"acc@{n}"][name] = float(acc_d[n])
    if nested:
        out["nested"] = nested
    out["by_item_modality"] = by_item
    model.train(was)
    return out


def mean_by_item_modality(per_seed: list[dict]) -> dict | None:
    """``by_item_modality`` averaged over seeds (a group None in every seed stays None)."""
    got = [r["by_item_modality"] for r in per_seed if r.get("by_item_modality")]
    if not got:
        return None
    out: dict = {"n_test": got[0]["n_test"]}
    for key in (k for k in got[0] if k.startswith("acc@")):
        out[key] = {}
        for m, groups in got[0][key].items():
            out[key][m] = {}
            for g in groups:
                xs = [r[key][m][g] for r in got if r[key][m][g] is not None]
                out[key][m][g] = float(np.mean(xs)) if xs else None
    return out


def popularity(pairs: PairTable, ns: Sequence[int] = (1, 5)) -> dict:
    """Acc@N of the popularity-only reference: every query ranks S by training purchases.

    The same list for every query, scored like :func:`evaluate`: items with equal purchase counts are
    tied, and a tie is broken uniformly at random (the expected hit, :func:`mmrank.eval.metrics.expected_hits`),
    so the many items bought equally often neither help nor hurt the row.
    """
    out: dict = {f"acc@{n}": {} for n in ns}
    out["n_test"] = {}
    train_counts = np.bincount(pairs.pos[~pairs.test], minlength=int(pairs.pos.max(initial=0)) + 1)
    for name, m in MODALITIES:
        rows = np.flatnonzero(pairs.test & (pairs.modality == m))
        out["n_test"][name] = int(len(rows))
        s_counts = np.sort(train_counts[np.unique(pairs.pos[rows])])
        c = train_counts[pairs.pos[rows]]
        better = len(s_counts) - np.searchsorted(s_counts, c, side="right")
        tied = np.searchsorted(s_counts, c, side="right") - np.searchsorted(s_counts, c, side="left") - 1
        for n in ns:
            out[f"acc@{n}"][name] = float(expected_hits(better, tied, n).mean()) if len(rows) else None
    return out
