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


def ctr_train_truth_opens(run: str | Path, strategy: str, config: str | Path) -> list[str]:
    """Train ``strategy`` on ``run`` through `mmrank ctr train` (MAKE 1 epoch, one thread, ``config``) and
    return the files it opened under ``R/truth/`` (an empty list is what training must give)."""
    from typer.testing import CliRunner

    from mmrank.cli import app

    with opens_under(Path(run) / "truth") as opened:
        res = CliRunner().invoke(app, ["ctr", "train", "--run", str(run), "--strategy", strategy, "--make-epochs",
                                       "1", "--threads", "1", "--config", str(config)])
        assert res.exit_code == 0, (res.output, res.exception)
    return list(opened)
