"""The Markdown report, for tickets and e-mail (CommonMark / GitHub tables).

Log data (hosts, URLs, users, file names, client addresses) goes into code spans: nothing in
it is markup there, so ``<script>``, ``[links](…)`` and ``*emphasis*`` stay literal text, and a
bare ``https://…`` is not turned into a link. The only character a table still reads in a
code span is ``|``, which is escaped. Other text (rule ids, notes) has the Markdown
punctuation escaped with backslashes. Control and bidirectional-override characters are
shown as visible ``\\u202e`` escapes in both, and long values are cut with an ellipsis.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from monitor.output import safe_text
from monitor.report.data import OTHER, Report

CELL_LIMIT = 60
_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#!~&])")
_TICKS = re.compile(r"`+")


def md(value: Any, limit: int = CELL_LIMIT) -> str:
    """Plain text with every Markdown-significant character escaped."""
    if value is None or value == "":
        return "–"
    shown = _cut(safe_text(value, None), limit)
    return _SPECIAL.sub(r"\\\1", shown)


def code(value: Any, limit: int = CELL_LIMIT) -> str:
    """Log data as a code span (literal text), safe inside a table cell."""
    if value is None or value == "":
        return "–"
    shown = _cut(safe_text(value, None), limit).replace("|", "\\|")
    fence = "`" * (max((len(m) for m in _TICKS.findall(shown)), default=0) + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


def codes(values: Sequence[Any] | None, limit: int = 3) -> str:
    values = list(values or [])
    if not values:
        return "–"
    out = ", ".join(code(v, 40) for v in values[:limit])
    return out + (f" +{len(values) - limit}" if len(values) > limit else "")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def num(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def change(value: Any, pct: Any = None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "±0"
    out = f"{value:+,}"
    return out + (f" ({pct:+.1f} %)" if pct is not None else "")


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] = frozenset()
) -> str:
    """A GitHub table; cells must already be escaped (md/code/num)."""
    if not rows:
        return "_none_\n"
    head = "| " + " | ".join(headers) + " |"
    rule = "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|"
    body = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([head, rule, *body]) + "\n"


_BREAKDOWN = [
    "requests",
    "share",
    "blocked",
    "clients",
    "bytes out",
    "bytes in",
    "previous",
    "change",
]


def _breakdown(rows: list[dict[str, Any]], key: str, label: str) -> str:
    return table(
        [label, *_BREAKDOWN],
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


_INCIDENT_HEAD = ["id", "severity", "rule", "provider", "destination", "client", "site",
                  "egress", "first seen", "last seen", "count", "status"]  # fmt: skip


def _incidents(items: list[dict[str, Any]]) -> str:
    return table(
        _INCIDENT_HEAD,
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


def _findings(fd: dict[str, Any]) -> list[str]:
    """The findings first: what there is to decide, in plain words, then the list; the
    detail (incidents) is the section further down."""
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
                    md(
                        f["status"]
                        + (" (reopened in period)" if f["reopened_in_period"] else "")
                        + (
                            f" (exception until {f['exception_until']})"
                            if f["exception_until"]
                            else ""
                        )
                    ),
                    num(f["count"]),
                    num(f["clients"]),
                    num(f["users"]),
                    num(f["days"]),
                    ", ".join(f"{code(u['user'], 30)} ({num(u['count'])})" for u in f["top_users"])
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


def render_markdown(report: Report) -> str:
    r = report
    m = r.meta
    out: list[str] = []
    add = out.append
    add(f"# apiwatch {m['period']} report: {m['label']}\n")
    add(
        f"LLM API traffic and region-policy incidents, {m['since']} to {m['until']} "
        f"(UTC, end excluded), compared with {m['previous']['label']}.  "
    )
    filters = m["filters"]
    if filters["site"] or filters["provider"]:
        add(
            "Filtered: "
            + (f"site {codes(filters['site'], 10)} " if filters["site"] else "")
            + (f"provider {codes(filters['provider'], 10)}" if filters["provider"] else "")
            + "  "
        )
    add(
        f"Generated {m['generated']} by apiwatch {m['apiwatch_version']} from {code(m['database'], 90)}.\n"
    )
    if not m["complete"]:
        add(f"> **This period is not over yet**: the figures cover it up to {m['generated']}.\n")

    out.extend(_findings(r.findings))
    add("## Summary\n")
    add(
        table(
            ["figure", "this period", "previous period", "change"],
            [
                [
                    md(t["label"]),
                    num(t["current"]),
                    num(t["previous"]),
                    change(t["change"], t["change_pct"]),
                ]
                for t in r.totals
            ],
            right={1, 2, 3},
        )
    )

    add("## Traffic\n")
    tl = r.timeline
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
    add(_breakdown(r.by_provider, "provider", "provider"))
    add("\n### By site\n")
    add(_breakdown(r.by_site, "site", "site"))
    add("\n### By egress country\n")
    add(_breakdown(r.by_egress_country, "egress_country", "egress country"))
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
                for d in r.top_destinations
            ],
            right={3, 4, 5, 6},
        )  # fmt: skip
    )

    inc = r.incidents
    t = inc["totals"]
    add("\n## Incidents\n")
    add(
        f"{num(t['new'])} new ({num(inc['previous']['new'])} in the previous period), "
        f"{num(t['active'])} active in the period; backlog now: {num(t['open'])} open, "
        f"{num(t['acknowledged'])} acknowledged; {num(t['resolved'])} resolved during the period.\n"
    )
    metrics = ["new", "previous_new", "active", "open", "acknowledged", "resolved"]
    heads = ["new", "previous period", "active", "open", "acknowledged", "resolved"]
    add(
        table(
            ["severity", *heads],
            [[md(s["severity"]), *(num(s[k]) for k in metrics)] for s in inc["by_severity"]],
            right=set(range(1, 7)),
        )
    )
    add("\n### By rule\n")
    add(
        table(
            ["rule", "severity", *heads],
            [
                [md(s["rule"]), md(s["severity"]), *(num(s[k]) for k in metrics)]
                for s in inc["by_rule"]
            ],
            right=set(range(2, 8)),
        )
    )
    lists = inc["lists"]
    for key, title in (
        ("new", "New in the period"),
        ("open", "Still open (open or acknowledged)"),
        ("resolved", "Resolved during the period"),
    ):
        part = lists[key]
        add(f"\n### {title} ({num(part['shown'])} of {num(part['total'])})\n")
        add(_incidents(part["items"]))

    ev = r.events
    add("\n## Audit trail\n")
    add(f"{num(ev['total'])} status change(s) in the period" + (f", the first {num(ev['shown'])} shown" if ev["total"] > ev["shown"] else "") + ".\n")  # fmt: skip
    add(
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
        )  # fmt: skip
    )

    add("\n## Top clients\n")
    add(
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
                for c in r.top_clients
            ],
            right={4, 5, 6},
        )  # fmt: skip
    )

    out.extend(_processing(r.processing))

    rl = r.relays
    add("\n## Relay use\n")
    add(f"{num(rl['requests'])} request(s) from {num(rl['clients'])} client(s) went to relays, aggregators, AI gateways or generic hosting often used as a relay.\n")  # fmt: skip
    add(
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
        )  # fmt: skip
    )

    x = r.methods
    add("\n## Methods\n")
    add(
        f"{len(x['scans'])} scan(s) contributed records to this period or ran during it: "
        f"{num(x['records'])} log records read, {num(x['malformed'])} malformed, "
        f"{num(x['file_errors'])} unreadable input(s).\n"
    )
    add("\n### Sources\n")
    add(
        table(
            ["file", "format", "LLM records", "first", "last", "scans"],
            [
                [
                    code(s["source"], 80),
                    md(s["format"]),
                    num(s["observations"]),
                    s["first"],
                    s["last"],
                    ", ".join(str(i) for i in s["scans"]),
                ]
                for s in x["sources"]
            ],
            right={2},
        )  # fmt: skip
    )
    add("\n### Scans\n")
    add(
        table(
            ["scan", "started", "files", "records", "malformed", "LLM records", "new", "catalogue"],
            [
                [
                    str(s["id"]),
                    md(s["started"]),
                    codes(s["files"]),
                    num(s["records"]),
                    num(s["malformed"]),
                    num(s["llm_observations"]),
                    num(s["stored"]),
                    md(s["catalog_version"]),
                ]
                for s in x["scans"]
            ],
            right={0, 3, 4, 5, 6},
        )  # fmt: skip
    )
    if x["problems_by_source"]:
        add("\n### Malformed records and unreadable inputs\n")
        add(table(["file", "problems"], [[code(p["source"], 80), num(p["problems"])] for p in x["problems_by_source"]], right={1}))  # fmt: skip
        add("\n")
        add(
            table(
                ["file:line", "reason", "excerpt"],
                [
                    [
                        code(f"{p['source']}:{p['line'] if p['line'] is not None else '-'}", 80),
                        md(p["reason"], 80),
                        code(p["excerpt"], 80),
                    ]
                    for p in x["problems"]
                ],
            )  # fmt: skip
        )
    if x["retention"]["affects_period"]:
        add(
            f"\n**Traffic detail before {md(x['retention']['pruned_before'])} was pruned** "
            "(`apiwatch db prune`): traffic figures for earlier days are missing, while their "
            "incidents and counts remain.\n"
        )
    cat = x["catalog"]
    add("\n### Provider catalogue\n")
    add(f"Catalogue version {md(cat['version'])} ({num(cat['providers'])} providers and relays)" + (f"; the scans used {', '.join(md(v) for v in cat['versions_in_scans'])}" if cat["versions_in_scans"] else "") + ".\n")  # fmt: skip
    add(
        table(
            ["region list", "provider", "countries", "as of", "source"],
            [
                [
                    md(rl["id"]),
                    md(rl["provider"]),
                    num(rl["countries"]),
                    md(rl["as_of"] or "undated"),
                    code(rl["sources"][0] if rl["sources"] else None, 100),
                ]
                for rl in cat["region_lists"]
            ],
            right={2},
        )  # fmt: skip
    )
    add("\n### Geolocation data\n")
    add(
        table(
            ["source", "type", "capability", "origin", "build date"],
            [
                [
                    code(g.get("name")),
                    md(g.get("database_type")),
                    md(g.get("capability")),
                    md(g.get("origin")),
                    md(g.get("build_date")),
                ]
                for g in x["geodata"]
            ],
        )  # fmt: skip
    )
    add("\n### Rules in force\n")
    add(
        table(
            ["rule", "severity", "title", "used by the scans"],
            [
                [
                    md(rule["id"]),
                    md(rule["severity"]),
                    md(rule["title"], 100),
                    "yes" if rule["used_in_scans"] else "no",
                ]
                for rule in x["rules"]
            ],
        )  # fmt: skip
    )
    allowed = x["allowed_providers"]
    add(f"\nOrganisation's provider allow-list: {codes(allowed, 50) if allowed else '_empty (unapproved-provider is off)_'}.\n")  # fmt: skip
    add(
        "\n**Definitions.** Requests: stored LLM API observations in the period (re-scans are "
        "stored once); blocked: denied by the proxy. Incidents: one per (rule, provider, "
        "destination, client, egress, UTC day); new = first seen in the period, active = seen "
        "during it, open/acknowledged = current status of incidents first seen before its end, "
        "resolved = resolved during it (audit trail).\n"
    )
    return "\n".join(out)


def _processing(p: dict[str, Any]) -> list[str]:
    t = p["totals"]
    return [
        "\n## Where prompts are processed\n",
        f"{num(t['outside'])} request(s) were processed outside their site's residency requirement and {num(t['unverifiable'])} went where the processing location cannot be verified (global endpoints, unmapped resources); {num(t['inside'])} stayed inside it.\n",  # fmt: skip
        table(
            [
                "site",
                "requirement",
                "processing geo",
                "basis",
                "regions",
                "requests",
                "blocked",
                "status",
            ],
            [
                [
                    code(r["site"]),
                    codes(r["requirement"], 6) if r["requirement"] else "-",
                    code(r["processing_geo"]),
                    md(r["residency_basis"]),
                    codes(r["regions"], 3),
                    num(r["requests"]),
                    num(r["blocked"]),
                    md(r["status"]),
                ]
                for r in p["rows"]
            ],
            right={5, 6},
        ),  # fmt: skip
    ]
