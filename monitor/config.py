"""The organisation's configuration file (TOML): database, sites, geolocation, policy inputs.

Example::

    db = "/var/lib/apiwatch/apiwatch.db"

    [organisation]
    allowed_providers = ["openai", "azure_openai"]   # empty or absent: rule off

    [geo]
    databases = ["/var/lib/GeoIP/GeoLite2-City.mmdb"]
    overrides = ["corp-egress.csv"]                    # relative to this file
    search_system = true

    [sites.shanghai]
    client_cidrs = ["10.20.0.0/16"]
    egress_ips = ["114.114.114.114"]
    country = "CN"

Every error names the key that is wrong, so ``apiwatch`` fails before it scans anything.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from monitor.countries import is_country_code


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid (message names the key)."""


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    client_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    egress_ips: tuple[str, ...] = ()
    country: str | None = None  # declared egress country


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    db: str | None = None
    sites: dict[str, Site] = field(default_factory=dict)
    allowed_providers: tuple[str, ...] = ()
    geo_databases: tuple[Path, ...] = ()
    geo_overrides: tuple[Path, ...] = ()
    geo_search_system: bool = True


_TOP_KEYS = {"db", "organisation", "geo", "sites"}
_ORG_KEYS = {"allowed_providers"}
_GEO_KEYS = {"databases", "overrides", "search_system"}
_SITE_KEYS = {"client_cidrs", "egress_ips", "country"}


def default_config_path() -> Path | None:
    """``$APIWATCH_CONFIG``, else ``~/.config/apiwatch/config.toml`` when it exists."""
    env = os.environ.get("APIWATCH_CONFIG")
    if env:
        return Path(env)
    candidate = Path(click.get_app_dir("apiwatch")) / "config.toml"
    return candidate if candidate.is_file() else None


def load_config(path: Path | str | None) -> Config:
    """Read and validate a config file; ``None`` gives the empty configuration."""
    if path is None:
        return Config()
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

    org = _table(data, "organisation", where)
    _no_unknown(org, _ORG_KEYS, where, "organisation.")
    allowed = tuple(_str_list(org, "allowed_providers", where, "organisation."))

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

    return Config(
        path=path,
        db=str(_resolve(base, db)) if db else None,
        sites=sites,
        allowed_providers=allowed,
        geo_databases=tuple(_resolve(base, p) for p in _str_list(geo, "databases", where, "geo.")),
        geo_overrides=tuple(_resolve(base, p) for p in _str_list(geo, "overrides", where, "geo.")),
        geo_search_system=search_system,
    )


def _site(name: str, body: dict[str, Any], where: str, key: str) -> Site:
    cidrs = []
    for text in _str_list(body, "client_cidrs", where, key + "."):
        try:
            cidrs.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}.client_cidrs: {exc}") from exc
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
    return Site(name, tuple(cidrs), tuple(egress), country)


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
