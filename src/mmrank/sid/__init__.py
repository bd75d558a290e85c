"""Semantic IDs (issue 25): each item's representation as a short code of discrete tokens by residual
k-means (TIGER's residual quantisation, TorchEasyRec's ``sid_rqkmeans``), learned as ID features by the
``sid`` CTR strategies.

* :mod:`mmrank.sid.build`: :func:`residual_kmeans`, :func:`assign` (codes of new items), the collision
  rule (:func:`disambiguate`) and the usage / reconstruction statistics;
* :mod:`mmrank.sid.stage`: ``mmrank sid build --run R`` on the run's embedding table, the files it
  writes beside the table, and :class:`SidCodes` (codes by item id, with the codebooks for new items).
"""

from mmrank.sid.build import assign, disambiguate, residual_kmeans
from mmrank.sid.config import SidConfig

__all__ = ["SidConfig", "assign", "disambiguate", "residual_kmeans"]
