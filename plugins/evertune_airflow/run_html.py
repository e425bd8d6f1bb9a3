"""Plain, self-contained HTML building blocks for the evertune run pages.

No scripts, no external styles or fonts (the machine may be offline): one inline style sheet. Every value
that reaches the page goes through :func:`esc` (``html.escape`` with quotes), so run ids, reasons,
answers and document ids can never inject markup. Links only ever use ``http(s)`` URLs or our own paths.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2rem;color:#1d2430;background:#fff}
h1{font-size:1.35rem;margin:.2rem 0 .6rem}h2{font-size:1.1rem;margin:1.4rem 0 .4rem;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:.3rem 0 .8rem}th,td{border:1px solid #d6d9e0;padding:.25rem .55rem;
text-align:left;vertical-align:top;font-size:.9rem}th{background:#f3f5f9}td.num{text-align:right;
font-variant-numeric:tabular-nums}.badge{display:inline-block;padding:.15rem .6rem;border-radius:.8rem;
font-weight:600}.ok{background:#d8f3dc;color:#14532d}.bad{background:#fde2e1;color:#7f1d1d}
.warn{background:#fff3c4;color:#713f12}.muted{color:#667085}ul.reasons li{margin:.15rem 0}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:.8rem;max-height:28rem}
.banner{padding:.6rem .9rem;border-radius:.4rem;margin:.6rem 0;background:#eef2ff}
"""


def esc(value: Any) -> str:
    """``value`` as escaped HTML text (``None`` as an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A value for a table cell: floats with 4 significant digits, ``None`` and NaN as ``n/a``; escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list | tuple):
        return esc(json.dumps(value, default=str, sort_keys=True))
    return esc(value)


def link(url: str | None, text: Any) -> str:
    """An ``<a>`` to ``url`` when it is an ``http(s)`` URL or a path on this server; else the plain text."""
    if url and (url.startswith(("http://", "https://")) or url.startswith("/")):
        return f'<a href="{esc(url)}" target="_blank" rel="noopener">{esc(text)}</a>'
    return esc(text)


def badge(text: str, kind: str) -> str:
    """A coloured label; ``kind`` is ``ok``, ``bad`` or ``warn``."""
    return f'<span class="badge {esc(kind)}">{esc(text)}</span>'


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, raw_columns: Iterable[int] = ()) -> str:
    """An HTML table; cells are :func:`fmt`-ed except the columns in ``raw_columns`` (already HTML)."""
    raw = set(raw_columns)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            numeric = isinstance(cell, int | float) and not isinstance(cell, bool)
            css = ' class="num"' if numeric else ""
            cells.append(f"<td{css}>{cell if index in raw else fmt(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    if not body:
        return '<p class="muted">none</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_values(values: Mapping[str, Any] | None, keys: Sequence[str] | None = None) -> str:
    """A two-column table of ``values`` (only ``keys``, in order, when given; missing keys are skipped)."""
    if not values:
        return '<p class="muted">none</p>'
    chosen = [k for k in keys if k in values] if keys is not None else list(values)
    return table(("", "value"), ((k, values[k]) for k in chosen))


def bullet_list(items: Iterable[Any], css: str = "reasons") -> str:
    """An escaped ``<ul>``; ``none`` when empty."""
    entries = "".join(f"<li>{esc(item)}</li>" for item in items)
    return f'<ul class="{esc(css)}">{entries}</ul>' if entries else '<p class="muted">none</p>'


def section(title: str, body: str, *, anchor: str | None = None) -> str:
    """A titled part of the page (``body`` is HTML)."""
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>{body}</section>"


def raw_results(results: Mapping[str, Any]) -> str:
    """Every task's return value as pretty JSON, folded away (the page's fallback for anything unlisted)."""
    parts = [
        f"<details><summary>{esc(task_id)}</summary><pre>{esc(json.dumps(value, indent=2, default=str))}</pre></details>"
        for task_id, value in sorted(results.items())
    ]
    return "".join(parts) or '<p class="muted">no task has returned a value yet</p>'


def task_state_table(states: Mapping[str, str | None]) -> str:
    """``task | state`` for the run's tasks."""
    return table(("task", "state"), ((task, state or "not started") for task, state in sorted(states.items())))


def page(title: str, body: str) -> str:
    """A complete HTML document with the inline style sheet."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )
