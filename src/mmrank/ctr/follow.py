"""Near-line CTR training: one pass over the sample stream in event-time order (issue 31, Monolith's
online training, arXiv 2209.07663).

* :func:`sample_batches` is the one seam to the event source: mini-batches of CTR samples (the columns
  of :func:`mmrank.data.samples.build_ctr_samples`) with an ``event_id`` each, in event-time order, from a
  cursor on. ``replay`` reads the run's ``R/data/ctr_samples.parquet`` sorted by ``ts`` (ties: file
  order; ``event_id`` = the row in that file). ``redis`` (:class:`RedisSamples`) reads the run's event
  stream from Redis (a consumer group) through the online joiner (:func:`mmrank.stream.stage.make_joiner`):
  each event batch's joined samples are trained, then the checkpoint saves the Redis cursor and the
  joiner's snapshot, and only then are the entries acknowledged (``XACK``); a restart restores the
  joiner, skips pending entries at or below the cursor and redoes the others. There a sample's slot is
  its position in the order samples came (``event_id`` = that slot; the checkpoint's ``event_ids`` holds
  the impression's stream event id of each slot). The pass ends when no entry came for ``idle_stop_s``:
  the joiner is then flushed (samples whose window is still open are emitted and trained).
* :class:`Follower` trains every strategy on each batch after scoring it with the strategy's last
  published model (Monolith's protocol: each window is predicted before it is learnt from). Item and
  user IDs get rows from a :class:`~mmrank.ctr.dynamic_ids.DynamicIdTable` (admission, expiry, bound).
  A sample's item representation is read as of its time: an item created at ``created_at`` is visible
  from ``created_at + ingest_latency`` on, and before that it is the unknown (zero) row, for the target
  and for history items alike.
* Every ``publish_every`` seconds of event time each strategy is published as a versioned directory in
  the layout :func:`mmrank.ctr.artifacts.load_model` (and so ``mmrank serve``) reads, written under a
  temporary name and renamed; ``R/ctr/follow-<strategy>`` is a symlink swapped atomically to the newest
  (serve it with ``--strategy follow-<strategy>``, reload with ``POST /v1/admin/reload``).
* Checkpoints (safetensors + JSON) hold the models, optimiser states, ID tables, the cursor and a
  per-event training count (with ``--source redis`` also the joiner's snapshot: plain data that
  :meth:`mmrank.stream.joiner.Joiner.restore` loads with a restricted unpickler); a restart after ``kill -9`` resumes from the last one, so every event is
  trained exactly once in the state that survives.

The trainer never reads ``R/truth/``: it reads ``R/data`` (samples, items), ``R/embeddings`` and the
run's lineage digests only.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import Field
from safetensors.torch import load_file as load_torch, save_file as save_torch

from mmrank.config import StrictModel
from mmrank.ctr.data import (MAX_POSITION, OOV, CtrSamples, EncodedSamples, FeatureSpace, Vocab, concat_ranges,
                             load_samples, make_batch, simtier_features)
from mmrank.ctr.dynamic_ids import DynamicIdTable
from mmrank.ctr.models import PAPER_STRATEGIES, CtrConfig, CtrModel, ModelSizes, Strategy
from mmrank.ctr.trainer import TrainConfig, make_optimizer, optimizer_step, placement
from mmrank.data.schemas import HISTORY_LEN
from mmrank.device import HardwareConfig, autocast, batch_to
from mmrank.errors import ConfigError, MMRankError
from mmrank.models.layers import ItemVectors

DAY = 86_400


class FollowConfig(StrictModel):
    """`mmrank ctr follow`: the near-line trainer's settings."""

    strategies: list[Strategy] = Field(default_factory=lambda: list(PAPER_STRATEGIES))
    source: str = Field("replay", description="replay (R/data/ctr_samples.parquet by ts) | redis")
    redis_url: str | None = Field(None, description="--source redis: redis://host:port/db")
    stream: str | None = Field(None, description="--source redis: stream key (None: mmrank:events:<run name>)")
    group: str = Field("ctr-follow", description="--source redis: consumer group")
    consumer: str = Field("trainer", description="--source redis: consumer name (a restart with the same "
                          "name resumes its pending entries)")
    batch_events: int = Field(1000, ge=1, description="--source redis: events per read (a checkpoint falls "
                              "between reads)")
    block_ms: int = Field(200, ge=1, description="--source redis: how long one read waits for entries")
    idle_stop_s: float = Field(2.0, ge=0.0, description="--source redis: end the pass when no entry came "
                               "for this long")
    batch_size: int = Field(256, ge=1, description="samples per mini-batch (a batch never spans a publish)")
    publish_every: int = Field(3600, ge=1, description="seconds of event time between published bundles")
    keep_bundles: int = Field(3, ge=1, description="published versions kept on disk per strategy")
    checkpoint_every: int = Field(200, ge=1, description="batches between checkpoints")
    ingest_latency: float = Field(1.0, ge=0, description="seconds from an item's created_at until its "
                                  "representation is readable (benchmarks/ingest_latency.py measures it)")
    item_capacity: int = Field(25_000, ge=1, description="rows of the dynamic item ID table (LRU beyond)")
    user_capacity: int = Field(60_000, ge=1, description="rows of the dynamic user ID table (LRU beyond)")
    admit_after: int = Field(2, ge=1, description="sightings before an id gets its own row")
    expire_after: int | None = Field(14 * DAY, ge=1, description="seconds unseen before a row is freed")
    seed: int = 0
    model: CtrConfig = Field(default_factory=CtrConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------------------------- source

@dataclass
class SampleBatch:
    """Samples in event-time order, their slots (``event_id``), and the cursor after them; ``ids``: the
    source's event ids (None: the slots); ``last``: a checkpoint may follow (the end of a source read)."""

    samples: CtrSamples
    event_id: np.ndarray
    cursor: int | dict
    ids: np.ndarray | None = None
    last: bool = True


def take(s: CtrSamples, rows: np.ndarray) -> CtrSamples:
    """Rows ``rows`` of ``s`` (histories included) as a new :class:`CtrSamples`."""
    rows = np.asarray(rows, np.int64)
    lens = s.hist_offsets[rows + 1] - s.hist_offsets[rows]
    idx = concat_ranges(s.hist_offsets[rows], lens)
    off = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    return CtrSamples(ts=s.ts[rows], user_id=s.user_id[rows], item_id=s.item_id[rows],
                      request_id=s.request_id[rows], position=s.position[rows], region=s.region[rows],
                      category_id=s.category_id[rows], label=s.label[rows], is_train=s.is_train[rows],
                      hist_offsets=off, hist_item_id=s.hist_item_id[idx],
                      hist_category_id=s.hist_category_id[idx], source=s.source)


class ReplaySamples:
    """A run's CTR samples as a stream: sorted by ``ts`` (stable), ``event_id`` = row in the file."""

    def __init__(self, run: Path) -> None:
        path = Path(run) / "data" / "ctr_samples.parquet"
        if not path.exists():
            raise MMRankError(f"{path}: no CTR samples (run `mmrank data build --run {run}`)")
        self.all = load_samples(path, require_split=False)
        self.order = np.argsort(self.all.ts, kind="stable")
        self.n_events = len(self.all)

    def vocab_sizes(self) -> tuple[int, int]:
        """(categories, regions) of the model's small vocabularies."""
        s = self.all
        return (int(max(s.category_id.max(initial=0), s.hist_category_id.max(initial=0))) + 2,
                int(s.region.max(initial=0)) + 2)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[SampleBatch]:
        for a in range(start, len(self.order), batch_size):
            rows = self.order[a:a + batch_size]
            yield SampleBatch(take(self.all, rows), rows.astype(np.int64), a + len(rows))


def samples_from_arrow(rb: pa.RecordBatch, history_len: int = HISTORY_LEN,
                       source: str = "") -> tuple[CtrSamples, np.ndarray]:
    """A batch of joined samples (:data:`mmrank.stream.joiner.SAMPLE_SCHEMA`) as :class:`CtrSamples`
    (histories cut to the last ``history_len`` clicks, as :func:`~mmrank.ctr.data.load_samples` does)
    and the impressions' event ids."""
    def col(name: str) -> np.ndarray:
        return rb.column(name).to_numpy(zero_copy_only=False)

    def flat(name: str) -> tuple[np.ndarray, np.ndarray]:
        c = rb.column(name)
        return (pc.fill_null(pc.list_value_length(c), 0).to_numpy(zero_copy_only=False).astype(np.int64),
                pc.list_flatten(c).to_numpy(zero_copy_only=False))

    li, vi = flat("hist_item_ids")
    lc, vc = flat("hist_category_ids")
    if not np.array_equal(li, lc):
        row = int(np.flatnonzero(li != lc)[0])
        raise MMRankError(f"joined samples row {row}: history has {li[row]} item ids but {lc[row]} category ids")
    keep = np.minimum(li, history_len)
    ends = np.cumsum(li)
    idx = concat_ranges(ends - keep, keep)
    off = np.zeros(len(keep) + 1, np.int64)
    np.cumsum(keep, out=off[1:])
    s = CtrSamples(ts=col("ts").astype(np.int64), user_id=col("user_id").astype(np.int64),
                   item_id=col("item_id").astype(np.int64), request_id=col("request_id").astype(np.int64),
                   position=col("position").astype(np.int16), region=col("region").astype(np.int16),
                   category_id=col("category_id").astype(np.int32), label=col("label").astype(np.int8),
                   is_train=col("split") == "train", hist_offsets=off,
                   hist_item_id=np.asarray(vi, np.int64)[idx], hist_category_id=np.asarray(vc, np.int32)[idx],
                   source=source)
    return s, col("event_id").astype(np.int64)


class RedisSamples:
    """The run's event stream from Redis through the online joiner, as mini-batches of samples.

    The cursor is ``{"samples": slots handed out, "redis": the RedisSource cursor}``; :meth:`state` is the
    joiner's snapshot at the last batch handed out with ``last`` set (save it with that batch's cursor),
    :meth:`restore` sets it before :meth:`batches`; :meth:`commit` acknowledges a checkpointed cursor.
    """

    n_events = None  # unknown in advance

    def __init__(self, run: Path, cfg: FollowConfig) -> None:
        from mmrank.stream.sources import run_stream_key

        if not cfg.redis_url:
            raise ConfigError("--source redis: give --redis URL (redis://host:port/db)")
        self.run, self.cfg = Path(run), cfg
        self.stream = cfg.stream or run_stream_key(run)
        self._joiner_state: bytes | None = None
        self.joiner = None
        self.src = None
        self.skipped = 0

    def vocab_sizes(self) -> tuple[int, int]:
        """(categories, regions): the catalog's categories, the log's regions (R/data)."""
        from mmrank.data.io import read_table
        from mmrank.stream.joiner import category_vocab

        items = read_table(self.run / "data" / "items.parquet", "items", columns=["item_id", "category"])
        n_cat = len(category_vocab(items)[1]) + 1
        ev = self.run / "data" / "events.parquet"
        n_reg = 2
        if ev.exists():
            n_reg = int(pq.read_table(ev, columns=["region"]).column("region").to_numpy().max(initial=0)) + 2
        return n_cat, n_reg

    def restore(self, state: bytes) -> None:
        self._joiner_state = state

    def state(self) -> bytes:
        return self.joiner.snapshot()

    def commit(self, cursor: dict) -> None:
        if self.src is not None and cursor.get("redis", {}).get("last_id"):
            self.src.ack(cursor["redis"])

    def batches(self, batch_size: int, start: int | dict = 0) -> Iterator[SampleBatch]:
        from mmrank.stream.joiner import Joiner
        from mmrank.stream.sources import RedisSource
        from mmrank.stream.stage import make_joiner

        cfg = self.cfg
        cur = start if isinstance(start, dict) else {"samples": 0, "redis": None}
        seq = int(cur["samples"])
        self.joiner = Joiner.restore(self._joiner_state) if self._joiner_state else make_joiner(self.run)
        hist_len = HISTORY_LEN  # as the replay source's load_samples
        self.src = src = RedisSource(cfg.redis_url, self.stream, cfg.group, cfg.consumer, cur["redis"],
                                     cfg.batch_events, cfg.block_ms)
        last_cursor = cur["redis"]
        idle_since: float | None = None
        try:
            while True:
                b = src.read()
                if b is None:
                    idle_since = idle_since or time.perf_counter()
                    if time.perf_counter() - idle_since < cfg.idle_stop_s:
                        continue
                    rb = self.joiner.flush()
                else:
                    idle_since = None
                    rb = self.joiner.push(b.records)
                    last_cursor = b.cursor
                s, ids = samples_from_arrow(rb, hist_len, source=f"redis:{self.stream}")
                n = len(s)
                cuts = list(range(0, n, batch_size)) or [0]
                for a in cuts:
                    rows = np.arange(a, min(a + batch_size, n))
                    seq_rows = seq + rows
                    yield SampleBatch(take(s, rows), seq_rows.astype(np.int64),
                                      {"samples": int(seq + rows[-1] + 1) if len(rows) else seq,
                                       "redis": last_cursor},
                                      ids=ids[rows], last=a == cuts[-1])
                seq += n
                if b is None:
                    self.skipped = src.skipped
                    return
        finally:
            self.skipped = src.skipped


def open_samples(run: Path, source: str = "replay", cfg: FollowConfig | None = None,
                 ) -> ReplaySamples | RedisSamples:
    """The trainer's sample source: the run's CTR samples replayed in time order, or the Redis event
    stream joined online (not :func:`mmrank.stream.sources.open_source`, which yields raw events)."""
    if source == "replay":
        return ReplaySamples(run)
    if source == "redis":
        return RedisSamples(run, cfg or FollowConfig(source="redis"))
    raise ConfigError(f"--source: expected replay or redis, got {source!r}")


def sample_batches(run: Path, source: str = "replay", batch_size: int = 256,
                   start: int | dict = 0, cfg: FollowConfig | None = None) -> Iterator[SampleBatch]:
    """The seam: mini-batches of the run's samples in event-time order from cursor ``start`` on."""
    return open_samples(run, source, cfg).batches(batch_size, start)


# ------------------------------------------------------------------------------- representations in time

@dataclass
class Representations:
    """The run's item vectors (rows of ``vocab``) and when each becomes readable."""

    vocab: Vocab
    table: torch.Tensor          # (V, D), rows 0 and 1 zero
    visible_from: np.ndarray     # (V,) int64/float event time each row becomes readable
    source: str

    @classmethod
    def load(cls, run: Path, latency: float) -> Representations:
        from mmrank.ctr.representations import item_vectors
        from mmrank.data.io import read_table

        ids, vecs, source = item_vectors(run)
        vocab = Vocab.of(ids)
        table = np.zeros((len(vocab), vecs.shape[1]), np.float32)
        table[vocab.lookup(ids)] = vecs
        table[:2] = 0.0
        t = read_table(Path(run) / "data" / "items.parquet", "items", columns=["item_id", "created_at"])
        iid = t.column("item_id").to_numpy().astype(np.int64)
        created = t.column("created_at").to_numpy().astype(np.float64)
        vis = np.full(len(vocab), np.inf)
        rows = vocab.lookup(iid)
        ok = rows >= 2
        vis[rows[ok]] = created[ok] + latency
        vis[:2] = np.inf
        return cls(vocab, torch.from_numpy(table), vis, source)

    def rows_as_of(self, ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` at event times ``ts`` (same shape): OOV (zero) before an item is visible."""
        rows = self.vocab.lookup(ids)
        return np.where(self.visible_from[rows] <= ts, rows, OOV).astype(np.int32)


def encode_batch(s: CtrSamples, item_rows: np.ndarray, user_rows: np.ndarray, hist_rows: np.ndarray,
                 n_categories: int, n_regions: int, reps: Representations | None) -> EncodedSamples:
    """A batch's index arrays (as :meth:`FeatureSpace.encode`, ID rows given), with representation rows
    as of each sample's time."""
    hist_ts = np.repeat(s.ts, s.hist_lengths())
    return EncodedSamples(
        raw=s, item=item_rows.astype(np.int32), user=user_rows.astype(np.int32),
        category=np.clip(s.category_id.astype(np.int64) + 1, 0, n_categories - 1).astype(np.int32),
        region=np.clip(s.region.astype(np.int64) + 1, 0, n_regions - 1).astype(np.int32),
        position=np.clip(s.position.astype(np.int64) + 1, 1, MAX_POSITION - 1).astype(np.int32),
        hist_item=hist_rows.astype(np.int32),
        hist_category=np.clip(s.hist_category_id.astype(np.int64) + 1, 0, n_categories - 1).astype(np.int32),
        item_v=None if reps is None else reps.rows_as_of(s.item_id, s.ts),
        hist_item_v=None if reps is None else reps.rows_as_of(s.hist_item_id, hist_ts))


# ---------------------------------------------------------------------------------------- one strategy

def _opt_arrays(opt, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's per-parameter state as tensors, and which entries were Python numbers."""
    tensors, ints = {}, {}
    for i, o in enumerate(opt.opts):
        for j, st in o.state_dict()["state"].items():
            for k, v in st.items():
                key = f"{prefix}.opt{i}.{j}.{k}"
                if isinstance(v, torch.Tensor):
                    tensors[key] = v.detach().cpu().clone().contiguous()
                else:
                    tensors[key] = torch.tensor(float(v))
                    ints[key] = type(v).__name__
    return tensors, ints


def _load_opt(opt, arrays: dict[str, torch.Tensor], kinds: dict, prefix: str) -> None:
    for i, o in enumerate(opt.opts):
        sd = o.state_dict()
        state: dict = {}
        head = f"{prefix}.opt{i}."
        for key, v in arrays.items():
            if key.startswith(head):
                j, k = key[len(head):].split(".", 1)
                kind = kinds.get(key)
                state.setdefault(int(j), {})[k] = (v if kind is None else
                                                   int(v.item()) if kind == "int" else float(v.item()))
        sd["state"] = state
        o.load_state_dict(sd)


class StrategyState:
    """One strategy's model, optimiser, ID tables and last published model."""

    def __init__(self, strategy: str, cfg: FollowConfig, sizes: tuple[int, int],
                 reps: Representations | None, where: dict | None = None) -> None:
        self.strategy = strategy
        # device, bf16, pin_memory (mmrank.ctr.trainer.placement): the model, its optimiser state and
        # each batch live on the device; checkpoints and bundles are written from host copies
        self.where = where or {"device": torch.device("cpu"), "bf16": True, "pin_memory": True}
        self.device = self.where["device"]
        self.cfg = cfg
        mcfg = CtrConfig.model_validate({**cfg.model.model_dump(), "strategy": strategy})
        self.mcfg = mcfg
        self.reps = reps if mcfg.uses_vectors else None
        if mcfg.uses_vectors and reps is None:
            raise ConfigError(f"strategy {strategy!r} needs item representations (R/embeddings)")
        self.n_categories, self.n_regions = sizes
        self.items = DynamicIdTable(cfg.item_capacity, cfg.admit_after, cfg.expire_after)
        self.users = DynamicIdTable(cfg.user_capacity, cfg.admit_after, cfg.expire_after)
        torch.manual_seed(cfg.seed)
        self.sizes = ModelSizes(n_items=self.items.n_rows, n_users=self.users.n_rows,
                                n_categories=self.n_categories, n_regions=self.n_regions,
                                vec_dim=0 if self.reps is None else int(self.reps.table.shape[1]))
        self.vectors = ItemVectors(self.reps.table) if self.reps is not None else None
        self.model = CtrModel(mcfg, self.sizes, self.vectors).to(self.device)
        self.tcfg = cfg.train.model_copy(update={"seed": cfg.seed})
        self.opt = make_optimizer(self.model, self.tcfg)
        self.published: tuple[CtrModel, DynamicIdTable, DynamicIdTable] | None = None
        self.version = 0
        self.assigned_total = 0

    # -- dynamic rows
    def _reset_rows(self, emb: torch.nn.Embedding, rows: np.ndarray) -> None:
        if not len(rows):
            return
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.assigned_total)
        idx = torch.from_numpy(rows).to(self.device)
        with torch.no_grad():   # drawn on the host (the same rows on any device), then moved
            emb.weight[idx] = (torch.randn(len(rows), emb.weight.shape[1], generator=g) * 0.01).to(self.device)
        for o in self.opt.opts:
            st = o.state.get(emb.weight)
            if st:
                for k in ("exp_avg", "exp_avg_sq"):
                    if k in st:
                        st[k][idx] = 0.0
        self.assigned_total += len(rows)

    def encode_train(self, s: CtrSamples) -> EncodedSamples:
        now = int(s.ts.max()) if len(s) else 0
        ids = self.model.ids
        for table, emb in ((self.items, ids.item_emb), (self.users, ids.user_emb)):
            freed = table.expire(now)
            if emb is not None and len(freed):
                self._reset_rows(emb, freed)
        it = self.items.observe(s.item_id, s.ts)
        self._reset_rows(ids.item_emb, it.assigned)
        us = self.users.observe(s.user_id, s.ts)
        if ids.user_emb is not None:
            self._reset_rows(ids.user_emb, us.assigned)
        enc = encode_batch(s, it.rows, us.rows, self.items.lookup(s.hist_item_id), self.n_categories,
                           self.n_regions, self.reps)
        return self._with_simtier(enc)

    def _with_simtier(self, enc: EncodedSamples) -> EncodedSamples:
        if self.mcfg.uses_simtier and self.mcfg.simtier_in == "pipeline":
            enc.extra["simtier"] = simtier_features(enc, self.reps.table, self.mcfg.n_tiers, self.mcfg.history_len)
        return enc

    def train_step(self, s: CtrSamples) -> float:
        enc = self.encode_train(s)
        batch = batch_to(make_batch(enc, np.arange(len(s)), self.mcfg.history_len), self.device,
                           self.where["pin_memory"])
        self.model.train()
        with autocast(self.device, self.where["bf16"]):
            out = self.model(batch)
            loss = self.model.loss(out, batch, self.tcfg.aux_weight)["total"]
        return optimizer_step(self.opt, loss)

    # -- publishing
    def publish(self) -> None:
        """Freeze the current model and ID tables as the published version (in memory)."""
        model = copy.deepcopy(self.model)
        model.eval()
        self.published = (model, self.items.copy(), self.users.copy())
        self.version += 1

    def snapshot(self) -> tuple[CtrModel, FeatureSpace]:
        """The published model as serving loads it: ID rows re-laid in sorted-id order (a plain Vocab)."""
        pub, items, users = self.published
        item_ids, item_rows = items.items()
        user_ids, user_rows = users.items()
        space = FeatureSpace(items=Vocab(item_ids), users=Vocab(user_ids), n_categories=self.n_categories,
                             n_regions=self.n_regions)
        sizes = ModelSizes(n_items=len(item_ids) + 2, n_users=len(user_ids) + 2,
                           n_categories=self.n_categories, n_regions=self.n_regions, vec_dim=self.sizes.vec_dim)
        state = {k: v.detach().cpu() for k, v in pub.state_dict().items()}   # bundles are host tensors
        head = np.r_[0, 1]
        state["ids.item_emb.weight"] = state["ids.item_emb.weight"][torch.from_numpy(np.r_[head, item_rows])]
        if "ids.user_emb.weight" in state:
            state["ids.user_emb.weight"] = state["ids.user_emb.weight"][torch.from_numpy(np.r_[head, user_rows])]
        vectors = None if self.reps is None else ItemVectors(self.reps.table)   # a host copy (bundles)
        model = CtrModel(self.mcfg, sizes, vectors)
        model.load_state_dict(state, strict=True)
        model.eval()
        return model, space

    @torch.no_grad()
    def score(self, s: CtrSamples) -> np.ndarray:
        """Click probabilities of ``s`` by the last published model (IDs it had no row for: unknown);
        representations as of each sample's time (serving reads the live table)."""
        model, items, users = self.published
        enc = encode_batch(s, items.lookup(s.item_id), users.lookup(s.user_id), items.lookup(s.hist_item_id),
                           self.n_categories, self.n_regions, self.reps)
        batch = batch_to(make_batch(self._with_simtier(enc), np.arange(len(s)), self.mcfg.history_len),
                           self.device, self.where["pin_memory"])
        with autocast(self.device, self.where["bf16"]):
            logit = model(batch)["logit"]
        return torch.sigmoid(logit.float()).double().cpu().numpy()

    # -- checkpoint state
    def arrays(self) -> tuple[dict[str, torch.Tensor], dict]:
        p = self.strategy
        out = {f"{p}.model.{k}": v.detach().cpu().clone().contiguous() for k, v in self.model.state_dict().items()}
        opt, kinds = _opt_arrays(self.opt, p)
        out.update(opt)
        for name, table in (("items", self.items), ("users", self.users)):
            out.update({k: torch.from_numpy(v) for k, v in table.to_arrays(f"{p}.{name}").items()})
        conf = {"version": self.version, "assigned_total": self.assigned_total, "opt_kinds": kinds,
                "items": self.items.config(), "users": self.users.config()}
        return out, conf

    def restore(self, arrays: dict[str, torch.Tensor], conf: dict) -> None:
        p = self.strategy
        self.model.load_state_dict({k[len(p) + 7:]: v for k, v in arrays.items()
                                    if k.startswith(f"{p}.model.")}, strict=True)
        np_arrays = {k: v.numpy() for k, v in arrays.items()}
        self.items = DynamicIdTable.from_arrays(conf["items"], np_arrays, f"{p}.items")
        self.users = DynamicIdTable.from_arrays(conf["users"], np_arrays, f"{p}.users")
        _load_opt(self.opt, arrays, conf["opt_kinds"], p)
        self.version, self.assigned_total = int(conf["version"]), int(conf["assigned_total"])


# ------------------------------------------------------------------------------------------- the trainer

@dataclass
class FollowResult:
    """What a pass did: per-event scores by the last published model (Monolith's protocol)."""

    event_ts: np.ndarray
    probs: dict[str, np.ndarray]        # strategy -> (n_events,) float64, NaN where not scored
    trained: np.ndarray                 # (n_events,) uint8: times each event was trained
    publishes: int
    samples_per_s: float
    seconds: float
    bundles: dict[str, list[str]] = field(default_factory=dict)
    event_ids: np.ndarray | None = None  # (n_events,) the source's event id of each slot


class Follower:
    """One pass of every strategy over the stream; see the module docstring."""

    def __init__(self, run: Path, cfg: FollowConfig, *, write: bool = True,
                 source: ReplaySamples | RedisSamples | None = None,
                 reps: Representations | None | str = "load", hardware: HardwareConfig | None = None) -> None:
        from mmrank.lineage import CTR_TABLES, data_inputs

        where = placement(hardware)             # resolved first: a device this machine lacks fails at once
        self.device = where["device"]
        self.run, self.cfg, self.write = Path(run), cfg, write
        for s in cfg.strategies:
            if s not in PAPER_STRATEGIES:  # the semantic-ID strategies are not followed (yet)
                raise ConfigError(f"--strategies: strategy {s!r} cannot be followed; expected "
                                  f"{', '.join(PAPER_STRATEGIES)}")
        self.inputs = data_inputs(self.run, *CTR_TABLES)
        self.source = source or open_samples(self.run, cfg.source, cfg)
        sizes = self.source.vocab_sizes()  # the schema's small vocabularies
        needs = any(s != "id" for s in cfg.strategies)
        if reps == "load":
            reps = Representations.load(self.run, cfg.ingest_latency) if needs else None
        self.reps = reps
        self.states = {s: StrategyState(s, cfg, sizes, reps, where) for s in cfg.strategies}
        n = self.source.n_events or 0
        self.probs = {s: np.full(n, np.nan) for s in cfg.strategies}
        self.trained = np.zeros(n, np.uint8)
        self.event_ids = np.arange(n, dtype=np.int64)   # slot -> the source's event id
        self.event_ts = (np.asarray(self.source.all.ts, np.int64).copy() if n else np.zeros(0, np.int64))
        self.cursor: int | dict = 0
        self.next_publish: int | None = None
        self.publishes = 0
        self.dir = self.run / "ctr" / "follow"

    # -- checkpoints
    @property
    def ckpt_json(self) -> Path:
        return self.dir / "checkpoint.json"

    def save_checkpoint(self) -> None:
        from mmrank.durable import commit_file, write_text

        self.dir.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, torch.Tensor] = {"trained": torch.from_numpy(self.trained.copy()),
                                           "event_ids": torch.from_numpy(self.event_ids.copy()),
                                           "event_ts": torch.from_numpy(self.event_ts.copy())}
        if hasattr(self.source, "state"):  # the joiner's snapshot (plain data only), beside the cursor
            arrays["source.state"] = torch.from_numpy(np.frombuffer(self.source.state(), np.uint8).copy())
        confs = {}
        for s, st in self.states.items():
            a, c = st.arrays()
            arrays.update(a)
            confs[s] = c
            arrays[f"{s}.probs"] = torch.from_numpy(self.probs[s].copy())
            if st.published is not None:
                model, items, users = st.published
                arrays.update({f"{s}.pub.model.{k}": v.detach().clone().contiguous()
                               for k, v in model.state_dict().items()})
                for name, table in (("items", items), ("users", users)):
                    arrays.update({k: torch.from_numpy(v) for k, v in table.to_arrays(f"{s}.pub.{name}").items()})
                confs[s]["published"] = {"items": items.config(), "users": users.config()}
        serial = int(time.time() * 1e6)
        name = f"checkpoint-{serial}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        save_torch(arrays, str(tmp))
        commit_file(tmp, self.dir / name)
        old = json.loads(self.ckpt_json.read_text()).get("file") if self.ckpt_json.exists() else None
        state = {"file": name, "cursor": self.cursor, "next_publish": self.next_publish,
                 "publishes": self.publishes, "strategies": confs, "inputs": self.inputs,
                 "config": self.cfg.model_dump(mode="json")}
        write_text(self.ckpt_json, json.dumps(state, indent=1))
        if old and old != name:
            (self.dir / old).unlink(missing_ok=True)
        if hasattr(self.source, "commit"):  # acknowledge only what the checkpoint holds
            self.source.commit(self.cursor)

    def load_checkpoint(self) -> bool:
        """Resume from ``R/ctr/follow/checkpoint.json`` if there is one; True when resumed."""
        if not self.ckpt_json.exists():
            return False
        state = json.loads(self.ckpt_json.read_text())
        if state.get("inputs") != self.inputs:
            raise MMRankError(f"{self.ckpt_json}: the checkpoint was made from other data than the run's "
                              "now; remove R/ctr/follow/ to start over")
        if sorted(state["strategies"]) != sorted(self.states):
            raise ConfigError(f"{self.ckpt_json}: checkpoint of strategies {sorted(state['strategies'])}, "
                              f"asked for {sorted(self.states)}; remove R/ctr/follow/ to start over")
        arrays = load_torch(str(self.dir / state["file"]))
        if state.get("config", {}).get("source", "replay") != self.cfg.source:
            raise ConfigError(f"{self.ckpt_json}: checkpoint of source {state['config'].get('source')!r}, "
                              f"asked for {self.cfg.source!r}; remove R/ctr/follow/ to start over")
        self.trained = arrays["trained"].numpy().copy()
        if "event_ids" in arrays:
            self.event_ids = arrays["event_ids"].numpy().copy()
            self.event_ts = arrays["event_ts"].numpy().copy()
        if "source.state" in arrays and hasattr(self.source, "restore"):
            self.source.restore(arrays["source.state"].numpy().tobytes())
        for s, st in self.states.items():
            st.restore(arrays, state["strategies"][s])
            self.probs[s] = arrays[f"{s}.probs"].numpy().copy()
            pre = f"{s}.pub.model."
            pub_state = {k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}
            if pub_state:
                conf = state["strategies"][s]["published"]
                np_arrays = {k: v.numpy() for k, v in arrays.items() if k.startswith(f"{s}.pub.")}
                model = copy.deepcopy(st.model)
                model.load_state_dict(pub_state, strict=True)
                model.eval()
                st.published = (model, DynamicIdTable.from_arrays(conf["items"], np_arrays, f"{s}.pub.items"),
                                DynamicIdTable.from_arrays(conf["users"], np_arrays, f"{s}.pub.users"))
        cur = state["cursor"]
        self.cursor, self.next_publish = (cur if isinstance(cur, dict) else int(cur)), state["next_publish"]
        self.publishes = int(state["publishes"])
        return True

    # -- publishing
    def _publish(self, at: int) -> None:
        for st in self.states.values():
            st.publish()
            if self.write:
                self._write_bundle(st, at)
        self.publishes += 1

    def _write_bundle(self, st: StrategyState, at: int) -> None:
        from mmrank.ctr.artifacts import save_model
        from mmrank.durable import fsync_dir

        base = self.dir / "bundles" / st.strategy
        base.mkdir(parents=True, exist_ok=True)
        name = f"v{st.version:06d}"
        tmp = base / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model, space = st.snapshot()
        save_model(model, space, tmp, train_cfg=st.tcfg, inputs=self.inputs,
                   extra={"representations": None if st.reps is None else st.reps.source,
                          "follow": {"version": st.version, "event_time": at, "cursor": self.cursor,
                                     "ingest_latency": self.cfg.ingest_latency}})
        for f in tmp.iterdir():
            fd = os.open(f, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        final = base / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(base)
        link = self.run / "ctr" / f"follow-{st.strategy}"
        tmp_link = link.with_name(f".{link.name}.tmp")
        tmp_link.unlink(missing_ok=True)
        os.symlink(os.path.relpath(final, link.parent), tmp_link)
        os.replace(tmp_link, link)                 # the swap: readers see the old version or the new one
        fsync_dir(link.parent)
        versions = sorted(p for p in base.glob("v*") if p.is_dir())
        for old in versions[:-self.cfg.keep_bundles]:
            shutil.rmtree(old, ignore_errors=True)

    # -- the pass
    def _grow(self, n: int) -> None:
        """Room for ``n`` slots (a source of unknown length)."""
        if n <= len(self.trained):
            return
        m = max(n, 2 * len(self.trained), 1024)
        extra = m - len(self.trained)
        self.trained = np.concatenate([self.trained, np.zeros(extra, np.uint8)])
        self.event_ids = np.concatenate([self.event_ids, np.full(extra, -1, np.int64)])
        self.event_ts = np.concatenate([self.event_ts, np.zeros(extra, np.int64)])
        for s in self.probs:
            self.probs[s] = np.concatenate([self.probs[s], np.full(extra, np.nan)])

    def _step(self, b: SampleBatch) -> None:
        """Score ``b`` with each published model, then train on it (a batch never spans a publish)."""
        if b.ids is not None:
            self._grow(int(b.event_id.max()) + 1)
            self.event_ids[b.event_id] = b.ids
            self.event_ts[b.event_id] = b.samples.ts
        for s, st in self.states.items():
            self.probs[s][b.event_id] = st.score(b.samples)
            st.train_step(b.samples)
        self.trained[b.event_id] += 1

    def run_pass(self, *, progress: bool = True, resume: bool = True,
                 stop_after: int | None = None, on_batch: Callable[[int], None] | None = None) -> FollowResult:
        """One pass from the checkpoint's cursor (or the start) to the end of the stream.

        ``stop_after``: stop after that many batches without a final checkpoint (tests: a crash).
        """
        from rich.progress import Progress, TextColumn

        resumed = self.load_checkpoint() if (resume and self.write) else False
        publish_every = self.cfg.publish_every
        t0, n_done, batches = time.perf_counter(), 0, 0
        total = self.source.n_events
        with Progress(TextColumn("{task.description}"), disable=not progress, transient=True) as bar:
            task = bar.add_task("follow", total=total)
            since = 0
            for b in self.source.batches(self.cfg.batch_size, self.cursor):
                if not len(b.samples):           # a read that completed no sample: only the cursor moves
                    self.cursor = b.cursor
                    since += 1
                    if self.write and b.last and since >= self.cfg.checkpoint_every:
                        self.save_checkpoint()
                        since = 0
                    continue
                if self.next_publish is None:  # the first model (untrained) scores the first window
                    self.next_publish = (int(b.samples.ts[0]) // publish_every + 1) * publish_every
                    if not resumed:
                        self._publish(int(b.samples.ts[0]))
                ts = b.samples.ts
                start = 0
                while start < len(ts):
                    cut = int(np.searchsorted(ts, self.next_publish, side="left"))
                    stop = max(cut, start)
                    if stop > start:
                        part = np.arange(start, stop)
                        self._step(SampleBatch(take(b.samples, part), b.event_id[part], b.cursor,
                                               None if b.ids is None else b.ids[part]))
                        n_done += len(part)
                        start = stop
                    if start < len(ts):               # crossing a publish boundary
                        self._publish(self.next_publish)
                        self.next_publish = (int(ts[start]) // publish_every + 1) * publish_every
                self.cursor = b.cursor
                batches += 1
                since += 1
                secs = time.perf_counter() - t0
                bar.update(task, description=(
                    f"follow {','.join(self.states)}  event time {int(ts[-1]) / DAY:7.2f} d  "
                    f"{self._n_slots()}/{total or '?'} samples  {n_done / max(secs, 1e-9):,.0f} samples/s  "
                    f"published {self.publishes}"))
                if on_batch is not None:
                    on_batch(batches)
                if stop_after is not None and batches >= stop_after:
                    secs = time.perf_counter() - t0
                    return self._result(n_done, secs)
                if self.write and b.last and since >= self.cfg.checkpoint_every:
                    self.save_checkpoint()
                    since = 0
        secs = time.perf_counter() - t0
        if self.write:
            done = self.trained[:self._n_slots()] > 0
            if done.any():
                self._publish(int(self.event_ts[:self._n_slots()][done].max()))
            self.save_checkpoint()
        return self._result(n_done, secs)

    def _n_slots(self) -> int:
        """Slots handed out so far (replay: every sample)."""
        if isinstance(self.cursor, dict):
            return int(self.cursor["samples"])
        return len(self.trained) if self.source.n_events else int(self.cursor)

    def _result(self, n_done: int, secs: float) -> FollowResult:
        n = self._n_slots()
        return FollowResult(event_ts=self.event_ts[:n].copy(), probs={s: p[:n] for s, p in self.probs.items()},
                            trained=self.trained[:n], publishes=self.publishes,
                            samples_per_s=n_done / max(secs, 1e-9), seconds=secs, event_ids=self.event_ids[:n])


def follow(run: Path, cfg: FollowConfig | None = None, *, progress: bool = True,
           hardware: HardwareConfig | None = None) -> FollowResult:
    """`mmrank ctr follow`: one pass (resuming from a checkpoint), bundles published, final checkpoint;
    on ``hardware``'s device (None: auto)."""
    return Follower(Path(run), cfg or FollowConfig(), hardware=hardware).run_pass(progress=progress)


# ------------------------------------------------------------------------------------- the freshness table

def _metrics(y: np.ndarray, p: np.ndarray, users: np.ndarray) -> dict:
    from mmrank.eval.metrics import UndefinedMetricError, auc, gauc, logloss

    out = {"n": int(len(y))}
    for name, fn in (("auc", lambda: auc(y, p)), ("gauc", lambda: gauc(y, p, users)),
                     ("logloss", lambda: logloss(y, p))):
        try:
            out[name] = float(fn())
        except UndefinedMetricError:
            out[name] = float("nan")
    return out


def _delay_name(d: float | None) -> str:
    if d is None:
        return "never (ID only)"
    return {0: "0 s", 3600: "1 h", DAY: "1 day"}.get(d, f"{d:g} s")


def _interval_name(p: int) -> str:
    return {300: "5 min", 3600: "1 h", DAY: "1 day"}.get(p, f"{p} s")


def freshness_table(run: Path, *, seeds: int = 3, strategy: str = "simtier",
                    delays: tuple[float | None, ...] = (0, 3600, DAY, None),
                    publish: tuple[int, ...] = (300, 3600, DAY), base_publish: int = 3600,
                    batch_size: int = 256, model: CtrConfig | None = None, train: TrainConfig | None = None,
                    progress: bool = True, hardware: HardwareConfig | None = None) -> dict:
    """Monolith's protocol on the run's samples: every pass scores each window with the last published
    model, then trains on it; figures on the test split (the rows after the first days), overall and on
    items in their first day (``ts - created_at < 1 day``). Variants: (a) ``strategy`` with the
    representation readable ``delays`` after arrival (None: never, the ID model), publishing every
    ``base_publish``; (b) ``strategy`` at delay 0 publishing every ``publish``; and the batch model
    (:func:`mmrank.ctr.rundata.fit_strategy` once on the training split, then frozen). Writes
    ``R/ctr/follow/freshness.{json,md}``. Market behaviour is simulated."""
    from mmrank.ctr.evaluate import json_ready
    from mmrank.ctr.rundata import fit_strategy, load_run
    from mmrank.ctr.trainer import predict
    from mmrank.data.io import read_table
    from mmrank.durable import write_text

    run = Path(run)
    model = model or CtrConfig()
    train = train or TrainConfig()
    src = ReplaySamples(run)
    s = src.all
    base = Representations.load(run, 0.0)
    t = read_table(run / "data" / "items.parquet", "items", columns=["item_id", "created_at"])
    iid = t.column("item_id").to_numpy().astype(np.int64)
    created = t.column("created_at").to_numpy().astype(np.int64)
    order = np.argsort(iid)
    pos = np.clip(np.searchsorted(iid[order], s.item_id), 0, len(iid) - 1)
    item_created = np.where(iid[order][pos] == s.item_id, created[order][pos], np.iinfo(np.int64).min // 2)
    test = ~s.is_train
    first_day = test & (s.ts - item_created < DAY)
    stream = s.ts >= s.ts.min() + DAY                       # every window after the first day
    stream_first = stream & (s.ts - item_created < DAY)
    parts = {"all": test, "first_day": first_day, "stream": stream, "stream_first_day": stream_first}
    y = s.label.astype(np.int64)
    variants: list[tuple[str, str, float | None, int]] = []
    for d in delays:
        variants.append(("representation delay", _delay_name(d), d, base_publish))
    for p in publish:
        if p != base_publish:
            variants.append(("publish interval", _interval_name(p), 0.0, p))
    rows: dict[tuple[str, str], list[dict]] = {}
    for seed in range(seeds):
        for group, label, d, p in variants:
            strat = strategy if d is not None else "id"
            reps = None
            if d is not None:
                reps = Representations(base.vocab, base.table, base.visible_from + d, base.source)
            cfg = FollowConfig(strategies=[strat], batch_size=batch_size, publish_every=p, seed=seed,
                               ingest_latency=d or 0.0, model=model, train=train)
            f = Follower(run, cfg, write=False, source=src, reps=reps, hardware=hardware)
            r = f.run_pass(progress=progress, resume=False)
            prob = r.probs[strat]
            m = {k: _metrics(y[v], prob[v], s.user_id[v]) for k, v in parts.items()}
            m.update(samples_per_s=r.samples_per_s, publishes=r.publishes)
            rows.setdefault((group, label), []).append(m)
        data = load_run(run)
        mdl, _ = fit_strategy(data, strategy, seed=seed, make_epochs=0, cfg=model,
                              train_cfg=train.model_copy(update={"batch_size": batch_size}), progress=False,
                              hardware=hardware)
        rows_test = data.enc.test_rows()
        prob = np.full(len(s), np.nan)
        prob[rows_test] = predict(mdl, data.enc, rows_test, **placement(hardware))
        rows.setdefault(("batch", f"{strategy}, trained once on the training split"), []).append(
            {k: _metrics(y[v], prob[v], s.user_id[v]) if k in ("all", "first_day") else
             {"n": int(v.sum()), "auc": float("nan"), "gauc": float("nan"), "logloss": float("nan")}
             for k, v in parts.items()})

    def agg(ms: list[dict], part: str, k: str) -> dict:
        v = np.array([m[part][k] for m in ms], float)
        return {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
                "std": float(np.nanstd(v)) if np.isfinite(v).any() else float("nan"), "runs": v.tolist()}

    table = []
    for (group, label), ms in rows.items():
        table.append({"group": group, "variant": label,
                      **{part: {"n": ms[0][part]["n"], **{k: agg(ms, part, k) for k in ("auc", "gauc", "logloss")}}
                         for part in parts}})
    out = {"run": str(run), "strategy": strategy, "seeds": seeds, "batch_size": batch_size,
           "base_publish": base_publish, "protocol": "each window scored by the last published model, then "
           "trained on (Monolith); figures on the test split; market behaviour simulated",
           "rows": table}
    d = run / "ctr" / "follow"
    d.mkdir(parents=True, exist_ok=True)
    write_text(d / "freshness.json", json.dumps(json_ready(out), indent=1))
    lines = [f"# Freshness: near-line `{strategy}` (simulated market behaviour)", "",
             f"Monolith's protocol on `{run.name}`: each window is scored by the last published model, then "
             f"trained on; one pass, batch {batch_size} (cut at each publish), ID admission after "
             f"{FollowConfig().admit_after} sightings; {seeds} seeds (mean ± std over seeds). Representation delay rows "
             f"publish every {_interval_name(base_publish)}; publish interval rows read representations at "
             "arrival. GAUC by user (n/a: no user with both labels). The batch model: the same strategy trained "
             "once (one epoch, same batch size) on the training split, then frozen.", "",
             ]

    def cell(x: dict) -> str:
        return "n/a" if not np.isfinite(x["mean"]) else f"{x['mean']:.4f} ± {x['std']:.4f}"

    for title, pair in ((f"Test split ({int(test.sum())} impressions, {int(first_day.sum())} of items in "
                         "their first day); the batch model is comparable here", ("all", "first_day")),
                        (f"Every window after the first day ({int(stream.sum())} impressions, "
                         f"{int(stream_first.sum())} of items in their first day); near-line variants only",
                         ("stream", "stream_first_day"))):
        lines += [f"**{title}**", "",
                  "| group | variant | AUC | GAUC | LogLoss | first-day AUC | first-day GAUC | first-day LogLoss |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in table:
            lines.append(f"| {r['group']} | {r['variant']} | " + " | ".join(
                cell(r[part][k]) for part in pair for k in ("auc", "gauc", "logloss")) + " |")
        lines.append("")
    write_text(d / "freshness.md", "\n".join(lines) + "\n")
    return out
