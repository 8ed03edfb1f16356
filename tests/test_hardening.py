"""Every failure clear, nothing lost (issue 10): damaged inputs and databases, full disks,
read-only databases, hostile strings, parallel parts. Real files, real ``apiwatch``
processes: each test reproduces what a user met and checks the one-line answer."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHANGHAI = EXAMPLES / "logs" / "shanghai-access.log"
FRANKFURT = EXAMPLES / "logs" / "frankfurt-access.log"


def apiwatch(*args, cwd=None, env=None, input=None) -> subprocess.CompletedProcess:
    """A real ``apiwatch`` process (this tree's code: the cwd is first on sys.path)."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", *map(str, args)],
        cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
    )


def no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr and "Aborted!" not in res.stderr, res.stderr


def rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def big_log(path: Path, copies: int = 40) -> Path:
    """Many shifted copies of the Shanghai example: distinct records, line after line."""
    lines = SHANGHAI.read_bytes().splitlines(keepends=True)
    with open(path, "wb") as f:
        for i in range(copies):
            for ln in lines:
                if ln[:1].isdigit():  # shift the timestamp: every copy is new traffic
                    ts, rest = ln.split(b" ", 1)
                    ln = b"%.3f %s" % (float(ts) + 60 * i, rest)
                f.write(ln)
    return path


# -- 1. truncated compressed inputs -----------------------------------------------------------


def _complete_lines(data: bytes) -> int:
    return data.count(b"\n")


@pytest.mark.parametrize(
    "suffix, compress",
    [
        (".gz", lambda b: gzip.compress(b)),
        (".bz2", lambda b: bz2.compress(b, 1)),  # 100 KB blocks: the first ones survive
        (".xz", lambda b: lzma.compress(b)),
    ],
)
@pytest.mark.parametrize("fmt", [None, "squid"])
def test_truncated_compressed_log_is_read_up_to_the_damage(tmp_path, suffix, compress, fmt):
    plain = big_log(tmp_path / "a.log", copies=400)  # ~2.8 MB: several bz2 blocks
    packed = compress(plain.read_bytes())
    cut = tmp_path / f"cut.log{suffix}"
    cut.write_bytes(packed[: len(packed) // 2])
    ok = tmp_path / "ok.log"
    shutil.copy(FRANKFURT, ok)
    db = tmp_path / "x.db"
    res = apiwatch("--db", db, "scan", "-q", *(["--format", fmt] if fmt else []), cut, ok)
    no_traceback(res)
    assert res.returncode == 1
    (err,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    prefix = f"error: {cut}: compressed data ends early after line "
    assert err.startswith(prefix), err
    n = int(err.removeprefix(prefix))
    # every complete line before the damage was read: the decompressor's own view of them
    readable = b""
    with {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix](cut) as f:
        try:
            while chunk := f.read1(1 << 16):
                readable += chunk
        except EOFError:
            pass
    assert n == _complete_lines(readable) > 1000
    stored = dict(rows(db, "SELECT source, max(line) FROM observations GROUP BY source"))
    assert stored[str(ok)] > 0  # the other file was read
    assert n - 62 < stored[str(cut)] <= n
    (finished,) = rows(db, "SELECT finished, exit_code FROM scans")
    assert finished[0] is not None  # the scan row is complete


def test_truncated_gzip_header_and_pcap_in_gzip(tmp_path):
    from tests import pcaps

    tiny = tmp_path / "tiny.log.gz"
    tiny.write_bytes(gzip.compress(SHANGHAI.read_bytes())[:10])
    cap = tmp_path / "c.pcap"
    info = pcaps.bulk_capture(cap, 6000, flows=30)
    gz = tmp_path / "c.pcap.gz"
    data = gzip.compress(cap.read_bytes())
    gz.write_bytes(data[: len(data) // 2])
    db = tmp_path / "x.db"
    res = apiwatch("--db", db, "scan", "-q", tiny, gz, FRANKFURT)
    no_traceback(res)
    assert res.returncode == 1
    assert f"error: {tiny}: compressed data ends early after line 0" in res.stderr
    assert f"error: {gz}: stopped reading after packet " in res.stderr
    assert "compressed data ends early" in res.stderr.split(str(gz))[1]
    sources = dict(rows(db, "SELECT source, count(*) FROM observations GROUP BY source"))
    assert 0 < sources[str(gz)] < info["flows"] and sources[str(FRANKFURT)] > 0


def test_daily_with_a_truncated_rotation_scans_and_reports_the_rest(tmp_path):
    shutil.copy(EXAMPLES / "apiwatch.toml", tmp_path / "apiwatch.toml")
    shutil.copytree(EXAMPLES / "logs", tmp_path / "logs")
    rotated = tmp_path / "logs" / "shanghai-access.log.1.gz"
    data = gzip.compress(big_log(tmp_path / "old.log", copies=200).read_bytes())
    rotated.write_bytes(data[: len(data) // 2])
    db = tmp_path / "a.db"
    res = apiwatch("--db", db, "daily", "--config", tmp_path / "apiwatch.toml",
                   "--date", "2026-11-30", "--json")  # fmt: skip
    no_traceback(res)
    assert res.returncode == 1
    assert f"{rotated}: compressed data ends early after line " in res.stderr
    out = json.loads(res.stdout)
    assert all(s["stored"] > 0 for s in out["sources"])
    assert all(r["written"] for r in out["reports"] if not r["skipped"])
    assert (tmp_path / "reports" / "apiwatch-weekly-2026-W48.html").exists()


# -- 5. control characters stay data ----------------------------------------------------------

RAW_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
EVIL_SITE = "sh\x1b]0;pwned\x07\u202eai"


@pytest.fixture
def evil(tmp_path):
    """A log with hosts no DNS name can hold, a URL and a user with controls, and a site
    whose name (from the config) carries them too."""
    lines = SHANGHAI.read_bytes().splitlines()
    good = next(ln for ln in lines if b"CONNECT api.openai.com" in ln and len(ln.split()) == 10)
    bad_hosts = [
        good.replace(b"api.openai.com", b"\x1b]0;title\x07.openai.azure.com"),
        good.replace(b"api.openai.com", "x\u202emoc.openai.azure.com".encode()),
        good.replace(b"api.openai.com", b"a\xc2\x9b2J.openai.azure.com"),  # C1 CSI
    ]
    get = (b"1795741343.300    120 10.20.7.2 TCP_MISS/200 900 POST "
           b"https://api.openai.com/v1/\x1b[2J\xe2\x80\xaechat \x07bob HIER_DIRECT/162.159.140.245 -")  # fmt: skip
    log = tmp_path / "evil.log"
    log.write_bytes(b"\n".join([*lines, *bad_hosts, get]) + b"\n")
    cfg = tmp_path / "evil.toml"
    cfg.write_text(
        (EXAMPLES / "apiwatch.toml")
        .read_text()
        .split("# ----")[0]
        .replace("[sites.shanghai]", '[sites."sh\\u001b]0;pwned\\u0007\\u202eai"]')
    )
    return log, cfg, len(lines)


def test_hosts_no_dns_name_can_hold_are_malformed_not_llm_traffic(tmp_path, evil):
    log, cfg, n = evil
    db = tmp_path / "e.db"
    res = apiwatch("--config", cfg, "--db", db, "scan", "-j", "1", log, "--json")
    no_traceback(res)
    assert res.returncode == 0
    summary = json.loads(res.stdout)
    assert summary["malformed"] == 4  # line 21 of the example, and the three bad hosts
    for i, shown in enumerate([r"\x1b]0;title\x07.openai.azure.com",
                               r"x\u202emoc.openai.azure.com", r"a\x9b2j.openai.azure.com"]):  # fmt: skip
        assert f"{log}:{n + 1 + i}: destination is not a host name: {shown}" in res.stderr
    assert not RAW_CONTROLS.search(res.stderr + res.stdout)
    assert rows(db, "SELECT count(*) FROM observations WHERE dest_host LIKE '%azure%'") == [(0,)]
    assert rows(db, "SELECT count(*) FROM incidents WHERE dest_host LIKE '%azure%'") == [(0,)]
    problems = [r[0] for r in rows(db, "SELECT line FROM scan_problems ORDER BY line")]
    assert problems == [21, n + 1, n + 2, n + 3]


def test_every_text_output_escapes_controls(tmp_path, evil):
    log, cfg, _ = evil
    db = tmp_path / "e.db"
    assert apiwatch("--config", cfg, "--db", db, "scan", "-q", log).returncode == 0
    (site,) = rows(db, "SELECT DISTINCT site FROM incidents WHERE site LIKE 'sh%'")[0]
    assert site == EVIL_SITE  # stored as data, exactly
    outputs = {}
    for name, args in {
        "incidents table": ("incidents",),
        "incidents csv": ("incidents", "--csv"),
        "incidents safe csv": ("incidents", "--csv", "--spreadsheet-safe"),
        "incidents json": ("incidents", "--json"),
        "parse csv": ("parse", "--csv", log),
        "parse json": ("parse", "--json", log),
        "parse table": ("parse", "--table", log),
        "report md": ("report", "--since", "2026-01-01", "--format", "md"),
        "report csv": ("report", "--since", "2026-01-01", "--format", "csv"),
        "report json": ("report", "--since", "2026-01-01", "--format", "json"),
        "report html": ("report", "--since", "2026-01-01", "--format", "html"),
    }.items():
        res = apiwatch("--config", cfg, "--db", db, *args)
        no_traceback(res)
        assert not RAW_CONTROLS.search(res.stdout), name
        outputs[name] = res.stdout
    for name in ("incidents csv", "incidents safe csv", "report csv", "report md"):
        assert r"sh\x1b]0;pwned\x07\u202eai" in outputs[name], name
    assert r"/v1/\x1b[2J\u202echat" in outputs["parse csv"] and r"\x07bob" in outputs["parse csv"]
    # JSON escapes them the JSON way: a reader gets the logged strings back exactly
    assert "\\u001b]0;pwned\\u0007\\u202eai" in outputs["incidents json"]
    sites = {json.loads(ln)["site"] for ln in outputs["incidents json"].splitlines()}
    assert EVIL_SITE in sites
    urls = {json.loads(ln).get("url") for ln in outputs["parse json"].splitlines()}
    assert "https://api.openai.com/v1/\x1b[2J\u202echat" in urls
    assert '"site": "sh\\u001b]0;pwned\\u0007\\u202eai"' in outputs["report json"]
    iid = json.loads(outputs["incidents json"].splitlines()[0])["id"]
    shown = apiwatch("--config", cfg, "--db", db, "show", iid, "--json")
    assert not RAW_CONTROLS.search(shown.stdout) and json.loads(shown.stdout)["id"] == iid


# -- 7. report paths ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("ex") / "example.db"
    res = apiwatch("--config", EXAMPLES / "apiwatch.toml", "--db", db, "scan", "-q",
                   *sorted((EXAMPLES / "logs").iterdir()))  # fmt: skip
    assert res.returncode == 0, res.stderr
    return db


@pytest.mark.parametrize(
    "pattern, shown",
    [
        ("x-{nosuch}.md", "{nosuch}"),
        ("x-{0}.md", "{0}"),
        ("x-{.md", "expected '}'"),
        ("x-}.md", "Single '}'"),
        ("x-{date.__class__}.md", "{date.__class__}"),
        ("x-{date!r}.md", "{date!r}"),
        ("x-{date:>40}.md", "{date:>40}"),
        ("x-{week[0]}.md", "{week[0]}"),
    ],
)
def test_report_path_only_takes_the_documented_placeholders(tmp_path, example_db, pattern, shown):
    out = tmp_path / pattern
    res = apiwatch("--db", example_db, "report", "--period", "weekly", "--date", "2026-11-27",
                   "-o", out)  # fmt: skip
    no_traceback(res)
    assert res.returncode == 2 and "bad placeholder" in res.stderr and shown in res.stderr
    assert "{start}" in res.stderr  # the message lists what is known
    assert list(tmp_path.iterdir()) == []
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[reports]]\nperiod = "weekly"\noutput = "{pattern}"\n')
    res = apiwatch("config", "check", cfg)
    no_traceback(res)
    assert res.returncode == 1
    assert f"{cfg}: reports[0].output: bad placeholder" in res.stderr and shown in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_report_format_rule_is_one_and_documented(tmp_path, example_db):
    base = ("--db", example_db, "report", "--period", "weekly", "--date", "2026-11-27")
    ok = apiwatch(*base, "-o", tmp_path / "r-{start}-{end}-{week}.{format}.txt")
    assert ok.returncode == 0, ok.stderr
    (txt,) = tmp_path.glob("*.txt")
    assert txt.name == "r-2026-11-23-2026-11-29-2026-W48.md.txt"
    assert txt.read_text().startswith("# ")  # Markdown, as help says
    for suffix, start in ((".html", "<!DOCTYPE html>"), (".json", "{"), (".csv", "since,")):
        apiwatch(*base, "-o", tmp_path / f"r{suffix}")
        assert (tmp_path / f"r{suffix}").read_text().startswith(start)
    assert apiwatch(*base).stdout.startswith("# ")
    helptext = apiwatch("report", "--help").stdout
    assert "{start}" in helptext and "else md" in helptext
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[reports]]\nperiod = "weekly"\noutput = "r.txt"\n')
    res = apiwatch("config", "check", cfg)
    assert res.returncode == 0 and "weekly md" in res.stdout


# -- 8. small things a user trips on -----------------------------------------------------------


def test_parse_says_it_stores_nothing_and_wrong_format_is_an_error(tmp_path):
    log = big_log(tmp_path / "a.log", copies=2)
    res = apiwatch("parse", "--format", "squid-common", "--csv", log)
    no_traceback(res)
    assert res.returncode == 1
    assert (f"error: {log}: all 124 records are malformed read as squid-common; "
            "it looks like squid (try --format squid)") in res.stderr  # fmt: skip
    assert "parse stores nothing" in res.stderr and "keeps them in scan_problems)" not in res.stderr
    db = tmp_path / "x.db"
    res = apiwatch("--db", db, "scan", "--format", "squid-common", log)
    assert res.returncode == 1 and "it looks like squid (try --format squid)" in res.stderr
    assert "the first 200 are kept in the scan_problems table" in res.stderr
    assert rows(db, "SELECT count(*) FROM scan_problems WHERE line = 0") == [(1,)]
    # a file with some good records is not misread: malformed lines stay notices
    assert apiwatch("--db", db, "scan", "-q", SHANGHAI).returncode == 0


def test_triage_notes_and_no_op_changes(tmp_path, example_db):
    db = tmp_path / "t.db"
    shutil.copy(example_db, db)
    (iid,) = rows(db, "SELECT id FROM incidents ORDER BY id LIMIT 1")[0]
    for note in ("", "   "):
        res = apiwatch("--db", db, "ack", iid, "--note", note)
        assert res.returncode == 2 and "a note must say something" in res.stderr
    assert apiwatch("--db", db, "resolve", iid, "-m", "SEC-1").returncode == 0
    again = apiwatch("--db", db, "resolve", iid, "-m", "SEC-1 again")
    assert again.returncode == 0 and "already resolved; nothing changed" in again.stderr
    events = "SELECT status_from, status_to FROM incident_events WHERE incident_id = ?"
    assert rows(db, events, (iid,)) == [("open", "resolved")]


def test_unknown_filter_values_are_named(example_db):
    cfg = ("--config", EXAMPLES / "apiwatch.toml", "--db", example_db)
    for args, message in [
        (("--site", "paris"), "unknown site 'paris'"),
        (("--provider", "openia"), "unknown provider 'openia'"),
        (("--client", "10.9.9.9"), "unknown client '10.9.9.9'"),
        (("--rule", "nosuch-rule"), "unknown rule 'nosuch-rule'"),
    ]:
        res = apiwatch(*cfg, "incidents", *args)
        no_traceback(res)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
    assert (
        "known: frankfurt, hongkong, shanghai"
        in apiwatch(*cfg, "incidents", "--site", "paris").stderr
    )
    # known values with nothing in the period: no error, just nothing
    quiet = apiwatch(*cfg, "incidents", "--site", "frankfurt", "--since", "2030-01-01")
    assert quiet.returncode == 0 and "no incidents match" in quiet.stderr


def test_db_check_prints_text_not_a_python_dict(example_db):
    res = apiwatch("--db", example_db, "db", "check")
    assert res.returncode == 0 and "{" not in res.stdout and "'" not in res.stdout
    assert any(ln.startswith("tables") and "observations " in ln for ln in res.stdout.splitlines())
    as_json = json.loads(apiwatch("--db", example_db, "db", "check", "--json").stdout)
    assert as_json["integrity"] == "ok"


def test_small_files_are_remembered_as_read(tmp_path):
    small = tmp_path / "small.log"
    small.write_bytes(b"".join(SHANGHAI.read_bytes().splitlines(keepends=True)[:10]))
    assert small.stat().st_size < 4096
    db = tmp_path / "s.db"
    first = json.loads(apiwatch("--db", db, "scan", "--json", small).stdout)
    second = json.loads(apiwatch("--db", db, "scan", "--json", small).stdout)
    assert first["records"] == 10 and first["stored"] > 0
    assert second["records"] == 0 and second["skipped_bytes"] == small.stat().st_size
    with open(small, "ab") as f:  # it grows: a new identity, read again, nothing counted twice
        f.write(SHANGHAI.read_bytes().splitlines(keepends=True)[10])
    third = json.loads(apiwatch("--db", db, "scan", "--json", small).stdout)
    assert (
        third["records"] == 11
        and third["stored"] + third["duplicates"] == third["llm_observations"]
    )
    assert third["duplicates"] == first["stored"]


def test_global_options_after_the_sub_command(tmp_path):
    db = tmp_path / "after.db"
    res = apiwatch("scan", "--db", db, "-q", SHANGHAI, "--config", EXAMPLES / "apiwatch.toml")
    no_traceback(res)
    assert res.returncode == 0 and db.exists()
    assert rows(db, "SELECT DISTINCT site FROM observations") == [("shanghai",)]
    assert apiwatch("incidents", f"--db={db}", "--json").stdout.count("\n") > 0
    assert "ok" in apiwatch("db", "check", "--db", db).stdout
    # a command's own option of that name wins: daily --config is daily's
    site = tmp_path / "site"
    shutil.copytree(EXAMPLES, site)
    res = apiwatch("daily", "--db", site / "d.db", "--config", site / "apiwatch.toml",
                   "--no-reports", "-q")  # fmt: skip
    assert res.returncode in (0, 3) and (site / "d.db").exists(), res.stderr


def test_readme_incident_examples_answer_for_the_example_logs(tmp_path):
    """Set-up step 1 of the README, then every `apiwatch incidents` example in it."""
    db = tmp_path / "example.db"
    setup = apiwatch("--config", "examples/apiwatch.toml", "--db", db, "scan",
                     *sorted(str(p.relative_to(ROOT)) for p in (EXAMPLES / "logs").iterdir()))  # fmt: skip
    assert setup.returncode == 0, setup.stderr
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"^apiwatch (incidents[^#|>\n]*)", readme, re.M)
    assert len(examples) >= 3
    for example in examples:
        res = apiwatch("--config", "examples/apiwatch.toml", "--db", db, *example.split())
        assert res.returncode == 0 and res.stdout.strip(), example


# -- 6. -j N stores exactly what -j 1 stores -------------------------------------------------


def _stored(db: Path) -> dict[str, list[tuple]]:
    """Everything a scan stores, field by field (but the scan's own id and times)."""
    return {
        "observations": rows(db, "SELECT * FROM observations ORDER BY id"),
        "incidents": rows(db, "SELECT * FROM incidents ORDER BY id"),
        "hits": rows(db, "SELECT * FROM hits ORDER BY incident_id, observation_id"),
        "problems": rows(db, "SELECT source, line, reason, excerpt FROM scan_problems ORDER BY line, reason"),
        "sources": rows(db, "SELECT key, head_len, path, size, offset, lines FROM sources ORDER BY key"),
        "scans": rows(db, "SELECT records, malformed, llm_observations, stored, duplicates, incidents_new, file_errors FROM scans"),
    }  # fmt: skip


def test_a_huge_line_across_the_split_point_keeps_every_line_number(tmp_path):
    """The user's case: a 20 MB line straddles the cut between two parts."""
    records = big_log(tmp_path / "h.log", copies=300).read_bytes().splitlines(keepends=True)
    head = b"".join(r for r in records if len(r.split()) == 10)  # ~2 MB each side
    log = tmp_path / "big.log"
    log.write_bytes(head + b"x" * (20 << 20) + b"\n" + head)
    env = {"APIWATCH_PART_SIZE": str(8 << 20)}  # 3 parts: both cuts fall inside the long line
    for jobs in (1, 2):
        res = apiwatch("--db", tmp_path / f"j{jobs}.db", "scan", "-q", "-j", jobs, log, env=env)
        assert res.returncode == 0, res.stderr
    one, two = _stored(tmp_path / "j1.db"), _stored(tmp_path / "j2.db")
    long_line = head.count(b"\n") + 1
    assert (str(log), long_line, "line longer than 65536 bytes") in [p[:3] for p in one["problems"]]
    assert one == two


def test_line_starts_found_from_every_offset(tmp_path):
    from monitor.collectors.base import _next_line_start

    data = b"a\r\n\n" + b"x" * 300 + b"\n\x00\x00\x00\nlast"
    path = tmp_path / "l.log"
    path.write_bytes(data)
    starts = [0] + [i + 1 for i, c in enumerate(data) if c == ord("\n")]
    with open(path, "rb") as f:
        for pos in range(len(data) + 1):
            want = next((s for s in starts if s >= pos), len(data))
            assert _next_line_start(f, pos, len(data)) == want, pos


_RECORD = st.builds(
    lambda ts, client, host, size: (
        f"{ts:.3f}    120 10.20.1.{client} TCP_TUNNEL/200 {size} CONNECT {host}:443 - "
        "HIER_DIRECT/162.159.140.245 -"
    ).encode(),
    st.floats(1795741200, 1795751200).map(lambda t: round(t, 3)),
    st.integers(1, 4),
    st.sampled_from(["api.openai.com", "api.anthropic.com", "github.com", "openrouter.ai"]),
    st.integers(0, 99999),
)
_LINE = st.one_of(
    _RECORD,
    _RECORD,
    st.integers(280, 320).map(lambda n: b"y" * n),  # around the (lowered) longest line
    st.builds(
        lambda r, k, at: r[:at] + b"\x00" * k + r[at:],
        _RECORD,
        st.integers(1, 40),
        st.integers(0, 100),
    ),  # fmt: skip
    st.just(b""),
    st.binary(max_size=30).filter(lambda b: b"\n" not in b),
)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(
    lines=st.lists(
        st.tuples(_LINE, st.sampled_from([b"\n", b"\r\n"]), st.booleans()), min_size=1, max_size=60
    ),  # fmt: skip
    pad=st.integers(0, 400),
    part_size=st.integers(1, 4000),
    jobs=st.integers(2, 4),
    tail=st.booleans(),
)
def test_parallel_parts_store_exactly_what_one_process_stores(
    tmp_path_factory, monkeypatch, lines, pad, part_size, jobs, tail
):
    """Generated logs (long lines, CRLF, NUL runs, repeats, a last line without newline),
    cut into parts wherever the part size and the padding put the cuts: -j N == -j 1."""
    import monitor.collectors.base as base
    import monitor.scanner as scanner
    from monitor.app import App, Settings
    from monitor.collectors import CollectOptions
    from monitor.egress import EgressOptions

    monkeypatch.setattr(base, "MAX_LINE", 300)
    monkeypatch.setattr(scanner, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(scanner, "MIN_PART", 1)
    monkeypatch.setattr(scanner, "PART_SIZE", part_size)
    tmp = tmp_path_factory.mktemp("prop")
    body = b"#" * pad + b"\n"
    for line, end, repeat in lines:
        body += line + end + ((line + end) if repeat else b"")
    if tail:
        body = body.rstrip(b"\r\n") + b" -"
    log = tmp / "gen.log"
    log.write_bytes(body)
    stored = []
    for n in (1, jobs):
        db = tmp / f"j{n}.db"
        app = App(Settings(db=db, config=EXAMPLES / "apiwatch.toml"))
        try:
            app.scan([str(log)], EgressOptions(egress_country="CN"), CollectOptions(format="squid"),
                     jobs=n)  # fmt: skip
        finally:
            app.close()
        stored.append(_stored(db))
    assert stored[0] == stored[1]


# -- 2. a damaged database; 3. a full disk; 4. a read-only database -------------------------------


def _scanned_db(path: Path, *logs: Path) -> Path:
    res = apiwatch("--config", EXAMPLES / "apiwatch.toml", "--db", path, "scan", "-q",
                   *(logs or sorted((EXAMPLES / "logs").iterdir())))  # fmt: skip
    assert res.returncode == 0, res.stderr
    return path


def _damage(db: Path, where: int) -> None:
    """Overwrite 4 KB (a page) at ``where`` with bytes no page holds."""
    with sqlite3.connect(db) as con:  # fold the WAL in, as after a clean shutdown
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    with open(db, "r+b") as f:
        f.seek(where)
        f.write(bytes(range(256)) * 16)


def test_a_damaged_database_is_named_and_nothing_claims_success(tmp_path):
    db = _scanned_db(tmp_path / "d.db")
    pages = db.stat().st_size // 4096
    _damage(db, (pages // 2) * 4096)
    check = apiwatch("--db", db, "db", "check")
    no_traceback(check)
    assert check.returncode == 1
    integrity = next(ln for ln in check.stdout.splitlines() if ln.startswith("integrity"))
    assert "ok" not in integrity.split(None, 1)[1]  # what SQLite's integrity check found
    scan = apiwatch("--db", db, "scan", FRANKFURT)
    no_traceback(scan)
    assert scan.returncode == 1 and "scan 1" not in scan.stdout
    (line,) = scan.stderr.strip().splitlines()  # damaged (quick check) or malformed at open
    assert line.startswith(f"Error: {db}: ") and f"run `apiwatch --db {db} db check`" in line
    for args in (("incidents",), ("report", "--since", "2026-01-01")):
        res = apiwatch("--db", db, *args)  # a read that meets the damage says so in one line
        no_traceback(res)
        if res.returncode:
            assert res.returncode == 1 and res.stderr.startswith(f"Error: {db}: "), res.stderr
            assert "db check" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_every_command_that_meets_damage_says_so_in_one_line(tmp_path):
    db = _scanned_db(tmp_path / "d.db")
    _damage(db, 0)  # the header: SQLite calls it "not a database" at once
    daily_site = tmp_path / "site"
    shutil.copytree(EXAMPLES, daily_site)
    for args in (("incidents",), ("show", "abc"), ("report", "--since", "2026-01-01"),
                 ("scan", FRANKFURT), ("db", "check"), ("ack", "abc", "-m", "x"),
                 ("daily", "--config", daily_site / "apiwatch.toml", "--date", "2026-11-30")):  # fmt: skip
        res = apiwatch("--db", db, *args)
        no_traceback(res)
        assert res.returncode == 1, (args, res.stderr)
        if args == ("db", "check"):  # the finding is its report
            assert "integrity                cannot be opened: " in res.stdout
            continue
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
        assert errors and all(str(db) in ln for ln in errors), (args, res.stderr)
        assert "db check" in res.stderr, (args, res.stderr)


def test_a_full_disk_stops_the_scan_cleanly_and_a_rerun_completes(tmp_path, small_fs):
    if small_fs is None:
        pytest.skip("cannot mount a tmpfs here (not root)")
    log = big_log(tmp_path / "a.log", copies=400)  # ~25k records: more than 1 MB of rows
    full = small_fs / "x.db"
    res = apiwatch("--config", EXAMPLES / "apiwatch.toml", "--db", full, "scan", "-j", "1", log)
    no_traceback(res)
    assert res.returncode == 1
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert line.startswith(f"Error: {full}: database or disk is full: what was committed is kept")
    assert "committed" in line and "new observations" in line
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)  # space freed
    again = apiwatch("--config", EXAMPLES / "apiwatch.toml", "--db", full, "scan", "-j", "1", log)
    assert again.returncode == 0, again.stderr
    whole = _scanned_db(tmp_path / "whole.db", log)
    a, b = _stored(full), _stored(whole)
    cols = [r[1] for r in rows(full, "PRAGMA table_info(observations)")]
    scan_col = cols.index("scan_id")  # which scan stored a row is all that may differ
    assert [o[:scan_col] + o[scan_col + 1 :] for o in a["observations"]] == [
        o[:scan_col] + o[scan_col + 1 :] for o in b["observations"]
    ]
    assert a["hits"] == b["hits"] and a["sources"] == b["sources"]
    names = [r[1] for r in rows(full, "PRAGMA table_info(incidents)")]
    keep = [i for i, n in enumerate(names) if n not in ("first_scan", "last_scan")]  # scan ids
    assert [[r[i] for i in keep] for r in a["incidents"]] == [
        [r[i] for i in keep] for r in b["incidents"]
    ]


def test_a_read_only_database_answers_queries_and_reports(tmp_path, small_fs):
    if small_fs is None:
        pytest.skip("cannot mount a tmpfs here (not root)")
    db = _scanned_db(small_fs / "audit.db")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)  # a read-only mount
    assert not os.access(small_fs, os.W_OK) or (
        subprocess.run(["touch", str(small_fs / "probe")], capture_output=True).returncode
    )
    expected = {json.loads(ln)["id"] for ln in
                apiwatch("--db", db, "incidents", "--json").stdout.splitlines()}  # fmt: skip
    assert len(expected) > 10
    (iid,) = sorted(expected)[:1]
    for args in (("incidents",), ("incidents", "--csv"), ("show", iid), ("findings",),
                 ("report", "--since", "2026-01-01", "--format", "html"), ("db", "check")):  # fmt: skip
        res = apiwatch("--db", db, *args)
        no_traceback(res)
        assert res.returncode == 0, (args, res.stderr)
        assert "readonly" not in res.stderr and res.stdout.strip()
    # writing commands say what they need, in one line
    ack = apiwatch("--db", db, "ack", iid, "-m", "audit")
    no_traceback(ack)
    assert ack.returncode == 1 and str(db) in ack.stderr


def test_an_auditors_copy_in_a_directory_without_write_access(tmp_path):
    """A WAL database whose directory cannot be written (no -shm can be made): opened
    read-only and immutable; the SQLite URI path, with the directory made immutable."""
    folder = tmp_path / "copy"
    folder.mkdir()
    db = _scanned_db(folder / "audit.db")
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    for extra in ("audit.db-wal", "audit.db-shm"):
        (folder / extra).unlink(missing_ok=True)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        if os.environ.get("CI") == "true":
            pytest.fail("chattr +i must work in CI (root, ext4/tmpfs)")
        pytest.skip("chattr +i is not supported here")
    try:
        res = apiwatch("--db", db, "incidents", "--json")
        no_traceback(res)
        assert res.returncode == 0 and len(res.stdout.splitlines()) > 10, res.stderr
        report = apiwatch("--db", db, "report", "--since", "2026-01-01", "--format", "md")
        assert report.returncode == 0 and "apiwatch" in report.stdout, report.stderr
        assert apiwatch("--db", db, "db", "check").returncode == 0
        found = apiwatch("--db", db, "findings", "--json")
        assert found.returncode == 0 and found.stdout.strip(), found.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["audit.db"]
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


# -- 9. one privacy mode per database ---------------------------------------------------------


def test_a_pseudonymised_database_refuses_plain_scans_and_other_keys(tmp_path):
    db = tmp_path / "p.db"
    key = {"APIWATCH_PSEUDONYMIZE_KEY": "k" * 32}
    first = apiwatch("--db", db, "scan", "-q", "--pseudonymize", SHANGHAI, env=key)
    assert first.returncode == 0, first.stderr
    before = _stored(db)
    for args, env in ((("scan", FRANKFURT), {}),
                      (("scan", "--pseudonymize", FRANKFURT), {"APIWATCH_PSEUDONYMIZE_KEY": "z" * 32})):  # fmt: skip
        res = apiwatch("--db", db, *args, env=env)
        no_traceback(res)
        assert res.returncode == 1
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith(f"Error: {db}: this database holds pseudonymised with key ")
        assert "refused, nothing was scanned" in line
    assert _stored(db) == before  # no anon: ids mixed with real addresses, no new scan row
    same = apiwatch("--db", db, "scan", "-q", "--pseudonymize", FRANKFURT, env=key)
    assert same.returncode == 0, same.stderr
    clients = {r[0] for r in rows(db, "SELECT DISTINCT client_ip FROM observations")}
    assert clients and all(c.startswith("anon:") for c in clients)
    plain = tmp_path / "plain.db"
    assert apiwatch("--db", plain, "scan", "-q", SHANGHAI).returncode == 0
    res = apiwatch("--db", plain, "scan", "--pseudonymize", FRANKFURT, env=key)
    assert res.returncode == 1 and "this database holds real addresses" in res.stderr
