"""The capture collector: readers, link types, flows, TLS/HTTP/DNS naming, damage, fuzzing."""

from __future__ import annotations

import gzip
import io
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS
from scapy.layers.http import HTTPRequest, HTTPResponse
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from monitor.catalog import Catalog
from monitor.collectors import CollectOptions, collect, detect, open_input
from monitor.collectors.base import Diagnostics
from monitor.collectors.dns import DnsMap, parse_message, read_name
from monitor.collectors.flows import FlowTable
from monitor.collectors.http1 import parse_request_head, parse_response_head
from monitor.collectors.pcap import PcapCollector
from monitor.collectors.tcpstream import Stream
from tests import pcaps
from tests.pcaps import T0, Tcp, client_hello, dns_response, http_request, http_response, udp

CLIENT, SERVER = "10.1.2.3", "93.184.216.34"
ANTHROPIC_IP = "160.79.104.10"  # in Anthropic's published 160.79.104.0/23


def run(path: Path, catalog: Catalog | None = None, **kw):
    diag = Diagnostics()
    col = PcapCollector(catalog, **kw)
    opened = open_input(str(path))
    try:
        obs = list(col.parse(opened.stream, str(path), diag))
    finally:
        opened.close()
    return obs, diag, col


def tls_session(sni: str = "api.openai.com", sport: int = 50000, **kw) -> Tcp:
    s = Tcp(CLIENT, SERVER, sport, 443, **kw).handshake()
    s.send(True, client_hello(sni)).send(False, b"\x16\x03\x03" + bytes(3000)).send(
        True, b"\x17\x03\x03" + bytes(200)
    )
    return s.close()


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize(
    "variant",
    ["pcap-le", "pcap-be", "pcap-ns", "pcap-be-ns", "pcapng", "pcap-gz", "pcapng-gz"],
)
def test_file_variants_give_the_same_flow(tmp_path, variant):
    pkts = pcaps.with_ether(tls_session().packets)
    path = tmp_path / "c.pcap"
    if variant.startswith("pcapng"):
        pcaps.write_scapy(path, pkts, ng=True)
    else:
        pcaps.write_scapy(path, pkts, nano="ns" in variant, big="be" in variant)
    if variant.endswith("gz"):
        gz = tmp_path / "c.pcap.gz"
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path = gz
    obs, diag, _ = run(path)
    assert not diag.file_errors
    assert diag.records == len(pkts) == 11
    assert len(obs) == 1
    o = obs[0]
    assert (o.client_ip, o.client_port, o.dest_ip, o.dest_port) == (CLIENT, 50000, SERVER, 443)
    assert (o.dest_host, o.host_source, o.format, o.line) == ("api.openai.com", "sni", "pcap", 1)
    assert o.ts == pytest.approx(T0 + 0.001, abs=1e-6)
    assert o.ts_end == pytest.approx(T0 + 0.011, abs=1e-6)
    assert (o.packets_out, o.packets_in) == (6, 5)  # SYN ACK CH data FIN ACK / SYN-ACK 3 data FIN
    assert o.bytes_out == len(client_hello("api.openai.com")) + 203
    assert o.bytes_in == 3003
    assert o.ech is False


def frames_of(packets) -> list[tuple[float, bytes]]:
    return [(float(p.time), bytes(p)) for p in packets]


@pytest.mark.parametrize(
    "link", ["raw", "raw-v6", "sll", "sll2", "null-le", "null-be", "loop", "vlan", "qinq"]
)
def test_link_types(tmp_path, link):
    v6 = link in ("raw-v6", "sll2", "null-le")
    c, s = ("2001:db8::1", "2001:db8::2") if v6 else (CLIENT, SERVER)
    ip_pkts = (
        Tcp(c, s, 50001, 443, v6=v6)
        .handshake()
        .send(True, client_hello("claude.ai"))
        .close()
        .packets
    )
    path = tmp_path / "l.pcap"
    if link in ("raw", "raw-v6"):
        pcaps.write_raw(path, frames_of(ip_pkts), 101)
    elif link == "sll":
        pcaps.write_scapy(path, pcaps.with_sll(ip_pkts))
    elif link == "sll2":
        pcaps.write_raw(path, [(t, pcaps.sll2(f)) for t, f in frames_of(ip_pkts)], 276)
    elif link in ("null-le", "null-be"):
        end = "<" if link == "null-le" else ">"
        pcaps.write_raw(path, [(t, pcaps.bsd_loopback(f, end)) for t, f in frames_of(ip_pkts)], 0)
    elif link == "loop":
        pcaps.write_raw(path, [(t, pcaps.bsd_loopback(f, ">")) for t, f in frames_of(ip_pkts)], 108)
    else:
        tags = (100,) if link == "vlan" else (100, 200)
        pcaps.write_scapy(path, pcaps.with_ether(ip_pkts, vlan=tags))
    obs, diag, col = run(path)
    assert not diag.file_errors and diag.skipped == 0
    assert [(o.dest_host, o.client_ip, o.dest_ip) for o in obs] == [("claude.ai", c, s)]


def test_pcapng_several_interfaces_and_link_types(tmp_path):
    a = (
        Tcp(CLIENT, SERVER, 50002, 443)
        .handshake()
        .send(True, client_hello("api.openai.com"))
        .close()
    )
    b = Tcp("2001:db8::5", "2001:db8::6", 50003, 443, ts=T0 + 0.5, v6=True)
    b.handshake().send(True, client_hello("api.mistral.ai")).close()
    frames = [
        (0, t, bytes(pcaps.with_ether([p])[0]))
        for p, (t, _f) in zip(a.packets, frames_of(a.packets), strict=True)
    ]
    frames += [(1, t, pcaps.sll2(f)) for t, f in frames_of(b.packets)]
    frames.sort(key=lambda x: x[1])
    path = pcaps.write_pcapng_raw(tmp_path / "m.pcapng", [1, 276], frames, tsresol=9)
    obs, diag, _ = run(path)
    assert not diag.file_errors
    assert sorted(o.dest_host for o in obs) == ["api.mistral.ai", "api.openai.com"]
    assert min(o.ts for o in obs) == pytest.approx(T0 + 0.001, abs=1e-6)
    big = pcaps.write_pcapng_raw(tmp_path / "be.pcapng", [1, 276], frames, endian=">")
    assert sorted(o.dest_host for o in run(big)[0]) == ["api.mistral.ai", "api.openai.com"]


def test_ipv6_extension_headers(tmp_path):
    s = (
        Tcp("2001:db8::1", "2001:db8::2", 50004, 443, v6=True)
        .handshake()
        .send(True, client_hello("api.openai.com"))
        .close()
    )
    path = pcaps.write_scapy(tmp_path / "x.pcap", pcaps.with_ether(pcaps.with_v6_ext(s.packets)))
    obs, diag, _ = run(path)
    assert [(o.dest_host, o.packets_out, o.packets_in) for o in obs] == [("api.openai.com", 5, 2)]


# ----------------------------------------------------------------------------- TLS


def test_multi_segment_client_hello_out_of_order_with_retransmission(tmp_path):
    ch = client_hello("api.anthropic.com", pq=True, ech=True, shuffle=3)
    assert len(ch) > 1500
    s = Tcp(CLIENT, SERVER, 50005, 443).handshake()
    segs = s.segments(True, ch, cuts=[3, 400, 900, 1300])
    order = [segs[2], segs[0], segs[4], segs[0], segs[3], segs[2], segs[1]]  # late, repeats
    s.add(order).send(False, b"\x16\x03\x03" + bytes(100)).close()
    obs, _, _ = run(pcaps.write_scapy(tmp_path / "o.pcap", pcaps.with_ether(s.packets)))
    assert [(o.dest_host, o.host_source, o.ech) for o in obs] == [
        ("api.anthropic.com", "sni", True)
    ]
    assert obs[0].packets_out == 2 + len(order) + 2  # SYN, ACK, segments, FIN, ACK


def test_overlapping_retransmission_with_new_bytes(tmp_path):
    ch = client_hello("api.openai.com", pq=True)
    s = Tcp(CLIENT, SERVER, 50006, 443).handshake()
    base = s.cseq
    s.add([s.seg(True, "PA", ch[:500], seq=base), s.seg(True, "PA", ch[300:], seq=base + 300)])
    obs, _, _ = run(pcaps.write_scapy(tmp_path / "r.pcap", pcaps.with_ether(s.packets)))
    assert obs[0].dest_host == "api.openai.com"


def test_stream_reassembly_bounds_and_wraparound():
    st_ = Stream(0xFFFFFFF0, limit=64)
    assert st_.add(0xFFFFFFF0 + 8, b"B" * 8) is False  # ahead: kept
    assert st_.add(0xFFFFFFF0, b"A" * 8) is True
    assert bytes(st_.data) == b"A" * 8 + b"B" * 8
    assert st_.add(0, b"C" * 4) is True  # sequence number wrapped
    assert bytes(st_.data).endswith(b"CCCC")
    st_.add(4, b"x" * 100)
    assert st_.overflow and len(st_.data) <= 64


def test_tls_without_handshake_in_capture(tmp_path):
    s = Tcp(CLIENT, SERVER, 50007, 443)
    s.send(True, client_hello("api.openai.com"))
    # server port is higher than the client's here: the ClientHello decides the roles
    s2 = Tcp(CLIENT, SERVER, 9000, 8443, ts=T0 + 1)
    s2.send(False, b"\x17\x03\x03" + bytes(20)).send(True, client_hello("api.cohere.com"))
    obs, _, _ = run(
        pcaps.write_scapy(tmp_path / "m.pcap", pcaps.with_ether(s.packets + s2.packets))
    )
    got = {(o.client_port, o.dest_port, o.dest_host) for o in obs}
    assert got == {(50007, 443, "api.openai.com"), (9000, 8443, "api.cohere.com")}


# ----------------------------------------------------------------------------- HTTP


def test_http_requests_host_status_and_counts(tmp_path):
    s = Tcp(CLIENT, SERVER, 50010, 80).handshake()
    s.send(True, http_request("POST", "/v1/chat/completions", "api.openai.com", b'{"a": 1}'))
    s.send(False, http_response(200, b"x" * 3000))
    s.send(True, http_request("GET", "/v1/models", "api.openai.com:80"))
    s.send(False, http_response(404, b"nope", chunked=True))
    s.close()
    obs, _, _ = run(pcaps.write_scapy(tmp_path / "h.pcap", pcaps.with_ether(s.packets)))
    assert [(o.method, o.url, o.status, o.dest_host, o.host_source, o.dest_port) for o in obs] == [
        (
            "POST",
            "http://api.openai.com/v1/chat/completions",
            200,
            "api.openai.com",
            "http_host",
            80,
        ),
        ("GET", "http://api.openai.com:80/v1/models", 404, "api.openai.com", "http_host", 80),
    ]
    assert obs[0].bytes_out == len(
        http_request("POST", "/v1/chat/completions", "api.openai.com", b'{"a": 1}')
    )
    assert obs[0].bytes_in == len(http_response(200, b"x" * 3000))
    assert obs[1].bytes_in == len(http_response(404, b"nope", chunked=True))
    assert sum(o.packets_out + o.packets_in for o in obs) == len(s.packets)
    assert obs[0].record_id != obs[1].record_id and obs[0].line == obs[1].line == 1


def test_http_connect_to_explicit_proxy(tmp_path):
    s = Tcp(CLIENT, "10.0.0.8", 50011, 3128).handshake()
    s.send(True, http_request("CONNECT", "api.anthropic.com:443", "api.anthropic.com:443"))
    s.send(False, b"HTTP/1.1 200 Connection established\r\n\r\n")
    s.send(True, client_hello("api.anthropic.com")).send(False, bytes(5000)).close()
    obs, _, _ = run(pcaps.write_scapy(tmp_path / "c.pcap", pcaps.with_ether(s.packets)))
    assert len(obs) == 1
    o = obs[0]
    assert (o.method, o.dest_host, o.dest_port, o.host_source, o.status, o.dest_ip) == (
        "CONNECT",
        "api.anthropic.com",
        443,
        "connect",
        200,
        None,  # 10.0.0.8 is the proxy, not the destination
    )
    assert o.packets_out + o.packets_in == len(s.packets)
    # the tunnelled ClientHello gives the CONNECT its JA4 (the name stays the CONNECT's)
    assert o.ja4 is not None and o.ja4.startswith("t13d")


def test_http_connect_tunnel_ja4_and_sni(tmp_path):
    """A CONNECT refused (407) then accepted on the same connection, to an address: the
    accepted one carries the tunnel's JA4 and its SNI names it; the proxy's address is
    never the destination's; a plain-HTTP tunnel gives no name of its own."""
    s = Tcp(CLIENT, "10.0.0.8", 50012, 3128).handshake()
    s.send(True, http_request("CONNECT", "160.79.104.10:443", "160.79.104.10:443"))
    s.send(False, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
    s.send(True, http_request("CONNECT", "160.79.104.10:443", "160.79.104.10:443"))
    s.send(False, b"HTTP/1.1 200 Connection established\r\n\r\n")
    s.send(True, client_hello("api.anthropic.com")).send(False, bytes(3000)).close()
    p = Tcp(CLIENT, "10.0.0.8", 50013, 3128).handshake()
    p.send(True, http_request("CONNECT", "api.openai.com:80", "api.openai.com:80"))
    p.send(False, b"HTTP/1.1 200 Connection established\r\n\r\n")
    p.send(True, http_request("GET", "/v1/models", "api.openai.com")).close()
    packets = pcaps.with_ether(s.packets + p.packets)
    obs, _, _ = run(pcaps.write_scapy(tmp_path / "c.pcap", packets))
    refused, accepted, plain = sorted(obs, key=lambda o: (o.client_port, o.ts))
    assert (refused.status, refused.dest_host, refused.host_source, refused.ja4) == (
        407,
        "160.79.104.10",
        "connect",
        None,
    )
    assert (accepted.status, accepted.dest_host, accepted.host_source) == (
        200,
        "api.anthropic.com",
        "sni",
    )
    assert accepted.ja4 is not None and accepted.ja4.startswith("t13d")
    assert accepted.dest_ip is None and accepted.dest_port == 443
    assert (plain.dest_host, plain.host_source, plain.ja4, plain.dest_ip) == (
        "api.openai.com",
        "connect",
        None,
        None,
    )


def test_hand_http_parsers_agree_with_scapy():
    reqs = [
        http_request("GET", "/v1/models?x=1", "api.openai.com"),
        http_request("POST", "/v1/messages", "api.anthropic.com:8443", b"{}", extra="X-A: b\r\n"),
        http_request("CONNECT", "api.openai.com:443", "api.openai.com:443"),
        b"OPTIONS * HTTP/1.0\r\nhost: Example.COM\r\n\r\n",
    ]
    for raw in reqs:
        mine = parse_request_head(raw.split(b"\r\n\r\n")[0])
        theirs = HTTPRequest(raw)
        assert mine is not None
        assert mine.method == theirs.Method.decode()
        assert mine.target == theirs.Path.decode()
        assert mine.version == theirs.Http_Version.decode()
        assert mine.host == (theirs.Host.decode() if theirs.Host else None)
    for raw in (http_response(200, b"abc"), http_response(404, b"x", chunked=True)):
        mine = parse_response_head(raw.split(b"\r\n\r\n")[0])
        theirs = HTTPResponse(raw)
        assert mine is not None and mine.status == int(theirs.Status_Code)
        cl = theirs.Content_Length
        assert mine.content_length == (int(cl) if cl else None)
        assert mine.chunked == bool(theirs.Transfer_Encoding)
    assert parse_request_head(b"\x16\x03\x01 hello") is None
    assert parse_response_head(b"HTTP/1.1 abc") is None


# ----------------------------------------------------------------------------- DNS


def test_dns_cname_chain_names_a_later_flow_without_sni(tmp_path):
    msg = dns_response(
        "api.openai.com",
        [
            ("api.openai.com", "CNAME", "api.openai.com.cdn.cloudflare.net"),
            ("api.openai.com.cdn.cloudflare.net", "A", "104.18.7.192"),
            ("api.openai.com.cdn.cloudflare.net", "A", "104.18.6.192"),
        ],
    )
    msg6 = dns_response(
        "api.openai.com", [("api.openai.com", "AAAA", "2606:4700::6812:7c0")], qtype="AAAA"
    )
    pkts = [
        udp("10.0.0.53", CLIENT, 53, 40000, msg, T0),
        udp("10.0.0.53", CLIENT, 53, 40001, msg6, T0 + 0.1),
    ]
    # TCP flow with no SNI (encrypted-only bytes) to one of the answers
    s = (
        Tcp(CLIENT, "104.18.6.192", 50020, 443, ts=T0 + 1)
        .handshake()
        .send(True, b"\x17\x03\x03" + bytes(50))
        .close()
    )
    # a flow to the same address *before* the answer is not named by it
    early = Tcp(CLIENT, "104.18.6.192", 50021, 443, ts=T0 - 5).handshake().close()
    path = pcaps.write_scapy(
        tmp_path / "d.pcap", pcaps.with_ether(early.packets + pkts + s.packets)
    )
    obs, _, col = run(path)
    named = {o.client_port: (o.dest_host, o.host_source) for o in obs}
    assert named == {50020: ("api.openai.com", "dns"), 50021: (None, None)}
    dns = col.last_dns
    assert dns.names(bytes([104, 18, 7, 192])) == ["api.openai.com"]
    assert len(dns) == 3  # two A, one AAAA; DNS itself is not reported as flows


def test_dns_names_a_flow_by_its_own_clients_answer(tmp_path):
    """Two clients got different names for one shared address (a CDN): each SNI-less flow
    (e.g. joined mid-stream) is named by the answer its own client received."""
    other = "10.1.2.99"
    a = dns_response("api.anthropic.com", [("api.anthropic.com", "A", "160.79.104.10")])
    b = dns_response("claude.ai", [("claude.ai", "A", "160.79.104.10")], ident=8)
    pkts = [
        udp("10.0.0.53", CLIENT, 53, 40000, a, T0),
        udp("10.0.0.53", other, 53, 40001, b, T0 + 0.5),  # the latest answer overall
    ]
    flows = [
        Tcp(c, "160.79.104.10", port, 443, ts=T0 + 1)
        .handshake()
        .send(True, b"\x17\x03\x03" + bytes(9))
        for c, port in ((CLIENT, 50030), (other, 50031), ("10.1.2.7", 50032))
    ]
    path = pcaps.write_scapy(
        tmp_path / "c.pcap", pcaps.with_ether(pkts + [p for f in flows for p in f.packets])
    )
    obs, _, col = run(path)
    assert {o.client_port: o.dest_host for o in obs} == {
        50030: "api.anthropic.com",
        50031: "claude.ai",
        50032: "claude.ai",  # no answer of its own: the latest one for the address
    }
    assert col.last_stats["dns_names"] == 2 and len(col.last_dns) == 1


def test_dns_over_tcp(tmp_path):
    msg = dns_response("api.mistral.ai", [("api.mistral.ai", "A", "51.159.1.1")])
    s = Tcp(CLIENT, "10.0.0.53", 50030, 53).handshake()
    q = bytes(DNS(id=7, rd=1, qd=DNS(bytes.fromhex(msg.hex())).qd))
    s.send(True, len(q).to_bytes(2, "big") + q)
    framed = len(msg).to_bytes(2, "big") + msg
    s.add(s.segments(False, framed, cuts=[1, 20])).close()
    t = Tcp(CLIENT, "51.159.1.1", 50031, 443, ts=T0 + 2).handshake().close()
    obs, _, _ = run(pcaps.write_scapy(tmp_path / "t.pcap", pcaps.with_ether(s.packets + t.packets)))
    assert [(o.dest_host, o.host_source) for o in obs] == [("api.mistral.ai", "dns")]


def test_hand_dns_parser_agrees_with_scapy():
    msgs = [
        dns_response(
            "www.example.com",
            [
                ("www.example.com", "CNAME", "a.example.net"),
                ("a.example.net", "CNAME", "b.example.org"),
                ("b.example.org", "A", "192.0.2.1"),
                ("b.example.org", "AAAA", "2001:db8::1"),
                ("b.example.org", "TXT", "hello"),
            ],
        ),
        dns_response("api.openai.com", [], qtype="AAAA"),
    ]
    for raw in msgs:
        mine = parse_message(raw)
        theirs = DNS(raw)
        assert mine is not None and mine.response and mine.id == theirs.id
        assert mine.questions == [
            (theirs.qd[0].qname.decode().rstrip(".").lower(), theirs.qd[0].qtype)
        ]
        want = []
        for rr in theirs.an or []:
            v = rr.rdata
            if rr.type in (5,):
                v = v.decode().rstrip(".")
            elif rr.type not in (1, 28):
                v = None
            want.append((rr.rrname.decode().rstrip("."), rr.type, rr.ttl, v))
        assert [(a.name, a.rtype, a.ttl, a.value) for a in mine.answers] == want


def test_dns_compression_pointer_loops_are_refused():
    header = bytes.fromhex("000781800001000000000000")
    assert read_name(header + b"\xc0\x0c", 12) is None  # points at itself
    assert read_name(header + b"\x01a\xc0\x0c", 12) is None  # back to its own start
    assert read_name(header + b"\xc0\x0e\xc0\x0c", 12) is None  # forward pointer
    assert read_name(header + b"\x03www\xc0\x0c", 12) is None
    ok = header + b"\x07example\x03com\x00" + b"\x03api\xc0\x0c"
    assert read_name(ok, 25) == ("api.example.com", 31)
    assert read_name(header + (b"\x3f" + b"a" * 63) * 5 + b"\x00", 12) is None  # > 255 bytes


def test_dns_map_bounds_are_counted():
    m = DnsMap(names_per_address=2, max_addresses=2)
    for i, name in enumerate(["a.com", "b.com", "c.com"]):
        m.add(parse_message(dns_response(name, [(name, "A", "192.0.2.1")])), T0 + i)
    assert m.names(bytes([192, 0, 2, 1])) == ["b.com", "c.com"] and m.dropped_names == 1
    assert m.lookup(bytes([192, 0, 2, 1]), T0 + 1.5) == "b.com"
    assert m.lookup(bytes([192, 0, 2, 1]), T0 - 1) is None
    for ip in ("192.0.2.2", "192.0.2.3"):
        m.add(parse_message(dns_response("x.com", [("x.com", "A", ip)])), T0)
    assert len(m) == 2 and m.dropped_addresses == 1


# ----------------------------------------------------------------------------- naming


def test_catalog_ip_range_names_a_flow(tmp_path, catalog):
    s = (
        Tcp(CLIENT, ANTHROPIC_IP, 50040, 443)
        .handshake()
        .send(True, b"\x17\x03\x03" + bytes(10))
        .close()
    )
    obs, _, _ = run(pcaps.write_scapy(tmp_path / "i.pcap", pcaps.with_ether(s.packets)), catalog)
    assert [(o.dest_host, o.host_source) for o in obs] == [(ANTHROPIC_IP, "ip")]
    assert catalog.match_ip(ANTHROPIC_IP).provider.id == "anthropic"
    obs, _, _ = run(pcaps.write_scapy(tmp_path / "i.pcap", pcaps.with_ether(s.packets)), None)
    assert obs[0].dest_host is None


def test_record_id_is_stable_across_overlapping_captures(tmp_path):
    a = tls_session("api.openai.com", 50050)
    b = tls_session("api.anthropic.com", 50051, ts=T0 + 0.5)
    both = sorted(a.packets + b.packets, key=lambda p: p.time)
    o1, _, _ = run(pcaps.write_scapy(tmp_path / "1.pcap", pcaps.with_ether(both)))
    o2, _, _ = run(pcaps.write_scapy(tmp_path / "2.pcap", pcaps.with_ether(b.packets)))
    ids1 = {o.dest_host: o.record_id for o in o1}
    assert ids1["api.anthropic.com"] == o2[0].record_id
    assert ids1["api.openai.com"] != o2[0].record_id
    assert o1[0].line == 1 and o2[0].line == 1


def test_idle_timeout_and_deterministic_order(tmp_path):
    a = Tcp(CLIENT, SERVER, 50060, 443).handshake().send(True, client_hello("a.example"))
    b = (
        Tcp(CLIENT, SERVER, 50061, 443, ts=T0 + 500)
        .handshake()
        .send(True, client_hello("b.example"))
    )
    path = pcaps.write_scapy(tmp_path / "i.pcap", pcaps.with_ether(a.packets + b.packets))
    diag = Diagnostics()
    opened = open_input(str(path))
    it = PcapCollector(idle_timeout=60).parse(opened.stream, "i", diag)
    first = next(it)  # a: idle for 500 s, reported while b is still being read
    assert first.dest_host == "a.example" and first.ts_end < T0 + 1
    assert [o.dest_host for o in it] == ["b.example"]


def test_flow_table_bound_is_counted(tmp_path):
    sessions = [Tcp(CLIENT, SERVER, 51000 + i, 443, ts=T0 + i).handshake() for i in range(10)]
    pkts = [p for s in sessions for p in s.packets]
    obs, diag, col = run(
        pcaps.write_scapy(tmp_path / "b.pcap", pcaps.with_ether(pkts)), max_flows=4
    )
    assert len(obs) == 10
    assert col.last_stats["flows_evicted_table_full"] > 0
    assert any("flow table full" in p.reason for p in diag.notices)


def test_udp_flow_and_client_side(tmp_path):
    pkts = [
        udp(CLIENT, SERVER, 40000, 4433, b"hello", T0),
        udp(SERVER, CLIENT, 4433, 40000, b"world!", T0 + 1),
        udp(SERVER, CLIENT, 123, 40001, b"ntp", T0 + 2),  # reply seen first: server side
    ]
    obs, _, _ = run(pcaps.write_scapy(tmp_path / "u.pcap", pcaps.with_ether(pkts)))
    got = [
        (o.client_port, o.dest_port, o.packets_out, o.packets_in, o.bytes_out, o.bytes_in)
        for o in obs
    ]
    assert got == [(40000, 4433, 1, 1, 5, 6), (40001, 123, 0, 1, 0, 3)]


# ----------------------------------------------------------------------------- damage


def test_truncated_capture_is_read_up_to_the_damage(tmp_path):
    s = tls_session("api.openai.com", 50070)
    t = tls_session("api.anthropic.com", 50071, ts=T0 + 1)
    path = pcaps.write_scapy(tmp_path / "t.pcap", pcaps.with_ether(s.packets + t.packets))
    data = path.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-30])
    obs, diag, _ = run(cut)
    assert [o.dest_host for o in obs] == ["api.openai.com", "api.anthropic.com"]
    assert diag.records == 21
    (err,) = diag.file_errors
    assert "truncated at byte offset" in err.reason
    offset = int(err.reason.split("byte offset ")[1].split()[0])
    assert 24 < offset < len(data) - 30
    # a corrupt length in the middle: stops there, what came before is reported
    bad = bytearray(data)
    pos = 24
    for _ in range(15):
        pos += 16 + int.from_bytes(bad[pos + 8 : pos + 12], "little")
    bad[pos + 8 : pos + 12] = (10**8).to_bytes(4, "little")
    cor = tmp_path / "corrupt.pcap"
    cor.write_bytes(bytes(bad))
    obs, diag, _ = run(cor)
    assert [o.dest_host for o in obs] == ["api.openai.com", "api.anthropic.com"]
    assert diag.records == 15 and f"byte offset {pos}" in diag.file_errors[0].reason
    # damaged gzip (larger than the reader's buffers): reported, flows so far still yielded
    big = tmp_path / "big.pcap"
    info = pcaps.bulk_capture(big, 6000, flows=30)
    gz = tmp_path / "t.pcap.gz"
    gz.write_bytes(gzip.compress(big.read_bytes())[:-40])
    obs, diag, _ = run(gz)
    assert "stopped reading after packet" in diag.file_errors[0].reason
    assert 0 < len(obs) <= info["flows"] and 0 < diag.records < info["packets"]


def test_pcapng_truncated_block(tmp_path):
    s = tls_session()
    path = pcaps.write_scapy(tmp_path / "n.pcapng", pcaps.with_ether(s.packets), ng=True)
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(path.read_bytes()[:-10])
    obs, diag, _ = run(cut)
    assert obs[0].dest_host == "api.openai.com"
    assert "truncated at byte offset" in diag.file_errors[0].reason


def test_not_a_capture_and_empty(tmp_path):
    p = tmp_path / "x.pcap"
    p.write_bytes(b"\xa1\xb2\xc3\xd4" + b"\x00" * 4)
    obs, diag, _ = run(p)
    assert obs == [] and diag.file_errors
    e = tmp_path / "e.pcap"
    e.write_bytes(b"")
    assert run(e)[0] == []


# ----------------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from([1, 0, 101, 113, 276, 9, 108, 147]))
def test_fuzz_frames_never_raise(frame, lt):
    t = FlowTable("fuzz")
    t.packet(T0, 1, lt, frame, 0, len(frame))
    # the same bytes behind valid IPv4/TCP and UDP headers, to reach the payload parsers
    for proto_pkt in (
        IP(src=CLIENT, dst=SERVER) / TCP(sport=5, dport=80, flags="PA") / Raw(frame),
        IP(src=CLIENT, dst=SERVER) / TCP(sport=5, dport=443, flags="S"),
        IPv6(src="::1", dst="::2") / TCP(sport=6, dport=53, flags="PA", seq=1) / Raw(frame),
    ):
        b = bytes(proto_pkt)
        t.packet(T0, 2, 101, b, 0, len(b))
    t.finish()
    assert t.stats["packets"] == 4  # every frame counted, whatever it held
    for o in t.ready:  # and whatever was reported came from these frames
        assert (o.source, o.ts, o.ts_end) == ("fuzz", T0, T0) and o.line in (1, 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_fuzz_dns_and_http_parsers(data):
    m = parse_message(data)
    if m is not None:  # what it read is the header it was given
        assert (m.id, m.response, m.rcode) == (
            int.from_bytes(data[:2], "big"),
            bool(data[2] & 0x80),
            data[3] & 0xF,
        )
        DnsMap().add(m, T0)
    start = data.replace(b"\r\n", b"\n").split(b"\n")[0]
    req = parse_request_head(data)
    if req is not None:  # a request line starts with an upper-case token: its method
        assert req.method is not None and start.startswith(req.method.encode() + b" ")
        assert req.method.isupper()
    resp = parse_response_head(data)
    if resp is not None:  # a status line: HTTP/x SP three digits
        assert start.startswith(b"HTTP/") and resp.status == int(start.split(b" ")[1])
        assert req is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=2000), st.sampled_from(["pcap", "pcapng"]))
def test_fuzz_capture_files_never_raise(junk, kind):
    head = b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(8) + b"\x00\x00\x04\x00\x01\x00\x00\x00"
    if kind == "pcapng":
        head = (
            b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x4d\x3c\x2b\x1a\x01\x00\x00\x00"
            + b"\xff" * 8
            + b"\x1c\x00\x00\x00"
        )
    diag = Diagnostics()
    obs = list(PcapCollector().parse(io.BytesIO(head + junk), "fuzz", diag))
    # junk is reported, never raised, and nothing is invented: at most a flow per packet,
    # and a capture with no packets at all is a clean, empty one
    assert all(o.source == "fuzz" and o.format == "pcap" for o in obs)
    assert len(obs) <= diag.records
    if not junk:
        assert (obs, diag.records, diag.file_errors) == ([], 0, [])


# ----------------------------------------------------------------------------- CLI


def test_detect_and_collect(tmp_path):
    path = pcaps.write_scapy(tmp_path / "c.pcap", pcaps.with_ether(tls_session().packets))
    opened = open_input(str(path))
    assert detect(opened) == "pcap"
    opened.close()
    ng = pcaps.write_scapy(tmp_path / "c.pcapng", pcaps.with_ether(tls_session().packets), ng=True)
    obs = list(collect(str(ng), CollectOptions(), Diagnostics()))
    assert [o.dest_host for o in obs] == ["api.openai.com"]


def test_cli_parse_json_and_scan_raise_incident(tmp_path):
    from monitor.cli import main

    path = pcaps.write_scapy(tmp_path / "c.pcap", pcaps.with_ether(tls_session().packets))
    r = CliRunner().invoke(main, ["parse", str(path), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    if not rows:  # a JSON array
        rows = json.loads(r.output)
    assert [(x["dest_host"], x["host_source"], x["dest_port"]) for x in rows] == [
        ("api.openai.com", "sni", 443)
    ]
    db = tmp_path / "a.db"
    r = CliRunner().invoke(
        main, ["--db", str(db), "scan", str(path), "--egress-country", "CN", "--json"]
    )
    assert r.exit_code in (0, 1), r.output
    import sqlite3

    con = sqlite3.connect(db)
    rules = [row[0] for row in con.execute("select rule from incidents")]
    assert "provider-region-unsupported" in rules


# ----------------------------------------------------------------------------- speed


def test_throughput_smoke(tmp_path):
    """Not the benchmark (see docs/formats.md): just that a 20k-packet capture is quick."""
    path = tmp_path / "bulk.pcap"
    info = pcaps.bulk_capture(path, 20_000, flows=100)
    t = time.perf_counter()
    obs, diag, _ = run(path)
    dt = time.perf_counter() - t
    assert diag.records == info["packets"] and len(obs) == info["flows"]
    assert {o.host_source for o in obs} == {"sni"}
    assert dt < 5
