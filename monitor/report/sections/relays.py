"""Relay use: requests to relays, aggregators, AI gateways and generic hosting used as one
(the upstream provider then sees the relay's egress, not ours)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd

from monitor.report.data import Context, Report, dest_row, sorted_dest
from monitor.report.markdown import code, md, num, table
from monitor.report.section import CsvRow, Section


class Relays(Section):
    id = "relays"
    nav = "Relays"

    def compute(self, ctx: Context) -> dict[str, Any]:
        return {"relays": _relays(ctx.destinations, ctx.who, ctx.source.catalog)}

    def markdown(self, report: Report) -> list[str]:
        rl = report.relays
        return [
            "\n## Relay use\n",
            f"{num(rl['requests'])} request(s) from {num(rl['clients'])} client(s) went to relays, aggregators, AI gateways or generic hosting often used as a relay.\n",  # fmt: skip
            table(
                ["host", "relay", "category", "requests", "blocked", "clients", "example URL"],
                [
                    [
                        code(d["dest_host"], 48),
                        code(d["provider"]),
                        md(d["category"]),
                        num(d["requests"]),
                        num(d["blocked"]),
                        num(d["clients"]),
                        code(d["example_url"]),
                    ]
                    for d in rl["hosts"]
                ],
                right={3, 4, 5},
            ),  # fmt: skip
        ]

    def csv_rows(self, report: Report) -> Iterator[CsvRow]:
        yield "relays", "total", None, "requests", report.relays["requests"]
        yield "relays", "total", None, "clients", report.relays["clients"]
        for d in report.relays["hosts"]:
            for metric in ("requests", "blocked", "clients", "bytes_out", "bytes_in"):
                yield "relays", d["dest_host"], d["provider"], metric, d[metric]


def _relays(dest: pd.DataFrame, who: pd.DataFrame, catalog: Any) -> dict[str, Any]:
    rows = dest[dest.kind == "relay"] if len(dest) else dest
    clients = int(who.loc[who.kind == "relay", "client_ip"].dropna().nunique()) if len(who) else 0
    hosts = []
    for r in sorted_dest(rows).itertuples(index=False) if len(rows) else ():
        row = dest_row(r)
        entry = catalog.providers.get(row["provider"])
        row["category"] = entry.category if entry else None
        row["name"] = entry.name if entry else None
        hosts.append(row)
    return {
        "requests": int(rows.requests.sum()) if len(rows) else 0,
        "clients": clients,
        "hosts": hosts,
    }


SECTION = Relays()
