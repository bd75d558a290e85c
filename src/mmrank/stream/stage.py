"""`mmrank stream join`: a run's event stream through the online joiner, into CTR samples.

:func:`make_joiner` builds the joiner a run's batch samples were built with (its manifest's
``split_ts``, ``start_ts`` and ``history_len``; the catalog's categories), so that a consumer (the
near-line CTR trainer) gets rows in the batch layout. :func:`join_run` drives a source through it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from mmrank.data.schemas import HISTORY_LEN
from mmrank.errors import MMRankError
from mmrank.stream.config import StreamConfig
from mmrank.stream.joiner import SAMPLE_SCHEMA, Joiner
from mmrank.stream.sources import ReplaySource, open_source

Progress = Callable[[dict[str, Any]], None]


def run_params(run: str | Path) -> dict[str, int]:
    """``split_ts``, ``start_ts`` and ``history_len`` of a run's batch samples (``R/data/manifest.json``)."""
    path = Path(run) / "data" / "manifest.json"
    if not path.exists():
        raise MMRankError(f"{path}: not found (generate or import the run's data first)")
    m = json.loads(path.read_text())
    if m.get("split_ts") is None:
        raise MMRankError(f"{path}: no 'split_ts'")
    return {"split_ts": int(m["split_ts"]), "start_ts": int(m.get("start_ts") or 0),
            "history_len": int(m.get("history_len") or HISTORY_LEN)}


def make_joiner(run: str | Path, cfg: StreamConfig | None = None) -> Joiner:
    """A :class:`Joiner` for ``run``: its catalog, its manifest's split, burn-in and history length
    (``cfg.history_len`` overrides the last)."""
    from mmrank.data.io import read_table

    cfg = cfg or StreamConfig()
    p = run_params(run)
    items = read_table(Path(run) / "data" / "items.parquet", "items", columns=["item_id", "category"])
    return Joiner(items, split_ts=p["split_ts"], history_len=cfg.history_len or p["history_len"],
                  start_ts=p["start_ts"], window_s=cfg.window_s, lateness_s=cfg.lateness_s)


def join_run(run: str | Path, cfg: StreamConfig | None = None, out: str | Path | None = None,
             progress: Progress | None = None, every_s: float = 0.5) -> dict[str, Any]:
    """Read the run's stream (``cfg.source``) to its end, join it, write the samples to ``out``
    (Parquet) when given; returns the joiner's counts and the throughput. A Redis stream ends when
    no entry came for ``cfg.idle_stop_s``."""
    cfg = cfg or StreamConfig()
    joiner = make_joiner(run, cfg)
    src = open_source(run, cfg.source, cfg=cfg)
    writer = None
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        writer = pq.ParquetWriter(str(out) + ".tmp", SAMPLE_SCHEMA)
    t0 = last = time.perf_counter()
    idle_since: float | None = None
    n_events = 0

    def emit(rb: pa.RecordBatch) -> None:
        if writer is not None and rb.num_rows:
            writer.write_batch(rb)

    try:
        while True:
            batch = src.read()
            if batch is None:
                if isinstance(src, ReplaySource):
                    break
                idle_since = idle_since or time.perf_counter()
                if time.perf_counter() - idle_since >= cfg.idle_stop_s:
                    break
                continue
            idle_since = None
            n_events += len(batch)
            emit(joiner.push(batch.records))
            src.ack(batch.cursor)
            now = time.perf_counter()
            if progress is not None and now - last >= every_s:
                last = now
                progress({"event_ts": joiner.watermark, "lag": src.lag(), "events": n_events,
                          "events_per_s": n_events / (now - t0), "samples": joiner.counts["samples"],
                          "bad": sum(joiner.bad.values())})
        emit(joiner.flush())
    finally:
        if writer is not None:
            writer.close()
        src.close()
    secs = time.perf_counter() - t0
    if out is not None:
        Path(str(out) + ".tmp").replace(out)
    stats = joiner.stats()
    stats.update(source=cfg.source, read=n_events, seconds=round(secs, 3),
                 events_per_s=round(n_events / secs, 1) if secs > 0 else None, cursor=src.cursor(),
                 bad_examples=joiner.bad_examples)
    if progress is not None:
        progress({"event_ts": joiner.watermark, "lag": 0, "events": n_events,
                  "events_per_s": stats["events_per_s"] or 0.0, "samples": joiner.counts["samples"],
                  "bad": stats["bad_total"]})
    return stats
