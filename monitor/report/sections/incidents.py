"""Incidents: the detail under the findings, by severity and rule, with the lists of new,
still open and resolved incidents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from monitor.policy import SEVERITIES
from monitor.report.data import Context, Report, Window, frame
from monitor.report.markdown import code, md, num, table
from monitor.report.section import CsvRow, Section
from monitor.store import Store, TrafficFilter

LIST_LIMIT = 50  # incident lists: this many rows (the totals count them all)
METRICS = ("new", "previous_new", "active", "open", "acknowledged", "resolved")
_HEADS = ["new", "previous period", "active", "open", "acknowledged", "resolved"]
_LIST_HEAD = ["id", "severity", "rule", "provider", "destination", "client", "site",
              "egress", "first seen", "last seen", "count", "status"]  # fmt: skip
_LISTS = (
    ("new", "New in the period"),
    ("open", "Still open (open or acknowledged)"),
    ("resolved", "Resolved during the period"),
)


class Incidents(Section):
    id = "incidents"
    nav = "Incidents"

    def queries(self, ctx: Context) -> dict[str, Callable[[], Any]]:
        return incident_queries(ctx)

    def compute(self, ctx: Context) -> dict[str, Any]:
        return {"incidents": incident_figures(ctx)}

    def markdown(self, report: Report) -> list[str]:
        inc = report.incidents
        t = inc["totals"]
        out = [
            "\n## Incidents\n",
            f"{num(t['new'])} new ({num(inc['previous']['new'])} in the previous period), "
            f"{num(t['active'])} active in the period; backlog now: {num(t['open'])} open, "
            f"{num(t['acknowledged'])} acknowledged; {num(t['resolved'])} resolved during the period.\n",
            table(
                ["severity", *_HEADS],
                [[md(s["severity"]), *(num(s[k]) for k in METRICS)] for s in inc["by_severity"]],
                right=set(range(1, 7)),
            ),
            "\n### By rule\n",
            table(
                ["rule", "severity", *_HEADS],
                [
                    [md(s["rule"]), md(s["severity"]), *(num(s[k]) for k in METRICS)]
                    for s in inc["by_rule"]
                ],
                right=set(range(2, 8)),
            ),
        ]
        for key, title in _LISTS:
            part = inc["lists"][key]
            out.append(f"\n### {title} ({num(part['shown'])} of {num(part['total'])})\n")
            out.append(_list_table(part["items"]))
        return out

    def csv_rows(self, report: Report) -> Iterator[CsvRow]:
        inc = report.incidents
        for row in inc["by_severity"]:
            for metric in METRICS:
                yield "incidents_by_severity", row["severity"], None, metric, row[metric]
        for row in inc["by_rule"]:
            for metric in METRICS:
                yield "incidents_by_rule", row["rule"], row["severity"], metric, row[metric]
        for name, part in inc["lists"].items():
            for item in part["items"]:
                yield f"incidents_{name}", item["id"], item["rule"], "count", item["count"]

    def html_vars(self, report: Report) -> dict[str, Any]:
        from monitor.report.html import STATUS_COLOURS, hbars

        rows = [
            (
                s["severity"],
                [
                    ("new", s["new"], STATUS_COLOURS["new"]),
                    ("open (incl. acknowledged)", s["open"] + s["acknowledged"],
                     STATUS_COLOURS["open"]),
                    ("resolved", s["resolved"], STATUS_COLOURS["resolved"]),
                ],
            )
            for s in report.incidents["by_severity"]
            if s["new"] or s["open"] or s["acknowledged"] or s["resolved"]  # empty rows: left out
        ]  # fmt: skip
        return {"severity_chart": hbars(rows, "Incidents by severity", 90)}


def incident_queries(ctx: Context) -> dict[str, Callable[[], Any]]:
    """The read of :func:`incident_figures` (the sections that show them ask for it)."""
    return {
        "incidents": ctx.reading(
            lambda store: _incident_figures(
                store, ctx.window, ctx.previous, ctx.filter, ctx.query.top
            )
        )
    }


def incident_figures(ctx: Context) -> dict[str, Any]:
    """Incident counts by rule and severity, totals and the lists the report shows (the
    summary's incident figures too)."""
    return ctx.fetched["incidents"]


def _list_table(items: list[dict[str, Any]]) -> str:
    return table(
        _LIST_HEAD,
        [
            [
                code(i["id"]),
                md(i["severity"]),
                md(i["rule"]),
                code(i["provider"]),
                code(i["dest_host"], 48),
                code(i["client_ip"]),
                code(i["site"]),
                code(i["egress_country"]),
                i["first_seen"],
                i["last_seen"],
                num(i["count"]),
                md(i["status"]),
            ]
            for i in items
        ],
        right={10},
    )


def _incident_figures(
    store: Store, win: Window, prev: Window, f: TrafficFilter, top: int
) -> dict[str, Any]:
    high = SEVERITIES.index("high")
    rows = frame(store.incident_counts(win.since, win.until, prev.since, f))
    metrics = ["new", "active", "open", "acknowledged", "resolved", "previous_new"]
    if len(rows):
        rows = rows[(rows[metrics] > 0).any(axis=1)]
        rows = rows.sort_values(["rank", "rule"], ascending=[False, True], kind="stable")
    by_rule = [
        {"rule": r.rule, "severity": r.severity, **{m: int(getattr(r, m)) for m in metrics}}
        for r in rows.itertuples(index=False)
    ]
    by_severity = []
    for sev in reversed(SEVERITIES):
        part = rows[rows.severity == sev] if len(rows) else rows
        by_severity.append(
            {"severity": sev, **{m: int(part[m].sum()) if len(part) else 0 for m in metrics}}
        )
    totals = {m: sum(r[m] for r in by_severity) for m in metrics}
    totals["new_high"] = sum(
        r["new"] for r in by_severity if SEVERITIES.index(r["severity"]) >= high
    )
    previous = {
        "new": totals.pop("previous_new"),
        "new_high": sum(
            r["previous_new"] for r in by_severity if SEVERITIES.index(r["severity"]) >= high
        ),
    }

    top_n = max(LIST_LIMIT, top)
    lists = {}
    for which in ("new", "open", "resolved"):
        items = store.incident_list(which, win.since, win.until, f, top_n)
        lists[which] = {"items": items, "shown": len(items)}
    lists["new"]["total"] = totals["new"]
    lists["open"]["total"] = totals["open"] + totals["acknowledged"]
    lists["resolved"]["total"] = totals["resolved"]
    return {
        "by_rule": by_rule,
        "by_severity": by_severity,
        "totals": totals,
        "previous": previous,
        "lists": lists,
    }


SECTION = Incidents()
