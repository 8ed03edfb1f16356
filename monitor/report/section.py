"""The plug-in point of reports: a section computes its figures and renders them.

A section is one object with these duties, like a mitmproxy addon's hooks: name the heavy
store reads it needs (:meth:`Section.queries`, run side by side with the other sections'
before any computing), :meth:`Section.compute` its figures from the shared
:class:`~monitor.report.data.Context` (they land in the JSON report under the keys it
returns), and render them as Markdown, HTML (its template
``templates/sections/<id>.html.j2`` or inline as :attr:`Section.template`, which sees the report as ``r``, its meta as ``m`` and
what :meth:`Section.html_vars` adds) and rows of the long CSV. Adding a section is one module
in :mod:`monitor.report.sections` and one line in its ``MODULES`` (README, "Development").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

if TYPE_CHECKING:
    from monitor.report.data import Context, Report

#: One figure of the long CSV: (section, key, subkey, metric, value).
CsvRow = tuple[str, Any, Any, str, Any]


class Section:
    id: str = ""  # HTML anchor and template name
    nav: str = ""  # its entry in the HTML report's navigation bar
    #: its HTML template inline (Jinja source); None: ``templates/sections/<id>.html.j2``
    template: str | None = None

    def queries(self, ctx: Context) -> dict[str, Callable[[], Any]]:
        """Store reads to run side by side with the others (read-only connections), by
        name; their results are ``ctx.fetched[name]`` in :meth:`compute`."""
        return {}

    def compute(self, ctx: Context) -> dict[str, Any]:
        """The section's figures, by top-level JSON key (plain, JSON-able data)."""
        raise NotImplementedError

    def markdown(self, report: Report) -> list[str]:
        """Pieces of the Markdown report (joined with newlines)."""
        raise NotImplementedError

    def csv_rows(self, report: Report) -> Iterator[CsvRow]:
        raise NotImplementedError

    def html_vars(self, report: Report) -> dict[str, Any]:
        """Extra template variables (charts drawn in Python)."""
        return {}

    def html(self, report: Report) -> Markup:
        from monitor.report.html import render_section

        template = self.template or f"sections/{self.id}.html.j2"
        return render_section(template, report, inline=self.template is not None,
                              **self.html_vars(report))  # fmt: skip
