"""Audit trail: who acknowledged or resolved which incident in the period, and why."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from monitor.report.data import Context, Report
from monitor.report.markdown import code, md, num, table
from monitor.report.section import CsvRow, Section

EVENT_LIMIT = 200


class Audit(Section):
    id = "audit"
    nav = "Audit trail"

    def queries(self, ctx: Context) -> dict[str, Callable[[], Any]]:
        win = ctx.window
        return {
            "events": ctx.reading(
                lambda store: store.status_changes(win.since, win.until, ctx.filter, EVENT_LIMIT)
            )
        }

    def compute(self, ctx: Context) -> dict[str, Any]:
        return {"events": ctx.fetched["events"]}

    def markdown(self, report: Report) -> list[str]:
        ev = report.events
        return [
            "\n## Audit trail\n",
            f"{num(ev['total'])} status change(s) in the period"
            + (f", the first {num(ev['shown'])} shown" if ev["total"] > ev["shown"] else "")
            + ".\n",  # fmt: skip
            table(
                ["at", "incident", "rule", "change", "by", "note"],
                [
                    [
                        e["at"],
                        code(e["incident_id"]),
                        md(e["rule"]),
                        f"{md(e['status_from'])} → {md(e['status_to'])}",
                        code(e["actor"]),
                        md(e["note"], 200),
                    ]
                    for e in ev["items"]
                ],
            ),  # fmt: skip
        ]

    def csv_rows(self, report: Report) -> Iterator[CsvRow]:
        for action, n in report.events["by_action"].items():
            yield "audit_trail", action, None, "events", n
        yield "audit_trail", "total", None, "events", report.events["total"]


SECTION = Audit()
