"""Typed config of the store stage (`mmrank embed`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmrank.config import StrictModel


class EmbedConfig(StrictModel):
    """`mmrank embed`: the embedding table and its ANN index."""

    batch_size: int = Field(256, ge=1, description="items per encoder batch")
    ray_workers: int = Field(0, ge=0, description="encode on a local Ray instance with N workers")
    backend: Literal["local", "redis"] = "local"
    redis_url: str | None = Field(None, description="redis://host:port/db (backend redis)")
    namespace: str | None = Field(None, description="Redis key prefix")
    exact_below: int = Field(50_000, ge=0, description="exact (flat) ANN index below this many items, "
                             "HNSW above")
    threads: int | None = Field(None, ge=1, description="torch threads")
    reuse_features: bool = Field(True, description="take the backbone outputs pre-training cached for "
                                 "these items (when they are exactly the encoder's) instead of "
                                 "re-encoding the photos and titles")
