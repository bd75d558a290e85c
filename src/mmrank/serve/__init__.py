"""The ranking service: FastAPI app, bundle loader, request -> batch builder, request batching, page.

* :mod:`mmrank.serve.bundle`: ``load_bundle(run)`` (encoder, table + index, CTR model, re-ranker, all
  of one encoder version).
* :mod:`mmrank.serve.builder`: ``build(queries, bundle)`` (requests -> one CTR batch + its vectors);
  :mod:`mmrank.serve.scoring`: ``run_batch`` (one forward over a batch, split per request).
* :mod:`mmrank.serve.batching`: ``RankBatcher`` (concurrent requests -> one forward, bounded wait).
* :mod:`mmrank.serve.config`: ``Settings`` (every limit and its default); :mod:`mmrank.serve.app`:
  ``create_app(Settings(...))``, assembling :mod:`mmrank.serve.routes` (one router per concern) over
  :mod:`mmrank.serve.state`, :mod:`mmrank.serve.middleware` (body limit, admission queues, metrics) and
  :mod:`mmrank.serve.errors`.
* :mod:`mmrank.serve.limits` (admission queues, token buckets), :mod:`mmrank.serve.images` (the
  image header check), :mod:`mmrank.serve.loadgen` (open- and closed-loop load for the benchmarks).
* :mod:`mmrank.serve.cli`: ``mmrank serve``.
"""

from __future__ import annotations

__all__ = ["create_app", "load_bundle"]


def __getattr__(name: str):  # lazy: importing mmrank.serve must not pull FastAPI or torch
    if name == "create_app":
        from mmrank.serve.app import create_app

        return create_app
    if name == "load_bundle":
        from mmrank.serve.bundle import load_bundle

        return load_bundle
    raise AttributeError(name)
