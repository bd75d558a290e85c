"""Work spread over two processes with a progress bar: the photos the market renders (item photos and
query photos) are the slow, independent part of generating it."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

from rich.progress import Progress


def parallel_map(fn: Callable[[Any], list], chunks: list, total: int, what: str) -> list:
    """``fn`` over ``chunks`` in two worker processes, the results concatenated in order."""
    out: list = []
    with Progress(transient=True) as progress:
        task = progress.add_task(what, total=total)
        with ProcessPoolExecutor(max_workers=2) as pool:
            for part in pool.map(fn, chunks):
                out.extend(part)
                progress.advance(task, len(part))
    return out
