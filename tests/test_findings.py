"""Findings end to end: a week of Squid traffic from 200 clients at one site, rolled up into
findings; reopen, exceptions and their expiry, bulk actions, the audit trail; migration."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, date, datetime, timedelta

import pytest
from click.testing import CliRunner

from monitor.cli import EXIT_FINDINGS, main
from monitor.store import MIGRATIONS, SCHEMA_VERSION, Store

HOSTS = {  # provider id -> (host, destination address)
    "openai": ("api.openai.com", "104.18.7.192"),
    "anthropic": ("api.anthropic.com", "160.79.104.10"),
    "google_gemini": ("generativelanguage.googleapis.com", "142.250.72.10"),
}
RULE = "provider-region-unsupported"
FINDINGS_SCHEMA = 6  # the step that brought findings
WEEK_START = datetime(2026, 11, 23, tzinfo=UTC).timestamp()  # Monday
CLIENTS = [f"10.20.{i // 100}.{i % 100 + 1}" for i in range(200)]

CONFIG = """
[sites.shanghai]
client_cidrs = ["10.20.0.0/16"]
country = "CN"
"""


def run(*args, ok=(0,)):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code in ok, result.output + result.stderr
    return result


def squid_line(ts: float, client: str, provider: str, user: str | None, size: int = 900) -> str:
    host, ip = HOSTS[provider]
    return (
        f"{ts:.3f}    120 {client} TCP_TUNNEL/200 {size} CONNECT {host}:443 "
        f"{user or '-'} HIER_DIRECT/{ip} -\n"
    )


def week_log(path, days=7) -> int:
    """Every client calls each provider once or twice a day, as its own user: a real
    Squid native log, in time order."""
    lines = []
    for day in range(days):
        for n, client in enumerate(CLIENTS):
            for k, provider in enumerate(HOSTS):
                for rep in range(1 + (n + k) % 2):
                    ts = WEEK_START + day * 86400 + 3600 + n * 60 + k * 7 + rep
                    lines.append((ts, squid_line(ts, client, provider, f"user{n:03d}")))
    lines.sort()
    path.write_text("".join(line for _, line in lines))
    return len(lines)


@pytest.fixture
def env(tmp_path):
    cfg = tmp_path / "apiwatch.toml"
    cfg.write_text(CONFIG)
    db = tmp_path / "a.db"
    log = tmp_path / "access.log"
    lines = week_log(log)
    return {"db": db, "cfg": cfg, "log": log, "lines": lines, "dir": tmp_path}


def cli(env, *args, ok=(0,)):
    return run("--db", env["db"], "--config", env["cfg"], *args, ok=ok)


def findings(env, *args):
    out = cli(env, "findings", "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def incidents(env, *args):
    out = cli(env, "incidents", "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def events(env, fid):
    return json.loads(cli(env, "show", fid, "--json").stdout)["events"]


def more_traffic(env, name, provider, n, day=8):
    path = env["dir"] / name
    ts0 = WEEK_START + day * 86400
    path.write_text("".join(squid_line(ts0 + i, CLIENTS[i], provider, None) for i in range(n)))
    return path


def test_a_week_rolls_up_into_findings(env):
    cli(env, "scan", env["log"], ok=(EXIT_FINDINGS, 0))
    rows = findings(env)
    # a site that declares a country but no egress address still has CN as egress country
    assert {(f["rule"], f["provider"], f["site"]) for f in rows} == {
        (RULE, p, "shanghai") for p in HOSTS
    }
    assert all(list(f) == list(rows[0]) for f in rows)
    assert list(rows[0]) == [
        "id", "rule", "severity", "provider", "site", "egress_country", "status", "first_seen",
        "last_seen", "count", "blocked", "bytes_out", "clients", "users", "hosts", "days",
    ]  # fmt: skip
    assert sum(f["count"] for f in rows) == env["lines"]
    for f in rows:
        detail = incidents(env, "--finding", f["id"])
        assert len(detail) == 200 * 7  # one per client and day (each client is one user)
        assert f["count"] == sum(i["count"] for i in detail)
        assert (f["clients"], f["users"], f["hosts"], f["days"]) == (200, 200, 1, 7)
        assert f["egress_country"] == "CN" and f["status"] == "open" and f["severity"] == "high"
        assert {i["user"] for i in detail} == {f"user{n:03d}" for n in range(200)}
    shown = cli(env, "show", rows[0]["id"]).stdout
    assert "top clients" in shown and "top users" in shown and "user0" in shown
    # --user and --client narrow the detail and the figures
    (one,) = findings(env, "--provider", "openai", "--user", "user007")
    assert one["users"] == 1 and one["clients"] == 1 and one["days"] == 7
    (net,) = findings(env, "--provider", "openai", "--client", "10.20.1.0/24")
    assert net["clients"] == 100
    assert incidents(env, "--client", "10.20.9.0/24") == []


def test_reopen_activity_exceptions_and_bulk(env):
    cli(env, "scan", env["log"], "--fail-on", "high", ok=(EXIT_FINDINGS,))
    by = {f["provider"]: f for f in findings(env)}
    fo, fa, fg = by["openai"]["id"], by["anthropic"]["id"], by["google_gemini"]["id"]

    cli(env, "resolve", fo, "--note", "egress moved", "--actor", "ana")
    cli(env, "ack", fa, "--note", "SEC-1: handled", "--actor", "ana")
    assert {i["status"] for i in incidents(env, "--finding", fo)} == {"resolved"}
    # a scan of traffic for the acknowledged finding alone: recorded, not counted
    cli(env, "scan", more_traffic(env, "a.log", "anthropic", 5), "--fail-on", "high")
    (fa_now,) = [f for f in findings(env) if f["id"] == fa]
    assert fa_now["status"] == "acknowledged" and fa_now["count"] == by["anthropic"]["count"] + 5
    assert [(e["action"], e["requests"]) for e in events(env, fa)][-1] == ("activity", 5)

    # the traffic comes back an hour later: reopened, counted by --fail-on like a new one
    res = cli(env, "scan", more_traffic(env, "o.log", "openai", 7), "--fail-on", "high", "--json",
              ok=(EXIT_FINDINGS,))  # fmt: skip
    scan_id = json.loads(res.stdout)["scan_id"]
    assert json.loads(res.stdout)["findings_reopened"] == 1
    assert [f["id"] for f in findings(env, "--status", "reopened")] == [fo]
    last = events(env, fo)[-1]
    assert (last["action"], last["status_from"], last["status_to"]) == (
        "reopened",
        "resolved",
        "reopened",
    )
    assert last["scan_id"] == scan_id and last["requests"] == 7
    assert incidents(env, "--finding", fo, "--status", "reopened")

    # an exception with an expiry: not counted while it holds, open again after
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    cli(env, "ack", fo, "--until", tomorrow, "--note", "SEC-2: pilot", "--actor", "ciso")
    cli(env, "scan", more_traffic(env, "o2.log", "openai", 3, day=9), "--fail-on", "high")
    store = Store(env["db"])
    try:
        (expired,) = store.apply_exceptions([], (date.today() + timedelta(days=2)).isoformat())
    finally:
        store.close()
    assert (expired["finding_id"], expired["action"], expired["status_to"]) == (
        fo, "exception-expired", "open")  # fmt: skip
    assert [f["status"] for f in findings(env) if f["id"] == fo] == ["open"]
    cli(env, "ack", fo, "--until", "2020-01-01", "--note", "x", ok=(2,))  # past: refused

    # an exception register entry in the config covers the gemini finding (all its clients)
    env["cfg"].write_text(
        CONFIG + f'\n[[exceptions]]\nrule = "{RULE}"\nprovider = "google_gemini"\n'
        f'client = "10.20.0.0/16"\nuntil = {tomorrow}\nreason = "SEC-3"\napprover = "ciso"\n'
        '\n[[exceptions]]\nprovider = "openai"\nuntil = 2020-01-01\nreason = "old"\napprover = "x"\n'
    )
    cli(env, "resolve", fg, "--note", "done")
    res = cli(env, "scan", more_traffic(env, "g.log", "google_gemini", 4), "--fail-on", "high")
    (g,) = [f for f in findings(env) if f["id"] == fg]
    assert g["status"] == "reopened"  # reopened, but excepted: --fail-on stays quiet
    assert [e["action"] for e in events(env, fg)][-3:] == ["excepted", "resolved", "reopened"]
    shown = json.loads(cli(env, "show", fg, "--json").stdout)
    assert (shown["exception_until"], shown["exception_by"]) == (tomorrow, "ciso")
    # the register reordered: the same exception, nothing happens
    gemini, old = env["cfg"].read_text().split("\n[[exceptions]]")[1:]
    env["cfg"].write_text(CONFIG + "\n[[exceptions]]" + old + "\n[[exceptions]]" + gemini)
    trail = events(env, fg)
    findings(env)
    assert events(env, fg) == trail
    assert json.loads(cli(env, "show", fg, "--json").stdout)["exception_source"] == (
        "config:exceptions[1]")  # fmt: skip
    assert json.loads(cli(env, "show", fo, "--json").stdout)["exception_until"] is None

    # bulk: filters instead of ids, a dry run first, a note always
    cli(env, "resolve", "--site", "shanghai", "--note", "", ok=(2,))
    cli(env, "resolve", "--site", "shanghai", ok=(2,))
    dry = cli(
        env, "resolve", "--site", "shanghai", "--severity", "high", "--dry-run", "--note", "n"
    )
    assert "3 finding(s) would change" in dry.stderr
    assert {f["status"] for f in findings(env)} != {"resolved"}
    cli(
        env,
        "resolve",
        "--site",
        "shanghai",
        "--since",
        "2026-11-01",
        "--note",
        "bulk",
        "--actor",
        "lead",
    )
    assert {f["status"] for f in findings(env)} == {"resolved"}
    assert all(events(env, f["id"])[-1]["actor"] == "lead" for f in findings(env))
    again = cli(env, "resolve", "--site", "shanghai", "--note", "bulk")
    assert "0 finding(s)" in again.stderr


def test_migration_keeps_incidents_and_events(tmp_path):
    """A database of the schema before findings (built by the landed migration steps) comes
    up to date with every incident, its hits and its events, a finding over them, and
    passes ``db check``."""
    path = tmp_path / "before.db"
    con = sqlite3.connect(path)
    import sqlite_utils

    db = sqlite_utils.Database(con)
    for step in range(1, FINDINGS_SCHEMA):
        MIGRATIONS[step](db)
    db.execute(f"PRAGMA user_version = {FINDINGS_SCHEMA - 1}")
    db["scans"].insert({"id": 1, "started": "2026-11-27T00:00:00Z"})
    base = {"rule": RULE, "severity": "high", "severity_rank": 3, "title": "t",
            "provider": "openai", "provider_kind": "api", "dest_host": "api.openai.com",
            "egress_country": "CN", "day": "2026-11-27", "first_seen": "2026-11-27T01:00:00.000Z",
            "last_seen": "2026-11-27T02:00:00.000Z", "count": 3, "blocked": 0, "outcome": "allowed",
            "evidence": "[]", "first_scan": 1, "last_scan": 1}  # fmt: skip
    db["incidents"].insert_all([
        {**base, "id": "aa01", "client_ip": "10.0.0.1", "site": "sh", "status": "resolved"},
        {**base, "id": "aa02", "client_ip": "10.0.0.2", "site": "sh", "status": "open"},
        {**base, "id": "aa03", "client_ip": "10.0.0.3", "site": None, "status": "acknowledged"},
    ])  # fmt: skip
    db["incident_events"].insert({"incident_id": "aa01", "at": "2026-11-28T00:00:00Z",
                                  "action": "resolved", "status_from": "open",
                                  "status_to": "resolved", "note": "n", "actor": "a"})  # fmt: skip
    db["observations"].insert({"id": 7, "ts": 1795741200.0, "day": "2026-11-27", "scan_id": 1})
    db.execute("INSERT INTO hits VALUES ('aa01', 7)")
    con.commit()
    con.close()

    store = Store(path)
    try:
        assert {r["id"]: r["status"] for r in store.db.query("SELECT * FROM incidents")} == {
            "aa01": "resolved", "aa02": "open", "aa03": "acknowledged"}  # fmt: skip
        assert len(store.events()) == 1 and store.events()[0]["incident_id"] == "aa01"
        rows = {
            (f["site"], f["egress_country"]): f for f in store.db.query("SELECT * FROM findings")
        }
        assert rows[("sh", "CN")]["count"] == 6 and rows[("sh", "CN")]["status"] == "open"
        assert rows[(None, "CN")]["status"] == "acknowledged"
        report = store.check()
        assert report["integrity"] == "ok" and report["incidents_without_finding"] == 0
    finally:
        store.close()
    check = run("--db", path, "db", "check", "--json")
    assert json.loads(check.stdout)["schema_version"] == SCHEMA_VERSION


def test_egress_precedence_is_predictable(tmp_path):
    """The command line beats the config; a declared country that contradicts geolocation is
    said, and both countries are kept."""
    cfg, db = tmp_path / "c.toml", tmp_path / "c.db"
    cfg.write_text('[sites.sh]\nclient_cidrs = ["10.20.0.0/16"]\ncountry = "DE"\n'
                   '[sites.hq]\nclient_cidrs = ["10.30.0.0/16"]\negress_ips = ["114.114.114.114"]\n'
                   'country = "DE"\n')  # fmt: skip
    log = tmp_path / "a.log"
    log.write_text(squid_line(WEEK_START, "10.20.0.1", "openai", None)
                   + squid_line(WEEK_START + 1, "10.30.0.1", "openai", None))  # fmt: skip
    res = run("--db", db, "--config", cfg, "scan", log, "--egress-ip", "114.114.114.114",
              "--fail-on", "high", ok=(EXIT_FINDINGS,))  # fmt: skip
    assert "sites.hq: declares DE for egress 114.114.114.114, which geolocates to CN" in res.stderr
    con = sqlite3.connect(db)
    rows = con.execute("SELECT site, egress_ip, egress_country, egress_geo_country, egress_source"
                       " FROM observations ORDER BY ts").fetchall()  # fmt: skip
    con.close()
    # sh names no egress IP: the operator's address is geolocated, not given the site's DE;
    # hq names this very address as its own: its declaration holds, the geolocation is kept
    assert rows[0][:4] == ("sh", "114.114.114.114", "CN", "CN")
    assert rows[1][:4] == ("hq", "114.114.114.114", "DE", "CN") and rows[1][4] == "site:hq"
    check = run("--db", db, "config", "check", cfg)
    assert "sites.hq: declares DE" in check.stderr
    # without an egress address a declared country applies (it raised nothing before)
    cfg.write_text('[sites.sh]\nclient_cidrs = ["10.20.0.0/16"]\ncountry = "CN"\n')
    db2 = tmp_path / "d.db"
    run("--db", db2, "--config", cfg, "scan", log, "--fail-on", "high", ok=(EXIT_FINDINGS,))


def test_report_days_in_a_time_zone(env):
    cli(env, "scan", env["log"], ok=(0, EXIT_FINDINGS))
    env["cfg"].write_text(CONFIG.replace('country = "CN"', 'country = "CN"\ntz = "Asia/Shanghai"'))
    utc = json.loads(
        cli(env, "report", "--period", "daily", "--date", "2026-11-24", "--format", "json").stdout
    )
    sh = json.loads(cli(env, "report", "--period", "daily", "--date", "2026-11-24", "--format", "json",
                        "--site", "shanghai").stdout)  # fmt: skip
    tz = json.loads(cli(env, "report", "--period", "daily", "--date", "2026-11-24", "--format", "json",
                        "--tz", "Asia/Shanghai").stdout)  # fmt: skip
    assert utc["meta"]["since"] == "2026-11-24T00:00:00.000Z" and utc["meta"]["tz"] == "UTC"
    assert sh["meta"]["since"] == tz["meta"]["since"] == "2026-11-23T16:00:00.000Z"
    assert sh["meta"]["tz"] == "Asia/Shanghai" and sh["meta"]["label"] == "2026-11-24"
    cli(env, "report", "--period", "daily", "--tz", "Mars/Olympus", ok=(2,))


def test_reports_lead_with_findings_and_exceptions(env):
    cli(env, "scan", env["log"], ok=(0, EXIT_FINDINGS))
    by = {f["provider"]: f["id"] for f in findings(env)}
    cli(env, "resolve", by["openai"], "--note", "moved")
    cli(env, "scan", more_traffic(env, "o.log", "openai", 3), ok=(0, EXIT_FINDINGS))
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    cli(env, "ack", by["google_gemini"], "--until", tomorrow, "--note", "SEC-9 <b>pilot</b>",
        "--actor", "ciso")  # fmt: skip
    args = ("report", "--since", "2026-11-01", "--until", "2026-12-31")
    doc = json.loads(cli(env, *args, "--format", "json").stdout)
    fd = doc["findings"]
    assert fd["totals"] == {"findings": 3, "high": 3, "reopened": 1, "open": 2, "excepted": 1}
    assert fd["summary"] == [
        "shanghai sends Anthropic, Google Gemini API (AI Studio) and OpenAI traffic through a CN "
        "egress: 3 findings, 3 high or critical, 1 reopened in the period."
    ]
    assert sum(f["count"] for f in fd["items"]) == env["lines"] + 3
    assert all(len(f["top_users"]) == 3 for f in fd["items"])
    (exc,) = fd["exceptions"]["in_force"]
    assert (exc["id"], exc["until"], exc["source"]) == (by["google_gemini"], tomorrow, "ack")
    # who did what to the findings is in the report's audit trail
    trail = {(e["incident_id"], e["action"]): e for e in doc["events"]["items"]}
    assert trail[(by["openai"], "resolved")]["note"] == "moved"
    assert trail[(by["openai"], "reopened")]["status_to"] == "reopened"
    assert trail[(by["google_gemini"], "excepted")]["actor"] == "ciso"
    assert doc["events"]["by_action"] == {"resolved": 1, "reopened": 1, "excepted": 1}
    md = cli(env, *args, "--format", "md").stdout
    assert md.index("## Findings") < md.index("## Summary") < md.index("## Incidents")
    assert fd["summary"][0] in md and "SEC-9 \\<b\\>pilot\\</b\\>" in md
    html = cli(env, *args, "--format", "html").stdout
    assert html.index('id="findings"') < html.index('id="incidents"')
    assert "SEC-9 &lt;b&gt;pilot&lt;/b&gt;" in html and "<b>pilot</b>" not in html


def test_an_exception_that_ran_out_counts_for_fail_on_without_traffic(env):
    """No new traffic at all: the next `scan --fail-on` and `daily` notice that the exception
    ran out (the finding is open again, with an event) and count it like a new finding."""
    cli(env, "scan", env["log"])
    by = {f["provider"]: f["id"] for f in findings(env)}
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    cli(env, "ack", "--site", "shanghai", "--note", "SEC-7: triaged", "--actor", "ana")
    cli(env, "ack", by["openai"], "--until", tomorrow, "--note", "SEC-8: pilot", "--actor", "ciso")
    empty = env["dir"] / "empty.log"
    empty.write_text("")
    cli(env, "scan", empty, "--fail-on", "high")
    cli(env, "daily", "--no-reports", "--fail-on", "high")
    # the day after the exception's last day (its stored date now lies in the past)
    con = sqlite3.connect(env["db"])
    con.execute("UPDATE findings SET exception_until = '2026-01-31' WHERE id = ?", [by["openai"]])
    con.commit()
    con.close()
    res = cli(env, "scan", empty, "--fail-on", "high", "--json", ok=(EXIT_FINDINGS,))
    assert json.loads(res.stdout)["stored"] == 0
    assert [f["id"] for f in findings(env, "--status", "open")] == [by["openai"]]
    (expired,) = [e for e in events(env, by["openai"]) if e["action"] == "exception-expired"]
    assert (expired["status_from"], expired["status_to"], expired["until"]) == (
        "acknowledged", "open", "2026-01-31")  # fmt: skip
    assert "ack by ciso" in expired["note"] and "ran out after 2026-01-31" in expired["note"]
    # daily (no sources to scan here): the exception ran out today, so it counts too
    daily = cli(env, "daily", "--no-reports", "--fail-on", "high", "--json", ok=(EXIT_FINDINGS,))
    assert json.loads(daily.stdout)["findings"] == 1
    # who did what is kept: the analyst's bulk ack, the exception's approver
    actions = [(e["action"], e["actor"]) for e in events(env, by["openai"])]
    assert actions == [("new", None), ("acknowledged", "ana"), ("excepted", "ciso"),
                       ("exception-expired", None)]  # fmt: skip
    history = cli(env, "show", by["openai"]).stdout.split("history:")[1].split("records")[0]
    (granted,) = [ln.split() for ln in history.splitlines() if " excepted " in ln]
    assert granted[1:6] == ["excepted", "acknowledged", "acknowledged", "ciso", tomorrow]


def test_bulk_actions_by_who_and_dry_runs_by_id(env):
    cli(env, "scan", env["log"])
    ids = sorted(f["id"] for f in findings(env))
    # one user's traffic is part of every finding: those are not acked as a whole
    dry = cli(env, "ack", "--user", "user007", "--dry-run", "--note", "n")
    assert "0 finding(s) would change" in dry.stderr and "3 finding(s) left alone" in dry.stderr
    cli(env, "ack", "--user", "user007", "--note", "n")
    assert {f["status"] for f in findings(env)} == {"open"}
    # the whole site's network covers all their detail
    dry = cli(env, "ack", "--client", "10.20.0.0/16", "--dry-run", "--note", "n")
    assert "3 finding(s) would change to acknowledged" in dry.stderr
    assert sorted(line.split()[0] for line in dry.stdout.splitlines()[2:]) == ids
    cli(env, "resolve", ids[0], "--note", "done")
    dry = cli(env, "resolve", *ids, "--dry-run", "--note", "n")
    assert "2 id(s) would change to resolved (1 finding(s) already are)" in dry.stderr
    cli(env, "ack", ids[0], "--until", "2099-01-01", "--note", "n", "0123abcd", ok=(2,))


def test_migration_gives_correlated_incidents_a_finding(tmp_path):
    """Egress-hopping detail stored without a finding (schema 7) is adopted by one: (rule,
    provider, the first country the provider does not serve), with its detail's status."""
    path = tmp_path / "v7.db"
    con = sqlite3.connect(path)
    import sqlite_utils

    db = sqlite_utils.Database(con)
    for step in range(1, 8):
        MIGRATIONS[step](db)
    db.execute("PRAGMA user_version = 7")
    facts = {"history.countries": [["HK", "SG"]], "history.unserved": [["HK"]]}
    base = {"rule": "egress-hopping", "severity": "high", "severity_rank": 3, "title": "t",
            "provider": "openai", "provider_kind": "api", "day": "2026-11-27", "count": 3,
            "first_seen": "2026-11-27T01:00:00.000Z", "last_seen": "2026-11-27T07:00:00.000Z",
            "blocked": 0, "outcome": "allowed", "evidence": "[]", "facts": json.dumps(facts),
            "first_scan": 1, "last_scan": 1}  # fmt: skip
    db["incidents"].insert_all([
        {**base, "id": "bb01", "client_ip": "10.0.0.1", "status": "acknowledged"},
        {**base, "id": "bb02", "client_ip": "10.0.0.2", "status": "acknowledged", "count": 2},
    ])  # fmt: skip
    con.commit()
    con.close()
    store = Store(path)
    try:
        (f,) = store.db.query("SELECT * FROM findings")
        assert (f["rule"], f["provider"], f["site"], f["egress_country"]) == (
            "egress-hopping", "openai", None, "HK")  # fmt: skip
        assert (f["count"], f["clients"], f["status"]) == (5, 2, "acknowledged")
        assert {r[0] for r in store.db.execute("SELECT finding_id FROM incidents")} == {f["id"]}
        assert store.check()["incidents_without_finding"] == 0
    finally:
        store.close()


def test_config_check_names_exceptions_that_can_never_hold(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        CONFIG + '[[exceptions]]\nrule = "provider-region-unsuported"\nprovider = "openia"\n'
        'until = 2099-01-01\nreason = "typos"\napprover = "a"\n'
        '[[exceptions]]\nprovider = "openai"\nuntil = 2020-01-01\nreason = "old"\napprover = "a"\n'
        '[[alerts]]\nname = "x"\nkind = "jsonl"\npath = "-"\nformat = "ecs"\nrules = ["nope"]\n'
    )
    res = run("--db", tmp_path / "c.db", "config", "check", cfg)
    assert res.stderr.splitlines() == [
        "warning: exceptions[0]: unknown rule 'provider-region-unsuported': it never matches",
        "warning: exceptions[0]: unknown provider 'openia': it never matches",
        "warning: alerts[0].rules: unknown rule 'nope': it never matches",
        "warning: exceptions[1]: ran out after 2020-01-01",
    ]


def test_clients_in_many_networks_is_membership_of_any():
    """``clients_in`` looks addresses up per prefix length: the same answer as testing each
    address against each network (pseudonyms and the other IP version never inside)."""
    import ipaddress

    from monitor.findings import clients_in

    clients = [f"10.40.{i // 250}.{i % 250}" for i in range(1_000)]
    clients += [
        "2001:db8::7",
        "2001:db8:1::9",
        "u-3f2a9c",
        "",
        None,
        "10.41.0.1",
        "::ffff:10.40.0.8",
    ]
    cidrs = [f"10.40.0.{i}" for i in range(0, 250, 3)] + [
        "10.40.3.0/25",
        "2001:db8::/48",
        "10.41.0.1/32",
    ]
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def inside(c):
        try:
            addr = ipaddress.ip_address(c)
        except ValueError:
            return False
        return any(addr.version == n.version and addr in n for n in nets)

    expected = [c for c in clients if c and inside(c)]
    assert len(expected) == 84 + 128 + 1 + 1  # /32s, the /25, one IPv6, 10.41.0.1
    assert clients_in(clients, cidrs) == expected
    assert clients_in(clients, []) == []
