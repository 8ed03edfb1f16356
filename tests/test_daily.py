"""``apiwatch daily`` end to end with a config over test logs, and ``config check``."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from monitor.config import ConfigError, parse_config
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def site(tmp_path):
    """A copy of examples/ (config + logs) so relative paths and report outputs stay in tmp."""
    shutil.copy(EXAMPLES / "apiwatch.toml", tmp_path / "apiwatch.toml")
    shutil.copytree(EXAMPLES / "logs", tmp_path / "logs")
    return tmp_path


def state(db):
    con = sqlite3.connect(db)
    try:
        return (
            con.execute("SELECT count(*) FROM observations").fetchone()[0],
            sorted(con.execute("SELECT id, count, status FROM incidents").fetchall()),
        )
    finally:
        con.close()


def test_daily_twice_same_outcome_nothing_double_counted(site):
    db = site / "a.db"
    args = ("--db", db, "daily", "--config", site / "apiwatch.toml", "--date", "2026-11-30")
    first = run(*args, "--json", ok=(3,))  # example logs raise high incidents: fail_on = high
    after_first = state(db)
    report_dir = site / "reports"
    daily = report_dir / "apiwatch-daily-2026-11-29.md"
    weekly = report_dir / "apiwatch-weekly-2026-W48.html"  # Monday: last week is due
    assert daily.exists() and weekly.exists()
    assert not list(report_dir.glob("*monthly*"))  # not the 1st
    weekly_first = weekly.read_text()

    second = run(*args, "--json", ok=(3,))
    assert state(db) == after_first  # idempotent: same observations, incidents and counts
    out1, out2 = json.loads(first.stdout), json.loads(second.stdout)
    assert out1["exit_code"] == out2["exit_code"] == 3
    assert out1["findings"] == out2["findings"] > 0
    assert sum(s["stored"] for s in out1["sources"]) == after_first[0] == 71
    assert sum(s["stored"] for s in out2["sources"]) == 0
    assert [r["path"] for r in out1["reports"]] == [r["path"] for r in out2["reports"]]

    def figures(html):  # the report minus the moment it was made
        import re

        return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "T", html)

    # the second run rewrites the same figures (its own scans are listed as methods)
    a, b = figures(weekly_first), figures(weekly.read_text())
    assert a.split('id="methods"')[0] == b.split('id="methods"')[0]

    # once the high incidents are acknowledged, cron is told all is well
    con = sqlite3.connect(db)
    high = [r[0] for r in con.execute("SELECT id FROM incidents WHERE severity = 'high'")]
    con.close()
    for iid in high:
        run("--db", db, "ack", iid, "--note", "SEC-42", "--actor", "ops")
    assert run(*args, "-q").exit_code == 0
    assert run(*args, "--fail-on", "medium", "-q", ok=(3,)).exit_code == 3


def test_daily_source_failure_exits_1_and_still_does_the_rest(site):
    cfg = site / "apiwatch.toml"
    cfg.write_text(
        cfg.read_text()
        + '\n[[sources]]\npath = "logs/missing-*.log"\n\n[[sources]]\npath = "logs/gone.log"\n'
        + '\n[[sources]]\npath = "logs/later-*.log"\noptional = true\n'
    )
    db = site / "a.db"
    res = run("--db", db, "daily", "--config", cfg, "--date", "2026-11-28", "--json", ok=(1,))
    out = json.loads(res.stdout)
    assert out["exit_code"] == 1
    by_key = {s["key"]: s for s in out["sources"]}
    assert "no file matches" in by_key["sources[3]"]["error"]
    assert by_key["sources[4]"]["file_errors"]  # a named file that is missing
    assert by_key["sources[5]"]["error"] is None and by_key["sources[5]"]["files"] == []
    assert by_key["sources[0]"]["stored"] > 0  # the good sources were scanned
    assert (site / "reports" / "apiwatch-daily-2026-11-27.md").exists()  # reports written
    assert "error: sources[3]" in res.stderr


def test_daily_without_fail_on_and_no_reports(site, tmp_path):
    cfg = site / "apiwatch.toml"
    cfg.write_text(cfg.read_text().replace('fail_on = "high"', ""))
    db = site / "a.db"
    run("--db", db, "daily", "--config", cfg, "--no-reports", "-q")
    assert not (site / "reports").exists()


def test_config_check(site):
    good = run("config", "check", site / "apiwatch.toml")
    assert "ok" in good.stdout and "sources[0]" in good.stdout and "reports[1]" in good.stdout
    cfg = site / "apiwatch.toml"
    bad = site / "bad.toml"
    for snippet, key in [
        ('\n[[sources]]\npath = "x.log"\ncolour = "red"\n', "sources[3].colour: unknown key"),
        ('\n[[sources]]\npath = "x.log"\nsite = "paris"\n', "sources[3].site: unknown site 'paris'"),
        ('\n[[sources]]\nsite = "shanghai"\n', "sources[3].path: missing"),
        ('\n[[sources]]\npath = "x"\nformat = "csvv"\n', "sources[3].format: unknown format"),
        ('\n[[sources]]\npath = "x"\negress_country = "XX"\n', "sources[3].egress_country"),
        ('\n[[sources]]\npath = "x"\negress_ip = "1.2.3"\n', "sources[3].egress_ip"),
        ('\n[[reports]]\nperiod = "yearly"\noutput = "r.html"\n', "reports[3].period"),
        ('\n[[reports]]\nperiod = "daily"\noutput = "r-{day}.md"\n', "reports[3].output: bad placeholder"),
        ('\n[[reports]]\nperiod = "daily"\noutput = "r.md"\ntop = 0\n', "reports[3].top"),
    ]:  # fmt: skip
        bad.write_text(cfg.read_text() + snippet)
        res = run("config", "check", bad, ok=(1,))
        assert key in res.stderr, (key, res.stderr)
    bad.write_text(cfg.read_text().replace('fail_on = "high"', 'fail_on = "severe"'))
    assert "daily.fail_on" in run("config", "check", bad, ok=(1,)).stderr
    bad.write_text('[geo]\ndatabases = ["nope.mmdb"]\n')
    assert "nope.mmdb" in run("config", "check", bad, ok=(1,)).stderr


def test_parse_config_stays_backward_compatible():
    cfg = parse_config({"db": "x.db", "sites": {"a": {"country": "de"}}})
    assert cfg.sources == () and cfg.reports == () and cfg.fail_on is None
    one = parse_config({"reports": {"period": "weekly", "output": "w.json"}})  # a single [reports]
    assert one.reports[0].format == "json" and one.reports[0].key == "reports"
    with pytest.raises(ConfigError, match="reports: expected"):
        parse_config({"reports": "weekly"})
