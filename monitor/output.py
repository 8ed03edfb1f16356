"""Rendering rows for a terminal or a pipe: aligned table, JSON lines, CSV.

Strings from logs are data. In tables they are stripped of control characters, so a
crafted host name cannot move the cursor or rewrite the terminal; JSON and CSV are
produced by their standard encoders.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
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


_JSON = json.JSONEncoder(ensure_ascii=False, default=str).encode


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
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value


def write_table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    out: TextIO,
    headers: Sequence[str] | None = None,
) -> int:
    body = [[safe_text(row.get(c)) for c in columns] for row in rows]
    if body:
        from tabulate import tabulate  # here: it costs JSON and CSV output 10 ms of start-up

        out.write(
            tabulate(
                body, headers=list(headers or columns), tablefmt="simple", disable_numparse=True
            )
        )
        out.write("\n")
    return len(body)


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
