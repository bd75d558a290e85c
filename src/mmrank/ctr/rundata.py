"""A run's CTR samples and representations in memory (:class:`RunData`, :func:`load_run`), and fitting
one strategy on them (:func:`fit_strategy`, with MAKE pre-training and the precomputed SimTier counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrank.ctr.data import CtrSamples, EncodedSamples, FeatureSpace, Vocab, load_samples, simtier_features
from mmrank.ctr.debias import ensure_impressions
from mmrank.ctr.models import STRATEGIES, CtrConfig, CtrModel, MakeModule, ModelSizes
from mmrank.ctr.representations import item_vectors, vector_table
from mmrank.ctr.trainer import TrainConfig, placement, pretrain_make, train
from mmrank.device import HardwareConfig
from mmrank.errors import ConfigError
from mmrank.models.layers import ItemVectors


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
    inputs: dict = field(default_factory=dict)  # the digests of the tables read (mmrank.lineage)
    codes: torch.Tensor | None = None  # (V, L) semantic IDs (code + 1) indexed by enc.item_v
    sid: Any = None                     # mmrank.sid.stage.SidCodes they come from

    def train_rows(self) -> np.ndarray:
        return self.enc.train_rows() if self.train_idx is None else self.train_idx

    def limit_train(self, max_rows: int | None) -> None:
        """Train on the latest ``max_rows`` rows of the training split only (None: all)."""
        rows = self.enc.train_rows()
        if max_rows is not None and len(rows) > max_rows:
            order = np.argsort(self.samples.ts[rows], kind="stable")
            rows = np.sort(rows[order[-max_rows:]])
        self.train_idx = rows

    def with_posttrained(self, run: Path) -> RunData:
        """The same samples, vocabularies and training rows with the post-trained representations of
        ``R/posttrain`` (own SimTier counts; the pre-trained ones stay with ``self``; no semantic IDs)."""
        from mmrank.posttrain.stage import posttrained_vectors

        return self.with_table(*posttrained_vectors(run))

    def with_table(self, ids: np.ndarray, vecs: np.ndarray, source: str) -> RunData:
        """The same samples, vocabularies and training rows with another item table (``ids``, ``vecs``,
        named ``source``): own SimTier counts, no semantic IDs."""
        space = replace(self.space, vec_items=Vocab.of(ids))
        enc = replace(self.enc, extra={k: v for k, v in self.enc.extra.items() if k != "simtier"})
        if self.space.vec_items is None or not np.array_equal(ids, self.space.vec_items.ids):
            enc = space.encode(self.samples)
        return replace(self, space=space, enc=enc, vectors=vector_table(space, ids, vecs), vec_source=source,
                       train_idx=None if self.train_idx is None else self.train_idx.copy(), codes=None, sid=None)

    def sizes(self) -> ModelSizes:
        return ModelSizes(n_items=len(self.space.items), n_users=len(self.space.users),
                          n_categories=self.space.n_categories, n_regions=self.space.n_regions,
                          vec_dim=0 if self.vectors is None else int(self.vectors.shape[1]),
                          sid_levels=0 if self.sid is None else self.sid.levels,
                          sid_codes=0 if self.sid is None else self.sid.n_codes)


def load_run(run: Path, *, with_vectors: bool = True, samples_path: Path | None = None,
             space: FeatureSpace | None = None, posttrained: bool = False,
             vectors: tuple[np.ndarray, np.ndarray, str] | None = None) -> RunData:
    """Read ``R/data/ctr_samples.parquet`` (or ``samples_path``) and the run's representations (the
    post-trained ones of ``R/posttrain`` with ``posttrained``; ``vectors``: ``(ids, vectors, source)``
    given instead of the run's, as :func:`item_vectors` returns)."""
    from mmrank.lineage import CTR_TABLES, data_inputs

    run = Path(run)
    inputs = data_inputs(run, *CTR_TABLES)  # before the tables are read
    path = samples_path or run / "data" / "ctr_samples.parquet"
    samples = load_samples(path, require_split=samples_path is None)
    ids = vecs = None
    source = ""
    if vectors is not None:
        ids, vecs, source = vectors
    elif with_vectors:
        if posttrained:
            from mmrank.posttrain.stage import posttrained_vectors

            ids, vecs, source = posttrained_vectors(run)
        else:
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
    return RunData(samples, space, enc, table, source, created, manifest, inputs=inputs)

def set_vectors(data: RunData, ids: np.ndarray, vecs: np.ndarray, source: str) -> None:
    """Swap the representations of ``data`` for ``(ids, vecs)`` (e.g. another encoder's), keeping the
    samples and their encoding; the precomputed SimTier counts and any semantic IDs are dropped (they
    belong to the old vectors). ``ids`` must be covered by ``data.space.vec_items`` (ids it lacks get no
    row)."""
    data.vectors = vector_table(data.space, np.asarray(ids, np.int64), np.asarray(vecs, np.float32))
    data.vec_source = source
    data.codes, data.sid = None, None
    data.enc.extra.pop("simtier", None)


def build_model(data: RunData, cfg: CtrConfig, make: MakeModule | None = None,
                freeze_make: bool = False) -> CtrModel:
    if cfg.uses_vectors and data.vectors is None:
        raise ConfigError(f"strategy {cfg.strategy!r} needs item representations; none were loaded")
    if cfg.uses_sid and data.codes is None:
        raise ConfigError(f"strategy {cfg.strategy!r} needs semantic IDs; none were attached "
                          f"(mmrank.ctr.representations.attach_codes)")
    vecs = ItemVectors(data.vectors) if data.vectors is not None and cfg.uses_vectors else None
    if make is not None and vecs is not None:
        make.vectors = vecs
    sizes = data.sizes()
    if not cfg.uses_sid:
        sizes.sid_levels = sizes.sid_codes = 0
    return CtrModel(cfg, sizes, vecs, make=make, freeze_make=freeze_make,
                    codes=data.codes if cfg.uses_sid else None)


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
    data.enc.extra["simtier"] = simtier_features(data.enc, data.vectors, cfg.n_tiers, cfg.history_len)


def fit_strategy(data: RunData, strategy: str, *, seed: int = 0, make_epochs: int = 4,
                 make: MakeModule | None = None, cfg: CtrConfig | None = None,
                 train_cfg: TrainConfig | None = None, progress: bool = True,
                 hardware: HardwareConfig | None = None) -> tuple[CtrModel, dict]:
    """Train one strategy (pre-training MAKE first when needed, unless ``make`` is given pre-trained)
    on ``hardware``'s device (None: auto).

    Returns ``(model, info)`` (the model on that device); ``info`` holds training losses and times.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    cfg = (cfg or CtrConfig()).model_copy(update={"strategy": strategy})
    cfg = CtrConfig.model_validate(cfg.model_dump())
    if cfg.uses_vectors and cfg.uses_posttrained != data.vec_source.startswith("posttrain:"):
        raise ConfigError(f"strategy {strategy!r} needs the {'post' if cfg.uses_posttrained else 'pre'}-trained "
                          f"representations, the data loaded has {data.vec_source or 'none'!r} "
                          f"(load_run(..., posttrained={cfg.uses_posttrained}))")
    tcfg = (train_cfg or TrainConfig()).model_copy(update={"seed": seed})
    where = placement(hardware)
    info: dict[str, Any] = {"make_epochs": make_epochs if cfg.uses_make else None}
    if cfg.uses_make and make is None:
        make = new_make(data, cfg, seed)
        if make_epochs > 0:
            info["make_pretrain"] = pretrain_make(make, data.enc, data.train_rows(), epochs=make_epochs, cfg=tcfg,
                                                  progress=progress, **where)
    if cfg.uses_simtier and cfg.simtier_in == "pipeline":
        ensure_simtier(data, cfg)
    if cfg.uses_debias:
        ensure_impressions(data.enc)   # point-in-time, from the training samples (mmrank.ctr.debias)
    torch.manual_seed(seed)
    freeze = cfg.uses_make and make_epochs > 0 and cfg.make.after_pretrain == "freeze"
    model = build_model(data, cfg, make=make, freeze_make=freeze)
    info["train"] = train(model, data.enc, data.train_rows(), id_epochs=1, cfg=tcfg, progress=progress, **where)
    return model, info
