"""Settings of ``mmrank sid build``: levels, codes per level and the k-means schedule."""

from __future__ import annotations

from pydantic import Field

from mmrank.config import StrictModel


class SidConfig(StrictModel):
    """Residual k-means: ``levels`` codebooks of ``codes`` codewords each (L x C)."""

    levels: int = Field(3, ge=1, le=8, description="L: tokens per item (one codebook per level)")
    codes: int = Field(64, ge=2, le=4096, description="C: codewords per level")
    niter: int = Field(20, ge=1, description="k-means iterations per level (faiss.Kmeans)")
    nredo: int = Field(3, ge=1, description="k-means runs per level (k-means++ seeds), the best kept")
    seed: int = Field(0, description="k-means seed (level l uses seed + l)")
    max_points_per_centroid: int = Field(256, ge=1, description="faiss subsamples the training set "
                                         "to C x this many points per level")
