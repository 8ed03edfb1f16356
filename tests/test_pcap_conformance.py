"""Conformance: apiwatch gives the peer's answer on the real captures in ../shared/conformance.

The captures and the peers' expected outputs (Zeek baselines, the two JA4 implementations)
are read in place, never copied into the repository; the tests skip when they are absent.
Every capture is either checked or listed in ``SKIPS`` with the reason.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path

import pytest
import yaml

from monitor.collectors import open_input
from monitor.collectors.base import Diagnostics
from monitor.collectors.dns import DnsMap, parse_message
from monitor.collectors.pcap import PcapCollector
from monitor.observation import canonical_ip
from tests.pcaps import parse_capture

ROOT = Path(__file__).resolve().parents[2] / "shared" / "conformance"
ZEEK = ROOT / "pcap" / "zeek"
JA4 = ROOT / "pcap" / "ja4"
DNS = ROOT / "dns" / "zeek"

pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"conformance data absent ({ROOT})")

#: captures not compared, and why (each one is listed: nothing is skipped silently)
SKIPS: dict[str, str] = {
    # none at present: the DTLS captures (tls/dtls*.pcap, webrtc-stun.pcap) are compared
    # too; apiwatch does not read DTLS and, like Zeek, reports no server name for them
}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def observe(path: Path) -> tuple[list, Diagnostics, PcapCollector]:
    return parse_capture(path)


def sni_set(obs) -> list[str]:
    return sorted({o.dest_host for o in obs if o.host_source == "sni" and o.dest_host})


def _params(d: dict) -> list:
    return [pytest.param(k, id=k) for k in sorted(d)] if d else []


ZEEK_SNI = _load(ZEEK / "expected_sni.json") if ROOT.is_dir() else {}
ZEEK_HTTP = _load(ZEEK / "http" / "expected_http.json") if ROOT.is_dir() else {}
JA4_SNI = _load(JA4 / "expected_sni.json")["files"] if ROOT.is_dir() else {}
ZEEK_DNS = _load(DNS / "expected_dns.json") if ROOT.is_dir() else {}


@pytest.mark.parametrize("name", _params(ZEEK_SNI))
def test_zeek_tls_and_quic_server_names(name):
    if name in SKIPS:
        pytest.skip(SKIPS[name])
    obs, diag, _ = observe(ZEEK / name)
    assert not diag.file_errors, diag.file_errors
    # Zeek's quic-go interop names are "server4:443" as sent; apiwatch keeps SNI as sent too
    assert sni_set(obs) == sorted(set(ZEEK_SNI[name]))


def test_zeek_tls_connections_match_detail():
    """Per connection: Zeek's 5-tuple and server name, for every named TLS/QUIC connection."""
    detail = _load(ZEEK / "expected_sni_detail.json")["connections"]
    checked = 0
    for name, conns in sorted(detail.items()):
        if name in SKIPS:
            continue
        obs, _, _ = observe(ZEEK / name)
        ours = {(o.client_ip, o.client_port, o.dest_ip, o.dest_port): o for o in obs}
        for c in conns:
            if "id.orig_h" not in c or c["server_name"] == "-":
                continue
            key = (
                canonical_ip(c["id.orig_h"]),
                int(c["id.orig_p"]),
                canonical_ip(c["id.resp_h"]),
                int(c["id.resp_p"]),
            )
            assert key in ours, (name, key)
            assert ours[key].dest_host == c["server_name"], (name, key)
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("name", _params(JA4_SNI))
def test_ja4_server_names(name):
    exp = JA4_SNI[name]
    obs, diag, _ = observe(JA4 / name)
    assert not diag.file_errors, diag.file_errors
    # the Rust implementation reads TLS over TCP and QUIC (the Python one TCP only)
    assert sni_set(obs) == sorted(set(exp["rust_tls_server_name"]))
    tcp_names = sorted(
        {o.dest_host for o in obs if o.host_source == "sni" and o.dest_host and _is_tcp(o, exp)}
    )
    assert tcp_names == sorted(set(exp["python_domain"]))


def _rust_ja4(name: str) -> dict[tuple[str | None, int], str]:
    """FoxIO's Rust ``ja4`` output for a capture: (client address, port) -> JA4."""
    snap = JA4 / "rust-snapshots" / f"ja4__insta@{name}.snap"
    streams = yaml.safe_load(snap.read_text().split("---\n", 2)[2]) or []
    return {(canonical_ip(s["src"]), int(s["src_port"])): s["ja4"] for s in streams if "ja4" in s}


@pytest.mark.parametrize("name", _params(JA4_SNI))
def test_ja4_fingerprints(name):
    """Every ClientHello's JA4 equals FoxIO's reference output (TCP and QUIC), TLS inside
    SOCKS and HTTP CONNECT tunnels included."""
    want = _rust_ja4(name)
    obs, diag, _ = observe(JA4 / name)
    assert not diag.file_errors
    got = {(o.client_ip, o.client_port): o.ja4 for o in obs if o.ja4}
    assert got == want


def test_ja4_inside_an_http_connect_tunnel():
    """The ClientHello after ``CONNECT … 200``: the CONNECT request's observation carries
    its JA4, and the proxy's address is not taken for the destination's."""
    obs, _diag, _ = observe(JA4 / "https-connect.pcap")
    (o,) = obs
    assert (o.method, o.dest_host, o.dest_port, o.host_source) == (
        "CONNECT",
        "ts01-b.cloudsink.net",
        443,
        "connect",
    )
    assert o.ja4 == _rust_ja4("https-connect.pcap")[("10.11.12.13", 54723)]
    assert o.dest_ip is None and o.status == 200


def _is_tcp(o, exp) -> bool:
    for s in exp["rust_streams"]:
        if canonical_ip(s["src"]) == o.client_ip and s["src_port"] == o.client_port:
            return s["transport"] == "tcp"
    return True


@pytest.mark.parametrize("name", _params(ZEEK_HTTP))
def test_zeek_http_requests(name):
    exp = ZEEK_HTTP[name]
    obs, diag, _ = observe(ZEEK / "http" / name)
    assert not diag.file_errors
    ours: Counter = Counter()
    for o in obs:
        if o.method is None:
            continue
        if o.host_source == "connect":
            uri = f"{o.dest_host}:{o.dest_port}"
        elif o.url and o.host_source == "http_host" and o.url.startswith("http://"):
            uri = "/" + o.url.split("/", 3)[3] if o.url.count("/") >= 3 else ""
        else:
            uri = o.url or ""
        ours[(o.method, uri)] += 1
    theirs: Counter = Counter()
    for r in exp["requests"]:
        if r["method"] == "-":
            continue  # Zeek logged a reply it could not pair with a request
        uri = "" if r["uri"] == "(empty)" else r["uri"]
        if r["method"] == "CONNECT" and ":" in uri.split(" ")[0] and "/" not in uri.split(" ")[0]:
            uri = uri.split(" ")[0]  # "host:port /" (a malformed CONNECT): apiwatch keeps host:port
        theirs[(r["method"], uri)] += 1
    missing = theirs - ours
    assert not missing, missing
    extra = ours - theirs
    # apiwatch also reports requests on connections whose handshake precedes the capture
    # (Zeek does not): wikipedia.pcap's first request is one
    assert sum(extra.values()) <= (1 if name == "wikipedia.pcap" else 0), extra
    hosts = {o.dest_host for o in obs if o.host_source in ("http_host", "connect")}
    assert {h.split(":")[0] for h in exp["hosts"]} <= hosts


def _dns_messages(path: Path) -> list:
    """DNS payloads of a capture, via apiwatch's own reader (the hook sees every message)."""
    seen: list = []
    diag = Diagnostics()
    col = PcapCollector()
    opened = open_input(str(path))
    try:
        from monitor.collectors import flows

        original = flows.FlowTable._dns

        def hook(self, msg, ts, client=None):
            seen.append(parse_message(msg))
            return original(self, msg, ts, client)

        flows.FlowTable._dns = hook  # type: ignore[method-assign]
        try:
            list(col.parse(opened.stream, path.name, diag))
        finally:
            flows.FlowTable._dns = original  # type: ignore[method-assign]
    finally:
        opened.close()
    return [m for m in seen if m is not None], col.last_dns


def _is_name_or_ip(x: str) -> bool:
    return " " not in x


@pytest.mark.parametrize("name", _params(ZEEK_DNS))
def test_zeek_dns_answers(name):
    msgs, dns = _dns_messages(DNS / name)
    assert isinstance(dns, DnsMap)
    responses = [m for m in msgs if m.response]
    for q in ZEEK_DNS[name]["queries"]:
        want = [a for a in q["answers"] if _is_name_or_ip(a)]  # A/AAAA/CNAME (+NS/PTR/MX)
        if not q["answers"]:
            continue
        match = [m for m in responses if m.questions and m.questions[0][0] == q["query"].lower()]
        if not match:  # mDNS answers without a question section
            match = [m for m in responses if any(a.name == q["query"].lower() for a in m.answers)]
        assert match, q["query"]
        got = [a.value for a in match[0].answers if a.value is not None]
        assert got == want, q["query"]
        for ip in (a for a in want if canonical_ip(a)):
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            assert q["query"].lower() in dns.names(socket.inet_pton(fam, ip))
