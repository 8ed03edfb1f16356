"""The CLI end to end, with CliRunner, real log files, a real SQLite file and the embedded geodata."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import EXIT_ERROR, EXIT_FINDINGS, main
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONFIG = EXAMPLES / "apiwatch.toml"
LOGS = sorted(str(p) for p in (EXAMPLES / "logs").iterdir())

PARSE_CONTRACT = {
    "ts",
    "source",
    "line",
    "format",
    "client_ip",
    "client_port",
    "dest_host",
    "dest_port",
    "dest_ip",
    "method",
    "status",
    "bytes_out",
    "bytes_in",
    "host_source",
    "provider",
    "provider_kind",
}
INCIDENT_CONTRACT = {
    "id",
    "rule",
    "severity",
    "provider",
    "dest_host",
    "client_ip",
    "site",
    "egress_ip",
    "egress_country",
    "first_seen",
    "last_seen",
    "count",
    "bytes_out",
    "status",
}


def incidents(db, *args):
    out = run("--db", db, "incidents", "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def native(
    ts,
    client,
    method,
    url,
    status=200,
    size=5000,
    code="TCP_TUNNEL",
    peer="HIER_DIRECT/162.159.140.245",
):
    return f"{ts:.3f}    120 {client} {code}/{status:03d} {size} {method} {url} - {peer} -"


def test_example_scan_raises_the_expected_incidents(db):
    result = run("--config", CONFIG, "--db", db, "scan", *LOGS, "--json")
    summary = json.loads(result.stdout)
    assert summary["records"] == 131 and summary["malformed"] == 1
    assert summary["incidents_new"] > 0 and summary["incidents_updated"] == 0
    assert "shanghai-access.log:21: truncated record" in result.stderr

    incs = incidents(db)
    assert all(set(i) >= INCIDENT_CONTRACT for i in incs)
    key = {(i["rule"], i["provider"], i["site"], i["egress_country"]) for i in incs}
    assert (
        "provider-region-unsupported",
        "openai",
        "shanghai",
        "CN",
    ) in key  # geolocated 114.114.114.114
    assert ("provider-region-unsupported", "anthropic", "hongkong", "HK") in key  # declared country
    assert ("relay-service", "openrouter", "shanghai", "CN") in key
    assert ("unapproved-provider", "deepseek", "shanghai", "CN") in key
    assert not any(
        i["site"] == "frankfurt" and i["rule"] == "provider-region-unsupported" for i in incs
    )
    assert not any(i["dest_host"] in ("api.openai.com.example.net", "notopenai.com") for i in incs)
    # blocked attempts still raise incidents, with the outcome recorded
    blocked = [i for i in incs if i["provider"] == "anthropic" and i["site"] == "shanghai"]
    assert blocked and all(
        i["outcome"] == "blocked" and i["blocked"] == i["count"] for i in blocked
    )
    # counts equal the records behind them
    con = sqlite3.connect(db)
    for inc in incs:
        (n,) = con.execute(
            "SELECT count(*) FROM hits WHERE incident_id = ?", [inc["id"]]
        ).fetchone()
        assert n == inc["count"]


def test_rescan_and_overlapping_files_never_double_count(db, tmp_path):
    lines = [
        native(1795741200 + i, f"10.20.0.{i % 3}", "CONNECT", "api.openai.com:443")
        for i in range(30)
    ]
    lines.append(lines[-1])  # a genuinely repeated line is two requests
    first = tmp_path / "access.log.1"
    first.write_text("\n".join(lines[:20]) + "\n")
    second = tmp_path / "access.log"
    second.write_text("\n".join(lines[10:]) + "\n")  # overlaps lines 10..19
    union = tmp_path / "union.log"
    union.write_text("\n".join(lines) + "\n")
    args = ("--egress-country", "CN")

    run("--db", db, "scan", first, *args)
    run("--db", db, "scan", second, *args)
    run("--db", db, "scan", first, second, *args)
    again = json.loads(run("--db", db, "scan", first, second, "--json", *args).stdout)
    assert again["stored"] == 0 and again["incidents_new"] == again["incidents_updated"] == 0

    reference = tmp_path / "reference.db"
    run("--db", reference, "scan", union, *args)

    def strip(rows):
        return sorted(
            (r["id"], r["count"], r["bytes_in"], r["first_seen"], r["last_seen"]) for r in rows
        )

    assert strip(incidents(db)) == strip(incidents(reference))
    assert sum(i["count"] for i in incidents(db)) == 31


def test_parse_json_contract_and_stdin():
    text = (EXAMPLES / "logs" / "shanghai-access.log").read_text()
    out = run("parse", "-", "--json", input=text).stdout.splitlines()
    rows = [json.loads(line) for line in out]
    assert len(rows) == 61  # 62 lines, one truncated
    assert all(set(r) >= PARSE_CONTRACT for r in rows)
    openai = [r for r in rows if r["provider"] == "openai"]
    assert openai and all(r["provider_kind"] == "api" for r in openai)
    assert rows[0]["ts"].endswith("Z") and rows[0]["source"] == "-" and rows[0]["line"] == 1
    lookalike = [r for r in rows if r["dest_host"] == "api.openai.com.example.net"]
    assert lookalike and all(r["provider"] is None for r in lookalike)


def test_parse_reads_gzip_and_bzip2(tmp_path):
    line = native(1795741200, "10.0.0.1", "CONNECT", "api.anthropic.com:443") + "\n"
    (tmp_path / "a.log.gz").write_bytes(gzip.compress(line.encode()))
    (tmp_path / "b.log.bz2").write_bytes(bz2.compress(line.encode()))
    out = run("parse", tmp_path / "a.log.gz", tmp_path / "b.log.bz2", "--json").stdout
    assert [json.loads(x)["provider"] for x in out.splitlines()] == ["anthropic", "anthropic"]


def test_incident_filters_csv_and_show(db):
    run("--config", CONFIG, "--db", db, "scan", *LOGS)
    everything = incidents(db)
    high = incidents(db, "--severity", "high")
    assert high and {i["severity"] for i in high} == {"high"}
    assert len(incidents(db, "--severity", "info")) == len(everything)
    assert {i["provider"] for i in incidents(db, "--provider", "openai")} == {"openai"}
    assert {i["site"] for i in incidents(db, "--site", "hongkong")} == {"hongkong"}
    assert incidents(db, "--since", "2026-11-27T02:00:00Z") and not incidents(
        db, "--since", "2026-11-28"
    )
    assert not incidents(db, "--until", "2026-11-26")
    assert incidents(db, "--status", "open") == everything
    assert len(incidents(db, "--limit", "3")) == 3

    rows = list(csv.DictReader(io.StringIO(run("--db", db, "incidents", "--csv").stdout)))
    assert len(rows) == len(everything) and set(rows[0]) >= INCIDENT_CONTRACT

    target = high[0]
    shown = json.loads(run("--db", db, "show", target["id"][:8], "--json").stdout)
    assert shown["id"] == target["id"] and len(shown["records"]) == min(target["count"], 20)
    assert all(r["dest_host"] == target["dest_host"] for r in shown["records"])
    text = run("--db", db, "show", target["id"]).stdout
    assert target["id"] in text and "records (" in text
    assert run("--db", db, "show", "ffffffffffff", ok=(EXIT_ERROR,)).exit_code == EXIT_ERROR


def test_fail_on_exit_code_for_cron(db, tmp_path):
    log = tmp_path / "a.log"
    log.write_text(native(1795741200, "10.0.0.1", "CONNECT", "api.openai.com:443") + "\n")
    assert (
        run(
            "--db",
            db,
            "scan",
            log,
            "--egress-country",
            "RU",
            "--fail-on",
            "high",
            ok=(EXIT_FINDINGS,),
        ).exit_code
        == EXIT_FINDINGS
    )
    # nothing new the second time: success
    assert (
        run("--db", db, "scan", log, "--egress-country", "RU", "--fail-on", "high").exit_code == 0
    )
    # below the threshold: success
    assert (
        run("--db", db, "scan", log, "--egress-country", "HK", "--fail-on", "critical").exit_code
        == 0
    )


def test_scans_record_their_exit_code(db, tmp_path):
    """The report's methods section reads ``scans.exit_code``: every scan writes it."""
    log = tmp_path / "a.log"
    log.write_text(native(1795741200, "10.0.0.1", "CONNECT", "api.openai.com:443") + "\n")
    run("--db", db, "scan", log, "--egress-country", "RU", "--fail-on", "high", ok=(EXIT_FINDINGS,))
    run("--db", db, "scan", log, "--egress-country", "RU")
    run("--db", db, "scan", log, tmp_path / "missing.log", ok=(EXIT_ERROR,))
    with sqlite3.connect(db) as con:
        codes = [r[0] for r in con.execute("SELECT exit_code FROM scans ORDER BY id")]
    assert codes == [EXIT_FINDINGS, 0, EXIT_ERROR]


def test_bad_input_is_reported_and_the_rest_scanned(db, tmp_path):
    good = tmp_path / "good.log"
    good.write_text(native(1795741200, "10.0.0.1", "CONNECT", "api.openai.com:443") + "\n")
    junk = tmp_path / "junk.log"
    junk.write_bytes(
        native(1795741201, "10.0.0.2", "CONNECT", "api.openai.com:443").encode()
        + b"\n"
        + b"\x00\xff\xfe binary \x1b[31m junk\n"
        + native(1795741202, "10.0.0.2", "CONNECT", "api.openai.com:443")[:40].encode()
        + b"\n"
        + native(1795741203, "10.0.0.2", "CONNECT", "api.openai.com:443").encode()
        + b"\n"
    )
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.log"
    result = run(
        "--db",
        db,
        "scan",
        good,
        junk,
        empty,
        missing,
        "--egress-country",
        "CN",
        "--json",
        ok=(EXIT_ERROR,),
    )
    summary = json.loads(result.stdout)
    assert summary["records"] == 3 and summary["malformed"] == 2
    assert f"{junk}:2:" in result.stderr and f"{junk}:3:" in result.stderr
    assert f"error: {missing}:" in result.stderr
    assert "\x1b" not in result.stderr  # terminal escapes from logs are neutralised
    assert sum(i["count"] for i in incidents(db)) == 3
    problems = (
        sqlite3.connect(db)
        .execute("SELECT source, line FROM scan_problems ORDER BY line")
        .fetchall()
    )
    assert (str(missing), 0) in problems and (str(junk), 2) in problems


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(db, tmp_path):
    f = tmp_path / "secret.log"
    f.write_text("x\n")
    f.chmod(0)
    result = run("--db", db, "scan", f, ok=(EXIT_ERROR,))
    assert "Permission denied" in result.stderr


def test_wrong_format_flag_gives_malformed_counts(db):
    result = run(
        "--db",
        db,
        "scan",
        EXAMPLES / "logs" / "frankfurt-access.log",
        "--format",
        "squid-common",
        "--json",
        ok=(EXIT_ERROR,),  # every record malformed: the wrong format, most likely (issue 10)
    )
    summary = json.loads(result.stdout)
    assert summary["records"] == 0 and summary["malformed"] == 30
    assert "frankfurt-access.log:1:" in result.stderr
    assert "it looks like squid (try --format squid)" in result.stderr


def test_unrecognised_format_names_what_was_tried(db, tmp_path):
    f = tmp_path / "nginx.json"
    f.write_text('{"time": "2026-11-27T00:00:00Z", "host": "api.openai.com"}\n' * 3)
    result = run("--db", db, "scan", f, ok=(EXIT_ERROR,))
    assert "unrecognised log format" in result.stderr and "squid-common" in result.stderr


def test_usage_errors(db, tmp_path):
    log = EXAMPLES / "logs" / "frankfurt-access.log"
    assert run("--db", db, "scan", log, "--egress-country", "XX", ok=(2,)).exit_code == 2
    assert run("--db", db, "scan", log, "--egress-ip", "not-an-ip", ok=(2,)).exit_code == 2
    r = run("--config", CONFIG, "--db", db, "scan", log, "--site", "paris", ok=(2,))
    assert "shanghai" in r.stderr  # names the sites it knows
    assert run("--db", db, "incidents", "--since", "last tuesday", ok=(2,)).exit_code == 2


def test_bad_config_names_the_key(db, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[sites.x]\nclient_cidrs = ["10.0.0.0/33"]\n')
    r = run("--config", cfg, "--db", db, "scan", LOGS[0], ok=(EXIT_ERROR,))
    assert "sites.x.client_cidrs" in r.stderr


def test_hostile_strings_stay_data(db, tmp_path):
    evil_host = "api.openai.com"
    evil_user = "x');DROP/**/TABLE/**/incidents;--<script>"
    log = tmp_path / "evil.log"
    log.write_text(
        f"1795741200.000    120 10.0.0.9 TCP_TUNNEL/200 5000 CONNECT {evil_host}:443 {evil_user} HIER_DIRECT/1.2.3.4 -\n"
    )
    run("--db", db, "scan", log, "--egress-country", "CN")
    odd = run("--db", db, "incidents", "--client", "10.0.0.9' OR '1'='1", ok=(2,))
    assert "unknown client \"10.0.0.9' OR '1'='1\"" in odd.stderr  # a value, not SQL
    assert len(incidents(db, "--client", "10.0.0.9")) == 1
    (inc,) = incidents(db)
    shown = json.loads(run("--db", db, "show", inc["id"], "--json").stdout)
    assert shown["records"][0]["user"] == evil_user


def test_database_is_private_and_wal(db, tmp_path):
    run("--db", db, "scan", LOGS[0], "--egress-country", "DE")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_db_from_environment(tmp_path):
    db = tmp_path / "env.db"
    result = CliRunner(env={"APIWATCH_DB": str(db)}).invoke(
        main, ["scan", LOGS[0], "--egress-country", "DE"]
    )
    assert result.exit_code == 0 and db.exists()


def test_providers_and_geo_commands():
    rows = [json.loads(x) for x in run("providers", "--json").stdout.splitlines()]
    ids = {r["id"] for r in rows}
    assert {"openai", "azure_openai", "anthropic", "google_gemini", "deepseek", "openrouter"} <= ids
    out = [
        json.loads(x)
        for x in run("providers", "API.OpenAI.com.", "notopenai.com", "--json").stdout.splitlines()
    ]
    assert out[0]["provider"] == "openai" and out[1]["provider"] is None

    geo = [json.loads(x) for x in run("geo", "8.8.8.8", "10.1.2.3", "--json").stdout.splitlines()]
    assert geo[0]["country"] == "US" and geo[0]["asn"] == 15169 and geo[0]["country_source"]
    assert geo[1]["scope"] == "private" and geo[1]["country"] is None
    assert run("geo", "999.1.1.1", ok=(2,)).exit_code == 2
    assert {
        r["origin"] for r in map(json.loads, run("geo", "--sources", "--json").stdout.splitlines())
    } >= {"embedded"}


def test_rules_command_lists_bundled_rules():
    ids = {json.loads(x)["id"] for x in run("rules", "--json").stdout.splitlines()}
    assert "provider-region-unsupported" in ids


def test_every_command_has_an_example_in_help():
    for name in main.commands:
        text = run(name, "--help").stdout
        assert "apiwatch " in text.split("Options:")[0], name


def test_python_dash_m_and_console_script(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "--version"], capture_output=True, text=True, check=True
    )
    assert "apiwatch" in out.stdout
    exe = shutil.which("apiwatch")
    if exe:
        assert subprocess.run([exe, "--help"], capture_output=True, text=True).returncode == 0


def test_incidents_csv_can_be_made_spreadsheet_safe(db, tmp_path):
    log = tmp_path / "a.log"
    # a host name a spreadsheet would run as a formula, under a provider's wildcard ("=" is
    # no host name character: such a host is malformed, but "-" starts a formula too)
    log.write_text(native(1795741200, "10.0.0.1", "CONNECT", "-cmd.openai.azure.com:443") + "\n")
    run("--db", db, "scan", log, "--egress-country", "RU")
    raw = run("--db", db, "incidents", "--csv").stdout
    safe = run("--db", db, "incidents", "--csv", "--spreadsheet-safe").stdout
    assert ",-cmd.openai.azure.com," in raw  # tools get the data as logged
    assert ",'-cmd.openai.azure.com," in safe
