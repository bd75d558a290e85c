"""Post-training (MOON's second stage, between pre-training and the CTR model): a residual adapter on the
frozen pre-trained item vectors, trained by contrastive learning on behaviour before the CTR cutoff.

* :mod:`mmrank.posttrain.config`: :class:`PosttrainConfig`.
* :mod:`mmrank.posttrain.train`: behaviour pairs (:func:`behaviour_pairs`), :class:`ResidualAdapter`,
  :class:`InfoNCELoss` and the loop (:func:`train_adapter`), importable without the stage.
* :mod:`mmrank.posttrain.stage`: ``R/posttrain/`` on a run (:func:`run_posttrain`, :func:`ensure_posttrain`).
"""
