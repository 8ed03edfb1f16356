"""Suricata eve.json: events joined by flow_id, DNS naming, detection, fuzzing, the CLI, and
the real Suricata run over a scapy capture, compared with the capture collector."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR

from monitor.cli import EXIT_FINDINGS, main
from monitor.collectors import CollectOptions, Diagnostics, collect, format_of
from monitor.collectors.pcap import PcapCollector
from monitor.collectors.suricata import SuricataCollector, sniff
from monitor.observation import HOST_SOURCES
from tests import conftest
from tests.pcaps import (
    T0,
    Tcp,
    client_hello,
    dns_response,
    http_request,
    http_response,
    udp,
    with_ether,
    write_scapy,
)
from tests.test_quic import crypto_frame, padded, protect

FLOW_ID = 1130194972602232


def ev(event_type: str, ts: float = T0, flow_id: int | None = FLOW_ID, **kw) -> dict:
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")
    d: dict = {"timestamp": stamp}
    if flow_id is not None:
        d["flow_id"] = flow_id
    d |= {"event_type": event_type, "src_ip": "10.0.0.5", "src_port": 40004}
    d |= {"dest_ip": "162.159.140.245", "dest_port": 443, "proto": "TCP"}
    d.update(kw)
    return d


def flow(ts: float = T0, flow_id: int = FLOW_ID, app: str | None = "tls", **kw) -> dict:
    from datetime import UTC, datetime

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")

    f = {"pkts_toserver": 6, "pkts_toclient": 3, "bytes_toserver": 574, "bytes_toclient": 332}
    f |= {"start": iso(ts), "end": iso(ts + 2.5), "state": "closed", "reason": "shutdown"}
    d = ev("flow", ts + 10, flow_id, flow=f, **kw)
    if app:
        d["app_proto"] = app
    return d


def eve(*events: dict) -> bytes:
    return b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)


def parse(data: bytes, host_filter=None, **kw):
    c = SuricataCollector(**kw)
    return (*conftest.parse(c, data, "eve.json", host_filter), c)


# ----------------------------------------------------------------------------- events


def test_tls_joined_with_its_flow():
    data = eve(
        ev("alert", alert={"signature": "x"}, tls={"sni": "evil.test"}),
        ev("tls", T0 + 0.01, tls={"sni": "API.Anthropic.com", "version": "TLS 1.3"}),
        ev("stats", flow_id=None, stats={"uptime": 1}),
        flow(T0),
    )
    obs, diag, _ = parse(data)
    (o,) = obs
    assert (o.dest_host, o.host_source, o.line, o.format) == (
        "api.anthropic.com",
        "sni",
        2,
        "suricata-eve",
    )
    assert (o.client_ip, o.client_port, o.dest_ip, o.dest_port) == (
        "10.0.0.5",
        40004,
        "162.159.140.245",
        443,
    )
    assert (o.bytes_out, o.bytes_in, o.packets_out, o.packets_in) == (574, 332, 6, 3)
    assert o.ts == T0 and o.ts_end == T0 + 2.5 and o.duration == 2.5
    assert diag.records == 2 and diag.skipped == 2 and diag.malformed == 0
    assert o.record_id and len(o.record_id) == 24


def test_http_requests_quic_and_proxy_connect():
    data = eve(
        ev("http", flow_id=7, dest_port=80, http={"hostname": "api.openai.com", "url": "/v1/x"})
        | {"src_port": 1},
        ev("http", flow_id=8, http={"hostname": "a.test", "url": "/1", "http_method": "GET"}),
        ev("http", flow_id=8, http={"hostname": "a.test", "url": "/2", "status": 404, "length": 9}),
        ev("http", flow_id=9, http={"url": "api.deepseek.com:443", "http_method": "CONNECT"}),
        ev("quic", flow_id=10, proto="UDP", quic={"version": "1", "sni": "api.mistral.ai"}),
        ev("quic", flow_id=10, proto="UDP", quic={"version": "1"}),
        flow(flow_id=7, app="http"),
        flow(flow_id=8, app="http"),
        flow(flow_id=10, app="quic", proto="UDP"),
    )
    obs, diag, _ = parse(data)
    assert diag.malformed == 0
    by = {(o.dest_host, o.url): o for o in obs}
    one = by[("api.openai.com", "http://api.openai.com/v1/x")]
    assert one.host_source == "http_host" and one.bytes_out == 574 and one.dest_port == 80
    two = [o for o in obs if o.dest_host == "a.test"]
    assert [(o.url, o.status, o.bytes_in, o.packets_in) for o in two] == [
        ("http://a.test/1", None, None, None),
        ("http://a.test/2", 404, 9, None),
    ]
    proxy = by[("api.deepseek.com", None)]
    assert proxy.host_source == "connect" and proxy.dest_port == 443 and proxy.dest_ip is None
    (quic,) = [o for o in obs if o.dest_host == "api.mistral.ai"]
    assert quic.host_source == "sni" and quic.packets_out == 6
    assert len(obs) == 5


@pytest.mark.parametrize("version", ["v1", "v2", "v2-grouped", "v3"])
def test_dns_answers_name_flows_without_sni(version):
    ans = [
        {"rrname": "api.openai.com", "rrtype": "CNAME", "ttl": 300, "rdata": "x.cdn.net"},
        {"rrname": "x.cdn.net", "rrtype": "A", "ttl": 300, "rdata": "104.18.7.192"},
    ]
    if version == "v1":
        dns = [
            {"type": "answer", "rrname": "api.openai.com", "rrtype": "A", "rdata": "104.18.7.192"}
        ]
    elif version == "v2":
        dns = [{"version": 2, "type": "answer", "rrname": "api.openai.com", "answers": ans}]
    elif version == "v2-grouped":
        grouped = {"A": ["104.18.7.192"], "CNAME": ["x.cdn.net"]}
        dns = [{"version": 2, "type": "answer", "rrname": "api.openai.com", "grouped": grouped}]
    else:
        q = [{"rrname": "api.openai.com", "rrtype": "A"}]
        dns = [{"version": 3, "type": "response", "queries": q, "answers": ans}]
    events = [ev("dns", T0 - 1, flow_id=3, proto="UDP", dns=d) for d in dns]
    events += [
        ev("tls", flow_id=4, dest_ip="104.18.7.192", tls={"version": "TLS 1.3"}),
        flow(T0, flow_id=4, dest_ip="104.18.7.192"),
        flow(T0, flow_id=5, app=None, dest_ip="104.18.7.192", src_port=40005),
        flow(T0 - 1, flow_id=3, app="dns", proto="UDP", dest_port=53),
    ]
    obs, diag, _ = parse(eve(*events))
    assert [(o.dest_host, o.host_source, o.client_port) for o in obs] == [
        ("api.openai.com", "dns", 40004),
        ("api.openai.com", "dns", 40005),
    ]
    assert diag.malformed == 0


def test_names_by_catalogue_ranges_and_host_filter():
    from monitor.catalog import bundled_catalog

    cat = bundled_catalog()
    ip = "160.79.104.10"  # Anthropic's published range
    if cat.match_ip(ip) is None:
        pytest.skip("catalogue has no range for the test address")
    data = eve(flow(flow_id=6, app=None, dest_ip=ip))
    obs, _d, _c = parse(data, catalog=cat)
    assert [(o.dest_host, o.host_source) for o in obs] == [(ip, "ip")]

    data = eve(ev("tls", tls={"sni": "www.example.com"}), flow())
    obs, diag, _ = parse(data, host_filter=lambda h: h.endswith("anthropic.com"))
    assert obs == [] and diag.records == 2


def test_malformed_lines_are_reported_not_raised():
    data = (
        b'{"timestamp":"2023-11-14T22:13:20.0+0000","event_type":"tls","tls":\n'
        + b"not json at all\n"
        + b"\n"
        + b"[1,2]\n"
        + b'{"timestamp": "2023-11-14T22:13:20.0+0000", "event_type": "tls", "flow_id": 1,'
        + b' "tls": {"sni": "spaced.test"}}\n'
        + b'{"timestamp":"nope","event_type":"tls","flow_id":2,"tls":{"sni":"x.test"}}\n'
        + b'{"timestamp":"2023-11-14T22:13:20.0+0000","event_type":"flow","flow_id":3}\n'
        + b'{"event":"x"}\n'
        + b'{"timestamp":"2023-11-14T22:13:20.0+0000","event_type":"tls","tls":"x"}\n'
    )
    obs, diag, _ = parse(data)
    assert [o.dest_host for o in obs] == ["spaced.test", None]
    assert [p.line for p in diag.problems] == [1, 2, 4, 6, 7, 8]
    assert diag.skipped == 1


def test_join_bound_notice():
    events = [ev("tls", flow_id=i, tls={"sni": f"h{i}.test"}) for i in range(5)]
    events += [flow(flow_id=i) for i in range(5)]
    obs, diag, c = parse(eve(*events), max_pending=2)
    assert sorted(o.dest_host for o in obs) == [f"h{i}.test" for i in range(5)]
    assert c.last_stats["early"] == 3 and "join bound hit" in str(diag.notices[0])


def test_detection_and_forced_format(tmp_path):
    p = tmp_path / "eve.json"
    p.write_bytes(eve(ev("tls", tls={"sni": "a.test"})))
    assert format_of(str(p), CollectOptions()) == "suricata-eve"
    assert sniff(eve(ev("flow"))) and not sniff(b'{"ts":1.0,"uid":"C1"}')
    diag = Diagnostics()
    assert len(list(collect(str(p), CollectOptions(format="suricata-eve"), diag))) == 1


# ----------------------------------------------------------------------------- fuzzing

SAMPLES = eve(
    ev("tls", tls={"sni": "a.test"}),
    ev("http", http={"hostname": "b.test", "url": "/x", "http_method": "GET", "status": 200}),
    ev("quic", quic={"sni": "c.test"}),
    ev(
        "dns",
        dns={"version": 2, "type": "answer", "rrname": "d.test", "grouped": {"A": ["1.2.3.4"]}},
    ),
    flow(),
    flow(app=None, flow_id=2),
).splitlines()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_never_raise(data):
    diag = Diagnostics()
    for o in SuricataCollector().parse(io.BytesIO(data), "fuzz", diag):
        assert o.source == "fuzz" and o.line >= 1 and o.host_source in (None, *HOST_SOURCES)
    assert all(p.source == "fuzz" and p.line for p in diag.problems)  # file:line, every one
    assert diag.records + diag.malformed <= diag.lines  # at most one record per line


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_events_never_raise(data):
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    out = []
    for _ in range(data.draw(st.integers(1, 20))):
        line = rnd.choice(SAMPLES)
        if rnd.random() < 0.5:  # structural: swap a value for another JSON type
            d = json.loads(line)
            key = rnd.choice(list(d))
            d[key] = rnd.choice([None, 1, -5, 1e308, "x", [], {}, True, "2023-99-99T00:00:00Z"])
            sub = d.get(rnd.choice(["tls", "http", "dns", "quic", "flow"]))
            if isinstance(sub, dict) and sub:
                sub[rnd.choice(list(sub))] = rnd.choice([None, 7, "y", [1], {"a": 1}, -1])
            line = json.dumps(d).encode()
        b = bytearray(line)
        for _ in range(rnd.randint(0, 3)):
            i = rnd.randrange(len(b))
            b[i] = rnd.choice(b'{}[]":,0\\\x00\xff a')
        out.append(bytes(b))
    for o in SuricataCollector().parse(io.BytesIO(b"\n".join(out)), "fuzz", Diagnostics()):
        assert o.host_source in (None, *HOST_SOURCES)


# ----------------------------------------------------------------------------- CLI


def test_cli_parse_and_scan_raise_region_incident(tmp_path):
    p = tmp_path / "eve.json"
    p.write_bytes(
        eve(
            ev("tls", dest_ip="104.18.7.192", tls={"sni": "api.openai.com"}),
            flow(dest_ip="104.18.7.192"),
        )
    )
    runner = CliRunner()
    res = runner.invoke(main, ["parse", str(p), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(x) for x in res.stdout.splitlines()]
    assert row["dest_host"] == "api.openai.com" and row["provider"] == "openai"
    assert row["format"] == "suricata-eve" and row["bytes_out"] == 574
    db = tmp_path / "a.db"
    res = runner.invoke(
        main, ["--db", str(db), "scan", str(p), "--egress-country", "CN"], catch_exceptions=False
    )
    assert res.exit_code in (0, EXIT_FINDINGS), res.output
    res = runner.invoke(main, ["--db", str(db), "incidents", "--json"], catch_exceptions=False)
    incs = [json.loads(x) for x in res.stdout.splitlines()]
    assert any(
        i["rule"] == "provider-region-unsupported" and i["dest_host"] == "api.openai.com"
        for i in incs
    ), incs


# ----------------------------------------------------------------------------- real Suricata

SURICATA_YAML = """%YAML 1.1
---
outputs:
  - eve-log:
      enabled: yes
      filetype: regular
      filename: eve.json
      types:
        - tls:
            extended: yes
        - http:
            extended: yes
        - dns
        - quic
        - flow
app-layer:
  protocols:
    tls:
      enabled: yes
    http:
      enabled: yes
    quic:
      enabled: yes
    dns:
      tcp:
        enabled: yes
      udp:
        enabled: yes
stream:
  midstream: false
logging:
  outputs:
    - console:
        enabled: no
"""


def server_hello() -> bytes:
    """A TLS 1.3 ServerHello, ChangeCipherSpec and one encrypted record: Suricata logs a
    ``tls`` event once the handshake has reached the server's answer."""
    exts = struct.pack("!HHH", 0x002B, 2, 0x0304)
    exts += struct.pack("!HHHH", 0x0033, 36, 0x001D, 32) + bytes(32)
    body = struct.pack("!H", 0x0303) + bytes(32) + b"\x20" + bytes(32) + b"\x13\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    rec = b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs
    return rec + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x20" + bytes(32)


def capture(path: Path) -> Path:
    """DNS (query and answer with a CNAME), TLS with SNI, TLS without SNI and a bare TCP
    flow (both named by the DNS answer), HTTP with Host (two requests on one connection),
    and a QUIC v1 Initial with an SNI."""
    pk = []
    query = bytes(DNS(id=7, rd=1, qd=[DNSQR(qname="api.openai.com", qtype="A")]))
    answer = dns_response(
        "api.openai.com",
        [("api.openai.com", "CNAME", "x.cdn.net"), ("x.cdn.net", "A", "104.18.7.192")],
    )
    pk.append(udp("10.0.0.5", "10.0.0.53", 33333, 53, query, T0))
    pk.append(udp("10.0.0.53", "10.0.0.5", 53, 33333, answer, T0 + 0.01))
    hello = b"\x17\x03\x03\x00\x20" + bytes(32)
    for i, (server, sni) in enumerate(
        [
            ("162.159.140.245", "api.anthropic.com"),
            ("104.18.7.192", "api.openai.com"),
            ("104.18.7.192", None),
            ("93.184.216.34", "www.example.com"),
        ]
    ):
        c = Tcp("10.0.0.5", server, 40010 + i, 443, ts=T0 + 1 + i).handshake()
        c.send(True, client_hello(sni)).send(False, server_hello()).send(True, hello).close()
        pk += c.packets
    c = Tcp("10.0.0.5", "104.18.7.192", 40020, 443, ts=T0 + 6).handshake()
    pk += c.send(True, hello).send(False, hello).close().packets
    c = Tcp("10.0.0.5", "93.184.216.34", 40030, 80, ts=T0 + 7).handshake()
    c.send(True, http_request("GET", "/v1/models", "api.anthropic.com"))
    c.send(False, http_response(200, b"hello"))
    c.send(True, http_request("POST", "/v1/messages", "api.anthropic.com", body=b"{}"))
    c.send(False, http_response(404, b"no"))
    pk += c.close().packets
    ch = client_hello("api.mistral.ai")[5:]
    pk.append(
        udp(
            "10.0.0.5",
            "172.66.0.243",
            50000,
            443,
            protect(padded(crypto_frame(0, ch)), dcid=bytes(range(8))),
            T0 + 8,
        )
    )
    return write_scapy(path, with_ether(sorted(pk, key=lambda p: p.time)))


def _key(o):
    return (o.client_ip, o.client_port, o.dest_ip, o.dest_port, o.dest_host, o.host_source)


@pytest.mark.realtools
def test_real_suricata_agrees_with_the_capture_collector(tmp_path):
    exe = shutil.which("suricata")
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("suricata is required in CI (benchmarks/install_peers.sh installs it)")
        pytest.skip("suricata not installed (benchmarks/install_peers.sh installs it)")
    pcap = capture(tmp_path / "cap.pcap")
    conf = tmp_path / "suricata.yaml"
    conf.write_text(SURICATA_YAML)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [exe, "-c", str(conf), "-r", str(pcap), "-k", "none", "--runmode", "single"]
        + ["-l", str(out), "-S", "/dev/null"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    eve_path = out / "eve.json"
    assert format_of(str(eve_path), CollectOptions()) == "suricata-eve"

    diag = Diagnostics()
    ours = list(collect(str(eve_path), CollectOptions(), diag))
    assert diag.malformed == 0 and not diag.file_errors, diag.problems
    pdiag = Diagnostics()
    with open(pcap, "rb") as f:
        theirs = list(PcapCollector().parse(f, str(pcap), pdiag))

    assert sorted(map(_key, ours), key=str) == sorted(map(_key, theirs), key=str)
    names = {o.dest_host for o in ours}
    assert names >= {"api.anthropic.com", "api.openai.com", "www.example.com", "api.mistral.ai"}
    http = sorted((o.method, o.url, o.status) for o in ours if o.method)
    assert http == sorted((o.method, o.url, o.status) for o in theirs if o.method)
    assert http == [
        ("GET", "http://api.anthropic.com/v1/models", 200),
        ("POST", "http://api.anthropic.com/v1/messages", 404),
    ]
    # the connection's start and end agree with the capture's first and last packet
    theirs_by = {_key(o): o for o in theirs if not o.method}
    for o in ours:
        if not o.method:
            t = theirs_by[_key(o)]
            assert abs(o.ts - t.ts) < 1e-3 and abs(o.ts_end - t.ts_end) < 1e-3
            assert (o.packets_out, o.packets_in) == (t.packets_out, t.packets_in)
