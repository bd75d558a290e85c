"""Results as rows: a stage's nested results flattened to ``(dotted.key, value)`` pairs, and those pairs
as a markdown table (what ``results.md`` and ``report.html`` show beside each stage's own table).

Example::

    >>> flatten({"ctr": {"auc": 0.712345678, "markdown": "| ... |"}, "seconds": 3})
    [('ctr.auc', 0.7123), ('seconds', 3)]
    >>> key_value_table([("seconds", 3)])
    ['| key | value |', '|---|---|', '| seconds | 3 |']
"""

from __future__ import annotations

from typing import Any


def flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf of ``d`` as ``(dotted.key, value)``, floats rounded to 4 places; ``markdown`` keys
    (a stage's own table) are left out."""
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        if k == "markdown":
            continue
        if isinstance(v, dict):
            rows += flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", round(v, 4) if isinstance(v, float) else v))
    return rows


def key_value_table(rows: list[tuple[str, Any]]) -> list[str]:
    """``rows`` as the lines of a two-column markdown table (key, value)."""
    return ["| key | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
