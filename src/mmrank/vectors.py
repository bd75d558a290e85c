"""Item vectors: the one L2 normalisation used by the store, the CTR strategies and re-ranking."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def l2_normalise(v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` (N, D) scaled to unit length, as float32; an all-zero row stays zero.

    Example::

        >>> l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
        [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    v = np.asarray(v, dtype=np.float32)
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), EPS)).astype(np.float32)
