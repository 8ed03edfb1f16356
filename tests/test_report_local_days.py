"""Reports and ``daily`` in a site's time zone (issue 11): figures count whole LOCAL days, and
``daily`` writes what is due by the local date.

Real scans of Squid lines near local midnight in Asia/Shanghai (UTC+8) and
America/Los_Angeles (UTC-8, UTC-7 before daylight saving ended on 1 November 2026). Near
midnight a local day and a UTC day split differently, so figures taken from the per-UTC-day
detail counted lines of the neighbouring local day; each expected figure here is counted
from the log lines with zoneinfo, not by apiwatch's code.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from monitor.app import App, Settings
from monitor.daily import run_daily
from tests.conftest import run

SH, LA = ZoneInfo("Asia/Shanghai"), ZoneInfo("America/Los_Angeles")
RULE = "provider-region-unsupported"

#: (site, local time, client, user): OpenAI calls around local midnights
LINES = [
    ("shanghai", datetime(2026, 11, 22, 23, 55), "10.20.0.1", "ann"),  # the week before
    ("shanghai", datetime(2026, 11, 23, 0, 5), "10.20.0.2", "ben"),  # Monday, 16:05Z Sunday
    ("shanghai", datetime(2026, 11, 24, 23, 50), "10.20.0.3", "cai"),
    ("shanghai", datetime(2026, 11, 25, 0, 10), "10.20.0.4", "dan"),  # same UTC day as ^
    ("shanghai", datetime(2026, 11, 25, 12, 0), "10.20.0.4", "dan"),
    ("shanghai", datetime(2026, 11, 25, 23, 59), "10.20.0.5", "eve"),
    ("shanghai", datetime(2026, 11, 26, 0, 1), "10.20.0.6", "fay"),  # same UTC day as ^
    ("shanghai", datetime(2026, 11, 29, 23, 55), "10.20.0.7", "gus"),  # Sunday, last of W48
    ("shanghai", datetime(2026, 11, 30, 0, 5), "10.20.0.8", "hal"),  # next week, same UTC day
    ("la", datetime(2026, 10, 31, 23, 30), "10.30.0.1", "ivy"),  # PDT: 06:30Z 1 Nov
    ("la", datetime(2026, 11, 1, 0, 30), "10.30.0.2", "jon"),  # PDT: 07:30Z 1 Nov
    ("la", datetime(2026, 11, 1, 23, 30), "10.30.0.3", "kim"),  # PST: 07:30Z 2 Nov
    ("la", datetime(2026, 11, 2, 0, 30), "10.30.0.4", "lou"),  # PST: 08:30Z 2 Nov
    ("la", datetime(2026, 11, 25, 23, 50), "10.30.0.5", "max"),  # 07:50Z 26 Nov
    ("la", datetime(2026, 11, 26, 0, 10), "10.30.0.6", "ned"),  # 08:10Z 26 Nov
    ("la", datetime(2026, 11, 28, 12, 0), "10.30.0.6", "ned"),
]
ZONES = {"shanghai": SH, "la": LA}

CONFIG = """
[sites.shanghai]
client_cidrs = ["10.20.0.0/16"]
country = "CN"
tz = "Asia/Shanghai"

[sites.la]
client_cidrs = ["10.30.0.0/16"]
country = "RU"
tz = "America/Los_Angeles"

[[sources]]
path = "access.log"

[[reports]]
period = "weekly"
site = ["shanghai"]
format = "json"
output = "out/sh-weekly-{week}.json"

[[reports]]
period = "daily"
site = ["la"]
format = "json"
output = "out/la-daily-{date}.json"

[[reports]]
period = "weekly"
site = ["la"]
format = "json"
output = "out/la-weekly-{week}.json"
"""


def instant(site: str, local: datetime) -> float:
    return local.replace(tzinfo=ZONES[site]).timestamp()


def squid_log() -> str:
    rows = sorted((instant(site, t), client, user) for site, t, client, user in LINES)
    return "".join(
        f"{ts:.3f}    120 {client} TCP_TUNNEL/200 4000 CONNECT api.openai.com:443 {user} "
        "HIER_DIRECT/104.18.7.192 -\n"
        for ts, client, user in rows
    )


def expected(site: str, first: date, days: int) -> dict[str, int]:
    """Counted from the lines: those of ``site`` on local dates [first, first + days)."""
    last = first + timedelta(days=days)
    mine = [(t, c, u) for s, t, c, u in LINES if s == site and first <= t.date() < last]
    return {
        "count": len(mine),
        "clients": len({c for _, c, _ in mine}),
        "users": len({u for _, _, u in mine}),
        "days": len({t.date() for t, _, _ in mine}),
    }


@pytest.fixture
def env(tmp_path):
    (tmp_path / "apiwatch.toml").write_text(CONFIG)
    (tmp_path / "access.log").write_text(squid_log())
    db = tmp_path / "a.db"
    run("--db", db, "--config", tmp_path / "apiwatch.toml", "scan", tmp_path / "access.log", "-q")
    return tmp_path, db


def report(env, *args) -> dict:
    tmp, db = env
    out = run("--db", db, "--config", tmp / "apiwatch.toml", "report", "--format", "json", *args)
    return json.loads(out.stdout)


def figures(doc: dict, site: str) -> dict[str, int]:
    (f,) = [f for f in doc["findings"]["items"] if f["site"] == site and f["rule"] == RULE]
    return {k: f[k] for k in ("count", "clients", "users", "days")}


@pytest.mark.parametrize(
    "site, args, first, days",
    [
        ("shanghai", ("--period", "daily", "--date", "2026-11-25"), date(2026, 11, 25), 1),
        ("shanghai", ("--period", "weekly", "--date", "2026-11-25"), date(2026, 11, 23), 7),
        ("la", ("--period", "daily", "--date", "2026-11-25"), date(2026, 11, 25), 1),
        ("la", ("--period", "daily", "--date", "2026-11-01"), date(2026, 11, 1), 1),  # 25 h
        ("la", ("--period", "weekly", "--date", "2026-10-30"), date(2026, 10, 26), 7),
        ("la", ("--period", "monthly", "--date", "2026-11-10"), date(2026, 11, 1), 30),
    ],
)
def test_findings_count_whole_local_days(env, site, args, first, days):
    """The site's time zone (the report is about that one site) and ``--tz`` give the same
    period; findings, traffic totals and the Markdown count the lines of its local days."""
    want = expected(site, first, days)
    assert want["count"] > 0
    by_site = report(env, *args, "--site", site)
    by_tz = report(env, *args, "--site", site, "--tz", str(ZONES[site]))
    assert by_site["meta"]["tz"] == str(ZONES[site]) and by_site["meta"]["first_day"] == str(first)
    assert figures(by_site, site) == figures(by_tz, site) == want
    assert by_site["totals"][0]["metric"] == "requests"
    assert by_site["totals"][0]["current"] == want["count"]
    assert by_site["findings"]["totals"]["findings"] == 1
    tmp, db = env
    md = run("--db", db, "--config", tmp / "apiwatch.toml", "report", "--format", "md",
             *args, "--site", site).stdout  # fmt: skip
    (row,) = [line for line in md.splitlines() if line.startswith("| `F-")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[7:11] == [str(want[k]) for k in ("count", "clients", "users", "days")]


def test_utc_periods_still_count_utc_days(env):
    """Without a time zone the same lines count over UTC days (the detail rows' grain)."""
    doc = report(env, "--period", "daily", "--date", "2026-11-24", "--site", "shanghai", "--tz",
                 "UTC")  # fmt: skip
    utc = [t for s, t, _, _ in LINES if s == "shanghai"
           and datetime.fromtimestamp(instant(s, t), UTC).date() == date(2026, 11, 24)]  # fmt: skip
    assert figures(doc, "shanghai")["count"] == len(utc) == 2


def test_daily_writes_what_is_due_by_the_local_date(env):
    """At 17:00Z on Sunday 29 November it is already Monday in Shanghai (its week is due)
    and still Sunday in Los Angeles (its week is not); at 03:00Z on Monday UTC, Los Angeles
    is still on Sunday evening."""
    tmp, db = env
    out = tmp / "out"
    app = App(Settings(db=db, config=tmp / "apiwatch.toml"))
    try:
        first = run_daily(app, now=datetime(2026, 11, 29, 17, 0, tzinfo=UTC))
        done = {r.key: (r.written, r.skipped) for r in first.reports}
        assert sorted(p.name for p in out.iterdir()) == [
            "la-daily-2026-11-28.json", "sh-weekly-2026-W48.json"]  # fmt: skip
        assert [w for w, _ in done.values()] == [True, True, False]
        weekly = json.loads((out / "sh-weekly-2026-W48.json").read_text())
        assert weekly["meta"]["since"] == "2026-11-22T16:00:00.000Z"
        assert figures(weekly, "shanghai") == expected("shanghai", date(2026, 11, 23), 7)
        la_day = json.loads((out / "la-daily-2026-11-28.json").read_text())
        assert figures(la_day, "la") == expected("la", date(2026, 11, 28), 1)
        second = run_daily(app, now=datetime(2026, 11, 30, 3, 0, tzinfo=UTC))  # Monday UTC
        assert [r.written for r in second.reports] == [True, True, False]
        assert "not over" in second.reports[2].skipped
        assert not (out / "la-weekly-2026-W48.json").exists()
        third = run_daily(app, now=datetime(2026, 11, 30, 8, 30, tzinfo=UTC))  # Monday in LA
        assert [r.written for r in third.reports] == [True, True, True]
        la_week = json.loads((out / "la-weekly-2026-W48.json").read_text())
        assert figures(la_week, "la") == expected("la", date(2026, 11, 23), 7)
    finally:
        app.close()


def test_output_names_are_the_local_period():
    """``{week}`` and ``{month}`` name the local period, not the UTC day it starts on."""
    from monitor.report import output_path, period_window

    month = period_window("monthly", date(2026, 11, 10), tz="Asia/Shanghai")
    week = period_window("weekly", date(2026, 11, 25), tz="Asia/Shanghai")
    assert month.since.date() == date(2026, 10, 31) and week.since.date() == date(2026, 11, 22)
    assert str(output_path("r-{month}-{date}.json", month, "json")) == "r-2026-11-2026-11-01.json"
    assert str(output_path("r-{week}.{format}", week, "md")) == "r-2026-W48.md"


@pytest.mark.parametrize(
    "args, chosen",
    [
        (("--client", "10.30.0.0/16"), lambda site, client, user: site == "la"),
        (("--client", "10.20.0.4", "--client", "10.30.0.6"),
         lambda site, client, user: client in ("10.20.0.4", "10.30.0.6")),
        (("--user", "dan", "--user", "ned"), lambda site, client, user: user in ("dan", "ned")),
        (("--user", "ned", "--client", "10.20.0.0/16"), lambda site, client, user: False),
    ],
)  # fmt: skip
def test_report_by_user_and_client(env, args, chosen):
    """``report --user/--client`` (issue 11): every figure counts only those requests."""
    mine = [(s, t) for s, t, c, u in LINES if chosen(s, c, u)]
    doc = report(env, "--since", "2026-10-01", "--until", "2026-12-31", *args)
    assert doc["totals"][0]["current"] == len(mine)
    assert sum(f["count"] for f in doc["findings"]["items"]) == len(mine)
    assert sum(r["requests"] for r in doc["by_site"]) == len(mine)
    assert {r["site"] for r in doc["by_site"]} == {s for s, _ in mine}
    values = [a for a in args if not a.startswith("--")]
    filters = doc["meta"]["filters"]
    assert sorted(filters.get("user", []) + filters.get("client", [])) == sorted(values)
    tmp, db = env
    base = ("--db", db, "--config", tmp / "apiwatch.toml", "report", "--since", "2026-10-01")
    md = run(*base, "--format", "md", *args).stdout
    assert "Filtered: " in md and all(f"`{v}`" in md for v in values)
    html = run(*base, "--format", "html", *args).stdout
    assert all(f" {k[2:]} " in html.split("Filtered:")[1][:400] for k in args[::2])
    rows = list(csv.reader(io.StringIO(run(*base, "--format", "csv", *args).stdout)))
    assert sorted(r[6] for r in rows if r[2:4] == ["meta", "filter"]) == sorted(values)
