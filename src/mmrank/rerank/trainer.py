"""Training and scoring of re-rankers on a run's lists.

Training reads the **shown** candidates of training requests (the only ones with labels), as lists in
their shown order; the loss is :class:`mmrank.models.blocks.MultiTaskLoss` (one named term per label).
A model with ``objective="ips-listwise"`` (``dnn-ips``, ``armmt-ips``) trains on **every** retrieved
candidate instead, with the counterfactual loss :func:`ips_listwise_loss`.
Scoring works on the shown candidates (the logged-label metrics) or on every retrieved candidate
(the order the evaluator is asked about).

Example::

    >>> data = load_data(Path("runs/demo"))                     # doctest: +SKIP
    >>> model, info = fit(data, "armmt", seed=0)                  # doctest: +SKIP
    >>> cand, scores = predict(model, data, data.lists.test_rows(), "all")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mmrank.config import StrictModel
from mmrank.ctr.trainer import placement
from mmrank.device import HardwareConfig, autocast, batch_to, model_device
from mmrank.rerank.data import ListSpace, Lists, candidate_index, load_lists, make_batch
from mmrank.rerank.features import ModalFeatures, load_features
from mmrank.rerank.models import ListModel, ListModelConfig, model_config


class RerankTrainConfig(StrictModel):
    """Optimisation settings (Adam)."""

    epochs: int = Field(1, ge=1, description="passes over the training lists (ID embeddings see each once at 1)")
    batch_size: int = Field(64, ge=1, description="lists per step")
    lr: float = Field(2e-3, gt=0)
    seed: int = 0
    max_train_lists: int | None = Field(None, ge=1, description="train on the latest N training lists only")


# Gains of the counterfactual listwise loss (the NDCG@10 gains of mmrank.rerank.evaluate).
IPS_GAINS = {"click": 1.0, "cart": 2.0, "purchase": 4.0}
MIN_EXPOSURE = 0.02  # exposure propensities are clipped from below (weights at most gain / 0.02)


@dataclass
class RerankData:
    """Lists of a run, their vocabularies and frozen representations."""

    run: Path
    lists: Lists
    space: ListSpace
    feats: ModalFeatures | None
    manifest: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)  # the digests of the tables read (mmrank.lineage)

    _exposure: np.ndarray | None = None

    def exposure(self) -> np.ndarray:
        """(n,) each candidate's exposure propensity under the logging policy: sum_j P0(shown at j) *
        theta_j, theta the examination of a position-based click model fit by EM on the training lists'
        clicks (:class:`mmrank.rerank.offpolicy.PositionBasedModel`; policy-aware propensities of
        Oosterhuis & de Rijke 2020 with a learned examination model)."""
        if self._exposure is None:
            from mmrank.rerank.offpolicy import fit_click_models

            theta = fit_click_models(self.lists, self.lists.train_rows())["click"].theta
            marg = self.lists.logging_marginals()
            k = min(marg.shape[1], len(theta))
            self._exposure = marg[:, :k].astype(np.float64) @ theta[:k]
        return self._exposure

    def train_rows(self, max_lists: int | None = None) -> np.ndarray:
        rows = self.lists.train_rows()
        if max_lists is not None and len(rows) > max_lists:
            order = np.argsort(self.lists.ts[rows], kind="stable")
            rows = np.sort(rows[order[-max_lists:]])
        return rows


def load_data(run: str | Path, *, encoder: Any | None = None, with_features: bool = True,
              lists_path: Path | None = None) -> RerankData:
    """Read ``R/data/lists.parquet`` (and the per-modality representations, see :mod:`.features`)."""
    from mmrank.lineage import RERANK_TABLES, data_inputs

    run = Path(run)
    inputs = data_inputs(run, *RERANK_TABLES)  # before the tables are read
    lists = load_lists(lists_path or run / "data" / "lists.parquet")
    feats = load_features(run, lists, encoder) if with_features else None
    space = ListSpace.fit(lists, feats.item_ids if feats is not None else None)
    mpath = run / "data" / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {}
    return RerankData(run, lists, space, feats, manifest, inputs)


def batch_for(data: RerankData, rows: np.ndarray, which: str = "shown",
              cand: list[np.ndarray] | None = None, device: torch.device | None = None,
              pin_memory: bool = True) -> dict[str, torch.Tensor]:
    """:func:`make_batch` plus the requests' query vectors (``query_vec``), on ``device`` (default: the
    host; to CUDA from pinned memory, non-blocking)."""
    batch = make_batch(data.lists, data.space, rows, which, cand=cand)
    if data.feats is not None:
        batch["query_vec"] = data.feats.queries.index_select(0, torch.as_tensor(np.asarray(rows, np.int64)))
    return batch_to(batch, device, pin_memory)


def build_model(data: RerankData, cfg: ListModelConfig) -> ListModel:
    tables = data.feats.tables if data.feats is not None else None
    return ListModel(cfg, n_items=len(data.space.items), n_users=len(data.space.users),
                     n_categories=data.space.n_categories, n_regions=max(data.space.n_regions, 1),
                     tables=tables, query_dim=data.feats.dim if data.feats is not None else 0)


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=True)


def train(model: ListModel, data: RerankData, rows: np.ndarray, cfg: RerankTrainConfig | None = None,
          progress: bool = True, label: str = "", *, device: torch.device | None = None, bf16: bool = True,
          pin_memory: bool = True) -> dict:
    """Train ``model`` on the shown candidates of requests ``rows``; returns losses per term and time.

    ``device`` (default: where the model is): the model and its frozen tables move there, batches
    follow (pinned, non-blocking); forward and loss under bf16 autocast on CUDA when ``bf16``."""
    cfg = cfg or RerankTrainConfig()
    dev = model_device(model, device)
    model.to(dev)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    rows = np.asarray(rows)
    rows = rows[np.diff(data.lists.offsets)[rows] > 0]
    shown_any = np.array([(data.lists.position[data.lists.candidates(int(r))] >= 0).any() for r in rows], bool)
    rows = rows[shown_any]
    n_batches = (len(rows) + cfg.batch_size - 1) // cfg.batch_size
    t0, history = time.perf_counter(), []
    model.train()
    with _progress(progress) as bar:
        for epoch in range(cfg.epochs):
            task = bar.add_task(f"train {label} epoch {epoch + 1}/{cfg.epochs}", total=n_batches)
            order = rng.permutation(rows)
            sums: dict[str, float] = {}
            for a in range(0, len(order), cfg.batch_size):
                if model.cfg.objective == "ips-listwise":
                    terms = ips_listwise_loss(model, data, order[a:a + cfg.batch_size], device=dev, bf16=bf16,
                                              pin_memory=pin_memory)
                else:
                    batch = batch_for(data, order[a:a + cfg.batch_size], "shown", device=dev,
                                      pin_memory=pin_memory)
                    with autocast(dev, bf16):
                        out = model(batch)
                        mask = ~batch["pad"].reshape(-1)
                        terms = model.loss({t: v.float().reshape(-1) for t, v in out.items()},
                                           {t: batch[t].reshape(-1) for t in model.cfg.tasks}, mask)
                opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                opt.step()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach().float())
                bar.advance(task)
            history.append({k: v / max(n_batches, 1) for k, v in sums.items()})
    secs = time.perf_counter() - t0
    return {"loss": history, "seconds": secs, "lists": int(len(rows)), "lists_per_s": len(rows) * cfg.epochs / max(secs, 1e-9)}


def ips_listwise_loss(model: ListModel, data: RerankData, rows: np.ndarray, *, device: torch.device | None = None,
                      bf16: bool = True, pin_memory: bool = True) -> dict[str, torch.Tensor]:
    """Counterfactual listwise loss over **every** retrieved candidate of requests ``rows``:
    -1/B sum_b sum_i w_bi log softmax(s_b)_i, w = gain (purchase 4 > cart 2 > click 1, 0 if none or not
    shown) / max(exposure propensity, MIN_EXPOSURE). In expectation over the logging policy it is the
    loss with every candidate's gain observed at full examination (the propensities correct the
    selection and position bias of the logs). ``device`` (default: where the model is) and ``bf16`` as
    :func:`train`."""
    dev = model_device(model, device)
    batch = batch_for(data, rows, "all")
    flat = batch["flat"].numpy()                        # read on the host, before the batch moves
    batch = batch_to(batch, dev, pin_memory)
    with autocast(dev, bf16):
        out = model(batch)
    s = model.rank_scores(out).float().masked_fill(batch["pad"], float("-inf"))
    f0 = np.where(flat < 0, 0, flat)
    lists = data.lists
    gain = np.zeros(flat.shape)
    for t, g in IPS_GAINS.items():
        gain = np.maximum(gain, g * lists.label(t)[f0])
    shown = (flat >= 0) & (lists.position[f0] >= 0)
    w = np.where(shown, gain / np.maximum(data.exposure()[f0], MIN_EXPOSURE), 0.0)
    logp = torch.log_softmax(s, dim=1).masked_fill(batch["pad"], 0.0)
    loss = -(torch.from_numpy(w).float().to(dev) * logp).sum() / max(len(rows), 1)
    return {"ips_listwise": loss.detach(), "total": loss}


@torch.no_grad()
def predict(model: ListModel, data: RerankData, rows: np.ndarray, which: str = "shown",
            batch_size: int = 256, *, device: torch.device | None = None, bf16: bool = True,
            pin_memory: bool = True) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """Scores of the candidates of each request in ``rows``: ``(candidates, {task: scores})``, the
    candidates as flat indices into ``data.lists`` (``shown`` or ``all``), the scores logits per head
    plus ``"rank"`` (the ranking head). On ``device`` (default: where the model is), bf16 autocast on
    CUDA when ``bf16``; scores come back as float64 host arrays."""
    dev = model_device(model, device)
    model.to(dev)
    model.eval()
    cands = candidate_index(data.lists, np.asarray(rows), which)
    scores: dict[str, list[np.ndarray]] = {t: [] for t in [*model.cfg.tasks, "rank"]}
    for a in range(0, len(rows), batch_size):
        sub = np.asarray(rows[a:a + batch_size])
        cand = cands[a:a + batch_size]
        with autocast(dev, bf16):
            out = model(batch_for(data, sub, which, cand=cand, device=dev, pin_memory=pin_memory))
            out["rank"] = model.rank_scores(out)
        for t, v in out.items():
            v = v.double().cpu().numpy()
            scores[t] += [v[k, :len(c)] for k, c in enumerate(cand)]
    return cands, scores


def fit(data: RerankData, name: str, *, seed: int = 0, train_cfg: RerankTrainConfig | None = None,
        cfg: ListModelConfig | None = None, progress: bool = True,
        hardware: HardwareConfig | None = None) -> tuple[ListModel, dict]:
    """Build model ``name`` (:data:`mmrank.rerank.models.MODELS`) and train it with ``seed`` on
    ``hardware``'s device (None: auto); the model is returned there."""
    cfg = cfg or model_config(name)
    tcfg = (train_cfg or RerankTrainConfig()).model_copy(update={"seed": seed})
    torch.manual_seed(seed)
    model = build_model(data, cfg)
    info = train(model, data, data.train_rows(tcfg.max_train_lists), tcfg, progress=progress, label=name,
                 **placement(hardware))
    return model, info
