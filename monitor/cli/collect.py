"""``scan`` and ``parse``: read logs and captures, store or print what they hold."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from monitor.cli.base import (
    EXIT_ERROR,
    EXIT_FINDINGS,
    EXIT_OK,
    NullFile,
    app_of,
    check_site,
    collect_options,
    format_option,
    guard,
    log_inputs,
    logformat_options,
    main,
    print_problems,
    report_delivery,
    spreadsheet_safe_option,
    warn_stale_accelerators,
)
from monitor.output import json_text, safe_text, write_rows
from monitor.policy import SEVERITIES

if TYPE_CHECKING:
    from monitor.pipeline import ScanSummary


def parse_columns() -> list[str]:
    """The columns ``parse --csv`` writes."""
    from monitor.observation import OBSERVATION_FIELDS

    return [*(f for f in OBSERVATION_FIELDS if f != "record_id"), "provider", "provider_kind"]


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="FILE…")
@log_inputs
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES),
    metavar="SEVERITY",
    help=f"Exit {EXIT_FINDINGS} when this scan raised or reopened findings (or added detail to open ones) "
    f"at or above this severity, not under an exception ({', '.join(SEVERITIES)}).",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    metavar="N",
    help="Parser processes (default: CPU count, at most 4); 1 parses in-process.",
)
@click.option(
    "--full",
    is_flag=True,
    help="Read every file from its start, not only what earlier scans left unread "
    "(nothing is counted twice either way).",
)
@click.option(
    "--pseudonymize",
    is_flag=True,
    help="Store client addresses and user names as keyed HMACs ([privacy] key in the config, "
    "or APIWATCH_PSEUDONYMIZE_KEY).",
)
@click.option(
    "--cluster",
    metavar="ADDRESS",
    envvar="APIWATCH_CLUSTER",
    help="Parse on a Dask cluster (tcp://scheduler:8786); FILE may then be a URL (s3://, "
    "file://). Workers need apiwatch and read access to the inputs [env APIWATCH_CLUSTER].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal)."
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.pass_context
@guard
def scan(
    ctx,
    paths,
    fmt,
    squid_logformat,
    columns,
    mapping,
    site,
    egress_ip,
    egress_country,
    fail_on,
    jobs,
    full,
    pseudonymize,
    cluster,
    as_json,
    progress,
    quiet,
):
    """Scan logs or captures, raise incidents, store them. FILE may be .gz, .bz2, .xz, - (stdin)
    or a directory of Zeek logs; only what earlier scans have not read is read.

    \b
    apiwatch scan /var/log/squid/access.log --site shanghai
    apiwatch scan access.log.1.gz --egress-ip 114.114.114.114 --fail-on high
    zcat access.log.*.gz | apiwatch scan - --egress-country HK --json
    apiwatch scan span-port.pcapng /var/log/zeek/2026-11-27/ --site hongkong
    apiwatch scan --cluster tcp://10.0.0.5:8786 /shared/squid/access.log.*.gz
    """
    from monitor.app import uncollected
    from monitor.egress import EgressOptions

    app = app_of(ctx)
    with uncollected():  # until App.scan's own start-up
        egress = EgressOptions(egress_ip=egress_ip, egress_country=egress_country, site=site)
        check_site(app, site)
        options = collect_options(fmt, squid_logformat, columns, mapping)
    show_bar = (progress if progress is not None else sys.stderr.isatty()) and not quiet
    total = sum(Path(p).stat().st_size for p in paths if p != "-" and Path(p).is_file())
    with click.progressbar(
        length=total or 1,
        file=sys.stderr if show_bar else NullFile(),
        label="scanning",
        show_eta=True,
        show_percent=True,
    ) as bar:
        scan_id, summary = app.scan(
            list(paths),
            egress,
            options,
            bar.update,
            jobs,
            full,
            pseudonymize,
            fail_on,
            cluster,
        )
    if not quiet:
        if as_json:
            click.echo(json_text({"scan_id": scan_id, **summary.as_dict()}))
        else:
            _print_summary(scan_id, summary)
    for text in summary.warnings:
        click.echo(f"warning: {safe_text(text, None)}", err=True)
    warn_stale_accelerators()
    print_problems(summary.diag, stored=True)
    report_delivery(app.deliver_alerts())
    if code := summary.exit_code(fail_on):
        ctx.exit(code)


def _print_summary(scan_id: int, s: ScanSummary) -> None:
    d = s.as_dict()
    click.echo(
        f"scan {scan_id}: {len(s.files)} file(s), {s.records} records read, {s.malformed} malformed, "
        f"{s.llm_observations} LLM observations ({s.stored} new, {s.duplicates} already stored)"
    )
    click.echo(
        f"findings: {d['findings_new']} new, {d['findings_reopened']} reopened; "
        f"incidents: {d['incidents_new']} new, {d['incidents_updated']} updated"
    )
    for rule in sorted(set(s.new_by_rule) | set(s.updated_by_rule)):
        click.echo(
            f"  {rule}: {s.new_by_rule.get(rule, 0)} new, {s.updated_by_rule.get(rule, 0)} updated"
        )


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="FILE…")
@format_option
@logformat_options
@click.option("--json", "out", flag_value="json", help="JSON lines (the default when piped).")
@click.option("--csv", "out", flag_value="csv", help="CSV with a header row.")
@click.option(
    "--table", "out", flag_value="table", help="Aligned table (the default on a terminal)."
)
@click.option(
    "--llm-only", is_flag=True, help="Only observations whose destination the catalogue knows."
)
@spreadsheet_safe_option
@click.pass_context
@guard
def parse(ctx, paths, fmt, squid_logformat, columns, mapping, out, llm_only, spreadsheet_safe):
    """Print normalised observations; store nothing (like zeek-cut).

    \b
    apiwatch parse access.log --json | jq -r 'select(.provider) | .dest_host'
    apiwatch parse --format squid-common access.log --csv > flows.csv
    """
    from monitor.collectors import Diagnostics, InputError, note_misread
    from monitor.egress import EgressOptions

    app = app_of(ctx)
    out = out or ("table" if sys.stdout.isatty() else "json")
    pipeline = app.pipeline(
        EgressOptions(), collect_options(fmt, squid_logformat, columns, mapping)
    )
    diag = Diagnostics()

    def rows():
        for path in paths:
            before = diag.records, diag.malformed
            try:
                for obs, match in pipeline.observe(path, diag, only_llm=llm_only):
                    d = obs.to_dict()
                    d["provider"] = match.provider.id if match else None
                    d["provider_kind"] = match.kind if match else None
                    yield d
            except InputError as exc:
                diag.file_error(path, str(exc).removeprefix(f"{path}: "))
            note_misread(path, diag, before, pipeline.collect_options, None)

    try:
        write_rows(
            rows(),
            out,
            parse_columns(),
            sys.stdout,
            [
                "ts",
                "client_ip",
                "method",
                "dest_host",
                "dest_port",
                "status",
                "bytes_in",
                "provider",
            ],
            spreadsheet_safe,
        )
    except BrokenPipeError:  # `| head` is fine
        sys.stderr.close()
        ctx.exit(EXIT_OK)
    warn_stale_accelerators()
    print_problems(diag, stored=False)
    if diag.file_errors:
        ctx.exit(EXIT_ERROR)
