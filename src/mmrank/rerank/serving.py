"""Re-ranking one candidate list at a time, outside the training data: the seam ``mmrank serve`` loads
(``/v1/rerank``, and the ``reranked`` side of ``/v1/rank``) and ``mmrank rerank apply`` runs offline.

* :class:`CandidateList`: one request: its context (user id or an explicit behaviour history, text query
  or a query photo's id, region, timestamp) and its candidates in the production order, each with the
  features the models read (price, sales, production score, category) where the caller has them.
* :class:`ListReranker`: a bundle saved by ``mmrank rerank train`` (``R/rerank/<model>/``) with the
  run's catalog and logs; :meth:`ListReranker.prepare` checks a list and fills in what it leaves out,
  :meth:`ListReranker.score` scores several prepared lists in one forward.
* :func:`load_reranker` (by model name), :func:`load` (the serving bundle's seam,
  :func:`mmrank.serve.bundle.load_reranker`).

The features are built exactly as offline: the prepared lists become a
:class:`~mmrank.rerank.data.Lists` and go through :func:`mmrank.rerank.data.make_batch`; representations
and query vectors come from :mod:`mmrank.rerank.features` (:func:`~mmrank.rerank.features.item_tables`,
:func:`~mmrank.rerank.features.encode_queries`).

What a list leaves out, and point-in-time correctness (nothing at or after the list's ``ts`` is read):

* ``history`` absent: the user's last ``L`` clicks strictly before ``ts`` in ``R/data/events.parquet``
  (any surface; the rule ``R/data/lists.parquet`` is built with); none for an unknown user;
* a candidate's ``sales`` absent: its purchases strictly before ``ts`` in the events;
* ``price`` / ``category_id`` absent: the catalog's (``R/data/items.parquet``); an item the catalog does
  not know must carry both;
* ``prod_score`` absent (on every candidate): minus the position in the list, as the logs without a
  candidate table hold it;
* ``ts`` absent: after every logged event (the whole history, every sale).

Example::

    >>> rr = load_reranker(Path("runs/demo"), "armmt")                          # doctest: +SKIP
    >>> lst = CandidateList(user_id=7, query="red dress", region=0, ts=86_400,
    ...                     candidates=[{"item_id": 1}, {"item_id": 2}])       # doctest: +SKIP
    >>> rr.rerank_lists([lst])[0]["order"]                                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmrank.data.schemas import HISTORY_LEN
from mmrank.device import HardwareConfig, autocast, batch_to, resolve_device
from mmrank.errors import ConfigError, DataError, MMRankError
from mmrank.rerank.data import ListSpace, Lists, make_batch
from mmrank.rerank.models import MODELS, ListModel, ListModelConfig

INT64_MAX = 2**63 - 1
MAX_CANDIDATES = 1000
MAX_HISTORY = 1000
# The model served when none is named: the first of these trained under R/rerank/.
PREFERENCE = ("armmt", "seqmd", *[m for m in MODELS if m not in ("armmt", "seqmd")])
NO_TS = INT64_MAX  # a list without ts: after every logged event


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(_In):
    """One candidate; every feature but the id may be left out (see the module doc)."""

    item_id: int = Field(..., ge=0, le=INT64_MAX)
    price: float | None = Field(None, ge=0, description="default: the catalog's price")
    sales: int | None = Field(None, ge=0, description="purchases strictly before ts (default: from the logs)")
    prod_score: float | None = Field(None, description="the production ranker's score (give it on every "
                                     "candidate or on none; none: minus the position)")
    category_id: int | None = Field(None, ge=0, le=2**31 - 1, description="default: the catalog's category")


class CandidateList(_In):
    """One request to re-rank: its context and its candidates in the production order."""

    request_id: int | str | None = Field(None, description="echoed back")
    user_id: int | None = Field(None, ge=0, le=INT64_MAX)
    history: list[int] | None = Field(None, max_length=MAX_HISTORY, description="the user's clicked item ids, "
                                      "most recent last (default: the logs' clicks strictly before ts)")
    query: str | None = Field(None, max_length=1000, description="the text query")
    query_image: str | None = Field(None, max_length=200, description="the id of a query photo in "
                                    "R/data/query_images.parquet (instead of a text query)")
    region: int = Field(..., ge=0, le=32767)
    ts: int | None = Field(None, ge=0, le=INT64_MAX, description="the request's time (default: after every "
                           "logged event)")
    candidates: list[Candidate] = Field(..., min_length=1, max_length=MAX_CANDIDATES)

    @field_validator("candidates")
    @classmethod
    def _unique(cls, v: list[Candidate]) -> list[Candidate]:
        seen: set[int] = set()
        for i, c in enumerate(v):
            if c.item_id in seen:
                raise ValueError(f"candidate {c.item_id} appears twice (first repeat at index {i})")
            seen.add(c.item_id)
        given = [c.prod_score is not None for c in v]
        if any(given) and not all(given):
            raise ValueError(f"prod_score is given on some candidates but not on candidate "
                             f"{given.index(False)}: give it on every candidate or on none")
        return v

    @model_validator(mode="after")
    def _one_query(self) -> "CandidateList":
        if self.query is not None and self.query_image is not None:
            raise ValueError("give at most one of 'query' and 'query_image'")
        return self

    def query_key(self) -> str:
        """The query as :class:`~mmrank.rerank.data.Lists` keys it."""
        if self.query:
            return f"text:{self.query}"
        return f"image:{self.query_image}" if self.query_image else ""


@dataclass
class Prepared:
    """A checked list with every feature filled in (numpy), ready for :meth:`ListReranker.score`."""

    request_id: Any
    user_id: int
    region: int
    ts: int
    query: str
    candidates: np.ndarray   # (C,) item ids
    price: np.ndarray
    sales: np.ndarray
    prod_score: np.ndarray
    category_id: np.ndarray
    hist_item_id: np.ndarray
    hist_category_id: np.ndarray


class Catalog:
    """Price and category id of every catalog item (category id: the rank of its category among the
    catalog's sorted distinct categories, as every table of :mod:`mmrank.data.samples` numbers them)."""

    def __init__(self, run: Path) -> None:
        import pyarrow.parquet as pq

        path = run / "data" / "items.parquet"
        if not path.exists():
            raise DataError("no such file (generate a market or import a catalog first)", file=str(path))
        t = pq.read_table(path, columns=["item_id", "category", "price"])
        ids = t.column("item_id").to_numpy()
        cats = np.asarray(t.column("category").to_pylist(), dtype=object).astype(str)
        _, cat_ids = np.unique(cats, return_inverse=True)
        o = np.argsort(ids, kind="stable")
        self.ids, self.cat = ids[o].astype(np.int64), cat_ids[o].astype(np.int64)
        self.price = t.column("price").to_numpy(zero_copy_only=False)[o].astype(np.float64)

    def rows(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(row, found)`` of each id."""
        item_ids = np.asarray(item_ids, np.int64)
        if not len(self.ids):
            return np.zeros(len(item_ids), np.int64), np.zeros(len(item_ids), bool)
        pos = np.minimum(np.searchsorted(self.ids, item_ids), len(self.ids) - 1)
        return pos, self.ids[pos] == item_ids


class EventLog:
    """The logs' clicks by (user, ts) and purchases by (item, ts), for point-in-time histories and sales."""

    def __init__(self, run: Path) -> None:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path = run / "data" / "events.parquet"
        self.c_user = self.c_ts = self.c_item = self.b_item = self.b_ts = np.zeros(0, np.int64)
        if not path.exists():
            return
        t = pq.read_table(path, columns=["ts", "user_id", "item_id", "event"])
        click = t.filter(pc.equal(t.column("event"), "click"))
        u, ts, i = (click.column(c).to_numpy().astype(np.int64) for c in ("user_id", "ts", "item_id"))
        o = np.lexsort((ts, u))   # stable: equal (user, ts) keep the log's order
        self.c_user, self.c_ts, self.c_item = u[o], ts[o], i[o]
        buy = t.filter(pc.equal(t.column("event"), "purchase"))
        bi, bt = (buy.column(c).to_numpy().astype(np.int64) for c in ("item_id", "ts"))
        o = np.lexsort((bt, bi))
        self.b_item, self.b_ts = bi[o], bt[o]

    def history(self, user_id: int, ts: int, n: int) -> np.ndarray:
        a = np.searchsorted(self.c_user, user_id, side="left")
        b = np.searchsorted(self.c_user, user_id, side="right")
        end = a + int(np.searchsorted(self.c_ts[a:b], ts, side="left"))   # strictly before ts
        return self.c_item[max(a, end - n):end]

    def sales(self, item_ids: np.ndarray, ts: int) -> np.ndarray:
        a = np.searchsorted(self.b_item, item_ids, side="left")
        b = np.searchsorted(self.b_item, item_ids, side="right")
        return np.array([int(np.searchsorted(self.b_ts[x:y], ts, side="left")) for x, y in zip(a, b)], np.int64)


@dataclass
class RerankResult:
    """What :meth:`ListReranker.rerank` returns (the serving bundle's ``RerankOutput`` shape): ``order``
    indices into the input candidates, best first; ``scores`` in input order."""

    order: np.ndarray
    scores: np.ndarray
    modality_weights: list[dict[str, float]] | None = None


class ListReranker:
    """A trained re-ranker with what it needs to score lists that are not in the run's logs.

    ``name`` (the model), ``version`` (a hash of its weights, vocabularies and config) and
    ``encoder_version`` (the encoder of its representations; the bundle's for a model without any)
    identify it. ``hardware``: where it scores (None: auto); the model moves there, each forward's
    batch follows, under bf16 autocast on CUDA when ``hardware.bf16``.
    """

    def __init__(self, run: Path, name: str, model: ListModel, space: ListSpace, encoder: Any,
                 encoder_version: str | None, version: str, history_len: int = HISTORY_LEN,
                 hardware: HardwareConfig | None = None) -> None:
        self.hardware = hardware or HardwareConfig()
        self.device = resolve_device(self.hardware.device)
        self.run, self.name, self.model, self.space = run, name, model.to(self.device).eval(), space
        self.encoder, self.encoder_version, self.version = encoder, encoder_version, version
        self.history_len = history_len
        self.catalog = Catalog(run)
        self.log = EventLog(run)
        self._queries: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()   # the encoder and the query cache

    @property
    def uses_query(self) -> bool:
        return self.model.mm

    # -- one list: checks and features -------------------------------------------------------------
    def prepare(self, lst: CandidateList | dict, where: str = "") -> Prepared:
        """Check ``lst`` and fill in what it leaves out (module doc). :class:`DataError` names the field
        at fault (``column``), prefixed with ``where`` (e.g. ``line 3: ``)."""
        if not isinstance(lst, CandidateList):
            lst = CandidateList.model_validate(lst)
        n_regions = self.space.n_regions
        if lst.region >= max(n_regions, 1):
            raise DataError(f"{where}region {lst.region} is not one the model was trained with "
                            f"(0..{n_regions - 1})", column="region")
        ts = NO_TS if lst.ts is None else int(lst.ts)
        ids = np.array([c.item_id for c in lst.candidates], np.int64)
        row, found = self.catalog.rows(ids)
        price = np.empty(len(ids), np.float64)
        cat = np.empty(len(ids), np.int64)
        for k, c in enumerate(lst.candidates):
            for f, out, table in (("price", price, self.catalog.price), ("category_id", cat, self.catalog.cat)):
                v = getattr(c, f)
                if v is None and not found[k]:
                    raise DataError(f"{where}item {c.item_id} is not in the catalog: give its {f}",
                                    column=f"candidates.{k}.{f}")
                out[k] = v if v is not None else table[row[k]]
        if int(cat.max()) + 1 >= self.space.n_categories:
            k = int(np.argmax(cat + 1 >= self.space.n_categories))
            raise DataError(f"{where}category_id {int(cat[k])} is not one the model was trained with "
                            f"(0..{self.space.n_categories - 2})", column=f"candidates.{k}.category_id")
        sales = np.array([c.sales if c.sales is not None else -1 for c in lst.candidates], np.int64)
        if (sales < 0).any():
            miss = sales < 0
            sales[miss] = self.log.sales(ids[miss], ts)
        if lst.candidates[0].prod_score is not None:
            prod = np.array([c.prod_score for c in lst.candidates], np.float32)
        else:
            prod = -np.arange(len(ids), dtype=np.float32)
        if lst.history is not None:
            hist = np.asarray(lst.history[-self.history_len:], np.int64)
        elif lst.user_id is not None:
            hist = self.log.history(int(lst.user_id), ts, self.history_len)
        else:
            hist = np.zeros(0, np.int64)
        hrow, hfound = self.catalog.rows(hist)
        hcat = np.where(hfound, self.catalog.cat[hrow] if len(hist) else 0, -1)
        keep = hcat >= 0   # a clicked item the catalog does not know has no category: left out
        if self.uses_query and lst.query_image:
            self._query_vectors([lst.query_key()])   # an unknown photo id fails here, naming the field
        return Prepared(lst.request_id, -1 if lst.user_id is None else int(lst.user_id), int(lst.region), ts,
                        lst.query_key(), ids, price, sales, prod, cat, hist[keep], hcat[keep])

    def _query_vectors(self, keys: list[str]) -> np.ndarray:
        from mmrank.rerank.features import encode_queries

        with self._lock:
            todo = sorted({k for k in keys if k and k not in self._queries})
            if todo:
                try:
                    vecs = encode_queries(self.run, self.encoder, todo)
                except DataError as err:
                    raise DataError(err.detail, column="query_image") from None
                if len(self._queries) > 50_000:
                    self._queries.clear()
                self._queries.update(zip(todo, vecs))
            dim = int(self.model.query_proj.in_features)
            return np.stack([self._queries[k] if k else np.zeros(dim, np.float32) for k in keys])

    # -- many lists: one forward -------------------------------------------------------------------------
    def to_lists(self, prepared: list[Prepared]) -> Lists:
        """The prepared lists as :class:`~mmrank.rerank.data.Lists` (the offline layout; no labels)."""
        n = np.array([len(p.candidates) for p in prepared], np.int64)
        h = np.array([len(p.hist_item_id) for p in prepared], np.int64)
        total = int(n.sum())
        zeros8 = np.zeros(total, np.int8)
        cat = lambda f, dt: np.concatenate([getattr(p, f) for p in prepared]).astype(dt)  # noqa: E731
        return Lists(
            request_id=np.arange(len(prepared), dtype=np.int64), ts=np.array([p.ts for p in prepared], np.int64),
            user_id=np.array([p.user_id for p in prepared], np.int64),
            region=np.array([p.region for p in prepared], np.int64), query=[p.query for p in prepared],
            is_train=np.zeros(len(prepared), bool), offsets=np.r_[0, np.cumsum(n)].astype(np.int64),
            item_id=cat("candidates", np.int64), position=np.full(total, -1, np.int64),
            prod_score=cat("prod_score", np.float32), price=cat("price", np.float64),
            sales=cat("sales", np.int64), category_id=cat("category_id", np.int64),
            click=zeros8, cart=zeros8, purchase=zeros8,
            hist_offsets=np.r_[0, np.cumsum(h)].astype(np.int64),
            hist_item_id=cat("hist_item_id", np.int64), hist_category_id=cat("hist_category_id", np.int64),
            source="request")

    @torch.no_grad()
    def score(self, prepared: list[Prepared]) -> list[dict]:
        """One forward over every list: per list ``{"request_id", "model", "version", "items": [{"item_id",
        "rank", "score"}]}`` best first; ``score`` is the ranking head's logit (ties keep the list's order)."""
        if not prepared:
            return []
        lists = self.to_lists(prepared)
        rows = np.arange(len(prepared), dtype=np.int64)
        batch = make_batch(lists, self.space, rows, "all", history_len=self.history_len)
        if self.uses_query:
            batch["query_vec"] = torch.from_numpy(self._query_vectors([p.query for p in prepared]))
        batch = batch_to(batch, self.device, self.hardware.pin_memory)
        with autocast(self.device, self.hardware.bf16):
            out = self.model(batch)
        s = self.model.rank_scores(out).double().cpu().numpy()
        res = []
        for k, p in enumerate(prepared):
            sc = s[k, :len(p.candidates)]
            order = np.argsort(-sc, kind="stable")
            res.append({"request_id": p.request_id, "model": self.name, "version": self.version,
                        "items": [{"item_id": int(p.candidates[i]), "rank": r, "score": float(sc[i])}
                                  for r, i in enumerate(order)]})
        return res

    def rerank_lists(self, lists: list[CandidateList | dict]) -> list[dict]:
        """:meth:`prepare` then :meth:`score`."""
        return self.score([self.prepare(x) for x in lists])

    # -- the serving bundle's seam (mmrank.serve.bundle.Reranker) ---------------------------------------
    def rerank(self, inp: Any) -> Any:
        """Re-order a ``/v1/rank`` answer (:class:`mmrank.serve.bundle.RerankInput`, candidates in CTR
        order): the CTR model's probability is the production score, the request time is now (every
        logged sale), an item the catalog does not know gets the list's median price, a category
        unknown to the store or the model the padding category, a region unknown to the model region 0."""
        ids = np.asarray(inp.item_ids, np.int64)
        row, found = self.catalog.rows(ids)
        price = np.where(found, self.catalog.price[row] if len(ids) else 0.0, np.nan)
        price = np.where(np.isnan(price), np.nanmedian(price) if found.any() else 0.0, price)
        cat = np.asarray(inp.category_ids, np.int64)
        cat = np.where((cat >= 0) & (cat + 1 < self.space.n_categories), cat, -1)
        hist = np.asarray(inp.hist_item_ids, np.int64)[-self.history_len:]
        hrow, hfound = self.catalog.rows(hist)
        hcat = np.where(hfound, self.catalog.cat[hrow] if len(hist) else 0, -1)
        region = int(inp.region) if 0 <= int(inp.region) < max(self.space.n_regions, 1) else 0
        p = Prepared(None, -1 if inp.user_id is None else int(inp.user_id), region, NO_TS,
                     f"text:{inp.query}" if inp.query else "", ids, price, self.log.sales(ids, NO_TS),
                     np.asarray(inp.ctr_scores, np.float32), cat, hist[hfound], hcat[hfound])
        items = self.score([p])[0]["items"]
        pos = {it: k for k, it in enumerate(ids.tolist())}
        order = np.array([pos[it["item_id"]] for it in items], np.int64)
        scores = np.zeros(len(ids))
        scores[order] = [it["score"] for it in items]
        return RerankResult(order=order, scores=scores)


def trained_models(run: Path) -> list[str]:
    """The re-rankers trained under ``R/rerank/``, the preferred first."""
    d = Path(run) / "rerank"
    return [m for m in PREFERENCE if (d / m / "model.safetensors").exists()]


def load_reranker(run: str | Path, model: str | None = None, *, encoder: Any | None = None,
                  hardware: HardwareConfig | None = None) -> ListReranker:
    """The re-ranker ``R/rerank/<model>/`` (default: the first of :data:`PREFERENCE` trained), checked
    against the run's data (:mod:`mmrank.lineage`) and representations, on ``hardware``'s device (None:
    auto). :class:`MMRankError` (one line, naming the command that trains it) when there is none."""
    from safetensors.numpy import load_file as load_np
    from safetensors.torch import load_file as load_torch

    from mmrank import lineage
    from mmrank.rerank.artifacts import trained_config
    from mmrank.rerank.features import feature_encoder, item_tables

    run = Path(run)
    if model is None:
        have = trained_models(run)
        if not have:
            raise MMRankError(f"{run}/rerank: no trained re-ranker (run `mmrank rerank train --run {run} "
                              f"--model armmt`)")
        model = have[0]
    d, conf = trained_config(run, model, "trained re-ranker")
    cfg = ListModelConfig.model_validate(conf["model"])
    space = ListSpace.from_arrays(load_np(str(d / "vocab.safetensors")))
    tables, enc, enc_version, qdim = None, None, None, 0
    if cfg.backbone == "armmt":
        enc = feature_encoder(run, encoder)
        source = f"encoder:{enc.version}"
        if conf.get("representations") not in (None, source):
            raise ConfigError(f"{d}: trained on {conf['representations']}, the run now has {source}")
        ids, tables = item_tables(run, enc)
        if not np.array_equal(ids, space.vec_items.ids):
            raise ConfigError(f"{d}: trained on representations of another catalog (retrain it: "
                              f"`mmrank rerank train --run {run} --model {model}`)")
        enc_version = str(enc.version)
        qdim = int(next(iter(tables.values())).shape[1])
    net = ListModel(cfg, n_items=len(space.items), n_users=len(space.users), n_categories=space.n_categories,
                    n_regions=max(space.n_regions, 1), tables=tables, query_dim=qdim)
    net.load_state_dict(load_torch(str(d / "model.safetensors")), strict=True)
    version = lineage.model_version(d / "model.safetensors", d / "vocab.safetensors", d / "config.json")
    return ListReranker(run, model, net, space, enc, enc_version, version, hardware=hardware)


def load(run: Path, encoder_version: str, model: str | None = None, *,
         hardware: HardwareConfig | None = None) -> ListReranker | None:
    """The serving bundle's seam: the re-ranker ``model`` (default: the preferred one trained), or None
    when the run has none. A model without representations serves with any encoder: it takes the
    bundle's ``encoder_version``."""
    if model is None and not trained_models(run):
        return None
    rr = load_reranker(run, model, hardware=hardware)
    if rr.encoder_version is None:
        rr.encoder_version = encoder_version
    return rr


def logged_list_bodies(lists: Lists, rows: np.ndarray, with_request_id: bool = False) -> list[dict[str, Any]]:
    """Logged lists (rows of ``lists``) as :class:`CandidateList` bodies (``/v1/rerank``, ``rerank
    apply``): user, query (words or a query photo id), region, ts and every retrieved candidate with its
    production score; history, sales, price and category are left to the re-ranker to fill in."""
    out = []
    for r in rows:
        s = lists.candidates(int(r))
        q = lists.query[r]
        doc: dict[str, Any] = {"request_id": int(lists.request_id[r])} if with_request_id else {}
        doc.update({"user_id": int(lists.user_id[r]), "region": int(lists.region[r]), "ts": int(lists.ts[r]),
                    "candidates": [{"item_id": int(i), "prod_score": float(p)}
                                   for i, p in zip(lists.item_id[s], lists.prod_score[s])]})
        if q.startswith("text:"):
            doc["query"] = q[5:]
        elif q.startswith("image:"):
            doc["query_image"] = q[6:]
        out.append(doc)
    return out


def read_lists(path: Path) -> list[tuple[int, CandidateList]]:
    """``(line number, list)`` for each non-blank line of a JSON-lines file; :class:`DataError` naming
    the file, line and field of the first bad one."""
    from pydantic import ValidationError

    if not path.exists():
        raise DataError("no such file", file=str(path))
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"line {n}: not JSON ({err.msg})", file=str(path)) from None
            try:
                out.append((n, CandidateList.model_validate(doc)))
            except ValidationError as err:
                e = err.errors()[0]
                field = ".".join(str(p) for p in e.get("loc", ())) or None
                raise DataError(f"line {n}: {e.get('msg')}", file=str(path),
                                column=field) from None
    if not out:
        raise DataError("no lists (one JSON object per line)", file=str(path))
    return out
