"""The market package writes what the single-module generator wrote: the tiny market's tables have the
schemas and the column contents recorded in ``tests/fixtures/market/digests.json`` (see the docstring of
``tests/fixtures/market/digests.py`` for how that file was made and how to regenerate it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "market"
sys.path.insert(0, str(FIXTURE))
from digests import run_digests  # noqa: E402


def test_tiny_market_content_equals_the_pre_split_generator(tiny_market: Path):
    expected = json.loads((FIXTURE / "digests.json").read_text())
    got = run_digests(tiny_market)
    # data/lineage.json came later (mmrank.lineage): the digests of the tables checked here, not market output
    got.pop("data/lineage.json", None)
    assert sorted(got) == sorted(expected), "the set of files under data/ and truth/ changed"
    for name, want in expected.items():
        have = got[name]
        if "schema" in want:
            assert have["schema"] == want["schema"], f"{name}: schema changed"
            assert have["rows"] == want["rows"], f"{name}: row count changed"
            changed = [c for c in want["columns"] if have["columns"].get(c) != want["columns"][c]]
            assert not changed, f"{name}: columns {changed} changed"
        else:
            assert have == want, f"{name}: content changed"
