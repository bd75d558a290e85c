"""What the server answers about creatives: one creative choice with its reason, for ``POST /v1/creative``
(:class:`CreativeChooser`: the run's creatives and the selector ``mmrank creative compare`` saved,
``R/creative/selector.json``), and what the page at ``/`` shows of them (:class:`CreativeCatalog`: an
item's creatives, a creative's PNG, a logged user's region and recent creative clicks). Reads only
``R/data/`` and ``R/creative/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pyarrow.parquet as pq

from mmrank.creative.selector import NAMES, Creatives, Selector, explain, words
from mmrank.errors import DataError


class UnknownCreative(DataError):
    """An item without creatives, or a creative id the run does not have (the server answers 404)."""


@dataclass
class CreativeCatalog:
    """A run's creatives for the page: each item's creatives with their attribute words, each creative's
    PNG (``R/data/creatives.parquet``'s ``image``, read into memory on the first :meth:`image`), and each
    logged user's region and last creative clicks as of the end of ``R/data/creative_log.parquet``."""

    run: Path
    creatives: Creatives
    history: int = 5
    _images: object = None     # pyarrow BinaryArray, row = position of the creative id in _image_ids
    _image_ids: np.ndarray | None = None
    _users: dict | None = None  # user id -> (region, [creative ids clicked, oldest first])

    @classmethod
    def load(cls, run: str | Path, history: int = 5) -> "CreativeCatalog":
        return cls(Path(run), Creatives.load(run), history)

    def _row(self, item_id: int) -> int:
        cr = self.creatives
        if not 0 <= int(item_id) < 2 ** 63:
            raise UnknownCreative(f"item {item_id} has no creatives", column="item_id")
        pos = int(np.searchsorted(cr.item_ids, np.int64(item_id)))
        if pos >= len(cr.item_ids) or cr.item_ids[pos] != item_id:
            raise UnknownCreative(f"item {item_id} has no creatives", column="item_id")
        return pos

    def item(self, item_id: int) -> list[dict]:
        """The creatives of ``item_id``, default (``k = 0``) first: id, ``k`` and attribute words."""
        pos = self._row(item_id)
        cr = self.creatives
        return [{"creative_id": int(cr.creative_ids[pos, k]), "k": k, "is_default": k == 0,
                 "attributes": words(cr.attrs[pos, k])} for k in range(cr.creative_ids.shape[1])]

    def image(self, creative_id: int) -> bytes:
        """The PNG of ``creative_id``; :class:`UnknownCreative` when the run has no such creative."""
        if self._images is None:
            path = self.run / "data" / "creatives.parquet"
            t = pq.read_table(path, columns=["creative_id", "image"])
            ids = t.column("creative_id").to_numpy()
            order = np.argsort(ids, kind="stable")
            self._image_ids, self._images = ids[order], t.column("image").combine_chunks().take(order)
        ids = self._image_ids
        pos = int(np.searchsorted(ids, creative_id)) if 0 <= int(creative_id) < 2 ** 63 else len(ids)
        if pos >= len(ids) or ids[pos] != creative_id:
            raise UnknownCreative(f"no creative {creative_id} in this run", column="creative_id")
        blob = self._images[pos].as_py()
        if not blob:
            raise UnknownCreative(f"creative {creative_id} has no image", column="creative_id")
        return blob

    def user(self, user_id: int) -> tuple[int, list[int]]:
        """``(region, recent_clicks)`` of a user now: the region of the user's latest impression in the
        creative log (``R/data/users.parquet``'s region when the log has none) and the creative ids of
        the user's last ``history`` clicks in the log, oldest first. :class:`DataError` for an unknown user."""
        if self._users is None:
            data = self.run / "data"
            users: dict[int, tuple[int, list[int]]] = {}
            path = data / "users.parquet"
            if path.exists():
                t = pq.read_table(path, columns=["user_id", "region"])
                for u, r in zip(t.column("user_id").to_numpy(), t.column("region").to_numpy()):
                    users[int(u)] = (int(r), [])
            path = data / "creative_log.parquet"
            if path.exists():
                log = pq.read_table(path, columns=["impression_id", "ts", "user_id", "region", "creative_id",
                                                   "click"]).to_pandas()
                log = log.sort_values(["ts", "impression_id"], kind="stable")
                for u, r in log.groupby("user_id", sort=False)["region"].last().items():
                    users[int(u)] = (int(r), [])
                for u, c in zip(log["user_id"].to_numpy()[log["click"].to_numpy() > 0],
                                log["creative_id"].to_numpy()[log["click"].to_numpy() > 0]):
                    users[int(u)][1].append(int(c))
                for _, clicks in users.values():
                    del clicks[:-self.history]
            self._users = users
        hit = self._users.get(int(user_id))
        if hit is None:
            raise DataError(f"user {user_id} is not a user of this run", column="user_id")
        return hit[0], list(hit[1])


@dataclass
class CreativeChooser:
    creatives: Creatives
    selector: Selector
    history: int = 5

    @classmethod
    def load(cls, run: str | Path, history: int = 5) -> "CreativeChooser":
        return cls(Creatives.load(run), Selector.load(Path(run) / "creative" / "selector.json"), history)

    def choose(self, item_id: int, region: int, recent_clicks: list[int]) -> dict:
        """The best creative of ``item_id`` for a user in ``region`` whose last creative clicks (creative
        ids, oldest first) are ``recent_clicks``; with the reason and every creative's score."""
        cr = self.creatives
        if not -(2 ** 63) <= int(item_id) < 2 ** 63:
            raise DataError(f"item {item_id} has no creatives", column="item_id")
        pos = int(np.searchsorted(cr.item_ids, np.int64(item_id)))
        if pos >= len(cr.item_ids) or cr.item_ids[pos] != item_id:
            raise DataError(f"item {item_id} has no creatives", column="item_id")
        if not 0 <= region < len(self.selector.W):
            raise DataError(f"region {region} is not one of the market's {len(self.selector.W)} regions",
                            column="region")
        clicks = [int(c) for c in recent_clicks][-self.history:]
        bad = [c for c in clicks if not 0 <= c < len(cr.attr_by_creative)]
        if bad:
            raise DataError(f"creative {bad[0]} is not a creative of this run", column="recent_clicks")
        past = cr.attr_by_creative[clicks] if clicks else np.zeros((0, len(NAMES)), np.int8)
        alt, n = past.sum(axis=0)[None], np.array([len(clicks)])
        attrs = cr.attrs[pos][None]
        scores = self.selector.scores(attrs, np.array([region]), alt, n)[0]
        k = int(np.argmax(scores))
        contrib = self.selector.contributions(attrs, np.array([region]), alt, n)[0]
        gain = {a: float(contrib[k, j] - contrib[0, j]) for j, a in enumerate(NAMES)}
        reason = explain(words(cr.attrs[pos, k]), words(cr.attrs[pos, 0]),
                         {"clicks": [words(x) for x in past], "region": region}, gain)
        return {"item_id": int(item_id), "creative_id": int(cr.creative_ids[pos, k]), "k": k,
                "default_creative_id": int(cr.creative_ids[pos, 0]), "attributes": words(cr.attrs[pos, k]),
                "reason": reason, "scores": [float(s) for s in scores]}
