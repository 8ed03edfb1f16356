"""W3C extended logs: Blue Coat ProxySG (bcreportermain_v1, main), IIS; header changes,
quoting, CONNECT, damaged input (fuzzed), the CLI end to end."""

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
from monitor.collectors.elff import ElffCollector, sniff_head, split_fields
from tests.conftest import by_line, epoch, parse
from tests.conftest import collect_file as parse_file

DATA = Path(__file__).resolve().parent / "data" / "gateways"
BLUECOAT = DATA / "bluecoat-proxysg.log"
IIS = DATA / "iis-w3c.log"
BCREPORTER = (
    "#Fields: date time time-taken c-ip cs-username cs-auth-group x-exception-id "
    "sc-filter-result cs-categories cs(Referer) sc-status s-action cs-method rs(Content-Type) "
    "cs-uri-scheme cs-host cs-uri-port cs-uri-path cs-uri-query cs-uri-extension "
    "cs(User-Agent) s-ip sc-bytes cs-bytes x-virus-id x-bluecoat-application-name "
    "x-bluecoat-application-operation"
)


def parse_bytes(data: bytes, host_filter=None):
    return parse(ElffCollector(), data, host_filter=host_filter)


@pytest.mark.parametrize("path", [BLUECOAT, IIS])
def test_detected_from_the_header(path):
    opened = open_input(str(path))
    try:
        assert detect(opened) == "elff"
    finally:
        opened.close()


def test_sniff_head():
    assert sniff_head(b"\xef\xbb\xbf#Software: SGOS 6.7\n")
    assert sniff_head(b"#Fields: date time c-ip\n")
    assert not sniff_head(b"#separator \\x09\n#fields\tts\tuid\n")  # Zeek TSV
    assert not sniff_head(b"1795741200.000 1 10.0.0.1 TCP_MISS/200 1 GET http://a/ - -")


def test_split_fields_quotes():
    assert split_fields(b'a "b c" -  d') == [b"a", b"b c", b"-", b"d"]
    assert split_fields(b'a "say ""hi""" b') == [b"a", b'say "hi"', b"b"]
    assert split_fields(b'a "" b') == [b"a", b"", b"b"]
    assert split_fields(b'a "open b') is None
    assert split_fields(b'a\t"b c"\tdd') == [b"a", b"b c", b"dd"]


def test_bluecoat_bcreportermain():
    obs, diag = parse_file(BLUECOAT)
    assert diag.records == 9 and diag.malformed == 1
    assert diag.problems[0].line == 13 and "fields, #Fields: names 27" in diag.problems[0].reason
    o = by_line(obs)
    t = o[7]  # CONNECT tunnel
    assert t.format == "elff" and t.ts == epoch(2026, 11, 27, 5, 0, 1)
    assert (t.client_ip, t.user, t.method) == ("10.20.0.51", "alice@corp.example", "CONNECT")
    assert (t.dest_host, t.dest_port, t.host_source, t.url) == (
        "api.openai.com",
        443,
        "connect",
        None,
    )
    assert (t.status, t.result, t.bytes_in, t.bytes_out) == (200, "TCP_TUNNELED", 7391, 2116)
    assert t.duration == 0.152 and t.dest_ip is None  # s-ip is the appliance, not the server
    d = o[8]  # policy_denied
    assert (d.result, d.status, d.dest_host) == ("TCP_DENIED", 403, "api.anthropic.com")
    p = o[9]  # SSL-intercepted POST: URL rebuilt from scheme, host, port, path
    assert p.url == "https://api.openai.com/v1/chat/completions" and p.host_source == "url"
    assert (p.dest_port, p.user, p.result) == (443, "carol", "TCP_NC_MISS")
    assert o[10].url == "http://www.example.com/index.html?lang=en" and o[10].user is None
    deny = o[11]  # content_filter_denied with OBSERVED/TCP_NC_MISS: the verdict is DENIED
    assert deny.result == "DENIED" and deny.dest_host == "chat.deepseek.com"
    assert o[12].url == "http://llm-gateway.corp.example:8080/v1/models"
    assert o[14].client_ip == "2001:db8:20::58"
    # cs(User-Agent), quoted (a doubled quote is one quote)
    assert t.user_agent == "OpenAI/Python 1.54.0" and o[14].user_agent == "google-genai/1.0"
    assert o[11].user_agent == 'Agent "quoted" 1.0'


def test_fields_header_changes_mid_file():
    obs, _ = parse_file(BLUECOAT)
    o = by_line(obs)
    direct, parent = o[17], o[18]
    assert direct.ts == epoch(2026, 11, 27, 6, 0, 0)
    assert (direct.user, direct.dest_host, direct.dest_ip) == (
        "dave",
        "api.anthropic.com",
        "160.79.104.10",
    )
    assert (direct.bytes_in, direct.bytes_out, direct.result) == (6120, 1883, "TCP_NC_MISS")
    assert parent.dest_ip is None  # the supplier is a parent proxy, not the server


def test_iis():
    obs, diag = parse_file(IIS)
    assert diag.records == 3 and diag.malformed == 0 and diag.skipped == 5
    o = by_line(obs)
    assert (o[5].dest_ip, o[5].dest_port, o[5].url, o[5].dest_host) == (
        "10.40.0.5",
        443,
        "/api/health",
        None,
    )
    assert o[6].url == "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    assert (o[6].user, o[6].status, o[6].duration) == ("CORP\\alice", 401, 0.003)
    # IIS writes the User-Agent's spaces as "+"
    assert o[5].user_agent == "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
    h = o[8]  # second header adds cs-host (the Host header) and byte counts
    assert (h.dest_host, h.host_source, h.bytes_in, h.bytes_out) == (
        "llm-gateway.corp.example",
        "http_host",
        5120,
        2210,
    )


def test_tmg_style_full_uri_and_remote_fields():
    data = (
        b"#Software: Microsoft Forefront Threat Management Gateway\n"
        b"#Fields: c-ip cs-username date time r-host r-ip r-port time-taken cs-bytes sc-bytes "
        b"s-operation cs-uri sc-status action\n"
        b"10.9.0.1 CORP\\bob 2026-11-27 09:00:00 api.openai.com 162.159.140.245 443 120 900 "
        b"4000 POST https://api.openai.com/v1/chat/completions 200 Allowed\n"
        b"10.9.0.2 - 2026-11-27 09:00:01.250 - - - 1 0 0 CONNECT api.anthropic.com:443 12202 "
        b'"Denied Connection"\n'
    )
    obs, diag = parse_bytes(data)
    assert diag.malformed == 0 and len(obs) == 2
    a, b = obs
    assert (a.dest_host, a.dest_ip, a.dest_port, a.method, a.result) == (
        "api.openai.com",
        "162.159.140.245",
        443,
        "POST",
        "Allowed",
    )
    assert a.url == "https://api.openai.com/v1/chat/completions" and a.host_source == "url"
    assert (b.dest_host, b.dest_port, b.host_source, b.result) == (
        "api.anthropic.com",
        443,
        "connect",
        "Denied Connection",
    )
    assert b.ts == epoch(2026, 11, 27, 9, 0, 1) + 0.25
    assert b.status is None  # 12202 is a Windows error number, not an HTTP status


def test_records_before_fields_and_headers_without_time():
    obs, diag = parse_bytes(b"2026-11-27 05:00:01 1 10.0.0.1\n")
    assert not obs and diag.file_errors and "before any #Fields" in diag.file_errors[0].reason
    obs, diag = parse_bytes(b"#Fields: c-ip cs-host\n10.0.0.1 api.openai.com\n")
    assert not obs and "no date/time" in diag.file_errors[0].reason


def test_epoch_timestamp_column_and_bad_dates():
    data = (
        b"#Fields: x-timestamp-unix c-ip cs-method cs-uri\n"
        b"1795741200 10.0.0.1 GET http://api.openai.com/v1/models\n"
        b"#Fields: date time c-ip cs-host\n"
        b"2026-13-40 05:00:01 10.0.0.1 api.openai.com\n"
        b"2026-11-27 25:00:01 10.0.0.1 api.openai.com\n"
    )
    obs, diag = parse_bytes(data)
    assert len(obs) == 1 and obs[0].ts == 1795741200.0 and obs[0].dest_port == 80
    assert diag.malformed == 2 and {p.reason for p in diag.problems} == {"bad date/time"}


def test_host_filter():
    keep = lambda h: h == "api.openai.com"  # noqa: E731
    everything, d1 = parse_file(BLUECOAT)
    kept, d2 = parse_file(BLUECOAT, host_filter=keep)
    assert d1.records == d2.records
    assert kept == [o for o in everything if o.dest_host is None or keep(o.dest_host)]


FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REAL_LINES = [
    ln for p in (BLUECOAT, IIS) for ln in p.read_bytes().splitlines() if not ln.startswith(b"#")
]


def _violations(data: bytes) -> list[str]:
    """What the parse of ``data`` breaks of the observation shape (nothing, when sound)."""
    obs, diag = parse_bytes(data)
    bad = [f"ts {o.ts!r}" for o in obs if not (isinstance(o.ts, float) and 0 <= o.ts < 1e11)]
    bad += [
        f"port {o.dest_port}" for o in obs if not (o.dest_port is None or 0 < o.dest_port < 65536)
    ]
    if diag.records < len(obs):
        bad.append(f"{len(obs)} observations from {diag.records} records")
    return bad


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_random_bytes_never_raise(data):
    assert _violations(BCREPORTER.encode() + b"\n" + data) == []
    assert _violations(data) == []


@FUZZ
@given(
    st.sampled_from(REAL_LINES),
    st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=8)), max_size=6),
)
def test_fuzz_mutated_real_lines_never_raise(line, edits):
    b = bytearray(line)
    for pos, chunk in edits:
        p = pos % (len(b) + 1)
        b[p : p + len(chunk)] = chunk
    assert _violations(BCREPORTER.encode() + b"\n" + bytes(b) + b"\n" + line) == []


def test_cli_parse_and_scan(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["parse", str(BLUECOAT), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert {r["format"] for r in rows} == {"elff"}
    assert {r["provider"] for r in rows if r["dest_host"] == "api.openai.com"} == {"openai"}
    db = str(tmp_path / "e.db")
    res = runner.invoke(
        main, ["--db", db, "scan", str(BLUECOAT), "--egress-country", "CN"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["--db", db, "incidents", "--json"], catch_exceptions=False)
    incs = [json.loads(x) for x in res.stdout.splitlines()]
    region = [i for i in incs if i["rule"] == "provider-region-unsupported"]
    assert any(i["dest_host"] == "api.openai.com" for i in region)
    denied = [i for i in region if i["client_ip"] == "10.20.0.52"]
    assert denied and denied[0]["outcome"] == "blocked"
