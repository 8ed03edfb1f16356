"""Top clients: the busiest clients of the period, with their users, sites and providers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd

from monitor.report.data import Context, Report, int_or_none, loads, py, ranked, sum_or_none
from monitor.report.markdown import code, codes, num, table
from monitor.report.section import CsvRow, Section


class Clients(Section):
    id = "clients"
    nav = "Clients"

    def compute(self, ctx: Context) -> dict[str, Any]:
        return {"top_clients": _top_clients(ctx.who, ctx.query.top)}

    def markdown(self, report: Report) -> list[str]:
        return [
            "\n## Top clients\n",
            table(
                ["client", "users", "site", "providers", "requests", "blocked", "bytes in"],
                [
                    [
                        code(c["client_ip"]),
                        codes(c["users"]),
                        codes(c["sites"]),
                        codes(c["providers"], 4),
                        num(c["requests"]),
                        num(c["blocked"]),
                        num(c["bytes_in"]),
                    ]
                    for c in report.top_clients
                ],
                right={4, 5, 6},
            ),  # fmt: skip
        ]

    def csv_rows(self, report: Report) -> Iterator[CsvRow]:
        for c in report.top_clients:
            for metric in ("requests", "blocked", "bytes_out", "bytes_in"):
                yield "top_clients", c["client_ip"], ", ".join(c["users"]), metric, c[metric]


def _top_clients(who: pd.DataFrame, top: int) -> list[dict[str, Any]]:
    if not len(who):
        return []
    per = (  # bytes sum as stored sums do, to null where no row has them (SQL's SUM)
        who.groupby("client_ip", dropna=False)
        .agg(
            requests=("requests", "sum"),
            blocked=("blocked", "sum"),
            bytes_out=("bytes_out", sum_or_none),
            bytes_in=("bytes_in", sum_or_none),
        )
        .reset_index()
    )
    per["key"] = per.client_ip.fillna("")
    per = per.sort_values(["requests", "key"], ascending=[False, True], kind="stable").head(top)
    chosen = who[who.client_ip.isin(per.client_ip.dropna())]
    out = []
    for r in per.itertuples(index=False):
        rows = chosen[chosen.client_ip == r.client_ip]
        users = sorted({u for text in rows.users for u in loads(text, []) if u is not None})
        out.append(
            {
                "client_ip": py(r.client_ip),
                "users": users,
                "sites": ranked(rows.dropna(subset=["site"]).groupby("site").requests.sum()),
                "providers": ranked(rows.groupby("provider").requests.sum()),
                "requests": int(r.requests),
                "blocked": int(r.blocked),
                "bytes_out": int_or_none(r.bytes_out),
                "bytes_in": int_or_none(r.bytes_in),
            }
        )
    return out


SECTION = Clients()
