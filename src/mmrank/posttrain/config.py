"""The settings of `mmrank posttrain` (:class:`PosttrainConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmrank.config import StrictModel


class PosttrainConfig(StrictModel):
    """Behaviour pairs, the adapter and its training.

    Pairs come from clicks strictly before the CTR cutoff (the CTR split's ``split_ts``): co-clicks of
    one session (same user, consecutive clicks less than ``session_gap_s`` apart) and
    <the user's last ``recent_clicks`` clicks, next click>.
    """

    objective: Literal["session", "next", "both"] = Field(
        "both", description="session: co-clicked items of one session; next: <recent clicks, next click>; both: "
                            "the sum of the two InfoNCE losses")
    session_gap_s: int = Field(1800, ge=1, description="a gap this long or longer between two clicks of a "
                               "user starts a new session (seconds)")
    session_window: int = Field(2, ge=1, description="co-click pairs: clicks up to this many steps apart "
                                "within a session")
    recent_clicks: int = Field(5, ge=1, description="next-click pairs: the query is the mean of this many "
                               "latest clicks before the next one")
    hidden: int = Field(256, ge=1, description="the adapter's bottleneck width")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(512, ge=2, description="pairs per step and objective (in-batch negatives)")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(0.07, gt=0, description="initial temperature (learnable, one per loss)")
    max_pairs: int | None = Field(None, ge=1, description="keep the latest N pairs per objective (None: all)")
    seed: int = 0
