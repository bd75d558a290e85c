"""The creative selector: a click model over (user context, region, creative attributes) trained on the
creative log with inverse-propensity weights; it picks the argmax creative of an item per impression and
explains the pick in words (:func:`explain`).

The user context is point-in-time: the attributes of the creatives the user clicked in the creative log
strictly before the impression's ``ts`` (the last ``history`` of them). Training reads only
``R/data/`` (the log and ``creatives.parquet``), never ``R/truth/``.

The model is a logistic regression in PyTorch: ``logit = b + x . (w + W[region] + v * pref)``, where
``x`` is the creative's 0/1 attribute vector (1 = the non-default word of
:data:`~mmrank.creative.config.ATTRIBUTES`) and ``pref[a]`` in (-1, 1) is how much more the user's recent
clicks were on creatives with attribute ``a``'s non-default word than on its default word. Each logged
impression is weighted by ``1 / propensity`` of the shown creative (clipped), so each creative counts as
if it had been shown uniformly.

Example::

    >>> sel = Selector.fit(train_log, creatives, CreativeConfig(), seed=0)   # doctest: +SKIP
    >>> k = sel.choose(attrs, regions, alt, n)                               # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from mmrank.creative.config import ATTRIBUTES, CreativeConfig
from mmrank.errors import DataError

NAMES = list(ATTRIBUTES)

# how an attribute's word reads in an explanation: (label of the look, the photos the user clicked)
_WORDS = {
    ("background", "light"): ("light background", "light photos"),
    ("background", "dark"): ("dark background", "dark photos"),
    ("crop", "loose"): ("loose crop", "loosely cropped photos"),
    ("crop", "tight"): ("tight crop", "tightly cropped photos"),
    ("text_band", "none"): ("no text band", "photos without a text band"),
    ("text_band", "band"): ("text band", "photos with a text band"),
    ("border", "none"): ("no border", "photos without a border"),
    ("border", "border"): ("border", "photos with a border"),
}


@dataclass
class Creatives:
    """The creatives of a run (``R/data/creatives.parquet``) as arrays, items sorted by id."""

    item_ids: np.ndarray        # (I,)
    creative_ids: np.ndarray    # (I, K)
    attrs: np.ndarray           # (I, K, A) 0/1
    attr_by_creative: np.ndarray  # (C, A) 0/1, indexed by creative id

    @classmethod
    def load(cls, run: str | Path) -> "Creatives":
        path = Path(run) / "data" / "creatives.parquet"
        if not path.exists():
            raise DataError("no creatives here (run `mmrank creative generate` first)", file=str(path))
        t = pq.read_table(path, columns=["item_id", "creative_id", "k", *NAMES]).to_pandas()
        t = t.sort_values(["item_id", "k"], kind="stable")
        k = int(t["k"].max()) + 1
        if len(t) % k:
            raise DataError(f"every item needs {k} creatives", file=str(path), column="k")
        x = np.stack([(t[a].to_numpy() == ATTRIBUTES[a][1]).astype(np.int8) for a in NAMES], axis=1)
        cid = t["creative_id"].to_numpy()
        by = np.zeros((int(cid.max()) + 1, len(NAMES)), np.int8)
        by[cid] = x
        return cls(t["item_id"].to_numpy()[::k], cid.reshape(-1, k), x.reshape(-1, k, len(NAMES)), by)

    def rows(self, item_ids: np.ndarray, where: str = "creative_log.parquet") -> np.ndarray:
        pos = np.clip(np.searchsorted(self.item_ids, item_ids), 0, len(self.item_ids) - 1)
        bad = self.item_ids[pos] != item_ids
        if bad.any():
            raise DataError(f"item {int(item_ids[np.flatnonzero(bad)[0]])} has no creatives", file=where,
                            column="item_id")
        return pos


def user_context(log, attr_by_creative: np.ndarray, history: int) -> tuple[np.ndarray, np.ndarray]:
    """Point-in-time user context of each log row: ``alt`` (N, A), how many of the user's last
    ``history`` creative clicks strictly before the row's ``ts`` had each attribute's non-default
    word, and ``n`` (N,), how many clicks that window holds (at most ``history``).

    ``log`` has columns ``user_id, ts, creative_id, click`` (the creative log, any order)."""
    user = log["user_id"].to_numpy()
    ts = log["ts"].to_numpy()
    cre = log["creative_id"].to_numpy()
    click = log["click"].to_numpy().astype(bool)
    n_rows, n_attr = len(user), attr_by_creative.shape[1]
    alt = np.zeros((n_rows, n_attr), np.int16)
    n = np.zeros(n_rows, np.int16)
    order = np.lexsort((ts, user))
    i = 0
    while i < n_rows:
        u = user[order[i]]
        clicks: list[int] = []
        j = i
        while j < n_rows and user[order[j]] == u:
            t = ts[order[j]]
            e = j
            while e < n_rows and user[order[e]] == u and ts[order[e]] == t:
                e += 1
            window = clicks[-history:]
            if window:
                s = attr_by_creative[window].sum(axis=0)
                for r in order[j:e]:
                    alt[r] = s
                    n[r] = len(window)
            clicks.extend(int(cre[r]) for r in order[j:e] if click[r])
            j = e
        i = j
    return alt, n


def preference(alt: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``pref`` in (-1, 1): (clicks with the non-default word - clicks with the default) / (n + 2)."""
    alt = np.asarray(alt, np.float64)
    n = np.asarray(n, np.float64)[..., None]
    return (2 * alt - n) / (n + 2)


class Selector:
    """The fitted selector: ``b``, ``w`` (A,), ``W`` (R, A), ``v`` (A,)."""

    def __init__(self, b: float, w: np.ndarray, W: np.ndarray, v: np.ndarray) -> None:
        self.b, self.w, self.W, self.v = float(b), np.asarray(w), np.asarray(W), np.asarray(v)

    @staticmethod
    def fit(attrs: np.ndarray, regions: np.ndarray, alt: np.ndarray, n: np.ndarray, click: np.ndarray,
            propensity: np.ndarray, cfg: CreativeConfig, seed: int = 0,
            n_regions: int | None = None, device: torch.device | None = None) -> "Selector":
        """Fit on logged impressions: ``attrs`` (N, A) of the shown creative, ``regions`` (N,), the user
        context ``alt``/``n`` (:func:`user_context`), ``click`` (N,) and the shown creative's logged
        ``propensity`` (N,). ``seed`` sets the initialisation and the minibatch order. ``device``
        (None: the CPU): where it is fitted; the initial values and the minibatch order are drawn on
        the host either way (the same seed, the same draws), the fitted weights come back there."""
        from mmrank.device import to_device

        dev = device if device is not None else torch.device("cpu")
        propensity = np.asarray(propensity, np.float64)
        if len(propensity) and (propensity <= 0).any():
            raise DataError(f"row {int(np.flatnonzero(propensity <= 0)[0])}: propensity must be > 0 for a "
                            "shown creative", file="creative_log.parquet", column="propensity")
        n_regions = int(n_regions if n_regions is not None else (regions.max() + 1 if len(regions) else 1))
        gen = torch.Generator().manual_seed(int(seed))
        a = attrs.shape[1]
        x = to_device(torch.as_tensor(attrs, dtype=torch.float32), dev)
        r = to_device(torch.as_tensor(np.asarray(regions, np.int64)), dev)
        p = to_device(torch.as_tensor(preference(alt, n), dtype=torch.float32), dev)
        y = to_device(torch.as_tensor(np.asarray(click, np.float32)), dev)
        wt = to_device(torch.as_tensor(np.minimum(1.0 / np.maximum(propensity, 1e-12), cfg.weight_clip),
                                       dtype=torch.float32), dev)
        wt = wt / wt.mean() if len(wt) else wt
        params = {"b": torch.zeros(1), "w": 0.01 * torch.randn(a, generator=gen),
                  "W": 0.01 * torch.randn(n_regions, a, generator=gen),
                  "v": 0.01 * torch.randn(a, generator=gen)}
        params = {k: to_device(t, dev) for k, t in params.items()}
        for t in params.values():
            t.requires_grad_(True)
        if len(y):
            params["b"].data.fill_(float(np.log((y.mean().item() + 1e-3) / (1 - y.mean().item() + 1e-3))))
        opt = torch.optim.Adam(params.values(), lr=cfg.lr)
        for _ in range(cfg.epochs):
            perm = to_device(torch.randperm(len(y), generator=gen), dev)
            for s in range(0, len(y), cfg.batch_size):
                idx = perm[s:s + cfg.batch_size]
                coef = params["w"] + params["W"][r[idx]] + params["v"] * p[idx]
                logit = params["b"] + (x[idx] * coef).sum(-1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[idx], weight=wt[idx])
                loss = loss + 1e-4 * (params["W"] ** 2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        out = {k: t.detach().cpu().numpy().astype(np.float64) for k, t in params.items()}
        return Selector(out["b"][0], out["w"], out["W"], out["v"])

    def contributions(self, attrs: np.ndarray, regions: np.ndarray, alt: np.ndarray,
                      n: np.ndarray) -> np.ndarray:
        """Per-attribute log-odds contribution (..., K, A) of each creative ``attrs`` (B, K, A) for
        impressions with ``regions`` (B,) and context ``alt`` (B, A), ``n`` (B,)."""
        regions = np.clip(np.asarray(regions, np.int64), 0, len(self.W) - 1)
        coef = self.w + self.W[regions] + self.v * preference(alt, n)        # (B, A)
        return np.asarray(attrs, np.float64) * coef[:, None, :]

    def scores(self, attrs, regions, alt, n) -> np.ndarray:
        """Click log-odds (B, K) of each impression's K creatives."""
        return self.b + self.contributions(attrs, regions, alt, n).sum(-1)

    def choose(self, attrs, regions, alt, n) -> np.ndarray:
        """Index (B,) of the best creative of each impression (ties: the lowest index, the default)."""
        return np.argmax(self.scores(attrs, regions, alt, n), axis=1)

    def to_dict(self) -> dict:
        return {"b": self.b, "w": self.w.tolist(), "W": self.W.tolist(), "v": self.v.tolist(),
                "attributes": NAMES}

    @classmethod
    def from_dict(cls, d: dict) -> "Selector":
        return cls(d["b"], np.asarray(d["w"]), np.asarray(d["W"]), np.asarray(d["v"]))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Selector":
        path = Path(path)
        if not path.exists():
            raise DataError("no selector here (run `mmrank creative compare` first)", file=str(path))
        return cls.from_dict(json.loads(path.read_text()))


def words(x) -> dict[str, str]:
    """A creative's attribute words from its 0/1 vector (A,)."""
    return {a: ATTRIBUTES[a][int(v)] for a, v in zip(NAMES, x)}


def explain(choice: dict[str, str], default: dict[str, str], user_context: dict,
            contributions: dict[str, float] | None = None) -> str:
    """Why ``choice`` rather than ``default`` (both ``{attribute: word}``, e.g. ``{"background": "dark",
    ...}``), in words built from an attribute that differs between them and the user's recent clicks.

    ``user_context``: ``{"clicks": [{attribute: word}, ...]}`` (the user's last creative clicks,
    oldest first; may be empty) and optionally ``"region"``. ``contributions``: the model's log-odds
    gain of each attribute's chosen word (breaks ties between differing attributes). The attribute
    named is the differing one most supported by the recent clicks, then by the model.

    Returns e.g. ``"dark background: 3 of your last 5 clicks were on dark photos"``."""
    for name, part in (("choice", choice), ("default", default)):
        unknown = [a for a in part if a not in ATTRIBUTES or part[a] not in ATTRIBUTES[a]]
        if unknown:
            raise DataError(f"{name}: unknown attribute or word {unknown[0]!r}={part.get(unknown[0])!r}")
    clicks = list(user_context.get("clicks", []))
    differ = [a for a in NAMES if choice.get(a, ATTRIBUTES[a][0]) != default.get(a, ATTRIBUTES[a][0])]
    if not differ:
        return "default creative kept: no other look is predicted to do better for you"
    contributions = contributions or {}
    helped = [a for a in differ if contributions.get(a, 0.0) > 0] or differ

    def hits(a: str) -> int:
        return sum(c.get(a, ATTRIBUTES[a][0]) == choice[a] for c in clicks)

    best = max(helped, key=lambda a: (hits(a), contributions.get(a, 0.0), -NAMES.index(a)))
    label, photos = _WORDS[(best, choice[best])]
    where = f" in region {user_context['region']}" if "region" in user_context else ""
    if clicks and 2 * hits(best) >= len(clicks):
        return f"{label}: {hits(best)} of your last {len(clicks)} clicks were on {photos}"
    if clicks:
        return (f"{label}: shoppers{where} click it more in the creative log ({hits(best)} of your last "
                f"{len(clicks)} clicks were on {photos})")
    return (f"{label}: you have no creative clicks yet, so this pick follows what shoppers{where} "
            "clicked in the creative log")
