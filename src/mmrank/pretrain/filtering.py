"""Dynamic sample filtering (MOON2.0, issue 20 part 5): drop the training pairs that look like noise.

After ``warmup_epochs`` epochs on every pair, at the start of each later epoch the current model
scores every training pair by the cosine of its query and its positive item; the ``share`` of pairs
with the lowest similarity are left out of that epoch (a pair whose item was not what the query
sought sits far from its query once the towers have learned the rest). The filter sees only the
pairs and the model: never ``R/truth/``. The dropped pair rows are kept per epoch so that evaluation
code can measure the filter's precision against the market's noisy-pair flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PairFilter:
    """``select(epoch, rows, similarity)`` -> the rows kept this epoch; ``dropped`` logs the rest.

    Args:
        warmup_epochs: epochs ``0 .. warmup_epochs - 1`` keep every pair.
        share: the share of the training pairs dropped each later epoch (rounded down).

    Example::

        >>> f = PairFilter(warmup_epochs=1, share=0.25)
        >>> f.select(0, np.arange(4), np.array([0.9, 0.1, 0.5, 0.7])).tolist()
        [0, 1, 2, 3]
        >>> f.select(1, np.arange(4), np.array([0.9, 0.1, 0.5, 0.7])).tolist()
        [0, 2, 3]
        >>> f.dropped
        {1: [1]}
    """

    warmup_epochs: int = 1
    share: float = 0.1
    dropped: dict[int, list[int]] = field(default_factory=dict)

    def active(self, epoch: int) -> bool:
        return epoch >= self.warmup_epochs and self.share > 0

    def select(self, epoch: int, rows: np.ndarray, similarity: np.ndarray) -> np.ndarray:
        """Rows (pair-table rows, ``(n,)``) kept in ``epoch``, given each row's query-item
        ``similarity`` ``(n,)``; ties broken by row so the choice is deterministic."""
        rows = np.asarray(rows)
        if not self.active(epoch):
            return rows
        if len(similarity) != len(rows):
            raise ValueError(f"{len(similarity)} similarities for {len(rows)} rows")
        k = int(self.share * len(rows))
        order = np.lexsort((rows, np.asarray(similarity)))  # lowest similarity first
        drop = np.sort(rows[order[:k]])
        self.dropped[int(epoch)] = [int(r) for r in drop]
        return np.setdiff1d(rows, drop, assume_unique=True)

    def dropped_share(self, epoch: int, n_rows: int) -> float:
        """The share of the ``n_rows`` training pairs dropped in ``epoch`` (0 before the warm-up)."""
        return len(self.dropped.get(int(epoch), ())) / max(1, n_rows)
