"""Re-ranking search lists with multimodal fusion: ARMMT (JD.com) and SEQ+MD, with baselines.

* :mod:`mmrank.rerank.data`: lists (Parquet -> CSR arrays), vocabularies, padded list batches.
* :mod:`mmrank.rerank.features`: frozen per-modality item and query representations (cached).
* :mod:`mmrank.rerank.models`: ``ListModel`` composed of :mod:`mmrank.models` blocks; ``MODELS`` by name.
* :mod:`mmrank.rerank.trainer`: training on shown candidates, scoring shown or all candidates.
* :mod:`mmrank.rerank.beam`: the generator-evaluator mode (beam search over lists).
* :mod:`mmrank.rerank.evaluate`: logged-label metrics and the market's evaluator, aggregated over seeds.
* :mod:`mmrank.rerank.artifacts`: ``R/rerank/<model>/`` written and read (``save_model``, ``load_model``).
* :mod:`mmrank.rerank.config` / :mod:`mmrank.rerank.stage` / :mod:`mmrank.rerank.cli`: the stage's
  settings, the stage on a run directory (train, compare, ``demo_stage``), `mmrank rerank ...`.
"""
