"""Traffic: requests over time, by provider, site and egress country, top destinations."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from monitor.report.data import (
    OTHER,
    Context,
    Report,
    Window,
    _zone,
    dest_row,
    int_or_none,
    pct,
    py,
    sorted_dest,
    sum_or_none,
)
from monitor.report.markdown import change, code, codes, md, num, table
from monitor.report.section import CsvRow, Section

TIMELINE_SERIES = 8  # providers drawn on their own; the rest is "other"
#: numeric figures of each breakdown row
NUMERIC = ("requests", "share_pct", "blocked", "clients", "bytes_out", "bytes_in",
           "previous_requests", "change", "change_pct")  # fmt: skip
BREAKDOWNS = (
    ("by_provider", "provider"),
    ("by_site", "site"),
    ("by_egress_country", "egress_country"),
)
_BREAKDOWN_HEAD = ["requests", "share", "blocked", "clients", "bytes out", "bytes in",
                   "previous", "change"]  # fmt: skip


class Traffic(Section):
    id = "traffic"
    nav = "Traffic"

    def compute(self, ctx: Context) -> dict[str, Any]:
        cur, old, who = ctx.current, ctx.earlier, ctx.who
        catalog = ctx.source.catalog
        by_provider = _breakdown(cur, old, who, "provider")
        for row in by_provider:
            entry = catalog.providers.get(row["provider"])
            row["name"] = entry.name if entry else None
            row["kinds"] = sorted(set(cur.loc[cur.provider == row["provider"], "kind"].dropna()))
        by_site = _breakdown(cur, old, who, "site")
        by_country = _breakdown(cur, old, who, "country")
        for row in by_country:
            row["egress_country"] = row.pop("country")
        dest = ctx.destinations
        return {
            "timeline": _timeline(cur, ctx.window, ctx.origin, ctx.bucket, ctx.width),
            "by_provider": by_provider,
            "by_site": by_site,
            "by_egress_country": by_country,
            "top_destinations": (
                [dest_row(r) for r in sorted_dest(dest).head(ctx.query.top).itertuples(index=False)]
                if len(dest)
                else []
            ),
        }

    def markdown(self, report: Report) -> list[str]:
        out = ["## Traffic\n"]
        add = out.append
        tl = report.timeline
        add(f"### Requests per {tl['bucket']}, by provider\n")
        if tl["series"]:
            add(
                table(
                    [tl["bucket"], "total", *(code(s["provider"], 24) for s in tl["series"])],
                    [
                        [
                            b,
                            num(sum(s["values"][i] for s in tl["series"])),
                            *(num(s["values"][i]) for s in tl["series"]),
                        ]
                        for i, b in enumerate(tl["buckets"])
                    ],
                    right=set(range(1, len(tl["series"]) + 2)),
                )  # fmt: skip
            )
            if tl["series"][-1]["provider"] == OTHER:
                add(f"\n{md(OTHER)}: {codes(tl['series'][-1]['providers'], 20)}\n")
        else:
            add("_no LLM API traffic in this period_\n")
        add("\n### By provider\n")
        add(_breakdown_table(report.by_provider, "provider", "provider"))
        add("\n### By site\n")
        add(_breakdown_table(report.by_site, "site", "site"))
        add("\n### By egress country\n")
        add(_breakdown_table(report.by_egress_country, "egress_country", "egress country"))
        add("\n### Top destinations\n")
        add(
            table(
                [
                    "host",
                    "provider",
                    "kind",
                    "requests",
                    "blocked",
                    "clients",
                    "bytes in",
                    "example URL",
                ],
                [
                    [
                        code(d["dest_host"], 48),
                        code(d["provider"]),
                        md(d["kind"]),
                        num(d["requests"]),
                        num(d["blocked"]),
                        num(d["clients"]),
                        num(d["bytes_in"]),
                        code(d["example_url"]),
                    ]
                    for d in report.top_destinations
                ],
                right={3, 4, 5, 6},
            )  # fmt: skip
        )
        return out

    def csv_rows(self, report: Report) -> Iterator[CsvRow]:
        tl = report.timeline
        for s in tl["series"]:
            for bucket, v in zip(tl["buckets"], s["values"], strict=True):
                yield f"timeline_{tl['bucket']}", bucket, s["provider"], "requests", v
        for section, key in BREAKDOWNS:
            for row in getattr(report, section):
                for metric in NUMERIC:
                    yield section, row[key], None, metric, row[metric]
        for d in report.top_destinations:
            for metric in ("requests", "blocked", "clients", "bytes_out", "bytes_in"):
                yield "top_destinations", d["dest_host"], d["provider"], metric, d[metric]

    def html_vars(self, report: Report) -> dict[str, Any]:
        from monitor.report.html import OTHER_COLOUR, PALETTE, hbars, stacked_bars

        tl = report.timeline
        timeline, legend = stacked_bars(
            tl["buckets"], tl["series"], f"LLM API requests per {tl['bucket']}, by provider"
        )
        countries = [
            (
                c["egress_country"] or "(unknown)",
                [("requests", c["requests"], PALETTE[0]), ("previous period", c["previous_requests"], OTHER_COLOUR)],
            )
            for c in report.by_egress_country[:15]
        ]  # fmt: skip
        return {
            "charts": {
                "timeline": timeline,
                "legend": legend,
                "countries": hbars(countries, "Requests by egress country", 120)
                if countries
                else None,
            }
        }


def _breakdown_table(rows: list[dict[str, Any]], key: str, label: str) -> str:
    return table(
        [label, *_BREAKDOWN_HEAD],
        [
            [
                code(r[key]) if r[key] is not None else "(unknown)",
                num(r["requests"]),
                f"{r['share_pct']:.1f} %",
                num(r["blocked"]),
                num(r["clients"]),
                num(r["bytes_out"]),
                num(r["bytes_in"]),
                num(r["previous_requests"]),
                change(r["change"], r["change_pct"]),
            ]
            for r in rows
        ],
        right=set(range(1, 9)),
    )


def _breakdown(
    cur: pd.DataFrame, old: pd.DataFrame, who: pd.DataFrame, key: str
) -> list[dict[str, Any]]:
    """One row per value of ``key``: requests, blocked, bytes, clients, previous requests."""
    if not len(cur) and not len(old):
        return []
    rows: dict[Any, dict[str, Any]] = {}
    if len(cur):
        grouped = cur.groupby(key, dropna=False).agg(
            requests=("requests", "sum"),
            blocked=("blocked", "sum"),
            bytes_out=("bytes_out", sum_or_none),
            bytes_in=("bytes_in", sum_or_none),
        )
        clients = {
            py(k): int(v)
            for k, v in (
                who.groupby(key, dropna=False).client_ip.nunique().items() if len(who) else ()
            )
        }
        for k, r in grouped.iterrows():
            k = py(k)
            rows[k] = {
                key: k,
                "requests": int(r.requests),
                "blocked": int(r.blocked),
                "bytes_out": int_or_none(r.bytes_out),
                "bytes_in": int_or_none(r.bytes_in),
                "clients": clients.get(k, 0),
                "previous_requests": 0,
            }
    if len(old):
        for k, n in old.groupby(key, dropna=False).requests.sum().items():
            k = py(k)
            row = rows.setdefault(
                k,
                {
                    key: k,
                    "requests": 0,
                    "blocked": 0,
                    "bytes_out": None,
                    "bytes_in": None,
                    "clients": 0,
                    "previous_requests": 0,
                },
            )
            row["previous_requests"] = int(n)
    total = sum(r["requests"] for r in rows.values())
    out = []
    for row in rows.values():
        row["share_pct"] = round(row["requests"] * 100.0 / total, 1) if total else 0.0
        row["change"] = row["requests"] - row["previous_requests"]
        row["change_pct"] = pct(row["requests"], row["previous_requests"])
        out.append(row)
    out.sort(key=lambda r: (-r["requests"], -r["previous_requests"], str(r[key] or "")))
    return out


def _timeline(
    cur: pd.DataFrame, win: Window, origin: datetime, bucket_name: str, width: int
) -> dict[str, Any]:
    n = max(1, int(-(-(win.until - origin).total_seconds() // width)))
    starts = [origin + timedelta(seconds=width * i) for i in range(n)]
    fmt = "%Y-%m-%dT%H:00" if bucket_name == "hour" else "%Y-%m-%d"
    fmt += "Z" if bucket_name == "hour" and win.tz == "UTC" else ""
    zone = _zone(win.tz)
    out: dict[str, Any] = {
        "bucket": bucket_name,
        "buckets": [s.astimezone(zone).strftime(fmt) for s in starts],
        "series": [],
    }
    if not len(cur):
        return out
    per = cur.groupby(["provider", "bucket"]).requests.sum()
    ranking = cur.groupby("provider").requests.sum().sort_values(ascending=False, kind="stable")
    ranking = ranking.sort_index().sort_values(ascending=False, kind="stable")
    shown = list(ranking.index[:TIMELINE_SERIES])
    if len(ranking) > TIMELINE_SERIES + 1:
        rest = list(ranking.index[TIMELINE_SERIES:])
    else:
        shown, rest = list(ranking.index), []
    for name in shown:
        values = [0] * n
        for b, v in per.loc[name].items():
            if 0 <= int(b) < n:
                values[int(b)] += int(v)
        out["series"].append({"provider": name, "values": values, "total": sum(values)})
    if rest:
        values = [0] * n
        for name in rest:
            for b, v in per.loc[name].items():
                if 0 <= int(b) < n:
                    values[int(b)] += int(v)
        out["series"].append(
            {"provider": OTHER, "providers": rest, "values": values, "total": sum(values)}
        )
    return out


SECTION = Traffic()
