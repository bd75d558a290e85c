"""The creative stages as Python functions (the CLI is a thin shell over these).

- :func:`generate`: creatives, their hidden appeal and the creative log of a market run.
- :func:`compare`: train the selector with several seeds and evaluate default, logged, random,
  selector and oracle choices with the evaluator; writes ``R/creative/compare.{json,md}``.
"""

from __future__ import annotations

from pathlib import Path

from mmrank.creative.config import CreativeConfig
from mmrank.creative.market import generate_creatives


def generate(cfg: CreativeConfig, run: str | Path) -> dict:
    """``mmrank creative generate``: see :func:`mmrank.creative.market.generate_creatives`."""
    return generate_creatives(cfg, run)
