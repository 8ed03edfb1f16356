"""``ack`` and ``resolve``: the lifecycle of an incident, with who and why."""

from __future__ import annotations

import getpass
import os

import click

from monitor.app import App
from monitor.cli.base import Fatal, guard, main


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _set_status(ctx, incident_id: str, status: str, note: str, actor: str | None) -> None:
    app: App = ctx.obj
    try:
        event = app.store.set_status(incident_id, status, note, _actor(actor))
    except KeyError as exc:
        raise Fatal(exc.args[0]) from None
    if event is None:
        click.echo(f"incident {incident_id}: already {status}; nothing changed", err=True)
        return
    click.echo(
        f"incident {event['incident_id']}: {event['status_from']} → {event['status_to']} "
        f"({event['actor']}, {event['at']})"
    )


def _note_value(_ctx, _param, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("a note must say something (why, a ticket id)")
    return value


_note = click.option(
    "--note",
    "-m",
    required=True,
    callback=_note_value,
    help="Why: kept in the audit trail and the report.",
)
_actor_option = click.option("--actor", help="Who [default: $SUDO_USER, else the login name].")


@main.command("ack")
@click.argument("incident_id")
@_note
@_actor_option
@click.pass_context
@guard
def ack_cmd(ctx, incident_id, note, actor):
    """Acknowledge an incident (an id prefix is enough): seen, being handled.

    \b
    apiwatch ack 3f9a0c1d --note "ticket SEC-123: moving the job to the Frankfurt egress"
    """
    _set_status(ctx, incident_id, "acknowledged", note, actor)


@main.command("resolve")
@click.argument("incident_id")
@_note
@_actor_option
@click.pass_context
@guard
def resolve_cmd(ctx, incident_id, note, actor):
    """Resolve an incident (an id prefix is enough), with a note for the audit trail.

    \b
    apiwatch resolve 3f9a0c1d --note "egress moved; traffic stopped on 2026-11-28"
    """
    _set_status(ctx, incident_id, "resolved", note, actor)
