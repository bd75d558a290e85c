"""Helpers of the test suite (and of benchmarks that need a small, real input), in one place.

* :mod:`mmrank.testing.ctr`: synthetic CTR samples with a known multimodal signal.
* :mod:`mmrank.testing.items`: a small photographed catalog (the store's tests).
* :mod:`mmrank.testing.lists`: a tiny hand-made search-lists run (re-ranking).
* :mod:`mmrank.testing.markets`: a micro synthetic market; the real catalog under ``shared/``.
* :mod:`mmrank.testing.presets`: the public-format fixtures (photos drawn), tiny stage settings,
  `mmrank` in a fresh process.
* :mod:`mmrank.testing.pretrain`: controlled retrieval features and pairs; a tiny random CLIP.

Other stages keep test inputs beside their code until they move here: ``mmrank.testing.serving``,
``mmrank.testing.ctr``, ``mmrank.store.tiny_encoder``.
"""
