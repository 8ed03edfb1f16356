"""CSV and JSON reports for BI tools.

JSON is the report model as it is (:meth:`Report.to_dict`): every figure of every format.

CSV is one long ("tidy") table, so that a BI tool can pivot it and daily files can be
appended: ``since, until, section, key, subkey, metric, value``. Values are written as they
are, for fidelity. With ``spreadsheet_safe`` (``--spreadsheet-safe``, config
``spreadsheet_safe = true``; use it for files people open in Excel or LibreOffice), a text
cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with
``'`` so that a spreadsheet shows it instead of running it as a formula (CSV injection).
Numbers are never changed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from monitor.output import csv_text, json_text, spreadsheet_cell
from monitor.report.data import Report

CSV_COLUMNS = ("since", "until", "section", "key", "subkey", "metric", "value")


def render_json(report: Report) -> str:
    return json_text(report.to_dict(), indent=1) + "\n"


def csv_rows(report: Report) -> Iterator[tuple[str, Any, Any, str, Any]]:
    """(section, key, subkey, metric, value) for every figure."""
    m = report.meta
    for k in ("period", "label", "since", "until", "generated", "complete"):
        yield "meta", k, None, "value", m[k]
    for k in ("site", "provider", "user", "client"):
        for v in m["filters"].get(k, ()):
            yield "meta", "filter", k, "value", v
    for section in report.sections:
        yield from section.csv_rows(report)


def render_csv(report: Report, spreadsheet_safe: bool = False) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    since, until = report.meta["since"], report.meta["until"]
    for section, key, subkey, metric, value in csv_rows(report):
        row = [since, until, section, key, subkey, metric, value]
        row = ["" if v is None else csv_text(v) for v in row]
        if spreadsheet_safe:
            row = [spreadsheet_cell(v) for v in row]
        writer.writerow(row)
    return buf.getvalue()
