"""Methods: the scans, sources, catalogue, geolocation data and rules behind the figures,
and the definitions: what makes the report evidence."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from monitor.observation import iso_datetime as _iso
from monitor.report.data import Context, Report, ReportSource, Window, loads, py
from monitor.report.markdown import code, codes, md, num, table
from monitor.report.section import CsvRow, Section

PROBLEM_SAMPLES = 20


class Methods(Section):
    id = "methods"
    nav = "Methods"

    def compute(self, ctx: Context) -> dict[str, Any]:
        return {"methods": _methods(ctx.source, ctx.window, ctx.sources)}

    def markdown(self, report: Report) -> list[str]:
        x = report.methods
        out: list[str] = []
        add = out.append
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
                [
                    "scan",
                    "started",
                    "files",
                    "records",
                    "malformed",
                    "LLM records",
                    "new",
                    "catalogue",
                ],
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
                            code(
                                f"{p['source']}:{p['line'] if p['line'] is not None else '-'}", 80
                            ),
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
        return out

    def csv_rows(self, report: Report) -> Iterator[CsvRow]:
        x = report.methods
        for metric in ("records", "malformed", "file_errors"):
            yield "methods", "scans", None, metric, x[metric]
        for s in x["sources"]:
            yield "sources", s["source"], s["format"], "observations", s["observations"]
            yield "sources", s["source"], s["format"], "first", s["first"]
            yield "sources", s["source"], s["format"], "last", s["last"]
        for s in x["scans"]:
            for metric in ("records", "malformed", "llm_observations", "stored", "duplicates"):
                yield "scans", s["id"], s["started"], metric, s[metric]
        for p in x["problems_by_source"]:
            yield "problems", p["source"], None, "problems", p["problems"]
        yield "catalog", "version", None, "value", x["catalog"]["version"]
        for rl in x["catalog"]["region_lists"]:
            yield "region_lists", rl["id"], rl["provider"], "countries", rl["countries"]
            yield "region_lists", rl["id"], rl["provider"], "as_of", rl["as_of"]
        for g in x["geodata"]:
            yield "geodata", g.get("name"), g.get("origin"), "build_date", g.get("build_date")
        for rule in x["rules"]:
            yield "rules", rule["id"], rule["severity"], "used_in_scans", rule["used_in_scans"]


def _retention(app: ReportSource, win: Window) -> dict[str, Any]:
    """Whether ``apiwatch db prune`` removed traffic detail this period's figures needed:
    incidents survive a prune, traffic rows do not, so the report must say so."""
    pruned = app.store.pruned_before()
    return {"pruned_before": pruned, "affects_period": bool(pruned and win.first_day < pruned)}


def _methods(app: ReportSource, win: Window, sources: pd.DataFrame) -> dict[str, Any]:
    store = app.store
    contributing = sorted({int(x) for x in sources.scan_id.dropna()}) if len(sources) else []
    scan_ids = sorted(set(contributing) | set(store.scans_started(win.since, win.until)))
    scans = []
    catalog_versions: set[str] = set()
    geodata: dict[tuple, dict[str, Any]] = {}
    rules_used: set[str] = set()
    for row in store.scans(scan_ids):
        options = loads(row.get("options"), {})
        if row.get("catalog_version"):
            catalog_versions.add(row["catalog_version"])
        for g in loads(row.get("geodata"), []):
            geodata.setdefault((g.get("name"), g.get("path"), g.get("build_date")), g)
        rules_used.update(options.get("rules", []))
        scans.append(
            {
                "id": row["id"],
                "started": row.get("started"),
                "finished": row.get("finished"),
                "files": loads(row.get("files"), []),
                "records": row.get("records"),
                "malformed": row.get("malformed"),
                "llm_observations": row.get("llm_observations"),
                "stored": row.get("stored"),
                "duplicates": row.get("duplicates"),
                "file_errors": len(loads(row.get("file_errors"), [])),
                "exit_code": row.get("exit_code"),
                "catalog_version": row.get("catalog_version"),
                "options": {k: v for k, v in (options.get("egress") or {}).items() if v is not None}
                | {
                    k: v
                    for k, v in (options.get("collect") or {}).items()
                    if v not in (None, "auto")
                },
            }
        )
    problem_counts = store.problem_counts(scan_ids)
    problems = store.problem_samples(scan_ids, PROBLEM_SAMPLES)
    source_rows = []
    if len(sources):
        per = sources.groupby(["source", "format"], dropna=False).agg(
            observations=("observations", "sum"),
            first_ts=("first_ts", "min"),
            last_ts=("last_ts", "max"),
            scans=("scan_id", lambda s: sorted({int(x) for x in s})),
        )
        for (src, fmt), r in per.sort_index().iterrows():
            source_rows.append(
                {
                    "source": py(src),
                    "format": py(fmt),
                    "observations": int(r.observations),
                    "first": _iso(datetime.fromtimestamp(float(r.first_ts), UTC)),
                    "last": _iso(datetime.fromtimestamp(float(r.last_ts), UTC)),
                    "scans": r.scans,
                }
            )
    catalog = app.catalog
    current_geo = [asdict(s) for s in app.geo.sources()]
    return {
        "scans": scans,
        "sources": source_rows,
        "records": sum(s["records"] or 0 for s in scans),
        "malformed": sum(s["malformed"] or 0 for s in scans),
        "file_errors": sum(s["file_errors"] for s in scans),
        "problems_by_source": problem_counts,
        "problems": problems,
        "catalog": {
            "version": catalog.version,
            "versions_in_scans": sorted(catalog_versions),
            "providers": len(catalog.providers),
            "region_lists": [
                {
                    "id": r.id,
                    "provider": r.provider_id,
                    "scope": r.scope,
                    "countries": len(r.countries),
                    "as_of": r.as_of,
                    "sources": list(r.sources),
                }
                for r in sorted(catalog.region_lists.values(), key=lambda r: r.id)
            ],
        },
        "retention": _retention(app, win),
        "geodata": list(geodata.values()) or current_geo,
        "geodata_recorded": bool(geodata),
        "geodata_current": current_geo,
        "rules": [
            {
                "id": r.id,
                "severity": r.severity,
                "title": r.title,
                "source": r.source,
                "used_in_scans": r.id in rules_used,
            }
            for r in app.rules.rules
        ],
        "rules_in_scans": sorted(rules_used),
        "allowed_providers": list(app.config.allowed_providers),
    }


SECTION = Methods()
