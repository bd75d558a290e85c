"""Post-training, the library part: behaviour pairs, the residual adapter, the InfoNCE loss, the loop.

MOON (arXiv 2025) puts a post-training stage between pre-training and the CTR model: the pre-trained
item representation is adapted to behaviour. Here the pre-trained vectors stay frozen and a small
:class:`ResidualAdapter` (initialised at the identity) is trained by contrastive learning
(:class:`InfoNCELoss`, in-batch negatives, learnable temperature) on two kinds of pairs, both made by
:func:`behaviour_pairs` from clicks the caller has already cut at the CTR cutoff:

* ``session``: items clicked within one session (same user, gaps < ``session_gap_s``), up to
  ``session_window`` clicks apart;
* ``next``: <the mean of the user's last ``recent_clicks`` clicks, the next click>.

Nothing here reads a run; :mod:`mmrank.posttrain.stage` does.

Example::

    >>> import torch
    >>> a = ResidualAdapter(dim=8, hidden=4)
    >>> v = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    >>> bool(torch.allclose(a(v), v))           # the identity at initialisation
    True
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmrank.device import autocast, batch_to, to_device
from mmrank.posttrain.config import PosttrainConfig

Pairs = dict[str, tuple[np.ndarray, np.ndarray]]


def behaviour_pairs(user: np.ndarray, item: np.ndarray, ts: np.ndarray,
                    cfg: PosttrainConfig | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Contrastive pairs from clicks ``(user, item, ts)`` (each ``(n,)``; the caller keeps only clicks
    before the cutoff).

    Returns ``{"session": (a (P,), b (P,), ts (P,)), "next": (recent (Q, K), target (Q,), ts (Q,))}`` of
    item ids, ``recent`` padded with -1 (latest click first, never the target itself), ``ts`` the time
    of each pair's later click. Clicks sharing a timestamp keep their input order.
    """
    cfg = cfg or PosttrainConfig()
    user, item, ts = (np.asarray(x, np.int64) for x in (user, item, ts))
    order = np.lexsort((ts, user))
    u, it, t = user[order], item[order], ts[order]
    n = len(u)
    new_user = np.ones(n, bool)
    new_user[1:] = u[1:] != u[:-1]
    new_session = new_user.copy()
    new_session[1:] |= (t[1:] - t[:-1]) >= cfg.session_gap_s
    session = np.cumsum(new_session)
    a, b, pt = [], [], []
    for k in range(1, cfg.session_window + 1):
        if n <= k:
            break
        keep = (session[:-k] == session[k:]) & (it[:-k] != it[k:])
        a.append(it[:-k][keep]), b.append(it[k:][keep]), pt.append(t[k:][keep])
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    first = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))     # first click of each user
    K = cfg.recent_clicks
    idx = np.arange(n)[:, None] - 1 - np.arange(K)[None, :]                   # (n, K), latest first
    valid = idx >= first[:, None]
    recent = np.where(valid, it[np.maximum(idx, 0)], -1)
    recent[recent == it[:, None]] = -1                                       # never the target itself
    has = (recent >= 0).any(axis=1)
    return {"session": (cat(a), cat(b), cat(pt)), "next": (recent[has], it[has], t[has])}


def to_rows(pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], ids: np.ndarray,
            max_pairs: int | None = None) -> Pairs:
    """Item ids -> rows of the sorted ``ids`` (the frozen table); pairs whose item has no row are
    dropped (a history entry without one becomes padding); with ``max_pairs``, the latest pairs only."""
    ids = np.asarray(ids, np.int64)

    def rows(x: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(ids, x), max(len(ids) - 1, 0))
        return np.where((x >= 0) & (ids[pos] == x) if len(ids) else np.zeros(x.shape, bool), pos, -1)

    out: Pairs = {}
    a, b, t = pairs["session"]
    ra, rb = rows(a), rows(b)
    keep = np.flatnonzero((ra >= 0) & (rb >= 0))
    out["session"] = _latest(ra[keep], rb[keep], t[keep], max_pairs)
    h, tgt, t = pairs["next"]
    rh, rt = rows(h), rows(tgt)
    keep = np.flatnonzero((rt >= 0) & (rh >= 0).any(axis=1))
    out["next"] = _latest(rh[keep], rt[keep], t[keep], max_pairs)
    return out


def _latest(q: np.ndarray, k: np.ndarray, t: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    if n is not None and len(t) > n:
        keep = np.sort(np.argsort(t, kind="stable")[-n:])
        q, k = q[keep], k[keep]
    return q, k


class ResidualAdapter(nn.Module):
    """``f(v) = normalise(v + W_up act(W_down v))`` on frozen pre-trained vectors, ``W_up`` initialised
    to zero: the identity at the start (on unit vectors), so post-training starts from the pre-trained
    representation and an item with no behaviour still gets one (its content vector, adapted).

    Args:
        dim: width D of the vectors.
        hidden: bottleneck width.

    ``forward(v (..., D)) -> (..., D)``, unit length.
    """

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v + self.up(self.act(self.down(v))), dim=-1)


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE with in-batch negatives and a learnable temperature (CLIP's ``logit_scale``).

    Row ``i`` of ``q (B, D)`` is positive with row ``i`` of ``k (B, D)`` and negative with every other
    row, except rows that are the same item (``k_ids``, and ``q_ids`` when the queries are items too):
    those would be false negatives and are masked out.

    ``forward(q, k, q_ids=None, k_ids=None) -> {"loss": (), "temperature": ()}``.
    """

    def __init__(self, temperature: float = 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.max_log_scale = math.log(max_scale)

    def temperature(self) -> float:
        return float(1.0 / self.log_scale.detach().clamp(max=self.max_log_scale).exp())

    def forward(self, q: torch.Tensor, k: torch.Tensor, q_ids: torch.Tensor | None = None,
                k_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        scale = self.log_scale.clamp(max=self.max_log_scale).exp()
        logits = scale * q @ k.T                                          # (B, B)
        if k_ids is not None:
            same = k_ids[:, None] == k_ids[None, :]
            if q_ids is not None:
                same |= (q_ids[:, None] == q_ids[None, :]) | (q_ids[:, None] == k_ids[None, :])
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
        labels = torch.arange(len(q), device=q.device)
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        return {"loss": loss, "temperature": 1.0 / scale.detach()}


class PostTrainer(nn.Module):
    """The adapter and one :class:`InfoNCELoss` per objective over a frozen table ``base (N, D)``."""

    def __init__(self, base: torch.Tensor, cfg: PosttrainConfig, objectives: list[str]) -> None:
        super().__init__()
        self.register_buffer("base", base, persistent=False)
        self.adapter = ResidualAdapter(base.shape[1], cfg.hidden)
        self.losses = nn.ModuleDict({o: InfoNCELoss(cfg.temperature) for o in objectives})

    def terms(self, batches: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One named loss per objective (``session``, ``next``) and ``total``, their sum."""
        out: dict[str, torch.Tensor] = {}
        for name, (q, k) in batches.items():
            kv = self.adapter(self.base[k])                               # (B, D)
            if name == "session":
                out[name] = self.losses[name](self.adapter(self.base[q]), kv, q, k)["loss"]
            else:                                                         # q: (B, K) rows, -1 padding
                mask = (q >= 0).unsqueeze(-1).to(kv.dtype)
                hv = self.adapter(self.base[q.clamp(min=0)]) * mask       # (B, K, D)
                query = F.normalize(hv.sum(1) / mask.sum(1).clamp(min=1), dim=-1)
                out[name] = self.losses[name](query, kv, None, k)["loss"]
        out["total"] = sum(out.values())
        return out

    @torch.no_grad()
    def adapt(self, vecs: torch.Tensor, batch: int = 8192) -> torch.Tensor:
        """The post-trained vectors of ``vecs (N, D)`` (computed in fp32 on the model's device; returned
        where ``vecs`` is)."""
        dev = self.base.device
        return torch.cat([self.adapter(to_device(vecs[i:i + batch], dev)).to(vecs.device)
                          for i in range(0, len(vecs), batch)]) if len(vecs) else vecs.clone()


def _batches(pairs: Pairs, order: dict[str, np.ndarray], step: int, size: int,
             device: torch.device | None = None, pin: bool = True) -> dict[str, tuple]:
    out = {}
    for name, (q, k) in pairs.items():
        sel = order[name][(step * size + np.arange(size)) % len(k)]
        out[name] = (batch_to(torch.from_numpy(q[sel]), device, pin), batch_to(torch.from_numpy(k[sel]), device, pin))
    return out


@torch.no_grad()
def mean_loss(model: PostTrainer, pairs: Pairs, size: int, *, bf16: bool = True,
              pin_memory: bool = True) -> dict[str, float]:
    """Each objective's loss averaged over the pairs in their stored order (fixed batches of ``size``),
    on the model's device (bf16 autocast on CUDA when ``bf16``)."""
    dev = model.base.device
    out = {}
    for name, (q, k) in pairs.items():
        vals, w = [], []
        for i in range(0, len(k), size):
            sub = {name: (batch_to(torch.from_numpy(q[i:i + size]), dev, pin_memory),
                          batch_to(torch.from_numpy(k[i:i + size]), dev, pin_memory))}
            if len(sub[name][1]) > 1:
                with autocast(dev, bf16):
                    term = model.terms(sub)[name]
                vals.append(float(term.float())), w.append(len(sub[name][1]))
        out[name] = float(np.average(vals, weights=w)) if vals else float("nan")
    return out


def train_adapter(base: np.ndarray, pairs: Pairs, cfg: PosttrainConfig | None = None, *,
                  progress: bool = True, log: Callable[[str], None] | None = None,
                  device: torch.device | None = None, bf16: bool = True,
                  pin_memory: bool = True) -> tuple[PostTrainer, dict]:
    """Train the adapter on ``pairs`` (rows of ``base (N, D)``, as :func:`to_rows` gives them).

    Every step takes one batch of each objective (cycling through the smaller one); an epoch covers
    the larger. Returns ``(model, history)``, ``history`` holding the losses before training and the
    mean of each named loss per epoch, the learned temperatures, the pair counts and the seconds.
    ``device`` (default the CPU): the frozen table, the adapter and each batch live there (batches
    pinned, non-blocking); the losses run under bf16 autocast on CUDA when ``bf16`` (fp32 weights).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cfg = cfg or PosttrainConfig()
    wanted = ["session", "next"] if cfg.objective == "both" else [cfg.objective]
    pairs = {o: pairs[o] for o in wanted if len(pairs[o][1]) >= 2}
    if not pairs:
        from mmrank.errors import MMRankError

        raise MMRankError(f"post-training: no {' or '.join(wanted)} pairs before the cutoff (need at least 2 "
                          f"clicks by one user before the CTR test period)")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = device or torch.device("cpu")
    model = PostTrainer(torch.as_tensor(np.asarray(base, np.float32)), cfg, list(pairs)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    size = cfg.batch_size
    steps = math.ceil(max(len(k) for _, k in pairs.values()) / size)
    history: dict = {"pairs": {o: int(len(k)) for o, (_, k) in pairs.items()},
                     "before": mean_loss(model, pairs, size, bf16=bf16, pin_memory=pin_memory), "epochs": []}
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]posttrain[/] epoch {task.fields[epoch]}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.fields[losses]}"), TimeRemainingColumn(),
                  disable=not progress, transient=True) as bar:
        task = bar.add_task("steps", total=steps * cfg.epochs, epoch=1, losses="")
        for epoch in range(1, cfg.epochs + 1):
            order = {o: rng.permutation(len(k)) for o, (_, k) in pairs.items()}
            sums = {o: 0.0 for o in pairs}
            for step in range(steps):
                with autocast(dev, bf16):
                    terms = model.terms(_batches(pairs, order, step, size, dev, pin_memory))
                opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                opt.step()
                for o in pairs:
                    sums[o] += float(terms[o].detach().float())
                bar.update(task, advance=1, epoch=epoch,
                           losses=" ".join(f"{o} {sums[o] / (step + 1):.3f}" for o in pairs))
            row = {"epoch": epoch, **{o: sums[o] / steps for o in pairs},
                   "temperature": {o: model.losses[o].temperature() for o in pairs}}
            history["epochs"].append(row)
            if log is not None:
                log(f"[posttrain] epoch {epoch}: " + ", ".join(f"{o} loss {row[o]:.4f}" for o in pairs)
                    + ", temperature " + ", ".join(f"{o} {t:.4f}" for o, t in row["temperature"].items()))
    history["after"] = mean_loss(model, pairs, size, bf16=bf16, pin_memory=pin_memory)
    history["seconds"] = round(time.perf_counter() - t0, 2)
    return model, history
