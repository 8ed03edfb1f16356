"""CSV and JSON reports for BI tools.

JSON is the report model as it is (:meth:`Report.to_dict`): every figure of every format.

CSV is one long ("tidy") table, so that a BI tool can pivot it and daily files can be
appended: ``since, until, section, key, subkey, metric, value``. Values are written as they
are, for fidelity. With ``spreadsheet_safe`` (``--spreadsheet-safe``, config
``spreadsheet_safe = true``; use it for files people open in Excel or LibreOffice), a text
cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with
``'`` so that a spreadsheet shows it instead of running it as a formula (CSV injection).
Numbers are never changed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from monitor.output import csv_text, json_text, spreadsheet_cell
from monitor.report.data import Report
from monitor.report.processing import csv_rows as processing_csv_rows

CSV_COLUMNS = ("since", "until", "section", "key", "subkey", "metric", "value")


def render_json(report: Report) -> str:
    return json_text(report.to_dict(), indent=1) + "\n"


def csv_rows(report: Report) -> Iterator[tuple[str, Any, Any, str, Any]]:
    """(section, key, subkey, metric, value) for every figure."""
    m = report.meta
    for k in ("period", "label", "since", "until", "generated", "complete"):
        yield "meta", k, None, "value", m[k]
    for k in ("site", "provider"):
        for v in m["filters"][k]:
            yield "meta", "filter", k, "value", v
    for t in report.totals:
        for metric in ("current", "previous", "change", "change_pct"):
            yield "totals", t["metric"], None, metric, t[metric]
    tl = report.timeline
    for s in tl["series"]:
        for bucket, v in zip(tl["buckets"], s["values"], strict=True):
            yield f"timeline_{tl['bucket']}", bucket, s["provider"], "requests", v
    numeric = ("requests", "share_pct", "blocked", "clients", "bytes_out", "bytes_in",
               "previous_requests", "change", "change_pct")  # fmt: skip
    for section, key in (
        ("by_provider", "provider"),
        ("by_site", "site"),
        ("by_egress_country", "egress_country"),
    ):
        for row in getattr(report, section):
            for metric in numeric:
                yield section, row[key], None, metric, row[metric]
    inc = report.incidents
    metrics = ("new", "previous_new", "active", "open", "acknowledged", "resolved")
    for row in inc["by_severity"]:
        for metric in metrics:
            yield "incidents_by_severity", row["severity"], None, metric, row[metric]
    for row in inc["by_rule"]:
        for metric in metrics:
            yield "incidents_by_rule", row["rule"], row["severity"], metric, row[metric]
    for name, part in inc["lists"].items():
        for item in part["items"]:
            yield f"incidents_{name}", item["id"], item["rule"], "count", item["count"]
    for action, n in report.events["by_action"].items():
        yield "audit_trail", action, None, "events", n
    yield "audit_trail", "total", None, "events", report.events["total"]
    for c in report.top_clients:
        for metric in ("requests", "blocked", "bytes_out", "bytes_in"):
            yield "top_clients", c["client_ip"], ", ".join(c["users"]), metric, c[metric]
    for d in report.top_destinations:
        for metric in ("requests", "blocked", "clients", "bytes_out", "bytes_in"):
            yield "top_destinations", d["dest_host"], d["provider"], metric, d[metric]
    yield from processing_csv_rows(report.processing)
    yield "relays", "total", None, "requests", report.relays["requests"]
    yield "relays", "total", None, "clients", report.relays["clients"]
    for d in report.relays["hosts"]:
        for metric in ("requests", "blocked", "clients", "bytes_out", "bytes_in"):
            yield "relays", d["dest_host"], d["provider"], metric, d[metric]
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


def render_csv(report: Report, spreadsheet_safe: bool = False) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    since, until = report.meta["since"], report.meta["until"]
    for section, key, subkey, metric, value in csv_rows(report):
        row = [since, until, section, key, subkey, metric, value]
        row = ["" if v is None else csv_text(v) for v in row]
        if spreadsheet_safe:
            row = [spreadsheet_cell(v) for v in row]
        writer.writerow(row)
    return buf.getvalue()
