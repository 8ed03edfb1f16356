"""Where prompts are processed: requests by processing geo and residency basis per site,
against the site's data-residency requirement (config ``data_residency``; see
:mod:`monitor.residency`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from monitor.report.data import Context, Report
from monitor.report.markdown import code, codes, md, num, table
from monitor.report.section import CsvRow, Section

#: status of a row against its site's requirement, most urgent first
STATUSES = ("outside", "unverifiable", "inside", "no requirement")


class Processing(Section):
    id = "processing"
    nav = "Processing"

    def queries(self, ctx: Context) -> dict[str, Callable[[], Any]]:
        if ctx.cube_counts_processing:  # the cube's read counts them
            return {}
        return {"processing": lambda: ctx.context_read(1)}

    def compute(self, ctx: Context) -> dict[str, Any]:
        found = ctx.fetched["processing"]
        return {"processing": processing_summary(found, ctx.source.config, ctx.source.catalog)}

    def markdown(self, report: Report) -> list[str]:
        p = report.processing
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

    def csv_rows(self, report: Report) -> Iterator[CsvRow]:
        p = report.processing
        for status in STATUSES:
            key = status.replace(" ", "_")
            yield "processing", "total", None, key, p["totals"][key]
        for r in p["rows"]:
            key = f"{r['processing_geo'] or '-'}/{r['residency_basis'] or '-'}"
            for metric in ("requests", "blocked", "status"):
                yield "processing", r["site"], key, metric, r[metric]


def processing_summary(found: Any, config: Any, catalog: Any) -> dict[str, Any]:
    """Rows by (site, geo, basis) with their status against the site's requirement (the
    site's own ``data_residency``, else the organisation's), most urgent first."""
    tables = catalog.residency
    requirement: dict[str | None, tuple[str, ...]] = {None: tuple(config.data_residency)}
    for name, site in config.sites.items():
        own = site.data_residency
        requirement[name] = tuple(config.data_residency if own is None else own)
    allowed = {site: tables.allowed_geos(req) for site, req in requirement.items()}
    groups: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for values in found.rows:
        r = dict(zip(found.columns, values, strict=True))
        site = r["site"]
        req = requirement.get(site, requirement[None])
        ok = allowed.get(site, allowed[None])
        row = groups.setdefault(
            (site, r["geo"], r["basis"]),
            {
                "site": site,
                "requirement": list(req),
                "processing_geo": r["geo"],
                "residency_basis": r["basis"],
                "requests": 0,
                "blocked": 0,
                "regions": {},
                "status": (
                    "no requirement" if not req
                    else "unverifiable" if r["geo"] is None
                    else "inside" if r["geo"] in ok
                    else "outside"
                ),
            },
        )  # fmt: skip
        row["requests"] += r["requests"] or 0
        row["blocked"] += r["blocked"] or 0
        if r["region"]:
            row["regions"][r["region"]] = row["regions"].get(r["region"], 0) + (r["requests"] or 0)
    rows = sorted(
        groups.values(),
        key=lambda x: (
            STATUSES.index(x["status"]),
            -x["requests"],
            str(x["site"]),
            str(x["processing_geo"]),
        ),
    )
    totals = dict.fromkeys((s.replace(" ", "_") for s in STATUSES), 0)
    for row in rows:
        row["regions"] = sorted(row["regions"], key=lambda k: (-row["regions"][k], k))
        totals[row["status"].replace(" ", "_")] += row["requests"]
    return {
        "requirements": {(site or "-"): list(req) for site, req in requirement.items() if req},
        "rows": rows,
        "totals": totals,
    }


SECTION = Processing()
