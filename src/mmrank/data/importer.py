"""`mmrank data import`: a team's own catalog and logs (or a public data set) -> a run directory.

A *source* (a preset for a public format, or a column mapping, see :mod:`mmrank.data.presets`) reads
the files (:mod:`mmrank.data.readers`: Parquet, CSV or JSON Lines) and returns a
:class:`~mmrank.data.source.Source`: items and events in mmrank's column names, typed, each row
remembering its file and row. :func:`import_source` is the pipeline, one step a function:

1. :func:`known_items`: events naming unknown items are kept out, counted by source row (the first few
   row numbers listed), or stop the import with ``strict``;
2. :func:`mmrank.data.import_items.item_table`: duplicate ids and undecodable photos stop the import;
   what the data lacks is filled and counted (a title from the category, a grey photo, price 0,
   ``created_at`` = the item's first event);
3. :func:`mmrank.data.import_events.events_table`: one rule for repeated events; requests kept,
   derived (an impression log without request ids) or made (a log without impressions: the item and
   ``negatives_per_positive`` items sampled from the catalog that existed then, flagged ``sampled``);
4. :func:`choose_split`, :func:`transaction_prices` (a price from the transactions, point-in-time),
   :func:`choose_pairs`, :func:`users_table`;
5. :func:`write_run`: the tables, the derived ones (:func:`mmrank.data.samples.build_derived`, and
   item-to-item pairs when the log has no queries), ``manifest.json``, ``profile.json``
   (:mod:`mmrank.data.profile`) and ``lineage.json`` (the tables' digests, :mod:`mmrank.lineage`) go to a temporary run directory, and only then is ``data/`` moved into
   the run directory. A failed import leaves the run directory as it was.

Whatever is substituted is recorded in ``manifest.json["substitutes"]``
(:mod:`mmrank.data.import_summary`); later stages print it and the report labels results with it.

Example::

    >>> from mmrank.data.importer import import_data
    >>> summary = import_data("runs/hm", preset="hm", items="articles.parquet",
    ...                       events="transactions_train.csv", images="images/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrank.data.config import DataConfig
from mmrank.data.import_events import events_table, item_to_item_pairs
from mmrank.data.import_items import item_table
from mmrank.data.import_summary import substitutes, summarise
from mmrank.data.source import Source
from mmrank.errors import DataError


class _Phases:
    """A one-line status of the import's current phase on stderr (rich), when asked for."""

    def __init__(self, enabled: bool) -> None:
        self.status = None
        if enabled:
            from rich.console import Console

            self.status = Console(stderr=True).status("import")
            self.status.start()

    def __call__(self, text: str) -> None:
        if self.status is not None:
            self.status.update(f"import: {text}")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


def import_source(run: str | Path, src: Source, cfg: DataConfig | None = None, *,
                  replace: bool = False, strict: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write ``src`` into ``run/data`` (see the module docstring); returns the summary (also in the
    manifest). Nothing is written to ``run`` unless every step succeeds. ``strict``: an event naming
    an unknown item stops the import (one line naming its file, row and column) instead of being
    counted and kept out."""
    phase = _Phases(progress)
    try:
        return _import_source(Path(run), src, cfg or DataConfig(), replace, strict, phase)
    finally:
        phase.stop()


def _import_source(run: Path, src: Source, cfg: DataConfig, replace: bool, strict: bool,
                   phase: _Phases) -> dict[str, Any]:
    if (run / "data").exists() and not replace:
        raise DataError(f"{run}/data exists: import into a new run directory, or pass --replace",
                        file=str(run / "data"))
    known, unknown = known_items(src, strict)
    phase(f"checking {src.items.num_rows} items and their photos")
    first_ts, fallback = first_seen(src)
    items, item_counts, photos = item_table(src, first_ts, fallback, cfg.check_images)
    vectors = None
    if src.vectors is not None:  # checked against the catalog before anything is written
        from mmrank.data.import_vectors import check_local_store, match_vectors, vectors_version

        check_local_store(run)

        phase(f"matching {len(src.vectors.matrix)} item vectors to the catalog")
        v_ids, v_mat, v_summary = match_vectors(src.vectors, items)
        vectors = (v_ids, v_mat, {**v_summary, "version": vectors_version(src.vectors)})
    phase(f"arranging {int(known.sum())} events into lists")
    events, list_info = events_table(src, known, items, cfg)
    split_ts = choose_split(src, events, cfg)
    tx = paid(src, known)
    items, item_counts = transaction_prices(tx, items, item_counts, split_ts)
    pairs_kind, has_queries = choose_pairs(events, cfg)
    user_tbl = users_table(src, events)
    summary = summarise(src, items, events, user_tbl.num_rows, item_counts=item_counts, photos=photos,
                        unknown=unknown, list_info=list_info, split_ts=split_ts, has_queries=has_queries)
    subs = substitutes(src, cfg, pairs_kind, item_counts, items.num_rows, list_info)
    if vectors is not None:
        summary["vectors"] = vectors[2]
        if vectors[2]["items_without_vector"]:
            subs["vectors"] = (f"{vectors[2]['items_without_vector']} of {items.num_rows} items have no "
                               f"vector in {vectors[2]['file']}: the CTR models give them the zero vector "
                               "(as an unknown item) and search never returns them")
    tables = {"items": items, "events": events, "users": user_tbl, "query_images": src.query_images}
    write_run(run, tables, summary, subs, src, cfg, split_ts, pairs_kind, tx, phase)
    if vectors is not None:
        from mmrank.data.import_vectors import write_vectors

        phase(f"writing {len(vectors[1])} item vectors as the embedding table")
        written = write_vectors(run, vectors[0], vectors[1], vectors[2]["version"], vectors[2])
        summary["vectors"]["index"] = written["index"]
    from mmrank.config import record

    record(run, "data", cfg.model_copy(update={"split_ts": split_ts}))
    summary["substitutes"] = subs
    return summary


def known_items(src: Source, strict: bool) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Which events name a catalog item; the source rows of those that do not, by file (a source row
    that became two events counts once). ``strict``: the first such row stops the import."""
    ev_ids = src.events.column("item_id").to_numpy().astype(np.int64)
    known = np.isin(ev_ids, src.items.column("item_id").to_numpy().astype(np.int64))
    rows: dict[str, list[int]] = {f: list(r) for f, r in src.unknown_item_rows.items()}
    for fi in np.unique(src.events_file[~known]):
        f = src.files[int(fi)]
        rows[f] = sorted(set(rows.get(f, [])) | set(src.events_row[(src.events_file == fi) & ~known].tolist()))
    if strict and rows:
        f, r = next(iter(rows.items()))
        n = sum(map(len, rows.values()))
        raise DataError(f"the item is not in the catalog (--strict; {n} such row{'s' if n != 1 else ''})",
                        file=f, row=r[0], column=src.event_columns.get("item_id", "item_id"))
    if not known.any():
        raise DataError("no event names a known item: check the item id columns of both files",
                        file=src.files[int(src.events_file[0])] if len(ev_ids) else None)
    return known, rows


def first_seen(src: Source) -> tuple[dict[int, int], int]:
    """Each item's first event time (its ``created_at`` when the catalog has none), and the log's first."""
    ev_ids = src.events.column("item_id").to_numpy().astype(np.int64)
    ts = src.events.column("ts").to_numpy().astype(np.int64)
    if not len(ev_ids):
        return {}, 0
    o = np.lexsort((ts, ev_ids))
    starts = np.r_[True, ev_ids[o][1:] != ev_ids[o][:-1]]
    return dict(zip(ev_ids[o][starts].tolist(), ts[o][starts].tolist())), int(ts.min())


def choose_split(src: Source, events: pa.Table, cfg: DataConfig) -> int:
    """``data.split_ts``, else the preset's, else the (1 - test_share) quantile of the impressions' ts."""
    if cfg.split_ts is not None:
        return int(cfg.split_ts)
    if src.split_ts is not None:
        return int(src.split_ts)
    ts = events.column("ts").to_numpy()
    imp = pc.equal(events.column("event"), "impression").to_numpy(zero_copy_only=False)
    split_ts = int(np.quantile(ts[imp], 1.0 - cfg.test_share, method="higher")) if imp.any() else 0
    return max(split_ts, int(ts.min()) + 1)


def choose_pairs(events: pa.Table, cfg: DataConfig) -> tuple[str, bool]:
    """The pre-training pairs' kind (``data.pairs``; 'auto': queries when a purchase has one) and
    whether the log has queries at all."""
    has_query = pc.invert(pc.and_(pc.is_null(events.column("query_text")),
                                  pc.is_null(events.column("query_image"))))
    has_queries = bool(pc.sum(has_query).as_py() or 0)
    purchases_with_query = bool(pc.any(pc.and_(pc.equal(events.column("event"), "purchase"), has_query)).as_py())
    kind = cfg.pairs
    if kind == "auto":
        kind = "queries" if purchases_with_query else "item-to-item"
    if kind == "queries" and not purchases_with_query:
        raise DataError("data.pairs is 'queries' but no purchase in the log has a query "
                        "(query_text or query_image); use 'item-to-item' or 'auto'")
    return kind, has_queries


def paid(src: Source, known: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(item, ts, price) of every purchase with a price, when the log has the price paid and the
    catalog has no price of its own; else None."""
    if "price" not in src.events.column_names or "price" in src.items.column_names:
        return None
    ev = src.events.filter(pa.array(known))
    price = ev.column("price").to_numpy(zero_copy_only=False).astype(np.float64)
    m = pc.equal(ev.column("event"), "purchase").to_numpy(zero_copy_only=False) & ~np.isnan(price)
    return ev.column("item_id").to_numpy()[m], ev.column("ts").to_numpy()[m], price[m]


def mean_paid_before(tx: tuple[np.ndarray, np.ndarray, np.ndarray], item: np.ndarray,
                     ts: np.ndarray) -> np.ndarray:
    """The mean price paid for ``item`` strictly before ``ts`` (each pair); NaN where none was."""
    t_item, t_ts, t_price = tx
    keys = np.unique(np.r_[t_item, item])
    tk = (np.searchsorted(keys, t_item).astype(np.int64) << 32) | t_ts.astype(np.int64)
    o = np.argsort(tk, kind="stable")
    tk, cum = tk[o], np.r_[0.0, np.cumsum(t_price[o])]
    q_item = np.searchsorted(keys, item).astype(np.int64) << 32
    lo = np.searchsorted(tk, q_item, side="left")
    hi = np.searchsorted(tk, q_item | ts.astype(np.int64), side="left")
    n = hi - lo
    return np.where(n > 0, (cum[hi] - cum[lo]) / np.maximum(n, 1), np.nan)


def transaction_prices(tx: tuple[np.ndarray, np.ndarray, np.ndarray] | None, items: pa.Table,
                       counts: dict[str, int], split_ts: int) -> tuple[pa.Table, dict[str, int]]:
    """Items without a catalog price, when the log has the price paid: the mean price of the item's
    purchases before the train/test split (no test-period price reaches the catalog; the lists take
    each row's price before its own time, :func:`lists_prices`)."""
    if tx is None:
        return items, counts
    ids = items.column("item_id").to_numpy()
    price = mean_paid_before(tx, ids, np.full(len(ids), split_ts, np.int64))
    counts = dict(counts, without_price=int(np.isnan(price).sum()))
    idx = items.column_names.index("price")
    return items.set_column(idx, "price", pa.array(np.nan_to_num(price, nan=0.0))), counts


def lists_prices(tx: tuple[np.ndarray, np.ndarray, np.ndarray], data: Path) -> None:
    """Rewrite ``lists.parquet``'s prices point-in-time: each candidate's mean price paid before the
    list's time (0 when it was never bought before)."""
    from mmrank.data.io import write_table

    path = data / "lists.parquet"
    lists = pq.read_table(path)
    if not lists.num_rows:
        return
    items = lists.column("item_ids").combine_chunks()
    ts = np.repeat(lists.column("ts").to_numpy(), pc.list_value_length(items).to_numpy())
    price = np.nan_to_num(mean_paid_before(tx, items.flatten().to_numpy(), ts), nan=0.0)
    prices = pa.ListArray.from_arrays(items.offsets, pa.array(price, pa.float64()))
    idx = lists.column_names.index("prices")
    write_table(lists.set_column(idx, lists.schema.field(idx), prices), path)


def users_table(src: Source, events: pa.Table) -> pa.Table:
    """One row per user of the events: the region of their first event, and the source's user columns."""
    u_ids, u_first = np.unique(events.column("user_id").to_numpy(), return_index=True)
    regions = events.column("region").to_numpy()[u_first]
    out = pa.table({"user_id": pa.array(u_ids), "region": pa.array(regions.astype(np.int16))})
    users = src.users
    if users is None or not users.num_rows:
        return out
    extra = {c: users.column(c) for c in users.column_names if c not in ("user_id", "region")}
    uid = users.column("user_id").to_numpy()
    o = np.argsort(uid)
    pos = np.clip(np.searchsorted(uid[o], u_ids), 0, len(uid) - 1)
    hit = uid[o][pos] == u_ids
    take = pc.if_else(pa.array(hit), pa.array(o[pos]).cast(pa.int64()), pa.scalar(None, pa.int64()))
    for c, a in extra.items():
        out = out.append_column(c, a.combine_chunks().take(take))
    return out


def _manifest(src: Source, summary: dict[str, Any], subs: dict[str, str], cfg: DataConfig,
              split_ts: int) -> dict[str, Any]:
    return {
        "simulated": False, "imported": True,
        "source": f"imported ({src.name}) from {', '.join(src.files)}", "preset": src.name,
        "counts": summary["counts"], "ctr": summary["rates"]["click_per_impression"], "oracle_auc": None,
        "split_ts": split_ts, "new_item_ts": split_ts, "history_len": cfg.history_len,
        "substitutes": subs, "import": summary,
    }


def write_run(run: Path, tables: dict[str, pa.Table | None], summary: dict[str, Any], subs: dict[str, str],
              src: Source, cfg: DataConfig, split_ts: int, pairs_kind: str,
              tx: tuple[np.ndarray, np.ndarray, np.ndarray] | None, phase: _Phases) -> None:
    """Write the tables, the derived ones and the manifest and profile to a temporary run directory,
    then move its ``data/`` into ``run`` (the old one goes only once the new one is in place)."""
    from mmrank.data.io import write_table
    from mmrank.data.profile import profile_run
    from mmrank.data.samples import build_derived

    run.parent.mkdir(parents=True, exist_ok=True)
    tmp = run.parent / f".{run.name}.import-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        data = tmp / "data"
        data.mkdir(parents=True)
        phase("writing items, events and users")
        for name, table in tables.items():
            if table is not None:
                write_table(table, data / f"{name}.parquet", **({"row_group_size": 2048} if name == "items" else {}))
        phase("building pairs, CTR samples and lists")
        derived = build_derived(tmp, split_ts, cfg.history_len, cfg.start_ts)
        if tx is not None:
            lists_prices(tx, data)
        if pairs_kind == "item-to-item":
            pairs = item_to_item_pairs(tables["events"], tables["items"], split_ts)
            write_table(pairs, data / "pairs.parquet")
            derived["pairs"] = pairs.num_rows
        summary["counts"].update(derived)
        (data / "manifest.json").write_text(json.dumps(_manifest(src, summary, subs, cfg, split_ts),
                                                       indent=2, sort_keys=True, default=int))
        phase("profiling")
        summary["profile"] = profile_run(tmp)
        (data / "profile.json").write_text(json.dumps(summary["profile"], indent=2, sort_keys=True))
        from mmrank.lineage import stamp_data

        stamp_data(data)  # the tables' digests, hashed once here (data/lineage.json)
        run.mkdir(parents=True, exist_ok=True)
        old = run / f".data.old-{os.getpid()}"
        if (run / "data").exists():
            os.replace(run / "data", old)
        os.replace(data, run / "data")
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def substitutes_of(run: str | Path) -> dict[str, str]:
    """What the run's data lacked and what stands in for it (``manifest.json["substitutes"]``)."""
    p = Path(run) / "data" / "manifest.json"
    if not p.exists():
        return {}
    try:
        return dict(json.loads(p.read_text()).get("substitutes") or {})
    except (ValueError, AttributeError):
        return {}


def import_data(run: str | Path, *, items: str | Path | None = None, events: str | Path | None = None,
                images: str | Path | None = None, queries: str | Path | None = None,
                mapping: str | Path | None = None, preset: str | None = None,
                cfg: DataConfig | None = None, replace: bool = False, strict: bool = False,
                progress: bool = False, item_vectors: str | Path | None = None,
                vector_ids: str | Path | None = None, vector_id_column: str = "item_id",
                vector_column: str = "embedding") -> dict[str, Any]:
    """Read the files with a preset or a mapping, then :func:`import_source`.

    ``item_vectors``: a Parquet file (``vector_id_column`` + ``vector_column``) or a ``.npy`` matrix
    (row order: ``vector_ids``, else the catalog's rows) that becomes the run's embedding table
    (:mod:`mmrank.data.import_vectors`); it replaces the vectors a preset brings."""
    from mmrank.data.presets import load_source

    if vector_ids is not None and item_vectors is None:
        raise DataError("--vector-ids names the rows of --item-vectors; give --item-vectors too",
                        file=str(vector_ids))
    src = load_source(preset=preset, mapping=mapping, items=items, events=events, images=images,
                      queries=queries)
    if item_vectors is not None:
        from mmrank.data.import_vectors import read_vectors

        src.vectors = read_vectors(item_vectors, ids=vector_ids, id_column=vector_id_column,
                                   vector_column=vector_column)
    return import_source(run, src, cfg, replace=replace, strict=strict, progress=progress)
