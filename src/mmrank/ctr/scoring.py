"""Scoring rows that do not come from a file (serving): in-memory rows -> the same :class:`CtrSamples`,
encoding and batch as the Parquet path, and :func:`score` with a per-call representation table.
"""

from __future__ import annotations

import numpy as np
import torch

from mmrank.ctr.data import CtrSamples, EncodedSamples, FeatureSpace, Vocab, make_batch
from mmrank.ctr.models import CtrModel, ItemCodes
from mmrank.device import batch_to, model_device
from mmrank.data.schemas import HISTORY_LEN
from mmrank.device import autocast, to_device
from mmrank.errors import DataError
from mmrank.models.layers import ItemVectors


def samples_from_rows(*, user_id: np.ndarray, item_id: np.ndarray, category_id: np.ndarray,
                      region: np.ndarray, position: np.ndarray, hist_item_ids: list[np.ndarray],
                      hist_category_ids: list[np.ndarray], ts: np.ndarray | None = None,
                      history_len: int = HISTORY_LEN, source: str = "request") -> CtrSamples:
    """In-memory rows -> :class:`CtrSamples`, the same object :func:`load_samples` reads from a
    CTR_SAMPLES file, so that both go through :meth:`FeatureSpace.encode` and :func:`make_batch`.

    Args:
        user_id, item_id, category_id, region, position: ``(N,)`` per row.
        hist_item_ids, hist_category_ids: N arrays (the behaviour before the row, most recent last);
            the last ``history_len`` are kept, as :func:`load_samples` does.
    """
    n = len(item_id)
    if not (len(user_id) == len(category_id) == len(region) == len(position) == len(hist_item_ids)
            == len(hist_category_ids) == n):
        raise DataError(f"rows: every column needs {n} entries", file=source)
    lens = np.array([min(len(h), history_len) for h in hist_item_ids], np.int64)
    for r, (hi, hc) in enumerate(zip(hist_item_ids, hist_category_ids)):
        if len(hi) != len(hc):
            raise DataError(f"history has {len(hi)} item ids but {len(hc)} category ids",
                            file=source, row=r, column="hist_category_ids")
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    keep_i = [np.asarray(h, np.int64)[len(h) - k:] for h, k in zip(hist_item_ids, lens)]
    keep_c = [np.asarray(h, np.int32)[len(h) - k:] for h, k in zip(hist_category_ids, lens)]
    return CtrSamples(
        ts=np.zeros(n, np.int64) if ts is None else np.asarray(ts, np.int64),
        user_id=np.asarray(user_id, np.int64), item_id=np.asarray(item_id, np.int64),
        request_id=np.zeros(n, np.int64), position=np.asarray(position, np.int16),
        region=np.asarray(region, np.int16), category_id=np.asarray(category_id, np.int32),
        label=np.zeros(n, np.int8), is_train=np.zeros(n, bool), hist_offsets=offsets,
        hist_item_id=np.concatenate(keep_i) if n else np.zeros(0, np.int64),
        hist_category_id=np.concatenate(keep_c) if n else np.zeros(0, np.int32), source=source)


def encode_for_scoring(space: FeatureSpace, samples: CtrSamples,
                       vec_ids: np.ndarray | None = None) -> EncodedSamples:
    """:meth:`FeatureSpace.encode` with the representation index over ``vec_ids`` (the items whose
    vectors the caller will pass to :func:`score`, rows ``2 + rank`` of ``Vocab.of(vec_ids)``)."""
    if vec_ids is not None:
        space = FeatureSpace(space.items, space.users, space.n_categories, space.n_regions,
                             Vocab.of(vec_ids))
    return space.encode(samples)


def batch_of(enc: EncodedSamples, history_len: int = HISTORY_LEN) -> dict[str, torch.Tensor]:
    """Every row of ``enc`` as one batch (:func:`make_batch`)."""
    return make_batch(enc, np.arange(len(enc)), history_len)


@torch.inference_mode()
def score(model: CtrModel, batch: dict[str, torch.Tensor],
          vectors: torch.Tensor | None = None, codes: torch.Tensor | None = None, *,
          bf16: bool = True) -> torch.Tensor:
    """Logits ``(B,)`` of one batch, as an fp32 host tensor, computed on the model's device: the batch
    and any ``vectors``/``codes`` follow it there (pinned, non-blocking), under bf16 autocast on CUDA
    when ``bf16``.

    ``vectors (V, D)`` (rows 0 and 1 zero) replaces the model's representation table for this call:
    rows indexed by ``batch["item_v"]``/``batch["hist_item_v"]`` (see :func:`encode_for_scoring`), so
    items created after the model was loaded are scored from their content. One call at a time per
    model object (the table is swapped in place for the call). ``codes (V, L)`` likewise replaces the
    semantic-ID table of a sid model (same rows).
    """
    model.eval()
    dev = model_device(model)
    batch = batch_to(batch, dev)
    vectors = None if vectors is None else to_device(vectors, dev)
    codes = None if codes is None else to_device(codes, dev)
    tables = [m for m in model.modules() if isinstance(m, ItemVectors)] if vectors is not None else []
    code_tables = [m for m in model.modules() if isinstance(m, ItemCodes)] if codes is not None else []
    saved = [t.table for t in tables] + [t.table for t in code_tables]
    try:
        for t in tables:
            t.table = vectors
        for t in code_tables:
            t.table = codes
        with autocast(dev, bf16):
            logit = model(batch)["logit"]
        return logit.float().cpu()
    finally:
        for t, old in zip(tables + code_tables, saved):
            t.table = old
