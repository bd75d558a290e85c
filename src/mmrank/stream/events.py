"""One event of the stream, its wire form (string fields, as Redis Streams carry them) and its checks.

An event id is stable and unique within a run: row ``r`` of ``R/data/events.parquet`` is event ``r``;
item ``i`` (row ``i`` of ``R/data/items.parquet``) arriving is event ``ARRIVAL_ID_BASE + i``. Replaying
or producing the same run twice gives the same ids, so a consumer drops duplicates by id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

EVENT_TYPES = ("impression", "click", "cart", "purchase", "item_arrival")
LABEL_TYPES = ("click", "cart", "purchase")
ARRIVAL_ID_BASE = 1 << 48  # arrival ids lie above every events-table row


@dataclass(frozen=True, slots=True)
class Event:
    """One event. ``type`` is one of :data:`EVENT_TYPES`.

    Behaviour events (impression, click, cart, purchase) carry ``user_id``, ``item_id``, ``request_id``,
    ``position``, ``region`` and ``surface`` (``display`` | ``search``; None when the log has no surface
    column, which means all impressions are samples, as in batch). An ``item_arrival`` carries
    ``item_id`` and ``category`` (the others are -1 / None).
    """

    event_id: int
    ts: int
    type: str
    user_id: int = -1
    item_id: int = -1
    request_id: int = -1
    position: int = -1
    region: int = -1
    surface: str | None = None
    category: str | None = None

    def to_fields(self) -> dict[str, str]:
        """The wire form: every field as a string (None fields left out)."""
        out = {"id": str(self.event_id), "ts": str(self.ts), "type": self.type, "item": str(self.item_id)}
        if self.type == "item_arrival":
            if self.category is not None:
                out["category"] = self.category
            return out
        out.update(user=str(self.user_id), req=str(self.request_id), pos=str(self.position),
                   region=str(self.region))
        if self.surface is not None:
            out["surface"] = self.surface
        return out


@dataclass(frozen=True, slots=True)
class BadRecord:
    """An entry that is not a valid event: its id (event id when readable, else the transport's), why,
    and the raw fields."""

    id: str
    reason: str
    raw: Mapping[str, Any] = field(default_factory=dict)


class MalformedEvent(ValueError):
    """A wire record that does not parse as an :class:`Event` (``id`` names it)."""

    def __init__(self, id: str, reason: str) -> None:
        super().__init__(f"event {id}: {reason}")
        self.id, self.reason = id, reason


_BEHAVIOUR_KEYS = ("user", "req", "pos", "region")


def _int(fields: Mapping[str, str], key: str, id: str) -> int:
    if key not in fields:
        raise MalformedEvent(id, f"missing field {key!r}")
    try:
        return int(fields[key])
    except (TypeError, ValueError):
        raise MalformedEvent(id, f"field {key!r}: expected an integer, got {fields[key]!r}") from None


def parse_event(fields: Mapping[Any, Any]) -> Event:
    """An :class:`Event` from its wire form (str or bytes keys and values); raises
    :class:`MalformedEvent` naming the id and the field at fault."""
    f = {(k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    id = str(f.get("id", "?"))
    event_id = _int(f, "id", id)
    ts = _int(f, "ts", id)
    if ts < 0:
        raise MalformedEvent(id, f"field 'ts': negative ({ts})")
    typ = f.get("type")
    if typ not in EVENT_TYPES:
        raise MalformedEvent(id, f"field 'type': expected one of {', '.join(EVENT_TYPES)}, got {typ!r}")
    item = _int(f, "item", id)
    if typ == "item_arrival":
        return Event(event_id, ts, typ, item_id=item, category=f.get("category"))
    user, req, pos, region = (_int(f, k, id) for k in _BEHAVIOUR_KEYS)
    if pos < 0:
        raise MalformedEvent(id, f"field 'pos': negative ({pos})")
    return Event(event_id, ts, typ, user, item, req, pos, region, f.get("surface"))
