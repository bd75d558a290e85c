"""Which files a block of code opens under a directory (Python's audit hooks), for the tests that
check that training and serving never read ``R/truth/``."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_WATCHED: list[tuple[str, list[str]]] = []   # (root, opened paths) of each open ``opens_under`` block
_INSTALLED = False


def _audit(event: str, args: tuple) -> None:
    if _WATCHED and event == "open" and args and isinstance(args[0], (str, Path)):
        path = str(args[0])
        for root, opened in _WATCHED:
            if path.startswith(root):
                opened.append(path)


@contextmanager
def opens_under(root: str | Path) -> Iterator[list[str]]:
    """``with opens_under(d) as opened: ...``: ``opened`` lists every file opened under ``d`` inside the
    block (one audit hook for the process, added on first use; it cannot be removed, so it does
    nothing outside a block)."""
    global _INSTALLED
    if not _INSTALLED:
        sys.addaudithook(_audit)
        _INSTALLED = True
    entry: tuple[str, list[str]] = (str(root), [])
    _WATCHED.append(entry)
    try:
        yield entry[1]
    finally:
        _WATCHED.remove(entry)
