"""Batch encoding on Ray, for catalogs that outgrow one machine (optional extra ``mmrank[ray]``).

Workers encode batches; the driver stays the one writer of the table and writes each batch as it
comes back, so a killed run resumes exactly as the single-process path does, and the table is the
same (the same encoder applied to the same batches).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mmrank.errors import ConfigError, MMRankError
from mmrank.store.encoding import encode_checked
from mmrank.threads import configure


def _encode_task(encoder, where: str, offset: int, ids: np.ndarray, titles: list, images: list,
                 rows: int):
    configure(1)  # one thread per Ray worker: the workers are the parallelism
    return ids, encode_checked(encoder, titles, images, where, offset), rows


def encode_on_ray(encoder, batches: Iterator,
                  workers: int) -> Iterator[tuple[np.ndarray, np.ndarray | None, int]]:
    """Encode ``(where, offset, ids, titles, images, rows)`` batches on ``workers`` Ray workers.

    Starts a local Ray instance (``num_cpus=workers``) unless one is running, and shuts down what
    it started. Yields ``(ids (B,), vectors (B, D), rows)`` as batches finish
    (``rows``: catalog rows the batch covers, for the progress bar); at most
    ``2 * workers`` batches are in flight.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray-workers needs Ray: pip install 'mmrank[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, object_store_memory=200 << 20)
        started = True
    try:
        task = ray.remote(num_cpus=1)(_encode_task)
        enc_ref = ray.put(encoder)
        inflight: list = []

        def take(n: int):
            nonlocal inflight
            done, inflight = ray.wait(inflight, num_returns=n)
            for ref in done:
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, MMRankError):
                        raise cause from None
                    raise

        for where, offset, ids, titles, images, rows in batches:
            if not len(ids):
                yield ids, None, rows
                continue
            inflight.append(task.remote(enc_ref, where, offset, ids, titles, images, rows))
            if len(inflight) >= 2 * workers:
                yield from take(1)
        while inflight:
            yield from take(1)
    finally:
        if started:
            ray.shutdown()
