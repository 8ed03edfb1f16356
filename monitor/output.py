"""Rendering rows for a terminal or a pipe: aligned table, JSON lines, CSV.

Strings from logs are data. In every text output C0/C1 control and bidi characters are
shown escaped, so a crafted host name cannot move the cursor, retitle the terminal or
reorder what a reader sees: tables and CSV show them as ``\\x1b`` / ``\\u202e``; JSON
escapes them as ``\\u001b`` / ``\\u202e``, which decodes to the same string.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, TextIO

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: what JSON encoders leave raw but a terminal or a text viewer would act on
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_CELL = 60
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_text(value: Any, limit: int | None = MAX_CELL) -> str:
    """Printable, bounded text for a terminal cell."""
    if value is None:
        return "-"
    text = _CONTROL.sub(_escape, str(value))
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


_ENCODE = json.JSONEncoder(ensure_ascii=False, default=str).encode


def _json_escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def json_text(value: Any, **options: Any) -> str:
    """JSON (UTF-8 text, ``default=str``) with control and bidi characters ``\\u``-escaped."""
    text = (
        json.dumps(value, ensure_ascii=False, default=str, **options) if options else _ENCODE(value)
    )
    return _JSON_UNSAFE.sub(_json_escape, text)


_JSON = json_text


def write_json_lines(rows: Iterable[Mapping[str, Any]], out: TextIO, chunk: int = 512) -> int:
    """One JSON object per line, written in chunks (one write per line is the bottleneck)."""
    n = 0
    pending: list[str] = []
    for row in rows:
        pending.append(_JSON(row))
        n += 1
        if len(pending) >= chunk:
            pending.append("")
            out.write("\n".join(pending))
            pending = []
    if pending:
        pending.append("")
        out.write("\n".join(pending))
    return n


def spreadsheet_cell(value: Any) -> Any:
    """Text a spreadsheet would run as a formula (CSV injection) gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and value != "-":
        return "'" + value  # a lone "-" (a log's "unknown") is no formula and stays as it is
    return value


def write_csv(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    out: TextIO,
    spreadsheet_safe: bool = False,
) -> int:
    """CSV with a header row. ``spreadsheet_safe`` is for files people open in a
    spreadsheet; leave it off for tools, which should see the data as logged."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    n = 0
    for row in rows:
        cells = ["" if row.get(c) is None else _csv_value(row.get(c)) for c in columns]
        writer.writerow([spreadsheet_cell(c) for c in cells] if spreadsheet_safe else cells)
        n += 1
    return n


def _csv_value(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    return csv_text(value)


def csv_text(value: Any) -> Any:
    """A CSV cell: text with control and bidi characters escaped, other values as they are."""
    return _CONTROL.sub(_escape, value) if isinstance(value, str) else value


def write_table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    out: TextIO,
    headers: Sequence[str] | None = None,
) -> int:
    body = [_table_cells(row, columns) for row in rows]
    if body:
        heads = list(headers or columns)
        text = _simple_table(body, heads)
        if text is None:
            from tabulate import tabulate  # here: it costs JSON and CSV output 10 ms of start-up

            text = tabulate(body, headers=heads, tablefmt="simple", disable_numparse=True)
        out.write(text)
        out.write("\n")
    return len(body)


def _table_cells(row: Mapping[str, Any], columns: Sequence[str]) -> list[str]:
    """:func:`safe_text` of the row's ``columns``, with one search for control characters
    per row, not one per cell (100 k incidents: 0.65 -> 0.5 s of CPU)."""
    cells = ["-" if v is None else str(v) for v in map(row.get, columns)]
    if _CONTROL.search(" ".join(cells)):
        return [safe_text(c) for c in cells]
    return [c if len(c) <= MAX_CELL else c[: MAX_CELL - 1] + "…" for c in cells]


def _simple_table(body: list[list[str]], headers: list[str]) -> str | None:
    """The table tabulate's ``simple`` format makes of these text cells (``disable_numparse``:
    every column left-aligned, cells stripped, each column at least two wider than its header,
    lines right-stripped), made here: tabulate took 6.5 s of CPU for 100 k incidents, this
    0.85 s (a loaded machine). None when some cell or header is not ASCII but for the "…"
    of a cut cell (tabulate measures those by their width on a terminal: wide and combining
    characters; "…" is one wide); control characters are escaped already."""
    if not all(map(_narrow, headers)) or not all(map(_narrow, map("".join, body))):
        return None
    body = [list(map(str.strip, r)) for r in body]
    widths = [max(len(h) + 2, *map(len, map(itemgetter(i), body))) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths).format  # each cell padded to its width
    lines = [line(*headers).rstrip(), "  ".join("-" * w for w in widths)]
    lines += [line(*r).rstrip() for r in body]
    return "\n".join(lines)


def _narrow(text: str) -> bool:
    """Whether every character of ``text`` is one column wide: ASCII, or the "…" that ends
    a cut cell (listings cut long URLs and user agents: one such cell would send a 100 k-row
    table to tabulate)."""
    return text.isascii() or text.replace("…", "").isascii()


def write_rows(
    rows: Iterable[Mapping[str, Any]],
    fmt: str,
    columns: Sequence[str],
    out: TextIO,
    table_columns: Sequence[str] | None = None,
    spreadsheet_safe: bool = False,
) -> int:
    """``fmt`` is ``table``, ``json`` (JSON lines) or ``csv``; returns the number of rows."""
    if fmt == "json":
        return write_json_lines(rows, out)
    if fmt == "csv":
        return write_csv(rows, columns, out, spreadsheet_safe)
    return write_table(rows, table_columns or columns, out)
