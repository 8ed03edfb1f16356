"""``report``, ``daily`` and ``config check``: the scheduled job and its evidence."""

from __future__ import annotations

import glob
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from monitor.cli.base import (
    FATAL,
    Fatal,
    cidr_value,
    date_value,
    guard,
    main,
    warn_stale_accelerators,
    when,
)
from monitor.config import (
    REPORT_FORMATS,
    ConfigError,
    check_output_pattern,
    load_config,
    report_format,
    time_zone,
)
from monitor.output import json_text, safe_text
from monitor.policy import SEVERITIES

if TYPE_CHECKING:
    from monitor.app import App

tz_option = click.option(
    "--tz",
    metavar="ZONE",
    help="Report days in this IANA time zone, e.g. Asia/Shanghai [default: the site's tz when "
    "the report is of one site that declares one, else UTC].",
)


def report_tz(app: App, tz: str | None, sites) -> str:
    """``--tz``, else the time zone of the one site a report is about, else UTC."""
    if tz:
        try:
            return time_zone(tz, "--tz")
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--tz") from None
    declared = {app.config.sites[s].tz for s in sites if s in app.config.sites}
    return declared.pop() if len(declared) == 1 and None not in declared else "UTC"


@main.command("report")
@click.option(
    "--period", type=click.Choice(("daily", "weekly", "monthly")), help="A calendar period (UTC)."
)
@click.option(
    "--date",
    "day",
    callback=date_value,
    metavar="YYYY-MM-DD",
    help="A day inside the period [default: yesterday, so on Mondays weekly is last week].",
)
@click.option("--since", callback=when, help="Instead of --period: start (7d, 24h, ISO date/time).")
@click.option("--until", callback=when, help="With --since: end, excluded [default: now].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(REPORT_FORMATS),
    help="html, md (tickets, e-mail), csv or json (BI tools) [default: the suffix of -o "
    "(.html .md .csv .json), else md].",
)
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Write here (atomically) instead of stdout; may use {period} {date} {start} {end} "
    "{week} {month} {format}.",
)
@click.option("--site", multiple=True, help="Only this site (repeatable).")
@click.option("--provider", multiple=True, help="Only this provider id (repeatable).")
@click.option("--user", multiple=True, help="Only this user, as logged (repeatable).")
@click.option(
    "--client",
    multiple=True,
    callback=cidr_value,
    metavar="CIDR",
    help="Only this client address or network, e.g. 10.20.0.0/16 (repeatable).",
)
@click.option(
    "--top", type=click.IntRange(min=1), default=20, show_default=True, help="Rows in top-N tables."
)
@tz_option
@click.option(
    "--spreadsheet-safe",
    is_flag=True,
    help="CSV for spreadsheets: prefix text cells starting with = + - @ with ' (formula injection).",
)
@click.pass_context
@guard
def report_cmd(
    ctx, period, day, since, until, fmt, output, site, provider, user, client, top, tz,
    spreadsheet_safe,
):  # fmt: skip
    """Traffic and incidents of a period, with trend and methods, as evidence.

    \b
    apiwatch report --period weekly -o weekly.html
    apiwatch report --period monthly --date 2026-11-15 --format json > nov.json
    apiwatch report --since 2026-11-01 --until 2026-11-15 --site shanghai --format md
    apiwatch report --period daily --format csv --spreadsheet-safe -o daily-{date}.csv
    apiwatch report --period weekly --site shanghai --tz Asia/Shanghai -o sh-{week}.html
    apiwatch report --period monthly --client 10.20.0.0/16 --user alice --format md
    """
    if period and since:
        raise click.UsageError("give either --period or --since/--until, not both")
    if until and not since:
        raise click.UsageError("--until needs --since")
    if day and not period:
        raise click.UsageError("--date needs --period")
    if not period and not since:
        raise click.UsageError("give --period daily|weekly|monthly, or --since [--until]")
    from monitor.report import (  # pandas and jinja2 load only for reports
        ReportQuery,
        build_report,
        custom_window,
        output_path,
        period_window,
        render,
        write_atomic,
    )

    app: App = ctx.obj.for_reading()
    tz = report_tz(app, tz, site)
    try:
        window = period_window(period, day, tz=tz) if period else custom_window(since, until, tz=tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    fmt = report_format(fmt, output)
    if output not in (None, "-"):
        try:
            check_output_pattern(output)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="-o/--output") from None
    q = ReportQuery(window, sites=site, providers=provider, top=top, users=user, clients=client)
    report = build_report(app, q)
    text = render(report, fmt, spreadsheet_safe)
    if output is None or output == "-":
        click.echo(text, nl=False)
        return
    path = output_path(output, window, fmt)
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise Fatal(f"{path}: cannot write: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}", err=True)


@main.command("daily")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config with [[sources]] and [[reports]] [default: the global --config].",
)
@click.option(
    "--date",
    "today",
    callback=date_value,
    metavar="YYYY-MM-DD",
    help="Run as if today were this date (which reports are due) [default: today in each "
    "report's time zone: --tz, else its one site's tz, else UTC].",
)
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES),
    metavar="SEVERITY",
    help="Exit 3 when today's scans raised or reopened findings at or above this, not excepted [default: config daily.fail_on].",
)
@click.option(
    "--jobs", "-j", type=click.IntRange(min=1), metavar="N", help="Parser processes per scan."
)
@click.option("--no-reports", is_flag=True, help="Scan only.")
@tz_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.pass_context
@guard
def daily_cmd(ctx, config_path, today, fail_on, jobs, no_reports, tz, as_json, quiet):
    """Scan every configured source, write the reports that are due, exit with a code for cron.

    \b
    Exit: 0 ok · 1 a source or report failed (the rest is still done) · 3 --fail-on matched.
    Safe to run twice a day: nothing is counted twice.
    \b
    apiwatch daily --config /etc/apiwatch/config.toml
    apiwatch daily --config apiwatch.toml --fail-on high --json
    """
    from monitor.app import App
    from monitor.daily import run_daily

    app: App = ctx.obj
    if config_path is not None:
        app = App(replace(app.settings, config=config_path))
        ctx.call_on_close(app.close)
    app.config  # noqa: B018 - load (and validate) before scanning anything

    def log(msg: str, error: bool = False) -> None:
        if error or not quiet:  # stderr: with --json, stdout holds only the JSON
            click.echo(("error: " if error else "") + safe_text(msg, None), err=True)

    result = run_daily(app, today, fail_on, jobs, not no_reports, log, tz)
    warn_stale_accelerators(log)
    if as_json:
        click.echo(json_text(result.as_dict()))
    elif not quiet:
        for r in result.reports:
            if r.skipped:
                click.echo(f"{r.key}: not due ({r.skipped})", err=True)
        if result.fail_on:
            click.echo(
                f"{len(result.findings)} open finding(s) at or above {result.fail_on} raised or reopened today",
                err=True,
            )
    ctx.exit(result.exit_code)


def unknown_names(cfg, app: App) -> list[str]:
    """Exceptions and alert filters that name a rule or provider apiwatch does not know (a
    typo there never matches: the exception never holds, the sink never alerts), and
    exceptions that have run out."""
    rules = {r.id for r in app.rules.rules}
    providers = set(app.catalog.providers)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    found = []
    for key, rule, provider in [
        *((e.key, e.rule, e.provider) for e in cfg.exceptions),
        *((f"{a.key}.rules", r, None) for a in cfg.alerts for r in a.rules),
    ]:
        if rule is not None and rule not in rules:
            found.append(f"{key}: unknown rule {safe_text(rule, 80)!r}: it never matches")
        if provider is not None and provider not in providers:
            found.append(f"{key}: unknown provider {safe_text(provider, 80)!r}: it never matches")
    found += [f"{e.key}: ran out after {e.until}" for e in cfg.exceptions if not e.holds(today)]
    return found


@main.group("config")
def config_group():
    """Check a configuration file before cron runs it.

    \b
    apiwatch config check /etc/apiwatch/config.toml
    """


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def config_check(ctx, path):
    """Validate FILE: every key, sites, sources, reports, geodata files and rules.

    \b
    apiwatch config check /etc/apiwatch/config.toml && echo ok
    """
    from monitor.app import App

    app = App(replace(ctx.obj.settings, config=path))
    ctx.call_on_close(app.close)
    try:
        cfg = load_config(path)
        app.geo.sources()  # geodata files and overrides open
        app.catalog  # noqa: B018 - overlays ([catalog] extra) and residency settings validate
        app.rules  # noqa: B018 - rules and packs load
    except FATAL as exc:
        raise Fatal(str(exc)) from None
    click.echo(f"{path}: ok")
    click.echo(f"  database   {app.db_path}")
    click.echo(f"  sites      {', '.join(cfg.sites) or '-'}")
    click.echo(f"  providers  {', '.join(cfg.allowed_providers) or '- (unapproved-provider off)'}")
    click.echo(f"  packs      {', '.join(app.packs_on) or '-'}")
    if cfg.data_residency:
        click.echo(f"  residency  {', '.join(cfg.data_residency)}")
    for extra in app.catalog.overlays:
        click.echo(f"  catalog    {extra} (overlay)")
    for name, ent in cfg.entities.items():
        click.echo(f"  entity     {name}: controlled from {ent.controlled_from}")
    for s in cfg.sources:
        n = len(glob.glob(s.path)) if glob.has_magic(s.path) else int(Path(s.path).exists())
        opts = ", ".join(
            f"{k}={v}"
            for k, v in (("site", s.site), ("egress_ip", s.egress_ip), ("egress_country", s.egress_country),
                         ("format", s.format))
            if v and v != "auto"
        )  # fmt: skip
        click.echo(f"  {s.key:<10} {s.path} ({n} file(s) now{'; ' + opts if opts else ''})")
        if n == 0 and not s.optional:
            click.echo(f"warning: {s.key}.path: {s.path} matches no file now", err=True)
    from monitor.report import output_path, period_window

    for r in cfg.reports:
        example = output_path(
            r.output, period_window(r.period, today=datetime.now(UTC).date()), r.format
        )
        click.echo(f"  {r.key:<10} {r.period} {r.format} → {example}")
    if cfg.fail_on:
        click.echo(f"  fail_on    {cfg.fail_on}")
    for e in cfg.exceptions:
        click.echo(
            f"  {e.key:<10} until {e.until}: {safe_text(e.reason, 120)} ({safe_text(e.approver, 60)})"
        )
    for text in unknown_names(cfg, app):
        click.echo(f"warning: {text}", err=True)
    from monitor.egress import contradictions

    for text in contradictions(cfg.sites, app.geo):
        click.echo(f"warning: {text}", err=True)
    if app.db_path.exists():
        stale = app.store.scans_evaluated_otherwise(app.settings_digest())
        if stale:
            click.echo(
                f"warning: {len(stale)} scan(s) in {app.db_path} were evaluated with other settings "
                "(catalogue, geodata, rules, sites); `apiwatch reevaluate` applies these",
                err=True,
            )
    for a in cfg.alerts:
        filters = "".join(
            f"; {k} {', '.join(v)}" for k, v in (("rules", a.rules), ("sites", a.sites)) if v
        )
        fmt = f" {a.format}" if a.format else ""
        click.echo(
            f"  {a.key:<10} {a.name}: {a.kind}{fmt} → {a.where()} (>= {a.min_severity}{filters})"
        )
        if a.token_env and not os.environ.get(a.token_env):
            click.echo(f"warning: {a.key}.token_env: ${a.token_env} is not set here", err=True)
