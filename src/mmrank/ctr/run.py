"""The CTR stage on a run directory: read samples and representations, train a strategy, evaluate,
save/load, predict, and the Table 3 comparison.

Layout written (``R`` the run)::

    R/ctr/<strategy>/model.safetensors   weights (MAKE's too; never the representations)
    R/ctr/<strategy>/vocab.safetensors   the ID vocabularies the model was trained with
    R/ctr/<strategy>/config.json         CtrConfig, TrainConfig, sizes, MAKE epochs, representation source
    R/ctr/<strategy>/metrics.json        auc, gauc, logloss, groups (8, lowest frequency first), new_items

Example::

    >>> from mmrank.ctr.run import train_strategy
    >>> metrics = train_strategy(Path("runs/demo"), "simtier")        # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_np, save_file as save_np
from safetensors.torch import load_file as load_torch, save_file as save_torch

from mmrank.ctr.data import (MAX_LEN, CtrSamples, EncodedSamples, FeatureSpace, Vocab, load_samples,
                            make_batch, simtier_features)
from mmrank.ctr.layers import ItemVectors
from mmrank.ctr.models import STRATEGIES, CtrConfig, CtrModel, MakeModule, ModelSizes
from mmrank.ctr.trainer import TrainConfig, predict, pretrain_make, train
from mmrank.errors import ConfigError, DataError, MMRankError

N_GROUPS = 8


# ---------------------------------------------------------------------------------------------------
# Representations

def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(n > 0, n, 1.0)).astype(np.float32)


def item_vectors(run: Path, item_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Frozen item representations of the run: ``(ids (N,) int64, vectors (N, D) float32, source)``.

    From the embedding table ``R/embeddings`` when it exists (ids missing there get zero rows), else
    from the pre-trained encoder ``R/encoder`` over the items' titles and images. Rows are L2-normalised
    so that SimTier's dot products lie in [-1, 1] (Eq. 2). ``item_ids`` defaults to every item of
    ``R/data/items.parquet`` (or every id of the table).
    """
    run = Path(run)
    items_path = run / "data" / "items.parquet"
    if (run / "embeddings").exists():
        from mmrank.store.backends import open_table

        table = open_table(run / "embeddings")
        if item_ids is None:
            if items_path.exists():
                from mmrank.data.io import read_table

                item_ids = read_table(items_path, "items", columns=["item_id"]).column("item_id").to_numpy()
                item_ids = np.union1d(item_ids, table.ids())
            else:
                item_ids = table.ids()
        ids = np.unique(np.asarray(item_ids, np.int64))
        return ids, _normalise(table.get(ids, missing="zero")), f"embeddings:{table.version}"
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
        return ids[sel][order], _normalise(vecs[order]), f"encoder:{version}"
    raise MMRankError(f"{run}: no item representations: neither {run}/embeddings (run `mmrank embed`) "
                      f"nor {run}/encoder (run `mmrank pretrain`) exists")


# ---------------------------------------------------------------------------------------------------
# Data of a run

@dataclass
class RunData:
    """Samples of a run, encoded, with everything evaluation needs."""

    samples: CtrSamples
    space: FeatureSpace
    enc: EncodedSamples
    vectors: torch.Tensor | None      # (V, D) rows indexed by enc.item_v
    vec_source: str
    item_created_at: tuple[np.ndarray, np.ndarray] | None  # (sorted ids, created_at)
    manifest: dict
    train_idx: np.ndarray | None = None  # training rows used (default: the whole training split)

    def train_rows(self) -> np.ndarray:
        return self.enc.train_rows() if self.train_idx is None else self.train_idx

    def limit_train(self, max_rows: int | None) -> None:
        """Train on the latest ``max_rows`` rows of the training split only (None: all)."""
        rows = self.enc.train_rows()
        if max_rows is not None and len(rows) > max_rows:
            order = np.argsort(self.samples.ts[rows], kind="stable")
            rows = np.sort(rows[order[-max_rows:]])
        self.train_idx = rows

    def sizes(self) -> ModelSizes:
        return ModelSizes(n_items=len(self.space.items), n_users=len(self.space.users),
                          n_categories=self.space.n_categories, n_regions=self.space.n_regions,
                          vec_dim=0 if self.vectors is None else int(self.vectors.shape[1]))


def vector_table(space: FeatureSpace, ids: np.ndarray, vecs: np.ndarray) -> torch.Tensor:
    """Rows of ``space.vec_items`` (0 = padding, 1 = unknown, zero vectors) from ``(ids, vecs)``."""
    table = np.zeros((len(space.vec_items), vecs.shape[1]), np.float32)
    table[space.vec_items.lookup(ids)] = vecs
    table[:2] = 0.0
    return torch.from_numpy(table)


def load_run(run: Path, *, with_vectors: bool = True, samples_path: Path | None = None,
             space: FeatureSpace | None = None) -> RunData:
    """Read ``R/data/ctr_samples.parquet`` (or ``samples_path``) and the run's representations."""
    run = Path(run)
    path = samples_path or run / "data" / "ctr_samples.parquet"
    samples = load_samples(path, require_split=samples_path is None)
    ids = vecs = None
    source = ""
    if with_vectors:
        ids, vecs, source = item_vectors(run)
    if space is None:
        space = FeatureSpace.fit(samples, ids)
    elif ids is not None:
        space.vec_items = Vocab.of(ids)
    enc = space.encode(samples)
    table = vector_table(space, ids, vecs) if ids is not None else None
    manifest = {}
    mpath = run / "data" / "manifest.json"
    if mpath.exists():
        manifest = json.loads(mpath.read_text())
    created = None
    items_path = run / "data" / "items.parquet"
    if items_path.exists():
        from mmrank.data.io import read_table

        t = read_table(items_path, "items", columns=["item_id", "created_at"])
        iid = t.column("item_id").to_numpy().astype(np.int64)
        order = np.argsort(iid)
        created = (iid[order], t.column("created_at").to_numpy().astype(np.int64)[order])
    return RunData(samples, space, enc, table, source, created, manifest)


# ---------------------------------------------------------------------------------------------------
# Evaluation

def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def evaluate(data: RunData, probs: np.ndarray, rows: np.ndarray | None = None) -> dict:
    """AUC, GAUC (by user), LogLoss; the same per item-frequency group (8, by training frequency,
    lowest first, Figure 6b) and on new items (created after the manifest's ``new_item_ts``)."""
    from mmrank.eval import auc, frequency_groups, gauc, logloss, metrics_by_group, new_item_mask

    s = data.samples
    rows = data.enc.test_rows() if rows is None else rows
    y, users, items = s.label[rows].astype(np.int64), s.user_id[rows], s.item_id[rows]
    out: dict[str, Any] = {"n": int(len(rows)), "auc": auc(y, probs), "gauc": gauc(y, probs, users),
                           "logloss": logloss(y, probs)}
    groups = frequency_groups(s.item_id[data.train_rows()], items, N_GROUPS)
    out["groups"] = [{k: r[k] for k in ("group", "n", "auc", "gauc", "logloss")}
                     for r in metrics_by_group(y, probs, users, groups, N_GROUPS, with_logloss=True)]
    new_ts = data.manifest.get("new_item_ts")
    if new_ts is not None and data.item_created_at is not None:
        ids, created = data.item_created_at
        pos = np.clip(np.searchsorted(ids, items), 0, len(ids) - 1)
        is_new = new_item_mask(np.where(ids[pos] == items, created[pos], -1), new_ts)
        rowsum = metrics_by_group(y, probs, users, is_new.astype(np.int64), 2)[1]
        out["new_items"] = {"n": rowsum["n"], "auc": rowsum["auc"], "gauc": rowsum["gauc"]}
    else:
        out["new_items"] = {"n": 0, "auc": float("nan"), "gauc": float("nan")}
    return out


# ---------------------------------------------------------------------------------------------------
# Train, save, load

def build_model(data: RunData, cfg: CtrConfig, make: MakeModule | None = None,
                freeze_make: bool = False) -> CtrModel:
    if cfg.uses_vectors and data.vectors is None:
        raise ConfigError(f"strategy {cfg.strategy!r} needs item representations; none were loaded")
    vecs = ItemVectors(data.vectors) if data.vectors is not None and cfg.uses_vectors else None
    if make is not None and vecs is not None:
        make.vectors = vecs
    return CtrModel(cfg, data.sizes(), vecs, make=make, freeze_make=freeze_make)


def new_make(data: RunData, cfg: CtrConfig, seed: int) -> MakeModule:
    torch.manual_seed(seed + 104729)
    return MakeModule(ItemVectors(data.vectors), cfg.make)


def ensure_simtier(data: RunData, cfg: CtrConfig) -> None:
    """Precompute SimTier counts for every row once (``data.enc.extra["simtier"]``), unless present
    with the same N; every later strategy, seed and epoch over these rows reuses them."""
    have = data.enc.extra.get("simtier")
    if have is not None and have.shape[1] == cfg.n_tiers:
        return
    if data.vectors is None:
        raise ConfigError("SimTier needs item representations; none were loaded")
    data.enc.extra["simtier"] = simtier_features(data.enc, data.vectors, cfg.n_tiers, cfg.max_len)


def fit_strategy(data: RunData, strategy: str, *, seed: int = 0, make_epochs: int = 4,
                 make: MakeModule | None = None, cfg: CtrConfig | None = None,
                 train_cfg: TrainConfig | None = None, progress: bool = True) -> tuple[CtrModel, dict]:
    """Train one strategy (pre-training MAKE first when needed, unless ``make`` is given pre-trained).

    Returns ``(model, info)``; ``info`` holds training losses and times.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    cfg = (cfg or CtrConfig()).model_copy(update={"strategy": strategy})
    cfg = CtrConfig.model_validate(cfg.model_dump())
    tcfg = (train_cfg or TrainConfig()).model_copy(update={"seed": seed})
    info: dict[str, Any] = {"make_epochs": make_epochs if cfg.uses_make else None}
    if cfg.uses_make and make is None:
        make = new_make(data, cfg, seed)
        if make_epochs > 0:
            info["make_pretrain"] = pretrain_make(make, data.enc, data.train_rows(), epochs=make_epochs, cfg=tcfg,
                                                  progress=progress)
    if cfg.uses_simtier and cfg.simtier_in == "pipeline":
        ensure_simtier(data, cfg)
    torch.manual_seed(seed)
    freeze = cfg.uses_make and make_epochs > 0 and cfg.make.after_pretrain == "freeze"
    model = build_model(data, cfg, make=make, freeze_make=freeze)
    info["train"] = train(model, data.enc, data.train_rows(), id_epochs=1, cfg=tcfg, progress=progress)
    return model, info


def save_model(model: CtrModel, space: FeatureSpace, out: Path, *, train_cfg: TrainConfig,
               extra: dict | None = None) -> None:
    """Write weights, vocabularies and config (safetensors + JSON) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.file_state_dict().items()}
    save_torch(state, str(out / "model.safetensors"))
    arrays = {k: v for k, v in space.to_arrays().items() if k != "vocab.vec_items"}
    save_np(arrays, str(out / "vocab.safetensors"))
    conf = {"model": model.cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
            "sizes": model.sizes.to_dict(), "make_frozen": model.freeze_make}
    conf.update(extra or {})
    (out / "config.json").write_text(json.dumps(conf, indent=2))


def representation_version(source: str | None) -> str | None:
    """The encoder version in a representation source (``"embeddings:<v>"`` or ``"encoder:<v>"``, as
    :func:`item_vectors` returns and ``config.json`` records); None when there is none."""
    if not source:
        return None
    kind, _, version = str(source).partition(":")
    return version or None if kind in ("embeddings", "encoder") else None


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


def load_model(run: Path, strategy: str, *, attach_vectors: bool = True,
               encoder_version: str | None = None) -> tuple[CtrModel, FeatureSpace, dict]:
    """Load ``R/ctr/<strategy>`` (in eval mode).

    With ``attach_vectors`` the run's current representations are re-attached (``space.vec_items``
    covers them), after checking that they come from the encoder version the model was trained on.
    Without, the model gets an empty ``(2, D)`` table and ``space.vec_items`` is None: the caller
    passes the vectors of each batch to :func:`score` (serving), after checking ``encoder_version``
    (the version of the table it will read) the same way.
    """
    d = Path(run) / "ctr" / strategy
    if not (d / "model.safetensors").exists():
        raise MMRankError(f"{d}: no trained model (run `mmrank ctr train --run {run} --strategy {strategy}`)")
    conf = json.loads((d / "config.json").read_text())
    cfg = CtrConfig.model_validate(conf["model"])
    sizes = ModelSizes(**conf["sizes"])
    space = FeatureSpace.from_arrays(load_np(str(d / "vocab.safetensors")))
    vecs = None
    if cfg.uses_vectors and attach_vectors:
        ids, v, source = item_vectors(run)
        check_representation_version(conf, d, representation_version(source))
        if v.shape[1] != sizes.vec_dim:
            raise ConfigError(f"{d}: trained on {sizes.vec_dim}-d representations, the run now has "
                              f"{v.shape[1]}-d ones")
        space.vec_items = Vocab.of(ids)
        vecs = vector_table(space, ids, v)
    elif cfg.uses_vectors:
        check_representation_version(conf, d, encoder_version)
        vecs = torch.zeros(2, sizes.vec_dim)
    model = CtrModel(cfg, sizes, vecs, freeze_make=bool(conf.get("make_frozen")))
    model.load_state_dict(load_torch(str(d / "model.safetensors")), strict=True)
    model.eval()
    return model, space, conf


# ---------------------------------------------------------------------------------------------------
# Scoring rows that do not come from a file (serving)

def samples_from_rows(*, user_id: np.ndarray, item_id: np.ndarray, category_id: np.ndarray,
                      region: np.ndarray, position: np.ndarray, hist_item_ids: list[np.ndarray],
                      hist_category_ids: list[np.ndarray], ts: np.ndarray | None = None,
                      max_len: int = MAX_LEN, source: str = "request") -> CtrSamples:
    """In-memory rows -> :class:`CtrSamples`, the same object :func:`load_samples` reads from a
    CTR_SAMPLES file, so that both go through :meth:`FeatureSpace.encode` and :func:`make_batch`.

    Args:
        user_id, item_id, category_id, region, position: ``(N,)`` per row.
        hist_item_ids, hist_category_ids: N arrays (the behaviour before the row, most recent last);
            the last ``max_len`` are kept, as :func:`load_samples` does.
    """
    n = len(item_id)
    if not (len(user_id) == len(category_id) == len(region) == len(position) == len(hist_item_ids)
            == len(hist_category_ids) == n):
        raise DataError(f"rows: every column needs {n} entries", file=source)
    lens = np.array([min(len(h), max_len) for h in hist_item_ids], np.int64)
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


def batch_of(enc: EncodedSamples, max_len: int = MAX_LEN) -> dict[str, torch.Tensor]:
    """Every row of ``enc`` as one batch (:func:`make_batch`)."""
    return make_batch(enc, np.arange(len(enc)), max_len)


@torch.inference_mode()
def score(model: CtrModel, batch: dict[str, torch.Tensor],
          vectors: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``(B,)`` of one batch.

    ``vectors (V, D)`` (rows 0 and 1 zero) replaces the model's representation table for this call:
    rows indexed by ``batch["item_v"]``/``batch["hist_item_v"]`` (see :func:`encode_for_scoring`), so
    items created after the model was loaded are scored from their content. One call at a time per
    model object (the table is swapped in place for the call).
    """
    model.eval()
    tables = [m for m in model.modules() if isinstance(m, ItemVectors)] if vectors is not None else []
    saved = [t.table for t in tables]
    try:
        for t in tables:
            t.table = vectors
        return model(batch)["logit"]
    finally:
        for t, old in zip(tables, saved):
            t.table = old


def train_strategy(run: Path, strategy: str, *, seed: int = 0, make_epochs: int = 4,
                   cfg: CtrConfig | None = None, train_cfg: TrainConfig | None = None,
                   data: RunData | None = None, progress: bool = True) -> dict:
    """Train ``strategy`` on the run, evaluate on the test split, write ``R/ctr/<strategy>/``."""
    run = Path(run)
    cfg = cfg or CtrConfig()
    data = data or load_run(run, with_vectors=strategy != "id")
    tcfg = train_cfg or TrainConfig()
    model, info = fit_strategy(data, strategy, seed=seed, make_epochs=make_epochs, cfg=cfg,
                               train_cfg=tcfg, progress=progress)
    probs = predict(model, data.enc)
    metrics = evaluate(data, probs)
    metrics.update({"strategy": strategy, "seed": seed, "oracle_auc": data.manifest.get("oracle_auc"),
                    "train_seconds": info["train"]["seconds"],
                    "make_pretrain_seconds": info.get("make_pretrain", {}).get("seconds")})
    out = run / "ctr" / strategy
    save_model(model, data.space, out, train_cfg=tcfg.model_copy(update={"seed": seed}),
               extra={"make_epochs": info["make_epochs"], "representations": data.vec_source})
    (out / "metrics.json").write_text(json.dumps(_nan_to_none(metrics), indent=2))
    return metrics


def predict_file(run: Path, strategy: str, samples: Path, out: Path) -> int:
    """Score a CTR_SAMPLES file (``split`` may be anything) with ``R/ctr/<strategy>``; write Parquet
    ``request_id, item_id, position, score``. Returns the number of rows."""
    import pyarrow as pa

    from mmrank.data.io import write_table

    model, space, _ = load_model(run, strategy)
    data = load_samples(samples, require_split=False)
    # load_model re-attached the run's current representations: items created after training (out
    # of the ID vocabulary) still get theirs, as the real-time embedding table intends (Sec. 5)
    enc = space.encode(data)
    probs = predict(model, enc, np.arange(len(data)), progress=True)
    table = pa.table({"request_id": pa.array(data.request_id), "item_id": pa.array(data.item_id),
                      "position": pa.array(data.position), "score": pa.array(probs.astype(np.float64))})
    write_table(table, out)
    return len(data)
