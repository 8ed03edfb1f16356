"""Squid access logs: native ``squid`` format, ``common``, ``combined`` and custom logformats.

Native lines (``logformat squid``) are read with ``bytes.split()`` and a handful of small
per-parse caches (client address, result/status, peer, CONNECT target, URL authority), no
regular expression; with a scan's host filter, the C pre-pass (``_squidscan.c``) drops the
lines the filter rejects and makes the Observations of kept CONNECTs whose values those
caches already hold. ``common``, ``combined`` and any ``logformat`` string given by the
user are compiled by :mod:`monitor.collectors.squid_logformat` into one regular expression.

Text fields (user names, URLs, headers) are data: they are decoded as UTF-8 with
``errors="backslashreplace"``, so undecodable bytes survive as ``\\xNN`` and nothing raises.

Glued records. Squid writes the log through a buffer; after a crash, a full disk or a
rotation race, a record can lose its end and its newline, and the next record continues
on the same line (sometimes after a run of NUL bytes). When a line does not parse as one
record, the collector looks for where another record starts inside it (native: an
``epoch.mmm`` timestamp followed by the elapsed time; common/combined: a client address
followed by ``[dd/Mon/yyyy:``). The line is then reported as malformed, *and* every piece
of it that parses as a complete record is still yielded (with the line number of the
physical line). A record whose own end was cut off is lost.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from functools import cache, wraps
from itertools import chain
from typing import Any

from monitor import accel
from monitor.collectors import base as _base
from monitor.collectors.base import (
    Chunk,
    CollectOptions,
    Diagnostics,
    FormatSpec,
    HostFilter,
    InputError,
    ingress_of,
    iter_chunks,
    lines_of,
    requests_of,
)
from monitor.collectors.squid_logformat import (
    BUILTIN,
    CompiledLogformat,
    LogformatError,
    compile_logformat,
)
from monitor.ids import observation_id, record_id
from monitor.observation import (
    KNOWN_CODES,
    MAX_COUNT,
    Known,
    Observation,
    canonical_ip,
    http_status,
    known_codes,
    split_host_port,
)

__all__ = ["SquidCollector", "sniff", "LogformatError"]

FORMAT_NATIVE = "squid"
FORMAT_COMMON = "squid-common"
FORMAT_COMBINED = "squid-combined"
FORMAT_CUSTOM = "squid-custom"

_VARIANTS = {
    "auto": "auto",
    "squid": FORMAT_NATIVE,
    "native": FORMAT_NATIVE,
    "common": FORMAT_COMMON,
    "squid-common": FORMAT_COMMON,
    "combined": FORMAT_COMBINED,
    "squid-combined": FORMAT_COMBINED,
    "custom": FORMAT_CUSTOM,
    "squid-custom": FORMAT_CUSTOM,
}
#: Non-empty lines looked at to decide the variant of a file.
SNIFF_LINES = 10
_CACHE_LIMIT = 50_000
_MISSING = object()
_DEFAULT_PORTS = {b"http": 80, b"https": 443, b"ftp": 21, b"ws": 80, b"wss": 443}
#: Hierarchy codes whose peer address is the origin server itself (not a parent proxy).
_DIRECT_HIER = frozenset(
    {
        "DIRECT",
        "CLOSEST_DIRECT",
        "NO_CACHE_DIGEST_DIRECT",
        "ORIGINAL_DST",
        "SOURCE_FASTEST",
        "PINNED",
    }
)

# Where a second record starts inside a line (see the module docstring).
_NATIVE_START = re.compile(rb"\d{10}\.\d{3} +-?\d+ ")
_CLF_START = re.compile(
    rb"(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+) \S+ \S+ \[\d{2}/[A-Za-z]{3}/\d{4}:"
)
_SNIFF_CLF = re.compile(rb'^\S+ \S+ \S+ \[[^\]]{10,40}\] "[^"]*" -?\d+ (?:-|\d+)( "|\s+\S+:\S+)')

_COMPILED_BUILTIN: dict[str, CompiledLogformat] = {}
#: how many digits MAX_COUNT has
_COUNT_DIGITS = len(str(MAX_COUNT))

#: Observation is built positionally up to ``duration`` (measurably faster on the hot
#: path); tests/test_squid.py checks this order against OBSERVATION_FIELDS.
POSITIONAL_FIELDS = (
    "ts",
    "source",
    "line",
    "format",
    "client_ip",
    "client_port",
    "user",
    "method",
    "dest_host",
    "dest_port",
    "dest_ip",
    "url",
    "status",
    "bytes_out",
    "bytes_in",
    "host_source",
    "result",
    "duration",
)


def _builtin(name: str) -> CompiledLogformat:
    c = _COMPILED_BUILTIN.get(name)
    if c is None:
        c = _COMPILED_BUILTIN[name] = compile_logformat(BUILTIN[name], any_protocol=True)
    return c


def _is_native_ts(tok: bytes) -> bool:
    sec, dot, frac = tok.partition(b".")
    return bool(dot) and sec.isdigit() and frac.isdigit()


def sniff(line: bytes) -> str | None:
    """Which Squid variant one line looks like: "squid", "squid-common", "squid-combined"."""
    parts = line.split()
    if (
        len(parts) >= 10
        and _is_native_ts(parts[0])
        and parts[1].lstrip(b"-").isdigit()
        and b"/" in parts[3]
        and parts[3].rpartition(b"/")[2].isdigit()
        and (parts[4].isdigit() or parts[4] == b"-")
    ):
        return FORMAT_NATIVE
    m = _SNIFF_CLF.match(line)
    if m is not None:
        return FORMAT_COMBINED if m.group(1) == b' "' else FORMAT_COMMON
    return None


def _numbered(
    chunks: Iterable[Chunk], source: str, diag: Diagnostics
) -> Iterator[tuple[int, bytes]]:
    for base, chunk, clean in chunks:
        for first, lines, _clean in lines_of(base, chunk, clean, source, diag):
            yield from enumerate(lines, first + 1)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


class _Targets:
    """Per-parse caches turning raw tokens into normalised values."""

    __slots__ = (
        "connect",
        "authority",
        "ips",
        "hier",
        "codes",
        "words",
        "filter",
        "rejects",
        "connects",
        "host_filter",
        "requests",
        "markers",
        "marker_search",
        "ingress",
        "fronts",
        "verdicts",
    )

    def __init__(self, host_filter: HostFilter | None = None) -> None:
        self.host_filter = host_filter
        self.requests = requests_of(host_filter)
        #: whether an address is in a provider's published ingress ranges (fronted traffic)
        self.ingress = ingress_of(host_filter)
        #: byte strings one of which an LLM-shaped URL holds (a cheap test before the filter)
        self.markers: tuple[bytes, ...] = tuple(getattr(host_filter, "markers", ()))
        #: the same test in one pass over the URL: a line's path is checked against all markers
        self.marker_search = (
            re.compile(b"|".join(re.escape(m) for m in self.markers)).search
            if self.markers
            else None
        )
        self.connect: dict[bytes, tuple[str | None, int | None]] = {}
        self.authority: dict[bytes, tuple[str | None, int | None]] = {}
        self.ips: dict[bytes, str | None] = {}
        self.hier: dict[bytes, str | None] = {}
        self.codes: dict[bytes, tuple[str, int | None] | None] = {}
        self.words: dict[bytes, str] = {}
        self.filter: dict[str, bool] = {}
        #: URL target (``scheme://authority``, or as logged) -> rejected by the host filter
        self.rejects: dict[bytes, bool] = {}
        #: the same for CONNECT targets: one text may be both and read differently as each
        self.connects: dict[bytes, bool] = {}
        self.fronts: dict[bytes, bool] = {}  # %Sh/%<a field -> origin in the ingress ranges
        #: the C pre-pass's copy of ``rejects`` and ``connects`` (a ``_squidscan.Verdicts``)
        self.verdicts: Any = None

    def rejects_target(self, connect: bool, target: bytes) -> bool:
        """Whether the host filter rejects the host of a CONNECT target or of a URL's
        ``scheme://authority`` (memoised per distinct target)."""
        host = self.target("CONNECT" if connect else "GET", target)[0]
        v = host is not None and not self.keep(host)
        verdicts = self.connects if connect else self.rejects
        if len(verdicts) > _CACHE_LIMIT:
            verdicts.clear()
            if self.verdicts is not None:
                self.verdicts.clear()  # it holds no verdict that its dicts do not
        verdicts[target] = v
        return v

    def wanted(self, url: bytes | None, user_agent: bytes | None = None) -> bool:
        """A request to a host the filter rejected is kept when its URL path or User-Agent
        is an LLM API's (``requests`` of the host filter)."""
        if self.requests is None:
            return False
        if user_agent is None and (
            url is None or self.marker_search is None or self.marker_search(url) is None
        ):
            return False
        return self.requests(
            _text(url) if url is not None else None,
            _text(user_agent) if user_agent is not None else None,
        )

    def fronted(self, tok: bytes) -> bool:
        """Whether a ``%Sh/%<a`` field names an origin server inside a provider's published
        ingress ranges: the record is kept whatever its host (fronted traffic)."""
        v = self.fronts.get(tok)
        if v is None:
            if len(self.fronts) > _CACHE_LIMIT:
                self.fronts.clear()
            v = self.fronts[tok] = self.fronted_ip(self.peer(tok))
        return v

    def fronted_ip(self, ip: str | None) -> bool:
        """Whether an origin address is inside a provider's published ingress ranges."""
        return ip is not None and self.ingress is not None and bool(self.ingress(ip))

    def keep(self, host: str | None) -> bool:
        """The host filter's verdict, asked once per host (records without a host are kept)."""
        if self.host_filter is None or host is None:
            return True
        v = self.filter.get(host)
        if v is None:
            v = self.filter[host] = bool(self.host_filter(host))
        return v

    def ip(self, tok: bytes) -> str | None:
        v = self.ips.get(tok, _MISSING)
        if v is _MISSING:
            if len(self.ips) > _CACHE_LIMIT:
                self.ips.clear()
            v = self.ips[tok] = canonical_ip(_text(tok))
        return v  # type: ignore[return-value]

    def word(self, tok: bytes) -> str:
        v = self.words.get(tok)
        if v is None:
            if len(self.words) > _CACHE_LIMIT:
                self.words.clear()
            v = self.words[tok] = _text(tok)
        return v

    def code_status(self, tok: bytes) -> tuple[str, int | None] | None:
        """``TCP_MISS/200`` -> ("TCP_MISS", 200); None when it is not one."""
        v = self.codes.get(tok, _MISSING)
        if v is _MISSING:
            code, slash, status = tok.rpartition(b"/")
            if (
                slash
                and code[:1].isalpha()
                and code.isascii()
                and status.isdigit()
                # an HTTP status by value, 0200 too (a number beyond 999: the scan's end)
                and len(status.lstrip(b"0")) <= 3
            ):
                v = (code.decode("ascii"), int(status))
            else:
                v = None
            if len(self.codes) > _CACHE_LIMIT:
                self.codes.clear()
            self.codes[tok] = v
        return v  # type: ignore[return-value]

    def peer(self, tok: bytes) -> str | None:
        """``HIER_DIRECT/1.2.3.4`` -> "1.2.3.4"; parents, ``HIER_NONE/-`` -> None."""
        v = self.hier.get(tok, _MISSING)
        if v is _MISSING:
            hier, _, peer = tok.partition(b"/")
            v = self.direct_ip(hier, peer)
            if len(self.hier) > _CACHE_LIMIT:
                self.hier.clear()
            self.hier[tok] = v
        return v  # type: ignore[return-value]

    def direct_ip(self, hier: bytes | None, peer: bytes | None) -> str | None:
        """The peer address when it is the origin server (``hier`` None: not logged)."""
        if not peer or peer == b"-":
            return None
        h = (hier or b"").decode("ascii", "replace").upper()
        if h.startswith("TIMEOUT_"):
            h = h[8:]
        if h.startswith("HIER_"):
            h = h[5:]
        if hier is not None and h not in _DIRECT_HIER:
            return None
        return canonical_ip(_text(peer).strip("[]"))

    def target(
        self, method: str | None, ru: bytes
    ) -> tuple[str | None, int | None, bytes | None, str | None]:
        """(dest_host, dest_port, url, host_source) from the request URL. The URL stays bytes:
        most records are dropped by the host filter, so callers decode only what they keep."""
        if ru == b"-":
            return None, None, None, None
        if method == "CONNECT" or (b"://" not in ru and ru[:1] not in (b"/", b"*")):
            hp = self.connect.get(ru)
            if hp is None:
                if len(self.connect) > _CACHE_LIMIT:
                    self.connect.clear()
                hp = self.connect[ru] = _host_port(_text(ru))
            if method == "CONNECT":
                return hp[0], hp[1], None, "connect" if hp[0] else None
            if hp[0] and hp[1] is not None:  # "host:port" logged without a scheme
                return hp[0], hp[1], ru, "url"
            return None, None, ru, None
        i = ru.find(b"://")
        if i <= 0:
            return None, None, ru, None
        start = i + 3
        end = len(ru)
        for sep in (b"/", b"?", b"#"):
            j = ru.find(sep, start)
            if 0 <= j < end:
                end = j
        key = ru[:end]
        hp = self.authority.get(key)
        if hp is None:
            auth = ru[start:end].rpartition(b"@")[2]
            host, port = _host_port(_text(auth))
            if port is None:
                port = _DEFAULT_PORTS.get(ru[:i].lower())
            if len(self.authority) > _CACHE_LIMIT:
                self.authority.clear()
            hp = self.authority[key] = (host, port)
        return hp[0], hp[1], ru, "url" if hp[0] else None


_KEPT: dict[int, tuple[HostFilter | None, _Targets]] = {}


def _targets(host_filter: HostFilter | None) -> _Targets:
    """The caches of the parses filtered by ``host_filter``, kept for the process: a scan's
    producer reads several parts of a log, whose distinct targets, clients and peers are
    mostly the same (every value a cache holds follows from its token and the filter
    alone). Held with the filter, so that its id names it while it is kept."""
    kept = _KEPT.get(id(host_filter))
    if kept is None or kept[0] is not host_filter:
        if len(_KEPT) >= 8:
            _KEPT.clear()
        kept = _KEPT[id(host_filter)] = (host_filter, _Targets(host_filter))
    return kept[1]


#: A kept line split by the C pre-pass: (index in the chunk, ts, elapsed, client,
#: code/status, size, method, target, user, peer, record id) -- the numbers converted, the
#: record id made (:func:`monitor.ids.record_id` of the line), the rest bytes.
Fields = tuple[int, float, int, bytes, bytes, int, bytes, bytes, bytes, bytes, str]
#: The published ingress ranges as the C pre-pass reads them (see :func:`intervals`).
Intervals = tuple[bytes, bytes]
#: What the C pre-pass needs to make the Observation of a kept CONNECT itself: (Observation,
#: source, format, line number before the chunk's first, the caches of :class:`_Targets`
#: codes, words, connect, ips, hier, ("record_id",), :func:`_layout`, and to name it by
#: its line key (:class:`Known`, when :func:`_known_codes` of its values are some): the entries)
Maker = tuple[
    type, str, str, int, dict, dict, dict, dict, dict, tuple[str], tuple | None, *tuple[Any, ...]
]
#: (chunk, clean, max_line, rejects, markers, ranges, maker, verdicts, connects) -> (records
#: counted: dropped or made, the other lines in order: Observations (or, naming line keys,
#: (Observation, key) pairs and runs of records of known keys), split into their fields, or
#: (index, line) for the Python loop, the lines read); verdicts: a ``Verdicts``
#: table mirroring rejects and connects (the verdicts on URL and on CONNECT targets)
NativeChunk = Callable[
    [
        bytes,
        bool,
        int,
        dict[bytes, bool],
        tuple[bytes, ...],
        Intervals | None,
        Maker | None,
        Any,
        dict[bytes, bool],
    ],
    tuple[int, list[Observation | tuple[int, bytes] | Fields], int],
]


def _accelerator() -> Any:
    """The C pre-pass module (``_squidscan.c``: ``native_chunk``, ``Verdicts``), when it is
    built and wanted."""
    module = accel.load(_ACCEL_NAME)
    if module is None:
        return None  # absent, or built from an older source: rebuild it (pip install)
    if module.MAX_COUNT != MAX_COUNT:
        return None  # built with another bound: it would keep lines this module reports
    return module


def first_observation_id() -> Callable[[str], int]:
    """:func:`monitor.ids.observation_id` of a record id's first record (``nth`` 0): the
    accelerator's (the same BLAKE2b in C) when it is built, else the reference."""
    module = _accelerator()
    return observation_id if module is None else module.observation_id


#: the ``_squidscan`` interface this module calls (``ABI`` of the compiled module)
_ACCEL_NAME, _ACCEL_ABI = "monitor.collectors._squidscan", 14
accel.expect(_ACCEL_NAME, _ACCEL_ABI)
_RID = ("record_id",)


@cache
def _known_codes(values: tuple[str, ...], cls: type = Observation) -> tuple[int, ...] | None:
    """The codes (:data:`~monitor.observation.KNOWN_CODES`) of a :class:`Known`'s ``values``
    fields, or None when one is neither in a run's records nor always None in a kept
    CONNECT's Observation (then records are not named: the consumer gets Observations)."""
    fs = dataclasses.fields(cls)
    none = {"client_port", "bytes_out", "url"} | {
        f.name for f in fs[len(POSITIONAL_FIELDS) :] if f.default is None and f.name != "record_id"
    }
    if not set(values) <= none | set(KNOWN_CODES):
        return None
    return known_codes(values)


@cache
def _layout(cls: type = Observation) -> tuple[tuple[Any, ...], tuple[Any, ...], int] | None:
    """How the C pre-pass may fill the slots of an Observation (``cls``) itself instead of
    calling the class: (slot descriptors and defaults in field order, index of
    ``record_id``), when its ``__init__`` is the one :mod:`dataclasses` wrote (it only
    stores its arguments) and every field but the positional ones has a plain default; else
    None (C calls the class)."""
    fs = dataclasses.fields(cls)
    names = [f.name for f in fs]
    generated = getattr(cls.__init__, "__code__", None)
    if (
        generated is None
        or generated.co_filename != "<string>"  # written by dataclasses, not by hand
        or hasattr(cls, "__post_init__")
        or tuple(names[: len(POSITIONAL_FIELDS)]) != POSITIONAL_FIELDS
        or "record_id" not in names
        or any(not f.init or f.default_factory is not dataclasses.MISSING for f in fs)
        or any(f.default is dataclasses.MISSING for f in fs[len(POSITIONAL_FIELDS) :])
    ):
        return None
    slots = tuple(cls.__dict__.get(n) for n in names)
    defaults = tuple(None if f.default is dataclasses.MISSING else f.default for f in fs)
    return slots, defaults, names.index("record_id")


def intervals(networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> Intervals:
    """IPv4 and IPv6 networks as sorted, merged [first, last] address pairs, packed
    big-endian (4 and 16 bytes an address): what the C pre-pass binary-searches."""
    packed = []
    for version, width in ((4, 4), (6, 16)):
        spans = sorted(
            (int(n.network_address), int(n.broadcast_address))
            for n in networks
            if n.version == version
        )
        merged: list[list[int]] = []
        for first, last in spans:
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        packed.append(
            b"".join(a.to_bytes(width, "big") + b.to_bytes(width, "big") for a, b in merged)
        )
    return packed[0], packed[1]


def _counted(digits: bytes) -> bool:
    """Whether ASCII ``digits`` are a count a record may carry (at most MAX_COUNT), read
    without converting a number of any length (``int`` refuses more than 4300 digits)."""
    digits = digits.lstrip(b"0")
    return len(digits) < _COUNT_DIGITS or (
        len(digits) == _COUNT_DIGITS and int(digits) <= MAX_COUNT
    )


def _count(text: bytes | None) -> int | None:
    """A byte count of a logformat field (``-?\\d+``, or None when absent): ValueError
    (the record's reason, see :func:`_reason_on_error`) when it is outside 0..MAX_COUNT."""
    if text is None:
        return None
    if text[:1] == b"-" or not _counted(text):
        raise ValueError(f"byte count out of range (0 to {MAX_COUNT})")
    return int(text)


def _elapsed_beyond(text: bytes) -> str | None:
    """Why an elapsed time ``-?\\d+`` (ms) is out of range (beyond MAX_COUNT either way), or
    None when it is not. A negative one in range is stored as unknown, as Squid logs it."""
    if _counted(text[1:] if text[:1] == b"-" else text):
        return None
    side = "below -" if text[:1] == b"-" else "above "
    return f"elapsed time out of range ({side}{MAX_COUNT} ms)"


def _port(text: bytes | None) -> int | None:
    """A port of a logformat field (``-?\\d+``), None when absent or not one (1-65535)."""
    if text is None or not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def _host_port(text: str) -> tuple[str | None, int | None]:
    host, port = split_host_port(text)
    if port is not None and not 0 < port < 65536:
        port = None
    if host and (" " in host or "/" in host):
        host = None
    return host, port


_Read = Callable[..., Observation | None | str]


def _reason_on_error(read: _Read) -> _Read:
    """A record reader whose field that does not convert makes the record's reason
    (``unreadable field: ...``) instead of an exception."""

    @wraps(read)
    def guarded(*args: Any) -> Observation | None | str:
        try:
            return read(*args)
        except (ValueError, TypeError, KeyError, UnicodeError, OverflowError) as exc:
            return f"unreadable field: {exc}"

    return guarded


class SquidCollector(_base.Collector):
    """Squid ``access.log`` in the native, common, combined or a custom logformat."""

    name = "squid"

    def __init__(self, variant: str = "auto", logformat: str | None = None):
        if variant not in _VARIANTS:
            raise ValueError(f"unknown Squid variant {variant!r}; one of {sorted(_VARIANTS)}")
        self.variant = _VARIANTS[variant]
        self.compiled: CompiledLogformat | None = None
        if logformat is not None:
            if self.variant not in ("auto", FORMAT_CUSTOM):
                raise ValueError("logformat= goes with variant 'auto' or 'custom'")
            self.compiled = compile_logformat(logformat)  # LogformatError names a bad code
            self.variant = FORMAT_CUSTOM
            if " ".join(self.compiled.format.split()) == " ".join(BUILTIN["squid"].split()):
                self.variant, self.compiled = FORMAT_NATIVE, None  # use the fast path
        elif self.variant == FORMAT_CUSTOM:
            raise ValueError("variant 'custom' needs logformat=")

    # -- entry point ---------------------------------------------------------------------

    def read(self, job: _base.ParseInput) -> Iterator[Observation]:
        return self.read_known(job, None)

    def read_known(self, job: _base.ParseInput, known: Known | None) -> Iterator[Any]:
        """Native lines are named (kept CONNECTs the C pre-pass makes, see :class:`Known`)."""
        stream, source, diag, host_filter = job
        counted = _base.Counted()
        chunks: Iterable[Chunk] = iter_chunks(stream, source, diag, counted)
        variant = self.variant
        if variant == "auto":
            variant, chunks = _detect(chunks)
        if variant == FORMAT_NATIVE:
            return self._parse_native(chunks, source, diag, host_filter, counted, known)
        compiled = self.compiled if variant == FORMAT_CUSTOM else None
        if compiled is None:
            compiled = _builtin("combined" if variant == FORMAT_COMBINED else "common")
        lines = _numbered(chunks, source, diag)
        return self._parse_regex(lines, source, diag, host_filter, compiled, variant)

    # -- native --------------------------------------------------------------------------

    def _parse_native(
        self,
        chunks: Iterable[Chunk],
        source: str,
        diag: Diagnostics,
        host_filter: HostFilter | None,
        counted: _base.Counted | None = None,
        known: Known | None = None,
    ) -> Iterator[Observation]:
        """The hot loop. A line of exactly ten fields that convert cleanly takes the fast
        path (per-field caches, no regex); anything else (extra fields, glued records,
        junk, ``-`` sizes) goes to :meth:`_native_slow`. With ``known``, the C pre-pass
        names the kept CONNECTs it makes (see :class:`Known`)."""
        t = _targets(host_filter)
        ips, codes, hiers, connect, words = t.ips, t.codes, t.hier, t.connect, t.words
        fcache = t.filter
        rejects, connects = t.rejects, t.connects
        missing = _MISSING
        obs = Observation
        digest = record_id
        fmt = FORMAT_NATIVE
        slow = self._native_slow
        filtering = host_filter is not None
        # the C pre-pass reads each chunk whole: it counts the records the filter rejects
        # (most of them) without making them objects, makes the Observations of the kept
        # CONNECTs whose values the caches hold, splits the other kept lines into their
        # fields and hands the rest to the loop below, which reads every line of every
        # batch when it is absent. It is given the ingress ranges themselves.
        networks = getattr(host_filter, "networks", None)
        ranges = intervals(networks) if t.ingress is not None and networks is not None else None
        usable = t.ingress is None or ranges is not None
        module = _accelerator() if filtering and usable else None
        prepass: NativeChunk | None = None
        if module is not None:
            prepass = module.native_chunk
            if t.verdicts is None:
                t.verdicts = module.Verdicts()
        verdicts = t.verdicts
        # what it needs to make the Observation of a kept CONNECT whose values are cached
        cached: tuple[Any, ...] = (codes, words, connect, ips, hiers, _RID, _layout())
        if known is not None and _known_codes(known.values) is not None:
            cached = (*cached, known.entries)
        fronting = t.ingress is not None
        fronted = t.fronted
        fronts = t.fronts
        markers = t.markers if t.requests is not None else ()
        marker_search = t.marker_search
        max_line = _base.MAX_LINE
        max_count = MAX_COUNT
        records = 0
        try:
            for first, chunk, clean in chunks:
                if prepass is not None:
                    maker = (obs, source, fmt, first, *cached)
                    done, todo, lines = prepass(
                        chunk, clean, max_line, rejects, markers, ranges, maker, verdicts, connects
                    )
                    if counted is not None:
                        counted.tell(chunk, lines)  # iter_chunks need not count them
                    records += done
                    batches: Iterable[tuple[int, Iterable[tuple]]] = ((first, todo),)
                else:
                    batches = (
                        (base, enumerate(lines))
                        for base, lines, _ in lines_of(first, chunk, clean, source, diag)
                    )
                for base, todo in batches:
                    for item in todo:
                        if type(item) is obs or type(item[0]) is not int:
                            yield item  # made (or named, see Known) by the pre-pass
                            continue
                        if len(item) != 2:  # kept and split by the pre-pass
                            (
                                i,
                                ts,
                                elapsed,
                                client_b,
                                code_b,
                                size,
                                method_b,
                                target,
                                user,
                                peer,
                                rid,
                            ) = item
                            cs = codes.get(code_b) or t.code_status(code_b)
                        else:
                            i, line = item
                            rid = None
                            if len(line) > max_line:  # handed back by the pre-pass
                                diag.malformed_record(
                                    source, base + i + 1, f"line longer than {max_line} bytes", line
                                )
                                continue
                            parts = line.split()
                            if len(parts) != 10 or not (clean or b"\x00" not in line):
                                if not parts:
                                    diag.skipped += 1
                                    continue
                                # the careful path: extra fields, glued records, junk
                                for o in slow(line, parts, base + i + 1, source, diag, t):
                                    records += 1
                                    if o is not None:
                                        yield o
                                continue
                            if filtering:
                                # most lines go to hosts the filter rejects: check the target
                                # first (CONNECT host:port, or a URL's scheme and authority),
                                # then only that the record is well formed
                                target = parts[6]
                                is_connect = parts[5] == b"CONNECT"
                                if not is_connect:
                                    k = target.find(b"://")
                                    j = target.find(b"/", k + 3) if k > 0 else -1
                                    if j > 0:
                                        target = target[:j]
                                rejected = (connects if is_connect else rejects).get(target)
                                if rejected is None:
                                    rejected = t.rejects_target(is_connect, target)
                                if rejected and markers and target is not parts[6]:
                                    # a URL with a path: an LLM API path keeps it all the same
                                    rejected = marker_search(parts[6], len(target)) is None
                                if rejected and fronting:
                                    # so does an origin in a provider's ingress ranges
                                    f = fronts.get(parts[8])
                                    rejected = not (fronted(parts[8]) if f is None else f)
                                if (
                                    rejected
                                    and parts[1].isdigit()
                                    and parts[4].isdigit()
                                    and codes.get(parts[3])
                                ):
                                    try:
                                        ts = float(parts[0])
                                    except ValueError:
                                        ts = -1
                                    if 0 <= ts < 1e11:
                                        records += 1
                                        continue
                            cs = codes.get(parts[3])
                            if cs is None:
                                cs = t.code_status(parts[3])
                            try:
                                ts = float(parts[0])
                                elapsed = int(parts[1])
                                size = int(parts[4])
                            except ValueError:
                                ts = size = -1
                            if (
                                cs is None
                                or not 0 <= size <= max_count
                                or not -max_count <= elapsed <= max_count
                                or not 0 <= ts < 1e11
                            ):
                                # the careful path: "-" size, junk, numbers out of range
                                for o in slow(line, parts, base + i + 1, source, diag, t):
                                    records += 1
                                    if o is not None:
                                        yield o
                                continue
                            client_b, method_b, target, user, peer = (
                                parts[2], parts[5], parts[6], parts[7], parts[8]
                            )  # fmt: skip
                        records += 1
                        method = words.get(method_b) or t.word(method_b)
                        if method == "-":
                            method = None
                        hp = connect.get(target) if method == "CONNECT" else None
                        if hp is not None:
                            host, port = hp
                            url = None
                            hsrc = "connect" if host else None
                        else:
                            host, port, url, hsrc = t.target(method, target)
                        if filtering and host is not None:
                            keep = fcache.get(host)
                            if keep is None:
                                keep = t.keep(host)
                            if not keep and not t.wanted(url) and not fronted(peer):
                                continue  # rejected: counted, no Observation built
                        if url is not None:
                            url = _text(url)
                        client = ips.get(client_b, missing)
                        if client is missing:
                            client = t.ip(client_b)
                        dest_ip = hiers.get(peer, missing)
                        if dest_ip is missing:
                            dest_ip = t.peer(peer)
                        o = obs(
                            ts,
                            source,
                            base + i + 1,
                            fmt,
                            client,
                            None,
                            None if user == b"-" else (words.get(user) or t.word(user)),
                            method,
                            host,
                            port,
                            dest_ip,
                            url,
                            cs[1],
                            None,
                            size,
                            hsrc,
                            cs[0],
                            elapsed / 1000 if elapsed >= 0 else None,
                        )
                        o.record_id = rid or digest(line)
                        yield o
        finally:
            diag.records += records

    def _native_record(
        self,
        raw: bytes,
        parts: list[bytes],
        lineno: int,
        source: str,
        t: _Targets,
    ) -> Observation | None | str:
        """One native record from its fields: an Observation, None (filtered out), or the
        reason it is malformed (a str)."""
        if len(parts) < 10:
            return f"truncated record: {len(parts)} fields, native format has 10"
        if not _is_native_ts(parts[0]):
            return "bad timestamp"
        ts = float(parts[0])
        el = parts[1]
        digits = el[1:] if el[:1] == b"-" else el
        if not digits.isdigit():
            return "bad elapsed time"
        beyond = _elapsed_beyond(el)
        if beyond is not None:
            return beyond
        elapsed = int(el)
        cs = t.code_status(parts[3])
        if cs is None:
            return "bad result code/status"
        size = parts[4]
        if not (size.isdigit() or size == b"-"):
            return "bad size"
        if size != b"-" and not _counted(size):
            return f"size out of range (above {MAX_COUNT} bytes)"
        method = t.word(parts[5])
        if method == "-":
            method = None
        host, port, raw_url, hsrc = t.target(method, parts[6])
        if not t.keep(host) and not t.wanted(raw_url) and not t.fronted(parts[8]):
            return None
        url = _text(raw_url) if raw_url is not None else None
        user = parts[7]
        return Observation(
            ts,
            source,
            lineno,
            FORMAT_NATIVE,
            t.ip(parts[2]),
            None,
            None if user == b"-" else t.word(user),
            method,
            host,
            port,
            t.peer(parts[8]),
            url,
            cs[1],
            None,
            None if size == b"-" else int(size),
            hsrc,
            cs[0],
            elapsed / 1000 if elapsed >= 0 else None,
            record_id=record_id(raw),
        )

    def _native_slow(
        self,
        line: bytes,
        parts: list[bytes],
        lineno: int,
        source: str,
        diag: Diagnostics,
        t: _Targets,
    ) -> Iterator[Observation | None]:
        """Lines that are not exactly ten clean fields: extra trailing fields, glued
        records, truncation, junk. Yields one item per good record (None when filtered)."""
        starts = [m.start() for m in _NATIVE_START.finditer(line) if m.start() > 0]
        if not starts:
            if b"\x00" in line:
                diag.malformed_record(source, lineno, "NUL bytes in line", line)
                return
            res = self._native_record(line, parts, lineno, source, t)
            if isinstance(res, str):
                diag.malformed_record(source, lineno, res, line)
                return
            yield res
            return
        bounds = [0, *starts, len(line)]
        recovered = 0
        for a, b in zip(bounds, bounds[1:], strict=False):
            seg = line[a:b].strip(b" \t\x00")
            if not seg or b"\x00" in seg:
                continue
            res = self._native_record(seg, seg.split(), lineno, source, t)
            if isinstance(res, str):
                continue
            recovered += 1
            yield res
        diag.malformed_record(
            source,
            lineno,
            f"{len(starts) + 1} records glued on one line ({recovered} recovered)",
            line,
        )

    # -- common / combined / custom ------------------------------------------------------

    def _parse_regex(
        self,
        lines: Iterable[tuple[int, bytes]],
        source: str,
        diag: Diagnostics,
        host_filter: HostFilter | None,
        compiled: CompiledLogformat,
        fmt: str,
    ) -> Iterator[Observation]:
        t = _targets(host_filter)
        if compiled.starts_with_timestamp:
            start_re: re.Pattern[bytes] | None = _NATIVE_START
        elif fmt in (FORMAT_COMMON, FORMAT_COMBINED):
            start_re = _CLF_START
        else:
            start_re = None
        label = {
            FORMAT_COMMON: "the Squid common format",
            FORMAT_COMBINED: "the Squid combined format",
        }.get(fmt, "the logformat")
        records = 0
        try:
            for lineno, line in lines:
                if not line.strip():
                    diag.skipped += 1
                    continue
                res = self._regex_record(line, lineno, source, compiled, fmt, t)
                if not isinstance(res, str):
                    records += 1
                    if res is not None:
                        yield res
                    continue
                starts = [m.start() for m in start_re.finditer(line)] if start_re else []
                starts = [s for s in starts if s > 0]
                if not starts:
                    reason = res or f"does not match {label}"
                    diag.malformed_record(source, lineno, reason, line)
                    continue
                bounds = [0, *starts, len(line)]
                recovered = 0
                for a, b in zip(bounds, bounds[1:], strict=False):
                    seg = line[a:b].strip(b" \t\x00")
                    if not seg:
                        continue
                    r = self._regex_record(seg, lineno, source, compiled, fmt, t)
                    if isinstance(r, str):
                        continue
                    recovered += 1
                    records += 1
                    if r is not None:
                        yield r
                diag.malformed_record(
                    source,
                    lineno,
                    f"{len(starts) + 1} records glued on one line ({recovered} recovered)",
                    line,
                )
        finally:
            diag.records += records

    @_reason_on_error
    def _regex_record(
        self,
        raw: bytes,
        lineno: int,
        source: str,
        compiled: CompiledLogformat,
        fmt: str,
        t: _Targets,
    ) -> Observation | None | str:
        """Observation, None (filtered out) or a reason ("" = no match)."""
        if b"\x00" in raw:
            return "NUL bytes in line"
        v = compiled.match(raw)
        if v is None:
            return ""
        get = v.get
        try:
            # time: %ts[.%tu] | %tS | %tl | %tg
            ts: float | None = None
            sec = get("ts_sec")
            if sec is not None:
                ms = get("ts_ms")
                ts = int(sec) + (int(ms) / 1000 if ms is not None else 0.0)
            elif get("ts_start") is not None:
                ts = float(get("ts_start"))  # type: ignore[arg-type]
            else:
                for role in ("ts_local", "ts_gmt"):
                    text = get(role)
                    if text is not None:
                        ts = compiled.time_parsers[role](text)  # type: ignore[operator]
                        break
        except (ValueError, UnicodeDecodeError):
            return "bad time"
        if ts is None:
            return "no time in record"
        result = status = None
        rs = get("result")
        if rs is not None:
            result = t.word(rs)
        st = get("status") or get("status_next")
        if st is not None:
            status = http_status(int(st)) if len(st.lstrip(b"0")) <= 3 else None
            if status is None:
                raise ValueError("HTTP status out of range (0 to 999)")
        method_b = get("method") or get("method_client")
        method = t.word(method_b) if method_b is not None else None
        ru = get("url") or get("url_client")
        if ru is not None:
            host, port, raw_url, hsrc = t.target(method, ru)
        else:
            host = port = raw_url = hsrc = None
        if host is None and get("domain") is not None:
            host, port = _host_port(_text(get("domain")))  # type: ignore[arg-type]
            if port is None and get("url_port") is not None:
                port = _port(get("url_port"))
            hsrc = "url" if host else None
        if host is None and get("host_header") is not None:
            host, hport = _host_port(_text(get("host_header")))  # type: ignore[arg-type]
            port = port if port is not None else hport
            hsrc = "http_host" if host else None
        agent = get("user_agent")
        if agent == b"-":
            agent = None
        peer = get("peer_ip")
        # with %Sh, only a direct hierarchy code makes %<a the destination (see native)
        dest_ip = t.direct_ip(get("hier"), peer) if peer is not None else None
        if not t.keep(host) and not t.wanted(raw_url, agent) and not t.fronted_ip(dest_ip):
            return None
        url = _text(raw_url) if raw_url is not None else None
        client = get("client_ip")
        cport = get("client_port")
        elapsed = get("elapsed")
        beyond = _elapsed_beyond(elapsed) if elapsed is not None else None
        if beyond is not None:
            raise ValueError(beyond)
        bin_ = get("bytes_in")
        bout = get("bytes_out")
        user = None
        for role in ("user_un", "user_ul", "user_ue", "user_us", "user_ui"):
            u = get(role)
            if u is not None:
                user = t.word(u)
                break
        return Observation(
            ts,
            source,
            lineno,
            fmt,
            t.ip(client) if client is not None else None,
            _port(cport),
            user,
            method,
            host,
            port,
            dest_ip,
            url,
            status,
            _count(bout),
            _count(bin_),
            hsrc,
            result,
            int(elapsed) / 1000 if elapsed is not None and int(elapsed) >= 0 else None,
            record_id=record_id(raw),
            user_agent=_text(agent) if agent is not None else None,
        )


def _detect(chunks: Iterable[Chunk]) -> tuple[str, Iterable[Chunk]]:
    """Decide the variant from the first non-empty lines (most votes of :func:`sniff`);
    give back an iterator that still yields every chunk. Falls back to native, where each
    unreadable line then reports itself."""
    it = iter(chunks)
    head: list[Chunk] = []
    votes: dict[str, int] = {}
    seen = 0
    for chunk in it:
        head.append(chunk)
        for line in chunk[1].split(b"\n")[:-1]:
            line = line.rstrip(b"\r")
            if len(line) > _base.MAX_LINE or not line.strip():
                continue
            v = sniff(line)
            if v is not None:
                votes[v] = votes.get(v, 0) + 1
            seen += 1
            if seen >= SNIFF_LINES:
                break
        if seen >= SNIFF_LINES:
            break
    variant = max(votes, key=lambda k: votes[k]) if votes else FORMAT_NATIVE
    return variant, chain(head, it)


def _make_custom(options: CollectOptions, catalog: Any = None) -> SquidCollector:
    if not options.squid_logformat:
        raise InputError("format squid-custom needs --squid-logformat")
    return SquidCollector(logformat=options.squid_logformat)


def _variant_spec(name: str, variant: str, description: str) -> FormatSpec:
    """A built-in Squid logformat: recognised line by line, split for parallel parsing."""
    return FormatSpec(
        name,
        description,
        lambda options, catalog: SquidCollector(variant=variant),
        sniff_line=lambda line: sniff(line) == name,
        splittable=True,
    )


FORMAT_SPECS = [
    _variant_spec(FORMAT_NATIVE, "native", "Squid native access.log (logformat squid)"),
    _variant_spec(FORMAT_COMMON, "common", "Squid/Apache common log format (logformat common)"),
    _variant_spec(
        FORMAT_COMBINED, "combined", "Squid/Apache combined log format (logformat combined)"
    ),
    FormatSpec(
        FORMAT_CUSTOM,
        "Squid with a custom logformat (--squid-logformat)",
        _make_custom,
        splittable=True,
    ),
]
