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
public address (``cpubip``/``clientpublicIP``) is not the client: it is only used as
``client_ip`` when no client address at all is logged. Zscaler URLs carry no scheme
(``api.openai.com/v1/chat``); a ``CONNECT`` logs ``host:port``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from monitor.collectors.base import (
    Diagnostics,
    FormatSpec,
    HostFilter,
    iter_batches,
)
from monitor.collectors.mapped import (
    NULLS,
    TimeParser,
    make_tz,
    parse_kv,
    record_id,
    text,
    to_int,
    to_port,
    url_target,
)
from monitor.observation import Observation, canonical_ip, split_host_port

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
        return [f.strip(b'"') for f in line.split(b"\t")]
    if line[:1] == b'"' and line[-1:] == b'"':
        parts = line[1:-1].split(b'","')
        if not any(b'"' in p for p in parts):
            return parts
    import csv

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


class _Parse:
    """Per-parse state: caches and the Observation builder."""

    def __init__(self, fmt: str, host_filter: HostFilter | None):
        self.fmt = fmt
        self.host_filter = host_filter
        self.filter_cache: dict[str, bool] = {}
        self.times: dict[str | None, TimeParser] = {None: TimeParser("auto")}
        self.ips: dict[str, str | None] = {}
        self.urls: dict[str, tuple[str | None, int | None, str | None]] = {}
        self.plans: dict[tuple[str, ...], dict[str, str]] = {}

    def keep(self, host: str | None) -> bool:
        if self.host_filter is None or host is None:
            return True
        v = self.filter_cache.get(host)
        if v is None:
            if len(self.filter_cache) > _CACHE_LIMIT:
                self.filter_cache.clear()
            v = self.filter_cache[host] = bool(self.host_filter(host))
        return v

    def ip(self, s: str | None) -> str | None:
        if s is None:
            return None
        v = self.ips.get(s, _MISSING)
        if v is _MISSING:
            if len(self.ips) > _CACHE_LIMIT:
                self.ips.clear()
            v = canonical_ip(s.strip().strip("[]"))
            if v in ("0.0.0.0", "::"):  # Zscaler logs 0.0.0.0 as the server of a blocked request
                v = None
            self.ips[s] = v
        return v  # type: ignore[return-value]

    def url(self, u: str) -> tuple[str | None, int | None, str | None]:
        v = self.urls.get(u)
        if v is None:
            if len(self.urls) > _CACHE_LIMIT:
                self.urls.clear()
            v = self.urls[u] = url_target(u)
        return v

    def plan(self, d: dict[str, Any]) -> dict[str, str]:
        """role -> key of this record, resolved once per distinct key set."""
        keys = tuple(d)
        p = self.plans.get(keys)
        if p is None:
            by_norm: dict[str, str] = {}
            for k in keys:
                by_norm.setdefault(_norm(k), k)
            p = {}
            for role, names in ROLES.items():
                for n in names:
                    if n in by_norm:
                        p[role] = by_norm[n]
                        break
            if len(self.plans) > 256:
                self.plans.clear()
            self.plans[keys] = p
        return p

    def timestamp(self, v: dict[str, str | None]) -> float | None:
        e = v.get("epoch")
        if e is not None:
            t = to_int(e)
            if t is not None and 0 < t < 1e11:
                return float(t)
        tz = v.get("tz")
        tp = self.times.get(tz)
        if tp is None:
            try:
                tp = TimeParser("auto", make_tz(tz))
            except Exception:  # an unknown zone name: read the times as UTC
                tp = self.times[None]
            if len(self.times) > 64:
                self.times = {None: self.times[None]}
            self.times[tz] = tp
        t = v.get("time")
        if t is not None:
            ts = tp(t)
            if ts is not None:
                return ts
        parts = [v.get(k) for k in ("yyyy", "mth", "dd", "hh", "mm", "ss")]
        if all(p is not None and p.isdigit() for p in parts):
            return tp("{}-{:0>2}-{:0>2} {:0>2}:{:0>2}:{:0>2}".format(*parts))
        return None

    def build(
        self, v: dict[str, str | None], raw: bytes, source: str, lineno: int
    ) -> Observation | None | str:
        """Observation, None (rejected by the host filter) or why it is malformed."""
        ts = self.timestamp(v)
        if ts is None:
            t = v.get("time")
            return f"bad time {t[:40]!r}" if t else "no time in record"
        method = v.get("method")
        if method is not None:
            method = method.upper()
            if method in ("INVALID", "NA", "NONE"):
                method = None
        host = port = None
        hsrc = url = None
        u = v.get("url")
        if u is not None:
            if method == "CONNECT":
                host, port, _scheme = self.url(u)
                hsrc = "connect" if host else None
            else:
                host, port, scheme = self.url(u)
                url = u
                if host is not None:
                    hsrc = "url"
                    if port is None and scheme is None:
                        proto = v.get("proto")
                        port = _PROTO_PORTS.get(proto.upper()) if proto else None
        if host is None:
            h = v.get("host")
            if h is not None:
                host, hport = split_host_port(h)
                if host is not None:
                    hsrc = "connect" if method == "CONNECT" else "http_host"
                    port = port if port is not None else hport
        dp = to_port(v.get("dest_port"))
        if dp is not None:
            port = dp
        if not self.keep(host):
            return None
        client = self.ip(v.get("client_ip")) or self.ip(v.get("client_alt"))
        ctime = to_int(v.get("ctime"))
        return Observation(
            ts,
            source,
            lineno,
            self.fmt,
            client,
            to_port(v.get("client_port")),
            v.get("user"),
            method,
            host,
            port,
            self.ip(v.get("dest_ip")),
            url,
            to_int(v.get("status")),
            to_int(v.get("bytes_out")),
            to_int(v.get("bytes_in")),
            hsrc,
            v.get("action"),
            ctime / 1000 if ctime is not None else None,
            record_id=record_id(raw),
        )


def _val(x: Any) -> str | None:
    if x is None or isinstance(x, (dict, list, bool)):
        return None
    s = x if isinstance(x, str) else str(x)
    s = s.strip()
    return None if s in NULLS else s


class ZscalerCollector:
    """Zscaler NSS web feed; ``variant`` is ``csv``, ``json``, ``kv`` or ``auto`` (each
    line is read in the output type it looks like)."""

    name = "zscaler"

    def __init__(self, variant: str = "auto"):
        if variant not in ("auto", "csv", "json", "kv"):
            raise ValueError(f"unknown Zscaler variant {variant!r}")
        self.variant = variant

    def parse(
        self,
        stream: BinaryIO,
        source: str,
        diag: Diagnostics,
        host_filter: HostFilter | None = None,
    ) -> Iterator[Observation]:
        fmt = {"csv": FORMAT_CSV, "json": FORMAT_JSON, "kv": FORMAT_KV}.get(self.variant)
        st = _Parse(fmt or FORMAT_JSON, host_filter)
        variant = self.variant
        records = 0
        fast_key: bytes | None = None  # '"<url key>":"' for skipping rejected JSON records
        filtering = host_filter is not None
        try:
            for base, lines, _clean in iter_batches(stream, source, diag):
                for lineno, line in enumerate(lines, base + 1):
                    if not line.strip() or line.startswith(b"#"):
                        diag.skipped += 1
                        continue
                    kind = variant
                    if kind == "auto":
                        s = sniff(line)
                        kind = {FORMAT_CSV: "csv", FORMAT_JSON: "json", FORMAT_KV: "kv"}.get(
                            s or "", "json" if line.lstrip()[:1] == b"{" else "csv"
                        )
                        st.fmt = {"csv": FORMAT_CSV, "json": FORMAT_JSON, "kv": FORMAT_KV}[kind]
                    if kind == "json":
                        if filtering and fast_key is not None:
                            i = line.find(fast_key)
                            if i >= 0:
                                j = i + len(fast_key)
                                k = line.find(b'"', j)
                                value = line[j:k]
                                if k > j and b"\\" not in value:
                                    host = st.url(text(value))[0]
                                    if host is not None and not st.keep(host):
                                        records += 1
                                        continue
                        res = self._json(line, lineno, source, st)
                        if filtering and fast_key is None and st.plans:
                            p = next(iter(st.plans.values()))
                            if "url" in p:
                                fast_key = b'"' + p["url"].encode() + b'":"'
                    elif kind == "kv":
                        res = self._kv(line, lineno, source, st)
                    else:
                        res = self._csv(line, lineno, source, st)
                    if res is None:
                        records += 1
                    elif isinstance(res, str):
                        diag.malformed_record(source, lineno, res, line)
                    else:
                        records += 1
                        yield res
        finally:
            diag.records += records

    def _dict(
        self, d: dict[str, Any], line: bytes, lineno: int, source: str, st: _Parse
    ) -> Observation | None | str:
        p = st.plan(d)
        v = {role: _val(d[key]) for role, key in p.items()}
        return st.build(v, line, source, lineno)

    def _json(self, line: bytes, lineno: int, source: str, st: _Parse) -> Observation | None | str:
        try:
            d = json.loads(line)
        except (ValueError, RecursionError):
            return "not a JSON object"
        if not isinstance(d, dict):
            return "not a JSON object"
        ev = d.get("event")
        if isinstance(ev, dict):
            d = ev
        return self._dict(d, line, lineno, source, st)

    def _kv(self, line: bytes, lineno: int, source: str, st: _Parse) -> Observation | None | str:
        if b"\x00" in line:
            return "NUL bytes in line"
        s = text(line)
        d = parse_kv(s)
        if not d:
            return "no key=value pairs"
        res_header = None
        if "CEF:" in s:
            hdr = s[s.find("CEF:") :].split("|", 7)
            if len(hdr) == 8:
                res_header = hdr[4]  # CEF signature id: the action in Zscaler's template
        elif "LEEF:" in s and "cat" in d and "action" not in d and "act" not in d:
            d["action"] = d.pop("cat")  # LEEF: cat=%s{action}
        if res_header and "act" not in d and "action" not in d:
            d["act"] = res_header
        return self._dict(d, line, lineno, source, st)

    def _csv(self, line: bytes, lineno: int, source: str, st: _Parse) -> Observation | None | str:
        if b"\x00" in line:
            return "NUL bytes in line"
        f = _csv_fields(line)
        if f is None:
            return "unbalanced quotes"
        with_times = len(f) > 10 and f[9].isdigit() and f[10].isdigit()
        need = _CSV_MIN[with_times]
        if len(f) < need:
            return f"truncated record: {len(f)} fields, the default web feed has at least {need}"
        idx = _WITH_TIMES if with_times else _WITHOUT_TIMES
        v: dict[str, str | None] = {}
        for role, name in _CSV_ROLES.items():
            i = idx.get(name)
            v[role] = _val(text(f[i])) if i is not None else None
        return st.build(v, line, source, lineno)


FORMAT_SPECS = [
    FormatSpec(
        FORMAT_CSV,
        "Zscaler NSS web feed, default fields (CSV or tab-separated)",
        lambda options: ZscalerCollector("csv"),
        sniff_line=lambda line: sniff(line) == FORMAT_CSV,
        splittable=True,
    ),
    FormatSpec(
        FORMAT_JSON,
        "Zscaler NSS web feed, JSON (Splunk zscalernss-web wrapper or bare)",
        lambda options: ZscalerCollector("json"),
        sniff_line=lambda line: sniff(line) == FORMAT_JSON,
        splittable=True,
    ),
    FormatSpec(
        FORMAT_KV,
        "Zscaler NSS web feed, key=value (LEEF, CEF, tab-separated pairs)",
        lambda options: ZscalerCollector("kv"),
        sniff_line=lambda line: sniff(line) == FORMAT_KV,
        splittable=True,
    ),
]
