"""``findings`` (what an analyst works, one row per rule, provider and site or egress country)
and ``reevaluate`` (the stored traffic under the current settings)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from monitor.cli.base import (
    app_of,
    date_value,
    filter_options,
    guard,
    listing_options,
    main,
    query_of,
)
from monitor.output import write_rows


def writable(db: Path) -> bool:
    """Whether this process may change the database (the file, and its directory for the
    WAL); a database not created yet counts as writable."""
    if not db.exists():
        return True
    return os.access(db, os.W_OK) and os.access(db.parent, os.W_OK)


FINDING_TABLE = [
    "id", "severity", "rule", "provider", "site", "egress_country", "status", "last_seen",
    "count", "blocked", "clients", "users", "hosts", "days", "exception_until",
]  # fmt: skip


@main.command("findings")
@filter_options
@listing_options("finding")
@click.pass_context
@guard
def findings_cmd(ctx, limit, out, spreadsheet_safe, **filters):
    """List findings, newest activity first: one per rule, provider and site (or egress
    country where no site is known), with the detail (``incidents --finding ID``) underneath.

    With --client or --user, the figures count only that detail.

    \b
    apiwatch findings
    apiwatch findings --status open --status reopened --severity high
    apiwatch findings --site shanghai --user alice --json | jq -r .id
    apiwatch show F-3a9c01d2e4f5
    """
    from monitor.findings import FINDING_FIELDS

    app = app_of(ctx)
    if writable(app.db_path):  # exceptions that ran out show as such (with their event)
        app.apply_exceptions()
    else:  # an auditor's copy, a read-only mount: list what is stored
        app.for_reading()
    rows = app.store.findings(query_of(filters, limit=limit))
    if out:  # the fields scripts rely on, in their order
        rows = ({k: r[k] for k in FINDING_FIELDS} for r in rows)
    n = write_rows(
        rows, out or "table", FINDING_FIELDS, sys.stdout, FINDING_TABLE, spreadsheet_safe
    )
    if n == 0 and not out:
        click.echo("no findings match", err=True)


@main.command("reevaluate")
@click.option(
    "--since",
    callback=date_value,
    metavar="YYYY-MM-DD",
    help="Only stored traffic of this UTC day and later [default: everything kept].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
@guard
def reevaluate_cmd(ctx, since, as_json):
    """Apply the current config, catalogue, geodata, overrides and rules to the stored
    observations: the database then holds what a fresh scan of the same logs would store.

    Findings whose basis disappeared become superseded (kept, with an event); new ones are
    raised; statuses and the audit trail are kept. Traffic the catalogue did not know when
    it was scanned was never stored: re-scan the logs (--full) for that.

    \b
    apiwatch reevaluate
    apiwatch --config new.toml reevaluate --since 2026-11-01 --json
    """
    from monitor.reevaluate import reevaluate

    app = app_of(ctx)
    done = reevaluate(app, since.isoformat() if since else None)
    r = done.result
    summary = {
        "since": done.start_day or None, "observations": r.observations, "changed": r.changed,
        "removed": r.removed, "incidents": r.incidents, "findings_new": sorted(r.new),
        "findings_superseded": sorted(r.superseded), "findings_reopened": sorted(r.reopened),
        "seconds": round(done.seconds, 3), "per_second": round(done.per_second),
    }  # fmt: skip
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"re-evaluated {r.observations} observation(s) in {done.seconds:.1f} s "
        f"({done.per_second:,.0f}/s): {r.changed} changed, {r.removed} no longer LLM traffic; "
        f"{r.incidents} incident(s); findings: {len(r.new)} new, {len(r.superseded)} superseded, "
        f"{len(r.reopened)} back"
    )
