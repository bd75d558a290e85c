"""Multimodal representations in the CTR model (Sheng et al., CIKM'24, Sec. 4 and 6.3).

* :mod:`mmrank.ctr.data`: CTR samples (Parquet -> NumPy, CSR histories) and padded mini-batches.
* :mod:`mmrank.ctr.models`: ``MakeModule`` (Eqs. 3-5), ``CtrModel`` (id, vector, simscore, simtier, make,
  simtier+make), composed of :mod:`mmrank.models` blocks over the layers of :mod:`mmrank.models.layers`.
* :mod:`mmrank.ctr.trainer`: ``train`` (the one-epoch rule), ``pretrain_make`` (multi-epoch), ``predict``.
* :mod:`mmrank.ctr.representations`: the run's frozen item vectors and their encoder-version check.
* :mod:`mmrank.ctr.rundata`: a run's samples and vectors in memory (``load_run``), ``fit_strategy``.
* :mod:`mmrank.ctr.evaluate`: AUC, GAUC, LogLoss overall, per frequency group and on new items.
* :mod:`mmrank.ctr.artifacts`: ``R/ctr/<strategy>/`` written and read (``save_model``, ``load_model``).
* :mod:`mmrank.ctr.scoring`: rows that do not come from a file (serving) and ``score``.
* :mod:`mmrank.ctr.config` / :mod:`mmrank.ctr.stage` / :mod:`mmrank.ctr.cli`: the stage's settings, the
  stage on a run directory (train, predict, the Table 3 analogue, ``demo_stage``), `mmrank ctr ...`.
"""
