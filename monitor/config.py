"""The organisation's configuration file (TOML): database, sites, geolocation, policy inputs.

Example::

    db = "/var/lib/apiwatch/apiwatch.db"

    [organisation]
    allowed_providers = ["openai", "azure_openai"]   # empty or absent: rule off
    data_residency = ["EU"]                            # countries and zones (rules/residency.yaml)
    packs = ["provider-region-lists", "eu-personal-data"]   # rules/packs; absent: the defaults

    [residency.azure_resources]                        # Azure resource name -> Azure region
    contoso-gpt = "swedencentral"

    [entities.acme_sh]                                 # a legal entity and who controls it
    controlled_from = "CN"
    sites = ["shanghai"]                               # and/or client_cidrs = [...]

    [catalog]
    extra = ["corp-llm.yaml"]                          # overlay: internal gateways, relays

    [geo]
    databases = ["/var/lib/GeoIP/GeoLite2-City.mmdb"]
    overrides = ["corp-egress.csv"]                    # relative to this file
    search_system = true

    [sites.shanghai]
    client_cidrs = ["10.20.0.0/16"]
    egress_ips = ["114.114.114.114"]
    country = "CN"                                     # applies with or without egress_ips
    tz = "Asia/Shanghai"                               # optional: report days in local time

    [[exceptions]]                                     # the exception register
    rule = "provider-region-unsupported"               # rule, provider, site: optional
    site = "shanghai"
    client = "10.20.8.0/24"                            # or user = "alice"; optional
    until = 2027-03-31                                 # last day it holds
    reason = "SEC-123: pilot approved by legal"
    approver = "ciso@example.com"

    [daily]                                          # apiwatch daily
    fail_on = "high"                                   # exit 3 on new open incidents >= this

    [[sources]]                                        # scanned by apiwatch daily
    path = "/var/log/squid/access.log*"                # glob ok; relative to this file
    site = "shanghai"                                  # or egress_ip / egress_country
    format = "auto"                                    # optional; squid_logformat too

    [[reports]]                                        # written by apiwatch daily
    period = "weekly"                                  # daily | weekly | monthly
    format = "html"                                    # html | md | csv | json
    output = "reports/apiwatch-{period}-{date}.html"   # relative to this file
    site = ["shanghai"]                                # optional filters; provider too

Every error names the key that is wrong, so ``apiwatch`` fails before it scans anything.
"""

from __future__ import annotations

import ipaddress
import os
import string
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from monitor.countries import is_country_code
from monitor.errors import ApiwatchError
from monitor.findings import ExceptionEntry
from monitor.sinks.base import DEFAULT_MIN_SEVERITY, AlertSpec


class ConfigError(ApiwatchError, ValueError):
    """The configuration file is missing, unreadable or invalid (message names the key)."""


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    client_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    egress_ips: tuple[str, ...] = ()
    country: str | None = None  # declared egress country
    data_residency: tuple[str, ...] | None = None  # None: the organisation's requirement
    tz: str | None = None  # IANA time zone of the site, e.g. Asia/Shanghai (report days)


@dataclass(frozen=True, slots=True)
class Entity:
    """``[entities.NAME]``: a legal entity, the country it is controlled from, and which
    sites or client networks are it (for restrictions that follow ownership)."""

    name: str
    controlled_from: str
    sites: tuple[str, ...] = ()
    client_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True, slots=True)
class Source:
    """One ``[[sources]]`` entry: logs that ``apiwatch daily`` scans, with their options."""

    path: str  # absolute glob pattern (or plain path)
    format: str = "auto"
    site: str | None = None
    egress_ip: str | None = None
    egress_country: str | None = None
    squid_logformat: str | None = None
    optional: bool = False  # a pattern that matches no file is not an error
    key: str = "sources"  # where it was written, e.g. "sources[0]", for messages


REPORT_PERIODS = ("daily", "weekly", "monthly")
REPORT_FORMATS = ("html", "md", "csv", "json")
REPORT_WHEN = ("period-end", "always")
#: Placeholders an ``output`` pattern may use.
OUTPUT_FIELDS = ("period", "date", "start", "end", "format", "week", "month")


@dataclass(frozen=True, slots=True)
class ReportSpec:
    """One ``[[reports]]`` entry: a report that ``apiwatch daily`` writes."""

    period: str
    format: str
    output: str  # absolute path pattern with OUTPUT_FIELDS placeholders
    site: tuple[str, ...] = ()
    provider: tuple[str, ...] = ()
    when: str = "period-end"  # period-end: once its period is over; always: every run (to date)
    top: int = 20
    spreadsheet_safe: bool = False  # CSV: neutralise cells a spreadsheet would run as formulas
    key: str = "reports"


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    db: str | None = None
    cluster: str | None = None  # Dask scheduler address for daily's scans
    sites: dict[str, Site] = field(default_factory=dict)
    allowed_providers: tuple[str, ...] = ()
    geo_databases: tuple[Path, ...] = ()
    geo_overrides: tuple[Path, ...] = ()
    geo_search_system: bool = True
    sources: tuple[Source, ...] = ()
    reports: tuple[ReportSpec, ...] = ()
    fail_on: str | None = None  # [daily] fail_on
    pseudonymize: bool = False  # [privacy] pseudonymize
    privacy_key: str | None = field(default=None, repr=False)  # [privacy] key or key_file
    alerts: tuple[AlertSpec, ...] = ()  # [[alerts]]: sinks that receive finding events
    data_residency: tuple[str, ...] = ()  # [organisation] data_residency: countries and zones
    packs: tuple[str, ...] | None = None  # [organisation] packs; None: the packs on by default
    entities: dict[str, Entity] = field(default_factory=dict)
    azure_resources: dict[str, str] = field(default_factory=dict)  # resource name -> region
    catalog_extra: tuple[Path, ...] = ()  # [catalog] extra: organisation overlay files
    exceptions: tuple[ExceptionEntry, ...] = ()  # [[exceptions]]: the exception register


_TOP_KEYS = {
    "db",
    "cluster",
    "organisation",
    "geo",
    "sites",
    "sources",
    "reports",
    "daily",
    "privacy",
    "alerts",
    "residency",
    "entities",
    "catalog",
    "exceptions",
}
_EXCEPTION_KEYS = {"rule", "provider", "site", "client", "user", "until", "reason", "approver"}
#: keys of every [[alerts]] table; each sink kind adds its own (``KEYS`` of its module)
_ALERT_KEYS = {"name", "kind", "min_severity", "rules", "sites", "ca_file"}
_RESIDENCY_KEYS = {"azure_resources"}
_ENTITY_KEYS = {"controlled_from", "sites", "client_cidrs"}
_CATALOG_KEYS = {"extra"}
_PRIVACY_KEYS = {"pseudonymize", "key", "key_file"}
_SOURCE_KEYS = {
    "path",
    "format",
    "site",
    "egress_ip",
    "egress_country",
    "squid_logformat",
    "optional",
}
_REPORT_KEYS = {
    "period",
    "format",
    "output",
    "site",
    "provider",
    "when",
    "top",
    "spreadsheet_safe",
}
_DAILY_KEYS = {"fail_on"}
_ORG_KEYS = {"allowed_providers", "data_residency", "packs"}
_GEO_KEYS = {"databases", "overrides", "search_system"}
_SITE_KEYS = {"client_cidrs", "egress_ips", "country", "data_residency", "tz"}


def default_config_path() -> Path | None:
    """``$APIWATCH_CONFIG``, else ``~/.config/apiwatch/config.toml`` when it exists."""
    env = os.environ.get("APIWATCH_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    candidate = Path(base) / "apiwatch" / "config.toml"
    return candidate if candidate.is_file() else None


def load_config(path: Path | str | None) -> Config:
    """Read and validate a config file; ``None`` gives the empty configuration."""
    if path is None:
        return Config()
    import tomllib  # only with a config file to read

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, path)


def parse_config(data: dict[str, Any], path: Path | None = None) -> Config:
    where = str(path) if path else "config"
    base = path.parent if path else Path.cwd()
    _no_unknown(data, _TOP_KEYS, where, "")

    db = data.get("db")
    if db is not None and not isinstance(db, str):
        raise ConfigError(f"{where}: db: expected a path string")
    cluster = data.get("cluster")
    if cluster is not None and (not isinstance(cluster, str) or not cluster.strip()):
        raise ConfigError(f"{where}: cluster: expected a Dask scheduler address (tcp://host:8786)")

    org = _table(data, "organisation", where)
    _no_unknown(org, _ORG_KEYS, where, "organisation.")
    allowed = tuple(_str_list(org, "allowed_providers", where, "organisation."))
    data_residency = _geo_list(org, where, "organisation.") or ()
    packs = tuple(_str_list(org, "packs", where, "organisation.")) if "packs" in org else None

    geo = _table(data, "geo", where)
    _no_unknown(geo, _GEO_KEYS, where, "geo.")
    search_system = geo.get("search_system", True)
    if not isinstance(search_system, bool):
        raise ConfigError(f"{where}: geo.search_system: expected true or false")

    sites: dict[str, Site] = {}
    for name, body in _table(data, "sites", where).items():
        key = f"sites.{name}"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {key}: expected a table")
        _no_unknown(body, _SITE_KEYS, where, key + ".")
        sites[name] = _site(name, body, where, key)

    daily = _table(data, "daily", where)
    _no_unknown(daily, _DAILY_KEYS, where, "daily.")
    fail_on = daily.get("fail_on")
    if fail_on is not None:
        from monitor.policy import SEVERITIES

        if fail_on not in SEVERITIES:
            raise ConfigError(
                f"{where}: daily.fail_on: {fail_on!r} is not a severity "
                f"(expected one of {', '.join(SEVERITIES)})"
            )

    sources = tuple(
        _source(body, where, key, base, sites)
        for key, body in _array_of_tables(data, "sources", where)
    )
    reports = tuple(
        _report(body, where, key, base) for key, body in _array_of_tables(data, "reports", where)
    )

    pseudonymize, privacy_key = _privacy(_table(data, "privacy", where), where, base)
    exceptions = tuple(
        _exception(body, where, key, sites)
        for key, body in _array_of_tables(data, "exceptions", where)
    )
    alerts = tuple(
        _alert(body, where, key, base, sites)
        for key, body in _array_of_tables(data, "alerts", where)
    )
    names = [a.name for a in alerts]
    for a in alerts:
        if names.count(a.name) > 1:
            raise ConfigError(f"{where}: {a.key}.name: {a.name!r} is used by another sink")

    residency = _table(data, "residency", where)
    _no_unknown(residency, _RESIDENCY_KEYS, where, "residency.")
    azure = _table(residency, "azure_resources", where)
    for name, region in azure.items():
        if not isinstance(region, str) or not region.strip():
            raise ConfigError(
                f"{where}: residency.azure_resources.{name}: expected an Azure region name "
                "such as 'swedencentral'"
            )
    entities = {
        name: _entity(name, body, where, sites)
        for name, body in _table(data, "entities", where).items()
    }
    catalog = _table(data, "catalog", where)
    _no_unknown(catalog, _CATALOG_KEYS, where, "catalog.")
    extra = tuple(_resolve(base, p) for p in _str_list(catalog, "extra", where, "catalog."))

    return Config(
        path=path,
        db=str(_resolve(base, db)) if db else None,
        cluster=cluster,
        sites=sites,
        allowed_providers=allowed,
        geo_databases=tuple(_resolve(base, p) for p in _str_list(geo, "databases", where, "geo.")),
        geo_overrides=tuple(_resolve(base, p) for p in _str_list(geo, "overrides", where, "geo.")),
        geo_search_system=search_system,
        sources=sources,
        reports=reports,
        fail_on=fail_on,
        pseudonymize=pseudonymize,
        privacy_key=privacy_key,
        alerts=alerts,
        data_residency=data_residency,
        packs=packs,
        entities=entities,
        azure_resources={name.lower(): region.strip().lower() for name, region in azure.items()},
        catalog_extra=extra,
        exceptions=exceptions,
    )


def _exception(
    body: dict[str, Any], where: str, key: str, sites: dict[str, Site]
) -> ExceptionEntry:
    """One ``[[exceptions]]`` entry: what it covers, until when, why and who approved it."""
    _no_unknown(body, _EXCEPTION_KEYS, where, key + ".")
    until = body.get("until")
    if isinstance(until, date):  # TOML dates arrive parsed
        until = until.isoformat()
    try:
        until = date.fromisoformat(until).isoformat() if isinstance(until, str) else None
    except ValueError:
        until = None
    if until is None:
        raise ConfigError(
            f"{where}: {key}.until: expected a date (YYYY-MM-DD), the last day it holds"
        )
    texts = {
        n: _opt_str(body, n, where, key)
        for n in ("rule", "provider", "site", "user", "reason", "approver")
    }
    for needed in ("reason", "approver"):
        if texts[needed] is None:
            raise ConfigError(f"{where}: {key}.{needed}: required (an exception says why and who)")
    if texts["site"] is not None and texts["site"] not in sites:
        known = ", ".join(sorted(sites)) or "none configured"
        raise ConfigError(f"{where}: {key}.site: unknown site {texts['site']!r} (sites: {known})")
    client = _opt_str(body, "client", where, key)
    net = None
    if client is not None:
        try:
            net = ipaddress.ip_network(client.strip(), strict=False)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}.client: {exc}") from exc
    if net is not None and texts["user"] is not None:
        raise ConfigError(f"{where}: {key}: give client (a CIDR) or user, not both")
    return ExceptionEntry(until=until, reason=texts["reason"], approver=texts["approver"],
                          rule=texts["rule"], provider=texts["provider"], site=texts["site"],
                          client=net, user=texts["user"], key=key)  # fmt: skip


def _geo_list(body: dict[str, Any], where: str, prefix: str) -> tuple[str, ...] | None:
    """``data_residency``: country codes and zone ids (upper case); the zones are checked
    against ``rules/residency.yaml`` when the catalogue is loaded."""
    if "data_residency" not in body:
        return None
    values = _str_list(body, "data_residency", where, prefix)
    for value in values:
        if not (is_country_code(value) or (value.isupper() and value.replace("_", "").isalnum())):
            raise ConfigError(
                f"{where}: {prefix}data_residency: {value!r} is neither an ISO 3166-1 alpha-2 "
                "code nor a zone (e.g. EU, EEA)"
            )
    return tuple(values)


def _entity(name: str, body: Any, where: str, sites: dict[str, Site]) -> Entity:
    key = f"entities.{name}"
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: {key}: expected a table")
    _no_unknown(body, _ENTITY_KEYS, where, key + ".")
    country = body.get("controlled_from")
    if not isinstance(country, str) or not is_country_code(country.upper()):
        raise ConfigError(
            f"{where}: {key}.controlled_from: {country!r} is not an ISO 3166-1 alpha-2 code"
        )
    names = _str_list(body, "sites", where, key + ".")
    for site in names:
        if site not in sites:
            known = ", ".join(sorted(sites)) or "none configured"
            raise ConfigError(f"{where}: {key}.sites: unknown site {site!r} (sites: {known})")
    cidrs = _client_cidrs(body, where, key)
    if not names and not cidrs:
        raise ConfigError(f"{where}: {key}: name its sites or client_cidrs")
    return Entity(name, country.upper(), tuple(names), tuple(cidrs))


def _privacy(body: dict[str, Any], where: str, base: Path) -> tuple[bool, str | None]:
    """``[privacy]``: pseudonymise client addresses and users with a key kept here or in a
    file beside the config (which can then be readable by root alone)."""
    _no_unknown(body, _PRIVACY_KEYS, where, "privacy.")
    on = body.get("pseudonymize", False)
    if not isinstance(on, bool):
        raise ConfigError(f"{where}: privacy.pseudonymize: expected true or false")
    key = body.get("key")
    if key is not None and not isinstance(key, str):
        raise ConfigError(f"{where}: privacy.key: expected a string")
    if body.get("key_file") is not None:
        if key is not None:
            raise ConfigError(f"{where}: privacy.key_file: give key or key_file, not both")
        if not isinstance(body["key_file"], str):
            raise ConfigError(f"{where}: privacy.key_file: expected a path string")
        key_path = _resolve(base, body["key_file"])
        try:
            key = key_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{where}: privacy.key_file: cannot read {key_path}: {exc.strerror}"
            ) from exc
    if on and not key:
        raise ConfigError(f"{where}: privacy.key: pseudonymize = true needs a key or key_file")
    return on, key


def _array_of_tables(data: dict[str, Any], name: str, where: str) -> list[tuple[str, dict]]:
    """``[[name]]`` entries as (key for messages, table); a single ``[name]`` table is one."""
    value = data.get(name, [])
    if isinstance(value, dict):
        return [(name, value)]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {name}: expected [[{name}]] tables")
    out = []
    for i, body in enumerate(value):
        key = f"{name}[{i}]"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {key}: expected a table")
        out.append((key, body))
    return out


def _opt_str(body: dict[str, Any], name: str, where: str, key: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where}: {key}.{name}: expected a non-empty string")
    return value


def _opt_bool(body: dict[str, Any], name: str, where: str, key: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key}.{name}: expected true or false")
    return value


def _source(
    body: dict[str, Any], where: str, key: str, base: Path, sites: dict[str, Site]
) -> Source:
    from monitor.collectors import FORMAT_NAMES

    _no_unknown(body, _SOURCE_KEYS, where, key + ".")
    pattern = _opt_str(body, "path", where, key)
    if pattern is None:
        raise ConfigError(f"{where}: {key}.path: missing (a log file or glob pattern)")
    fmt = _opt_str(body, "format", where, key) or "auto"
    if fmt != "auto" and fmt not in FORMAT_NAMES:
        raise ConfigError(
            f"{where}: {key}.format: unknown format {fmt!r} "
            f"(expected auto, {', '.join(FORMAT_NAMES)})"
        )
    site = _opt_str(body, "site", where, key)
    if site is not None and site not in sites:
        known = ", ".join(sorted(sites)) or "none configured"
        raise ConfigError(f"{where}: {key}.site: unknown site {site!r} (sites: {known})")
    egress_ip = _opt_str(body, "egress_ip", where, key)
    if egress_ip is not None:
        try:
            egress_ip = str(ipaddress.ip_address(egress_ip.strip()))
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}.egress_ip: {exc}") from exc
    country = _opt_str(body, "egress_country", where, key)
    if country is not None:
        if not is_country_code(country.upper()):
            raise ConfigError(
                f"{where}: {key}.egress_country: {country!r} is not an ISO 3166-1 alpha-2 code"
            )
        country = country.upper()
    return Source(
        path=str(_resolve(base, pattern)),
        format=fmt,
        site=site,
        egress_ip=egress_ip,
        egress_country=country,
        squid_logformat=_opt_str(body, "squid_logformat", where, key),
        optional=_opt_bool(body, "optional", where, key),
        key=key,
    )


def _alert(
    body: dict[str, Any], where: str, key: str, base: Path, sites: dict[str, Site]
) -> AlertSpec:
    """One ``[[alerts]]`` sink: the keys every kind shares, then its kind's own check."""
    from monitor.policy import SEVERITIES
    from monitor.sinks import KINDS, module_of

    kind = body.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: {key}.kind: expected one of {', '.join(KINDS)}")
    module = module_of(kind)
    _no_unknown(body, _ALERT_KEYS | module.KEYS, where, key + ".")
    name = _opt_str(body, "name", where, key)
    if name is None:
        raise ConfigError(f"{where}: {key}.name: missing (a name for messages and --sink)")
    min_severity = body.get("min_severity", DEFAULT_MIN_SEVERITY)
    if min_severity not in SEVERITIES:
        raise ConfigError(f"{where}: {key}.min_severity: expected one of {', '.join(SEVERITIES)}")
    site_filter = tuple(_str_or_list(body, "sites", where, key))
    for site in site_filter:
        if site not in sites:
            raise ConfigError(f"{where}: {key}.sites: unknown site {site!r}")
    headers = body.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(f"{where}: {key}.headers: expected a table of strings")
    files = {n: _opt_str(body, n, where, key) for n in ("token_file", "ca_file", "path")}
    spec = AlertSpec(
        name=name,
        kind=kind,
        min_severity=min_severity,
        rules=tuple(_str_or_list(body, "rules", where, key)),
        sites=site_filter,
        url=_opt_str(body, "url", where, key),
        headers=tuple(headers.items()),
        token_env=_opt_str(body, "token_env", where, key),
        token_file=_resolve(base, files["token_file"]) if files["token_file"] else None,
        address=_opt_str(body, "address", where, key),
        format=_opt_str(body, "format", where, key),
        path=files["path"] if files["path"] in (None, "-") else str(_resolve(base, files["path"])),
        ca_file=_resolve(base, files["ca_file"]) if files["ca_file"] else None,
        key=key,
    )
    try:
        module.check(spec)
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}.{exc}") from None
    if spec.ca_file and not spec.ca_file.is_file():
        raise ConfigError(f"{where}: {key}.ca_file: {spec.ca_file} is not a readable file")
    return spec


def _report(body: dict[str, Any], where: str, key: str, base: Path) -> ReportSpec:
    _no_unknown(body, _REPORT_KEYS, where, key + ".")
    choices = {"period": REPORT_PERIODS, "format": REPORT_FORMATS, "when": REPORT_WHEN}
    picked: dict[str, str | None] = {}
    for name, allowed in choices.items():
        value = body.get(name)
        if value is not None and value not in allowed:
            raise ConfigError(
                f"{where}: {key}.{name}: {value!r} is not one of {', '.join(allowed)}"
            )
        picked[name] = value
    if picked["period"] is None:
        raise ConfigError(f"{where}: {key}.period: missing ({', '.join(REPORT_PERIODS)})")
    output = _opt_str(body, "output", where, key)
    if output is None:
        raise ConfigError(
            f"{where}: {key}.output: missing (a path pattern, e.g. "
            "'reports/apiwatch-{period}-{date}.html')"
        )
    fmt = report_format(picked["format"], output)
    try:
        check_output_pattern(output)
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}.output: {exc}") from None
    top = body.get("top", 20)
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ConfigError(f"{where}: {key}.top: expected a positive integer")
    return ReportSpec(
        period=picked["period"],
        format=fmt,
        output=str(_resolve(base, output)),
        site=tuple(_str_or_list(body, "site", where, key)),
        provider=tuple(_str_or_list(body, "provider", where, key)),
        when=picked["when"] or "period-end",
        top=top,
        spreadsheet_safe=_opt_bool(body, "spreadsheet_safe", where, key),
        key=key,
    )


def report_format(fmt: str | None, output: str | None) -> str:
    """The one rule for a report's format: the one asked for, else the output's suffix
    (``.html``/``.htm``, ``.md``/``.markdown``, ``.csv``, ``.json``), else Markdown."""
    if fmt:
        return fmt
    suffix = Path(output or "").suffix.lower().lstrip(".")
    suffix = {"htm": "html", "markdown": "md"}.get(suffix, suffix)
    return suffix if suffix in REPORT_FORMATS else "md"


def check_output_pattern(pattern: str) -> None:
    """Raise ValueError unless ``pattern`` uses only the plain placeholders of
    :data:`OUTPUT_FIELDS` (no attributes, indexes, conversions or format specs: a path
    pattern is not a template language)."""
    known = ", ".join("{" + f + "}" for f in OUTPUT_FIELDS)
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(pattern)]
    except ValueError as exc:  # a lone { or }
        raise ValueError(
            f"bad placeholder in {pattern!r}: {exc}; write {{{{ and }}}} for braces (known: {known})"
        ) from None
    for name, spec, conv in fields:
        if name is not None and (name not in OUTPUT_FIELDS or spec or conv):
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"bad placeholder {shown} in {pattern!r} (known: {known})")


def fill_output_pattern(pattern: str, values: dict[str, str]) -> str:
    """``pattern`` with its placeholders filled (checked by :func:`check_output_pattern`)."""
    check_output_pattern(pattern)
    return pattern.format_map(values)


def _str_or_list(body: dict[str, Any], name: str, where: str, key: str) -> list[str]:
    value = body.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: {key}.{name}: expected a string or a list of strings")
    return value


def _client_cidrs(
    body: dict[str, Any], where: str, key: str
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    cidrs = []
    for text in _str_list(body, "client_cidrs", where, key + "."):
        try:
            cidrs.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}.client_cidrs: {exc}") from exc
    return cidrs


def _site(name: str, body: dict[str, Any], where: str, key: str) -> Site:
    cidrs = _client_cidrs(body, where, key)
    egress = []
    for text in _str_list(body, "egress_ips", where, key + "."):
        try:
            egress.append(str(ipaddress.ip_address(text)))
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}.egress_ips: {exc}") from exc
    country = body.get("country")
    if country is not None:
        if not isinstance(country, str) or not is_country_code(country.upper()):
            raise ConfigError(
                f"{where}: {key}.country: {country!r} is not an ISO 3166-1 alpha-2 code"
            )
        country = country.upper()
    tz = body.get("tz")
    if tz is not None:
        tz = time_zone(tz, f"{where}: {key}.tz")
    return Site(
        name, tuple(cidrs), tuple(egress), country, _geo_list(body, where, key + "."), tz=tz
    )


def time_zone(value: Any, where: str) -> str:
    """An IANA time zone name, validated against the system's zone database."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        if not isinstance(value, str) or not value:
            raise ValueError
        ZoneInfo(value)
    except (ValueError, ZoneInfoNotFoundError):
        raise ConfigError(f"{where}: {value!r} is not a time zone (e.g. Asia/Shanghai)") from None
    return value


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key}: expected a table")
    return value


def _str_list(data: dict[str, Any], key: str, where: str, prefix: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {prefix}{key}: expected a list of strings")
    return value


def _no_unknown(data: dict[str, Any], known: set[str], where: str, prefix: str) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{where}: {prefix}{key}: unknown key (expected one of {', '.join(sorted(known))})"
            )


def _resolve(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p
