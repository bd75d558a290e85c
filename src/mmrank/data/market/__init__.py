"""The synthetic market: the embedded default data set, and a ground truth to measure models against.

What drives behaviour is visible the way it is in a shop, and what is hidden stays under ``R/truth/``:

* **Content beyond columns.** Each item has a content vector (:mod:`mmrank.data.content`): a continuous
  part that its photo shows (in synthetic mode a latent rendered into the pixels: shade, proportions,
  trim; on a real catalog, colour and shape statistics of the real photo) and fixed embeddings of the
  coarse columns (type, pattern, style) that titles name. Part of an item's appeal is a function of
  that content; the rest is hidden. Users have a few interest centres in content space, drifting over
  time, and come back to near-duplicates of what they recently clicked.
* **Two surfaces**, as in the papers. *Display* (query-free feeds: the CTR task) and *search* (text or
  photo queries stating what the user wants: the pre-training pairs and the re-ranking lists). A search
  request retrieves about 50 candidates, orders them by a logged production score and shows the top
  10-20; clicks, carts and the one purchase among carted items follow :mod:`mmrank.data.behaviour`,
  with list effects (price comparison, substitution, choice among carted).
* **Regions that differ in kind**: uneven sizes, their own price sensitivity, position decay, weight on
  photos vs titles, taste centres, outside option, list length, and a partly regional assortment.
* **Burn-in**: the first ``burn_in_days`` are simulated (their clicks fill histories) but yield no
  samples, so that active users have histories of realistic length.

With ``catalog`` set, a real catalog's photos, titles and attribute columns are used as they are; users,
prices, arrival times and behaviour are simulated (the manifest says so).

Everything is vectorised per time chunk (a chunk sees the clicks of earlier chunks); the same config,
seed included, gives byte-identical files.

The modules, in the order :func:`generate_market` (:mod:`~mmrank.data.market.pipeline`) calls them:

* :mod:`~mmrank.data.market.config`: the settings (size preset, YAML file, overrides);
* :mod:`~mmrank.data.market.catalog`: the items (rendered, or a real catalog's);
* :mod:`~mmrank.data.market.world`: the hidden world (content, appeal, prices, regions, users' centres);
* :mod:`~mmrank.data.market.calibration`: the intercepts fitted to the target rates by pilot runs;
* :mod:`~mmrank.data.market.requests`: who visits when, on which surface;
* :mod:`~mmrank.data.market.simulation`: the time-chunked simulation, which uses
  :mod:`~mmrank.data.market.retrieval`, :mod:`~mmrank.data.market.queries`,
  :mod:`~mmrank.data.market.tastes`, :mod:`~mmrank.data.market.display` and
  :mod:`~mmrank.data.market.search`, and records into :mod:`~mmrank.data.market.logs`;
* :mod:`~mmrank.data.market.tables`: the public tables under ``R/data/`` (and the derived ones);
* :mod:`~mmrank.data.market.hidden`: the hidden world and the logs' probabilities under ``R/truth/``;
* :mod:`~mmrank.data.market.stats` and :mod:`~mmrank.data.market.manifest`: ``R/data/manifest.json``.
"""

from mmrank.data.market.catalog import synthetic_catalog
from mmrank.data.config import market_config
from mmrank.data.market.pipeline import generate_market

__all__ = ["generate_market", "market_config", "synthetic_catalog"]
