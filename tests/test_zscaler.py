"""Zscaler NSS web feed: default CSV/TSV, JSON (Splunk wrapper), LEEF/CEF/key=value; the
Elastic conformance sample; detection; damaged input (fuzzed); the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.cli import main
from monitor.collectors import detect
from monitor.collectors.base import open_input
from monitor.collectors.zscaler import (
    FORMAT_CSV,
    FORMAT_JSON,
    FORMAT_KV,
    ZscalerCollector,
    sniff,
)
from monitor.observation import OBSERVATION_FIELDS
from tests.conftest import by_line, epoch, parse
from tests.conftest import collect_file as parse_file

DATA = Path(__file__).resolve().parent / "data" / "gateways"
SHARED = Path(__file__).resolve().parents[2] / "shared"
ELASTIC = SHARED / "conformance" / "proxy" / "zscaler" / "elastic-zscaler_zia-test-web.log"
SAMPLES = {
    "zscaler-nss.csv": FORMAT_CSV,
    "zscaler-nss.tsv": FORMAT_CSV,
    "zscaler-web.json": FORMAT_JSON,
    "zscaler-kv.log": FORMAT_KV,
}


def parse_bytes(data: bytes, variant="auto", host_filter=None, source="t"):
    return parse(ZscalerCollector(variant), data, source, host_filter)


# --- detection ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_feed_type_is_detected(name):
    opened = open_input(str(DATA / name))
    try:
        assert detect(opened) == SAMPLES[name]
    finally:
        opened.close()


def test_sniff_rejects_other_logs():
    squid = b"1795741200.000    120 10.0.0.1 TCP_TUNNEL/200 5000 CONNECT api.openai.com:443 - HIER_DIRECT/1.2.3.4 -"
    assert sniff(squid) is None
    assert sniff(b'{"ts": 1, "host": "x"}') is None
    assert sniff(b"date=2026-01-01 time=00:00:00 srcip=1.2.3.4 action=pass") is None
    assert sniff(b"a,b,c,d") is None
    assert sniff(b"") is None


# --- default CSV / TSV feed -------------------------------------------------------------


def test_default_csv_feed():
    obs, diag = parse_file(DATA / "zscaler-nss.csv")
    assert diag.records == 5 and diag.malformed == 1
    assert "truncated record" in diag.problems[0].reason and diag.problems[0].line == 6
    o = by_line(obs)
    a = o[1]
    assert a.format == FORMAT_CSV
    assert a.ts == epoch(2026, 11, 27, 1, 0, 0)
    assert (a.client_ip, a.user, a.method) == ("10.20.0.11", "alice@corp.example", "POST")
    assert (a.dest_host, a.dest_port, a.host_source) == ("api.openai.com", 443, "url")
    assert a.url == "api.openai.com/v1/chat/completions"
    assert (a.dest_ip, a.status, a.bytes_out, a.bytes_in) == ("162.159.140.245", 200, 2210, 5214)
    assert a.result == "Allowed" and a.duration == pytest.approx(0.388)
    assert len(a.record_id) == 24
    # blocked upload: sip 0.0.0.0 is no destination address
    assert (o[2].result, o[2].status, o[2].dest_ip) == ("Blocked", 403, None)
    # a blocked CONNECT keeps host:port, no URL
    c = o[3]
    assert (c.method, c.dest_host, c.dest_port, c.host_source, c.url) == (
        "CONNECT",
        "api.anthropic.com",
        443,
        "connect",
        None,
    )
    # plain HTTP: port from proto
    assert (o[4].dest_port, o[4].host_source) == (80, "url")
    assert o[5].client_ip == "2001:db8:20::15"
    assert o[5].dest_host == "generativelanguage.googleapis.com"


def test_tab_separated_feed():
    obs, diag = parse_file(DATA / "zscaler-nss.tsv")
    assert diag.records == 3 and diag.malformed == 0
    o = by_line(obs)
    assert (o[1].dest_host, o[1].bytes_in, o[1].duration) == ("api.openai.com", 20211, 1.21)
    assert (o[2].method, o[2].dest_host, o[2].dest_port, o[2].host_source) == (
        "CONNECT",
        "api.mistral.ai",
        443,
        "connect",
    )
    assert o[3].result == "Blocked" and o[3].status == 403


def test_default_feed_without_stime_ctime():
    fields = [
        "Mon Jun 20 15:29:11 2022",
        "new-gre",
        "HTTP",
        "ebay.com/",
        "Blocked",
        "Ebay",
        "Consumer Apps",
        "72",
        "14061",
        "Productivity Loss",
        "Shopping and Auctions",
        "Online Shopping",
        "None",
        "None",
        "0",
        "None",
        "None",
        "new-gre",
        "Default Department",
        "172.17.3.49",
        "66.211.175.229",
        "GET",
        "403",
        "curl/7.68.0",
    ]
    line = ",".join(f'"{f}"' for f in fields).encode()
    (o,), diag = parse_bytes(line, "csv")
    assert (o.client_ip, o.dest_ip, o.method, o.status) == (
        "172.17.3.49",
        "66.211.175.229",
        "GET",
        403,
    )
    assert o.duration is None and o.ts == epoch(2022, 6, 20, 15, 29, 11)


def test_zscaler_documented_sample_line():
    """The sample on help.zscaler.com's web feed page (default fields, stime/ctime)."""
    line = (
        b'"Mon Jun 20 15:29:11 2022","new-gre","HTTP","ebay.com/","Blocked","Ebay",'
        b'"Consumer Apps","72","14061","0","0","Productivity Loss","Shopping and Auctions",'
        b'"Online Shopping","None","None","0","None","None","new-gre","Default Department",'
        b'"172.17.3.49","66.211.175.229","GET","403","curl/7.68.0","None","FwFilter",'
        b'"Firewall_1","Other","None","NA","NA","N/A"'
    )
    assert sniff(line) == FORMAT_CSV
    (o,), _ = parse_bytes(line, "csv")
    assert (o.dest_host, o.dest_port, o.url, o.result) == ("ebay.com", 80, "ebay.com/", "Blocked")
    assert (o.bytes_out, o.bytes_in, o.user) == (72, 14061, "new-gre")


def test_csv_with_quotes_inside_values_falls_back_to_the_csv_reader():
    line = (
        b'"Fri Nov 27 01:00:00 2026","a@b","HTTPS","api.openai.com/v1","Allowed","OpenAI",'
        b'"x","1","2","0","5","c","d","e","None","None","0","None","None","loc","dept",'
        b'"10.0.0.1","1.2.3.4","POST","200","Agent ""quoted"" 1.0"'
    )
    (o,), diag = parse_bytes(line, "csv")
    assert o.dest_host == "api.openai.com" and diag.malformed == 0


# --- JSON --------------------------------------------------------------------------------


def test_json_feed_with_splunk_and_elastic_key_names():
    obs, diag = parse_file(DATA / "zscaler-web.json")
    assert diag.records == 4 and diag.malformed == 2
    assert [p.line for p in diag.problems] == [5, 6]
    assert diag.problems[0].reason == "no time in record"
    o = by_line(obs)
    a = o[1]  # Splunk deployment guide key names
    assert a.ts == epoch(2026, 11, 27, 3, 0, 1)
    assert (a.client_ip, a.user, a.method, a.status) == (
        "10.20.0.31",
        "henry@corp.example",
        "POST",
        200,
    )
    assert (a.dest_host, a.dest_port, a.dest_ip) == ("api.openai.com", 443, "162.159.140.245")
    assert (a.bytes_out, a.bytes_in, a.duration) == (2210, 7190, 1.32)
    assert o[2].result == "Blocked" and o[2].dest_ip is None
    b = o[3]  # Elastic's template: cltip, epochtime (wins over time), srv_dport, ints
    assert b.ts == 1795748409.0 and b.client_ip == "10.20.0.33" and b.client_port == 51544
    assert (b.dest_host, b.dest_port, b.bytes_out) == ("api.anthropic.com", 443, 1883)
    assert o[4].dest_port == 80 and o[4].duration is None  # optional fields left out


def test_json_missing_fields_are_none_and_public_ip_is_a_fallback_client():
    line = json.dumps(
        {"epochtime": "1795741200", "cpubip": "114.114.114.114", "eurl": "api.openai.com/v1"}
    ).encode()
    (o,), _ = parse_bytes(line, "json")
    assert o.client_ip == "114.114.114.114"
    assert (o.user, o.method, o.status, o.bytes_in, o.result) == (None,) * 5
    both = json.dumps({"epochtime": 1795741200, "cip": "10.1.1.1", "cpubip": "114.114.114.114"})
    (o,), _ = parse_bytes(both.encode(), "json")
    assert o.client_ip == "10.1.1.1" and o.dest_host is None and o.host_source is None


def test_time_zone_field_and_time_components():
    ny = json.dumps(
        {"time": "Fri Nov 27 01:00:00 2026", "tz": "America/New_York", "cip": "10.0.0.1"}
    )
    parts = json.dumps(
        {"yyyy": "2026", "mth": "11", "dd": "27", "hh": "01", "mm": "02", "ss": "03"}
    )
    odd = json.dumps({"time": "Fri Nov 27 01:00:00 2026", "tz": "Mars/Olympus"})
    obs, diag = parse_bytes("\n".join([ny, parts, odd]).encode(), "json")
    assert diag.malformed == 0
    assert obs[0].ts == epoch(2026, 11, 27, 6, 0, 0)  # EST is UTC-5
    assert obs[1].ts == epoch(2026, 11, 27, 1, 2, 3)
    assert obs[2].ts == epoch(2026, 11, 27, 1, 0, 0)  # unknown zone: read as UTC


def test_host_filter_skips_rejected_records_but_counts_them():
    keep_openai = lambda h: h.endswith("openai.com")  # noqa: E731
    for name in SAMPLES:
        everything, d_all = parse_file(DATA / name)
        kept, d_kept = parse_file(DATA / name, host_filter=keep_openai)
        assert d_kept.records == d_all.records and d_kept.malformed == d_all.malformed
        assert kept == [o for o in everything if o.dest_host is None or keep_openai(o.dest_host)]


# --- key=value ---------------------------------------------------------------------------


def test_leef_cef_and_key_value():
    obs, diag = parse_file(DATA / "zscaler-kv.log")
    assert diag.records == 5 and diag.malformed == 1
    assert diag.problems[0].line == 6 and diag.problems[0].reason == "no time in record"
    o = by_line(obs)
    leef = o[1]
    assert leef.ts == epoch(2026, 11, 27, 4, 0, 0)
    assert (leef.client_ip, leef.user, leef.result) == (
        "10.20.0.41",
        "liam@corp.example",
        "Allowed",
    )
    assert (leef.dest_host, leef.bytes_out, leef.bytes_in, leef.status) == (
        "api.openai.com",
        2048,
        7351,
        200,
    )
    blocked = o[2]  # LEEF cat= carries the action
    assert (blocked.result, blocked.method, blocked.host_source) == (
        "Blocked",
        "CONNECT",
        "connect",
    )
    assert (blocked.dest_host, blocked.dest_port, blocked.dest_ip) == (
        "api.deepseek.com",
        443,
        None,
    )
    cef = o[3]
    assert (cef.client_ip, cef.user, cef.method, cef.status) == (
        "10.20.0.43",
        "noah@corp.example",
        "POST",
        200,
    )
    assert (cef.bytes_out, cef.bytes_in, cef.result) == (1944, 5120, "Allowed")
    assert o[4].result == "Blocked"  # CEF header signature id when act= is absent
    kv = o[5]  # Splunk's tab-separated key=value names
    assert (kv.client_ip, kv.bytes_out, kv.dest_ip) == ("10.20.0.45", 482113, "162.159.140.245")


# --- the Elastic conformance sample ------------------------------------------------------


@pytest.mark.skipif(not ELASTIC.exists(), reason=f"conformance sample absent: {ELASTIC}")
def test_elastic_integration_sample():
    obs, diag = parse_file(ELASTIC)
    assert diag.records == 6 and diag.malformed == 0 and len(obs) == 6
    assert {o.format for o in obs} == {FORMAT_JSON}
    first = obs[0]
    assert first.ts == epoch(2021, 12, 31, 7, 7, 7)
    assert (first.client_ip, first.user, first.method) == (
        "81.2.69.193",
        "test@example.com",
        "CONNECT",
    )
    assert (first.dest_host, first.dest_port, first.host_source, first.url) == (
        "www.example.com",
        None,
        "connect",
        None,
    )
    assert (first.dest_ip, first.status, first.bytes_out, first.bytes_in) == (
        "81.2.69.145",
        200,
        600,
        65,
    )
    assert first.result == "Blocked" and first.duration == 0.0
    assert first.user_agent == "Windows Microsoft Windows 10 Pro ZTunnel/1.0"
    post = obs[1]
    assert (post.method, post.url, post.dest_host, post.dest_port, post.status) == (
        "POST",
        "www.example.com.com/join/",
        "www.example.com.com",
        443,
        403,
    )
    assert obs[4].url == "www.example.com.com/params?version=10.0.19041.1266&user=65792&Id=1"
    last = obs[5]
    assert last.ts == epoch(2022, 8, 29, 9, 20, 35)
    assert (last.dest_host, last.dest_port, last.result) == ("www.example.com", 443, "Allowed")
    assert [o.dest_ip for o in obs] == [
        "81.2.69.145",
        "89.160.20.156",
        "89.160.20.112",
        "81.2.69.144",
        "81.2.69.143",
        "89.160.20.112",
    ]


# --- damaged input -----------------------------------------------------------------------

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REAL_LINES = [
    line for name in SAMPLES for line in (DATA / name).read_bytes().splitlines() if line.strip()
]


def _violations(data: bytes, variant: str) -> list[str]:
    """What the parse of ``data`` breaks of the observation shape (nothing, when sound)."""
    obs, diag = parse_bytes(data, variant)
    bad = [f"ts {o.ts!r}" for o in obs if not (isinstance(o.ts, float) and 0 <= o.ts < 1e11)]
    bad += [
        f"port {o.dest_port}" for o in obs if not (o.dest_port is None or 0 < o.dest_port < 65536)
    ]
    bad += [
        f"host {o.dest_host!r}"
        for o in obs
        if not (o.dest_host is None or (o.dest_host == o.dest_host.lower() and o.dest_host))
    ]
    if diag.records < len(obs):
        bad.append(f"{len(obs)} observations from {diag.records} records")
    return bad


@FUZZ
@given(st.binary(max_size=3000), st.sampled_from(["auto", "csv", "json", "kv"]))
def test_fuzz_random_bytes_never_raise(data, variant):
    assert _violations(data, variant) == []


@FUZZ
@given(
    st.sampled_from(REAL_LINES),
    st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=8)), max_size=6),
    st.sampled_from(["auto", "csv", "json", "kv"]),
)
def test_fuzz_mutated_real_lines_never_raise(line, edits, variant):
    b = bytearray(line)
    for pos, chunk in edits:
        p = pos % (len(b) + 1)
        b[p : p + len(chunk)] = chunk
    assert _violations(bytes(b) + b"\n" + line, variant) == []


def test_nul_bytes_and_non_utf8_are_reported_not_raised():
    good = (DATA / "zscaler-nss.csv").read_bytes().splitlines()[0]
    data = b"\n".join([good.replace(b"HTTPS", b"HT\x00PS"), good.replace(b"alice", b"al\xffce")])
    obs, diag = parse_bytes(data, "csv")
    assert diag.malformed == 1 and obs[0].user == "al\\xffce@corp.example"


def test_positional_fields_are_observation_fields():
    assert {"client_ip", "dest_host", "result", "record_id"} <= set(OBSERVATION_FIELDS)


# --- CLI end to end ----------------------------------------------------------------------


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def test_cli_parse_json_autodetects_each_feed_type():
    for name, fmt in SAMPLES.items():
        rows = [json.loads(x) for x in _run("parse", DATA / name, "--json").stdout.splitlines()]
        assert rows and {r["format"] for r in rows} == {fmt}
        openai = [r for r in rows if r["dest_host"] == "api.openai.com"]
        assert openai and all(r["provider"] == "openai" for r in openai)


@pytest.fixture
def scanned(tmp_path):
    db = tmp_path / "z.db"
    out = _run("--db", db, "scan", DATA / "zscaler-nss.csv", "--egress-country", "CN", "--json")
    summary = json.loads(out.stdout)
    incs = [json.loads(x) for x in _run("--db", db, "incidents", "--json").stdout.splitlines()]
    return summary, incs


def test_cli_scan_raises_region_incident_and_blocked_outcome(scanned):
    summary, incs = scanned
    assert summary["malformed"] == 1
    openai = [
        i
        for i in incs
        if i["rule"] == "provider-region-unsupported" and i["dest_host"] == "api.openai.com"
    ]
    assert openai and {i["provider"] for i in openai} == {"openai"}
    blocked = [i for i in openai if i["client_ip"] == "10.20.0.12"]
    assert blocked and blocked[0]["outcome"] == "blocked"  # action Blocked, respcode 403
    allowed = [i for i in openai if i["client_ip"] == "10.20.0.11"]
    assert allowed and allowed[0]["outcome"] == "allowed"


def test_cli_blocked_action_with_status_200_is_blocked(scanned):
    _summary, incs = scanned
    anthropic = [i for i in incs if i["dest_host"] == "api.anthropic.com"]
    assert anthropic and anthropic[0]["outcome"] == "blocked"
