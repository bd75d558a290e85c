"""The run's frozen item representations, as the CTR strategies read them, and their version check.

``item_vectors`` reads ``R/embeddings`` (or encodes with ``R/encoder``); ``vector_table`` lays them out
in the rows of a :class:`~mmrank.ctr.data.FeatureSpace`; a trained model records the representation
source, and :func:`check_representation_version` refuses one trained on another encoder version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmrank.ctr.data import FeatureSpace
from mmrank.ctr.models import CtrConfig
from mmrank.errors import ConfigError, MMRankError
from mmrank.vectors import l2_normalise


def item_vectors(run: Path, item_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Frozen item representations of the run: ``(ids (N,) int64, vectors (N, D) float32, source)``.

    (The post-trained ones, ``R/posttrain``, come from :func:`mmrank.posttrain.stage.posttrained_vectors`.)

    From the embedding table ``R/embeddings`` when it exists (ids missing there get zero rows), else
    from the pre-trained encoder ``R/encoder`` over the items' titles and images. Rows are L2-normalised
    so that SimTier's dot products lie in [-1, 1] (Eq. 2). ``item_ids`` defaults to every item of
    ``R/data/items.parquet`` (or every id of the table). A table or an encoder made from other data
    than the run's now is refused (:class:`mmrank.lineage.StaleArtifact`).
    """
    run = Path(run)
    items_path = run / "data" / "items.parquet"
    if (run / "embeddings").exists():
        from mmrank.store.backends import open_table

        table = open_table(run / "embeddings")
        try:
            from mmrank.lineage import check_embeddings

            check_embeddings(run, table.version)  # made from the run's catalog as it is now
        except BaseException:
            table.close()
            raise
        if item_ids is None:
            if items_path.exists():
                from mmrank.data.io import read_table

                item_ids = read_table(items_path, "items", columns=["item_id"]).column("item_id").to_numpy()
                item_ids = np.union1d(item_ids, table.ids())
            else:
                item_ids = table.ids()
        ids = np.unique(np.asarray(item_ids, np.int64))
        return ids, l2_normalise(table.get(ids, missing="zero")), f"embeddings:{table.version}"
    if (run / "encoder").exists():
        from mmrank.data.io import read_items
        from mmrank.pretrain.item_encoder import load_item_encoder

        enc = load_item_encoder(run)
        t = read_items(items_path, ["item_id", "title"])
        ids = t.column("item_id").to_numpy().astype(np.int64)
        keep = np.ones(len(ids), bool) if item_ids is None else np.isin(ids, item_ids)
        sel = np.flatnonzero(keep)
        titles = [t.column("title")[int(i)].as_py() for i in sel]
        images = [t.column("image")[int(i)].as_py() for i in sel]
        vecs = np.asarray(enc.encode_items(titles, images), np.float32)
        order = np.argsort(ids[sel])
        version = getattr(enc, "version", "encoder")
        return ids[sel][order], l2_normalise(vecs[order]), f"encoder:{version}"
    raise MMRankError(f"{run}: no item representations: neither {run}/embeddings (run `mmrank embed`) "
                      f"nor {run}/encoder (run `mmrank pretrain`) exists")


def vector_table(space: FeatureSpace, ids: np.ndarray, vecs: np.ndarray) -> torch.Tensor:
    """Rows of ``space.vec_items`` (0 = padding, 1 = unknown, zero vectors) from ``(ids, vecs)``."""
    table = np.zeros((len(space.vec_items), vecs.shape[1]), np.float32)
    table[space.vec_items.lookup(ids)] = vecs
    table[:2] = 0.0
    return torch.from_numpy(table)

def code_table(space: FeatureSpace, ids: np.ndarray, vecs: np.ndarray, sid) -> torch.Tensor:  # noqa: ANN001
    """Semantic-ID rows of ``space.vec_items``, ``(V, L)`` int64 ``code + 1`` (0: no code), from the
    run's :class:`mmrank.sid.stage.SidCodes`: the catalog's codes where built, codes assigned with its
    codebooks for items with a vector but none built (items ingested since); zero-vector rows (items
    missing from the table) get no code."""
    table = np.zeros((len(space.vec_items), sid.levels), np.int64)
    ids = np.asarray(ids, np.int64)
    has = np.linalg.norm(vecs, axis=1) > 0 if len(ids) else np.zeros(0, bool)
    if has.any():
        table[space.vec_items.lookup(ids[has])] = sid.codes_for(ids[has], vecs[has]) + 1
    table[:2] = 0
    return torch.from_numpy(table)


def attach_codes(run: Path, data, cfg=None, log=print) -> None:  # noqa: ANN001
    """Give ``data`` (a :class:`mmrank.ctr.rundata.RunData` loaded with vectors) the run's semantic IDs
    (``data.codes``, ``data.sid``), built first with ``cfg`` (:class:`mmrank.sid.config.SidConfig`)
    when the run has none for its encoder version. Needs the embedding table (codes are built beside
    it)."""
    from mmrank.sid.stage import ensure_sid

    if data.vectors is None:
        raise ConfigError("semantic IDs need the item representations; none were loaded")
    version = representation_version(data.vec_source)
    if not str(data.vec_source).startswith("embeddings:") or version is None:
        raise MMRankError(f"{run}: semantic IDs are built from the embedding table, the run has none "
                          f"(representations: {data.vec_source!r}); run `mmrank embed --run {run}` first")
    sid = ensure_sid(run, version, cfg, log=log)
    ids = np.asarray(data.space.vec_items.ids, np.int64)
    vecs = data.vectors.numpy()[2:]                     # rows 2.. are vec_items' ids, in order
    data.codes = code_table(data.space, ids, vecs, sid)
    data.sid = sid


def representation_version(source: str | None) -> str | None:
    """The version in a representation source (``"embeddings:<v>"``, ``"encoder:<v>"`` or
    ``"posttrain:<v>"``, the post-trained table's version, which hashes the encoder's, as
    :func:`item_vectors` returns and ``config.json`` records); None when there is none."""
    if not source:
        return None
    kind, _, version = str(source).partition(":")
    return version or None if kind in ("embeddings", "encoder", "posttrain") else None


def check_representation_version(conf: dict, where: Path, version: str | None) -> None:
    """Refuse a model trained on another encoder version's representations than ``version``.

    A width check alone lets a new encoder of the same width in silently; the version id (a hash of
    the encoder's config and weights) does not. Raises :class:`ConfigError` naming both versions.
    """
    cfg = CtrConfig.model_validate(conf["model"])
    if not cfg.uses_vectors:
        return
    trained = representation_version(conf.get("representations"))
    if trained is None:
        raise ConfigError(f"{where}/config.json: key 'representations' names no encoder version "
                          f"(got {conf.get('representations')!r}); retrain with `mmrank ctr train`")
    if version is None or trained != version:
        raise ConfigError(f"{where}: trained on representations of encoder version {trained!r}, the "
                          f"run now has {version!r}: retrain (`mmrank ctr train`) or embed with "
                          f"encoder {trained!r}")
