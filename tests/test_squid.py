"""Squid collector: native, common, combined, custom logformat, damaged input."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import pytest

from monitor.collectors.base import MAX_LINE, Diagnostics, open_input
from monitor.collectors.squid import POSITIONAL_FIELDS, SquidCollector, sniff
from monitor.collectors.squid_logformat import LogformatError, compile_logformat, tokenize
from monitor.observation import OBSERVATION_FIELDS
from tests.conftest import epoch

DATA = Path(__file__).resolve().parent / "data" / "squid"
SHARED = Path(__file__).resolve().parents[2] / "shared"
CONFORMANCE = SHARED / "conformance" / "proxy" / "squid"

#: Works out the columns of elastic/integrations' extended test log. Elastic names
#: source.port, destination/source bytes, reply/request header sizes, response body bytes,
#: Host header, X-Forwarded-For and server time; the three "-" columns it does not name
#: are matched with codes the monitor ignores (%ea %et %err_code).
EXTENSIVE = (
    "%ts.%03tu %6tr %>a %>p %Ss/%03>Hs %<st %>st %<sh %>sh %<bs %rm %ru %rv %[un "
    '%Sh/%<a %<p %mt %ea %et "%{Referer}>h" "%{User-Agent}>h" "%{Host}>h" '
    '"%{X-Forwarded-For}>h" %<tt %err_code'
)
#: Its last two lines carry one more quoted column (Elastic reads it as the TLS SNI).
EXTENSIVE_SNI = EXTENSIVE.replace("%<tt", '"%ssl::>sni" %<tt')


def parse_file(path, variant="auto", logformat=None, host_filter=None):
    diag = Diagnostics()
    opened = open_input(str(path))
    try:
        col = SquidCollector(variant, logformat=logformat)
        obs = list(col.parse(opened.stream, str(path), diag, host_filter))
    finally:
        opened.close()
    return obs, diag


def write(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --- native -----------------------------------------------------------------------------


def test_observation_field_order_matches_positional_construction():
    assert OBSERVATION_FIELDS[: len(POSITIONAL_FIELDS)] == POSITIONAL_FIELDS


def test_native_sample():
    obs, diag = parse_file(DATA / "native.log")
    assert diag.malformed == 0 and diag.records == 8 == len(obs)
    assert all(o.format == "squid" for o in obs)
    c = obs[0]
    assert c.ts == pytest.approx(1700000000.123)
    assert c.line == 1
    assert (c.client_ip, c.user, c.method) == ("10.0.0.5", "alice", "CONNECT")
    assert (c.dest_host, c.dest_port, c.url, c.host_source) == (
        "api.openai.com",
        443,
        None,
        "connect",
    )
    assert (c.dest_ip, c.status, c.result) == ("104.18.7.192", 200, "TCP_TUNNEL")
    assert (c.bytes_in, c.bytes_out, c.duration) == (48213, None, 0.25)
    assert c.record_id and len(c.record_id) == 24

    g = obs[1]
    assert (g.dest_host, g.dest_port, g.host_source) == ("example.org", 80, "url")
    assert g.url == "http://example.org/index.html" and g.user is None

    p = obs[2]  # https default port, trailing dot, old "DIRECT" hierarchy code
    assert (p.method, p.dest_host, p.dest_port, p.status) == ("POST", "api.anthropic.com", 443, 201)
    assert p.dest_ip == "160.79.104.10" and p.duration == pytest.approx(1.003)

    d = obs[3]
    assert (d.result, d.status, d.dest_host, d.dest_ip) == (
        "TCP_DENIED",
        403,
        "api.deepseek.com",
        None,
    )

    v6 = obs[4]
    assert v6.client_ip == "2001:db8::5"
    assert (v6.dest_host, v6.dest_port, v6.dest_ip) == ("2001:db8::10", 443, "2001:db8::10")

    none = obs[5]
    assert (none.result, none.status, none.dest_host, none.host_source) == (
        "NONE_NONE",
        0,
        None,
        None,
    )
    assert none.bytes_in == 0

    parent = obs[6]  # peer is a parent proxy, not the destination
    assert (parent.dest_host, parent.dest_port, parent.dest_ip) == ("2001:db8::20", 8080, None)

    extra = obs[7]  # extra trailing fields tolerated
    assert (extra.dest_host, extra.dest_ip, extra.line) == ("example.net", "198.51.100.9", 8)


def test_native_padding_and_dash_size(tmp_path):
    p = write(
        tmp_path,
        "pad.log",
        b"1700000000.001      5   10.0.0.1   TCP_MISS/200   -   GET  http://a.example/  -  HIER_DIRECT/192.0.2.1 -\n"
        b"   1700000000.002 123456 10.0.0.1 TCP_MISS/200 10 GET http://a.example/ - HIER_DIRECT/192.0.2.1 -\r\n",
    )
    obs, diag = parse_file(p, "squid")
    assert diag.malformed == 0 and len(obs) == 2
    assert obs[0].bytes_in is None and obs[0].duration == 0.005
    assert obs[1].duration == pytest.approx(123.456) and obs[1].bytes_in == 10
    assert obs[1].record_id != obs[0].record_id


def test_record_id_stable_and_only_on_yielded(tmp_path):
    obs1, _ = parse_file(DATA / "native.log")
    obs2, _ = parse_file(DATA / "native.log")
    assert [o.record_id for o in obs1] == [o.record_id for o in obs2]
    assert len({o.record_id for o in obs1}) == len(obs1)


def test_host_filter_skips_but_counts():
    seen = []

    def only_llm(host):
        seen.append(host)
        return host.startswith("api.")

    obs, diag = parse_file(DATA / "native.log", host_filter=only_llm)
    assert diag.records == 8
    # records without a host (NONE error:...) are kept for later stages to judge
    assert [o.dest_host for o in obs] == [
        "api.openai.com",
        "api.anthropic.com",
        "api.deepseek.com",
        None,
    ]


def test_elastic_native_conformance():
    path = CONFORMANCE / "elastic-test-access.log"
    if not path.exists():
        pytest.skip(f"shared conformance data absent: {path}")
    obs, diag = parse_file(path)
    assert (diag.records, diag.malformed, len(obs)) == (100, 0, 100)
    first = obs[0]
    assert (first.method, first.dest_host, first.dest_port) == ("CONNECT", "login.yahoo.com", 443)
    assert (first.dest_ip, first.user, first.bytes_in) == ("175.16.199.115", "badeyek", 19763)
    assert first.duration == pytest.approx(5.006) and first.ts == pytest.approx(1157689312.049)
    assert sum(o.result == "TCP_DENIED" and o.status == 407 for o in obs) == 15
    assert sum(o.dest_ip is None for o in obs) == 32  # NONE/- hierarchy (cache hits)


# --- common / combined ------------------------------------------------------------------


def test_common():
    obs, diag = parse_file(DATA / "common.log")
    assert diag.malformed == 0 and len(obs) == 2
    a, b = obs
    assert a.format == b.format == "squid-common"
    assert a.ts == epoch(2026, 3, 13, 15, 48, 42)
    assert b.ts == epoch(2026, 3, 13, 15, 48, 42)  # 16:48:42 +0100
    assert (a.user, a.dest_host, a.dest_port, a.host_source) == (
        "alice",
        "api.openai.com",
        443,
        "connect",
    )
    assert (a.result, a.status, a.bytes_in, a.dest_ip) == ("TCP_TUNNEL", 200, 48213, None)
    assert (b.dest_host, b.dest_port, b.status, b.result) == (
        "example.org",
        80,
        304,
        "TCP_REFRESH_UNMODIFIED",
    )


def test_combined_with_tz_offsets():
    obs, diag = parse_file(DATA / "combined.log")
    assert diag.malformed == 0 and len(obs) == 2
    a, b = obs
    assert a.format == "squid-combined"
    assert a.ts == epoch(2026, 3, 13, 15, 48, 42)  # 10:48:42 -0500
    assert b.ts == epoch(2026, 1, 1, 0, 0, 0)  # 05:30 +0530
    assert (a.method, a.dest_host, a.dest_port, a.url) == (
        "POST",
        "api.anthropic.com",
        443,
        "https://api.anthropic.com/v1/messages",
    )
    assert (b.dest_host, b.host_source, b.bytes_in) == ("api.openai.com", "connect", 9000)


def test_sniff():
    native = (DATA / "native.log").read_bytes().splitlines()[0]
    assert sniff(native) == "squid"
    assert sniff((DATA / "common.log").read_bytes().splitlines()[0]) == "squid-common"
    assert sniff((DATA / "combined.log").read_bytes().splitlines()[0]) == "squid-combined"
    assert sniff(b"hello world") is None
    assert sniff(b"") is None
    assert sniff(b"\x00\xff" * 40) is None


# --- custom logformat -------------------------------------------------------------------


def test_custom_logformat_elastic_extensive():
    path = CONFORMANCE / "elastic-test-access-extensive.log"
    if not path.exists():
        pytest.skip(f"shared conformance data absent: {path}")
    obs, diag = parse_file(path, logformat="logformat extended " + EXTENSIVE)
    assert diag.records == 9 == len(obs)
    assert [(p.line, p.reason) for p in diag.problems] == [
        (10, "does not match the logformat"),
        (11, "does not match the logformat"),
    ]
    first = obs[0]
    assert first.format == "squid-custom"
    assert first.ts == pytest.approx(1773416922.391)
    assert (first.client_ip, first.client_port, first.user) == ("10.105.21.199", 58938, "badeyek")
    assert (first.method, first.dest_host, first.dest_port, first.url) == (
        "GET",
        "example.com",
        80,
        "http://example.com/",
    )
    assert (first.dest_ip, first.status, first.result) == ("203.0.113.10", 200, "TCP_MISS")
    assert (first.bytes_in, first.bytes_out, first.duration) == (904, 123, 0.104)

    tunnel = obs[1]
    assert (tunnel.result, tunnel.method, tunnel.dest_host, tunnel.dest_port) == (
        "TCP_TUNNEL",
        "CONNECT",
        "www.google.com",
        443,
    )
    assert (tunnel.host_source, tunnel.url, tunnel.bytes_in, tunnel.bytes_out) == (
        "connect",
        None,
        28854,
        2051,
    )
    assert tunnel.dest_ip == "198.51.100.20" and tunnel.client_port == 58948

    assert (obs[3].status, obs[3].line) == (404, 4)
    assert obs[4].dest_ip is None and obs[4].result == "TCP_MEM_HIT"  # HIER_NONE/-
    assert (obs[8].method, obs[8].bytes_out) == ("POST", 205)

    sni, diag2 = parse_file(path, logformat=EXTENSIVE_SNI)
    assert [o.line for o in sni] == [10, 11] and diag2.malformed == 9
    assert (sni[0].dest_host, sni[0].bytes_out, sni[0].bytes_in) == (
        "secure.example.com",
        1980,
        15432,
    )
    assert (sni[1].dest_host, sni[1].url) == ("httpbin.org", "http://httpbin.org/headers")


def test_custom_logformat_host_header_and_quotes(tmp_path):
    fmt = '%tg %>a %Ss %>Hs %rm %"{Host}>h %>rd "%{User-Agent}>h"'
    p = write(
        tmp_path,
        "c.log",
        b'13/Mar/2026:15:48:42 +0000 10.0.0.1 TCP_MISS 200 GET API.Example.COM:8443 - "a \\"b\\" c"\n'
        b'13/Mar/2026:15:48:43 +0000 10.0.0.1 TCP_MISS 200 GET - host.example "x"\n',
    )
    obs, diag = parse_file(p, logformat=fmt)
    assert diag.malformed == 0
    assert (obs[0].dest_host, obs[0].dest_port, obs[0].host_source) == (
        "api.example.com",
        8443,
        "http_host",
    )
    assert (obs[1].dest_host, obs[1].host_source) == ("host.example", "url")
    assert obs[0].ts == epoch(2026, 3, 13, 15, 48, 42)


def test_logformat_native_definition_uses_fast_path():
    col = SquidCollector(
        logformat="logformat squid %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt"
    )
    assert col.variant == "squid" and col.compiled is None


def test_logformat_compile_errors():
    with pytest.raises(LogformatError, match=r"%zz"):
        compile_logformat("%ts %zz %>a")
    with pytest.raises(LogformatError, match="unknown Squid format code"):
        SquidCollector(logformat="%ts.%03tu %>q")
    with pytest.raises(LogformatError):
        compile_logformat("no codes here")
    with pytest.raises(LogformatError):
        compile_logformat("%{Host")
    with pytest.raises(ValueError):
        SquidCollector("nonsense")


def test_tokenize_modifiers():
    toks = tokenize('%ts.%03tu %-6tr %"{User-Agent}>h %[un %http::>Hs %%')
    codes = [t.code for t in toks if not isinstance(t, str)]
    assert codes == ["ts", "tu", "tr", ">h", "un", ">Hs"]
    tu, tr, ua, un = [t for t in toks if not isinstance(t, str)][1:5]
    assert tu.zero and tu.width == 3
    assert tr.left and tr.width == 6
    assert ua.quote == "quote" and ua.arg == "User-Agent"
    assert un.quote == "mime"
    assert toks[-1] == " %"


# --- damaged input ------------------------------------------------------------------------

GOOD = b"1700000000.123    250 10.0.0.5 TCP_TUNNEL/200 48213 CONNECT api.openai.com:443 alice HIER_DIRECT/104.18.7.192 -"
GOOD2 = b"1700000001.500     10 10.0.0.6 TCP_TUNNEL/200 100 CONNECT api.anthropic.com:443 - HIER_DIRECT/160.79.104.10 -"


def test_glued_lines_recovered(tmp_path):
    cut = GOOD[:70]  # first record cut mid-URL by the buffer boundary
    p = write(
        tmp_path,
        "glued.log",
        GOOD
        + b"\n"
        + cut
        + GOOD2
        + b"\n"
        + GOOD
        + b" "
        + GOOD2
        + b"\n"
        + b"\x00" * 30
        + GOOD2
        + b"\n",
    )
    obs, diag = parse_file(p)
    assert [(o.line, o.dest_host) for o in obs] == [
        (1, "api.openai.com"),
        (2, "api.anthropic.com"),
        (3, "api.openai.com"),
        (3, "api.anthropic.com"),
        (4, "api.anthropic.com"),
    ]
    assert diag.records == 5
    assert [p.line for p in diag.problems] == [2, 3, 4]
    assert "glued" in diag.problems[0].reason and "1 recovered" in diag.problems[0].reason
    assert "2 recovered" in diag.problems[1].reason
    # the recovered record's identity is that of its own bytes
    assert obs[1].record_id == obs[4].record_id


def test_truncated_junk_and_bad_numbers(tmp_path):
    lines = [
        GOOD,  # 1
        GOOD[:40],  # 2 truncated
        b"\x00\x01\x02\xff\xfe binary junk \xc3\x28",  # 3
        GOOD.replace(b"1700000000.123", b"17000x0000.12"),  # 4 bad time
        GOOD.replace(b"TCP_TUNNEL/200", b"TCP_TUNNEL/2x0"),  # 5 bad status
        GOOD.replace(b"48213", b"48k13"),  # 6 bad size
        GOOD.replace(b"   250", b"   2.5"),  # 7 bad elapsed
        b"",  # 8 empty: skipped, not malformed
        GOOD.replace(b"alice", "ålice".encode("latin-1")),  # 9 invalid UTF-8 in data: kept
        GOOD.replace(b"api.openai.com", b"api\x00openai.com"),  # 10 NUL
        b"nan 250 10.0.0.5 TCP_TUNNEL/200 1 CONNECT a:443 - HIER_NONE/- -",  # 11
        GOOD,  # 12 (no trailing newline)
    ]
    p = write(tmp_path, "bad.log", b"\n".join(lines))
    obs, diag = parse_file(p, "squid")
    assert [o.line for o in obs] == [1, 9, 12]
    assert obs[1].user == "\\xe5lice"
    assert [pr.line for pr in diag.problems] == [2, 3, 4, 5, 6, 7, 10, 11]
    assert diag.malformed == 8 and diag.records == 3 and diag.skipped == 1
    reasons = {pr.line: pr.reason for pr in diag.problems}
    assert reasons[2].startswith("truncated")
    assert reasons[5] == "bad result code/status"
    assert reasons[10] == "NUL bytes in line"
    assert all(str(pr).startswith(f"{p}:{pr.line}: ") for pr in diag.problems)


def test_empty_file(tmp_path):
    for data in (b"", b"\n\n"):
        obs, diag = parse_file(write(tmp_path, "empty.log", data))
        assert obs == [] and diag.records == 0 and diag.malformed == 0 and not diag.file_errors


def test_overlong_line(tmp_path):
    p = write(tmp_path, "long.log", GOOD + b"\n" + b"x" * (MAX_LINE + 10) + b"\n" + GOOD2 + b"\n")
    obs, diag = parse_file(p)
    assert [o.line for o in obs] == [1, 3]
    assert [pr.line for pr in diag.problems] == [2]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_compressed(tmp_path, compress):
    raw = (DATA / "native.log").read_bytes()
    p = write(tmp_path, "access.log.z", compress(raw))
    obs, diag = parse_file(p)
    plain, _ = parse_file(DATA / "native.log")
    assert len(obs) == 8 and diag.malformed == 0
    assert [o.record_id for o in obs] == [o.record_id for o in plain]


def test_truncated_gzip(tmp_path):
    raw = b"\n".join([GOOD] * 5000) + b"\n"
    p = write(tmp_path, "cut.log.gz", gzip.compress(raw)[:-200])
    obs, diag = parse_file(p)
    assert (
        diag.file_errors and "compressed data ends early after line" in diag.file_errors[0].reason
    )
    assert diag.malformed == 0 and diag.records == int(diag.file_errors[0].reason.split()[-1])


def test_wrong_forced_variant(tmp_path):
    obs, diag = parse_file(DATA / "native.log", "common")
    assert obs == [] and diag.malformed == 8 and diag.records == 0
    assert [pr.line for pr in diag.problems] == list(range(1, 9))
    assert str(diag.problems[0]).startswith(f"{DATA / 'native.log'}:1: does not match")

    obs, diag = parse_file(DATA / "common.log", "squid")
    assert obs == [] and diag.malformed == 2
    assert [pr.line for pr in diag.problems] == [1, 2]

    obs, diag = parse_file(DATA / "combined.log", "common")
    assert obs == [] and diag.malformed == 2


def test_auto_detect_skips_leading_blank_lines(tmp_path):
    p = write(tmp_path, "c.log", b"\n\n" + (DATA / "combined.log").read_bytes())
    obs, diag = parse_file(p)
    assert [o.line for o in obs] == [3, 4] and obs[0].format == "squid-combined"
    assert diag.skipped == 2


def test_common_glued(tmp_path):
    a, b = (DATA / "common.log").read_bytes().splitlines()
    p = write(tmp_path, "g.log", a[:50] + b + b"\n")
    obs, diag = parse_file(p, "common")
    assert [(o.line, o.dest_host) for o in obs] == [(1, "example.org")]
    assert diag.malformed == 1 and "glued" in diag.problems[0].reason


def test_line_longer_than_a_read_chunk(tmp_path):
    huge = b"y" * (3 * 1024 * 1024)
    p = write(tmp_path, "huge.log", GOOD + b"\n" + huge + b"\n" + GOOD2 + b"\n" + huge)
    obs, diag = parse_file(p)
    assert [o.line for o in obs] == [1, 3]
    assert [pr.line for pr in diag.problems] == [2, 4]
    assert all("longer than" in pr.reason for pr in diag.problems)


def test_host_filter_on_combined():
    obs, diag = parse_file(DATA / "combined.log", host_filter=lambda h: h == "api.openai.com")
    assert [o.dest_host for o in obs] == ["api.openai.com"] and diag.records == 2


def test_custom_peer_without_hierarchy_and_ts_start(tmp_path):
    p = write(
        tmp_path,
        "p.log",
        b"1700000000.250 10.0.0.1 CONNECT api.openai.com:443 104.18.7.192 200 5 7\n"
        b"1700000001.000 10.0.0.1 GET http://x.example/ - 200 - -\n",
    )
    obs, diag = parse_file(p, logformat="%tS %>a %rm %ru %<a %>Hs %>st %<st")
    assert diag.malformed == 0
    assert obs[0].ts == pytest.approx(1700000000.25)
    assert (obs[0].dest_ip, obs[0].bytes_out, obs[0].bytes_in) == ("104.18.7.192", 5, 7)
    assert (obs[1].dest_ip, obs[1].bytes_out, obs[1].bytes_in) == (None, None, None)


def test_common_connection_without_request(tmp_path):
    # Squid's built-in common/combined print the protocol seen, NONE/0.0 for a bare probe
    p = write(
        tmp_path,
        "probe.log",
        b'10.0.0.9 - - [13/Mar/2026:15:48:42 +0000] "NONE error:transaction-end-before-headers'
        b' NONE/0.0" 0 0 NONE_NONE:HIER_NONE\n'
        b'10.0.0.9 - - [13/Mar/2026:15:48:43 +0000] "GET http://a.example/ HTTP/1.1" 200 5'
        b' "-" "curl/8" TCP_MISS:HIER_DIRECT\n',
    )
    obs, diag = parse_file(p, "common")
    assert diag.malformed == 1 and diag.problems[0].line == 2  # combined line, common forced
    assert (obs[0].method, obs[0].dest_host, obs[0].status, obs[0].result) == (
        "NONE",
        None,
        0,
        "NONE_NONE",
    )
    obs, diag = parse_file(p, "combined")
    assert [o.line for o in obs] == [2] and diag.malformed == 1
