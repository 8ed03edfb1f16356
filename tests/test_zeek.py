"""Zeek logs: TSV and JSON, conn/ssl/http/dns/quic joined by uid, directories, the real
baselines in ../shared/conformance/zeek-logs, auto-detection, fuzzing and the CLI."""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.cli import EXIT_FINDINGS, main
from monitor.collectors import CollectOptions, Diagnostics, InputError, collect, detect, format_of
from monitor.collectors.base import open_input
from monitor.collectors.zeek import (
    FlowJoin,
    ZeekCollector,
    directory_files,
    http_target,
    iso_ts,
    sniff_json,
    sniff_tsv,
)
from monitor.observation import HOST_SOURCES
from tests import conftest

ZEEK_LOGS = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "zeek-logs"
needs_conformance = pytest.mark.skipif(
    not ZEEK_LOGS.is_dir(), reason=f"conformance data not present at {ZEEK_LOGS}"
)
T0 = 1_700_000_000.0
MASK = b"XXXXXXXXXX.XXXXXX"

COMMON = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"]
CONN = [*COMMON, "proto", "service", "duration", "orig_bytes", "resp_bytes", "conn_state"]
CONN += ["orig_pkts", "resp_pkts"]
SSL = [*COMMON, "version", "server_name", "established"]
HTTP = [*COMMON, "trans_depth", "method", "host", "uri", "status_code"]
HTTP += ["request_body_len", "response_body_len"]
DNS = [*COMMON, "proto", "query", "qtype_name", "answers", "TTLs"]
QUIC = [*COMMON, "version", "server_name", "client_protocol"]


def tsv(path: str, fields: list[str], rows: list[list[str]]) -> bytes:
    head = [
        "#separator \\x09",
        "#set_separator\t,",
        "#empty_field\t(empty)",
        "#unset_field\t-",
        f"#path\t{path}",
        "#open\t2023-11-14-22-13-20",
        "#fields\t" + "\t".join(fields),
        "#types\t" + "\t".join("string" for _ in fields),
    ]
    body = ["\t".join(r) for r in rows]
    return ("\n".join([*head, *body, "#close\t2023-11-14-23-00-00"]) + "\n").encode()


def parse(data: bytes, source: str = "x.log", host_filter=None, **kw):
    c = ZeekCollector(**kw)
    return (*conftest.parse(c, data, source, host_filter), c)


def day(tmp_path: Path, period: str = "00:00:00-01:00:00", gz: bool = True) -> Path:
    """A directory of one hour of Zeek logs: every log type, rotated names, gzip."""
    d = tmp_path / "2023-11-14"
    d.mkdir(exist_ok=True)
    logs = {
        "dns": tsv(
            "dns",
            DNS,
            [
                [f"{T0}", "Cd1", "10.0.0.5", "33333", "10.0.0.53", "53", "udp", "api.openai.com"]
                + ["A", "x.cdn.net,104.18.7.192", "300.0,300.0"],
                [f"{T0}", "Cd2", "10.0.0.5", "33334", "10.0.0.53", "53", "udp", "nothing.test"]
                + ["A", "(empty)", "(empty)"],
            ],
        ),
        "ssl": tsv(
            "ssl",
            SSL,
            [
                [f"{T0 + 1}", "Ctls1", "10.0.0.5", "40001", "104.18.7.192", "443", "TLSv13"]
                + ["api.openai.com", "T"],
                [f"{T0 + 2}", "Ctls2", "10.0.0.5", "40002", "104.18.7.192", "443", "TLSv13"]
                + ["-", "F"],
                [f"{T0 + 3}", "Cq1", "10.0.0.5", "40003", "162.159.140.245", "443", "TLSv13"]
                + ["api.anthropic.com", "T"],
            ],
        ),
        "quic": tsv(
            "quic",
            QUIC,
            [
                [f"{T0 + 3}", "Cq1", "10.0.0.5", "40003", "162.159.140.245", "443", "1"]
                + ["api.anthropic.com", "h3"]
            ],
        ),
        "http": tsv(
            "http",
            HTTP,
            [
                [f"{T0 + 4}", "Chttp1", "10.0.0.5", "40004", "93.184.216.34", "80", "1", "GET"]
                + ["api.anthropic.com", "/v1/models", "200", "0", "5"],
                [f"{T0 + 5}", "Chttp2", "10.0.0.5", "40005", "93.184.216.34", "80", "1", "GET"]
                + ["example.com", "/a", "200", "0", "10"],
                [f"{T0 + 5.5}", "Chttp2", "10.0.0.5", "40005", "93.184.216.34", "80", "2", "POST"]
                + ["example.com", "/b", "404", "7", "20"],
                [f"{T0 + 6}", "Cproxy", "10.0.0.5", "40006", "10.9.9.9", "3128", "1", "CONNECT"]
                + ["-", "api.deepseek.com:443", "200", "0", "0"],
            ],
        ),
        "conn": tsv(
            "conn",
            CONN,
            [
                [f"{T0}", "Cd1", "10.0.0.5", "33333", "10.0.0.53", "53", "udp", "dns", "0.01"]
                + ["30", "60", "SF", "1", "1"],
                [f"{T0 + 1}", "Ctls1", "10.0.0.5", "40001", "104.18.7.192", "443", "tcp", "ssl"]
                + ["2.5", "1000", "20000", "SF", "10", "20"],
                [f"{T0 + 2}", "Ctls2", "10.0.0.5", "40002", "104.18.7.192", "443", "tcp", "ssl"]
                + ["1.0", "100", "200", "SF", "3", "4"],
                [f"{T0 + 3}", "Cq1", "10.0.0.5", "40003", "162.159.140.245", "443", "udp"]
                + ["ssl,quic", "0.5", "1500", "3000", "SF", "5", "6"],
                [f"{T0 + 4}", "Chttp1", "10.0.0.5", "40004", "93.184.216.34", "80", "tcp"]
                + ["http", "0.2", "136", "5007", "SF", "7", "7"],
                [f"{T0 + 5}", "Chttp2", "10.0.0.5", "40005", "93.184.216.34", "80", "tcp"]
                + ["http", "0.9", "300", "600", "SF", "8", "8"],
                [f"{T0 + 7}", "Cbare", "10.0.0.5", "40007", "104.18.7.192", "443", "tcp", "-"]
                + ["3.0", "50", "60", "SF", "2", "2"],
                [f"{T0 + 8}", "Cicmp", "10.0.0.5", "8", "104.18.7.192", "0", "icmp", "-"]
                + ["1.0", "50", "60", "OTH", "1", "1"],
            ],
        ),
    }
    for name, data in logs.items():
        if gz:
            (d / f"{name}.{period}.log.gz").write_bytes(gzip.compress(data))
        else:
            (d / f"{name}.log").write_bytes(data)
    (d / "files.00:00:00-01:00:00.log.gz").write_bytes(gzip.compress(b"#nothing\n"))
    (d / "stats.log").write_bytes(b"junk\n")
    return d


def by_uid_line(obs):
    return {(o.source.rsplit("/", 1)[-1], o.line): o for o in obs}


# ----------------------------------------------------------------------------- directories


@pytest.mark.parametrize("gz", [True, False])
def test_directory_joins_every_log(tmp_path, gz):
    d = day(tmp_path, gz=gz)
    diag = Diagnostics()
    obs = list(collect(str(d), CollectOptions(), diag))
    assert not diag.problems and not diag.file_errors, diag.problems
    got = {(o.dest_host, o.host_source, o.client_port): o for o in obs}
    assert len(obs) == 8, [(o.dest_host, o.client_port) for o in obs]

    tls = got[("api.openai.com", "sni", 40001)]
    assert tls.format == "zeek" and tls.source.split("/")[-1].startswith("ssl.")
    assert tls.line == 9 and tls.dest_ip == "104.18.7.192" and tls.dest_port == 443
    assert (tls.bytes_out, tls.bytes_in, tls.packets_out, tls.packets_in) == (1000, 20000, 10, 20)
    assert tls.duration == 2.5 and tls.ts == T0 + 1 and tls.ts_end == T0 + 3.5
    assert tls.record_id and len(tls.record_id) == 24

    # ssl.log without server_name: named by the DNS answer (CNAME walked back)
    nosni = got[("api.openai.com", "dns", 40002)]
    assert nosni.source.split("/")[-1].startswith("ssl.") and nosni.bytes_out == 100

    # QUIC in both ssl.log and quic.log: one observation, from ssl.log (read first)
    quic = [o for o in obs if o.client_port == 40003]
    assert len(quic) == 1 and quic[0].dest_host == "api.anthropic.com"
    assert quic[0].packets_out == 5

    # one request on the connection: the connection's totals
    h1 = got[("api.anthropic.com", "http_host", 40004)]
    assert h1.url == "http://api.anthropic.com/v1/models" and h1.method == "GET"
    assert h1.status == 200 and (h1.bytes_out, h1.bytes_in) == (136, 5007)
    assert h1.packets_out == 7 and h1.duration == pytest.approx(0.2)

    # two requests: each keeps Zeek's body lengths, no packets
    two = sorted((o for o in obs if o.client_port == 40005), key=lambda o: o.ts)
    assert [(o.method, o.status, o.bytes_out, o.bytes_in) for o in two] == [
        ("GET", 200, 0, 10),
        ("POST", 404, 7, 20),
    ]
    assert all(o.packets_out is None for o in two)

    proxy = got[("api.deepseek.com", "connect", 40006)]
    assert proxy.dest_port == 443 and proxy.dest_ip is None and proxy.url is None

    # conn.log alone: named by DNS; DNS and ICMP connections are not reported
    bare = got[("api.openai.com", "dns", 40007)]
    assert bare.source.split("/")[-1].startswith("conn.") and bare.bytes_in == 60
    assert not [o for o in obs if o.client_port in (33333, 8)]
    assert {o.host_source for o in obs} <= set(HOST_SOURCES)
    assert format_of(str(d), CollectOptions()) == "zeek"


def test_directory_reading_order_and_rotation(tmp_path):
    d = day(tmp_path)
    day(tmp_path, period="01:00:00-02:00:00")
    (d / "conn.log").write_bytes(tsv("conn", CONN, []))
    kinds = [(p, k) for p, k, _f in directory_files(str(d))]
    first = kinds[:5]
    assert first == [
        ("00:00:00-01:00:00", "dns"),
        ("00:00:00-01:00:00", "http"),
        ("00:00:00-01:00:00", "quic"),
        ("00:00:00-01:00:00", "ssl"),
        ("00:00:00-01:00:00", "conn"),
    ]
    assert kinds[-1] == ("", "conn")  # the current, unrotated logs come last
    assert len(kinds) == 11


def test_directory_without_zeek_logs_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="without Zeek logs"):
        collect(str(tmp_path), CollectOptions(), Diagnostics())
    with pytest.raises(InputError, match="is a directory"):
        list(collect(str(tmp_path), CollectOptions(format="squid"), Diagnostics()))


def test_joins_across_rotation_periods(tmp_path):
    d = tmp_path / "day"
    d.mkdir()
    ssl = tsv(
        "ssl",
        SSL,
        [[f"{T0}", "Clong", "10.0.0.5", "40001", "1.2.3.4", "443", "v"] + ["api.openai.com", "T"]],
    )
    (d / "ssl.00:00:00-01:00:00.log.gz").write_bytes(gzip.compress(ssl))
    conn = tsv(
        "conn",
        CONN,
        [
            [f"{T0}", "Clong", "10.0.0.5", "40001", "1.2.3.4", "443", "tcp", "ssl", "4000.0"]
            + ["1", "2", "SF", "3", "4"],
            ["x"],
        ],
    )
    (d / "conn.01:00:00-02:00:00.log.gz").write_bytes(gzip.compress(conn))
    diag = Diagnostics()
    obs = list(collect(str(d), CollectOptions(), diag))
    assert len(obs) == 1 and obs[0].duration == 4000.0 and obs[0].packets_in == 4
    assert diag.malformed == 1 and "conn.01:00:00-02:00:00.log.gz:10" in str(diag.problems[0])


# ----------------------------------------------------------------------------- single files


def test_single_ssl_log_gives_what_it_has():
    data = tsv(
        "ssl",
        SSL,
        [
            [f"{T0}", "C1", "10.0.0.5", "40001", "2001:DB8::1", "443", "TLSv13"]
            + ["API.OpenAI.com.", "T"],
            [],
        ],
    )
    obs, diag, _ = parse(data, "ssl.log")
    assert diag.malformed == 0 and diag.skipped == 1  # the empty line
    (o,) = obs
    assert (o.dest_host, o.host_source, o.dest_ip) == ("api.openai.com", "sni", "2001:db8::1")
    assert o.bytes_out is None and o.duration is None and o.ts == T0


def test_concatenated_logs_re_read_the_header():
    data = tsv("ssl", SSL, [[f"{T0}", "C1", "10.0.0.5", "1", "1.2.3.4", "443", "v", "a.test", "T"]])
    data += tsv("http", HTTP, [[f"{T0}", "C2", "10.0.0.5", "2", "1.2.3.4", "80", "1", "GET"]])
    data = data.replace(b"\tGET\n", b"\tGET\tb.test\t/x\t200\t0\t1\n")
    obs, diag, _ = parse(data, "-")
    assert [(o.dest_host, o.host_source) for o in obs] == [
        ("a.test", "sni"),
        ("b.test", "http_host"),
    ]
    assert diag.records == 2 and diag.malformed == 0


def test_custom_separators_and_escapes():
    lines = [
        "#separator \\x7c",
        "#set_separator|;",
        "#empty_field|EMPTY",
        "#unset_field|NONE",
        "#path|dns",
        "#fields|ts|uid|query|answers",
        f"{T0}|C1|api.openai.com|1.2.3.4;5.6.7.8",
        f"{T0}|C2|x.test|EMPTY",
        "#path|conn",
        "#fields|ts|uid|id.orig_h|id.orig_p|id.resp_h|id.resp_p|proto|service|orig_bytes",
        f"{T0 + 1}|C3|10.0.0.1|5555|5.6.7.8|443|tcp|NONE|17",
    ]
    obs, diag, _ = parse("\n".join(lines).encode())
    assert diag.malformed == 0, diag.problems
    (o,) = obs
    assert (o.dest_host, o.host_source, o.bytes_out) == ("api.openai.com", "dns", 17)


def test_field_name_map_and_flattened_names():
    fields = ["ts", "uid", "src", "src_port", "dst", "dst_port", "proto", "orig_bytes"]
    data = tsv("conn", fields, [[f"{T0}", "C1", "10.0.0.1", "5", "1.2.3.4", "443", "tcp", "9"]])
    obs, _diag, _ = parse(data)
    assert (obs[0].client_ip, obs[0].client_port, obs[0].dest_ip, obs[0].dest_port) == (
        "10.0.0.1",
        5,
        "1.2.3.4",
        443,
    )
    line = {"ts": T0, "uid": "C9", "id_orig_h": "10.0.0.2", "id_resp_h": "1.2.3.4"}
    line |= {"id_resp_p": 443, "server_name": "api.openai.com"}
    obs, _diag, _ = parse(json.dumps(line).encode(), "ssl.json")
    assert obs[0].client_ip == "10.0.0.2" and obs[0].dest_host == "api.openai.com"


def test_json_form_iso_and_epoch_timestamps_and_path():
    rows = [
        {
            "_path": "dns",
            "ts": "2023-11-14T22:13:20.000000Z",
            "uid": "Cd",
            "query": "api.openai.com",
        }
        | {"answers": ["104.18.7.192"]},
        {"_path": "ssl", "ts": "2023-11-14T22:13:21.5Z", "uid": "Cs", "id.orig_h": "10.0.0.5"}
        | {"id.orig_p": 40001, "id.resp_h": "104.18.7.192", "id.resp_p": 443},
        {"_path": "conn", "ts": T0 + 1.5, "uid": "Cs", "id.orig_h": "10.0.0.5", "proto": "tcp"}
        | {"id.orig_p": 40001, "id.resp_h": "104.18.7.192", "id.resp_p": 443}
        | {"duration": 1.25, "orig_bytes": 10, "resp_bytes": 20, "service": "ssl"},
        {"_path": "weird", "ts": T0, "uid": "Cw", "name": "x"},
    ]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    obs, diag, _ = parse(data, "all.json")
    assert diag.records == 3 and diag.skipped == 1 and diag.malformed == 0
    (o,) = obs
    assert o.format == "zeek-json" and o.host_source == "dns" and o.dest_host == "api.openai.com"
    assert o.ts == T0 + 1.5 and o.ts_end == T0 + 2.75 and o.line == 2


def test_host_filter_drops_a_connection_and_its_conn_record():
    data = tsv("ssl", SSL, [[f"{T0}", "C1", "10.0.0.5", "1", "1.2.3.4", "443", "v", "x.test", "T"]])
    conn = [f"{T0}", "C1", "10.0.0.5", "1", "1.2.3.4", "443", "tcp", "ssl", "1.0", "1", "2"]
    data += tsv("conn", CONN, [[*conn, "SF", "1", "1"]])
    obs, diag, _ = parse(data, host_filter=lambda h: h != "x.test")
    assert obs == [] and diag.records == 2
    obs, _diag, _ = parse(data)
    assert len(obs) == 1 and obs[0].bytes_in == 2


def test_join_bound_reports_early_and_notices():
    rows = [
        [f"{T0 + i}", f"C{i}", "10.0.0.5", str(1000 + i), "1.2.3.4", "443", "v"] for i in range(5)
    ]
    data = tsv("ssl", SSL, [r + [f"h{i}.test", "T"] for i, r in enumerate(rows)])
    conn = [
        [f"{T0 + i}", f"C{i}", "10.0.0.5", str(1000 + i), "1.2.3.4", "443", "tcp", "ssl"]
        for i in range(5)
    ]
    data += tsv("conn", CONN, [r + ["1.0", "1", "2", "SF", "1", "1"] for r in conn])
    obs, diag, c = parse(data, max_pending=2)
    assert sorted(o.dest_host for o in obs) == [f"h{i}.test" for i in range(5)]  # none twice
    assert sum(o.bytes_out is None for o in obs) == 3 and c.last_stats["early"] == 3
    assert any("join bound hit" in str(n) for n in diag.notices)


def test_http_target_rules():
    assert http_target("GET", "Api.X.com:8080", "/p", 8080) == (
        "api.x.com",
        8080,
        "http://Api.X.com:8080/p",
        "http_host",
    )
    assert http_target("GET", "h", "https://api.y.com/z", 3128) == (
        "api.y.com",
        443,
        "https://api.y.com/z",
        "url",
    )
    assert http_target("CONNECT", None, "api.z.com:443", 3128) == (
        "api.z.com",
        443,
        None,
        "connect",
    )
    assert http_target(None, None, None, 80) == (None, 80, None, None)


def test_iso_ts():
    assert iso_ts("2023-11-14T22:13:20Z") == T0
    assert iso_ts("2023-11-14T22:13:20.250000+0000") == T0 + 0.25
    assert iso_ts("2023-11-15T00:13:20.5+02:00") == T0 + 0.5
    assert iso_ts("2023-11-14 22:13:20") == T0
    assert iso_ts("2023-13-14T22:13:20Z") is None and iso_ts("nope") is None and iso_ts(5) is None
    assert iso_ts("2023-11-14T22:13:20junk") is None


def test_dns_map_bound_notice():
    join = FlowJoin()
    join.dns.max_addresses = 1
    join.learn("a.test", [(None, "A", "1.1.1.1"), (None, "A", "2.2.2.2")], T0)
    diag = Diagnostics()
    join.report("x", diag, "conn")
    assert "DNS name map bound hit" in str(diag.notices[0])


# ----------------------------------------------------------------------------- real baselines


@needs_conformance
@pytest.mark.parametrize(
    "path", sorted(ZEEK_LOGS.glob("*/*")) if ZEEK_LOGS.is_dir() else [], ids=lambda p: p.name
)
def test_real_baselines_report_btest_and_masked_lines(path):
    data = path.read_bytes()
    lines = data.split(b"\n")
    masked = [i + 1 for i, ln in enumerate(lines) if ln.startswith(MASK) or b":" + MASK in ln]
    diag = Diagnostics()
    obs = list(collect(str(path), CollectOptions(), diag))
    assert obs == []
    lines_reported = sorted(p.line for p in diag.problems)
    assert lines_reported == [1, *masked]
    assert all(p.source == str(path) for p in diag.problems)
    assert "not a Zeek header line" in diag.problems[0].reason


def demasked(path: Path, tmp_path: Path) -> Path:
    """The baseline with its masked timestamps replaced (a copy in tmp_path, not the repo)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    out = []
    for i, ln in enumerate(lines):
        out.append(ln.replace(MASK, f"{T0 + i:.6f}".encode()))
    p = tmp_path / path.name
    p.write_bytes(b"\n".join(out))
    return p


@needs_conformance
def test_real_baselines_demasked(tmp_path):
    def run(name):
        (src,) = ZEEK_LOGS.glob(f"*/{name}")
        p = demasked(src, tmp_path)
        diag = Diagnostics()
        fmt = format_of(str(p), CollectOptions())
        return list(collect(str(p), CollectOptions(), diag)), diag, fmt

    obs, diag, fmt = run("firefox-quic__ssl.log")
    assert fmt == "zeek" and diag.malformed == 1 and diag.records == 1
    assert [(o.dest_host, o.client_ip, o.dest_port) for o in obs] == [
        ("blog.cloudflare.com", "82.239.54.117", 443)
    ]
    obs, _d, _f = run("tls-conn-with-extensions__ssl.log")
    assert [o.dest_host for o in obs] == ["ssl.gstatic.com"]

    obs, _d, _f = run("get__conn.log")
    (o,) = obs
    assert (o.bytes_out, o.bytes_in, o.packets_out, o.packets_in, o.duration) == (
        136,
        5007,
        7,
        7,
        0.211484,
    )
    assert o.dest_host is None and o.dest_ip == "192.150.187.43"

    obs, diag, _f = run("wikipedia__field-name-map__conn.log")  # src/dst column names
    assert diag.records == 34 and obs
    assert all(o.dest_port not in (53, 5353) for o in obs)
    assert {o.client_ip for o in obs} >= {"141.142.220.118"}

    obs, _d, _f = run("wikipedia__header-names__http.log")
    assert len(obs) == 14 and {o.host_source for o in obs} == {"http_host"}
    assert "upload.wikimedia.org" in {o.dest_host for o in obs}
    assert all(o.url.startswith("http://") for o in obs)

    obs, _d, fmt = run("javascript.http-uri-sha256__http.log")
    assert fmt == "zeek-json"
    assert [(o.dest_host, o.url, o.status, o.bytes_in) for o in obs] == [
        ("bro.org", "http://bro.org/download/CHANGES.bro-aux.txt", 200, 4705)
    ]
    obs, _d, _f = run("json-non-printable-escaping__http.log.json")
    assert len(obs) == 4 and obs[1].url.endswith("/printable_😄")

    obs, diag, _f = run("dns53__dns.log")
    assert obs == [] and diag.records == 1


# ----------------------------------------------------------------------------- detection


def test_detection(tmp_path):
    t = tmp_path / "a.log"
    t.write_bytes(b"### header\n" + tsv("ssl", SSL, []))
    j = tmp_path / "b.log"
    j.write_bytes(b'{"ts":1.0,"uid":"CAbc","id.orig_h":"1.2.3.4"}\n')
    for p, name in ((t, "zeek"), (j, "zeek-json")):
        o = open_input(str(p))
        try:
            assert detect(o) == name
        finally:
            o.close()
    assert sniff_tsv(b"#separator \\x09\n#set_separator\t,\n")
    assert not sniff_tsv(b"1700000000.000 12 10.0.0.1 TCP_MISS/200 ...\n")
    assert not sniff_json(b'{"timestamp":"x","event_type":"tls","uid":"C1"}')
    junk = tmp_path / "junk.log"
    junk.write_bytes(b"hello world\n")
    with pytest.raises(InputError) as e:
        format_of(str(junk), CollectOptions())
    assert "zeek" in str(e.value) and "zeek-json" in str(e.value) and "suricata-eve" in str(e.value)


# ----------------------------------------------------------------------------- fuzzing


def _real_lines() -> list[bytes]:
    lines = [tsv("conn", CONN, [])]
    if ZEEK_LOGS.is_dir():
        lines += [p.read_bytes() for p in sorted(ZEEK_LOGS.glob("*/*"))]
    return [ln for blob in lines for ln in blob.split(b"\n") if ln]


REAL_LINES = _real_lines()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_never_raise(data):
    for blob in (data, tsv("conn", CONN, []) + data):
        diag = Diagnostics()
        for o in ZeekCollector().parse(io.BytesIO(blob), "fuzz", diag):
            assert o.source == "fuzz" and o.line >= 1 and o.host_source in (None, *HOST_SOURCES)
        assert all(p.source == "fuzz" for p in diag.problems)
        assert diag.records + diag.malformed <= diag.lines  # at most one record per line


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_real_lines_never_raise(data):
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    lines = [rnd.choice(REAL_LINES) for _ in range(data.draw(st.integers(1, 30)))]
    out = []
    for ln in lines:
        b = bytearray(ln.replace(MASK, b"1700000000.123456"))
        for _ in range(rnd.randint(0, 4)):
            op = rnd.randint(0, 3)
            i = rnd.randrange(len(b) + 1)
            if op == 0 and b:
                del b[min(i, len(b) - 1)]
            elif op == 1:
                b[i:i] = bytes([rnd.choice(b'\t,-{}":\\x09()0123456789.\x00\xff')])
            elif op == 2 and b:
                b[min(i, len(b) - 1)] = rnd.randrange(256)
            else:
                b = b[:i]
        out.append(bytes(b))
    blob = b"\n".join(out)
    diag = Diagnostics()
    for o in ZeekCollector().parse(io.BytesIO(blob), "fuzz", diag):
        assert o.host_source in (None, *HOST_SOURCES)


# ----------------------------------------------------------------------------- CLI


def test_cli_parse_and_scan_raise_region_incident(tmp_path):
    d = day(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["parse", str(d), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert {"api.openai.com", "api.anthropic.com"} <= {r["dest_host"] for r in rows}
    assert {r["format"] for r in rows} == {"zeek"}

    ssl = tmp_path / "ssl.log"
    ssl.write_bytes(
        tsv("ssl", SSL, [[f"{T0}", "C1", "10.0.0.5", "1", "104.18.7.192", "443", "v"]]).replace(
            b"\tv\n", b"\tv\tapi.openai.com\tT\n"
        )
    )
    db = tmp_path / "a.db"
    for path in (ssl, d):
        res = runner.invoke(
            main,
            ["--db", str(db), "scan", str(path), "--egress-country", "CN", "--json"],
            catch_exceptions=False,
        )
        assert res.exit_code in (0, EXIT_FINDINGS), res.output
    res = runner.invoke(main, ["--db", str(db), "incidents", "--json"], catch_exceptions=False)
    incs = [json.loads(x) for x in res.stdout.splitlines()]
    assert any(
        i["rule"] == "provider-region-unsupported" and i["dest_host"] == "api.openai.com"
        for i in incs
    ), incs
