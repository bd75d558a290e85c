"""`report.html`: the demo's results and plots on one page a person can open in a browser."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from mmrank.report.tables import flatten

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{background:#fff8e0;padding:.5em 1em;border-left:4px solid #e0b000}"""


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table><tr><th>key</th><th>value</th></tr>{body}</table>"


def _md_table(md: str) -> str:
    """A markdown pipe table -> an HTML table (anything else is shown as preformatted text)."""
    lines = [ln.strip() for ln in md.strip().splitlines() if ln.strip()]
    if len(lines) < 2 or not all(ln.startswith("|") for ln in lines):
        return f"<pre>{html.escape(md)}</pre>"
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if not set(ln) <= set("|-: ")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html_report(results: dict[str, Any], report_dir: str | Path,
                      title: str | None = None, note: str | None = None) -> Path:
    """Write ``report_dir/report.html`` from the demo ``results`` and any ``report_dir/plots/*.png``
    (``title`` and ``note``, HTML, replace the demo's heading and its "simulated" note)."""
    report_dir = Path(report_dir)
    parts = [f"<h1>{html.escape(title) if title else 'mmrank demo (size ' + html.escape(str(results['size'])) + ')'}</h1>",
             f"<p class=note>{note}</p>" if note else
             "<p class=note>All behaviour is <b>simulated</b> on the synthetic market; the oracle AUC "
             "(clicks scored by their true probability) bounds every model.</p>"]
    for name, res in results["stages"].items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if "markdown" in res:
            parts.append(_md_table(res["markdown"]))
        parts.append(_table(flatten(res)))
    for png in sorted((report_dir / "plots").glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(png.stem)}</h3><img alt='{html.escape(png.stem)}' "
                     f"src='data:image/png;base64,{data}'>")
    page = f"<!doctype html><html><head><meta charset=utf-8><title>mmrank report</title><style>{_STYLE}" \
           f"</style></head><body>{''.join(parts)}</body></html>"
    out = report_dir / "report.html"
    out.write_text(page)
    return out
