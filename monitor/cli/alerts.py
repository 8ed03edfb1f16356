"""``alerts``: the outbox of finding events and the sinks that receive them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from monitor.cli.base import EXIT_ERROR, Fatal, app_of, guard, main, report_delivery
from monitor.output import safe_text

if TYPE_CHECKING:
    from monitor.app import App


def _specs(app: App, name: str | None):
    specs = app.config.alerts
    if not specs:
        raise Fatal("no [[alerts]] sinks in the configuration (see README: Alerts)")
    if name is None:
        return specs
    chosen = [s for s in specs if s.name == name]
    if not chosen:
        raise click.BadParameter(
            f"no sink named {name!r} (sinks: {', '.join(s.name for s in specs)})",
            param_hint="--sink",
        )
    return chosen


@main.group("alerts", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sink.")
@click.option(
    "--events", "n_events", type=click.IntRange(min=0), default=10, show_default=True,
    help="Also list this many of the newest events.",
)  # fmt: skip
@click.pass_context
@guard
def alerts_group(ctx, as_json, n_events):
    """The alert outbox: per sink, events pending, delivered, and the last failure.

    \b
    apiwatch alerts                       # sinks, pending counts, last error
    apiwatch alerts --json | jq 'select(.pending > 0)'
    apiwatch alerts test --sink soc-syslog
    apiwatch alerts deliver               # retry what is pending now (cron)
    """
    if ctx.invoked_subcommand is not None:
        return
    app = app_of(ctx)
    specs = {s.name: s for s in app.config.alerts}
    if specs:
        app.dispatcher  # noqa: B018 - registers the configured sinks
    rows = app.store.outbox_status()
    for row in rows:
        spec = specs.get(row["name"])
        row["configured"] = spec is not None
        row["where"] = spec.where() if spec else None
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    if not rows:
        click.echo("no sinks (configure [[alerts]] tables)")
    for r in rows:
        state = "ok" if not r["last_error"] else f"FAILING ({r['attempts']} attempt(s))"
        click.echo(
            f"{safe_text(r['name'], 40)}  {r['kind']}  {safe_text(r['where'], 80)}  {state}  "
            f"pending {r['pending']}"
            + (f" (oldest {r['oldest_pending']})" if r["pending"] else "")
            + f"  delivered {r['delivered']}  last success {r['last_success'] or '-'}"
            + ("" if r["configured"] else "  (no longer configured)")
        )
        if r["last_error"]:
            click.echo(f"  last error {r['last_failure']}: {safe_text(r['last_error'], 240)}")
    if n_events:
        events = app.store.outbox_events(limit=n_events)
        if events:
            click.echo("newest events:")
        for seq, e in events:
            click.echo(
                f"  {seq:>6} {e.time} {e.event_type:<17} {e.severity:<8} {e.finding_id} "
                f"{safe_text(e.rule, 40)} {safe_text(e.provider, 30)} "
                f"{safe_text(e.site or e.egress_country, 30)} count {e.count}"
            )


@alerts_group.command("test")
@click.option("--sink", "name", metavar="NAME", help="Only this sink [default: every sink].")
@click.pass_context
@guard
def alerts_test(ctx, name):
    """Send a test event (event type ``test``, severity info) to each sink, now.

    \b
    apiwatch alerts test
    apiwatch alerts test --sink slack-oncall
    """
    from monitor.events import sample_event
    from monitor.sinks import SinkError

    app = app_of(ctx)
    failed = False
    for spec in _specs(app, name):
        try:
            app.dispatcher.send_test(spec, sample_event())
        except SinkError as exc:
            failed = True
            click.echo(f"{spec.name}: FAILED: {safe_text(str(exc), 240)}", err=True)
        else:
            click.echo(f"{spec.name}: sent to {spec.where()}")
    if failed:
        ctx.exit(EXIT_ERROR)


@alerts_group.command("deliver")
@click.pass_context
@guard
def alerts_deliver(ctx):
    """Send what the outbox holds now (scan, daily and watch do this themselves), after
    bringing exceptions up to date: one that ran out opens its finding again and alerts.

    \b
    apiwatch alerts deliver || echo "a sink is down; events are kept"
    """
    app = app_of(ctx)
    _specs(app, None)
    app.apply_exceptions()
    delivery = app.deliver_alerts()
    for name, n in sorted(delivery.sent.items()):
        click.echo(f"{name}: {n} event(s) sent")
    report_delivery(delivery)
    if delivery.failed:
        ctx.exit(EXIT_ERROR)
