"""Creatives in the market and an explained creative selector (issue 22, parts 4-6).

* ``mmrank.creative.market``: K renders of each item's photo, their hidden appeal (``R/truth/``) and a
  creative log drawn by a logging policy with known propensities (``R/data/``).
* ``mmrank.creative.selector``: an inverse-propensity-weighted click model over (user context, region,
  creative attributes) that picks one creative per impression; ``explain`` says why in words.
* ``mmrank.creative.evaluate``: evaluation code (the only reader of the creative truth besides the
  generator): expected CTR of default, logged, random, selector and oracle choices.
* ``mmrank.creative.serving``: one choice with its reason, for ``POST /v1/creative``.
* ``mmrank.creative.config`` / ``mmrank.creative.stage`` / ``mmrank.creative.cli``: settings, the stage
  functions, `mmrank creative generate|compare`.
"""
