"""Byte and packet counts a record may carry (``monitor.observation.MAX_COUNT``) and the
stored sums of them (saturated at ``MAX_SUM``): real files scanned by a real ``apiwatch``
process, with the C accelerators and in pure Python, for every collector that reads a
count from a log. A count out of range costs its record at most (Squid: malformed, one
line naming file:line; the others: an unknown count), never the scan or the other inputs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import accel
from monitor.batch import _add
from monitor.observation import MAX_COUNT, MAX_SUM
from monitor.store import saturated_sum
from tests.test_hardening import apiwatch, no_traceback, rows
from tests.test_suricata import ev, eve, flow
from tests.test_zeek import CONN, HTTP, SSL, tsv

GATEWAYS = Path(__file__).resolve().parent / "data" / "gateways"
#: the two ways every scan here runs: the C accelerators (when built), pure Python
WAYS = pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])

LLM = "{ts} {elapsed} 10.1.88.196 TCP_TUNNEL/200 {size} CONNECT api.openai.com:443 - HIER_DIRECT/172.66.0.243 -"  # noqa: E501
OTHER = "1732752009.372 27 10.20.115.79 TCP_MISS/200 778 GET http://anan.co.jp/x - HIER_DIRECT/62.39.132.77 text/html"  # noqa: E501


def native(elapsed: int | str = 70428, size: int | str = 2475, ts: str = "1732752001.203") -> str:
    return LLM.format(ts=ts, elapsed=elapsed, size=size)


def env(pure: bool) -> dict[str, str]:
    return {accel.PURE_ENV: "1" if pure else ""}


def scan(db: Path, pure: bool, *args) -> tuple:
    """A scan by a real process: (result, its stderr's lines that name a record)."""
    res = apiwatch("--db", db, "scan", *args, env=env(pure))
    no_traceback(res)
    return res, [line for line in res.stderr.splitlines() if ".log:" in line or ".json:" in line]


#: a native log: lines 2-5 carry numbers out of range, line 6 the largest size there may be
NATIVE = [
    native(),
    native(size=2**64),
    native(size=MAX_COUNT + 1),
    native(size="0" * 20 + "5", ts="1732752002.203"),  # leading zeros: 5
    native(elapsed="9" * 400),
    native(elapsed="9" * 5000, ts="1732752003.203"),  # beyond int()'s 4300 digits
    native(size=MAX_COUNT, ts="1732752004.203"),
    OTHER,
    native(size=2**63 - 1, ts="1732752005.203"),
]
REASONS = {
    2: "size out of range (above 281474976710656 bytes)",
    3: "size out of range (above 281474976710656 bytes)",
    5: "elapsed time out of range (above 281474976710656 ms)",
    6: "elapsed time out of range (above 281474976710656 ms)",
    9: "size out of range (above 281474976710656 bytes)",
}


@WAYS
def test_squid_native_counts_out_of_range_are_malformed_lines(tmp_path, pure):
    """Each line whose size or elapsed time is out of range is one malformed record, one
    line on stderr naming file:line and what is wrong (no traceback, exit 0 as for any
    malformed line); the other lines of the file, and the other input, are stored."""
    log, other = tmp_path / "access.log", tmp_path / "other.log"
    log.write_text("\n".join(NATIVE) + "\n")
    other.write_text(native(ts="1732752100.000") + "\n")
    db = tmp_path / "x.db"
    res, named = scan(db, pure, log, other)
    assert res.returncode == 0, res.stderr
    assert len(named) == len(REASONS)
    for line, (n, reason) in zip(named, REASONS.items(), strict=True):  # the line, its start
        assert line.startswith(f"malformed: {log}:{n}: {reason}: {NATIVE[n - 1][:60]}"), line
    assert "5 records read, 5 malformed, 4 LLM observations" in res.stdout
    stored = rows(db, "SELECT source, line, bytes_in FROM observations ORDER BY source, line")
    assert stored == [(str(log), 1, 2475), (str(log), 4, 5), (str(log), 7, MAX_COUNT),
                      (str(other), 1, 2475)]  # fmt: skip
    problems = rows(db, "SELECT line, reason FROM scan_problems ORDER BY line")
    assert problems == sorted(REASONS.items())


def test_squid_native_counts_read_alike_by_c_and_python(tmp_path):
    """``parse --json`` (every record) and a filtered scan (the C pre-pass at work) give the
    same records and the same diagnostics with the accelerators as without them."""
    log = tmp_path / "access.log"
    log.write_text("\n".join(NATIVE * 3) + "\n")
    outputs = []
    for pure in (False, True):
        res = apiwatch("parse", "--json", log, env=env(pure))
        no_traceback(res)
        outputs.append((res.stdout, res.stderr))
        db = tmp_path / f"{pure}.db"
        res, named = scan(db, pure, log)
        outputs.append((named, rows(db, "SELECT line, bytes_in, duration FROM observations")))
    assert outputs[0] == outputs[2] and outputs[1] == outputs[3]
    parsed = [json.loads(line) for line in outputs[0][0].splitlines()]
    assert [(o["line"], o["bytes_in"]) for o in parsed if o["line"] <= 9] == [
        (1, 2475), (4, 5), (7, MAX_COUNT), (8, 778)]  # fmt: skip
    assert sum(f"{log}:2: size out of range" in line for line in outputs[0][1].splitlines()) == 1


@WAYS
def test_squid_common_counts_out_of_range_are_malformed_lines(tmp_path, pure):
    """The logformat collectors (common, combined, custom) alike: a negative byte count or
    one beyond the bound makes the record malformed, the others are stored."""
    line = '10.0.0.5 - alice [13/Mar/2026:15:48:4{s} +0000] "CONNECT api.openai.com:443 HTTP/1.1" 200 {n} TCP_TUNNEL:HIER_DIRECT'  # noqa: E501
    sizes = [5, 2**63 - 1, 2**63 - 1, -5, MAX_COUNT, 2**70]
    log = tmp_path / "common.log"
    log.write_text("".join(line.format(s=k, n=n) + "\n" for k, n in enumerate(sizes)))
    db = tmp_path / "x.db"
    res, named = scan(db, pure, log)
    assert res.returncode == 0, res.stderr
    reason = f"unreadable field: byte count out of range (0 to {MAX_COUNT})"
    assert len(named) == 4
    for found, k in zip(named, (2, 3, 4, 6), strict=True):
        assert found.startswith(f"malformed: {log}:{k}: {reason}: 10.0.0.5 - alice"), found
    assert rows(db, "SELECT line, bytes_in FROM observations ORDER BY line") == [
        (1, 5), (5, MAX_COUNT)]  # fmt: skip


def _zeek_conn(tmp_path: Path, value: str) -> list[Path]:
    t = "1700000000.000000"

    def conn(uid: str, orig: str) -> list[str]:
        return [t, uid, "10.0.0.5", "40000", "162.159.140.245", "443", "tcp", "ssl", "1.0",
                orig, "10", "SF", value, "4"]  # fmt: skip

    def ssl(uid: str) -> list[str]:
        return [t, uid, "10.0.0.5", "40000", "162.159.140.245", "443", "TLSv13",
                "api.openai.com", "T"]  # fmt: skip

    (tmp_path / "conn.log").write_bytes(tsv("conn", CONN, [conn("C1", "5"), conn("C2", value)]))
    (tmp_path / "ssl.log").write_bytes(tsv("ssl", SSL, [ssl("C1"), ssl("C2")]))
    return [tmp_path / "conn.log", tmp_path / "ssl.log"]


def _zeek_http(tmp_path: Path, value: str) -> list[Path]:
    def http(uid: str, n: str) -> list[str]:
        return ["1700000000.000000", uid, "10.0.0.5", "40000", "162.159.140.245", "80", "1",
                "POST", "api.openai.com", "/v1/chat/completions", "200", n, "5"]  # fmt: skip

    (tmp_path / "http.log").write_bytes(tsv("http", HTTP, [http("H1", "5"), http("H2", value)]))
    return [tmp_path / "http.log"]


def _eve(tmp_path: Path, value: str) -> list[Path]:
    big = flow(flow_id=2)
    big["flow"]["bytes_toserver"] = big["flow"]["pkts_toserver"] = int(value)

    def tls(fid: int) -> dict:
        return ev("tls", flow_id=fid, tls={"sni": "api.openai.com", "version": "TLS 1.3"})

    (tmp_path / "eve.json").write_bytes(eve(tls(1), flow(flow_id=1), tls(2), big))
    return [tmp_path / "eve.json"]


def _gateway_csv(tmp_path: Path, value: str) -> list[Path]:
    head, row = (GATEWAYS / "gateway.csv").read_text().splitlines()[:2]
    big = row.replace(",2210,5214,", f",{value},{value},")
    (tmp_path / "gw.log").write_text("\n".join([head, row, big]) + "\n")
    return [tmp_path / "gw.log", "--format", "mapped", "--columns",
            "ts=time,client=src,host=dhost,bytes_out=sentbytes,bytes_in=rcvdbytes"]  # fmt: skip


def _zscaler(tmp_path: Path, value: str) -> list[Path]:
    row = (GATEWAYS / "zscaler-nss.csv").read_text().splitlines()[0]
    big = row.replace('"2210","5214"', f'"{value}","{value}"')
    (tmp_path / "nss.csv").write_text("\n".join([row, big]) + "\n")
    return [tmp_path / "nss.csv"]


def _elff(tmp_path: Path, value: str) -> list[Path]:
    lines = (GATEWAYS / "bluecoat-proxysg.log").read_text().splitlines()
    first = next(k for k, ln in enumerate(lines) if not ln.startswith("#"))  # its header above
    row = lines[first]
    big = row.replace(" 7391 2116 ", f" {value} {value} ")
    (tmp_path / "elff.log").write_text("\n".join([*lines[:first], row, big]) + "\n")
    return [tmp_path / "elff.log"]


#: (input maker, column of the count it makes out of range)
COLLECTORS = {
    "zeek-conn": (_zeek_conn, "packets_out"),
    "zeek-http": (_zeek_http, "bytes_out"),
    "suricata": (_eve, "bytes_out"),
    "mapped": (_gateway_csv, "bytes_in"),
    "zscaler": (_zscaler, "bytes_in"),
    "elff": (_elff, "bytes_in"),
}


@WAYS
@pytest.mark.parametrize("value", [str(2**63 - 1), str(MAX_COUNT + 1), str(2**64)])
@pytest.mark.parametrize("name", sorted(COLLECTORS))
def test_other_collectors_read_counts_out_of_range_as_unknown(tmp_path, name, value, pure):
    """Zeek, Suricata, the mapped gateways, Zscaler, ELFF: a count beyond the bound is
    unknown (NULL) as an unreadable one is there; the record is stored, the scan ends
    well, and two such records (2**63 - 1 each: beyond 64 bits together) end nothing."""
    make, column = COLLECTORS[name]
    args = make(tmp_path, value)
    db = tmp_path / "x.db"
    res, _ = scan(db, pure, *args)
    assert res.returncode == 0, res.stderr
    found = rows(db, f"SELECT {column} FROM observations ORDER BY ts, line")  # noqa: S608
    assert len(found) == 2 and None in [v for (v,) in found]
    assert all(v is None or v <= MAX_COUNT for (v,) in found)


#: the stored sums a scan writes, each as one value
SUMS = {
    "roll-up": "SELECT bytes_in FROM obs_rollup",
    "context": "SELECT bytes_in FROM obs_context_totals",
    "monthly": "SELECT bytes_in FROM obs_monthly",
    "hourly": "SELECT max(bytes_in) FROM obs_hourly",
    "incident": "SELECT bytes_in FROM incidents",
    "finding": "SELECT bytes_in FROM findings",
}


@WAYS
def test_stored_sums_beyond_64_bits_saturate(tmp_path, pure):
    """2**15 requests of the largest size in one roll-up (2**63 bytes, one more than 64
    bits hold): every stored sum stops at MAX_SUM (an integer); a second scan's adds to
    those that span scans (monthly, incident, finding) leave them there. The rows are all
    stored, the reports read it. (An OpenAI name reached outside OpenAI's networks: an
    incident and a finding sum them too.)"""
    lines = [native(size=MAX_COUNT, ts=f"{1732752000 + k // 1000}.{k % 1000:03d}")
             .replace("172.66.0.243", "20.62.58.4") for k in range(2**15 + 1000)]  # fmt: skip
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text("\n".join(lines[: 2**15]) + "\n")
    second.write_text("\n".join(lines[2**15 :]) + "\n")
    db = tmp_path / "x.db"
    res, named = scan(db, pure, first)
    assert res.returncode == 0 and not named, res.stderr
    for name, sql in SUMS.items():
        assert rows(db, sql) == [(MAX_SUM,)], name
    res, named = scan(db, pure, second)
    assert res.returncode == 0 and not named, res.stderr
    for name in ("monthly", "incident", "finding"):
        assert rows(db, SUMS[name]) == [(MAX_SUM,)], name
    assert rows(db, SUMS["roll-up"]) == [(MAX_SUM,), (1000 * MAX_COUNT,)]
    assert rows(db, "SELECT count(*), max(bytes_in) FROM observations") == [
        (2**15 + 1000, MAX_COUNT)]  # fmt: skip
    report = apiwatch("--db", db, "report", "--since", "2024-11-27", "--until", "2024-11-29",
                      "--format", "json", env=env(pure))  # fmt: skip
    no_traceback(report)
    assert report.returncode == 0 and json.loads(report.stdout)["findings"]["items"]


def byte_values(doc: object) -> list[int | None]:
    """Every byte total a JSON report prints: ``bytes_*`` fields, and the current and previous
    values of the summary's byte metrics."""
    if isinstance(doc, list):
        return [v for item in doc for v in byte_values(item)]
    if not isinstance(doc, dict):
        return []
    found = [v for k, v in doc.items() if k.startswith("bytes_") and not isinstance(v, dict | list)]
    if str(doc.get("metric", "")).startswith("bytes_"):
        found += [doc["current"], doc["previous"]]
    return found + [v for item in doc.values() for v in byte_values(item)]


@WAYS
@pytest.mark.parametrize(("sizes", "want"), [
    ([MAX_COUNT] * 2**15 + [1] * 3, MAX_SUM),  # 2**63 + 3: one more than 64 bits hold
    ([MAX_COUNT - 1] * 64 + [1], 2**54 - 63),  # exact, where a float64 sum rounds
])  # fmt: skip
def test_report_byte_totals_saturate_as_stored_sums(tmp_path, pure, sizes, want):
    """The report adds stored byte sums (per client, destination, provider, period) as the
    store does: exact below MAX_SUM and MAX_SUM from there, never wrapped negative, never
    above it. One client, one destination: every byte total it prints is the whole sum."""
    log = tmp_path / "a.log"
    log.write_text("".join(native(size=n, ts=f"{1732752000 + k // 1000}.{k % 1000:03d}") + "\n"
                           for k, n in enumerate(sizes)))  # fmt: skip
    db = tmp_path / "x.db"
    res, named = scan(db, pure, log)
    assert res.returncode == 0 and not named, res.stderr
    report = apiwatch("--db", db, "report", "--since", "2024-11-28", "--until", "2024-11-29",
                      "--format", "json", env=env(pure))  # fmt: skip
    no_traceback(report)
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    printed = [v for v in byte_values(doc) if v is not None]
    assert len(printed) >= 5 and set(printed) == {want}, printed
    assert [(m["current"], m["previous"]) for m in doc["totals"]
            if m["metric"] == "bytes_in"] == [(want, None)]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(0, MAX_COUNT), st.just(MAX_SUM),
                          st.integers(0, MAX_SUM)), max_size=40))  # fmt: skip
def test_saturated_sum_is_the_sum_saturated(values):
    """SQL's saturated sum is SQLite's exact sum below MAX_SUM (an integer too), MAX_SUM at
    and above it, NULL for no value: and what batch._add makes of the values in any
    grouping (the roll-ups add sums of sums)."""
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (x INTEGER)")
    con.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
    found = con.execute(f"SELECT {saturated_sum('x')}, typeof({saturated_sum('x')}) FROM t")  # noqa: S608
    given_ = [v for v in values if v is not None]
    want = min(sum(given_), MAX_SUM) if given_ else None
    assert found.fetchone() == (want, "integer" if given_ else "null")
    half = len(values) // 2
    left = right = None
    for v in values[:half]:
        left = _add(left, v)
    for v in values[half:]:
        right = _add(right, v)
    assert _add(left, right) == want


def _statuses(tmp_path: Path, name: str, value: str) -> list:
    """An input of two records of ``name``'s format, the second with HTTP status ``value``."""
    if name == "zeek-http":
        data = _zeek_http(tmp_path, "5")[0]
        text = data.read_text().splitlines()
        k = next(k for k, ln in enumerate(text) if "\tH2\t" in ln)
        text[k] = text[k].replace("\t200\t", f"\t{value}\t")
        data.write_text("\n".join(text) + "\n")
        return [data]
    if name == "suricata":
        http = ev("http", flow_id=2, http={"hostname": "api.openai.com", "url": "/v1/chat",
                                           "http_method": "POST", "status": int(value)})  # fmt: skip
        ok = ev("http", flow_id=1, http={"hostname": "api.openai.com", "url": "/v1/chat",
                                         "http_method": "POST", "status": 200})  # fmt: skip
        (tmp_path / "eve.json").write_bytes(eve(ok, http))
        return [tmp_path / "eve.json"]
    if name == "mapped":
        args = _gateway_csv(tmp_path, "5")
        text = args[0].read_text().splitlines()
        text[2] = text[2].replace(",200,", f",{value},")
        args[0].write_text("\n".join(text) + "\n")
        args[-1] += ",status=status"
        return args
    row = (GATEWAYS / "zscaler-nss.csv").read_text().splitlines()[0]
    (tmp_path / "nss.csv").write_text("\n".join([row, row.replace('"200"', f'"{value}"')]) + "\n")
    return [tmp_path / "nss.csv"]


@WAYS
@pytest.mark.parametrize("value", [str(2**63 - 1), str(2**64), "1000"])
@pytest.mark.parametrize("name", ["zeek-http", "suricata", "mapped", "zscaler"])
def test_http_status_out_of_range_is_unknown(tmp_path, name, value, pure):
    """An HTTP status beyond three digits (which would end the scan when bound) is unknown
    where the collector reads an unreadable one so: both records stored."""
    db = tmp_path / "x.db"
    res, _ = scan(db, pure, *_statuses(tmp_path, name, value))
    assert res.returncode == 0, res.stderr
    assert sorted(rows(db, "SELECT status FROM observations"), key=str) == [(200,), (None,)]


@WAYS
def test_squid_status_and_ports_out_of_range(tmp_path, pure):
    """Squid: a status above 999 makes the record malformed (native: ``bad result
    code/status``, in C and Python; logformats: ``unreadable field``), one with leading zeros
    below is read (``0200``: 200); a client or URL port out of range is unknown, as a CONNECT
    target's is."""
    native_log, custom_log = tmp_path / "native.log", tmp_path / "custom.log"
    native_log.write_text("\n".join([native(), native().replace("/200 ", f"/{2**64} "),
                                     native().replace(":443 ", f":{2**64} "),
                                     native().replace("/200 ", "/0000000200 ")]) + "\n")  # fmt: skip
    fmt = "%ts.%03tu %>a %>p %Ss/%03>Hs %<st %rm %ru"
    line = "1732752001.203 10.0.0.5 {port} TCP_MISS/{status} 5 GET http://api.openai.com/v1/x"
    custom_log.write_text("\n".join([line.format(port=5, status=200),
                                     line.format(port=2**64, status=200),
                                     line.format(port=5, status=2**64),
                                     line.format(port=5, status="0200")]) + "\n")  # fmt: skip
    db = tmp_path / "x.db"
    res, named = scan(db, pure, native_log)
    assert res.returncode == 0, res.stderr
    assert [n[: n.index(": 1732")] for n in named] == [
        f"malformed: {native_log}:2: bad result code/status"]  # fmt: skip
    res, named = scan(db, pure, "--format", "squid-custom", "--squid-logformat", fmt, custom_log)
    assert res.returncode == 0, res.stderr
    assert [n[: n.index(": 1732")] for n in named] == [
        f"malformed: {custom_log}:3: unreadable field: HTTP status out of range (0 to 999)"
    ]
    assert rows(db, "SELECT source, line, status, client_port, dest_port FROM observations"
                " ORDER BY source, line") == [
        (str(custom_log), 1, 200, 5, 80), (str(custom_log), 2, 200, None, 80),
        (str(custom_log), 4, 200, 5, 80), (str(native_log), 1, 200, None, 443),
        (str(native_log), 3, 200, None, None), (str(native_log), 4, 200, None, 443)]  # fmt: skip


@WAYS
def test_squid_elapsed_times_out_of_range(tmp_path, pure):
    """An elapsed time beyond MAX_COUNT ms either way makes a line malformed, in the native
    format and a logformat's ``%tr`` alike (any number of digits: no "exceeds the limit"
    of int()); a negative one in range is stored with no duration, as Squid may log it."""
    native_log, custom_log = tmp_path / "native.log", tmp_path / "custom.log"
    native_log.write_text("\n".join([native(elapsed=-5), native(elapsed="-" + "9" * 30),
                                     native(elapsed=-MAX_COUNT)]) + "\n")  # fmt: skip
    fmt = "%ts.%03tu %tr %>a %Ss/%03>Hs %<st %rm %ru"
    line = "1732752001.203 {elapsed} 10.0.0.5 TCP_MISS/200 5 GET http://api.openai.com/v1/x"
    custom_log.write_text("\n".join(line.format(elapsed=e) for e in
                                    [7, "9" * 30, "9" * 5000, -5, -MAX_COUNT - 1, MAX_COUNT])
                          + "\n")  # fmt: skip
    db = tmp_path / "x.db"
    res, named = scan(db, pure, native_log)
    assert res.returncode == 0, res.stderr
    assert [n[: n.index(": 1732")] for n in named] == [
        f"malformed: {native_log}:2: elapsed time out of range (below -{MAX_COUNT} ms)"]
    res, named = scan(db, pure, "--format", "squid-custom", "--squid-logformat", fmt, custom_log)
    assert res.returncode == 0, res.stderr
    reason = "unreadable field: elapsed time out of range"
    assert [n[: n.index(": 1732")] for n in named] == [
        f"malformed: {custom_log}:2: {reason} (above {MAX_COUNT} ms)",
        f"malformed: {custom_log}:3: {reason} (above {MAX_COUNT} ms)",
        f"malformed: {custom_log}:5: {reason} (below -{MAX_COUNT} ms)"]  # fmt: skip
    assert rows(db, "SELECT source, line, duration FROM observations ORDER BY source, line") == [
        (str(custom_log), 1, 0.007), (str(custom_log), 4, None),
        (str(custom_log), 6, MAX_COUNT / 1000), (str(native_log), 1, None),
        (str(native_log), 3, None)]  # fmt: skip
