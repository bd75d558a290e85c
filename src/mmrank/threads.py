"""The one owner of thread settings: torch's intra-op threads and FAISS's OpenMP threads.

Every stage, CLI and server sets thread counts through here, so a reader finds the policy in one
place and a server can pin it once at start-up (``configure``) without a library call deep in a stage
changing it behind its back.

Measured on the 2-core machine (see ``benchmarks/``): on an oversubscribed machine (load average >=
cores) OpenMP spin-waiting makes two threads slower than one, for a single item or a few queries.

Example::

    >>> from mmrank.threads import configure, limited
    >>> configure(2)                       # torch + FAISS: 2 threads from now on   # doctest: +SKIP
    >>> with limited(1):                   # one thread inside this block only     # doctest: +SKIP
    ...     store.ingest(item)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine_busy() -> bool:
    """True when the 1-minute load average is at least the number of cores."""
    try:
        return os.getloadavg()[0] >= cores()
    except OSError:  # pragma: no cover
        return False


def get() -> int:
    """torch's intra-op thread count."""
    import torch

    return torch.get_num_threads()


def configure(threads: int | None, *, faiss: bool = True) -> int:
    """Set torch's (and FAISS's) thread count to ``threads`` (None: leave as is). Returns the
    previous torch count."""
    import torch

    before = torch.get_num_threads()
    if threads is None:
        return before
    if threads < 1:
        from mmrank.errors import ConfigError

        raise ConfigError(f"threads: expected >= 1, got {threads}")
    torch.set_num_threads(int(threads))
    if faiss:
        set_faiss(int(threads))
    return before


def set_faiss(threads: int) -> int:
    """Set FAISS's OpenMP threads; returns the previous count (0 if FAISS is absent)."""
    try:
        import faiss
    except ImportError:  # pragma: no cover
        return 0
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    return before


@contextmanager
def limited(threads: int | None) -> Iterator[None]:
    """torch uses ``threads`` inside the block (None: unchanged), the previous count after it."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def faiss_limited(threads: int) -> Iterator[None]:
    """FAISS uses ``threads`` OpenMP threads inside the block."""
    before = set_faiss(threads)
    try:
        yield
    finally:
        if before:
            set_faiss(before)


def for_busy_machine(threads: int) -> int:
    """``threads``, or 1 when the machine is oversubscribed (measured faster there)."""
    return 1 if machine_busy() else threads


SERVING_SWITCH_INTERVAL = 0.0005


def serving_switch_interval(seconds: float = SERVING_SWITCH_INTERVAL) -> float:
    """Shorten the interpreter's GIL switch interval (default 5 ms) for a server: a request hands
    work between the event loop and forward threads several times, and each hand-off can otherwise
    wait a whole interval. Returns the previous interval."""
    import sys

    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    return before


def reuse_freed_memory(limit_bytes: int = 256 << 20) -> bool:
    """Keep freed blocks up to ``limit_bytes`` in the process heap (glibc ``mallopt``), for a server.

    By default glibc serves each allocation over ~128 KiB-32 MiB with a fresh ``mmap`` and returns
    it on free, so every forward of a large batch page-faults its intermediate tensors in again
    (``benchmarks/serve_latency.py`` measures the server with this setting).
    Returns False where there is no glibc (nothing changed).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, int(limit_bytes))
                    and libc.mallopt(m_trim_threshold, int(limit_bytes)))
    except (OSError, AttributeError):
        return False
