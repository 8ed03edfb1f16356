"""``ack`` and ``resolve``: the lifecycle of findings (and incidents), with who and why —
by id, or in bulk by the filters of ``findings``."""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from monitor.cli.base import (
    Fatal,
    bulk_filter_options,
    date_value,
    guard,
    main,
    query_of,
    report_delivery,
)
from monitor.findings import is_finding_id
from monitor.output import write_rows

if TYPE_CHECKING:
    from monitor.app import App


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _set_status(ctx, ids, status, note, actor, until, dry_run, filters) -> None:
    app: App = ctx.obj
    who = _actor(actor)
    q = query_of(filters)  # (--until here is the exception's end, not a filter)
    by_filter = any(getattr(q, f) for f in ("since", "until", "rule", "min_severity", "provider",
                                             "site", "client", "user", "status"))  # fmt: skip
    if ids and by_filter:
        raise click.UsageError("give ids or filters, not both")
    if not ids and not by_filter:
        raise click.UsageError(
            "give ids, or filters (--rule --provider --site --severity --since …)"
        )
    if until is not None and status != "acknowledged":
        raise click.UsageError("--until is for ack")
    if until is not None and until < datetime.now(UTC).date():
        raise click.BadParameter(f"{until} is in the past", param_hint="--until")
    if until is not None and not all(is_finding_id(i) for i in ids):
        raise click.UsageError("--until applies to findings (F-…), not incidents")
    until_text = until.isoformat() if until else None
    app.apply_exceptions()
    if by_filter:
        ids = _bulk_targets(app, q, status, until_text, dry_run)
        if dry_run:
            return
    findings = [i for i in ids if is_finding_id(i)]
    incidents = [i for i in ids if not is_finding_id(i)]
    if dry_run:
        try:
            changing = app.store.would_change(findings, status, until_text)
        except KeyError as exc:
            raise Fatal(exc.args[0]) from None
        click.echo(f"{len(changing) + len(incidents)} id(s) would change to {status} "
                   f"({len(findings) - len(changing)} finding(s) already are)", err=True)  # fmt: skip
        return
    try:
        events = (
            app.store.set_finding_status(findings, status, note, who, until_text)
            if findings
            else []
        )
        for iid in incidents:
            event = app.store.set_status(iid, status, note, who)
            if event is None:
                click.echo(f"incident {iid}: already {status}; nothing changed", err=True)
                continue
            event["finding_id"] = event.pop("incident_id")
            events.append(event)
    except KeyError as exc:
        raise Fatal(exc.args[0]) from None
    for e in events:
        kind = "finding" if is_finding_id(e["finding_id"]) else "incident"
        extra = f", until {e['until']}" if e.get("until") else ""
        click.echo(f"{kind} {e['finding_id']}: {e['status_from']} → {e['status_to']} "
                   f"({e['actor']}, {e['at']}{extra})")  # fmt: skip
    if findings and not any(is_finding_id(e["finding_id"]) for e in events):
        click.echo(f"finding(s) already {status}; nothing changed", err=True)
    if events:  # the SOC hears of it now, not at the next scan
        report_delivery(app.deliver_alerts())


def _bulk_targets(app: App, q, status: str, until: str | None, dry_run: bool) -> list[str]:
    """The findings the filters select that the change would change. With --client or
    --user, only findings whose detail all falls inside (a finding changes as a whole:
    the others are named, so their incidents or an [[exceptions]] entry can be used)."""
    chosen = [f for f in app.store.findings(q) if f["status"] not in (status, "superseded")
              or (until and f["exception_until"] != until)]  # fmt: skip
    partly: list[dict] = []
    if q.client or q.user:
        whole = {f["id"]: f["count"]
                 for f in app.store.findings(replace(q, client=(), user=()))}  # fmt: skip
        partly = [f for f in chosen if f["count"] != whole.get(f["id"])]
        chosen = [f for f in chosen if f["count"] == whole.get(f["id"])]
    verb = "would change" if dry_run else "changing"
    click.echo(f"{len(chosen)} finding(s) {verb} to {status}", err=True)
    if partly:
        click.echo(
            f"{len(partly)} finding(s) left alone: they also hold other clients' or users' "
            f"traffic ({', '.join(f['id'] for f in partly[:10])}{' …' if len(partly) > 10 else ''}"
            "); change their incidents by id (`incidents --finding ID --user …`) or add an "
            "[[exceptions]] entry with client or user",
            err=True,
        )
    if dry_run:
        write_rows(chosen, "table", [], sys.stdout,
                   ["id", "severity", "rule", "provider", "site", "status", "count"])  # fmt: skip
    return [f["id"] for f in chosen]


def _note_value(_ctx, _param, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("a note must say something (why, a ticket id)")
    return value


_note = click.option(
    "--note",
    "-m",
    required=True,
    callback=_note_value,
    help="Why (required, non-empty): kept in the audit trail and the report.",
)
_actor_option = click.option("--actor", help="Who [default: $SUDO_USER, else the login name].")
_dry_run = click.option(
    "--dry-run", is_flag=True, help="Say how many would change; change nothing."
)


@main.command("ack")
@click.argument("ids", nargs=-1, metavar="[ID]…")
@_note
@click.option(
    "--until",
    callback=date_value,
    metavar="YYYY-MM-DD",
    help="An exception: acknowledged through this day, open again (with an event) after it.",
)
@bulk_filter_options
@_dry_run
@_actor_option
@click.pass_context
@guard
def ack_cmd(ctx, ids, note, until, dry_run, actor, **filters):
    """Acknowledge findings (F-…) or incidents by id (a prefix is enough), or every finding
    the filters select: seen, being handled. New traffic is recorded, the status stays.

    \b
    apiwatch ack F-3a9c01d2e4f5 --note "ticket SEC-123: moving the job to the Frankfurt egress"
    apiwatch ack F-3a9c --until 2027-03-31 --note "SEC-130: pilot approved by legal"
    apiwatch ack --site shanghai --provider openai --severity high --dry-run --note "SEC-140"
    """
    _set_status(ctx, ids, "acknowledged", note, actor, until, dry_run, filters)


@main.command("resolve")
@click.argument("ids", nargs=-1, metavar="[ID]…")
@_note
@bulk_filter_options
@_dry_run
@_actor_option
@click.pass_context
@guard
def resolve_cmd(ctx, ids, note, dry_run, actor, **filters):
    """Resolve findings (F-…) or incidents by id (a prefix is enough), or every finding the
    filters select, with a note for the audit trail. New traffic reopens a resolved finding.

    \b
    apiwatch resolve F-3a9c01d2e4f5 --note "egress moved; traffic stopped on 2026-11-28"
    apiwatch resolve --rule unapproved-provider --since 30d --note "provider approved (SEC-9)"
    """
    _set_status(ctx, ids, "resolved", note, actor, None, dry_run, filters)
