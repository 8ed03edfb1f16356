"""Relays and evasion: the network rules on crafted captures with public addresses.

Each capture holds the traffic a rule is about next to ordinary traffic to the same
providers, and the tests check both that the rule fires with the evidence it used and
that the ordinary traffic raises none of the new rules.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml
from click.testing import CliRunner
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import UDP
from scapy.utils import rdpcap, wrpcap

from monitor import accel
from monitor.cli import main
from tests.pcaps import Tcp, client_hello, with_ether, write_scapy
from tests.receivers import start_dnsmasq
from tests.test_real_capture import _cert, _free_port, _need, _Server, _start_tcpdump, tools

__all__ = ["tools"]  # the fixture, used by name

NETWORK_RULES = {"endpoint-network-mismatch", "fronted-llm-traffic"}


def run(*args, ok=(0, 3)):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code in ok, result.output + result.stderr
    return result


def scan(tmp_path, packets, name="cap.pcap"):
    """Scan a capture (egress declared US: no region rule), return the incidents."""
    cap = write_scapy(tmp_path / name, with_ether(packets))
    db = tmp_path / "apiwatch.db"
    run("--db", db, "scan", cap, "--egress-country", "US")
    out = run("--db", db, "incidents", "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def tls(client: str, server: str, sni: str | None, sport: int) -> list:
    t = Tcp(client, server, sport, 443).handshake()
    t.send(True, client_hello(sni)).send(False, b"\x16\x03\x03\x00\x02\x02\x00").close()
    return t.packets


def test_api_name_at_a_vps_address_is_a_network_mismatch(tmp_path):
    packets = [
        # api.openai.com at a DigitalOcean address (AS14061): a relay behind a hosts-file entry
        *tls("10.0.0.5", "159.89.0.10", "api.openai.com", 40001),
        # ... and at a private address (a proxy on the LAN); OpenAI has no private endpoints
        *tls("10.0.0.5", "10.9.9.9", "api.openai.com", 40002),
        # ordinary: api.openai.com at Cloudflare, api.anthropic.com in Anthropic's range
        *tls("10.0.0.6", "162.159.140.245", "api.openai.com", 40003),
        *tls("10.0.0.6", "160.79.104.10", "api.anthropic.com", 40004),
        # Azure OpenAI at a private address: Private Link, expected
        *tls("10.0.0.6", "10.1.2.3", "acme.openai.azure.com", 40005),
    ]
    incs = scan(tmp_path, packets)
    hits = [i for i in incs if i["rule"] in NETWORK_RULES]
    assert {(i["rule"], i["client_ip"]) for i in hits} == {
        ("endpoint-network-mismatch", "10.0.0.5")
    }
    assert all(i["severity"] == "high" and i["provider"] == "openai" for i in hits)
    (facts,) = [i["facts"] for i in hits]  # one incident: same client, host, egress, day
    assert facts["request.name_source"] == ["sni"]
    assert facts["dest.host"] == ["api.openai.com"]
    assert facts["dest.ip"] == ["10.9.9.9", "159.89.0.10"]
    assert facts["dest.address_source"] == ["packet destination"]
    assert facts["dest.asn"] == [14061, None]
    assert facts["dest.scope"] == ["private", "public"]
    assert facts["provider.asns"] == [[13335]]


def test_unrelated_name_at_a_published_range_is_fronted(tmp_path):
    packets = [
        *tls("10.0.0.7", "160.79.104.10", "cdn.example.org", 40011),  # fronted
        *tls("10.0.0.8", "160.79.104.10", "api.anthropic.com", 40012),  # ordinary
        *tls("10.0.0.8", "198.51.100.20", "cdn.example.org", 40013),  # not in any range
    ]
    incs = scan(tmp_path, packets)
    hits = [i for i in incs if i["rule"] in NETWORK_RULES]
    assert [(i["rule"], i["client_ip"], i["dest_host"]) for i in hits] == [
        ("fronted-llm-traffic", "10.0.0.7", "cdn.example.org")
    ]
    facts = hits[0]["facts"]
    assert facts["dest.ip"] == ["160.79.104.10"]
    assert facts["dest.range_provider"] == ["anthropic"]
    assert facts["request.name_source"] == ["sni"]
    assert facts["dest.address_source"] == ["packet destination"]
    assert "160.79.104.0/23" in facts["provider.ranges"][0]
    # nothing else is said of the ordinary flow
    assert not [i for i in incs if i["client_ip"] == "10.0.0.8"]


# --- real tools: curl, openssl, tcpdump and dnsmasq on loopback -----------------------------


@pytest.fixture
def dnsmasq(tmp_path) -> Iterator[int]:
    """dnsmasq on 127.0.0.1 (a free high port) answering api.openai.com with 127.0.0.1, as a
    hijacked resolver would; stopped by its PID."""
    exe = shutil.which("dnsmasq")
    _need(exe is not None, "dnsmasq is not installed")
    proc, port = start_dnsmasq(
        exe,
        ["--conf-file=/dev/null", "--pid-file=", "--address=/api.openai.com/127.0.0.1"],
        lambda port: _resolve(port, "api.openai.com", timeout=0.5) is not None,
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _resolve(port: int, name: str, timeout: float = 5) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(bytes(DNS(id=7, rd=1, qd=DNSQR(qname=name))), ("127.0.0.1", port))
        try:
            answer = DNS(s.recv(512))
        except TimeoutError:
            return None
    return answer.an[0].rdata if answer.ancount else None


@pytest.mark.realtools
def test_hosts_file_override_and_dns_hijack_on_loopback(tmp_path, tools, dnsmasq):
    """curl with a hosts-file style override, and a client whose resolver (dnsmasq) answers
    api.openai.com with a local address: both reach a TLS server that is not OpenAI's."""
    key, crt = _cert(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    port = _free_port()
    server = _Server(port, ctx)
    raw = tmp_path / "lo.pcap"
    dump = _start_tcpdump(raw, [port], udp_ports=(dnsmasq,))
    try:
        subprocess.run(
            ["curl", "-sk", "--max-time", "10", "-o", "/dev/null", "--resolve",
             f"api.openai.com:{port}:127.0.0.1", f"https://api.openai.com:{port}/v1/models"],
            check=True, timeout=20,
        )  # fmt: skip
        address = _resolve(dnsmasq, "api.openai.com")
        assert address == "127.0.0.1"
        client = ssl.create_default_context()
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        with client.wrap_socket(socket.create_connection((address, port), timeout=5)) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            s.recv(100)
        time.sleep(0.5)
    finally:
        dump.terminate()
        dump.wait(10)
        server.close()
    # the resolver ran on a high port; DNS is read on port 53, where a resolver answers
    packets = rdpcap(str(raw))
    for p in packets:
        if p.haslayer(UDP):
            udp = p[UDP]
            udp.sport, udp.dport = (53 if x == dnsmasq else x for x in (udp.sport, udp.dport))
            del udp.chksum
    cap = tmp_path / "dns53.pcap"
    wrpcap(str(cap), packets)
    db = tmp_path / "apiwatch.db"
    run("--db", db, "scan", cap, "--egress-country", "US")
    incs = [json.loads(x) for x in run("--db", db, "incidents", "--json").stdout.splitlines()]
    (hit,) = [i for i in incs if i["rule"] == "endpoint-network-mismatch"]
    facts = hit["facts"]
    assert (hit["provider"], hit["dest_host"]) == ("openai", "api.openai.com")
    assert sorted(facts["request.name_source"]) == ["dns", "sni"]
    assert facts["dest.ip"] == ["127.0.0.1"] and facts["dest.scope"] == ["loopback"]
    assert facts["dest.address_source"] == ["packet destination"]
    assert not [i for i in incs if i["rule"] == "fronted-llm-traffic"]


# --- API-shaped requests to hosts outside the catalogue -------------------------------------


def native_line(ts: float, client: str, method: str, url: str, peer: str = "203.0.113.9") -> str:
    return f"{ts:.3f}    120 {client} TCP_MISS/200 900 {method} {url} - HIER_DIRECT/{peer} -"


def scan_log(tmp_path, lines, *options):
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n")
    db = tmp_path / "apiwatch.db"
    run("--db", db, "scan", log, "--egress-country", "US", *options)
    out = run("--db", db, "incidents", "--json").stdout
    return [json.loads(line) for line in out.splitlines()], db


def test_llm_api_paths_to_unknown_hosts_in_a_squid_log(tmp_path):
    t = 1795741200.0
    lines = [
        # SSL-bumped / plain requests to a relay: API paths
        native_line(t, "10.0.0.1", "POST", "https://api.relay-station.example/v1/chat/completions"),
        native_line(t + 1, "10.0.0.1", "POST", "http://gw.example.net/openai/v1/responses?x=1"),
        native_line(t + 2, "10.0.0.2", "GET", "https://oneapi.example.org/api/user/self"),
        native_line(
            t + 3,
            "10.0.0.3",
            "POST",
            "https://g.example.com/v1beta/models/gemini-pro:generateContent",
        ),
        # ordinary traffic: other paths, tunnels, the provider itself, near misses
        native_line(t + 4, "10.0.0.4", "GET", "https://www.example.com/v1/chat/completionsx"),
        native_line(t + 5, "10.0.0.4", "GET", "https://docs.example.com/guide/v1/chat/"),
        native_line(t + 6, "10.0.0.4", "CONNECT", "api.relay-station.example:443"),
        native_line(
            t + 7,
            "10.0.0.5",
            "POST",
            "https://api.openai.com/v1/chat/completions",
            "162.159.140.245",
        ),
    ]
    incs, _ = scan_log(tmp_path, lines)
    hits = sorted(
        (
            i["dest_host"],
            i["client_ip"],
            i["severity"],
            i["provider"],
            i["facts"]["request.api_path"][0],
        )
        for i in incs
        if i["rule"] == "llm-api-unknown-host"
    )
    assert hits == [
        ("api.relay-station.example", "10.0.0.1", "medium", "unknown", "openai_chat_completions"),
        ("g.example.com", "10.0.0.3", "medium", "unknown", "gemini_generate_content"),
        ("gw.example.net", "10.0.0.1", "medium", "unknown", "openai_chat_completions"),
        ("oneapi.example.org", "10.0.0.2", "medium", "unknown", "one_api_admin"),
    ]
    assert not [i for i in incs if i["client_ip"] == "10.0.0.4"]
    assert {i["rule"] for i in incs if i["client_ip"] == "10.0.0.5"} <= {"unapproved-provider"}
    # the Python loop (no C pre-pass) gives the same
    (tmp_path / "pure").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(accel.PURE_ENV, "1")
        pure, _ = scan_log(tmp_path / "pure", lines)
    assert sorted(i["id"] for i in pure) == sorted(i["id"] for i in incs)


def test_sdk_user_agent_to_an_unknown_host_in_a_custom_squid_log(tmp_path):
    fmt = '%ts.%03tu %>a %Ss/%03>Hs %<st %rm %ru "%{User-Agent}>h"'
    t = 1795741200
    lines = [
        f'{t}.000 10.0.0.1 TCP_MISS/200 900 POST https://llm.example.net/chat "OpenAI/Python 1.54.0"',
        f'{t}.500 10.0.0.2 TCP_MISS/200 900 GET https://www.example.net/ "curl/8.5.0"',
        f'{t + 1}.000 10.0.0.3 TCP_MISS/200 900 GET https://www.example.net/ "Mozilla/5.0 (X11)"',
    ]
    incs, db = scan_log(tmp_path, lines, "--format", "squid-custom", "--squid-logformat", fmt)
    (hit,) = [i for i in incs if i["rule"] == "llm-api-unknown-host"]
    assert (hit["dest_host"], hit["client_ip"]) == ("llm.example.net", "10.0.0.1")
    assert hit["facts"]["client.software"] == ["openai_python"]
    assert hit["facts"]["client.user_agent"] == ["OpenAI/Python 1.54.0"]
    assert len(incs) == 1


def test_api_path_and_sdk_over_plain_http_in_a_capture(tmp_path):
    def request(target: str, host: str, agent: str) -> bytes:
        return f"POST {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n\r\n".encode()

    def exchange(client, server, sport, data):
        t = Tcp(client, server, sport, 80).handshake()
        t.send(True, data).send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").close()
        return t.packets

    packets = [
        *exchange("10.0.0.1", "45.77.0.10", 40021, request("/v1/messages", "relay.example", "x")),
        *exchange(
            "10.0.0.2",
            "45.77.0.10",
            40022,
            request("/chat", "relay.example", "Anthropic/JS 0.30.1"),
        ),
        *exchange("10.0.0.3", "45.77.0.10", 40023, request("/chat", "relay.example", "curl/8.5.0")),
    ]
    incs = scan(tmp_path, packets)
    hits = {i["client_ip"]: i["facts"] for i in incs if i["rule"] == "llm-api-unknown-host"}
    assert set(hits) == {"10.0.0.1", "10.0.0.2"}
    assert hits["10.0.0.1"]["request.api_path"] == ["anthropic_messages"]
    assert hits["10.0.0.2"]["client.software"] == ["anthropic_js"]
    assert hits["10.0.0.2"]["dest.asn"] == [20473]
    assert hits["10.0.0.1"]["request.name_source"] == ["http_host"]


def test_discovered_lists_candidates_and_promotes_one_into_the_overlay(tmp_path):
    t = 1795741200.0
    lines = [
        native_line(t, "10.0.0.1", "POST", "https://api.relay-station.example/v1/chat/completions"),
        native_line(t + 60, "10.0.0.2", "POST", "https://api.relay-station.example/v1/messages"),
        native_line(t + 90, "10.0.0.3", "GET", "https://oneapi.example.org/api/user/self"),
        native_line(t + 95, "10.0.0.4", "GET", "https://www.example.com/index.html"),
    ]
    _, db = scan_log(tmp_path, lines)
    rows = [json.loads(x) for x in run("--db", db, "discovered", "--json").stdout.splitlines()]
    assert [r["host"] for r in rows] == ["oneapi.example.org", "api.relay-station.example"]
    relay = rows[1]
    assert (relay["first_seen"], relay["last_seen"]) == (
        "2026-11-27T01:00:00.000Z",
        "2026-11-27T01:01:00.000Z",
    )
    assert relay["requests"] == 2 and relay["clients"] == ["10.0.0.1", "10.0.0.2"]
    assert relay["evidence"] == ["path:anthropic_messages", "path:openai_chat_completions"]
    assert relay["addresses"] == ["203.0.113.9"]
    table = run("--db", db, "discovered").stdout
    assert "api.relay-station.example" in table and "path:one_api_admin" in table

    overlay = tmp_path / "corp-llm.yaml"
    out = run("--db", db, "discovered", "--promote", "API.Relay-Station.example",
              "--provider", "relay", "--source", "https://tickets.example/SEC-9",
              "--overlay", overlay).stdout  # fmt: skip
    assert "relay_api_relay_station_example" in out
    (entry,) = yaml.safe_load(overlay.read_text())["providers"]
    assert entry["kind"] == "relay" and entry["category"] == "reseller_relay"
    (group,) = entry["hosts"]
    assert group["exact"] == ["api.relay-station.example"]
    assert group["confidence"] == "medium"
    assert group["sources"] == ["https://tickets.example/SEC-9"]
    assert "path:openai_chat_completions" in group["note"]
    # with the overlay in the config, the promoted host is a relay from the next scan on
    config = tmp_path / "apiwatch.toml"
    config.write_text('[catalog]\nextra = ["corp-llm.yaml"]\n')
    db2 = tmp_path / "after.db"
    run("--config", config, "--db", db2, "scan", tmp_path / "access.log", "--egress-country", "US")
    relay = [i for i in _incidents(db2) if i["dest_host"] == "api.relay-station.example"]
    assert {i["rule"] for i in relay} == {"relay-service"}
    assert {i["provider"] for i in relay if i["rule"] == "relay-service"} == {
        "relay_api_relay_station_example"
    }
    # a second host into the same entry; without a source it is low confidence
    run("--db", db, "discovered", "--promote", "oneapi.example.org", "--provider",
        "relay_api_relay_station_example", "--overlay", overlay)  # fmt: skip
    (entry,) = yaml.safe_load(overlay.read_text())["providers"]
    low = entry["hosts"][1]
    assert low["confidence"] == "low" and low["sources"][0].startswith("unverified: promoted")
    # errors: one line, the file unchanged
    before = overlay.read_text()
    bad = run("--db", db, "discovered", "--promote", "oneapi.example.org", "--provider", "relay",
              "--overlay", overlay, ok=(1,))  # fmt: skip
    assert "already listed" in bad.stderr and overlay.read_text() == before
    bad = run("--db", db, "discovered", "--promote", "x", "--provider", "relay", ok=(2,))
    assert "not a host name" in bad.stderr
    bad = run("--db", db, "discovered", "--promote", "a.example", ok=(2,))
    assert "--provider" in bad.stderr


# --- the provider's own verdict -----------------------------------------------------------------

OPENAI_REFUSAL = (
    b'{"error": {"code": "unsupported_country_region_territory", "message": "Country, region, '
    b'or territory not supported", "param": null, "type": "request_forbidden"}}'
)
GEMINI_REFUSAL = (
    b'{"error": {"code": 400, "message": "User location is not supported for the API use.", '
    b'"status": "FAILED_PRECONDITION"}}'
)


def test_provider_refusal_is_evidence_on_the_region_finding(tmp_path):
    def exchange(client, server, sport, host, status, body, split=False):
        t = Tcp(client, server, sport, 80).handshake()
        t.send(True, f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        if split:  # the body in a segment of its own
            t.send(False, head).send(False, body)
        else:
            t.send(False, head + body)
        return t.close().packets

    packets = [
        *exchange("10.0.0.1", "162.159.140.245", 40031, "api.openai.com", 403, OPENAI_REFUSAL),
        *exchange(
            "10.0.0.2", "142.250.74.106", 40032, "generativelanguage.googleapis.com", 400,
            GEMINI_REFUSAL, split=True,
        ),
        *exchange("10.0.0.3", "162.159.140.245", 40033, "api.openai.com", 403, b'{"error": {}}'),
    ]  # fmt: skip
    cap = write_scapy(tmp_path / "refused.pcap", with_ether(packets))
    db = tmp_path / "apiwatch.db"
    run("--db", db, "scan", cap, "--egress-country", "CN")
    incs = [json.loads(x) for x in run("--db", db, "incidents", "--json").stdout.splitlines()]
    region = {
        i["client_ip"]: i["facts"] for i in incs if i["rule"] == "provider-region-unsupported"
    }
    assert region["10.0.0.1"]["provider_refused"] == ["openai_unsupported_country_region_territory"]
    assert region["10.0.0.2"]["provider_refused"] == ["gemini_user_location_not_supported"]
    assert region["10.0.0.3"]["provider_refused"] == [None]  # a 403, but not the refusal
    assert region["10.0.0.1"]["request.status"] == [403]


# --- egress hopping: a correlation over the stored history --------------------------------------


def test_egress_hopping_across_scans_is_deterministic_and_idempotent(tmp_path):
    t = 1795741200.0  # 2026-11-27T01:00Z
    api = "https://api.openai.com/v1/chat/completions"
    morning = tmp_path / "hk.log"  # through a Hong Kong egress (OpenAI does not serve HK)
    morning.write_text("\n".join([
        native_line(t, "10.0.0.1", "CONNECT", "api.openai.com:443", "162.159.140.245"),
        native_line(t + 60, "10.0.0.1", "CONNECT", "api.openai.com:443", "162.159.140.245"),
        native_line(t, "10.0.0.3", "CONNECT", "api.openai.com:443", "162.159.140.245"),
        native_line(t, "10.0.0.4", "CONNECT", "api.openai.com:443", "162.159.140.245"),
    ]) + "\n")  # fmt: skip
    afternoon = tmp_path / "sg.log"  # the same laptop, six hours later, through Singapore
    afternoon.write_text("\n".join([
        native_line(t + 6 * 3600, "10.0.0.1", "POST", api.replace("https", "http"), "162.159.140.245"),
        native_line(t + 6 * 3600, "10.0.0.2", "CONNECT", "api.openai.com:443", "162.159.140.245"),
        native_line(t + 30 * 3600, "10.0.0.4", "CONNECT", "api.openai.com:443", "162.159.140.245"),
    ]) + "\n")  # fmt: skip
    db = tmp_path / "apiwatch.db"
    run("--db", db, "scan", morning, "--egress-country", "HK")
    assert not [i for i in _incidents(db) if i["rule"] == "egress-hopping"]
    summary = json.loads(
        run("--db", db, "scan", afternoon, "--egress-country", "SG", "--json").stdout
    )
    assert summary["new_by_rule"].get("egress-hopping") == 1
    (hop,) = [i for i in _incidents(db) if i["rule"] == "egress-hopping"]
    assert (hop["client_ip"], hop["provider"], hop["severity"], hop["day"]) == (
        "10.0.0.1", "openai", "high", "2026-11-27",
    )  # fmt: skip
    assert hop["count"] == 3  # the records behind it, linked as for any incident
    con = sqlite3.connect(db)
    assert (
        con.execute("SELECT count(*) FROM hits WHERE incident_id = ?", [hop["id"]]).fetchone()[0]
        == 3
    )
    assert hop["facts"]["history.countries"] == [["HK", "SG"]]
    assert hop["facts"]["history.served"] == [["SG"]]
    assert hop["facts"]["history.unserved"] == [["HK"]]
    assert (hop["first_seen"], hop["last_seen"]) == (
        "2026-11-27T01:00:00.000Z", "2026-11-27T07:00:00.000Z",
    )  # fmt: skip
    # 10.0.0.3: HK only; 10.0.0.2: SG only; 10.0.0.4: HK then SG 30 h later (outside 24 h)
    # scanning everything again changes nothing
    run("--db", db, "scan", "--full", morning, "--egress-country", "HK")
    run("--db", db, "scan", "--full", afternoon, "--egress-country", "SG")
    (again,) = [i for i in _incidents(db) if i["rule"] == "egress-hopping"]
    assert {k: again[k] for k in ("id", "count", "facts", "first_seen", "last_seen")} == {
        k: hop[k] for k in ("id", "count", "facts", "first_seen", "last_seen")
    }


def test_egress_hopping_reads_no_client_history_where_no_client_can_hop(tmp_path):
    """When every provider was reached through one egress country in the span (a scan of
    one site) and the rule holds for no single country, no client's history is read; once
    a second country is there, it is, and the hop is found."""
    from pathlib import Path

    from monitor.app import App, Settings

    t = 1795741200.0  # 2026-11-27T01:00Z
    log = tmp_path / "hk.log"
    log.write_text(native_line(t, "10.0.0.1", "CONNECT", "api.openai.com:443", "1.1.1.1") + "\n")
    db = tmp_path / "apiwatch.db"
    run("--db", db, "scan", log, "--egress-country", "HK")

    def correlated(scan: int) -> tuple[int, list[str]]:
        app = App(Settings(db=Path(db)))
        statements: list[str] = []
        app.store.db.conn.set_trace_callback(statements.append)
        try:
            found = app.correlate([scan]).incidents
        finally:
            app.close()
        return found, [s for s in statements if "count(DISTINCT egress_country)" in s]

    assert correlated(1) == (0, [])
    log.write_text(
        native_line(t + 60, "10.0.0.1", "CONNECT", "api.openai.com:443", "1.1.1.1") + "\n"
    )
    run("--db", db, "scan", log, "--egress-country", "SG")
    found, history = correlated(2)
    assert found == 1 and len(history) == 1


def test_egress_hopping_findings_count_reopen_take_exceptions_and_alert(tmp_path):
    """Hops roll up into findings like every other rule's (rule, provider, site — or the
    egress country evaded): listed by `findings`, counted by --fail-on, one alert each,
    reopened by new hops after a resolve, excepted by the register, kept by reevaluate."""
    t = 1795741200.0  # 2026-11-27T01:00Z

    def line(ts, client, user="-"):
        return f"{ts:.3f}    120 {client} TCP_TUNNEL/200 900 CONNECT api.openai.com:443 {user} HIER_DIRECT/162.159.140.245 -\n"

    def write(name, *lines):
        (tmp_path / name).write_text("".join(lines))
        return tmp_path / name

    hk = write(
        "hk.log", line(t, "10.0.0.1"), line(t + 60, "10.0.0.1"), line(t, "10.1.0.7", "alice")
    )
    sg = write("sg.log", line(t + 6 * 3600, "10.0.0.1"), line(t + 6 * 3600, "10.1.0.7", "alice"))
    site = '[sites.lab]\nclient_cidrs = ["10.1.0.0/16"]\n'
    sink = '[[alerts]]\nname = "lake"\nkind = "jsonl"\npath = "ocsf.jsonl"\nformat = "ocsf"\n'
    cfg = tmp_path / "c.toml"
    cfg.write_text(site + sink)
    db = tmp_path / "apiwatch.db"
    base = ("--db", db, "--config", cfg)

    def hop_events():
        docs = [json.loads(x) for x in (tmp_path / "ocsf.jsonl").read_text().splitlines()]
        return [(d["finding_info"]["uid"], d["metadata"]["event_code"], d["count"])
                for d in docs if d["finding_info"]["analytic"]["uid"] == "egress-hopping"]  # fmt: skip

    def hops():
        out = run(*base, "findings", "--rule", "egress-hopping", "--json").stdout
        return {(f["site"], f["egress_country"]): f for f in map(json.loads, out.splitlines())}

    run(*base, "scan", hk, "--egress-country", "HK", "--fail-on", "high", ok=(3,))
    res = run(*base, "scan", sg, "--egress-country", "SG", "--fail-on", "high", "--json", ok=(3,))
    assert json.loads(res.stdout)["findings_new"] == 2  # the hops alone: SG is served
    found = hops()
    assert set(found) == {(None, "HK"), ("lab", "HK")}
    lone, lab = found[(None, "HK")], found[("lab", "HK")]
    assert list(lone) == ["id", "rule", "severity", "provider", "site", "egress_country", "status",
                          "first_seen", "last_seen", "count", "blocked", "bytes_out", "clients",
                          "users", "hosts", "days"]  # fmt: skip
    assert (lone["count"], lone["clients"], lone["users"], lone["status"]) == (3, 1, 0, "open")
    assert (lab["count"], lab["users"], lab["severity"]) == (2, 1, "high")
    (detail,) = [
        json.loads(x)
        for x in run(*base, "incidents", "--finding", lab["id"], "--json").stdout.splitlines()
    ]
    assert (detail["user"], detail["client_ip"], detail["site"]) == ("alice", "10.1.0.7", "lab")
    shown = json.loads(run(*base, "show", lab["id"], "--json").stdout)
    assert [u["value"] for u in shown["top_users"]] == ["alice"] and len(shown["records"]) == 2
    assert sorted(hop_events()) == sorted([(lone["id"], "new", 3), (lab["id"], "new", 2)])
    # the same logs again, and reevaluate: nothing changes, nothing alerts
    run(*base, "scan", "--full", hk, "--egress-country", "HK")
    run(*base, "scan", "--full", sg, "--egress-country", "SG")
    run(*base, "reevaluate")
    assert hops() == found and len(hop_events()) == 2
    # resolved, then the laptop hops again: reopened, counted, one alert
    run(*base, "resolve", lone["id"], "--note", "VPN removed (SEC-5)", "--actor", "ana")
    again = write("sg2.log", line(t + 8 * 3600, "10.0.0.1"))
    run(*base, "scan", again, "--egress-country", "SG", "--fail-on", "high", ok=(3,))
    assert hops()[(None, "HK")]["status"] == "reopened" and hops()[(None, "HK")]["count"] == 4
    assert hop_events()[-2:] == [(lone["id"], "resolved", 3), (lone["id"], "reopened", 4)]
    # an exception for the lab's hops: alerted, and its new hops are not counted
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    cfg.write_text(site + sink + f'[[exceptions]]\nrule = "egress-hopping"\nsite = "lab"\n'
                   f'until = {tomorrow}\nreason = "SEC-6: lab tests regions"\napprover = "ciso"\n')  # fmt: skip
    run(*base, "alerts", "deliver")
    assert hop_events()[-1] == (lab["id"], "excepted", 2)
    more = write("sg3.log", line(t + 9 * 3600, "10.1.0.7", "alice"))
    run(*base, "scan", more, "--egress-country", "SG", "--fail-on", "high", ok=(0,))
    assert hops()[("lab", "HK")]["count"] == 3
    run(*base, "reevaluate")
    assert {k: f["status"] for k, f in hops().items()} == {
        (None, "HK"): "reopened",
        ("lab", "HK"): "open",
    }


def _incidents(db):
    return [json.loads(x) for x in run("--db", db, "incidents", "--json").stdout.splitlines()]


def test_api_path_and_sdk_user_agent_in_a_zeek_http_log(tmp_path):
    fields = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "trans_depth",
              "method", "host", "uri", "user_agent", "status_code"]  # fmt: skip
    rows = [
        ["1795741200.0", "C1", "10.0.0.1", "40001", "45.77.0.10", "80", "1", "POST",
         "relay.example", "/v1/chat/completions", "python-httpx/0.27", "200"],
        ["1795741201.0", "C2", "10.0.0.2", "40002", "45.77.0.10", "80", "1", "POST",
         "relay.example", "/chat", "OpenAI/Python 1.54.0", "200"],
        ["1795741202.0", "C3", "10.0.0.3", "40003", "45.77.0.10", "80", "1", "GET",
         "www.example.net", "/index.html", "Mozilla/5.0 (X11)", "200"],
    ]  # fmt: skip
    log = tmp_path / "http.log"
    lines = ["#separator \\x09", "#path\thttp", "#fields\t" + "\t".join(fields)]
    log.write_text("\n".join(lines + ["\t".join(r) for r in rows]) + "\n")
    db = tmp_path / "apiwatch.db"
    run("--db", db, "scan", log, "--egress-country", "US")
    hits = {
        i["client_ip"]: i["facts"] for i in _incidents(db) if i["rule"] == "llm-api-unknown-host"
    }
    assert set(hits) == {"10.0.0.1", "10.0.0.2"}
    assert hits["10.0.0.1"]["request.api_path"] == ["openai_chat_completions"]
    assert hits["10.0.0.2"]["client.user_agent"] == ["OpenAI/Python 1.54.0"]
    assert hits["10.0.0.2"]["client.software"] == ["openai_python"]
