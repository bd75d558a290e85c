"""mmrank: multimodal (image + text) item representations for e-commerce ranking.

Stages (each a subpackage, each reading and writing artifacts in a run directory):
``data`` (schemas, synthetic market, point-in-time samples), ``encoders``, ``pretrain``, ``store``,
``ctr``, ``eval`` and ``report``.
"""

__version__ = "0.1.0"
