"""One loader for a run's serving bundle: encoder, embedding table + index, CTR model, re-ranker.

Every part is checked against ONE encoder version (``R/encoder/version.txt``, a hash of the
encoder's config and weights), not only against the vector width:

* the embedding table opened is the table of that version (``R/embeddings/v-<version>/``);
* the CTR model's ``config.json`` records the representations it was trained on
  (``"embeddings:<version>"``) and must name the same version
  (:func:`mmrank.ctr.representations.check_representation_version`);
* a re-ranker (``R/rerank/``, when it exists) must report the same ``encoder_version``;
* the encoder, the table and the CTR model must have been made from the run's data as it is now
  (:mod:`mmrank.lineage`: a stale one stops the load, naming the command that rebuilds it).

A bundle is immutable once loaded; a server swaps a whole new bundle in (:mod:`mmrank.serve.app`).

On a device (``hardware``: auto | cpu | cuda | cuda:N): the item encoder, the CTR model and the
re-ranker are moved there once at load; every batch is built on the
host, moved there, scored there (bf16 autocast on CUDA when ``hardware.bf16``), and its scores come
back to the host. ``Bundle.device`` says where (``describe()``, ``/v1/bundle``, ``/healthz``).

The re-ranker seam: when ``R/rerank/`` exists, :func:`load_reranker` imports
``mmrank.rerank.serving`` and calls its ``load(run, encoder_version=..., hardware=...[, model=...])``
(``hardware``: the bundle's device), which returns
a :class:`mmrank.rerank.serving.ListReranker` (the :class:`Reranker` interface, and the lists
``/v1/rerank`` scores) or None when no re-ranker is trained. Without one the bundle loads and says
why (``Bundle.rerank_status``); the page shows the CTR order on both sides then, and ``/v1/rerank``
answers 409.
"""

from __future__ import annotations

import copy
import importlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mmrank import lineage
from mmrank.data.schemas import HISTORY_LEN
from mmrank.device import HardwareConfig, describe, resolve_device
from mmrank.errors import ConfigError, MMRankError

# Strategies tried, in order, when none is asked for: the paper's best first.
STRATEGY_PREFERENCE = ("simtier+make", "simtier", "make", "simscore", "vector", "id")


@dataclass
class RerankInput:
    """What a re-ranker gets for one request (candidates in CTR order, best first)."""

    item_ids: np.ndarray           # (C,) int64
    ctr_scores: np.ndarray         # (C,) float32 click probabilities
    item_vectors: np.ndarray       # (C, D) float32, L2-normalised
    category_ids: np.ndarray       # (C,) int32
    hist_item_ids: np.ndarray      # (L,) the user's behaviour, most recent last
    hist_vectors: np.ndarray       # (L, D)
    user_id: int | None
    region: int
    query: str | None


@dataclass
class RerankOutput:
    """``order``: indices into the input candidates, best first; ``scores`` (C,) in input order;
    ``modality_weights``: optional per candidate ``{"image": w, "text": w, ...}`` (CAFU)."""

    order: np.ndarray
    scores: np.ndarray
    modality_weights: list[dict[str, float]] | None = None


class Reranker(Protocol):
    name: str
    version: str
    encoder_version: str

    def rerank(self, inp: RerankInput) -> RerankOutput: ...


def load_reranker(run: Path, encoder_version: str, model: str | None = None,
                  hardware: HardwareConfig | None = None) -> tuple[Reranker | None, str]:
    """``(re-ranker or None, status)``: ``R/rerank/<model>`` (default: the preferred one trained);
    raises :class:`ConfigError` on an encoder-version mismatch, :class:`MMRankError` when ``model`` is
    named but not trained. ``hardware``: where it scores (None: auto)."""
    d = Path(run) / "rerank"
    if not d.exists() and model is None:
        return None, ("absent: this run has no trained re-ranker (train one with "
                      "`mmrank rerank train --run R`, then reload)")
    try:
        mod = importlib.import_module("mmrank.rerank.serving")
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("mmrank"):
            raise
        return None, ("a re-ranker was trained for this run, but re-ranking is not installed in this "
                      "version of the server (upgrade mmrank to serve it)")
    kw: dict[str, Any] = {} if model is None else {"model": model}
    rr = mod.load(Path(run), encoder_version=encoder_version, hardware=hardware, **kw)
    if rr is None:
        return None, ("absent: this run has no trained re-ranker (train one with "
                      "`mmrank rerank train --run R`, then reload)")
    if getattr(rr, "encoder_version", None) != encoder_version:
        raise ConfigError(f"{d}: re-ranker {getattr(rr, 'name', '?')!r} was trained on encoder version "
                          f"{getattr(rr, 'encoder_version', None)!r}, the bundle's is {encoder_version!r}")
    return rr, f"loaded {rr.name} ({rr.version})"


class UserHistories:
    """Each logged user's last clicks (most recent last) and last region, from ``R/data/events.parquet``
    (``event == "click"``); falls back to the newest CTR sample's history when there are no events."""

    def __init__(self, users: dict[int, np.ndarray], regions: dict[int, int]) -> None:
        self.users, self.regions = users, regions

    @classmethod
    def from_run(cls, run: Path, history_len: int = HISTORY_LEN) -> "UserHistories":
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        data = Path(run) / "data"
        ev = data / "events.parquet"
        users: dict[int, np.ndarray] = {}
        regions: dict[int, int] = {}
        if ev.exists():
            t = pq.read_table(ev, columns=["ts", "user_id", "item_id", "event", "region"])
            u_all, r_all = t.column("user_id").to_numpy(), t.column("region").to_numpy()
            o = np.lexsort((t.column("ts").to_numpy(), u_all))
            uo, ro = u_all[o], r_all[o]
            if len(uo):  # the region of each user's newest event
                ends = np.r_[np.flatnonzero(uo[1:] != uo[:-1]), len(uo) - 1]
                regions = {int(a): int(b) for a, b in zip(uo[ends], ro[ends])}
            t = t.filter(pc.equal(t.column("event"), "click"))
            u, i, ts = (t.column(c).to_numpy() for c in ("user_id", "item_id", "ts"))
            o = np.lexsort((ts, u))
            u, i = u[o], i[o]
            if len(u):
                starts = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
                stops = np.r_[starts[1:], len(u)]
                for a, b in zip(starts, stops):
                    users[int(u[a])] = i[max(a, b - history_len):b].astype(np.int64)
            for uid in regions:
                users.setdefault(uid, np.zeros(0, np.int64))
        elif (data / "ctr_samples.parquet").exists():
            t = pq.read_table(data / "ctr_samples.parquet",
                              columns=["ts", "user_id", "region", "hist_item_ids"])
            u, ts = t.column("user_id").to_numpy(), t.column("ts").to_numpy()
            o = np.lexsort((ts, u))
            hist = t.column("hist_item_ids")
            reg = t.column("region").to_numpy()
            for k in o:  # the newest row of each user wins
                users[int(u[k])] = np.asarray(hist[int(k)].as_py()[-history_len:], np.int64)
                regions[int(u[k])] = int(reg[k])
        return cls(users, regions)

    def __contains__(self, user_id: int) -> bool:
        return int(user_id) in self.users

    def history(self, user_id: int) -> np.ndarray:
        return self.users.get(int(user_id), np.zeros(0, np.int64))

    def region(self, user_id: int) -> int | None:
        return self.regions.get(int(user_id))

    def sample(self, n: int) -> list[dict]:
        """Up to ``n`` users with the longest histories (for the page's user picker)."""
        ranked = sorted(self.users.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:n]
        return [{"user_id": u, "history_length": int(len(h)), "region": self.regions.get(u)}
                for u, h in ranked]


@dataclass
class Bundle:
    """Everything one request is served with. Loaded by :func:`load_bundle`; never mutated."""

    run: Path
    encoder_version: str
    encoder: Any
    store: Any                       # mmrank.store.items.ItemStore
    strategy: str
    model: Any                       # mmrank.ctr.models.CtrModel
    space: Any                       # mmrank.ctr.data.FeatureSpace (vec_items None: per batch)
    model_version: str               # hash of the CTR weights + vocab + config
    n_tiers: int
    history_len: int
    users: UserHistories
    reranker: Reranker | None = None
    rerank_status: str = "absent"
    lineage: dict = field(default_factory=dict)  # digests of the data and artifacts (mmrank.lineage)
    sid: Any = None                  # mmrank.sid.stage.SidCodes for a sid strategy (codebooks: new items)
    device: Any = None               # torch.device the models run on (None: the CPU)
    bf16: bool = False               # bf16 autocast there (CUDA only)
    pin_memory: bool = True          # batches copied there from pinned host memory (CUDA only)
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    _copies: dict = field(default_factory=dict, repr=False)  # forward thread -> its model copy
    _copy_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def model_for(self, worker: int = 0) -> Any:
        """The CTR model forward thread ``worker`` uses: the bundle's own for 0, a private copy
        (made once) for the others, since :func:`mmrank.ctr.scoring.score` swaps the vector table of the
        model it runs."""
        if worker == 0:
            return self.model
        with self._copy_lock:
            if worker not in self._copies:
                self._copies[worker] = copy.deepcopy(self.model)  # on the model's device
            return self._copies[worker]

    @property
    def device_name(self) -> str:
        """Where the models run, e.g. ``cpu (2 threads)`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
        return describe(self.device if self.device is not None else resolve_device("cpu"))

    @property
    def id(self) -> str:
        return f"{self.encoder_version}/{self.strategy}/{self.model_version}"

    def describe(self) -> dict:
        return {"bundle": self.id, "encoder_version": self.encoder_version,
                "table_version": self.store.version, "strategy": self.strategy,
                "sid": None if self.sid is None else self.sid.version,
                "model_version": self.model_version, "rerank": self.rerank_status,
                "items": len(self.store), "lineage": self.lineage,
                "device": self.device_name,
                "bf16": self.bf16 and self.device is not None and self.device.type == "cuda",
                "loaded_at": self.loaded_at,
                "load_seconds": round(self.load_seconds, 3)}

    def close(self) -> None:
        self.store.close()


def pick_strategy(run: Path, strategy: str | None) -> str:
    """``strategy`` if trained under ``R/ctr/``, else the most preferred trained one."""
    ctr = Path(run) / "ctr"
    if strategy is not None:
        if not (ctr / strategy / "model.safetensors").exists():
            raise MMRankError(f"{ctr / strategy}: no trained model (run `mmrank ctr train --run {run} "
                              f"--strategy {strategy}`)")
        return strategy
    for s in STRATEGY_PREFERENCE:
        if (ctr / s / "model.safetensors").exists():
            return s
    raise MMRankError(f"{ctr}: no trained CTR model (run `mmrank ctr train --run {run}` or `mmrank demo`)")


def load_bundle(run: str | Path, strategy: str | None = None, *, encoder: Any = None,
                rerank_model: str | None = None, hardware: HardwareConfig | None = None) -> Bundle:
    """Load and cross-check a run's encoder, table, index, CTR model and re-ranker (module docstring).

    ``encoder`` (optional) replaces ``R/encoder`` (tests); it must have ``version`` and the
    ``mmrank.store.encoding.ItemEncoder`` methods. ``rerank_model``: the re-ranker under ``R/rerank/``
    (default: the preferred one trained, see :data:`mmrank.rerank.serving.PREFERENCE`).
    ``hardware``: where the models run (default: auto, CUDA when present; a device this machine
    lacks raises :class:`mmrank.device.DeviceError` before anything is loaded).
    """
    from mmrank.ctr.artifacts import load_model
    from mmrank.store.encoding import load_encoder
    from mmrank.store.items import ItemStore

    t0 = time.perf_counter()
    hw = hardware or HardwareConfig()
    dev = resolve_device(hw.device)
    run = Path(run)
    strategy = pick_strategy(run, strategy)
    encoder = encoder if encoder is not None else load_encoder(run, device=dev, bf16=hw.bf16,
                                                               pin_memory=hw.pin_memory)
    version = encoder.version
    try:
        store = ItemStore.open(run, encoder, version=version)
    except MMRankError as err:
        raise MMRankError(f"{run}/embeddings: no table of encoder version {version!r} "
                          f"(run `mmrank embed --run {run}`): {err}") from None
    try:
        model, space, conf = load_model(run, strategy, attach_vectors=False, encoder_version=version)
        model.to(dev)
        d = run / "ctr" / strategy
        if model.cfg.uses_vectors and conf["sizes"]["vec_dim"] != store.dim:
            raise ConfigError(f"{d}: trained on {conf['sizes']['vec_dim']}-d vectors, the table of "
                              f"{version!r} has {store.dim}-d ones")
        sid = None
        if model.cfg.uses_sid:  # the codes it was trained with; new items get theirs from the codebooks
            from mmrank.ctr.artifacts import load_codes

            sid = load_codes(run, d, conf, version)
        model.share_history = True  # a request's candidates share its history: work per distinct item
        model_version = lineage.model_version(d / "model.safetensors", d / "vocab.safetensors",
                                              d / "config.json")
        store.catch_up()  # items acknowledged under an older encoder version, re-encoded with this one
        reranker, status = load_reranker(run, version, rerank_model, hardware=hw)
        users = UserHistories.from_run(run, history_len=model.cfg.history_len)
        made = bundle_lineage(run, store, d)
    except BaseException:
        store.close()
        raise
    return Bundle(run=run, encoder_version=version, encoder=encoder, store=store, strategy=strategy,
                  model=model, space=space, model_version=model_version, n_tiers=model.cfg.n_tiers,
                  history_len=model.cfg.history_len, users=users, reranker=reranker, rerank_status=status,
                  lineage=made, sid=sid, device=dev, bf16=hw.bf16, pin_memory=hw.pin_memory,
                  load_seconds=time.perf_counter() - t0)


def bundle_lineage(run: Path, store: Any, ctr_dir: Path) -> dict:
    """What a bundle is made from: the data's digest and those of its table and CTR model (each
    checked against the run's data when it was opened; None for one made before lineage)."""
    from mmrank.store.items import index_dir

    return {"data": lineage.data_digests(run).get("data"),
            "embeddings": (lineage.read(index_dir(store.table)) or {}).get("digest"),
            "ctr": (lineage.read(ctr_dir) or {}).get("digest")}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
