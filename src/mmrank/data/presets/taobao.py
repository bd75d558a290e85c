"""Taobao UserBehavior (Tianchi data set 649): ``UserBehavior.csv``, no header, one row per action::

    user_id,item_id,category_id,behavior_type,timestamp
    1,2268318,2520377,pv,1511544070

``pv`` (a view of the item's page) is a click, ``cart`` a cart, ``buy`` a purchase; ``fav`` is not an
event of mmrank's (counted, not imported). There is no catalog file (items are the ids the log names,
with their category; no titles or photos unless ``--images DIR`` holds ``<item_id>.jpg``), no
impressions (lists are made with sampled negatives) and no queries (item-to-item pre-training pairs).
"""

from __future__ import annotations

from pathlib import Path

from mmrank.data.image_folder import ImageFolder
from mmrank.data.source import Source

MAPPING = {
    "events": {
        "header": ["user_id", "item_id", "category_id", "behavior_type", "timestamp"],
        "columns": {"user_id": "user_id", "item_id": "item_id", "category": "category_id",
                    "event": "behavior_type", "ts": "timestamp"},
        "ts_format": "unix",
        "event_values": {"pv": "click", "cart": "cart", "buy": "purchase", "fav": None},
    },
}


def load(items: Path | None, events: Path, images: ImageFolder | None) -> Source:
    from mmrank.data.presets import from_mapping

    src = from_mapping(MAPPING, items=None, events=events, images=images, name="taobao UserBehavior")
    if items is not None:
        src.notes.append(f"{items}: UserBehavior has no catalog file; --items is not read")
    return src
