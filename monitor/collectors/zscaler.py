"""Zscaler Internet Access NSS web logs, in the feed output types admins actually pick.

* ``zscaler-csv`` - the default web feed: the documented default field order
  (``time, login, proto, eurl, action, appname, appclass, reqsize, respsize, stime, ctime,
  urlclass, urlsupercat, urlcat, malwarecat, threatname, riskscore, dlpeng, dlpdict,
  location, dept, cip, sip, reqmethod, respcode, ua, …``), comma-separated with quoted
  fields, or tab-separated; also without ``stime, ctime`` (older default).
* ``zscaler-json`` - JSON lines, bare or in the Splunk ``{"sourcetype":"zscalernss-web",
  "event":{…}}`` wrapper. Key names are whatever the feed template says: the Zscaler
  variable names (``cip``, ``eurl``, ``reqmethod``…), the Splunk deployment guide's names
  (``ClientIP``, ``requestmethod``, ``clientpublicIP``…) and Elastic's template names
  (``cltip``, ``cltpubip``, ``serverip``…) are all recognised; the resolution is done once
  per distinct key set.
* ``zscaler-kv`` - ``key=value``: QRadar LEEF (``LEEF:1.0|Zscaler|NSS|…``, tab-separated),
  ArcSight CEF (``CEF:0|Zscaler|NSSWeblog|…``), or tab-separated key=value with any syslog
  prefix, with the same names plus CEF's (``src``, ``dhost``, ``requestMethod``, ``in``…).

``action`` (``Allowed``/``Blocked``/``Caution``…) goes verbatim to ``result``. The client's
public address (``cpubip``/``clientpublicIP``) is the record's ``egress_ip``, the address the
provider saw; it is also used as ``client_ip`` when no client address at all is logged. Zscaler URLs carry no scheme
(``api.openai.com/v1/chat``); a ``CONNECT`` logs ``host:port``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from monitor.collectors.base import (
    Collector,
    FormatSpec,
    HostFilter,
    ParseInput,
    iter_batches,
)
from monitor.collectors.fields import JSON_ERRORS as _JSON_ERRORS
from monitor.collectors.fields import host_keeper, memoised, record_keeper
from monitor.collectors.fields import loads as _loads
from monitor.collectors.mapped import (
    NULLS,
    TimeParser,
    make_tz,
    parse_kv,
    text,
    to_int,
    url_target,
)
from monitor.ids import record_id
from monitor.observation import (
    Observation,
    bounded,
    canonical_ip,
    http_status,
    split_host_port,
)

__all__ = ["ZscalerCollector", "sniff", "FORMAT_CSV", "FORMAT_JSON", "FORMAT_KV"]

FORMAT_CSV = "zscaler-csv"
FORMAT_JSON = "zscaler-json"
FORMAT_KV = "zscaler-kv"
_CACHE_LIMIT = 50_000
_MISSING = object()

#: role -> key names (lower-case, without "_" and "-"), first present wins
ROLES: dict[str, tuple[str, ...]] = {
    "epoch": ("epochtime",),
    "time": ("time", "datetime", "devtime", "rt", "loggedtime"),
    "tz": ("tz", "timezone"),
    "client_ip": ("cip", "cltip", "clientip", "src"),
    "client_alt": (
        "cintip",
        "cltintip",
        "srcpostnat",
        "cpubip",
        "cltpubip",
        "clientpublicip",
        "clientexternalip",
    ),
    "client_port": ("cltsport", "cltsourceport", "clientsourceport", "spt"),
    "user": ("login", "elogin", "user", "usrname", "suser"),
    "method": ("reqmethod", "requestmethod"),
    "host": ("host", "ehost", "hostname", "dhost"),
    "url": ("url", "eurl", "request"),
    "dest_ip": ("sip", "serverip", "dst"),
    "dest_port": ("srvdport", "serverdestinationport", "dpt"),
    "status": ("respcode", "status", "responsecode", "outcome"),
    "bytes_out": ("reqsize", "requestsize", "srcbytes", "sentbytes", "out"),
    "bytes_in": ("respsize", "responsesize", "dstbytes", "receivedbytes", "in"),
    "action": ("action", "act", "policyaction"),
    "proto": ("proto", "protocol", "appproto", "app"),
    "ctime": ("ctime", "clienttranstime"),
    "user_agent": ("ua", "useragent", "requestclientapplication"),
    "yyyy": ("yyyy", "year"),
    "mth": ("mth", "monthofyear"),
    "dd": ("dd", "dayofmonth"),
    "hh": ("hh", "hour"),
    "mm": ("mm", "minute"),
    "ss": ("ss", "second"),
}
_PROTO_PORTS = {"HTTP": 80, "HTTPS": 443}

#: The default web feed, field by field (help.zscaler.com nss-feed-output-format-web-logs).
DEFAULT_FIELDS = (
    "time",
    "login",
    "proto",
    "eurl",
    "action",
    "appname",
    "appclass",
    "reqsize",
    "respsize",
    "stime",
    "ctime",
    "urlclass",
    "urlsupercat",
    "urlcat",
    "malwarecat",
    "threatname",
    "riskscore",
    "dlpeng",
    "dlpdict",
    "location",
    "dept",
    "cip",
    "sip",
    "reqmethod",
    "respcode",
    "ua",
    "ereferer",
    "ruletype",
    "rulelabel",
    "contenttype",
    "unscannabletype",
    "deviceowner",
    "devicehostname",
    "keyprotectiontype",
)
_WITH_TIMES = {n: i for i, n in enumerate(DEFAULT_FIELDS)}
_WITHOUT_TIMES = {
    n: i for i, n in enumerate(f for f in DEFAULT_FIELDS if f not in ("stime", "ctime"))
}
_CSV_ROLES = {
    "time": "time",
    "user": "login",
    "proto": "proto",
    "url": "eurl",
    "action": "action",
    "bytes_out": "reqsize",
    "bytes_in": "respsize",
    "ctime": "ctime",
    "client_ip": "cip",
    "dest_ip": "sip",
    "method": "reqmethod",
    "status": "respcode",
    "user_agent": "ua",
}
_CSV_MIN = {True: _WITH_TIMES["respcode"] + 1, False: _WITHOUT_TIMES["respcode"] + 1}

_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_KV_MARKERS = (
    b"reqmethod=",
    b"requestmethod=",
    b"respcode=",
    b"urlcat=",
    b"urlcategory=",
    b"urlsupercat",
    b"urlclass=",
    b"clientpublicIP=",
    b"eurl=",
    b"ehost=",
    b"cintip=",
    b"cpubip=",
    b"appclass=",
    b"dlpeng",
    b"riskscore=",
    b"pagerisk=",
)
_JSON_MARKERS = tuple(b'"' + m[:-1] + b'"' for m in _KV_MARKERS if m.endswith(b"="))


def _norm(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def _is_zscaler_time(b: bytes) -> bool:
    """``Mon Jun 20 15:29:11 2022``."""
    p = b.split()
    return (
        len(p) == 5
        and p[0] in _DAYS
        and len(p[1]) == 3
        and p[2].isdigit()
        and p[3].count(b":") == 2
        and p[4].isdigit()
    )


def _csv_fields(line: bytes) -> list[bytes] | None:
    """Fields of a default-feed line: tab-separated, or comma-separated with quotes."""
    if b"\t" in line:
        if b'"' not in line:
            return line.split(b"\t")
        return [f.strip(b'"') for f in line.split(b"\t")]
    if line[:1] == b'"' and line[-1:] == b'"':
        parts = line[1:-1].split(b'","')
        if line.count(b'"') == 2 * len(parts):  # no quote inside a value
            return parts
    try:
        rows = list(csv.reader([text(line)], strict=True))
    except csv.Error:
        return None
    return [f.encode("utf-8", "surrogateescape") for f in rows[0]] if rows else None


def sniff(line: bytes) -> str | None:
    """Which Zscaler feed output one line looks like."""
    s = line.strip()
    if s[:1] == b"{":
        if b"zscalernss" in s:
            return FORMAT_JSON
        if sum(1 for m in _JSON_MARKERS if m in s) >= 3:
            return FORMAT_JSON
        return None
    if (b"CEF:" in s or b"LEEF:" in s) and b"|Zscaler|" in s:
        return FORMAT_KV
    if b"=" in s and sum(1 for m in _KV_MARKERS if m in s) >= 3:
        return FORMAT_KV
    if b"," in s or b"\t" in s:
        first = s.split(b"\t", 1)[0] if b"\t" in s else s.split(b",", 1)[0]
        if _is_zscaler_time(first.strip(b'"')):
            f = _csv_fields(s)
            if f is not None and len(f) >= _CSV_MIN[False] and f[4][:1].isalpha():
                return FORMAT_CSV
    return None


#: roles read by the dict-shaped variants, in the order _Parse.build takes them
_DICT_ROLES = (
    "epoch",
    "time",
    "tz",
    "client_ip",
    "client_alt",
    "client_port",
    "user",
    "method",
    "host",
    "url",
    "dest_ip",
    "dest_port",
    "status",
    "bytes_out",
    "bytes_in",
    "action",
    "proto",
    "ctime",
    "user_agent",
)
_N_ROLES = len(_DICT_ROLES)
_PARTS = ("yyyy", "mth", "dd", "hh", "mm", "ss")
#: default-feed column of each role, with and without stime/ctime
_CSV_POS = {
    with_times: tuple(
        (_WITH_TIMES if with_times else _WITHOUT_TIMES).get(_CSV_ROLES[r], -1)
        for r in (
            "time",
            "user",
            "proto",
            "url",
            "action",
            "bytes_out",
            "bytes_in",
            "ctime",
            "client_ip",
            "dest_ip",
            "method",
            "status",
            "user_agent",
        )
    )
    for with_times in (True, False)
}
_NULL_BYTES = frozenset(n.encode() for n in NULLS)
_BAD_METHODS = frozenset({"INVALID", "NA", "NONE", "N/A", "-"})


def _num(v: Any) -> int | None:
    """An int from a JSON number or a text/bytes field (``None``/``NA`` -> None)."""
    if v is None:
        return None
    if type(v) is int:
        return v if v >= 0 else None
    if isinstance(v, (str, bytes)):
        if v.isdigit() and len(v) < 20:
            return int(v)
        return to_int(v.decode("ascii", "replace") if isinstance(v, bytes) else v)
    if isinstance(v, float) and v == v and 0 <= v < 1e19:
        return int(v)
    return None


def _address(s: Any) -> str | None:
    """Canonical address from text or bytes; Zscaler's ``0.0.0.0`` (a blocked request's
    server) is no address."""
    t = text(s) if isinstance(s, bytes) else str(s)
    v = canonical_ip(t.strip().strip("[]"))
    return None if v in ("0.0.0.0", "::") else v


def _word(s: Any) -> str | None:
    """Text of a value (bytes or str), None for Zscaler's unknowns (None, NA, -)."""
    t = (text(s) if isinstance(s, bytes) else str(s)).strip()
    return None if t in NULLS else t


class _Parse:
    """Per-parse state: memoised conversions and the Observation builder."""

    def __init__(self, fmt: str, host_filter: HostFilter | None):
        self.fmt = fmt
        self.host_filter = host_filter
        self.keep = host_keeper(host_filter, _CACHE_LIMIT)
        #: a record whose host ``keep`` rejects is kept when sent to a provider's published
        #: ingress address or LLM-shaped (URL path, User-Agent)
        self.record = record_keeper(host_filter, _CACHE_LIMIT)
        self.times: dict[str | None, TimeParser] = {None: TimeParser("auto")}
        self.tcache: dict[Any, float | None] = {}  # (tz, text) / bytes -> ts
        self.ip = memoised(_address, _CACHE_LIMIT)
        self.word = memoised(_word, _CACHE_LIMIT)
        self.url = memoised(url_target, _CACHE_LIMIT)
        self.plans: dict[tuple[str, ...], tuple[str | None, ...]] = {}

    def time(self, t: Any, tz: str | None = None) -> float | None:
        key = (tz, t) if tz is not None else t
        v = self.tcache.get(key, _MISSING)
        if v is _MISSING:
            tp = self.times.get(tz)
            if tp is None:
                try:
                    tp = TimeParser("auto", make_tz(tz))
                except Exception:  # an unknown zone name: read the times as UTC
                    tp = self.times[None]
                if len(self.times) > 64:
                    self.times = {None: self.times[None]}
                self.times[tz] = tp
            if len(self.tcache) > _CACHE_LIMIT:
                self.tcache.clear()
            v = self.tcache[key] = tp(text(t) if isinstance(t, bytes) else str(t))
        return v  # type: ignore[return-value]

    def key_of(self, role: str) -> bytes | None:
        """The key the first record read names ``role`` with (None: it has none), for
        reading the values of the next records straight from their bytes."""
        k = next(iter(self.plans.values()))[_DICT_ROLES.index(role)]
        return k.encode() if k is not None else None

    def plan(self, d: dict[str, Any]) -> tuple[str | None, ...]:
        """The key of each role in this record (None: not logged), resolved once per
        distinct key set; then the key of each time component."""
        keys = tuple(d)
        p = self.plans.get(keys)
        if p is None:
            by_norm: dict[str, str] = {}
            for k in keys:
                by_norm.setdefault(_norm(k), k)
            found: dict[str, str | None] = {}
            for role, names in ROLES.items():
                found[role] = next((by_norm[n] for n in names if n in by_norm), None)
            p = tuple(found[r] for r in _DICT_ROLES + _PARTS)
            if len(self.plans) > 256:
                self.plans.clear()
            self.plans[keys] = p
        return p

    def target(
        self, method: str | None, u: str | None, h: str | None, proto: str | None
    ) -> tuple[str | None, int | None, str | None, str | None]:
        """(dest_host, dest_port, host_source, url) from the URL, else the host field."""
        host = port = hsrc = url = None
        if u is not None:
            host, port, scheme = self.url(u)
            if method == "CONNECT":
                hsrc = "connect" if host else None
            else:
                url = u
                if host is not None:
                    hsrc = "url"
                    if port is None and scheme is None and proto is not None:
                        port = _PROTO_PORTS.get(proto.upper())
        if host is None and h is not None:
            host, hport = split_host_port(h)
            if host is not None:
                hsrc = "connect" if method == "CONNECT" else "http_host"
                if port is None and hport is not None and 0 < hport < 65536:
                    port = hport
        return host, port, hsrc, url

    def build(self, d: dict[str, Any], raw: bytes, source: str, lineno: int):
        """Observation, None (rejected by the host filter) or why it is malformed, from a
        JSON or key=value record."""
        p = self.plan(d)
        get = d.get
        (
            k_epoch,
            k_time,
            k_tz,
            k_client,
            k_alt,
            k_cport,
            k_user,
            k_method,
            k_host,
            k_url,
            k_dip,
            k_dport,
            k_status,
            k_out,
            k_in,
            k_action,
            k_proto,
            k_ctime,
            k_ua,
        ) = p[:_N_ROLES]
        ts = None
        if k_epoch is not None:
            e = _num(get(k_epoch))
            if e is not None and 0 < e < 1e11:
                ts = float(e)
        t = get(k_time) if k_time is not None else None
        if ts is None and t is not None and t not in NULLS:
            tz = get(k_tz) if k_tz is not None else None
            if tz in NULLS or tz in ("GMT", "UTC"):
                tz = None
            ts = self.time(t, tz)
        if ts is None:
            parts = [get(k) if k is not None else None for k in p[_N_ROLES:]]
            if all(isinstance(x, (str, int)) and str(x).isdigit() for x in parts):
                ts = self.time("{}-{:0>2}-{:0>2} {:0>2}:{:0>2}:{:0>2}".format(*parts))
            if ts is None:
                return f"bad time {str(t)[:40]!r}" if t is not None else "no time in record"
        w = self.word
        m = get(k_method) if k_method is not None else None
        method = w(m) if m is not None else None
        if method is not None:
            method = method.upper()
            if method in _BAD_METHODS:
                method = None
        u = get(k_url) if k_url is not None else None
        if u is not None:
            u = w(u)
        h = get(k_host) if k_host is not None else None
        if h is not None:
            h = w(h)
        pr = get(k_proto) if k_proto is not None else None
        host, port, hsrc, url = self.target(method, u, h, w(pr) if pr is not None else None)
        if k_dport is not None:
            dp = _num(get(k_dport))
            if dp is not None and 0 < dp < 65536:
                port = dp
        di = get(k_dip) if k_dip is not None else None
        dest_ip = self.ip(di) if di is not None else None
        ua = get(k_ua) if k_ua is not None else None
        agent = w(ua) if ua is not None else None
        if not self.record(host, dest_ip, url, agent):
            return None
        c = get(k_client) if k_client is not None else None
        client = self.ip(c) if c is not None else None
        pub = get(k_alt) if k_alt is not None else None
        egress = self.ip(pub) if pub is not None else None  # the client's public address
        if client is None:
            client = egress
        cport = _num(get(k_cport)) if k_cport is not None else None
        if cport is not None and not 0 < cport < 65536:
            cport = None
        ctime = _num(get(k_ctime)) if k_ctime is not None else None
        user = get(k_user) if k_user is not None else None
        action = get(k_action) if k_action is not None else None
        return Observation(
            ts,
            source,
            lineno,
            self.fmt,
            client,
            cport,
            w(user) if user is not None else None,
            method,
            host,
            port,
            dest_ip,
            url,
            http_status(_num(get(k_status))) if k_status is not None else None,
            bounded(_num(get(k_out))) if k_out is not None else None,
            bounded(_num(get(k_in))) if k_in is not None else None,
            hsrc,
            w(action) if action is not None else None,
            ctime / 1000 if ctime is not None else None,
            user_agent=agent,
            egress_ip=egress,
            record_id=record_id(raw),
        )

    def build_csv(self, f: list[bytes], raw: bytes, source: str, lineno: int):
        """The same from the default feed's fields (bytes)."""
        with_times = len(f) > 10 and f[9].isdigit() and f[10].isdigit()
        need = _CSV_MIN[with_times]
        if len(f) < need:
            return f"truncated record: {len(f)} fields, the default web feed has at least {need}"
        (
            i_time,
            i_user,
            i_proto,
            i_url,
            i_action,
            i_out,
            i_in,
            i_ctime,
            i_client,
            i_dip,
            i_method,
            i_status,
            i_ua,
        ) = _CSV_POS[with_times]
        tb = f[i_time]
        ts = self.tcache.get(tb, _MISSING)
        if ts is _MISSING:
            ts = self.time(tb)
        if ts is None:
            return f"bad time {text(tb)[:40]!r}"
        w = self.word
        method = w(f[i_method])
        if method is not None:
            method = method.upper()
            if method in _BAD_METHODS:
                method = None
        host, port, hsrc, url = self.target(method, w(f[i_url]), None, w(f[i_proto]))
        dest_ip = self.ip(f[i_dip])
        agent = w(f[i_ua]) if len(f) > i_ua else None
        if not self.record(host, dest_ip, url, agent):
            return None
        ctime = _num(f[i_ctime]) if i_ctime >= 0 else None
        return Observation(
            ts,  # type: ignore[arg-type]
            source,
            lineno,
            self.fmt,
            self.ip(f[i_client]),
            None,
            w(f[i_user]),
            method,
            host,
            port,
            dest_ip,
            url,
            http_status(_num(f[i_status])),
            bounded(_num(f[i_out])),
            bounded(_num(f[i_in])),
            hsrc,
            w(f[i_action]),
            ctime / 1000 if ctime is not None else None,
            user_agent=agent,
            record_id=record_id(raw),
        )


class _Skim:
    """Reads the URL, server address and User-Agent of a JSON or key=value record straight
    from its bytes (under the keys the first record used), so that a record the filter
    rejects costs no full parse. Anything not plain (escapes, quotes, other spacing) is
    left to the full parse."""

    __slots__ = ("st", "json", "url", "dest_ip", "user_agent")

    def __init__(self, st: _Parse, json: bool, keys: dict[str, bytes | None]):
        self.st = st
        self.json = json
        self.url, self.dest_ip, self.user_agent = keys["url"], keys["dest_ip"], keys["user_agent"]

    @classmethod
    def of(cls, st: _Parse, json: bool) -> _Skim | None:
        keys = {role: st.key_of(role) for role in ("url", "dest_ip", "user_agent")}
        return cls(st, json, keys) if keys["url"] is not None else None

    def value(self, line: bytes, key: bytes | None, spaces: bool = False) -> Any:
        """The plain value of ``key`` (bytes), None when the record has no such key,
        _MISSING when it cannot be read without a full parse. ``spaces``: the value may
        hold spaces (key=value records then end values at tabs only)."""
        if key is None:
            return None
        if self.json:
            needle = b'"' + key + b'":"'
            i = line.find(needle)
            if i < 0:
                return _MISSING if b'"' + key + b'"' in line else None
            j = i + len(needle)
            k = line.find(b'"', j)
            v = line[j:k]
            return v if k >= j and b"\\" not in v else _MISSING
        for sep in (b"\t", b" ", b"|"):
            i = line.find(sep + key + b"=")
            if i >= 0:
                break
        else:
            return _MISSING if key + b"=" in line else None
        j = i + len(key) + 2
        ends = (b"\t",) if spaces else (b"\t", b" ")
        if spaces and b"\t" not in line:
            return _MISSING  # space-separated (CEF): where the value ends is not plain
        end = len(line)
        for sep in ends:
            k = line.find(sep, j)
            if 0 <= k < end:
                end = k
        v = line[j:end]
        return v if v[:1] != b'"' and b"\\" not in v else _MISSING

    def rejects(self, line: bytes) -> bool:
        u = self.value(line, self.url)
        if not u or u is _MISSING:
            return False
        st = self.st
        url = text(u)
        host = st.url(url)[0]
        if host is None or st.keep(host):
            return False
        ip = self.value(line, self.dest_ip)
        agent = self.value(line, self.user_agent, spaces=True)
        if ip is _MISSING or agent is _MISSING:
            return False
        return not st.record(
            host, st.ip(ip) if ip else None, url, st.word(agent) if agent else None
        )


class ZscalerCollector(Collector):
    """Zscaler NSS web feed; ``variant`` is ``csv``, ``json``, ``kv`` or ``auto`` (each
    line is read in the output type it looks like)."""

    name = "zscaler"

    def __init__(self, variant: str = "auto"):
        if variant not in ("auto", "csv", "json", "kv"):
            raise ValueError(f"unknown Zscaler variant {variant!r}")
        self.variant = variant

    def read(self, job: ParseInput) -> Iterator[Observation]:
        stream, source, diag, host_filter = job
        kinds = {"csv": FORMAT_CSV, "json": FORMAT_JSON, "kv": FORMAT_KV}
        st = _Parse(kinds.get(self.variant, FORMAT_JSON), host_filter)
        variant = self.variant
        records = 0
        skims: dict[str, _Skim | None] = {}  # "json"/"kv" -> reads rejected records early
        filtering = host_filter is not None
        json_rec, kv_rec, csv_rec = self._json, self._kv, self._csv
        try:
            for base, lines, _clean in iter_batches(stream, source, diag):
                for lineno, line in enumerate(lines, base + 1):
                    if not line or line[:1] == b"#" or not line.strip():
                        diag.skipped += 1
                        continue
                    kind = variant
                    if kind == "auto":
                        s = sniff(line)
                        kind = {FORMAT_CSV: "csv", FORMAT_JSON: "json", FORMAT_KV: "kv"}.get(
                            s or "", "json" if line.lstrip()[:1] == b"{" else "csv"
                        )
                        st.fmt = kinds[kind]
                    if kind in ("json", "kv"):
                        skim = skims.get(kind)
                        if skim is not None and skim.rejects(line):
                            records += 1
                            continue
                        res = (json_rec if kind == "json" else kv_rec)(line, lineno, source, st)
                        if filtering and kind not in skims and st.plans:
                            skims[kind] = _Skim.of(st, kind == "json")
                    else:
                        res = csv_rec(line, lineno, source, st)
                    if res is None:
                        records += 1
                    elif type(res) is str:
                        diag.malformed_record(source, lineno, res, line)
                    else:
                        records += 1
                        yield res  # type: ignore[misc]
        finally:
            diag.records += records

    def _json(self, line: bytes, lineno: int, source: str, st: _Parse):
        try:
            d = _loads(line)
        except _JSON_ERRORS:
            return "not a JSON object"
        if not isinstance(d, dict):
            return "not a JSON object"
        ev = d.get("event")
        if isinstance(ev, dict):
            d = ev
        try:
            return st.build(d, line, source, lineno)
        except (TypeError, ValueError, OverflowError):  # a list or object where text belongs
            return "unreadable field value"

    def _kv(self, line: bytes, lineno: int, source: str, st: _Parse):
        if b"\x00" in line:
            return "NUL bytes in line"
        s = text(line)
        d = parse_kv(s)
        if not d:
            return "no key=value pairs"
        if "CEF:" in s:
            hdr = s[s.find("CEF:") :].split("|", 7)
            if len(hdr) == 8 and "act" not in d and "action" not in d:
                d["act"] = hdr[4]  # CEF signature id: %s{action} in Zscaler's template
        elif "LEEF:" in s and "cat" in d and "action" not in d and "act" not in d:
            d["action"] = d.pop("cat")  # LEEF: cat=%s{action}
        try:
            return st.build(d, line, source, lineno)
        except (TypeError, ValueError, OverflowError):
            return "unreadable field value"

    def _csv(self, line: bytes, lineno: int, source: str, st: _Parse):
        if b"\x00" in line:
            return "NUL bytes in line"
        f = _csv_fields(line)
        if f is None:
            return "unbalanced quotes"
        return st.build_csv(f, line, source, lineno)


FORMAT_SPECS = [
    FormatSpec(
        fmt,
        f"Zscaler NSS web feed, {what}",
        lambda options, catalog, variant=variant: ZscalerCollector(variant),
        sniff_line=lambda line, fmt=fmt: sniff(line) == fmt,
        splittable=True,
    )
    for fmt, variant, what in (
        (FORMAT_CSV, "csv", "default fields (CSV or tab-separated)"),
        (FORMAT_JSON, "json", "JSON (Splunk zscalernss-web wrapper or bare)"),
        (FORMAT_KV, "kv", "key=value (LEEF, CEF, tab-separated pairs)"),
    )
]
