"""The ranking service: FastAPI app, bundle loader, request -> batch builder, request batching, page.

* :mod:`mmrank.serve.bundle`: ``load_bundle(run)`` (encoder, table + index, CTR model, re-ranker, all
  of one encoder version).
* :mod:`mmrank.serve.builder`: ``build(queries, bundle)`` (requests -> one CTR batch + its vectors).
* :mod:`mmrank.serve.batching`: ``RankBatcher`` (concurrent requests -> one forward, bounded wait).
* :mod:`mmrank.serve.app`: ``create_app(Settings(...))``; :mod:`mmrank.serve.cli`: ``mmrank serve``.
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
