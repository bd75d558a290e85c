"""The simulated logs: what each time chunk appends (one row per shown slot or per candidate), and the
whole log as flat arrays sorted by request.

Implements the record the market design's two surfaces leave: every shown slot with its outcome
(click, cart, purchase), its true probabilities and the content part of its click logit, and every
retrieved search candidate with its logged production score and its utilities (for ``R/truth/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmrank.data.market.requests import Requests


@dataclass
class Logged:
    """The simulated logs, as lists of per-chunk arrays (one row per shown slot or per candidate)."""

    slot_req: list = field(default_factory=list)
    slot_pos: list = field(default_factory=list)
    slot_item: list = field(default_factory=list)
    slot_click: list = field(default_factory=list)
    slot_cart: list = field(default_factory=list)
    slot_buy: list = field(default_factory=list)
    slot_p: list = field(default_factory=list)        # (n, 4): p_click, p_cart, p_purchase, p_click attainable
    cand_req: list = field(default_factory=list)
    cand_item: list = field(default_factory=list)
    cand_score: list = field(default_factory=list)
    cand_base: list = field(default_factory=list)     # (n, 3): base_u, base_c, base_v without engagement
    content_part: list = field(default_factory=list)  # (n,) content part of the click logit, shown slots
    slot_user: list = field(default_factory=list)

    def add_slots(self, rows: np.ndarray, shown: np.ndarray, mask: np.ndarray, clicked: np.ndarray,
                  carted: np.ndarray, bought: np.ndarray, p: np.ndarray, content_part: np.ndarray,
                  users: np.ndarray) -> None:
        """Append the shown slots (``mask``) of the requests ``rows`` (B,), lists (B, K)."""
        r, k = np.nonzero(mask)
        self.slot_req.append(rows[r])
        self.slot_pos.append(k.astype(np.int16))
        self.slot_item.append(shown[r, k])
        self.slot_click.append(clicked[r, k])
        self.slot_cart.append(carted[r, k])
        self.slot_buy.append(bought[r, k])
        self.slot_p.append(p[r, k])
        self.content_part.append(content_part[r, k])
        self.slot_user.append(users[r])



def clicks_of(req: Requests, rows: np.ndarray, shown: np.ndarray,
              clicked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, ts, item) of each click in the lists ``shown`` of the requests ``rows``."""
    r, k = np.nonzero(clicked)
    return req.user[rows][r], req.ts[rows][r], shown[r, k]


def concat(parts: list, dtype=None) -> np.ndarray:
    """The chunks ``parts`` end to end (empty: a 0-length array of ``dtype``, float64 by default)."""
    if not parts:
        return np.zeros(0, dtype=dtype or np.float64)
    out = np.concatenate(parts)
    return out.astype(dtype) if dtype is not None else out


@dataclass
class Slots:
    """Every shown slot, sorted by request then position."""

    req: np.ndarray
    pos: np.ndarray
    item: np.ndarray        # catalog row
    click: np.ndarray
    cart: np.ndarray
    buy: np.ndarray
    p: np.ndarray           # (n, 4): p_click, p_cart, p_purchase, p_click attainable
    content: np.ndarray     # content part of the click logit
    user: np.ndarray


@dataclass
class Candidates:
    """Every retrieved search candidate, sorted by request (retrieval order kept within one)."""

    req: np.ndarray
    item: np.ndarray        # catalog row
    score: np.ndarray       # the logged production score
    base: np.ndarray        # (n, 3): base_u, base_c, base_v without engagement


def sort_log(log: Logged) -> tuple[Slots, Candidates]:
    """The whole log as flat arrays: slots by (request, position), candidates by request."""
    slot_req = concat(log.slot_req, np.int64)
    order = np.lexsort((concat(log.slot_pos, np.int16), slot_req))
    slots = Slots(slot_req[order], concat(log.slot_pos, np.int16)[order], concat(log.slot_item, np.int64)[order],
                  concat(log.slot_click, bool)[order], concat(log.slot_cart, bool)[order],
                  concat(log.slot_buy, bool)[order], np.concatenate(log.slot_p)[order],
                  concat(log.content_part)[order], concat(log.slot_user, np.int64)[order])
    cand_req = concat(log.cand_req, np.int64)
    c_order = np.argsort(cand_req, kind="stable")
    cands = Candidates(cand_req[c_order], concat(log.cand_item, np.int64)[c_order],
                       concat(log.cand_score, np.float32)[c_order],
                       np.concatenate(log.cand_base)[c_order] if log.cand_base else np.zeros((0, 3)))
    return slots, cands
