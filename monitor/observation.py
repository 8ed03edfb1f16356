"""The one record shape every collector yields.

Modelled on Zeek's logs: uniform field names whatever the input format, so that the
stages after collection (identify, geolocate, evaluate, store) never look at formats.
Unknown values are ``None``; nothing is guessed.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import struct
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import lru_cache
from operator import attrgetter
from typing import Any

#: Field metadata of what is not a stored column (see :mod:`monitor.rows`).
NOT_STORED = {"stored": False}

#: The largest byte or packet count (and Squid elapsed time, in ms) one record may carry:
#: 2**48, 256 TiB. No single request or flow comes near it, and a signed 64-bit integer (what
#: SQLite stores, what Squid's own counters are) holds 32768 of them. A count beyond it (or
#: below 0) is damage or forgery, and binding it would end the scan: the collectors read it
#: as they read any other unreadable field, the Squid ones reporting the record as malformed
#: (file:line, counted; in C and Python alike), the others storing the count as unknown.
#: The bound alone cannot keep the stored totals (roll-ups, hourly, monthly, incidents,
#: findings) within 64 bits: 2**15 records at it overflow one, and a database holds many
#: more; any bound low enough to prevent that (below 2**20 for 2**43 rows) would refuse
#: ordinary transfers. So sums of counts saturate at MAX_SUM instead of ending the scan (or
#: a report): :func:`monitor.batch._add` in memory, ``_batchscan``'s in C,
#: :func:`monitor.store.saturated_sum` in SQL; below it they are exact, as before.
MAX_COUNT = 1 << 48
#: The largest value a stored sum of counts takes (SQLite's largest integer).
MAX_SUM = (1 << 63) - 1


def bounded(count: int | None) -> int | None:
    """A byte or packet count a record may carry (see MAX_COUNT), else None (unknown)."""
    return count if count is not None and 0 <= count <= MAX_COUNT else None


def http_status(status: int | None) -> int | None:
    """An HTTP status a record may carry (three digits; 0: none), else None (unknown): a
    number beyond would end the scan when bound, as a count beyond MAX_COUNT would."""
    return status if status is not None and 0 <= status <= 999 else None


#: How ``dest_host`` was learned, from most to least direct.
HOST_SOURCES = ("connect", "url", "sni", "http_host", "cert", "dns", "ip")


@dataclass(slots=True)
class Observation:
    """One request (proxy logs) or one flow (captures) seen leaving the organisation."""

    ts: float  # seconds since the epoch, UTC (start of the request or flow)
    source: str  # file the record came from ("-" for stdin)
    line: int  # 1-based line number (record number for binary inputs)
    format: str  # collector format name, e.g. "squid", "squid-common"
    client_ip: str | None = None
    client_port: int | None = None
    user: str | None = None
    method: str | None = None
    dest_host: str | None = None  # lower-case, no trailing dot, no port
    dest_port: int | None = None
    dest_ip: str | None = None
    url: str | None = None
    status: int | None = None  # HTTP status (0 or None when the proxy never got one)
    bytes_out: int | None = None  # client -> destination
    bytes_in: int | None = None  # destination -> client
    host_source: str | None = None  # one of HOST_SOURCES
    result: str | None = None  # proxy verdict as logged, e.g. "TCP_DENIED", "TCP_TUNNEL"
    duration: float | None = None  # seconds
    ts_end: float | None = None  # flows: time of the last packet
    packets_out: int | None = None  # flows: packets client -> destination
    packets_in: int | None = None  # flows: packets destination -> client
    ech: bool | None = None  # TLS: ECH offered (see ech_outer)
    ech_outer: str | None = None  # TLS with ECH: the outer (public) SNI, not the real name
    tunnel: str | None = None  # captures: encapsulations around the flow, outermost first
    tunnel_src: str | None = None  # captures: the outermost tunnel's source address
    tunnel_dst: str | None = None  # captures: the outermost tunnel's destination address
    ja4: str | None = None  # TLS/QUIC: JA4 fingerprint of the ClientHello
    user_agent: str | None = None  # HTTP User-Agent, where the log or capture shows it
    # the first bytes of an error response's body, where visible (rules read it, e.g. a
    # provider's refusal; not stored)
    response_excerpt: str | None = field(default=None, metadata=NOT_STORED)
    # public address the request left from, when the log says so (the egress point
    # resolved from it, or from the site or client, is what is stored)
    egress_ip: str | None = field(default=None, metadata=NOT_STORED)
    # where the destination processes the request (LLM observations; see monitor.residency)
    processing_region: str | None = None  # provider's region id, e.g. "aws:eu-central-1"
    processing_geo: str | None = None  # country or zone of that region, e.g. "DE", "EU"
    residency_basis: str | None = None  # hostname | config | global | unknown
    residency_caveat: str | None = None  # id of the provider's caveat (rules/residency.yaml)
    # stable identity of the raw record, for de-duplication (stored as the row's id)
    record_id: str | None = field(default=None, metadata=NOT_STORED)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with ``ts`` rendered as ISO 8601 UTC (the ``parse --json`` contract)."""
        d = dict(zip(OBSERVATION_FIELDS, _values(self), strict=True))
        d["ts"] = iso_utc(self.ts)
        return d


OBSERVATION_FIELDS = tuple(f.name for f in fields(Observation))
_values = attrgetter(*OBSERVATION_FIELDS)


@dataclass(slots=True)
class Known:
    """Records a consumer already knows, by line key. A collector that can name a record by
    a key from which every field of its Observation follows but the per-request ones
    (``ts``, ``line``, ``bytes_in``, ``duration``, ``record_id``) and the source yields
    the records of keys ``entries`` holds as runs of consecutive ones: the pair (their
    entries, a list, one per record; their per-request values and ids packed in one bytes
    object, :data:`RUN_RECORD` a record, see :func:`run_records`), taken whole with no
    object per record; and for any other record it names, the pair (Observation, key) so
    that the consumer may add the key's entry. One Known serves one source; ``values`` are
    the per-request fields the consumer wants, in its order. Only the Squid native
    collector's C pre-pass names records (kept CONNECTs); the scan's record path
    (:meth:`monitor.pipeline.Pipeline.process`) is the consumer, and its batch builder reads
    a run column by column (:class:`monitor.batch.BatchBuilder`)."""

    entries: dict[bytes, Any]
    values: tuple[str, ...]


#: A run's record as packed (``KnownRecord`` in ``monitor/collectors/_accel.h``): ts, line,
#: bytes_in, duration, :func:`monitor.ids.observation_id` of its record id, that id's bytes
RUN_RECORD = struct.Struct("=dqqdq12s4x")
#: the number of each per-request field a run's record holds (its value's place in
#: :data:`RUN_RECORD` but the ids); any other field of a known record is None (0)
KNOWN_CODES = {"ts": 1, "line": 2, "bytes_in": 3, "duration": 4}
#: a run: its entries and its packed records (see :class:`Known`)
Run = tuple[list[Any], bytes]


def known_codes(values: tuple[str, ...]) -> tuple[int, ...]:
    """The :data:`KNOWN_CODES` of per-request fields (0: None in a known record)."""
    return tuple(KNOWN_CODES.get(v, 0) for v in values)


def run_records(run: Run, codes: tuple[int, ...]) -> list[tuple[Any, tuple[Any, ...], str, int]]:
    """A run's records as (entry, values of ``codes``, record id, observation id): what the
    C batch builder reads of them (the reference, see :class:`monitor.batch.BatchBuilder`)."""
    entries, packed = run
    found = []
    for entry, (ts, line, size, duration, oid, rid) in zip(
        entries, RUN_RECORD.iter_unpack(packed), strict=True
    ):
        known = (None, ts, line, size, duration)
        found.append((entry, tuple([known[c] for c in codes]), rid.hex(), oid))
    return found


@lru_cache(maxsize=1024)
def _iso_day(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


@lru_cache(maxsize=4096)
def _iso_minute(minute: int) -> str:
    """The minute's ``strftime("%Y-%m-%dT%H:%M:")``, from its memoised day and a table of
    the minutes: incidents come in no time order, so most of their seconds are new, and
    memoised per second the misses cost most of the formatting (per minute: 40 % less)."""
    day, rest = divmod(minute, 1440)
    return _iso_day(day) + _MINUTES[rest]


#: a day's minutes (``THH:MM:``), a minute's seconds and a second's milliseconds (``.mmmZ``;
#: ``round`` of a fraction of a second makes 1000 at most, written 999)
_MINUTES = [f"T{m // 60:02d}:{m % 60:02d}:" for m in range(1440)]
_SECONDS = [f"{s:02d}" for s in range(60)]
_MILLIS = [f".{m:03d}Z" for m in range(1000)] + [".999Z"]


def iso_day(ts: float) -> str:
    """The UTC day of ``ts``, ``YYYY-MM-DD`` (as ``iso_utc(ts)[:10]``, memoised per day)."""
    return _iso_day(int(ts // 86400))


def iso_utc(ts: float | None) -> str | None:
    """ISO 8601 with millisecond precision and a ``Z`` suffix (memoised per minute: logs
    are mostly in time order; the store formats two per incident a transaction)."""
    if ts is None:
        return None
    second = math.floor(ts)
    minute, rest = divmod(second, 60)
    return _iso_minute(minute) + _SECONDS[rest] + _MILLIS[round((ts - second) * 1000)]


def iso_datetime(value: datetime) -> str:
    """:func:`iso_utc` of an aware datetime (milliseconds truncated, not rounded)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def normalise_host(host: str | None) -> str | None:
    """Lower-case, strip ``[]`` around IPv6 literals, the port and any trailing dot.

    >>> normalise_host("API.OpenAI.com.:443")
    'api.openai.com'
    >>> normalise_host("[2001:DB8::1]:443")
    '2001:db8::1'
    """
    if not host or host == "-":
        return None
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end < 0:
            return None
        return canonical_ip(h[1:end])
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    elif h.count(":") > 1:  # bare IPv6 literal
        return canonical_ip(h)
    h = h.rstrip(".")
    return h or None


_inet_pton, _AF_INET = socket.inet_pton, socket.AF_INET


def canonical_ip(text: str | None) -> str | None:
    """RFC 5952 text form for IPv6, dotted quad for IPv4; ``None`` when not an address.

    Text without a colon can only be IPv4, whose one text form :mod:`ipaddress` takes is
    the canonical one (four decimal octets, no leading zeros): exactly what ``inet_pton``
    takes, at a fortieth of the cost (collectors ask once per distinct address, and of
    every host name)."""
    if not text or text == "-":
        return None
    if ":" not in text:
        if not text[-1].isdigit():
            return None  # a host name (most of what is asked)
        try:
            _inet_pton(_AF_INET, text)
        except (OSError, ValueError):  # ValueError: a NUL, or text UTF-8 cannot encode
            return None
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def split_host_port(hostport: str) -> tuple[str | None, int | None]:
    """``host:port`` / ``[v6]:port`` / ``host`` -> (normalised host, port or None)."""
    port: int | None = None
    hp = hostport.strip()
    if hp.startswith("["):
        end = hp.find("]")
        if end > 0 and hp[end + 1 : end + 2] == ":" and hp[end + 2 :].isdigit():
            port = int(hp[end + 2 :])
    elif hp.count(":") == 1:
        head, _, tail = hp.partition(":")
        if tail.isdigit():
            port = int(tail)
        hp = head
    return normalise_host(hp), port
