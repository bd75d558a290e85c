"""Typed config of the stream stage (`mmrank stream produce / join`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmrank.config import StrictModel


class StreamConfig(StrictModel):
    """`mmrank stream`: the event source and the online joiner.

    ``window_s`` (default 30 min) is the attribution window: a click, cart or purchase labels the
    impression of its slot (request, position) when it comes at most this long after it. The market
    logs a request's clicks, carts and purchases at the request's own time, so any window >= 0 gives the
    batch labels there; in real logs a click follows its impression within seconds to minutes, and 30
    minutes is the usual session cut (a user idle that long starts a new visit). A longer window delays
    every sample by as much (a sample is emitted once its window and the allowed lateness have passed in
    event time), which costs freshness.
    """

    window_s: int = Field(1800, ge=0, description="attribution window (seconds): a label counts when it "
                          "comes at most this long after its impression")
    lateness_s: int | None = Field(None, ge=0, description="an event older than the watermark (the newest "
                                   "event time seen) minus this is late: counted, logged and dropped "
                                   "(None: window_s)")
    history_len: int | None = Field(None, ge=1, description="clicks per behaviour sequence (None: the run's "
                                    "manifest, else data.schemas.HISTORY_LEN)")
    batch_events: int = Field(4096, ge=1, description="events per source batch")
    arrivals: bool = Field(True, description="replay: an item_arrival event at created_at for every item "
                           "created after the log's first event (earlier ones are the initial catalog)")
    source: Literal["replay", "redis"] = "replay"
    redis_url: str | None = Field(None, description="redis://host:port/db (source redis)")
    stream: str | None = Field(None, description="Redis stream key (None: mmrank:events:<run name>)")
    group: str = Field("mmrank", description="Redis consumer group")
    consumer: str = Field("joiner", description="Redis consumer name (a restart with the same name "
                          "resumes its pending entries)")
    block_ms: int = Field(500, ge=1, description="Redis: how long one read waits for new entries")
    idle_stop_s: float = Field(2.0, ge=0.0, description="Redis: stop when no entry came for this long")

    def lateness(self) -> int:
        return self.window_s if self.lateness_s is None else self.lateness_s
