"""Creatives in the market and an explained creative selector (issue 22, parts 4-6).

- :mod:`mmrank.creative.market`: K renders of each item's photo, their hidden appeal (``R/truth/``) and a
  creative log drawn by a logging policy with known propensities (``R/data/``).
- :mod:`mmrank.creative.selector`: an inverse-propensity-weighted click model over (user context, region,
  creative attributes) that picks one creative per impression and explains the pick in words.
- :mod:`mmrank.creative.evaluate`: evaluation code (the only reader of ``R/truth/creatives.parquet``
  besides the generator): expected CTR of default, logged, random, selector and oracle choices.
"""

from mmrank.creative.config import ATTRIBUTES, CreativeConfig
from mmrank.creative.selector import Selector, explain

__all__ = ["ATTRIBUTES", "CreativeConfig", "Selector", "explain"]
