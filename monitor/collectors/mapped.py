"""Custom mapping: any gateway's CSV, TSV, JSON lines or key=value log, with a user mapping.

The mapping says which field of the input is the time, the client, the host, the bytes…
It is given on the command line (``--columns 'ts=time,client=src,host=dhost'``) or as a
small TOML/YAML file (``--mapping gateway.toml``)::

    format = "csv"                 # csv | tsv | json | kv | auto (default: from the first line)
    time_format = "%d/%m/%Y %H:%M:%S"   # auto | epoch | epoch_ms | epoch_us | iso8601 | strftime
    timezone = "Europe/Paris"      # for times without an offset (default UTC)
    [fields]
    ts = "time"
    client = "src"
    host = "dhost|hostname"        # alternatives: the first one with a value wins
    bytes_out = "sentbytes"

Field references are header names (CSV/TSV, case-insensitive), keys (key=value, JSON; a
dotted path reads nested JSON objects: ``event.time``) or 1-based column numbers for a CSV
without header. Values ``""``, ``-``, ``None``, ``null``, ``N/A`` are "unknown".

The helpers at the top (time parsing, key=value splitting, URL targets) are shared with the
Zscaler and W3C collectors.
"""

from __future__ import annotations

import csv
import json
import math
from calendar import timegm
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

from monitor.collectors.base import (
    CollectOptions,
    Collector,
    FormatSpec,
    HostFilter,
    InputError,
    ParseInput,
    iter_batches,
)
from monitor.collectors.fields import memoised, record_keeper
from monitor.ids import record_id
from monitor.observation import (
    HOST_SOURCES,
    Observation,
    bounded,
    canonical_ip,
    http_status,
    split_host_port,
)

__all__ = [
    "FORMAT",
    "Mapping",
    "MappedCollector",
    "MappingError",
    "TimeParser",
    "load_mapping",
    "parse_columns",
    "parse_kv",
    "url_target",
]

FORMAT = "mapped"
_CACHE_LIMIT = 50_000
NULLS = frozenset({"", "-", "None", "none", "null", "NULL", "N/A", "n/a", "NA"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ws": 80, "wss": 443}

# --- time ------------------------------------------------------------------------------

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_MONTH_NAMES = {
    "january",
    "february",
    "march",
    "april",
    "june",
    "july",
    "august",
    "september",
    "sept",
    "october",
    "november",
    "december",
}
_DAYS = frozenset(
    {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}
    | {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
    | {"tues", "thur", "thurs"}
)
_UTC_NAMES = frozenset({"utc", "gmt", "z", "ut"})


def make_tz(name: str | None) -> tzinfo:
    """``UTC``/``GMT``, an offset (``+08:00``, ``-0500``, ``GMT+5:30``) or an IANA name."""
    if not name or name.strip().lower() in _UTC_NAMES:
        return UTC
    text = name.strip()
    low = text.lower()
    for prefix in ("utc", "gmt"):
        if low.startswith(prefix) and low[3:4] in ("+", "-"):
            text = text[3:]
            break
    off = _offset_seconds(text)
    if off is not None:
        return timezone(timedelta(seconds=off))
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(text)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError for odd names
        raise MappingError(f"unknown time zone {name!r}") from exc


def _offset_seconds(text: str) -> int | None:
    """``+08:00`` / ``-0500`` / ``+5`` -> seconds east of UTC, else None."""
    if len(text) < 2 or text[0] not in "+-":
        return None
    body = text[1:].replace(":", "")
    if not body.isdigit() or len(body) > 4:
        return None
    if len(body) <= 2:
        h, m = int(body), 0
    else:
        h, m = int(body[:-2]), int(body[-2:])
    if h > 14 or m > 59:
        return None
    sec = h * 3600 + m * 60
    return -sec if text[0] == "-" else sec


def _epoch_auto(text: str) -> float | None:
    """A number: seconds, or ms/µs/ns when it is too large for seconds."""
    try:
        v = float(text)
    except ValueError:
        return None
    if not math.isfinite(v) or v < 0:
        return None
    if v >= 1e17:
        v /= 1e9
    elif v >= 1e14:
        v /= 1e6
    elif v >= 1e11:
        v /= 1e3
    return v


def _aware_ts(dt: datetime, tz: tzinfo) -> float:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.timestamp()


def parse_words_time(text: str, tz: tzinfo = UTC) -> float | None:
    """Month-name timestamps in any common order, e.g. ``Mon Oct 16 22:55:48 2023``,
    ``Oct 02 2017 16:21:40 GMT``, ``Mon Oct 02 16:21:40 UTC 2017``, ``16 Oct 2023 10:55:48 PM``,
    ``[10/Oct/2000:13:55:36 -0700]``. None when the text is not one."""
    s = text.strip().strip("[]")
    if "/" in s and s[:1].isdigit():  # CLF: 10/Oct/2000:13:55:36 -0700
        date, colon, rest = s.partition(":")
        if colon:
            s = date.replace("/", " ") + " " + rest
    year = month = day = None
    hms: tuple[int, int, float] | None = None
    ampm = None
    offset: int | None = None
    zone: str | None = None
    for tok in s.replace(",", " ").split():
        low = tok.lower()
        if tok.isalpha():
            if low in _DAYS:
                continue
            if low[:3] in _MONTHS and (len(low) == 3 or low in _MONTH_NAMES):
                if month is not None:
                    return None
                month = _MONTHS[low[:3]]
            elif low in ("am", "pm"):
                ampm = low
            elif low in _UTC_NAMES:
                offset = 0
            elif zone is None and tok.isupper() and 2 <= len(tok) <= 5:
                zone = tok  # an abbreviation we cannot resolve (PST, CEST…)
            else:
                return None
        elif ":" in tok and tok[:1].isdigit():
            parts = tok.split(":")
            if hms is not None or not 2 <= len(parts) <= 3:
                return None
            try:
                h, m = int(parts[0]), int(parts[1])
                sec = float(parts[2]) if len(parts) == 3 else 0.0
            except ValueError:
                return None
            hms = (h, m, sec)
        elif tok.isdigit():
            if len(tok) == 4 and year is None:
                year = int(tok)
            elif len(tok) <= 2 and day is None:
                day = int(tok)
            elif len(tok) == 2 and year is None:
                year = 2000 + int(tok)
            else:
                return None
        elif tok[0] in "+-" or low.startswith(("utc+", "utc-", "gmt+", "gmt-")):
            off = _offset_seconds(tok[3:] if low[:3] in ("utc", "gmt") else tok)
            if off is None:
                return None
            offset = off
        else:
            return None
    if year is None or month is None or day is None or hms is None:
        return None
    h, m, sec = hms
    if ampm == "pm" and h < 12:
        h += 12
    elif ampm == "am" and h == 12:
        h = 0
    if not (1 <= day <= 31 and h < 24 and m < 60 and sec < 61 and 1970 <= year < 2200):
        return None
    try:
        datetime(year, month, day)
    except ValueError:
        return None
    whole = int(sec)
    base = timegm((year, month, day, h, m, whole, 0, 0, 0)) + (sec - whole)
    if offset is not None:
        return base - offset
    if zone is not None:
        return None
    if tz is UTC:
        return base
    naive = datetime(year, month, day, h, m, whole)
    return _aware_ts(naive, tz) + (sec - whole)


def parse_time_auto(text: str, tz: tzinfo = UTC) -> float | None:
    """Epoch (s/ms/µs/ns), ISO 8601, or a month-name timestamp (see parse_words_time)."""
    s = text.strip()
    if not s:
        return None
    c = s[0]
    if c.isdigit() and (s.replace(".", "", 1).isdigit()):
        return _epoch_auto(s)
    if len(s) >= 10 and s[4:5] == "-" and s[7:8] == "-" and s[:4].isdigit():
        iso = s[:-1] + "+00:00" if s[-1] in "zZ" else s
        try:
            return _aware_ts(datetime.fromisoformat(iso), tz)
        except ValueError:
            pass
    return parse_words_time(s, tz)


class TimeParser:
    """Text -> epoch seconds, memoised (logs repeat the same second many times)."""

    def __init__(self, fmt: str = "auto", tz: tzinfo = UTC):
        self.tz = tz
        self.fmt = fmt
        self.cache: dict[str, float | None] = {}
        f = fmt.lower()
        if f == "auto":
            self._parse: Callable[[str], float | None] = lambda s: parse_time_auto(s, tz)
        elif f in ("epoch", "epoch_s", "unix"):
            self._parse = lambda s: _scaled(s, 1.0)
        elif f in ("epoch_ms", "unix_ms"):
            self._parse = lambda s: _scaled(s, 1e3)
        elif f in ("epoch_us", "unix_us"):
            self._parse = lambda s: _scaled(s, 1e6)
        elif f in ("epoch_ns", "unix_ns"):
            self._parse = lambda s: _scaled(s, 1e9)
        elif f in ("iso8601", "iso"):
            self._parse = self._iso
        elif "%" in fmt:
            self._parse = self._strptime
        else:
            raise MappingError(
                f"unknown time format {fmt!r} (auto, epoch, epoch_ms, epoch_us, iso8601, "
                "or a strftime pattern such as '%d/%m/%Y %H:%M:%S')"
            )

    def _iso(self, s: str) -> float | None:
        iso = s[:-1] + "+00:00" if s[-1:] in ("z", "Z") else s
        try:
            return _aware_ts(datetime.fromisoformat(iso), self.tz)
        except ValueError:
            return None

    def _strptime(self, s: str) -> float | None:
        try:
            return _aware_ts(datetime.strptime(s, self.fmt), self.tz)
        except (ValueError, OverflowError):
            return None

    def __call__(self, text: str) -> float | None:
        v = self.cache.get(text, _MISSING)
        if v is _MISSING:
            try:
                v = self._parse(text.strip())
            except (ValueError, OverflowError, OSError):
                v = None
            if v is not None and not (0 <= v < 1e11):
                v = None
            if len(self.cache) > _CACHE_LIMIT:
                self.cache.clear()
            self.cache[text] = v
        return v  # type: ignore[return-value]


_MISSING = object()


def _scaled(s: str, divisor: float) -> float | None:
    try:
        v = float(s) / divisor
    except ValueError:
        return None
    return v if math.isfinite(v) else None


# --- field values ----------------------------------------------------------------------


def to_int(text: str | None) -> int | None:
    """Leading decimal digits (``403``, ``403 - Forbidden``, ``1300.0``), else None."""
    if text is None:
        return None
    s = text.strip()
    if s.isdigit() and s.isascii():
        return int(s) if len(s) < 20 else None
    i = 0
    while i < len(s) and "0" <= s[i] <= "9":
        i += 1
    if 0 < i < 20 and (i == len(s) or s[i] in " .-"):
        if s[i : i + 1] == "." and not s[i + 1 :].isdigit():
            return None
        return int(s[:i])
    return None


def to_port(text: str | None) -> int | None:
    v = to_int(text)
    return v if v is not None and 0 < v < 65536 else None


def to_seconds(text: str | None, unit: float) -> float | None:
    if text is None:
        return None
    try:
        v = float(text) / unit
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def url_target(url: str) -> tuple[str | None, int | None, str | None]:
    """(host, port, scheme) of an absolute URL or a scheme-less ``host/path`` (the Zscaler
    style); a URL that starts with ``/`` has no host. The port defaults by scheme."""
    i = url.find("://")
    if i > 0:
        scheme: str | None = url[:i].lower()
        rest = url[i + 3 :]
    else:
        scheme = None
        rest = url
        if rest[:1] in ("/", "*", "?", ""):
            return None, None, None
    end = len(rest)
    for sep in ("/", "?", "#"):
        j = rest.find(sep)
        if 0 <= j < end:
            end = j
    auth = rest[:end].rpartition("@")[2]
    host, port = split_host_port(auth)
    if port is not None and not 0 < port < 65536:
        port = None
    if host is not None and (" " in host or "\\" in host):
        host = None
    if port is None and scheme is not None:
        port = DEFAULT_PORTS.get(scheme)
    return host, port, scheme


_KEYS: dict[str, bool] = {}


def _valid_key(k: str) -> bool:
    """A key name: letters, digits, ``_ . -`` (memoised: logs repeat their keys)."""
    v = _KEYS.get(k)
    if v is None:
        v = bool(k) and k.replace("_", "").replace(".", "").replace("-", "").isalnum()
        if len(_KEYS) > 4096:
            _KEYS.clear()
        _KEYS[k] = v
    return v


def strip_header(text: str) -> str:
    """Drop a CEF/LEEF header (``CEF:0|vendor|product|version|id|name|severity|``) and
    anything before it, e.g. a syslog prefix."""
    i = text.find("CEF:")
    if i >= 0:
        parts = text[i:].split("|", 7)
        if len(parts) == 8:
            return parts[7]
    i = text.find("LEEF:")
    if i >= 0:
        n = 6 if text[i + 5 : i + 8] == "2.0" else 5
        parts = text[i:].split("|", n)
        if len(parts) == n + 1:
            return parts[n]
    return text


def parse_kv(text: str) -> dict[str, str]:
    """``key=value`` pairs separated by tabs, or by spaces (values may hold spaces, CEF
    style, or be quoted). Anything before the first ``key=`` (a syslog prefix) is skipped;
    a CEF or LEEF header is removed first."""
    body = strip_header(text)
    out: dict[str, str] = {}
    if "\t" in body:
        valid = _KEYS.get
        for part in body.split("\t"):
            k, eq, v = part.partition("=")
            if not eq:
                continue
            if not valid(k):
                k = k.strip()
                if not _valid_key(k):
                    # a syslog prefix before the first pair: "Oct 10 host key=value"
                    k = k.rpartition(" ")[2]
                    if not _valid_key(k):
                        continue
            if v and v[0] not in "\"' " and v[-1] != " " and "\\" not in v:
                out[k] = v
            else:
                out[k] = _unquote(v)
        return out
    key: str | None = None
    vals: list[str] = []
    in_quote = False
    for tok in body.split(" "):
        if not in_quote:
            k, eq, v = tok.partition("=")
            if eq and _valid_key(k) and not k.endswith("\\"):
                if key is not None:
                    out[key] = _unquote(" ".join(vals))
                key = k
                vals = [v]
                in_quote = v[:1] == '"' and not (len(v) > 1 and v.endswith('"'))
                continue
        if key is not None:
            vals.append(tok)
            if in_quote and tok.endswith('"'):
                in_quote = False
    if key is not None:
        out[key] = _unquote(" ".join(vals))
    return out


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        v = v[1:-1]
    if "\\" in v:
        v = v.replace("\\=", "=").replace("\\|", "|").replace("\\\\", "\\")
    return v


def text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


# --- the mapping -----------------------------------------------------------------------


class MappingError(InputError):
    """A --columns / --mapping specification that cannot be used."""


#: target names users may write -> Observation field (or pseudo-field)
TARGETS = {
    "ts": "ts",
    "time": "ts",
    "timestamp": "ts",
    "client": "client_ip",
    "client_ip": "client_ip",
    "src": "client_ip",
    "client_port": "client_port",
    "user": "user",
    "method": "method",
    "host": "dest_host",
    "dest_host": "dest_host",
    "dest": "dest_host",
    "port": "dest_port",
    "dest_port": "dest_port",
    "dest_ip": "dest_ip",
    "url": "url",
    "status": "status",
    "bytes_out": "bytes_out",
    "bytes_in": "bytes_in",
    "result": "result",
    "action": "result",
    "duration": "duration",
    "user_agent": "user_agent",
    "ua": "user_agent",
}
OPTIONS = {
    "format",
    "time_format",
    "ts_format",
    "timezone",
    "tz",
    "delimiter",
    "header",
    "duration_unit",
    "host_source",
}
_FORMATS = ("auto", "csv", "tsv", "json", "kv")
_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}  # divisors to seconds


@dataclass
class Mapping:
    fields: dict[str, list[str]]  # Observation field -> source names (alternatives)
    layout: str = "auto"  # csv | tsv | json | kv | auto
    time_format: str = "auto"
    tz: tzinfo = UTC
    delimiter: str | None = None
    header: bool | None = None  # None: no header when every reference is a column number
    duration_unit: float = 1.0  # divisor: 1000 for milliseconds
    host_source: str = "url"
    text: str = field(default="", compare=False)  # as given, for messages

    @property
    def positional(self) -> bool:
        return all(
            part.strip().isdigit()
            for refs in self.fields.values()
            for ref in refs
            for part in ref.split("+")
        )


def mapping_from_dict(d: dict[str, Any], origin: str = "mapping") -> Mapping:
    if not isinstance(d, dict):
        raise MappingError(f"{origin}: expected a table of settings")
    fields_: dict[str, list[str]] = {}
    opts: dict[str, Any] = {}
    items = list(d.items())
    sub = d.get("fields")
    if isinstance(sub, dict):
        items = [(k, v) for k, v in items if k != "fields"] + list(sub.items())
    for k, v in items:
        key = str(k).strip().lower()
        if key in OPTIONS:
            opts[key] = v
            continue
        target = TARGETS.get(key)
        if target is None:
            known = ", ".join(sorted(set(TARGETS) | OPTIONS))
            raise MappingError(f"{origin}: unknown key {k!r} (known: {known})")
        if isinstance(v, list):
            refs = [str(x).strip() for x in v]
        elif isinstance(v, int) and not isinstance(v, bool):
            refs = [str(v)]
        elif isinstance(v, str):
            refs = [x.strip() for x in v.split("|")]
        else:
            raise MappingError(f"{origin}: {k} must name a field")
        refs = [r for r in refs if r]
        if not refs:
            raise MappingError(f"{origin}: {k} names no field")
        if target in fields_:
            raise MappingError(f"{origin}: {k} given twice")
        fields_[target] = refs
    if "ts" not in fields_:
        raise MappingError(f"{origin}: the mapping needs the time field, e.g. ts=time")
    layout = str(opts.get("format", "auto")).lower()
    if layout not in _FORMATS:
        raise MappingError(f"{origin}: format must be one of {', '.join(_FORMATS)}")
    time_format = str(opts.get("time_format", opts.get("ts_format", "auto")))
    tz = make_tz(str(opts["timezone"] if "timezone" in opts else opts.get("tz", "UTC")))
    TimeParser(time_format, tz)  # validates the format
    delim = opts.get("delimiter")
    if delim is not None:
        delim = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}.get(
            str(delim), str(delim)
        )
        if len(delim) != 1:
            raise MappingError(f"{origin}: delimiter must be one character")
    header = opts.get("header")
    if header is not None and not isinstance(header, bool):
        header = str(header).lower() in ("1", "true", "yes")
    unit = str(opts.get("duration_unit", "s")).lower()
    if unit not in _UNITS:
        raise MappingError(f"{origin}: duration_unit must be one of {', '.join(_UNITS)}")
    hsrc = str(opts.get("host_source", "url"))
    if hsrc not in HOST_SOURCES:
        raise MappingError(f"{origin}: host_source must be one of {', '.join(HOST_SOURCES)}")
    m = Mapping(
        fields_,
        layout,
        time_format,
        tz,
        delim,
        header,
        _UNITS[unit],
        hsrc,
        text=origin,
    )
    if m.positional and m.layout in ("json", "kv"):
        raise MappingError(f"{origin}: column numbers only make sense for csv/tsv")
    return m


def parse_columns(spec: str) -> Mapping:
    """``ts=time,client=src,host=dhost,bytes_out=sentbytes`` (plus options such as
    ``format=json``, ``time_format=epoch_ms``, ``tz=+08:00``)."""
    d: dict[str, Any] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        k, eq, v = item.partition("=")
        if not eq:
            raise MappingError(f"--columns: {item!r} is not NAME=FIELD")
        key = k.strip().lower()
        if key in d:
            raise MappingError(f"--columns: {k.strip()} given twice")
        d[key] = v.strip()
    m = mapping_from_dict(d, "--columns")
    m.text = spec
    return m


def load_mapping(path: str) -> Mapping:
    """A TOML (``.toml``) or YAML (anything else) mapping file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise MappingError(f"{path}: {exc.strerror or exc}") from exc
    try:
        if p.suffix.lower() == ".toml":
            import tomllib  # only for a mapping file, not for the W3C collector that uses this module

            data = tomllib.loads(raw.decode("utf-8"))
        else:
            import yaml

            data = yaml.safe_load(raw)
    except Exception as exc:  # tomllib / yaml syntax errors
        raise MappingError(f"{path}: cannot read mapping: {exc}") from exc
    return mapping_from_dict(data, path)


def mapping_of(options: CollectOptions) -> Mapping:
    columns = getattr(options, "columns", None)
    path = getattr(options, "mapping", None)
    if columns and path:
        raise MappingError("give either --columns or --mapping, not both")
    if columns:
        return parse_columns(columns)
    if path:
        return load_mapping(path)
    raise MappingError("format mapped needs --columns 'ts=FIELD,…' or --mapping FILE")


# --- the collector ---------------------------------------------------------------------


def _address(s: str | None) -> str | None:
    return canonical_ip(s.strip().strip("[]")) if s is not None else None


class _Builder:
    """Raw field texts -> Observation, with per-parse caches. Shared by the layouts."""

    def __init__(self, mapping: Mapping, host_filter: HostFilter | None, fmt: str = FORMAT):
        self.m = mapping
        self.fmt = fmt
        self.time = TimeParser(mapping.time_format, mapping.tz)
        self.host_filter = host_filter
        #: a record whose host the filter rejects is kept when sent to a provider's
        #: published ingress address or LLM-shaped (URL path, User-Agent)
        self.keep = record_keeper(host_filter, _CACHE_LIMIT)
        self.ip = memoised(_address, _CACHE_LIMIT)
        self.url = memoised(url_target, _CACHE_LIMIT)

    def build(
        self, vals: dict[str, str | None], raw: bytes, source: str, lineno: int
    ) -> Observation | None | str:
        """Observation, None (rejected by the host filter) or the reason it is malformed."""
        get = vals.get
        t = get("ts")
        if t is None:
            return "no time in record"
        ts = self.time(t)
        if ts is None:
            return f"bad time {t[:40]!r}"
        method = get("method")
        if method is not None:
            method = method.strip().upper() or None
        host = port = None
        hsrc = None
        url = get("url")
        h = get("dest_host")
        if h is not None:
            host, port = split_host_port(h)
            if host is not None:
                hsrc = "connect" if method == "CONNECT" else self.m.host_source
        if url is not None:
            if method == "CONNECT" and "/" not in url:
                uh, up = split_host_port(url)
                if host is None and uh is not None:
                    host, hsrc = uh, "connect"
                port = port if port is not None else up
                url = None
            else:
                uh, up, _scheme = self.url(url)
                if host is None and uh is not None:
                    host, hsrc = uh, "url"
                if port is None and uh == host:
                    port = up
        dp = to_port(get("dest_port"))
        if dp is not None:
            port = dp
        if port is not None and not 0 < port < 65536:
            port = None
        dest_ip = self.ip(get("dest_ip"))
        agent = get("user_agent")
        if not self.keep(host, dest_ip, url, agent):
            return None
        return Observation(
            ts,
            source,
            lineno,
            self.fmt,
            client_ip=self.ip(get("client_ip")),
            client_port=to_port(get("client_port")),
            user=get("user"),
            method=method,
            dest_host=host,
            dest_port=port,
            dest_ip=dest_ip,
            url=url,
            status=http_status(to_int(get("status"))),
            bytes_out=bounded(to_int(get("bytes_out"))),
            bytes_in=bounded(to_int(get("bytes_in"))),
            host_source=hsrc,
            result=get("result"),
            duration=to_seconds(get("duration"), self.m.duration_unit),
            user_agent=agent,
            record_id=record_id(raw),
        )


def _clean(v: Any) -> str | None:
    """A JSON or text value as text, None when unknown."""
    if v is None or isinstance(v, (dict, list, bool)):
        return None
    s = v if isinstance(v, str) else str(v)
    s = s.strip()
    return None if s in NULLS else s


def _json_get(d: dict, ref: str) -> Any:
    if ref in d:
        return d[ref]
    if "." in ref:
        cur: Any = d
        for part in ref.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return None
            cur = cur[part]
        return cur
    return None


def _sniff_layout(line: bytes) -> str:
    s = line.lstrip()
    if s.startswith(b"{"):
        return "json"
    if b"CEF:" in s or b"LEEF:" in s:
        return "kv"
    tokens = s.replace(b"\t", b" ").split(b" ")
    pairs = sum(1 for t in tokens if b"=" in t[1:])
    if pairs >= 2 and pairs * 2 >= len([t for t in tokens if t]) * 0.5:
        return "kv"
    if b"\t" in s:
        return "tsv"
    return "csv"


def _sniff_delimiter(line: str) -> str:
    counts = {d: line.count(d) for d in (",", ";", "|", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


class MappedCollector(Collector):
    """Any line-oriented gateway log read through a user :class:`Mapping`."""

    name = FORMAT

    def __init__(self, mapping: Mapping):
        self.mapping = mapping
        self._alts = {
            target: [tuple(r.strip() for r in ref.split("+")) for ref in refs]
            for target, refs in mapping.fields.items()
        }

    def read(self, job: ParseInput) -> Iterator[Observation]:
        stream, source, diag, host_filter = job
        b = _Builder(self.mapping, host_filter)
        m = self.mapping
        layout = m.layout
        records = 0
        columns: dict[str, list[int]] | None = None  # target -> column indexes (csv/tsv)
        header_row: list[str] | None = None
        delim = m.delimiter
        need = 0
        try:
            for base, lines, _clean_batch in iter_batches(stream, source, diag):
                for lineno, line in enumerate(lines, base + 1):
                    if not line.strip() or line.startswith(b"#"):
                        diag.skipped += 1
                        continue
                    if layout == "auto":
                        layout = _sniff_layout(line.lstrip(b"\xef\xbb\xbf"))
                    if layout in ("json", "kv"):
                        res = self._dict_record(layout, line, lineno, source, b)
                    else:
                        if columns is None:
                            s = text(line.lstrip(b"\xef\xbb\xbf"))
                            if delim is None:
                                delim = "\t" if layout == "tsv" else _sniff_delimiter(s)
                            columns, header_row, need, problem = self._columns(s, delim)
                            if problem is not None:
                                diag.file_error(source, problem)
                                return
                            if header_row is not None:
                                diag.skipped += 1
                                continue
                        res = self._row_record(
                            line, lineno, source, b, delim, columns, need, header_row
                        )
                    if res is None:
                        records += 1
                    elif isinstance(res, str):
                        if res:
                            diag.malformed_record(source, lineno, res, line)
                        else:
                            diag.skipped += 1
                    else:
                        records += 1
                        yield res
        finally:
            diag.records += records

    def _columns(
        self, first: str, delim: str
    ) -> tuple[dict[str, list[tuple[int, ...]]], list[str] | None, int, str | None]:
        """Column indexes per target (each alternative a tuple: ``date+time`` joins two),
        the header (None without one), the columns a row needs, or a problem."""
        m = self.mapping
        want_header = m.header if m.header is not None else not m.positional
        cols: dict[str, list[tuple[int, ...]]] = {}
        if not want_header:
            if not m.positional:
                return {}, None, 0, "header = false needs column numbers in the mapping"
            for target, alts in self._alts.items():
                cols[target] = [tuple(int(r) - 1 for r in alt) for alt in alts]
            need = max((max(a) for alts in cols.values() for a in alts), default=-1) + 1
            if min((min(a) for alts in cols.values() for a in alts), default=0) < 0:
                return {}, None, 0, "column numbers start at 1"
            return cols, None, need, None
        row = _split_row(first, delim)
        if row is None:
            return {}, None, 0, "unreadable header line"
        names = [c.strip().strip('"').strip().lower() for c in row]
        index: dict[str, int] = {}
        for i, n in enumerate(names):
            index.setdefault(n, i)
        for target, alts in self._alts.items():
            found = []
            for alt in alts:
                idx = []
                for r in alt:
                    if r.isdigit() and int(r) > 0:
                        idx.append(int(r) - 1)
                    elif r.lower() in index:
                        idx.append(index[r.lower()])
                    else:
                        break
                else:
                    found.append(tuple(idx))
            if not found and target == "ts":
                shown = ", ".join(row[:40])
                ref = "|".join(m.fields["ts"])
                return {}, None, 0, f"time column {ref!r} not in header ({shown})"
            cols[target] = found
        return cols, names, 0, None

    def _row_record(
        self,
        line: bytes,
        lineno: int,
        source: str,
        b: _Builder,
        delim: str,
        cols: dict[str, list[tuple[int, ...]]],
        need: int,
        header: list[str] | None,
    ) -> Observation | None | str:
        if b"\x00" in line:
            return "NUL bytes in line"
        row = _split_row(text(line), delim)
        if row is None:
            return "unbalanced quotes"
        n = len(row)
        if header is not None:
            if n < len(header):
                return f"truncated record: {n} fields, header has {len(header)}"
            if [c.strip().lower() for c in row] == header:
                return ""  # the header again (concatenated files)
        elif n < need:
            return f"truncated record: {n} fields, mapping reads column {need}"
        vals: dict[str, str | None] = {}
        for target, alts in cols.items():
            v = None
            for alt in alts:
                if len(alt) == 1:
                    v = _clean(row[alt[0]]) if alt[0] < n else None
                else:
                    parts = [_clean(row[i]) if i < n else None for i in alt]
                    v = " ".join(parts) if None not in parts else None  # type: ignore[arg-type]
                if v is not None:
                    break
            vals[target] = v
        return b.build(vals, line, source, lineno)

    def _dict_record(
        self, layout: str, line: bytes, lineno: int, source: str, b: _Builder
    ) -> Observation | None | str:
        get: Callable[[str], str | None]
        if layout == "json":
            try:
                d = json.loads(line)
            except (ValueError, RecursionError):
                return "not a JSON object"
            if not isinstance(d, dict):
                return "not a JSON object"

            def get(r: str) -> str | None:
                return _clean(_json_get(d, r))

        else:
            if b"\x00" in line:
                return "NUL bytes in line"
            kv = parse_kv(text(line))
            if not kv:
                return "no key=value pairs"
            lower: dict[str, str] = {}

            def get(r: str) -> str | None:
                raw = kv.get(r)
                if raw is None:
                    if not lower:
                        lower.update((k.lower(), x) for k, x in kv.items())
                    raw = lower.get(r.lower())
                return _clean(raw)

        vals: dict[str, str | None] = {}
        for target, alts in self._alts.items():
            v = None
            for alt in alts:
                if len(alt) == 1:
                    v = get(alt[0])
                else:
                    parts = [get(r) for r in alt]
                    v = " ".join(parts) if None not in parts else None  # type: ignore[arg-type]
                if v is not None:
                    break
            vals[target] = v
        return b.build(vals, line, source, lineno)


def _split_row(s: str, delim: str) -> list[str] | None:
    if '"' not in s:
        return s.split(delim)
    try:
        rows = list(csv.reader([s], delimiter=delim, strict=True))
    except csv.Error:
        return None
    return rows[0] if rows else []


def _make(options: CollectOptions, catalog: Any = None) -> MappedCollector:
    return MappedCollector(mapping_of(options))


FORMAT_SPECS = [
    FormatSpec(
        FORMAT,
        "Any CSV/TSV/JSON-lines/key=value gateway log, with --columns or --mapping",
        _make,
    )
]
