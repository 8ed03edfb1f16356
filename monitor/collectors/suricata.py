"""Suricata ``eve.json``: ``tls``, ``quic``, ``http``, ``dns`` and ``flow`` events, joined by
``flow_id`` (see :class:`~monitor.collectors.zeek.FlowJoin`).

One observation per connection for TLS (``tls.sni``) and QUIC (``quic.sni``), one per HTTP
request (``http.hostname``, ``url``, ``http_method``, ``status``); the ``flow`` event that
Suricata writes when the flow ends supplies start, end, packets and bytes. A flow that no
event named is reported on its own, named by the DNS answers seen before it (``dns``
events, eve formats v1 per answer, v2 ``answers``/``grouped`` and v3 ``queries``/
``answers``) or by the catalogue's published ranges, as the capture collector names it.
DNS flows (``app_proto`` dns, port 53/5353) feed the name map and are not reported.

Speed: the event type is read with a substring search (``"event_type":"tls"``) before any
JSON is parsed, so ``alert``, ``stats``, ``fileinfo``, ``anomaly``… lines cost one
``bytes.find`` and are counted as skipped without being parsed. Lines are parsed with
``orjson`` when it is installed (3-4x faster than :func:`json.loads`), else with
:mod:`json`. A line whose event type cannot be found that way (re-serialised JSON with
spaces) is parsed to find it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from monitor.collectors.base import (
    Diagnostics,
    FormatSpec,
    ParseInput,
    iter_batches,
)
from monitor.collectors.fields import JSON_ERRORS as _JSON_ERRORS
from monitor.collectors.fields import loads as _loads
from monitor.collectors.zeek import (
    DNS_PORTS,
    FlowJoin,
    FlowStats,
    Head,
    IpCache,
    JoinCollector,
    http_observation,
    http_target,
    iso_ts,
    ja4_value,
    tls_observation,
)
from monitor.ids import record_id
from monitor.observation import Observation, bounded, http_status

__all__ = ["SuricataCollector", "sniff", "JSON_PARSER"]

FORMAT = "suricata-eve"
JSON_PARSER = _loads.__module__ if hasattr(_loads, "__module__") else "json"
_WANTED = frozenset({b"tls", b"quic", b"http", b"dns", b"flow"})
_MARK = b'"event_type":"'
#: the counters of a ``flow`` event, in :class:`FlowStats`' order
_FLOW_COUNTS = ("bytes_toserver", "bytes_toclient", "pkts_toserver", "pkts_toclient")
#: the transports a flow is reported alone for (as Suricata spells them, or numbers them)
_FLOW_PROTOS = ("TCP", "UDP", "tcp", "udp", 6, 17, "006", "017")
#: events known without parsing to name nothing: DNS queries, flows of DNS
_DNS_QUERY = b'"type":"query"'
_DNS_FLOW = b'"app_proto":"dns"'


def sniff(line: bytes) -> bool:
    """One line of eve.json."""
    return line[:1] == b"{" and b'"event_type"' in line and b'"timestamp"' in line


def _port(v: Any) -> int | None:
    return v if type(v) is int and 0 <= v < 65536 else None


def _count(v: Any) -> int | None:
    return bounded(v) if type(v) is int else None


def _str(v: Any) -> str | None:
    return v if type(v) is str and v else None


class SuricataCollector(JoinCollector):
    """Suricata eve.json (plain, gzip or bzip2) -> observations per flow / HTTP request."""

    name = FORMAT

    def read(self, job: ParseInput) -> Iterator[Observation]:
        stream, source, diag, host_filter = job
        join = self._join(host_filter)
        ready = join.ready
        loads = _loads
        errors = _JSON_ERRORS
        wanted = _WANTED
        mark = _MARK
        handle = self._event
        dns_query, dns_flow = _DNS_QUERY, _DNS_FLOW
        self._ip = IpCache()
        records = skipped = 0
        try:
            for base, lines, _clean in iter_batches(stream, source, diag):
                lineno = base
                for line in lines:
                    lineno += 1
                    i = line.find(mark)
                    if i >= 0:
                        i += 14
                        et = line[i : line.find(b'"', i)]
                        if et not in wanted:
                            skipped += 1
                            continue
                        if et == b"dns":
                            if dns_query in line:
                                records += 1
                                continue
                        elif et == b"flow" and dns_flow in line:
                            records += 1
                            continue
                    elif not line.strip():
                        skipped += 1
                        continue
                    else:
                        et = None
                    try:
                        d = loads(line)
                    except errors as exc:
                        diag.malformed_record(source, lineno, f"not JSON: {exc}", line)
                        continue
                    if type(d) is not dict:
                        diag.malformed_record(source, lineno, "not a JSON object", line)
                        continue
                    if et is None:
                        e = d.get("event_type")
                        if type(e) is not str:
                            diag.malformed_record(source, lineno, "no event_type", line)
                            continue
                        et = e.encode()
                        if et not in wanted:
                            skipped += 1
                            continue
                    records += 1
                    try:
                        handle(join, et, d, line, lineno, source, diag)
                    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
                        diag.malformed_record(source, lineno, f"unreadable event: {exc}", line)
                        continue
                    if ready:
                        yield from ready
                        ready.clear()
        finally:
            diag.records += records
            diag.skipped += skipped
        yield from self._drain(join, source, diag, "flow")

    def _event(
        self,
        join: FlowJoin,
        et: bytes,
        d: dict,
        raw: bytes,
        lineno: int,
        source: str,
        diag: Diagnostics,
    ) -> None:
        f = d.get("flow") if et == b"flow" else None
        start = iso_ts(f.get("start")) if type(f) is dict else None
        ts = start if start is not None else iso_ts(d.get("timestamp"))
        if ts is None:
            diag.malformed_record(source, lineno, "bad or missing timestamp", raw)
            return
        if et == b"dns":
            self._dns(join, d.get("dns"), ts)
            return
        key = d.get("flow_id")
        if type(key) is not int:
            key = (source, lineno)  # joins nothing; reported at the end
        ip = self._ip
        client = ip(d.get("src_ip"))
        server = ip(d.get("dest_ip"))
        cport, sport = _port(d.get("src_port")), _port(d.get("dest_port"))
        head = Head(ts, source, lineno, FORMAT, client, cport, server, sport)
        if et == b"flow":
            if type(f) is not dict:
                diag.malformed_record(source, lineno, "flow event without flow object", raw)
                return
            end = iso_ts(f.get("end"))
            duration = max(end - ts, 0.0) if end is not None else None
            st = FlowStats(head, end, duration, *[_count(f.get(k)) for k in _FLOW_COUNTS])
            app = d.get("app_proto")
            alone = (
                d.get("proto") in _FLOW_PROTOS
                and app != "dns"
                and sport not in DNS_PORTS
                and cport not in DNS_PORTS
            )
            join.flow(key, st, alone, raw)
            return
        if et == b"http":
            h = d.get("http")
            if type(h) is not dict:
                h = {}
            method = _str(h.get("http_method"))
            target = http_target(method, _str(h.get("hostname")), _str(h.get("url")), sport)
            status = h.get("status")
            if type(status) is str and status.isdigit():
                status = int(status)
            status = http_status(status) if type(status) is int else None
            length = _count(h.get("length"))
            obs = http_observation(head, method, target, status, None, length, record_id(raw))
            obs.user_agent = _str(h.get("http_user_agent"))
            join.named(key, obs, tls=False)
            return
        # tls / quic
        sub = d.get("tls" if et == b"tls" else "quic")
        sni = _str(sub.get("sni")) if type(sub) is dict else None
        obs = tls_observation(head, sni, record_id(raw))
        if type(sub) is dict:
            obs.ja4 = ja4_value(sub.get("ja4"))
        join.named(key, obs, tls=True)

    @staticmethod
    def _dns(join: FlowJoin, dns: Any, ts: float) -> None:
        if type(dns) is not dict or dns.get("type") not in ("answer", "response"):
            return
        qname = _str(dns.get("rrname"))
        if qname is None:
            queries = dns.get("queries")
            if type(queries) is list and queries and type(queries[0]) is dict:
                qname = _str(queries[0].get("rrname"))
        answers = dns.get("answers")
        out: list[tuple[str | None, str, str]] = []
        if type(answers) is list:  # v2 / v3 detailed
            for a in answers:
                if type(a) is dict:
                    rt, rd = a.get("rrtype"), a.get("rdata")
                    if rt in ("A", "AAAA", "CNAME") and type(rd) is str:
                        out.append((_str(a.get("rrname")), rt, rd))
        elif type(dns.get("grouped")) is dict:  # v2 grouped only: all owned by the query
            for rt in ("CNAME", "A", "AAAA"):
                vals = dns["grouped"].get(rt)
                if type(vals) is list:
                    out.extend((None, rt, v) for v in vals if type(v) is str)
        elif dns.get("rrtype") in ("A", "AAAA", "CNAME") and type(dns.get("rdata")) is str:
            out.append((qname, dns["rrtype"], dns["rdata"]))  # v1: one event per answer
        if out:
            join.learn(qname, out, ts)


FORMAT_SPECS = [
    FormatSpec(
        FORMAT,
        "Suricata eve.json (tls, quic, http, dns, flow events)",
        SuricataCollector.made,
        sniff_line=sniff,
    )
]
