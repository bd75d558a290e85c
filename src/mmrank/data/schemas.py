"""Arrow schemas of the tables every stage shares.

Times are int64 seconds (``ts``, ``created_at``): since the Unix epoch for real logs, since the start of
the simulation for the synthetic market. Each schema lists the columns a table must have; extra columns
(attributes of a real catalog, say) are kept and passed along.

Tables:

* ``ITEMS``: one row per item. ``image`` holds JPEG/PNG bytes, or ``image_path`` a path (relative to the
  items file) to one; at least one of the two is set per row. ``category`` is the item's leaf category;
  further attribute columns (``article_type``, ``colour``, ...) are free.
* ``EVENTS``: one row per event of a shown list: ``impression`` for every shown item, and ``click``,
  ``cart``, ``purchase`` for what the user did with it. The request's query is either text
  (``query_text``) or an opaque id of a query photo (``query_image``, a key of ``QUERY_IMAGES``);
  display (query-free) requests have neither. ``surface`` (optional, ``display`` | ``search``) says
  where the list was shown; a log without it is all ``search``.
* ``QUERY_IMAGES``: the photos users searched with, by opaque id (the id never names an item).
* ``CANDIDATES``: optional, the candidate set each search request retrieved, in the production order,
  with the production score: what lets a re-ranker see items that were retrieved but not shown.
* ``PAIRS``: <query, purchased item> pairs for contrastive pre-training, with hard negatives (clicked but
  not bought in the same request).
* ``CTR_SAMPLES``: one row per impression with the user's point-in-time behaviour sequence: at most L
  clicks strictly before ``ts``, most recent last.
* ``LISTS``: one row per search request for re-ranking: every retrieved candidate in the logged
  production order (``positions`` -1 for a candidate retrieved but not shown), with its production
  score, price, category, sales (purchases of the item strictly before ``ts``) and labels (0 where not
  shown), and the user's point-in-time behaviour (last L clicks strictly before ``ts``, any surface).
"""

from __future__ import annotations

import pyarrow as pa

EVENT_TYPES = ("impression", "click", "cart", "purchase")

# L: the most recent clicks a behaviour sequence keeps (``history_len`` in every config and signature).
HISTORY_LEN = 50

ITEMS = pa.schema([
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
    pa.field("image", pa.binary()),
    pa.field("image_path", pa.string()),
    pa.field("category", pa.string(), nullable=False),
    pa.field("price", pa.float64(), nullable=False),
    pa.field("created_at", pa.int64(), nullable=False),
])
# Columns an items file may leave out (it must still have one of the two image columns).
ITEMS_OPTIONAL = ("image", "image_path")

EVENTS = pa.schema([
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("request_id", pa.int64(), nullable=False),
    pa.field("position", pa.int16(), nullable=False),
    pa.field("event", pa.string(), nullable=False),
    pa.field("query_text", pa.string()),
    pa.field("query_image", pa.string()),
    pa.field("region", pa.int16(), nullable=False),
    pa.field("surface", pa.string()),  # optional: "display" | "search" (absent: all "search")
])
# Columns an events file may leave out.
EVENTS_OPTIONAL = ("query_text", "query_image", "surface")
SURFACES = ("display", "search")

QUERY_IMAGES = pa.schema([
    pa.field("query_image", pa.string(), nullable=False),  # opaque id, as in EVENTS.query_image
    pa.field("image", pa.binary(), nullable=False),        # JPEG bytes
])

# The logged candidate set of each search request, in the production order (shown or not).
CANDIDATES = pa.schema([
    pa.field("request_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("prod_score", pa.float32(), nullable=False),
])

USERS = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("region", pa.int16(), nullable=False),
])

PAIRS = pa.schema([
    pa.field("request_id", pa.int64(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("query_modality", pa.string(), nullable=False),  # "text" | "image"
    pa.field("query_text", pa.string()),
    pa.field("query_image", pa.string()),
    pa.field("pos_item_id", pa.int64(), nullable=False),
    pa.field("hard_neg_item_ids", pa.list_(pa.int64()), nullable=False),
    pa.field("split", pa.string(), nullable=False),  # "train" | "test", by time
])

CTR_SAMPLES = pa.schema([
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("request_id", pa.int64(), nullable=False),
    pa.field("position", pa.int16(), nullable=False),
    pa.field("region", pa.int16(), nullable=False),
    pa.field("category_id", pa.int32(), nullable=False),
    pa.field("label", pa.int8(), nullable=False),  # clicked
    pa.field("hist_item_ids", pa.list_(pa.int64()), nullable=False),
    pa.field("hist_category_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("hist_ts", pa.list_(pa.int64()), nullable=False),
    pa.field("split", pa.string(), nullable=False),
])

LISTS = pa.schema([
    pa.field("request_id", pa.int64(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("region", pa.int16(), nullable=False),
    pa.field("query_text", pa.string()),
    pa.field("query_image", pa.string()),
    # Candidates, in the logged production order (descending prod_scores); C of them per request.
    pa.field("item_ids", pa.list_(pa.int64()), nullable=False),
    pa.field("positions", pa.list_(pa.int16()), nullable=False),    # shown slot, -1 = not shown
    pa.field("prod_scores", pa.list_(pa.float32()), nullable=False),
    pa.field("prices", pa.list_(pa.float64()), nullable=False),
    pa.field("sales", pa.list_(pa.int64()), nullable=False),         # purchases strictly before ts
    pa.field("category_ids", pa.list_(pa.int32()), nullable=False),  # as CTR_SAMPLES.category_id
    pa.field("clicks", pa.list_(pa.int8()), nullable=False),
    pa.field("carts", pa.list_(pa.int8()), nullable=False),
    pa.field("purchases", pa.list_(pa.int8()), nullable=False),
    # The user's last L clicks strictly before ts (any surface), most recent last.
    pa.field("hist_item_ids", pa.list_(pa.int64()), nullable=False),
    pa.field("hist_category_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("hist_ts", pa.list_(pa.int64()), nullable=False),
    pa.field("split", pa.string(), nullable=False),
])

TABLES: dict[str, pa.Schema] = {
    "items": ITEMS, "events": EVENTS, "users": USERS, "pairs": PAIRS,
    "ctr_samples": CTR_SAMPLES, "lists": LISTS, "query_images": QUERY_IMAGES,
    "candidates": CANDIDATES,
}
