"""Summary: the period's headline figures beside the previous period's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd

from monitor.report.data import Context, Report, pct, sum_or_none
from monitor.report.markdown import change, md, num, table
from monitor.report.section import CsvRow, Section
from monitor.report.sections.incidents import incident_figures, incident_queries

TOTAL_METRICS = (
    ("requests", "LLM API requests"),
    ("blocked", "blocked by the proxy"),
    ("bytes_out", "bytes sent"),
    ("bytes_in", "bytes received"),
    ("clients", "clients"),
    ("providers", "providers"),
    ("sites", "sites"),
    ("egress_countries", "egress countries"),
    ("relay_requests", "requests to relays"),
    ("incidents_new", "new incidents"),
    ("incidents_new_high", "new incidents, high or critical"),
)


class Summary(Section):
    id = "summary"
    nav = "Summary"

    def queries(self, ctx: Context) -> dict[str, Callable[[], Any]]:
        return incident_queries(ctx)

    def compute(self, ctx: Context) -> dict[str, Any]:
        who, incidents = ctx.who, incident_figures(ctx)
        current = _totals(ctx.current, len(set(who.client_ip.dropna())) if len(who) else 0)
        current["incidents_new"] = incidents["totals"]["new"]
        current["incidents_new_high"] = incidents["totals"]["new_high"]
        previous = _totals(ctx.earlier, ctx.previous_clients)
        previous["incidents_new"] = incidents["previous"]["new"]
        previous["incidents_new_high"] = incidents["previous"]["new_high"]
        totals = [
            {
                "metric": key,
                "label": label,
                "current": current[key],
                "previous": previous[key],
                "change": _delta(current[key], previous[key]),
                "change_pct": pct(current[key], previous[key]),
            }
            for key, label in TOTAL_METRICS
        ]
        return {"totals": totals}

    def markdown(self, report: Report) -> list[str]:
        return [
            "## Summary\n",
            table(
                ["figure", "this period", "previous period", "change"],
                [
                    [
                        md(t["label"]),
                        num(t["current"]),
                        num(t["previous"]),
                        change(t["change"], t["change_pct"]),
                    ]
                    for t in report.totals
                ],
                right={1, 2, 3},
            ),
        ]

    def csv_rows(self, report: Report) -> Iterator[CsvRow]:
        for t in report.totals:
            for metric in ("current", "previous", "change", "change_pct"):
                yield "totals", t["metric"], None, metric, t[metric]


def _totals(cube: pd.DataFrame, clients: int) -> dict[str, Any]:
    def distinct(col: str) -> int:
        return int(cube.loc[cube.requests > 0, col].dropna().nunique()) if len(cube) else 0

    return {
        "requests": int(cube.requests.sum()) if len(cube) else 0,
        "blocked": int(cube.blocked.sum()) if len(cube) else 0,
        "bytes_out": sum_or_none(cube.bytes_out) if len(cube) else None,
        "bytes_in": sum_or_none(cube.bytes_in) if len(cube) else None,
        "clients": int(clients),
        "providers": distinct("provider"),
        "sites": distinct("site"),
        "egress_countries": distinct("country"),
        "relay_requests": int(cube.loc[cube.kind == "relay", "requests"].sum()) if len(cube) else 0,
    }


def _delta(cur: int | None, prev: int | None) -> int | None:
    if cur is None or prev is None:
        return None
    return cur - prev


SECTION = Summary()
