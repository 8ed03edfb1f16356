"""Custom mapping: --columns / --mapping over CSV, TSV, JSON lines and key=value logs;
time formats; mapping errors; damaged input (fuzzed); the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.cli import main
from monitor.collectors import CollectOptions
from monitor.collectors.mapped import (
    MappedCollector,
    MappingError,
    TimeParser,
    load_mapping,
    parse_columns,
    parse_kv,
    parse_time_auto,
    url_target,
)
from tests.conftest import by_line, collect_file, epoch, parse

DATA = Path(__file__).resolve().parent / "data" / "gateways"
CSV_COLUMNS = (
    "ts=time,client=src,user=user,host=dhost,port=dport,method=method,url=url,"
    "bytes_out=sentbytes,bytes_in=rcvdbytes,status=status,result=action,duration=elapsed_ms,"
    "duration_unit=ms"
)


def parse_bytes(data: bytes, columns: str, host_filter=None):
    return parse(MappedCollector(parse_columns(columns)), data, host_filter=host_filter)


def parse_file(path, columns=None, mapping=None, host_filter=None):
    opts = CollectOptions(format="mapped", columns=columns, mapping=mapping)
    return collect_file(path, opts, host_filter)


# --- mappings ----------------------------------------------------------------------------


def test_columns_spec():
    m = parse_columns("ts=time, client=src ,host=dhost|hostname,format=csv,tz=+08:00")
    assert m.fields == {"ts": ["time"], "client_ip": ["src"], "dest_host": ["dhost", "hostname"]}
    assert m.layout == "csv" and m.tz.utcoffset(None).total_seconds() == 8 * 3600


@pytest.mark.parametrize(
    "spec, message",
    [
        ("client=src", "needs the time field"),
        ("ts=time,bogus=x", "unknown key 'bogus'"),
        ("ts=time,client", "is not NAME=FIELD"),
        ("ts=time,ts=other", "given twice"),
        ("ts=time,format=xml", "format must be one of"),
        ("ts=time,tz=Mars/Olympus", "unknown time zone"),
        ("ts=time,time_format=fortnights", "unknown time format"),
        ("ts=1,client=2,format=json", "column numbers only make sense"),
        ("ts=time,host_source=guess", "host_source must be one of"),
        ("ts=time,duration_unit=weeks", "duration_unit must be one of"),
    ],
)
def test_bad_columns_are_clear_errors(spec, message):
    with pytest.raises(MappingError, match=message):
        parse_columns(spec)


def test_mapping_files_toml_and_yaml(tmp_path):
    m = load_mapping(str(DATA / "gateway-kv.toml"))
    assert m.layout == "kv" and m.fields["ts"] == ["date+time"]
    y = load_mapping(str(DATA / "gateway-json.yaml"))
    assert y.time_format == "epoch_ms" and y.fields["client_ip"] == ["src.ip"]
    bad = tmp_path / "bad.toml"
    bad.write_text("ts = [unclosed")
    with pytest.raises(MappingError, match="cannot read mapping"):
        load_mapping(str(bad))
    with pytest.raises(MappingError, match="No such file"):
        load_mapping(str(tmp_path / "missing.yaml"))


# --- helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1795741200", epoch(2026, 11, 27, 1, 0, 0)),
        ("1795741200.5", epoch(2026, 11, 27, 1, 0, 0) + 0.5),
        ("1795741200123", epoch(2026, 11, 27, 1, 0, 0) + 0.123),
        ("1795741200123456", epoch(2026, 11, 27, 1, 0, 0) + 0.123456),
        ("2026-11-27T01:00:00Z", epoch(2026, 11, 27, 1, 0, 0)),
        ("2026-11-27 09:00:00+08:00", epoch(2026, 11, 27, 1, 0, 0)),
        ("2026-11-27T01:00:00.250", epoch(2026, 11, 27, 1, 0, 0) + 0.25),
        ("Fri Nov 27 01:00:00 2026", epoch(2026, 11, 27, 1, 0, 0)),
        ("Nov 27 2026 01:00:00 GMT", epoch(2026, 11, 27, 1, 0, 0)),
        ("Fri Nov 27 01:00:00 UTC 2026", epoch(2026, 11, 27, 1, 0, 0)),
        ("27 November 2026 1:00:00 AM", epoch(2026, 11, 27, 1, 0, 0)),
        ("November 27, 2026 01:00:00 PM", epoch(2026, 11, 27, 13, 0, 0)),
        ("[27/Nov/2026:09:00:00 +0800]", epoch(2026, 11, 27, 1, 0, 0)),
        ("Nov 27 26 01:00:00", epoch(2026, 11, 27, 1, 0, 0)),
        ("Fri Nov 27 01:00:00 PST 2026", None),  # an abbreviation we cannot resolve
        ("Feb 30 2026 01:00:00", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_time_auto(text, expected):
    assert parse_time_auto(text) == expected


def test_time_formats():
    assert TimeParser("epoch_ms")("1795741200000") == epoch(2026, 11, 27, 1, 0, 0)
    assert TimeParser("%d/%m/%Y %H:%M")("27/11/2026 01:00") == epoch(2026, 11, 27, 1, 0, 0)
    assert TimeParser("%d/%m/%Y %H:%M")("11/27/2026 01:00") is None
    assert TimeParser("iso8601")("2026-11-27T01:00:00Z") == epoch(2026, 11, 27, 1, 0, 0)
    assert TimeParser("epoch")("-5") is None and TimeParser("epoch")("1e300") is None


def test_parse_kv_styles():
    assert parse_kv('<134>Nov 27 fw01 a=1 b="two words" c=x\\=y') == {
        "a": "1",
        "b": "two words",
        "c": "x=y",
    }
    cef = "CEF:0|V|P|1|sig|name|3|src=10.0.0.1 requestClientApplication=Mozilla/5.0 (X11) act=ok"
    assert parse_kv(cef) == {
        "src": "10.0.0.1",
        "requestClientApplication": "Mozilla/5.0 (X11)",
        "act": "ok",
    }
    assert parse_kv("LEEF:1.0|V|P|1|id|k=v 1\tk2=v2") == {"k": "v 1", "k2": "v2"}
    assert parse_kv("LEEF:2.0|V|P|1|id|^|k=v") == {"k": "v"}
    assert parse_kv('k="a b=c d" z=1') == {"k": "a b=c d", "z": "1"}
    assert parse_kv("no pairs here") == {}


def test_url_target():
    assert url_target("https://u:p@API.OpenAI.com:8443/v1?x") == ("api.openai.com", 8443, "https")
    assert url_target("api.openai.com/v1/chat") == ("api.openai.com", None, None)
    assert url_target("http://[2001:db8::1]/x") == ("2001:db8::1", 80, "http")
    assert url_target("/relative/path") == (None, None, None)
    assert url_target("http://host:99999/") == ("host", 80, "http")


# --- layouts -----------------------------------------------------------------------------


def test_csv_with_header():
    obs, diag = parse_file(DATA / "gateway.csv", columns=CSV_COLUMNS)
    assert diag.records == 4 and diag.malformed == 2 and diag.skipped == 1
    assert [p.line for p in diag.problems] == [6, 7]
    assert "bad time" in diag.problems[0].reason and "truncated" in diag.problems[1].reason
    o = by_line(obs)
    a = o[2]
    assert a.format == "mapped" and a.ts == epoch(2026, 11, 27, 8, 0, 0)
    assert (a.client_ip, a.user, a.method, a.dest_host, a.dest_port) == (
        "10.50.0.1",
        "alice",
        "POST",
        "api.openai.com",
        443,
    )
    assert (a.url, a.host_source, a.status, a.result) == (
        "https://api.openai.com/v1/chat/completions",
        "url",
        200,
        "allow",
    )
    assert (a.bytes_out, a.bytes_in, a.duration) == (2210, 5214, 0.388)
    c = o[3]
    assert (c.method, c.host_source, c.url, c.result) == ("CONNECT", "connect", None, "block")
    q = o[4]  # quoted value with the delimiter; host "-" falls back to the URL's
    assert (q.user, q.dest_host, q.dest_port) == ("Smith, Carol", "www.example.com", 80)
    assert o[5].ts == epoch(2026, 11, 27, 0, 0, 7)  # +08:00 offset honoured
    assert o[5].dest_host == "generativelanguage.googleapis.com"


def test_semicolon_csv_strftime_and_time_zone():
    cols = (
        "ts=Zeit,client=Quelle,host=Ziel,bytes_out=Bytes gesendet,result=Aktion,"
        "time_format=%d/%m/%Y %H:%M:%S,tz=Asia/Shanghai"
    )
    obs, diag = parse_file(DATA / "gateway-semicolon.csv", columns=cols)
    assert diag.malformed == 0 and len(obs) == 2
    assert obs[0].ts == epoch(2026, 11, 27, 8, 20, 0) and obs[1].result == "gesperrt"


def test_headerless_csv_by_column_number_and_tsv():
    data = b"1795741200,10.0.0.1,api.openai.com:443\n1795741201,10.0.0.2\n"
    obs, diag = parse_bytes(data, "ts=1,client=2,host=3")
    assert len(obs) == 1 and (obs[0].dest_host, obs[0].dest_port) == ("api.openai.com", 443)
    assert diag.malformed == 1 and "mapping reads column 3" in diag.problems[0].reason
    tsv = b"when\tfrom\tto\n2026-11-27T01:00:00Z\t10.0.0.1\thttps://api.openai.com/x\n"
    (o,), _ = parse_bytes(tsv, "ts=when,client=from,url=to")
    assert (o.dest_host, o.dest_port, o.host_source) == ("api.openai.com", 443, "url")


def test_time_column_missing_from_header_is_a_file_error():
    obs, diag = parse_bytes(b"a,b\n1,2\n", "ts=time,client=a")
    assert not obs and "time column 'time' not in header (a, b)" in diag.file_errors[0].reason


def test_json_lines_nested_epoch_ms():
    obs, diag = parse_file(DATA / "gateway.jsonl", mapping=str(DATA / "gateway-json.yaml"))
    assert diag.records == 2 and diag.malformed == 3
    assert [p.reason for p in diag.problems] == [
        "bad time 'oops'",
        "not a JSON object",
        "no time in record",
    ]
    a, b = obs
    assert a.ts == epoch(2026, 11, 27, 8, 0, 0) + 0.123
    assert (a.client_ip, a.client_port, a.dest_ip, a.status, a.user) == (
        "10.50.0.11",
        50123,
        "162.159.140.245",
        200,
        "alice",
    )
    assert (b.method, b.host_source, b.user, b.bytes_in) == ("CONNECT", "connect", None, None)


def test_key_value_with_syslog_prefix_and_joined_date_time():
    obs, diag = parse_file(DATA / "gateway-kv.log", mapping=str(DATA / "gateway-kv.toml"))
    assert diag.records == 2 and diag.malformed == 1
    a, b = obs
    assert a.ts == epoch(2026, 11, 27, 8, 10, 0)
    assert (a.client_ip, a.client_port, a.dest_host, a.dest_port, a.dest_ip) == (
        "10.50.0.21",
        50211,
        "api.openai.com",
        443,
        "162.159.140.245",
    )
    assert (b.result, b.method, b.host_source) == ("blocked", "CONNECT", "connect")


def test_auto_layout_detection():
    j = b'{"t": "2026-11-27T01:00:00Z", "h": "api.openai.com"}\n'
    (o,), _ = parse_bytes(j, "ts=t,host=h")
    assert o.dest_host == "api.openai.com"
    kv = b"t=2026-11-27T01:00:00Z h=api.openai.com\n"
    (o,), _ = parse_bytes(kv, "ts=t,host=h")
    assert o.dest_host == "api.openai.com"


def test_host_filter():
    keep = lambda h: h == "api.openai.com"  # noqa: E731
    everything, d1 = parse_file(DATA / "gateway.csv", columns=CSV_COLUMNS)
    kept, d2 = parse_file(DATA / "gateway.csv", columns=CSV_COLUMNS, host_filter=keep)
    assert d1.records == d2.records
    assert kept == [o for o in everything if keep(o.dest_host)]


# --- damaged input -----------------------------------------------------------------------

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CASES = [
    (DATA / "gateway.csv", CSV_COLUMNS),
    (DATA / "gateway.jsonl", "ts=ts,client=src.ip,host=dest.host,port=dest.port,format=json"),
    (DATA / "gateway-kv.log", "ts=date+time,client=srcip,host=hostname,format=kv"),
    (DATA / "gateway-semicolon.csv", "ts=Zeit,client=Quelle,host=Ziel,format=csv"),
]


def _violations(data: bytes, columns: str) -> list[str]:
    """What the parse of ``data`` breaks of the observation shape (nothing, when sound)."""
    obs, diag = parse_bytes(data, columns)
    bad = [f"ts {o.ts!r}" for o in obs if not (isinstance(o.ts, float) and 0 <= o.ts < 1e11)]
    bad += [
        f"port {p}"
        for o in obs
        for p in (o.dest_port, o.client_port)
        if not (p is None or 0 < p < 65536)
    ]
    if diag.records < len(obs):
        bad.append(f"{len(obs)} observations from {diag.records} records")
    return bad


@FUZZ
@given(st.binary(max_size=3000), st.sampled_from([c for _, c in CASES] + ["ts=1,host=2"]))
def test_fuzz_random_bytes_never_raise(data, columns):
    assert _violations(data, columns) == []


@FUZZ
@given(
    st.sampled_from(CASES),
    st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=8)), max_size=6),
)
def test_fuzz_mutated_real_files_never_raise(case, edits):
    path, columns = case
    b = bytearray(path.read_bytes())
    for pos, chunk in edits:
        p = pos % (len(b) + 1)
        b[p : p + len(chunk)] = chunk
    assert _violations(bytes(b), columns) == []


# --- CLI ---------------------------------------------------------------------------------


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_columns_parse_and_scan(tmp_path):
    res = _invoke("parse", DATA / "gateway.csv", "--columns", CSV_COLUMNS, "--json")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert {r["format"] for r in rows} == {"mapped"} and len(rows) == 4
    assert [r["provider"] for r in rows if r["dest_host"] == "api.openai.com"] == ["openai"]
    db = tmp_path / "m.db"
    res = _invoke(
        "--db", db, "scan", DATA / "gateway-kv.log", "--mapping", DATA / "gateway-kv.toml",
        "--egress-country", "CN",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    incs = [json.loads(x) for x in _invoke("--db", db, "incidents", "--json").stdout.splitlines()]
    assert any(
        i["rule"] == "provider-region-unsupported" and i["dest_host"] == "api.openai.com"
        for i in incs
    )


def test_cli_bad_mapping_is_a_usage_error():
    res = _invoke("parse", DATA / "gateway.csv", "--columns", "client=src")
    assert res.exit_code == 2 and "needs the time field" in res.output


def test_cli_unknown_log_names_the_formats_tried(tmp_path):
    p = tmp_path / "odd.log"
    p.write_text("hello world\nsomething else\n")
    res = _invoke("parse", p, "--json")
    text = res.output + res.stderr
    assert "unrecognised log format" in text
    for name in ("zscaler-csv", "zscaler-json", "zscaler-kv", "elff"):
        assert name in text
