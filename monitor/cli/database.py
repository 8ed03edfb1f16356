"""``db check`` and ``db prune``: integrity, schema and retention of the database."""

from __future__ import annotations

import json

import click

from monitor.cli.base import EXIT_ERROR, app_of, guard, main


@main.group("db")
def db_group():
    """Look after the database: integrity, schema, retention.

    \b
    apiwatch db check
    apiwatch db prune --keep 90d
    """


@db_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
@guard
def db_check(ctx, as_json):
    """Integrity check, schema version and table sizes; exit 1 when something is wrong.

    \b
    apiwatch db check
    apiwatch --db /var/lib/apiwatch/apiwatch.db db check --json
    """
    import sqlite3

    from monitor.store import StoreError

    app = app_of(ctx).for_reading()
    try:
        report = app.store.check()
    except StoreError as exc:  # too damaged to open: that is the finding
        if not isinstance(exc.__cause__, sqlite3.DatabaseError):
            raise
        report = {"path": str(app.db_path), "integrity": f"cannot be opened: {exc.__cause__}",
                  "orphan_hits": None, "tables": {}}  # fmt: skip
    if as_json:
        click.echo(json.dumps(report))
    else:
        for key, value in report.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            click.echo(f"{key:<24} {value}")
    unreadable = any(isinstance(n, str) for n in report["tables"].values())
    if (report["integrity"] != "ok" or report["orphan_hits"] or unreadable
            or report.get("incidents_without_finding")):  # fmt: skip
        ctx.exit(EXIT_ERROR)


@db_group.command("prune")
@click.option(
    "--keep",
    required=True,
    metavar="AGE",
    help="Keep traffic detail this recent: 90d, 12w, or an ISO date.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
@guard
def db_prune(ctx, keep, as_json):
    """Delete traffic detail (observations) older than AGE; incidents and their counts stay.

    Logs from before the cut are not counted again if scanned later.

    \b
    apiwatch db prune --keep 90d
    """
    from monitor.timespec import parse_when

    try:
        before = parse_when(keep)[:10]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--keep") from None
    deleted = app_of(ctx).store.prune(before)
    if as_json:
        click.echo(json.dumps({"before": before, **deleted}))
    else:
        click.echo(
            f"deleted {deleted['observations']} observations before {before} ({deleted['hits']} links)"
        )
