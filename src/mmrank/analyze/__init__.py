"""MOON's analyses (issue 21): how pre-training metrics translate into downstream gains, and how
representation quality scales.

* ``mmrank.analyze.exchange``: `mmrank analyze exchange-rate` (Figure 6a: slope, interval, Spearman);
* ``mmrank.analyze.scaling``: `mmrank analyze scaling` (pairs, queue size K, behaviour length L);
* ``mmrank.analyze.fit``: OLS, bootstrap intervals, Spearman, power laws, saturation (NumPy only);
* ``mmrank.analyze.points``: resumable points, one atomic JSON file each;
* ``mmrank.analyze.bench``: one run's encoders and CTR samples loaded once;
* ``mmrank.analyze.config`` / ``mmrank.analyze.cli``: settings and the commands.
"""
