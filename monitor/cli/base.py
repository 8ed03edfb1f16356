"""The ``apiwatch`` group and what its commands share: the exit codes, the error guard,
option callbacks and the input options of ``scan`` and ``parse``.

Command modules (:mod:`monitor.cli.collect`, :mod:`~monitor.cli.query`, …) import from here
and register themselves on :data:`main`; nothing here imports them.
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import click

from monitor import __version__, accel
from monitor.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, ApiwatchError
from monitor.output import safe_text

if TYPE_CHECKING:  # commands import what they use in their bodies: start-up stays short
    from monitor.alerts import Delivery
    from monitor.app import App
    from monitor.collectors import CollectOptions, Diagnostics

__all__ = ["EXIT_ERROR", "EXIT_FINDINGS", "EXIT_OK", "EXIT_USAGE", "FATAL", "Fatal", "main"]

#: expected failures: one clear line and exit 1, never a traceback
FATAL = ApiwatchError


class Fatal(click.ClickException):
    exit_code = EXIT_ERROR


def app_of(ctx: click.Context) -> App:
    return ctx.obj


def guard(fn):
    """Turn expected failures (bad config, rules, database) into one clear line and exit 1;
    whatever SQLite reports (a damaged file, a full disk) names the database file."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FATAL as exc:
            raise Fatal(str(exc)) from exc
        except Exception as exc:
            sqlite3 = sys.modules.get("sqlite3")  # loaded by whatever raised it (`parse` never)
            if sqlite3 is None or not isinstance(exc, sqlite3.DatabaseError):
                raise
            from monitor.app import App
            from monitor.store import database_problem

            app = click.get_current_context().find_object(App)
            where = app.db_path if app is not None else Path("database")
            raise Fatal(database_problem(where, exc)) from exc

    return wrapper


def import_uncollected(module: str) -> None:
    """Import ``module`` without the cycle collector, and freeze what it made: importing
    makes no garbage cycles (see :func:`monitor.app.uncollected`). A module imported
    already is left alone: freezing then would keep whatever garbage there is forever."""
    if module in sys.modules:
        return
    collecting = gc.isenabled()
    gc.disable()
    try:
        importlib.import_module(module)
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


class _Commands(MutableMapping[str, click.Command]):
    """The group's commands by name, each module imported (registering its commands) when
    one of them is first looked up, and all of them to list them: ``apiwatch scan`` loads
    the scan's module, not the exports', reports', triage's and the others' (~5 ms)."""

    def __init__(self) -> None:
        self._commands: dict[str, click.Command] = {}
        self._modules: dict[str, str] = {}  # command name -> the module that registers it

    def provide(self, modules: dict[str, tuple[str, ...]]) -> None:
        """``{module: its command names}``: what to import when a name is looked up."""
        self._modules.update((name, m) for m, names in modules.items() for name in names)

    def _load(self, name: object) -> None:
        module = self._modules.get(name) if isinstance(name, str) else None
        if module is not None and name not in self._commands:
            import_uncollected(module)

    def _load_all(self) -> None:
        for module in dict.fromkeys(self._modules.values()):
            import_uncollected(module)

    def __getitem__(self, name: str) -> click.Command:
        self._load(name)
        return self._commands[name]

    def __contains__(self, name: object) -> bool:
        self._load(name)
        return name in self._commands

    def __iter__(self) -> Iterator[str]:
        self._load_all()
        return iter(self._commands)

    def __len__(self) -> int:
        self._load_all()
        return len(self._commands)

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._commands[name] = command

    def __delitem__(self, name: str) -> None:
        del self._commands[name]


class _Group(click.Group):
    """The ``apiwatch`` group: its own options are accepted after the sub-command too
    (``apiwatch scan --db x.db access.log``), unless that command has an option of the
    same name (``daily --config``). Its commands load when looked up (:class:`_Commands`)."""

    commands: _Commands

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._hoist(ctx, args))

    def _hoist(self, ctx: click.Context, args: list[str]) -> list[str]:
        valued = {
            o for p in self.params if isinstance(p, click.Option) and not p.is_flag for o in p.opts
        }
        i = 0  # the sub-command: the first word that is not a group option or its value
        while i < len(args) and args[i].startswith("-") and args[i] != "--":
            i += 2 if args[i] in valued else 1
        if i >= len(args) or args[i] not in self.commands:
            return args
        own = _option_names(self.commands[args[i]], args[i + 1 :])
        moved: list[str] = []
        rest: list[str] = []
        words = iter(args[i + 1 :])
        for word in words:
            if word == "--":  # what follows is arguments
                rest.extend([word, *words])
                break
            name, eq, _ = word.partition("=")
            if name in valued and name not in own:
                moved.extend([word] if eq else [word, next(words, "")])
            else:
                rest.append(word)
        return [*moved, *args[: i + 1], *rest] if moved else args


def _option_names(command: click.Command, args: list[str]) -> set[str]:
    """Option names of ``command`` and, for a group, of the sub-command ``args`` name."""
    names = {o for p in command.params for o in getattr(p, "opts", ())}
    if isinstance(command, click.Group):
        sub = next((a for a in args if not a.startswith("-")), None)
        if sub in command.commands:
            names |= _option_names(command.commands[sub], [])
    return names


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
    from monitor.app import App, Settings

    ctx.obj = App(
        Settings(
            db=db,
            config=config,
            geoip=tuple(geoip),
            geo_overrides=tuple(geo_overrides),
            rules=tuple(rules),
            quiet_sqlite=True,  # this process is the command's: SQLite's allocations uncounted
        )
    )
    ctx.call_on_close(ctx.obj.close)
    # At exit, what the command made is kept out of the cycle collector's view: CPython's
    # last collections would walk all of it (catalogue, rules, caches, a few hundred
    # modules), 30-40 ms of CPU, a tenth of a small scan. It is freed as before, by
    # reference counting, after the database, the producers and the files were closed.
    atexit.unregister(gc.freeze)  # once, however many commands a process runs
    atexit.register(gc.freeze)


def collect_options(
    fmt: str,
    squid_logformat: str | None,
    columns: str | None = None,
    mapping: str | None = None,
) -> CollectOptions:
    from monitor.collectors import CollectOptions

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


class LazyChoice(click.Choice):
    """A :class:`click.Choice` whose choices are computed when first needed (the collectors
    load only for a command that reads input)."""

    def __init__(self, choices: Callable[[], Iterable[str]]):
        self._choices = choices
        self.case_sensitive = True

    @functools.cached_property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._choices())


def _format_names() -> list[str]:
    from monitor.collectors import FORMAT_NAMES

    return ["auto", *FORMAT_NAMES]


format_option = click.option(
    "--format",
    "fmt",
    type=LazyChoice(_format_names),
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


def logformat_options(fn):
    return _squid_logformat_option(_columns_option(_mapping_option(fn)))


def log_inputs(fn):
    """What reading logs takes (``scan``, ``watch``): the format, its layout, the egress."""
    return format_option(logformat_options(egress_options(fn)))


def egress_options(fn):
    """``--site``, ``--egress-ip``, ``--egress-country``: where the logs' traffic leaves."""
    fn = click.option(
        "--egress-country",
        callback=lambda c, p, v: country_value(v),
        metavar="CC",
        help="Declared egress country (ISO 3166-1 alpha-2); beats geolocation.",
    )(fn)
    fn = click.option(
        "--egress-ip",
        callback=lambda c, p, v: ip_value(v),
        help="Public address these logs leave from.",
    )(fn)
    return click.option(
        "--site",
        help="Site (from the config) these logs come from; its egress IPs and country apply.",
    )(fn)


def check_site(app: App, site: str | None) -> None:
    if site is not None and site not in app.config.sites:
        known = ", ".join(sorted(app.config.sites)) or "none configured"
        raise click.BadParameter(
            f"unknown site {site!r} (sites in config: {known})", param_hint="--site"
        )


class NullFile:
    def write(self, _):
        return 0

    def flush(self):
        pass

    def isatty(self):
        return False


def ip_value(value):
    if value is None:
        return None
    from monitor.observation import canonical_ip

    ip = canonical_ip(value)
    if ip is None:
        raise click.BadParameter(f"{value!r} is not an IP address")
    return ip


def country_value(value):
    if value is None:
        return None
    from monitor.countries import is_country_code

    if not is_country_code(value.upper()):
        raise click.BadParameter(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return value.upper()


def warn_stale(app: App) -> None:
    for src in app.stale_geodata():
        click.echo(
            f"warning: geolocation source {src.name} is from {src.build_date}; "
            "refresh it (geodata/build.py, or geoipupdate for your own files)",
            err=True,
        )


def warn_stale_accelerators(say: Callable[[str], None] | None = None) -> None:
    """Say which C accelerators are built from another version of their source (skipped:
    their work runs in Python, a 25 % scan three times slower), since nothing else would
    show why parsing got slower after an update: on stderr, escaped (a module's value), or
    through ``say`` (a command's own log, which escapes)."""
    say = say or (lambda text: click.echo(safe_text(text, None), err=True))
    for found in accel.stale():
        say(f"warning: {found}")


def print_problems(diag: Diagnostics, stored: bool, limit: int = 20) -> None:
    """Problems on stderr; ``stored``: the scan kept them in ``scan_problems`` (parse keeps
    nothing)."""
    from monitor.collectors.base import MAX_PROBLEMS_KEPT

    for p in diag.file_errors:
        click.echo(f"error: {safe_text(str(p), None)}", err=True)
    for p in diag.notices[:limit]:
        click.echo(f"notice: {safe_text(str(p), 240)}", err=True)
    for p in diag.problems[:limit]:
        click.echo(f"malformed: {safe_text(str(p), 240)}", err=True)
    if diag.malformed > limit:
        where = (
            f"the first {MAX_PROBLEMS_KEPT} are kept in the scan_problems table"
            if stored
            else "parse stores nothing; scan keeps them in the scan_problems table"
        )
        click.echo(f"malformed: … and {diag.malformed - limit} more ({where})", err=True)


def report_delivery(delivery: Delivery) -> None:
    """A sink that failed is a warning: its events wait in the outbox for the next run."""
    for name, error in delivery.failed.items():
        click.echo(
            f"warning: alerts: sink {safe_text(name, 80)!s} failed, events kept in the outbox: "
            f"{safe_text(error, 240)}",
            err=True,
        )


def when(_ctx, _param, value):
    if value is None:
        return None
    from monitor.timespec import parse_when

    try:
        return parse_when(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def date_value(_ctx, _param, value):
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


FILTER_NAMES = (
    "since",
    "until",
    "rule",
    "severity",
    "provider",
    "site",
    "client",
    "user",
    "status",
)


def cidr_value(_ctx, _param, values):
    """``--client``: an address (canonical form) or a network (CIDR form); anything else (a
    pseudonymised client) is matched as it is."""
    import ipaddress

    out = []
    for value in values:
        text = value.strip()
        try:
            out.append(str(ipaddress.ip_network(text, strict=False)) if "/" in text else
                       str(ipaddress.ip_address(text)))  # fmt: skip
        except ValueError:
            out.append(value)
    return tuple(out)


def filter_options(fn, without: tuple[str, ...] = ()):
    """The filters ``findings``, ``incidents`` and bulk ``ack``/``resolve`` share; the
    command receives them as keyword arguments (see :func:`query_of`)."""
    from monitor.findings import FINDING_STATUSES
    from monitor.policy import SEVERITIES

    since_help = "Last seen at or after: 7d, 24h, 30m, or an ISO date/time (UTC)."
    options = {
        "since": click.option("--since", callback=when, help=since_help),
        "until": click.option("--until", callback=when, help="First seen before: as --since."),
        "rule": click.option("--rule", multiple=True, help="Rule id (repeatable)."),
        "severity": click.option(
            "--severity", type=click.Choice(SEVERITIES), help="Minimum severity."
        ),
        "provider": click.option("--provider", multiple=True, help="Provider id (repeatable)."),
        "site": click.option("--site", multiple=True, help="Site name (repeatable)."),
        "client": click.option(
            "--client",
            multiple=True,
            callback=cidr_value,
            metavar="CIDR",
            help="Client address or network, e.g. 10.20.0.0/16 (repeatable).",
        ),
        "user": click.option("--user", multiple=True, help="User name as logged (repeatable)."),
        "status": click.option(
            "--status",
            multiple=True,
            type=click.Choice(FINDING_STATUSES),
            help="Status (repeatable).",
        ),
    }
    for name in reversed(FILTER_NAMES):
        if name not in without:
            fn = options[name](fn)
    return fn


def bulk_filter_options(fn):
    """:func:`filter_options` for ``ack``/``resolve`` (whose ``--until`` is an exception's)."""
    return filter_options(fn, without=("until",))


def query_of(kwargs: dict, **extra):
    """The store query for :func:`filter_options` values (removed from ``kwargs``)."""
    from monitor.store import IncidentQuery

    f = {name: kwargs.pop(name, None) for name in FILTER_NAMES}
    return IncidentQuery(
        since=f["since"], until=f["until"], rule=f["rule"], min_severity=f["severity"],
        provider=f["provider"], site=f["site"], client=f["client"], user=f["user"],
        status=f["status"], **extra,
    )  # fmt: skip


spreadsheet_safe_option = click.option(
    "--spreadsheet-safe",
    is_flag=True,
    help="With --csv: prefix cells a spreadsheet would run as formulas (=, +, -, @) with '.",
)


def listing_options(noun: str):
    """``--limit``, ``--json``, ``--csv`` and ``--spreadsheet-safe`` of a listing command."""

    def decorate(fn):
        for option in reversed([
            click.option("--limit", type=click.IntRange(min=1), help="At most this many (newest first)."),
            click.option("--json", "out", flag_value="json", help=f"JSON lines, one {noun} per line."),
            click.option("--csv", "out", flag_value="csv", help="CSV with a header row."),
            spreadsheet_safe_option,
        ]):  # fmt: skip
            fn = option(fn)
        return fn

    return decorate
