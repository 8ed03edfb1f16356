"""Zeek logs: ``conn``, ``ssl``, ``http``, ``dns`` and ``quic``, TSV or JSON, one file or a
directory of one day's logs; and :class:`FlowJoin`, the join both Zeek and Suricata use.

TSV. The header (``#separator`` with its ``\\xNN`` escape, ``#set_separator``,
``#empty_field``, ``#unset_field``, ``#path``, ``#fields``, ``#types``) is read whenever it
appears (concatenated logs re-declare it); the columns are indexed once per header and every
data line is one ``bytes.split`` on the separator. ``-`` is unset, ``(empty)`` an empty
set. Any other line starting with ``#`` (for instance the ``### BTest`` line of Zeek's
test baselines) is reported as malformed, as is a data line before ``#fields``, one with
the wrong number of fields, or one whose ``ts`` is not a number (masked ``XXXXXXXXXX.XXXXXX``).

JSON (``LogAscii::use_json``). One object per line; ``ts`` an epoch number or an ISO 8601
string (``LogAscii::json_timestamps``). Both forms may be mixed in one file (a line starting
with ``{`` is JSON). Field names may be Zeek's (``id.orig_h``), flattened with ``_``
(``id_orig_h``) or renamed by ``Log::default_field_name_map`` to ``src``/``src_port``/
``dst``/``dst_port``.

Which log a record belongs to: ``#path`` (TSV) or ``_path`` (JSON), else the file name
(``ssl.log``, ``ssl.00:00:00-01:00:00.log.gz``, ``x__http.log.json``), else its fields.
Other logs (``files``, ``x509``, ``weird``, …) are counted as skipped.

Joins (:class:`FlowJoin`). ``ssl``/``quic`` give one observation per connection (uid),
``http`` one per request; the connection's ``conn`` record then supplies bytes, packets,
duration and the start time. ``dns`` answers feed a :class:`~monitor.collectors.dns.DnsMap`
that names ``conn`` records no other log named (``host_source`` ``dns``), as the capture
collector does; failing that the catalogue's published ranges name them (``ip``). Zeek
writes ``conn`` when a connection ends, after the records that name it, so a single stream
joins as it is read; a directory is read in an order that keeps that true (below).
"""

from __future__ import annotations

import json
import re
import socket
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from monitor.collectors.base import (
    CollectOptions,
    Collector,
    Diagnostics,
    FormatSpec,
    HostFilter,
    InputError,
    ParseInput,
    iter_batches,
    open_input,
)
from monitor.collectors.dns import TYPE_A, TYPE_AAAA, TYPE_CNAME, DnsAnswer, DnsMap, DnsMessage
from monitor.collectors.fields import host_keeper, memoised, record_keeper
from monitor.collectors.sniff import zeek_tsv_head as sniff_tsv
from monitor.ids import record_id
from monitor.observation import (
    Observation,
    bounded,
    canonical_ip,
    http_status,
    split_host_port,
)

__all__ = [
    "ZeekCollector",
    "FlowJoin",
    "FlowStats",
    "Head",
    "IpCache",
    "JoinCollector",
    "collect_directory",
    "directory_files",
    "http_observation",
    "http_target",
    "iso_ts",
    "sniff_tsv",
    "sniff_json",
    "tls_observation",
]

FORMAT_TSV = "zeek"
FORMAT_JSON = "zeek-json"
LOG_TYPES = ("conn", "ssl", "http", "dns", "quic")

#: the counters of a ``conn`` record, in :class:`FlowStats`' order
_CONN_COUNTS = ("orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts")
#: connections whose naming records wait for their conn/flow record, at most
MAX_PENDING = 1 << 18
#: connections remembered as already reported or filtered out, at most
MAX_DONE = 1 << 20
DNS_PORTS = frozenset({53, 5353})

_MISSING = object()
_ISO_TAIL = re.compile(r"(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?$")
_NAME_HINT = re.compile(r"(?:^|[._-])(conn|ssl|http|dns|quic)(?=[._-]|$)")

# canonical name -> accepted field names (Zeek's, flattened, Log::default_field_name_map)
_ALIASES: dict[str, tuple[str, ...]] = {
    "orig_h": ("id.orig_h", "id_orig_h", "src", "orig_h"),
    "orig_p": ("id.orig_p", "id_orig_p", "src_port", "orig_p"),
    "resp_h": ("id.resp_h", "id_resp_h", "dst", "resp_h"),
    "resp_p": ("id.resp_p", "id_resp_p", "dst_port", "resp_p"),
}
_COMMON = ("ts", "uid", "orig_h", "orig_p", "resp_h", "resp_p")
#: fields read from each log (canonical names)
_WANTED: dict[str, tuple[str, ...]] = {
    "ssl": (*_COMMON, "server_name", "ja4"),  # ja4: FoxIO's JA4 package for Zeek
    "quic": (*_COMMON, "server_name", "ja4"),
    "http": (
        *_COMMON,
        "method",
        "host",
        "uri",
        "status_code",
        "request_body_len",
        "response_body_len",
        "user_agent",
    ),
    "dns": ("ts", "query", "answers", "TTLs"),
    "conn": (
        *_COMMON,
        "proto",
        "service",
        "duration",
        "orig_bytes",
        "resp_bytes",
        "orig_pkts",
        "resp_pkts",
    ),
}
# fields that tell a log by its columns when neither #path/_path nor the file name does
_SIGNS = (
    ("quic", ("client_initial_dcid", "client_protocol", "server_scid")),
    ("dns", ("query", "answers", "qtype_name", "trans_id")),
    ("ssl", ("server_name", "ssl_history", "cipher", "established", "resumed")),
    ("http", ("trans_depth", "method", "uri", "status_code", "user_agent")),
    ("conn", ("conn_state", "orig_bytes", "resp_bytes", "orig_pkts", "history")),
)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


# ----------------------------------------------------------------------------- time


@lru_cache(maxsize=4096)
def _iso_second(prefix: str) -> float | None:
    try:
        return datetime.strptime(prefix, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def iso_ts(text: Any) -> float | None:
    """Epoch seconds from ``2026-11-27T10:00:00.123456Z`` / ``…+0000`` / ``…+01:00``
    (memoised per second); ``None`` when it is not one."""
    if type(text) is not str or len(text) < 19:
        return None
    prefix = text[:19]
    if len(text) == 31 and text[19] == "." and text[26:] == "+0000":  # Suricata's form
        base = _iso_second(prefix)
        frac = text[20:26]
        if base is not None and frac.isdigit():
            return base + int(frac) / 1e6
        return None
    if prefix[10] == " ":
        prefix = prefix[:10] + "T" + prefix[11:]
    base = _iso_second(prefix)
    if base is None:
        return None
    m = _ISO_TAIL.match(text, 19)
    if m is None:
        return None
    frac, zone = m.groups()
    ts = base + (int(frac) / 10 ** len(frac) if frac else 0.0)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "+" else 1
        hh, mm = int(zone[1:3]), int(zone[-2:])
        ts += sign * (hh * 3600 + mm * 60)
    return ts


def _ts(v: Any) -> float | None:
    """Zeek ``ts``: epoch number (TSV bytes/str, JSON number) or ISO string."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        t = float(v)
    elif isinstance(v, str):
        if v[:4].isdigit() and v[4:5] == "-":
            return iso_ts(v)
        try:
            t = float(v)
        except ValueError:
            return None
    else:
        return None
    return t if 0 <= t < 1e11 else None  # also rejects nan/inf


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 0 else None
    if isinstance(v, str) and v.isdigit() and len(v) < 20:
        return int(v)
    if isinstance(v, float) and v.is_integer() and v >= 0:
        return int(v)
    return None


def _float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None
    else:
        return None
    return f if 0 <= f < 1e11 else None


def _port(v: Any) -> int | None:
    p = _int(v)
    return p if p is not None and p < 65536 else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


class IpCache:
    """``canonical_ip`` memoised per text (bounded), with a fast path for the dotted quads
    that make up most of a log: the standard library's parser costs ~8 µs a call."""

    __slots__ = ("_d",)

    def __init__(self) -> None:
        self._d: dict[str, str | None] = {}

    def __call__(self, text: Any) -> str | None:
        if type(text) is not str:
            return None
        d = self._d
        v = d.get(text, _MISSING)
        if v is _MISSING:
            v = _fast_v4(text)
            if v is None:
                v = canonical_ip(text) if text else None
            if len(d) > 65536:
                d.clear()
            d[text] = v
        return v  # type: ignore[return-value]


def _fast_v4(text: str) -> str | None:
    parts = text.split(".")
    if len(parts) != 4:
        return None
    for q in parts:
        if not (q.isdigit() and q.isascii() and len(q) <= 3) or (q[0] == "0" and len(q) > 1):
            return None
        if int(q) > 255:
            return None
    return text


# ----------------------------------------------------------------------------- HTTP


def http_target(
    method: str | None, host: str | None, uri: str | None, port: int | None
) -> tuple[str | None, int | None, str | None, str | None]:
    """(dest_host, dest_port, url, host_source) of one logged HTTP request, as the capture
    collector names requests: ``CONNECT host:port`` (``connect``), an absolute-form URI
    (``url``), else the Host header (``http_host``; ``url`` is then ``http://host/path``)."""
    target = uri or ""
    if method == "CONNECT":
        h, cport = split_host_port(target.split(" ", 1)[0])
        if h and cport and "/" not in h:
            return h, cport, None, "connect"
    elif "://" in target[:12]:
        auth = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
        h, uport = split_host_port(auth)
        if h:
            if uport is None:
                low = target[:6].lower()
                uport = 443 if low == "https:" else 80 if low.startswith("http:") else port
            return h, uport, target, "url"
        return None, port, target, None
    h = None
    if host:
        h, _hp = split_host_port(host)
        if h and (" " in h or "/" in h):
            h = None
    if h and target.startswith("/"):
        return h, port, f"http://{host}{target}", "http_host"
    return h, port, target or None, "http_host" if h else None


# ----------------------------------------------------------------------------- the join


class Head(NamedTuple):
    """What every observation made of one Zeek / Suricata record starts with: when, where it
    was read, and the two ends of its connection. The first six fields are
    :class:`~monitor.observation.Observation`'s first six (``Observation(*head[:6], ...)``)."""

    ts: float
    source: str
    lineno: int
    fmt: str
    client: str | None
    cport: int | None
    server: str | None
    sport: int | None


@dataclass(slots=True)
class FlowStats:
    """What a ``conn`` / ``flow`` record adds to the observations of its connection."""

    head: Head
    ts_end: float | None
    duration: float | None
    bytes_out: int | None
    bytes_in: int | None
    packets_out: int | None
    packets_in: int | None

    def observation(self, record_id: str) -> Observation:
        """The connection reported on its own (no record named it; the join names it)."""
        head = self.head
        return Observation(
            *head[:6],
            dest_port=head.sport,
            dest_ip=head.server,
            bytes_out=self.bytes_out,
            bytes_in=self.bytes_in,
            duration=self.duration,
            ts_end=self.ts_end,
            packets_out=self.packets_out,
            packets_in=self.packets_in,
            record_id=record_id,
        )


# ----------------------------------------------------------------------------- records
# What Zeek's ssl/quic/http logs and Suricata's tls/quic/http events become, before the join.


_JA4_RE = re.compile(r"[tqd][0-9s]{2}[di]\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}\Z")


def ja4_value(v: Any) -> str | None:
    """A JA4 fingerprint as a log gives it (Zeek's JA4 package, Suricata's ``ja4``), None
    when the value is not one."""
    return v if type(v) is str and _JA4_RE.match(v) else None


def tls_observation(head: Head, sni: str | None, record_id: str) -> Observation:
    """One TLS/QUIC connection named by its server name (``sni``, a ``:port`` dropped; a
    value with a space or ``/`` in it is no host name)."""
    host, _p = split_host_port(sni) if sni else (None, None)
    if host and (" " in host or "/" in host):
        host = None
    return Observation(
        *head[:6],
        dest_host=host,
        dest_port=head.sport,
        dest_ip=head.server,
        host_source="sni" if host else None,
        record_id=record_id,
    )


def http_observation(
    head: Head,
    method: str | None,
    target: tuple[str | None, int | None, str | None, str | None],
    status: int | None,
    bytes_out: int | None,
    bytes_in: int | None,
    record_id: str,
) -> Observation:
    """One logged HTTP request; ``target`` is what :func:`http_target` made of it (the
    server's address is not the destination of a ``CONNECT``)."""
    dest, port, url, hsrc = target
    return Observation(
        *head[:6],
        None,
        method,
        dest,
        port,
        None if hsrc == "connect" else head.server,
        url,
        status,
        bytes_out,
        bytes_in,
        hsrc,
        record_id=record_id,
    )


class _Conn:
    __slots__ = ("tls", "http")

    def __init__(self) -> None:
        self.tls: Observation | None = None
        self.http: list[Observation] = []


class FlowJoin:
    """Joins naming records (TLS/QUIC server names, HTTP requests) with the record that ends
    their connection (Zeek ``conn``, Suricata ``flow``), keyed by uid / flow_id.

    * :meth:`named` keeps an observation until its connection ends (at most
      ``max_pending`` connections; beyond that the oldest is reported without the
      connection's counters, and counted);
    * :meth:`flow` completes and reports them, or reports the connection itself when no
      record named it (named from DNS answers, else the catalogue's ranges);
    * :meth:`finish` reports what never saw its connection end.

    Observations land in :attr:`ready`. A host the ``host_filter`` rejects is dropped
    as soon as it is known, and its key remembered (bounded) so that the end of its
    connection is not reported on its own.
    """

    def __init__(
        self,
        catalog: Any = None,
        host_filter: HostFilter | None = None,
        dns: DnsMap | None = None,
        max_pending: int = MAX_PENDING,
        max_done: int = MAX_DONE,
    ):
        self.catalog = catalog
        self.host_filter = host_filter
        self.dns = dns if dns is not None else DnsMap()
        self.max_pending = max_pending
        self.max_done = max_done
        self.pending: dict[Hashable, _Conn] = {}
        self.done: dict[Hashable, None] = {}
        self.ready: list[Observation] = []
        self.stats: Counter[str] = Counter()
        #: host name -> kept by ``host_filter`` (memoised); None (not known) is kept
        self.keep = host_keeper(host_filter, 65536)
        #: a record naming a host ``keep`` rejects is kept all the same when its server is
        #: in a provider's published ingress ranges (fronted), or a request is LLM-shaped
        self.wanted = record_keeper(host_filter, 65536)
        self._packed: dict[str, bytes | None] = {}
        self._in_ranges = memoised(self._catalog_ip, 65536) if catalog is not None else None

    # -- DNS ------------------------------------------------------------------------------

    def learn(self, name: str | None, answers: Iterable[tuple[str | None, str, str]], ts: float):
        """Learn from one DNS response: ``answers`` are (owner or None for ``name``, type
        "A"/"AAAA"/"CNAME", value). A CNAME chain is walked back to the name asked for."""
        out: list[DnsAnswer] = []
        for owner, rtype, value in answers:
            owner = (owner or name or "").lower().rstrip(".")
            if not owner or not isinstance(value, str):
                continue
            if rtype == "CNAME":
                out.append(DnsAnswer(owner, TYPE_CNAME, 0, value.lower().rstrip(".")))
            elif rtype in ("A", "AAAA"):
                packed = self._pack(value)
                if packed is not None:
                    t = TYPE_A if len(packed) == 4 else TYPE_AAAA
                    out.append(DnsAnswer(owner, t, 0, value, packed))
        if out:
            self.dns.add(DnsMessage(0, True, 0, answers=out), ts)

    def _pack(self, ip: str) -> bytes | None:
        v = self._packed.get(ip, _MISSING)
        if v is _MISSING:
            v = None
            for fam in (socket.AF_INET, socket.AF_INET6):
                try:
                    v = socket.inet_pton(fam, ip)
                    break
                except (OSError, ValueError):
                    continue
            if len(self._packed) > 65536:
                self._packed.clear()
            self._packed[ip] = v
        return v  # type: ignore[return-value]

    def name_of(self, ip: str | None, ts: float) -> tuple[str | None, str | None]:
        """(name, host_source) of a server address: DNS answer before ``ts``, else the
        catalogue's published ranges (the address itself)."""
        if not ip:
            return None, None
        packed = self._pack(ip)
        if packed is not None:
            name = self.dns.lookup(packed, ts)
            if name:
                return name, "dns"
        if self._in_ranges is not None and self._in_ranges(ip):
            return ip, "ip"
        return None, None

    def _catalog_ip(self, ip: str) -> str | None:
        return ip if self.catalog.match_ip(ip) is not None else None

    # -- joins ----------------------------------------------------------------------------

    def _mark_done(self, key: Hashable) -> None:
        done = self.done
        done[key] = None
        if len(done) > self.max_done:
            drop = self.max_done >> 2
            for k in list(done)[:drop]:
                del done[k]
            self.stats["done_dropped"] += drop

    def named(self, key: Hashable, obs: Observation, tls: bool) -> None:
        """A TLS/QUIC server name (``tls``: one per connection) or an HTTP request."""
        p = self.pending.get(key)
        if tls and p is not None and p.tls is not None:  # ssl.log and quic.log, same uid
            first = p.tls
            if first.dest_host is None and obs.dest_host is not None:
                if not self.wanted(obs.dest_host, first.dest_ip or obs.dest_ip):
                    del self.pending[key]
                    self._mark_done(key)
                    return
                first.dest_host, first.host_source = obs.dest_host, obs.host_source
            return
        if tls and key in self.done:
            return
        if obs.dest_host is not None and not (
            self.wanted(obs.dest_host, obs.dest_ip, None, None, obs.ja4)
            if tls
            else self.wanted(obs.dest_host, obs.dest_ip, obs.url, obs.user_agent)
        ):
            self._mark_done(key)
            return
        if p is None:
            p = self.pending[key] = _Conn()
            if len(self.pending) > self.max_pending:
                old = next(iter(self.pending))
                self._emit(self.pending.pop(old), None)
                self._mark_done(old)
                self.stats["early"] += 1
        if tls:
            p.tls = obs
        else:
            p.http.append(obs)

    def flow(self, key: Hashable, st: FlowStats, alone: bool, raw: bytes) -> None:
        """The end of a connection: complete its pending observations, or report it on its
        own when ``alone`` (TCP or UDP, not DNS), its id made from its record ``raw``."""
        p = self.pending.pop(key, None)
        was_done = self.done.pop(key, _MISSING) is not _MISSING
        if p is not None:
            self._emit(p, st)
            return
        if was_done or not alone:
            return
        obs = st.observation(record_id(raw))
        host, src = self.name_of(obs.dest_ip, obs.ts)
        if not self.keep(host):
            return
        obs.dest_host, obs.host_source = host, src
        self.ready.append(obs)

    def _emit(self, p: _Conn, st: FlowStats | None) -> None:
        tls = p.tls
        if st is not None:
            target = tls if tls is not None else p.http[0] if len(p.http) == 1 else None
            if target is not None:
                target.ts_end = st.ts_end
                if tls is not None:
                    target.ts = st.head.ts
                    target.duration = st.duration
                elif st.ts_end is not None:  # from the request to the connection's end
                    target.duration = max(st.ts_end - target.ts, 0.0)
                target.bytes_out, target.bytes_in = st.bytes_out, st.bytes_in
                target.packets_out, target.packets_in = st.packets_out, st.packets_in
            head = st.head
            for o in (tls, *p.http):
                if o is None:
                    continue
                if o.client_ip is None:
                    o.client_ip, o.client_port = head.client, head.cport
                if o.dest_ip is None and o.host_source != "connect":
                    o.dest_ip = head.server
                if o.dest_port is None:
                    o.dest_port = head.sport
        for o in (tls, *p.http):
            if o is None:
                continue
            if o.dest_host is None:
                host, src = self.name_of(o.dest_ip, o.ts)
                if not self.keep(host):
                    continue
                o.dest_host, o.host_source = host, src
            self.ready.append(o)

    def finish(self) -> None:
        """End of input: connections whose end was never seen are reported as they are."""
        for p in self.pending.values():
            self._emit(p, None)
        self.stats["unjoined"] += len(self.pending)
        self.pending.clear()

    def report(self, source: str, diag: Diagnostics, what: str) -> None:
        """Tell the operator about bounds hit (``what`` names the connection records)."""
        if self.stats["early"]:
            diag.notice(
                source,
                0,
                f"join bound hit: {self.stats['early']} connections reported before their "
                f"{what} record (more than {self.max_pending} waiting)",
            )
        if self.stats["done_dropped"]:
            diag.notice(
                source,
                0,
                f"join bound hit: {self.stats['done_dropped']} filtered connections forgotten "
                f"(their {what} records may be reported on their own)",
            )
        dropped = self.dns.dropped_names + self.dns.dropped_addresses
        if dropped:
            diag.notice(source, 0, f"DNS name map bound hit: {dropped} names dropped")


# ----------------------------------------------------------------------------- Zeek


class _Header:
    """The TSV header being read, and the column layout it gives."""

    __slots__ = ("sep", "set_sep", "empty", "unset", "path", "fields", "cols", "n")

    def __init__(self) -> None:
        self.sep = b"\t"
        self.set_sep = b","
        self.empty = b"(empty)"
        self.unset = b"-"
        self.path: str | None = None
        self.fields: list[str] | None = None
        self.cols: list[tuple[str, int]] = []
        self.n = 0


def _unescape(value: bytes) -> bytes:
    r"""``\x09`` -> tab (header values)."""
    if b"\\x" not in value:
        return value
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), value)


def _path_from_fields(names: Iterable[str]) -> str | None:
    have = set(names)
    for path, signs in _SIGNS:
        if not have.isdisjoint(signs):
            return path
    return None


def _path_from_name(source: str) -> str | None:
    name = Path(source).name.lower()
    for suffix in (".gz", ".bz2", ".json", ".log"):
        name = name.removesuffix(suffix)
    hits = _NAME_HINT.findall(name)
    return hits[-1] if hits else None


def _resolve(names: Iterable[str], wanted: tuple[str, ...]) -> dict[str, str]:
    """canonical name -> field name present (first alias found)."""
    have = set(names)
    out: dict[str, str] = {}
    for c in wanted:
        for alias in _ALIASES.get(c, (c,)):
            if alias in have:
                out[c] = alias
                break
    return out


class JoinCollector(Collector):
    """What the collectors that join through :class:`FlowJoin` share (Zeek, Suricata): the
    catalogue and bound each join is built with, and the join's stats once it ended."""

    def __init__(self, catalog: Any = None, max_pending: int = MAX_PENDING):
        self.catalog = catalog
        self.max_pending = max_pending
        self.last_stats: dict[str, int] = {}
        self._ip = IpCache()

    @classmethod
    def made(cls, options: CollectOptions, catalog: Any = None) -> JoinCollector:
        """The collector of a :class:`FormatSpec`: connections are named by the catalogue's
        published IP ranges too, when given one."""
        return cls(catalog=catalog)

    def _join(self, host_filter: HostFilter | None) -> FlowJoin:
        return FlowJoin(self.catalog, host_filter, max_pending=self.max_pending)

    def _drain(
        self, join: FlowJoin, source: str, diag: Diagnostics, what: str
    ) -> Iterator[Observation]:
        """End of input: what never saw its connection end, then the bounds hit (``what``
        names the connection records) and the stats."""
        join.finish()
        yield from join.ready
        join.ready.clear()
        join.report(source, diag, what)
        self.last_stats = dict(join.stats)


class ZeekCollector(JoinCollector):
    """Zeek conn/ssl/http/dns/quic logs, TSV or JSON (auto per line)."""

    name = FORMAT_TSV

    def read(self, job: ParseInput) -> Iterator[Observation]:
        stream, source, diag, host_filter = job
        join = self._join(host_filter)
        yield from self.parse_into(join, stream, source, diag)
        yield from self._drain(join, source, diag, "conn")

    def parse_into(
        self, join: FlowJoin, stream: BinaryIO, source: str, diag: Diagnostics
    ) -> Iterator[Observation]:
        """Read one file into ``join``, yielding what is ready as it goes (directories
        share one join across files)."""
        hint = _path_from_name(source)
        h = _Header()
        ready = join.ready
        records = 0
        layouts: dict[frozenset, tuple[str | None, dict[str, str]]] = {}
        try:
            for base, lines, _clean in iter_batches(stream, source, diag):
                lineno = base
                for line in lines:
                    lineno += 1
                    if not line:
                        diag.skipped += 1
                        continue
                    c = line[:1]
                    if c == b"#":
                        self._header_line(h, line, lineno, source, diag, hint)
                        continue
                    if c == b"{":
                        row = self._json_row(line, lineno, source, diag, hint, layouts)
                        fmt = FORMAT_JSON
                        if row is None:
                            continue
                        path, r = row
                    else:
                        if h.fields is None:
                            diag.malformed_record(
                                source, lineno, "data line before the #fields header", line
                            )
                            continue
                        parts = line.split(h.sep)
                        if len(parts) != h.n:
                            diag.malformed_record(
                                source,
                                lineno,
                                f"{len(parts)} fields, the #fields header has {h.n}",
                                line,
                            )
                            continue
                        path = h.path
                        if path is None:
                            diag.skipped += 1
                            continue
                        unset, empty, set_sep = h.unset, h.empty, h.set_sep
                        r = {}
                        for name, i in h.cols:
                            v = parts[i]
                            if v == unset:
                                continue
                            if name in ("answers", "TTLs", "service"):
                                r[name] = [] if v == empty else [_text(x) for x in v.split(set_sep)]
                            else:
                                r[name] = _text(v)
                        fmt = FORMAT_TSV
                    if self._record(join, path, r, line, lineno, source, diag, fmt):
                        records += 1
                    if ready:
                        yield from ready
                        ready.clear()
        finally:
            diag.records += records

    # -- lines ----------------------------------------------------------------------------

    def _header_line(
        self, h: _Header, line: bytes, lineno: int, source: str, diag: Diagnostics, hint
    ) -> None:
        if line.startswith(b"#separator "):
            sep = _unescape(line[11:])
            if not sep:
                diag.malformed_record(source, lineno, "empty #separator", line)
                return
            h.sep = sep
            return
        key, s, value = line.partition(h.sep)
        if not s:
            key, _, value = line.partition(b" ")
        if key == b"#fields":
            names = [_text(f) for f in value.split(h.sep)]
            h.fields = names
            h.n = len(names)
            path = h.path or hint or _path_from_fields(names)
            h.path = path if path in _WANTED else None
            if h.path is None:
                h.cols = []
                return
            idx = {n: i for i, n in enumerate(names)}
            h.cols = [(c, idx[f]) for c, f in _resolve(names, _WANTED[h.path]).items()]
        elif key == b"#path":
            h.path = _text(value).strip() or None
            h.fields = None  # a new header starts
        elif key == b"#set_separator":
            h.set_sep = _unescape(value) or b","
        elif key == b"#empty_field":
            h.empty = value
        elif key == b"#unset_field":
            h.unset = value
        elif key in (b"#types", b"#open", b"#close"):
            pass
        else:
            diag.malformed_record(source, lineno, "not a Zeek header line", line)

    def _json_row(
        self, line: bytes, lineno: int, source: str, diag: Diagnostics, hint, layouts
    ) -> tuple[str, dict[str, Any]] | None:
        try:
            d = json.loads(line)
        except (ValueError, RecursionError) as exc:
            diag.malformed_record(source, lineno, f"not JSON: {exc}", line)
            return None
        if not isinstance(d, dict):
            diag.malformed_record(source, lineno, "not a JSON object", line)
            return None
        keys = frozenset(d)
        lay = layouts.get(keys)
        if lay is None:
            path = d.get("_path") if isinstance(d.get("_path"), str) else None
            path = path or hint or _path_from_fields(keys)
            lay = (path, _resolve(keys, _WANTED[path])) if path in _WANTED else (None, {})
            if len(layouts) > 4096:
                layouts.clear()
            layouts[keys] = lay
        path, names = lay
        if path is None:
            diag.skipped += 1
            return None
        return path, {c: d[f] for c, f in names.items()}

    def _record(
        self,
        join: FlowJoin,
        path: str,
        r: dict[str, Any],
        raw: bytes,
        lineno: int,
        source: str,
        diag: Diagnostics,
        fmt: str,
    ) -> bool:
        """Hand one record to the join; False when it is malformed (reported)."""
        ts = _ts(r.get("ts"))
        if ts is None:
            diag.malformed_record(source, lineno, "bad or missing ts", raw)
            return False
        if path == "dns":
            answers = [a for a in _list(r.get("answers")) if isinstance(a, str)]
            query = _str(r.get("query"))
            if query and answers:
                join.learn(query, ((None, _rtype(a), a) for a in answers), ts)
            return True
        uid = r.get("uid")
        if not isinstance(uid, str) or not uid:
            diag.malformed_record(source, lineno, "no uid", raw)
            return False
        client = self._ip(r.get("orig_h"))
        server = self._ip(r.get("resp_h"))
        cport, sport = _port(r.get("orig_p")), _port(r.get("resp_p"))
        head = Head(ts, source, lineno, fmt, client, cport, server, sport)
        if path == "conn":
            duration = _float(r.get("duration"))
            end = ts + duration if duration is not None else None
            counts = [bounded(_int(r.get(k))) for k in _CONN_COUNTS]
            st = FlowStats(head, end, duration, *counts)
            services = r.get("service")
            if isinstance(services, str):
                services = services.split(",")
            # alone: TCP/UDP only (icmp, unknown_transport: captures report TCP/UDP only),
            # not DNS (it feeds the name map, like the capture collector)
            alone = (
                _str(r.get("proto")) in ("tcp", "udp")
                and "dns" not in _list(services)
                and sport not in DNS_PORTS
            )
            join.flow(uid, st, alone, raw)
            return True
        rid = record_id(raw)
        if path in ("ssl", "quic"):
            obs = tls_observation(head, _str(r.get("server_name")), rid)
            obs.ja4 = ja4_value(r.get("ja4"))
            join.named(uid, obs, tls=True)
            return True
        # http
        method = _str(r.get("method"))
        obs = http_observation(
            head,
            method,
            http_target(method, _str(r.get("host")), _str(r.get("uri")), sport),
            http_status(_int(r.get("status_code"))),
            bounded(_int(r.get("request_body_len"))),
            bounded(_int(r.get("response_body_len"))),
            rid,
        )
        agent = _str(r.get("user_agent"))
        obs.user_agent = agent if agent != "-" else None
        join.named(uid, obs, tls=False)
        return True


def _rtype(answer: str) -> str:
    if canonical_ip(answer) is None:
        return "CNAME"
    return "AAAA" if ":" in answer else "A"


# ----------------------------------------------------------------------------- directories

_ORDER = {"dns": 0, "ssl": 1, "quic": 1, "http": 1, "conn": 2}
_LOG_NAME = re.compile(r"^(conn|ssl|http|dns|quic)(?:\.(.*?))?\.log(?:\.json)?(?:\.gz|\.bz2)?$")


def directory_files(path: str) -> list[tuple[str, str, str]]:
    """The Zeek logs of a directory as (period, log type, file), in reading order: per
    rotation period (``ssl.00:00:00-01:00:00.log.gz`` is period ``00:00:00-01:00:00``, a
    plain ``ssl.log`` the empty period, read last), dns first, then ssl/quic/http, conn last."""
    out = []
    for p in Path(path).iterdir():
        m = _LOG_NAME.match(p.name)
        if m is None or not p.is_file():
            continue
        kind, period = m.group(1), m.group(2) or ""
        out.append((period, kind, str(p)))
    out.sort(key=lambda t: (t[0] == "", t[0], _ORDER[t[1]], t[2]))
    return out


def collect_directory(
    path: str,
    catalog: Any,
    diag: Diagnostics,
    host_filter: HostFilter | None = None,
    on_read=None,
    max_pending: int = MAX_PENDING,
) -> Iterator[Observation]:
    """Every conn/ssl/http/dns/quic log of a directory (one day of Zeek's archive, or its
    ``current`` directory), joined across files; other files are ignored."""
    files = directory_files(path)
    if not files:
        raise InputError(
            f"{path}: is a directory without Zeek logs "
            f"({', '.join(t + '.log' for t in LOG_TYPES)}, rotated or .gz)"
        )
    return _collect_directory(path, files, catalog, diag, host_filter, on_read, max_pending)


def _collect_directory(path, files, catalog, diag, host_filter, on_read, max_pending):
    collector = ZeekCollector(catalog, max_pending)
    join = collector._join(host_filter)
    for _period, _kind, file in files:
        try:
            opened = open_input(file, on_read)
        except InputError as exc:
            diag.file_error(file, str(exc).removeprefix(f"{file}: "))
            continue
        try:
            yield from collector.parse_into(join, opened.stream, file, diag)
        finally:
            opened.close()
    yield from collector._drain(join, path, diag, "conn")


# ----------------------------------------------------------------------------- detection


def sniff_json(line: bytes) -> bool:
    """One line of a Zeek JSON log (not a Suricata event)."""
    return (
        line[:1] == b"{"
        and (b'"uid":"C' in line or b'"_path":"' in line or b'"id.orig_h":' in line)
        and b'"event_type"' not in line
    )


FORMAT_SPECS = [
    FormatSpec(
        FORMAT_TSV,
        "Zeek conn/ssl/http/dns/quic logs (TSV; or a directory of them)",
        ZeekCollector.made,
        sniff_head=sniff_tsv,
    ),
    FormatSpec(
        FORMAT_JSON,
        "Zeek conn/ssl/http/dns/quic logs (JSON, LogAscii::use_json)",
        ZeekCollector.made,
        sniff_line=sniff_json,
    ),
]
