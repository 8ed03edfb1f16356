"""Reports: daily, weekly and monthly summaries of traffic and incidents for the record.

:func:`build_report` (in :mod:`monitor.report.data`) computes every figure once; the
renderers (HTML, Markdown, CSV, JSON) only format that model::

    from monitor.report import ReportQuery, period_window, build_report, render
    report = build_report(app, ReportQuery(period_window("weekly")))
    html = render(report, "html")
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from monitor.config import REPORT_FORMATS, fill_output_pattern
from monitor.report.data import (
    PERIODS,
    Report,
    ReportQuery,
    ReportSource,
    Window,
    compute_report,
    custom_window,
    period_ended,
    period_window,
)
from monitor.report.section import Section

FORMATS = REPORT_FORMATS  # the configuration's vocabulary, defined once there

__all__ = [
    "FORMATS",
    "PERIODS",
    "Report",
    "ReportQuery",
    "ReportSource",
    "Section",
    "Window",
    "build_report",
    "custom_window",
    "output_path",
    "period_ended",
    "period_window",
    "render",
    "write_atomic",
]


def build_report(
    source: ReportSource, q: ReportQuery, sections: Sequence[Section] | None = None
) -> Report:
    """The report for ``q``: ``sections`` (default: the registered ones, in their order)."""
    if sections is None:
        from monitor.report.sections import registered

        sections = registered()
    return compute_report(source, q, sections)


def render(report: Report, fmt: str, spreadsheet_safe: bool = False) -> str:
    if fmt == "html":
        from monitor.report.html import render_html

        return render_html(report)
    if fmt == "md":
        from monitor.report.markdown import render_markdown

        return render_markdown(report)
    if fmt == "csv":
        from monitor.report.tabular import render_csv

        return render_csv(report, spreadsheet_safe)
    if fmt == "json":
        from monitor.report.tabular import render_json

        return render_json(report)
    raise ValueError(f"unknown report format {fmt!r} (expected one of {', '.join(FORMATS)})")


def output_path(pattern: str, window: Window, fmt: str) -> Path:
    """Fill an ``output`` pattern: ``{period}``, ``{date}`` (first day), ``{start}``, ``{end}``
    (last day, inclusive), ``{format}``, ``{week}`` (``2026-W48``), ``{month}`` (``2026-11``)."""
    first = date.fromisoformat(window.first_day)  # in the window's time zone, as the period
    year, week, _ = first.isocalendar()
    values = {
        "period": window.period,
        "date": str(window.first_day),
        "start": str(window.first_day),
        "end": str(window.last_day),
        "format": fmt,
        "week": f"{year}-W{week:02d}",
        "month": window.first_day[:7],
    }
    return Path(fill_output_pattern(pattern, values))


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a report.
    What is not a file is written into, not replaced: a device or a pipe (``-o /dev/null``,
    ``-o /dev/stdout``; a rename there replaced the device itself, run as root), and a
    symbolic link's target (the link stays)."""
    path = Path(path)
    try:
        kind: int | None = os.stat(path).st_mode  # (through links)
    except OSError:  # none yet, a dangling link, a path through a file: as before
        kind = None
    if kind is not None and not stat.S_ISREG(kind):
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        return
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o640)  # reports name clients and users: not world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
