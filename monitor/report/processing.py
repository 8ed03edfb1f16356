"""Report section "Where prompts are processed": requests by processing geo and residency
basis per site, against the site's data-residency requirement (config ``data_residency``;
see :mod:`monitor.residency`). The figures and their CSV rows; Markdown and HTML render
them beside the other sections."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: status of a row against its site's requirement, most urgent first
STATUSES = ("outside", "unverifiable", "inside", "no requirement")
TOP_REGIONS = 3
TITLE = "Where prompts are processed"


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


def csv_rows(p: dict[str, Any]) -> Iterator[tuple[str, Any, Any, str, Any]]:
    for status in STATUSES:
        key = status.replace(" ", "_")
        yield "processing", "total", None, key, p["totals"][key]
    for r in p["rows"]:
        key = f"{r['processing_geo'] or '-'}/{r['residency_basis'] or '-'}"
        for metric in ("requests", "blocked", "status"):
            yield "processing", r["site"], key, metric, r[metric]
