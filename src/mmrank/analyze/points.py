"""Resumable analyses: each finished point is its own JSON file, written atomically
(:mod:`mmrank.durable`) under ``R/analysis/<name>/points/<point>.json``; a rerun reads the finished
points back and computes only the others. A point whose stored ``spec`` differs from the one asked for
now (other settings) is computed again.

Example::

    >>> book = PointBook(Path("runs/demo/analysis/scaling"))                # doctest: +SKIP
    >>> book.get("K-1024", {"queue_size": 1024}, lambda: {"acc@1": 0.2})    # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmrank.durable import write_text
from mmrank.errors import MMRankError

_NAME = re.compile(r"^[A-Za-z0-9._+@-]+$")


class PointBook:
    """The finished points of one analysis (``<root>/points/``) and how to get the rest.

    Attributes:
        computed: names computed by this process (not read back), in order.
        reused: names read back from an earlier run, in order (each once).
    """

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "points"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.computed: list[str] = []
        self.reused: list[str] = []

    def path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise MMRankError(f"analysis point name {name!r}: use letters, digits and ._+@- only")
        return self.dir / f"{name}.json"

    def done(self, name: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result of ``name`` when it was computed with ``spec``; else None."""
        p = self.path(name)
        if not p.exists():
            return None
        try:
            stored = json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise MMRankError(f"{p}: not JSON ({err}); delete it to recompute the point") from None
        if stored.get("spec") != json.loads(json.dumps(spec)):
            return None
        return stored["result"]

    def get(self, name: str, spec: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The result of point ``name``: read back when finished with the same ``spec``, else
        ``compute()`` and written (atomically) before it is returned."""
        have = self.done(name, spec)
        if have is not None:
            if name not in self.reused:
                self.reused.append(name)
            return have
        result = compute()
        write_text(self.path(name), json.dumps({"name": name, "spec": spec, "result": result}, indent=1))
        self.computed.append(name)
        return result


def write_result(run: Path, name: str, result: dict[str, Any],
                 plot: Callable[[dict[str, Any], Path], Path]) -> dict[str, Any]:
    """An analysis' outputs: ``R/analysis/<name>.png`` drawn by ``plot``, then ``R/analysis/<name>.json``
    (``result`` with the plot's path under ``"plot"``). Returns ``result``."""
    out = Path(run) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    result["plot"] = str(plot(result, out / f"{name}.png"))
    write_text(out / f"{name}.json", json.dumps(result, indent=1))
    return result
