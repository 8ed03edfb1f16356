"""Findings: a plain-language summary, the findings list (with their top users) and the
exception register (in force at the end, ran out during the period).

The report leads with these: an analyst decides on findings, and the incident lists below
are their detail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from monitor.observation import iso_datetime
from monitor.policy import SEVERITY_RANK
from monitor.report.data import Context, Report
from monitor.report.markdown import code, md, num, table
from monitor.report.section import CsvRow, Section
from monitor.store import IncidentQuery, Store, TrafficFilter

#: words for "during the period" by period
_PERIOD_WORDS = {"daily": "that day", "weekly": "this week", "monthly": "this month"}
HIGH = SEVERITY_RANK["high"]
DETAIL_ROWS = 10  # detail rows (incidents) under each finding of the HTML list
_DETAIL_FIELDS = ("id", "client_ip", "user", "dest_host", "day", "count", "status")


def findings_part(store: Store, window: Any, where: TrafficFilter, limit: int) -> dict[str, Any]:
    """What ``findings`` of the report reads from the store (the summary aside):
    ``totals``, ``items`` (the first ``limit``), ``exceptions``, and ``all`` the rows."""
    found = store.report_findings(window.since, window.until, where, limit, tz=window.tz)
    rows = found["all"]
    q = IncidentQuery(
        since=iso_datetime(window.since), until=iso_datetime(window.until),
        site=where.sites, provider=where.providers, user=where.users,
        client=tuple(where.clients or ()), limit=DETAIL_ROWS,
    )  # fmt: skip
    detail = store.finding_detail(q, [item["id"] for item in found["items"]])
    for item in found["items"]:  # its detail in the period, the latest first
        item["detail"] = [{k: d[k] for k in _DETAIL_FIELDS} for d in detail[item["id"]]]
    totals = {
        "findings": len(rows),
        "high": sum(SEVERITY_RANK[r["severity"]] >= HIGH for r in rows),
        "reopened": sum(r["reopened_in_period"] for r in rows),
        "open": sum(r["status"] in ("open", "reopened") for r in rows),
        "excepted": sum(bool(r["exception_until"]) for r in rows),
    }
    return {
        "totals": totals,
        **found,
        "exceptions": store.report_exceptions(window.since, window.until, where),
    }


def summary_sentences(rows: list[dict[str, Any]], names: dict[str, str], when: str) -> list[str]:
    """One sentence per site (or egress country where no site is known), busiest first:
    "shanghai sends OpenAI and Anthropic traffic through a CN egress: 3 high findings,
    2 reopened this week"."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        where = ("site", r["site"]) if r["site"] else ("country", r["egress_country"] or "?")
        groups.setdefault(where, []).append(r)
    ranked = sorted(groups.items(), key=lambda kv: (-sum(r["count"] for r in kv[1]), kv[0]))
    out = []
    for (kind, name), group in ranked:
        providers = sorted({r["provider"] for r in group}, key=lambda p: (names.get(p, p)).lower())
        countries = sorted({c for r in group for c in (r["egress_country"] or "").split(",") if c})
        via = f"a {_and(countries)} egress" if countries else "an egress of unknown country"
        who = name if kind == "site" else f"Clients with no known site ({name} egress)"
        high = sum(SEVERITY_RANK[r["severity"]] >= HIGH for r in group)
        reopened = sum(r["reopened_in_period"] for r in group)
        figures = [f"{_n(len(group), 'finding')}"]
        if high:
            figures.append(f"{high} high or critical")
        if reopened:
            figures.append(f"{reopened} reopened {when}")
        out.append(
            f"{who} sends {_and([names.get(p, p) for p in providers])} traffic through "
            f"{via}: {', '.join(figures)}."
        )
    return out


class Findings(Section):
    id = "findings"
    nav = "Findings"

    def queries(self, ctx: Context) -> dict[str, Callable[[], Any]]:
        return {
            "findings": ctx.reading(
                lambda store: findings_part(store, ctx.window, ctx.filter, ctx.query.top)
            )
        }

    def compute(self, ctx: Context) -> dict[str, Any]:
        names = {e.id: e.name for e in ctx.source.catalog.entries()}
        found = dict(ctx.fetched["findings"])
        rows = found.pop("all")
        when = _PERIOD_WORDS.get(ctx.window.period, "in the period")
        return {"findings": {"summary": summary_sentences(rows, names, when), **found}}

    def markdown(self, report: Report) -> list[str]:
        """The findings first: what there is to decide, in plain words, then the list; the
        detail (incidents) is the section further down."""
        fd = report.findings
        t = fd["totals"]
        out = ["## Findings\n"]
        out += [md(line, 400) + "\n" for line in fd["summary"]] or ["No findings in this period.\n"]
        out.append(
            f"{num(t['findings'])} finding(s) with activity in the period: {num(t['high'])} high or "
            f"critical, {num(t['reopened'])} reopened during it, {num(t['open'])} open or reopened "
            f"now, {num(t['excepted'])} under an exception. Detail: see *Incidents* below, or "
            "`apiwatch incidents --finding ID`.\n"
        )
        out.append(
            table(
                [
                    "id",
                    "severity",
                    "rule",
                    "provider",
                    "site",
                    "egress",
                    "status",
                    "requests",
                    "clients",
                    "users",
                    "days",
                    "top users",
                ],
                [
                    [
                        code(f["id"]),
                        md(f["severity"]),
                        md(f["rule"]),
                        code(f["provider"]),
                        code(f["site"]),
                        code(f["egress_country"]),
                        md(_status(f)),
                        num(f["count"]),
                        num(f["clients"]),
                        num(f["users"]),
                        num(f["days"]),
                        ", ".join(
                            f"{code(u['user'], 30)} ({num(u['count'])})" for u in f["top_users"]
                        )
                        or "–",
                    ]
                    for f in fd["items"]
                ],
                right={7, 8, 9, 10},
            )  # fmt: skip
        )
        ex = fd["exceptions"]
        out.append("\n### Exceptions in force at the end of the period\n")
        out.append(
            table(
                ["finding", "rule", "provider", "site", "until", "reason", "approver"],
                [
                    [
                        code(e["id"]),
                        md(e["rule"]),
                        code(e["provider"]),
                        code(e["site"]),
                        md(e["until"]),
                        md(e["reason"], 120),
                        md(e["approver"]),
                    ]
                    for e in ex["in_force"]
                ],
            )  # fmt: skip
        )
        out.append("\n### Exceptions that ran out during the period\n")
        out.append(
            table(
                ["at", "finding", "rule", "provider", "site", "note"],
                [
                    [
                        md(e["at"]),
                        code(e["id"]),
                        md(e["rule"]),
                        code(e["provider"]),
                        code(e["site"]),
                        md(e["note"], 120),
                    ]
                    for e in ex["expired"]
                ],
            )  # fmt: skip
        )
        return out

    def csv_rows(self, report: Report) -> Iterator[CsvRow]:
        fd = report.findings
        for metric, value in fd["totals"].items():
            yield "findings", "total", None, metric, value
        for f in fd["items"]:
            for metric in ("count", "blocked", "clients", "users", "hosts", "days"):
                yield "findings", f["id"], f["rule"], metric, f[metric]
            yield "findings", f["id"], f["rule"], "status", f["status"]
        for e in fd["exceptions"]["in_force"]:
            yield "exceptions_in_force", e["id"], e["rule"], "until", e["until"]
        for e in fd["exceptions"]["expired"]:
            yield "exceptions_expired", e["id"], e["rule"], "at", e["at"]


def _status(f: dict[str, Any]) -> str:
    return (
        f["status"]
        + (" (reopened in period)" if f["reopened_in_period"] else "")
        + (f" (exception until {f['exception_until']})" if f["exception_until"] else "")
    )


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


SECTION = Findings()
