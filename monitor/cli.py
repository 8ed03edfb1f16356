"""The ``apiwatch`` command: a thin click layer over :mod:`monitor.app`.

Exit codes (for cron): 0 success; 1 error (unreadable input, bad config or rules);
2 usage error; 3 ``--fail-on`` matched new incidents.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from monitor import __version__
from monitor.app import App, Settings
from monitor.catalog import CatalogError
from monitor.collectors import FORMATS, CollectOptions, Diagnostics, InputError
from monitor.config import ConfigError
from monitor.countries import is_country_code
from monitor.egress import EgressOptions
from monitor.geo import GeoError
from monitor.observation import OBSERVATION_FIELDS, canonical_ip
from monitor.output import safe_text, write_json_lines, write_rows
from monitor.pipeline import ScanSummary
from monitor.policy import SEVERITIES, SEVERITY_RANK, RuleError
from monitor.privacy import PrivacyError
from monitor.store import INCIDENT_COLUMNS as STORED_INCIDENT_COLUMNS
from monitor.store import IncidentQuery, StoreError
from monitor.timespec import parse_when

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FINDINGS = 0, 1, 2, 3
_FATAL = (ConfigError, CatalogError, RuleError, GeoError, StoreError, InputError, PrivacyError)

#: incident fields in output order (the store's columns without its internal ones)
INCIDENT_COLUMNS = [c for c in STORED_INCIDENT_COLUMNS if c not in ("severity_rank", "title")]
INCIDENT_TABLE = [
    "id",
    "severity",
    "rule",
    "provider",
    "dest_host",
    "client_ip",
    "site",
    "egress_country",
    "last_seen",
    "count",
    "outcome",
    "status",
]
PARSE_COLUMNS = [*(f for f in OBSERVATION_FIELDS if f != "record_id"), "provider", "provider_kind"]


class Fatal(click.ClickException):
    exit_code = EXIT_ERROR


def _app(ctx: click.Context) -> App:
    return ctx.obj


def _guard(fn):
    """Turn expected failures (bad config, rules, database) into one clear line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _FATAL as exc:
            raise Fatal(str(exc)) from exc

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="apiwatch")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="APIWATCH_DB",
    help="SQLite database [env APIWATCH_DB; default: config 'db', else ~/.local/share/apiwatch/apiwatch.db].",
)
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="APIWATCH_CONFIG",
    help="TOML config: sites, geodata, organisation allow-list [env APIWATCH_CONFIG; default ~/.config/apiwatch/config.toml].",
)
@click.option(
    "--geoip",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your own MMDB file (MaxMind, DB-IP, IPinfo; Country, City, ASN or ISP). Repeatable; beats the embedded data.",
)
@click.option(
    "--geo-overrides",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of CIDR → country, site, ASN/org that wins over every database. Repeatable.",
)
@click.option(
    "--rules",
    "rules",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Policy rule file or folder to use instead of the bundled rules/policies. Repeatable.",
)
@click.pass_context
def main(ctx: click.Context, db, config, geoip, geo_overrides, rules) -> None:
    """Which machines talk to which LLM API, from which egress country, against whose policy.

    \b
    apiwatch scan /var/log/squid/access.log --site shanghai
    apiwatch incidents --since 7d --severity high
    apiwatch show 3f9a0c1d
    """
    ctx.obj = App(
        Settings(
            db=db,
            config=config,
            geoip=tuple(geoip),
            geo_overrides=tuple(geo_overrides),
            rules=tuple(rules),
        )
    )
    ctx.call_on_close(ctx.obj.close)


def _collect_options(
    fmt: str,
    squid_logformat: str | None,
    columns: str | None = None,
    mapping: str | None = None,
) -> CollectOptions:
    if (columns or mapping) and fmt == "auto":
        fmt = "mapped"
    options = CollectOptions(
        format=fmt, squid_logformat=squid_logformat, columns=columns, mapping=mapping
    )
    if fmt == "mapped":
        from monitor.collectors.mapped import MappingError, mapping_of

        try:
            mapping_of(options)
        except MappingError as exc:
            raise click.BadParameter(str(exc), param_hint="--columns/--mapping") from exc
    return options


_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", *FORMATS]),
    default="auto",
    show_default=True,
    help="Input format; auto recognises every format but squid-custom and mapped from the first lines.",
)
_squid_logformat_option = click.option(
    "--squid-logformat",
    metavar="FORMAT",
    help="Squid logformat string (or whole 'logformat NAME …' line) the log was written with.",
)
_columns_option = click.option(
    "--columns",
    metavar="MAP",
    help="Custom mapping for any CSV/TSV/JSON/key=value gateway log, e.g. "
    "'ts=time,client=src,host=dhost,bytes_out=sentbytes' (implies --format mapped).",
)
_mapping_option = click.option(
    "--mapping",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML/YAML mapping file for --format mapped (fields, time format, time zone).",
)


def _logformat_option(fn):
    return _squid_logformat_option(_columns_option(_mapping_option(fn)))


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="FILE…")
@_format_option
@_logformat_option
@click.option(
    "--site", help="Site (from the config) these logs come from; its egress IPs and country apply."
)
@click.option(
    "--egress-ip",
    callback=lambda c, p, v: _ip_option(v),
    help="Public address these logs leave from.",
)
@click.option(
    "--egress-country",
    callback=lambda c, p, v: _country_option(v),
    metavar="CC",
    help="Declared egress country (ISO 3166-1 alpha-2); beats geolocation.",
)
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES),
    metavar="SEVERITY",
    help=f"Exit {EXIT_FINDINGS} when new incidents at or above this severity were raised ({', '.join(SEVERITIES)}).",
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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal)."
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.pass_context
@_guard
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
    as_json,
    progress,
    quiet,
):
    """Scan logs or captures, raise incidents, store them. FILE may be .gz, .bz2, - (stdin)
    or a directory of Zeek logs; only what earlier scans have not read is read.

    \b
    apiwatch scan /var/log/squid/access.log --site shanghai
    apiwatch scan access.log.1.gz --egress-ip 114.114.114.114 --fail-on high
    zcat access.log.*.gz | apiwatch scan - --egress-country HK --json
    apiwatch scan span-port.pcapng /var/log/zeek/2026-11-27/ --site hongkong
    """
    app = _app(ctx)
    egress = EgressOptions(egress_ip=egress_ip, egress_country=egress_country, site=site)
    if site is not None and site not in app.config.sites:
        known = ", ".join(sorted(app.config.sites)) or "none configured"
        raise click.BadParameter(
            f"unknown site {site!r} (sites in config: {known})", param_hint="--site"
        )
    show_bar = (progress if progress is not None else sys.stderr.isatty()) and not quiet
    total = sum(Path(p).stat().st_size for p in paths if p != "-" and Path(p).is_file())
    with click.progressbar(
        length=total or 1,
        file=sys.stderr if show_bar else _Null(),
        label="scanning",
        show_eta=True,
        show_percent=True,
    ) as bar:
        scan_id, summary = app.scan(
            list(paths),
            egress,
            _collect_options(fmt, squid_logformat, columns, mapping),
            bar.update,
            jobs,
            full,
            pseudonymize,
        )
    if not quiet:
        if as_json:
            click.echo(json.dumps({"scan_id": scan_id, **summary.as_dict()}, ensure_ascii=False))
        else:
            _print_summary(scan_id, summary)
    _print_problems(summary.diag)
    if summary.diag.file_errors:
        ctx.exit(EXIT_ERROR)
    if (
        fail_on
        and summary.new_max_severity
        and SEVERITY_RANK[summary.new_max_severity] >= SEVERITY_RANK[fail_on]
    ):
        ctx.exit(EXIT_FINDINGS)


class _Null:
    def write(self, _):
        return 0

    def flush(self):
        pass

    def isatty(self):
        return False


def _ip_option(value):
    if value is None:
        return None
    ip = canonical_ip(value)
    if ip is None:
        raise click.BadParameter(f"{value!r} is not an IP address")
    return ip


def _country_option(value):
    if value is None:
        return None
    if not is_country_code(value.upper()):
        raise click.BadParameter(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return value.upper()


def _print_summary(scan_id: int, s: ScanSummary) -> None:
    d = s.as_dict()
    click.echo(
        f"scan {scan_id}: {len(s.files)} file(s), {s.records} records read, {s.malformed} malformed, "
        f"{s.llm_observations} LLM observations ({s.stored} new, {s.duplicates} already stored)"
    )
    click.echo(f"incidents: {d['incidents_new']} new, {d['incidents_updated']} updated")
    for rule in sorted(set(s.new_by_rule) | set(s.updated_by_rule)):
        click.echo(
            f"  {rule}: {s.new_by_rule.get(rule, 0)} new, {s.updated_by_rule.get(rule, 0)} updated"
        )


def _warn_stale(app: App) -> None:
    for src in app.stale_geodata():
        click.echo(
            f"warning: geolocation source {src.name} is from {src.build_date}; "
            "refresh it (geodata/build.py, or geoipupdate for your own files)",
            err=True,
        )


def _print_problems(diag: Diagnostics, limit: int = 20) -> None:
    for p in diag.file_errors:
        click.echo(f"error: {safe_text(str(p), None)}", err=True)
    for p in diag.notices[:limit]:
        click.echo(f"notice: {safe_text(str(p), 240)}", err=True)
    for p in diag.problems[:limit]:
        click.echo(f"malformed: {safe_text(str(p), 240)}", err=True)
    if diag.malformed > limit:
        click.echo(
            f"malformed: … and {diag.malformed - limit} more (apiwatch keeps them in scan_problems)",
            err=True,
        )


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="FILE…")
@_format_option
@_logformat_option
@click.option("--json", "out", flag_value="json", help="JSON lines (the default when piped).")
@click.option("--csv", "out", flag_value="csv", help="CSV with a header row.")
@click.option(
    "--table", "out", flag_value="table", help="Aligned table (the default on a terminal)."
)
@click.option(
    "--llm-only", is_flag=True, help="Only observations whose destination the catalogue knows."
)
@click.option(
    "--spreadsheet-safe",
    is_flag=True,
    help="With --csv: prefix cells a spreadsheet would run as formulas (=, +, -, @) with '.",
)
@click.pass_context
@_guard
def parse(ctx, paths, fmt, squid_logformat, columns, mapping, out, llm_only, spreadsheet_safe):
    """Print normalised observations; store nothing (like zeek-cut).

    \b
    apiwatch parse access.log --json | jq -r 'select(.provider) | .dest_host'
    apiwatch parse --format squid-common access.log --csv > flows.csv
    """
    app = _app(ctx)
    out = out or ("table" if sys.stdout.isatty() else "json")
    pipeline = app.pipeline(
        EgressOptions(), _collect_options(fmt, squid_logformat, columns, mapping)
    )
    diag = Diagnostics()

    def rows():
        for path in paths:
            try:
                for obs, match in pipeline.observe(path, diag, only_llm=llm_only):
                    d = obs.to_dict()
                    d["provider"] = match.provider.id if match else None
                    d["provider_kind"] = match.kind if match else None
                    yield d
            except InputError as exc:
                diag.file_error(path, str(exc).removeprefix(f"{path}: "))

    try:
        write_rows(
            rows(),
            out,
            PARSE_COLUMNS,
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
    _print_problems(diag)
    if diag.file_errors:
        ctx.exit(EXIT_ERROR)


def _when(_ctx, _param, value):
    if value is None:
        return None
    try:
        return parse_when(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option(
    "--since",
    callback=_when,
    help="Last seen at or after: 7d, 24h, 30m, or an ISO date/time (UTC).",
)
@click.option("--until", callback=_when, help="First seen before: same forms as --since.")
@click.option("--rule", multiple=True, help="Rule id (repeatable).")
@click.option("--severity", type=click.Choice(SEVERITIES), help="Minimum severity.")
@click.option("--provider", multiple=True, help="Provider id, e.g. openai (repeatable).")
@click.option("--site", multiple=True, help="Site name (repeatable).")
@click.option("--client", multiple=True, help="Client address (repeatable).")
@click.option(
    "--status",
    multiple=True,
    type=click.Choice(["open", "acknowledged", "resolved"]),
    help="Incident status (repeatable).",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (newest first).")
@click.option("--json", "out", flag_value="json", help="JSON lines, one incident per line.")
@click.option("--csv", "out", flag_value="csv", help="CSV with a header row.")
@click.option(
    "--spreadsheet-safe",
    is_flag=True,
    help="With --csv: prefix cells a spreadsheet would run as formulas (=, +, -, @) with '.",
)
@click.pass_context
@_guard
def incidents(
    ctx, since, until, rule, severity, provider, site, client, status, limit, out, spreadsheet_safe
):
    """List incidents, newest first.

    \b
    apiwatch incidents --since 7d --severity high
    apiwatch incidents --provider openai --site shanghai --csv > openai-shanghai.csv
    apiwatch incidents --json | jq -r 'select(.count > 100) | .id'
    """
    q = IncidentQuery(
        since=since,
        until=until,
        rule=rule,
        min_severity=severity,
        provider=provider,
        site=site,
        client=tuple(canonical_ip(c) or c for c in client),
        status=status,
        limit=limit,
    )
    rows = _app(ctx).store.incidents(q)
    n = write_rows(
        rows, out or "table", INCIDENT_COLUMNS, sys.stdout, INCIDENT_TABLE, spreadsheet_safe
    )
    if n == 0 and not out:
        click.echo("no incidents match", err=True)


@main.command()
@click.argument("incident_id")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object with the incident and its records."
)
@click.option("--samples", default=20, show_default=True, help="How many of its records to show.")
@click.pass_context
@_guard
def show(ctx, incident_id, as_json, samples):
    """One incident and its sample records (an id prefix is enough).

    \b
    apiwatch show 3f9a0c1d
    apiwatch show 3f9a --json | jq '.records[].url'
    """
    try:
        inc = _app(ctx).store.incident(incident_id, samples)
    except KeyError as exc:
        raise Fatal(exc.args[0]) from None
    if inc is None:
        raise Fatal(f"no incident with id {incident_id!r}")
    if as_json:
        click.echo(json.dumps(inc, ensure_ascii=False))
        return
    records = inc.pop("records")
    events = inc.pop("events")
    width = max(len(k) for k in inc)
    for key, value in inc.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        click.echo(f"{key:<{width}}  {safe_text(shown, 200)}")
    if events:
        click.echo("\nhistory:")
        write_rows(
            events, "table", [], sys.stdout, ["at", "status_from", "status_to", "actor", "note"]
        )
    click.echo(f"\nrecords ({len(records)} of {inc['count']}):")
    write_rows(
        records,
        "table",
        [],
        sys.stdout,
        [
            "source",
            "line",
            "ts",
            "client_ip",
            "method",
            "dest_host",
            "status",
            "result",
            "bytes_out",
            "bytes_in",
        ],
    )


@main.command()
@click.argument("hosts", nargs=-1, metavar="[HOST|IP]…")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.pass_context
@_guard
def providers(ctx, hosts, as_json):
    """Which provider serves a host; without arguments, the whole catalogue.

    \b
    apiwatch providers api.openai.com chatgpt.com notopenai.com 160.79.104.10
    apiwatch providers --json | jq -r 'select(.kind == "relay") | .id'
    """
    app = _app(ctx)
    if not hosts:
        rows = [asdict(e) for e in app.catalog.entries()]
        if as_json:
            write_json_lines(rows, sys.stdout)
        else:
            for row in rows:
                row["hosts"] = " ".join((*row["hosts"], *row["consumer_hosts"], *row["ip_ranges"]))
            write_rows(
                rows,
                "table",
                [],
                sys.stdout,
                ["id", "kind", "category", "hq_country", "region_list", "region_count", "hosts"],
            )
        click.echo(f"catalogue {app.catalog.version}: {len(rows)} entries", err=True)
        return
    from monitor.observation import normalise_host
    from monitor.pipeline import Identifier

    ident = Identifier(app.catalog)
    rows = []
    for host in hosts:
        norm = normalise_host(host) or host
        m = ident.by_host(norm)
        rows.append(
            {
                "host": norm,
                "provider": m.provider.id if m else None,
                "name": m.provider.name if m else None,
                "kind": m.kind if m else None,
                "matched": m.pattern if m else None,
                "region_list": m.provider.region_list if m else None,
                "hq_country": m.provider.hq_country if m else None,
            }
        )
    write_rows(rows, "json" if as_json else "table", list(rows[0]), sys.stdout)


@main.command()
@click.argument("ips", nargs=-1, metavar="IP…")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.option(
    "--sources",
    "list_sources",
    is_flag=True,
    help="List the geolocation sources in use and their build dates.",
)
@click.pass_context
@_guard
def geo(ctx, ips, as_json, list_sources):
    """Country, ASN and organisation of addresses, and which source said so.

    \b
    apiwatch geo 8.8.8.8 114.114.114.114 10.1.2.3
    apiwatch --geoip /var/lib/GeoIP/GeoLite2-City.mmdb geo 1.1.1.1 --json
    apiwatch geo --sources
    """
    resolver = _app(ctx).geo
    if list_sources or not ips:
        rows = [asdict(s) for s in resolver.sources()]
        _warn_stale(_app(ctx))
        write_rows(rows, "json" if as_json else "table", list(rows[0]) if rows else [], sys.stdout)
        return
    bad = [ip for ip in ips if canonical_ip(ip) is None]
    if bad:
        raise click.BadParameter(f"not an IP address: {', '.join(bad)}", param_hint="IP")
    rows = [asdict(resolver.lookup(ip)) for ip in ips]
    write_rows(
        rows,
        "json" if as_json else "table",
        list(rows[0]),
        sys.stdout,
        ["ip", "scope", "country", "asn", "org", "site", "country_source", "asn_source"],
    )


@main.command("rules")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.pass_context
@_guard
def rules_cmd(ctx, as_json):
    """The policy rules in force (bundled rules/policies, or --rules).

    \b
    apiwatch rules
    apiwatch --rules ./my-policies rules --json
    """
    rows = [
        {
            "id": r.id,
            "severity": r.severity,
            "title": r.title,
            "source": r.source,
            "when": r.when,
            "description": r.description,
        }
        for r in _app(ctx).rules.rules
    ]
    write_rows(
        rows,
        "json" if as_json else "table",
        list(rows[0]) if rows else [],
        sys.stdout,
        ["id", "severity", "title"],
    )


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
@_guard
def db_check(ctx, as_json):
    """Integrity check, schema version and table sizes; exit 1 when something is wrong.

    \b
    apiwatch db check
    apiwatch --db /var/lib/apiwatch/apiwatch.db db check --json
    """
    report = _app(ctx).store.check()
    if as_json:
        click.echo(json.dumps(report))
    else:
        for key, value in report.items():
            click.echo(f"{key:<24} {value}")
    if report["integrity"] != "ok" or report["orphan_hits"]:
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
@_guard
def db_prune(ctx, keep, as_json):
    """Delete traffic detail (observations) older than AGE; incidents and their counts stay.

    Logs from before the cut are not counted again if scanned later.

    \b
    apiwatch db prune --keep 90d
    """
    try:
        before = parse_when(keep)[:10]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--keep") from None
    deleted = _app(ctx).store.prune(before)
    if as_json:
        click.echo(json.dumps({"before": before, **deleted}))
    else:
        click.echo(
            f"deleted {deleted['observations']} observations before {before} ({deleted['hits']} links)"
        )


from monitor import cli_ops  # noqa: E402,F401  (registers report/daily/config/ack/resolve)
