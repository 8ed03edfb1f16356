"""W3C extended log files (ELFF): Blue Coat / Symantec ProxySG, Microsoft IIS and Forefront
TMG, Barracuda and any other writer of ``#Fields:`` headers.

The ``#Fields:`` directive names the columns; it may appear again further down (a
configuration change, or concatenated files) and the new list applies from there on.
Values are separated by spaces (or tabs); a value holding spaces is in double quotes (a
quote inside is doubled); ``-`` means unknown. ``date`` and ``time`` are UTC.

Field names are matched case-insensitively. Which columns feed which Observation field is
in ``docs/formats.md`` ("W3C extended"); a field missing from ``#Fields:`` leaves its
Observation field ``None``. Records before any ``#Fields:`` cannot be read: the file is
reported (``file_errors``) and left.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

from monitor.collectors.base import (
    Collector,
    FormatSpec,
    ParseInput,
    iter_batches,
)
from monitor.collectors.fields import host_keeper, memoised, record_keeper
from monitor.collectors.mapped import DEFAULT_PORTS, text, url_target
from monitor.collectors.sniff import elff_head as sniff_head
from monitor.ids import record_id
from monitor.observation import Observation, bounded, canonical_ip, split_host_port

__all__ = ["ElffCollector", "sniff_head", "split_fields", "FORMAT"]

FORMAT = "elff"
_CACHE_LIMIT = 50_000

#: Observation input -> W3C field names (lower-case), first present wins.
COLUMNS: dict[str, tuple[str, ...]] = {
    "date": ("date",),
    "time": ("time",),
    "epoch": ("x-timestamp-unix", "x-timestamp-unix-utc", "timestamp"),
    "time_taken": ("time-taken",),
    "c_ip": ("c-ip",),
    "c_port": ("c-port",),
    "user": ("cs-username", "cs-userdn", "cs-user"),
    "method": ("cs-method", "s-operation"),
    "scheme": ("cs-uri-scheme",),
    "host": ("cs-host", "r-host", "cs-uri-hostname"),
    "port": ("cs-uri-port", "r-port"),
    "path": ("cs-uri-path", "cs-uri-stem"),
    "query": ("cs-uri-query",),
    "uri": ("cs-uri",),
    "host_header": ("cs(host)",),
    "status": ("sc-status",),
    "s_action": ("s-action",),
    "filter": ("sc-filter-result",),
    "exception": ("x-exception-id",),
    "action": ("action",),
    "sc_bytes": ("sc-bytes",),
    "cs_bytes": ("cs-bytes",),
    "supplier": ("s-supplier-ip", "r-ip"),
    "hierarchy": ("s-hierarchy",),
    "s_ip": ("s-ip",),
    "s_port": ("s-port",),
    "user_agent": ("cs(user-agent)",),
}
_TUNNEL_SCHEMES = frozenset({"tcp", "ssl"})


def split_fields(line: bytes) -> list[bytes] | None:
    """Space/tab separated values; ``"quoted values"`` keep their spaces (``""`` is a quote
    inside one). None when a quote is not closed."""
    if b'"' not in line:
        return line.split()
    if b'""' not in line:
        parts = line.split(b'"')
        if not len(parts) & 1:
            return None
        out: list[bytes] = []
        for i, p in enumerate(parts):
            if i & 1:
                out.append(p)
            else:
                out.extend(p.split())
        return out
    out = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in b" \t":
            i += 1
            continue
        if c == 34:  # '"'
            j = i + 1
            buf = bytearray()
            while True:
                k = line.find(b'"', j)
                if k < 0:
                    return None
                buf += line[j:k]
                if line[k + 1 : k + 2] == b'"':
                    buf += b'"'
                    j = k + 2
                    continue
                i = k + 1
                break
            out.append(bytes(buf))
        else:
            j = i
            while j < n and line[j] not in b" \t":
                j += 1
            out.append(line[i:j])
            i = j
    return out


def _int(b: bytes | None) -> int | None:
    return int(b) if b is not None and len(b) < 20 and b.isdigit() else None


def _status(b: bytes | None) -> int | None:
    """HTTP status; TMG logs Windows error numbers (12202…) there, which are not one."""
    v = _int(b)
    return v if v is not None and v < 1000 else None


def _port(b: bytes | None) -> int | None:
    v = _int(b)
    return v if v is not None and 0 < v < 65536 else None


def _word(b: bytes) -> str | None:
    return text(b) if b and b != b"-" else None


def _address(b: bytes) -> str | None:
    return canonical_ip(text(b).strip("[]")) if b and b != b"-" else None


def _host_port(b: bytes) -> tuple[str | None, int | None]:
    h, p = split_host_port(text(b))
    return h, p if p is not None and 0 < p < 65536 else None


def _day(b: bytes) -> float | None:
    """Epoch seconds of a ``YYYY-MM-DD`` date (UTC midnight); None when it is not one."""
    parts = b.split(b"-")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        try:
            return float(
                (date(int(parts[0]), int(parts[1]), int(parts[2])).toordinal() - 719163) * 86400
            )
        except ValueError:
            return None
    return None


class _Plan:
    """Column indexes for one ``#Fields:`` list (-1: not logged)."""

    def __init__(self, names: list[str], software: str):
        self.names = names
        self.n = len(names)
        low = [n.lower() for n in names]
        self.idx: dict[str, int] = {}
        for role, candidates in COLUMNS.items():
            self.idx[role] = next((low.index(c) for c in candidates if c in low), -1)
        self.iis = "internet information services" in software.lower()
        self.has_time = (self.idx["date"] >= 0 and self.idx["time"] >= 0) or self.idx["epoch"] >= 0


class ElffCollector(Collector):
    """W3C extended / ELFF access logs (the ``#Fields:`` header drives everything)."""

    name = FORMAT

    def read(self, job: ParseInput) -> Iterator[Observation]:
        stream, source, diag, host_filter = job
        self._filter = host_filter
        self._keeps = host_keeper(host_filter, _CACHE_LIMIT)
        self._wants = record_keeper(host_filter, _CACHE_LIMIT)
        self._day = memoised(_day, 4096)
        self._ip = memoised(_address, _CACHE_LIMIT)
        self._word = memoised(_word, _CACHE_LIMIT)
        self._host = memoised(_host_port, _CACHE_LIMIT)
        plan: _Plan | None = None
        software = ""
        records = 0
        try:
            for base, lines, _clean in iter_batches(stream, source, diag):
                for lineno, line in enumerate(lines, base + 1):
                    if line[:1] == b"#" or line[:4] == b"\xef\xbb\xbf#":
                        diag.skipped += 1
                        d = line.lstrip(b"\xef\xbb\xbf")
                        if d.startswith(b"#Fields:"):
                            names = text(d[8:]).split()
                            plan = _Plan(names, software) if names else None
                            if plan is not None and not plan.has_time:
                                diag.file_error(
                                    source,
                                    f"line {lineno}: #Fields: has no date/time column; "
                                    "records cannot be placed in time",
                                )
                                return
                        elif d.startswith(b"#Software:"):
                            software = text(d[10:]).strip()
                        continue
                    if not line.strip():
                        diag.skipped += 1
                        continue
                    if plan is None:
                        diag.file_error(
                            source,
                            f"line {lineno}: a record before any #Fields: directive "
                            "(W3C logs name their columns in the header)",
                        )
                        return
                    if b"\x00" in line:
                        diag.malformed_record(source, lineno, "NUL bytes in line", line)
                        continue
                    tokens = split_fields(line)
                    if tokens is None:
                        diag.malformed_record(source, lineno, "unbalanced quotes", line)
                        continue
                    if len(tokens) != plan.n:
                        diag.malformed_record(
                            source,
                            lineno,
                            f"{len(tokens)} fields, #Fields: names {plan.n}",
                            line,
                        )
                        continue
                    res = self._record(tokens, plan, line, lineno, source)
                    if res is None:
                        records += 1
                    elif isinstance(res, str):
                        diag.malformed_record(source, lineno, res, line)
                    else:
                        records += 1
                        yield res
        finally:
            diag.records += records

    # -- helpers ------------------------------------------------------------------------

    def _ts(self, tokens: list[bytes], plan: _Plan) -> float | None:
        i = plan.idx
        if i["date"] >= 0 and i["time"] >= 0:
            day = self._day(tokens[i["date"]])
            t = tokens[i["time"]]
            if day is None:
                return None
            if len(t) == 8 and t[2] == 58 and t[5] == 58:
                h, m, s = t[0:2], t[3:5], t[6:8]
                if h.isdigit() and m.isdigit() and s.isdigit():
                    hh, mm, ss = int(h), int(m), int(s)
                    if hh < 24 and mm < 60 and ss < 61:
                        return day + hh * 3600 + mm * 60 + ss
                return None
            parts = t.split(b":")
            if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
                return None
            try:
                sec = float(parts[2])
            except ValueError:
                return None
            hh, mm = int(parts[0]), int(parts[1])
            if hh >= 24 or mm >= 60 or not 0 <= sec < 61:
                return None
            return day + hh * 3600 + mm * 60 + sec
        e = tokens[i["epoch"]]
        try:
            v = float(e)
        except ValueError:
            return None
        if v >= 1e11:
            v /= 1000
        return v if 0 <= v < 1e11 else None

    def _record(
        self, tokens: list[bytes], plan: _Plan, raw: bytes, lineno: int, source: str
    ) -> Observation | None | str:
        i = plan.idx  # a role that is not logged has index -1: the None appended below
        toks: list[bytes | None] = [None if t == b"-" or not t else t for t in tokens]
        toks.append(None)
        if self._filter is not None and i["host"] >= 0:  # reject early: no other work
            hb0 = toks[i["host"]]
            if hb0 is not None:
                h0 = self._host(hb0)[0]
                if h0 is not None and not self._keeps(h0) and not self._wanted(h0, toks, plan):
                    return None
        ts = self._ts(tokens, plan)
        if ts is None:
            return "bad date/time"
        mb = toks[i["method"]]
        method = self._word(mb).upper() if mb else None  # type: ignore[union-attr]
        sb = toks[i["scheme"]]
        scheme = self._word(sb).lower() if sb else None  # type: ignore[union-attr]
        hb = toks[i["host"]]
        port = _port(toks[i["port"]])
        host = url = hsrc = None
        ub = toks[i["uri"]]
        if hb is not None:
            host, hport = self._host(hb)
            if port is None:
                port = hport
            if method == "CONNECT" or (scheme in _TUNNEL_SCHEMES and method is None):
                hsrc = "connect" if host else None
            elif host is not None:
                hsrc = "http_host" if plan.iis else "url"  # IIS cs-host is the Host header
                if port is None and scheme is not None:
                    port = DEFAULT_PORTS.get(scheme)
                if ub is not None:
                    url = text(ub)
                elif scheme in DEFAULT_PORTS:
                    path = toks[i["path"]]
                    query = toks[i["query"]]
                    hosttext = text(hb)
                    if port is not None and port != DEFAULT_PORTS[scheme] and ":" not in hosttext:
                        hosttext = f"{hosttext}:{port}"
                    url = f"{scheme}://{hosttext}{text(path) if path else '/'}"
                    if query:
                        q = text(query)
                        url += q if q.startswith("?") else "?" + q
        elif ub is not None:
            u = text(ub)
            if method == "CONNECT":
                host, port = self._host(ub)
                hsrc = "connect" if host else None
            else:
                host, uport, _scheme = url_target(u)
                url = u
                if host is not None:
                    hsrc = "url"
                    port = port if port is not None else uport
        if host is None:
            hh = toks[i["host_header"]]
            if hh is not None:
                host, hport = self._host(hh)
                if host is not None:
                    hsrc = "http_host"
                    port = port if port is not None else hport
        if (
            host is not None
            and self._filter is not None
            and not self._keeps(host)
            and not self._wanted(host, toks, plan)
        ):
            return None
        dest_ip = self._dest_ip(toks, plan)
        if plan.iis and port is None and toks[i["supplier"]] is None:
            port = _port(toks[i["s_port"]])
        if url is None and plan.iis and toks[i["path"]] is not None:
            path = text(toks[i["path"]])  # type: ignore[arg-type]
            query = toks[i["query"]]
            url = path + ("?" + text(query) if query else "")
        sa = toks[i["s_action"]]
        fr = toks[i["filter"]]
        result = self._word(sa or toks[i["action"]] or fr or b"")
        if (
            fr is not None
            and fr.upper() == b"DENIED"
            and (result is None or "DENIED" not in result.upper())
        ):
            result = "DENIED"
        ua = toks[i["user_agent"]]
        ex = toks[i["exception"]]
        if (
            ex is not None
            and ex.lower().endswith(b"_denied")
            and (result is None or "DENIED" not in result.upper())
        ):
            result = "DENIED"
        tt = _int(toks[i["time_taken"]])
        ub_user = toks[i["user"]]
        return Observation(
            ts,
            source,
            lineno,
            FORMAT,
            self._ip(toks[i["c_ip"]] or b"-"),
            _port(toks[i["c_port"]]),
            self._word(ub_user) if ub_user is not None else None,
            method,
            host,
            port,
            dest_ip,
            url,
            _status(toks[i["status"]]),
            bounded(_int(toks[i["cs_bytes"]])),
            bounded(_int(toks[i["sc_bytes"]])),
            hsrc,
            result,
            tt / 1000 if tt is not None else None,
            user_agent=self._agent(ua, plan) if ua is not None else None,
            record_id=record_id(raw),
        )

    def _dest_ip(self, toks: list[bytes | None], plan: _Plan) -> str | None:
        """The server's address: the proxy's direct upstream (``s-supplier-ip``, not a
        parent proxy's), or IIS's own ``s-ip`` (IIS is the server)."""
        i = plan.idx
        sup = toks[i["supplier"]]
        if sup is not None:
            hier = toks[i["hierarchy"]]
            return self._ip(sup) if hier is None or hier.upper().endswith(b"DIRECT") else None
        return self._ip(toks[i["s_ip"]] or b"-") if plan.iis else None

    def _wanted(self, host: str, toks: list[bytes | None], plan: _Plan) -> bool:
        """A record whose host the filter rejects is kept all the same when sent to a
        provider's published ingress address, or LLM-shaped (path, User-Agent)."""
        i = plan.idx
        path = toks[i["uri"]] or toks[i["path"]]
        ua = toks[i["user_agent"]]
        return self._wants(
            host,
            self._dest_ip(toks, plan),
            text(path) if path is not None else None,
            self._agent(ua, plan) if ua is not None else None,
        )

    def _agent(self, ua: bytes, plan: _Plan) -> str | None:
        """``cs(User-Agent)``; IIS writes its spaces as ``+``."""
        return self._word(ua.replace(b"+", b" ") if plan.iis else ua)


FORMAT_SPECS = [
    FormatSpec(
        FORMAT,
        "W3C extended log (#Fields: header): Blue Coat/Symantec ProxySG, IIS, TMG, …",
        lambda options, catalog: ElffCollector(),
        sniff_head=sniff_head,
    )
]
