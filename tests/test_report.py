"""Reports over a database built by real scans: every figure equals an independent SQL count.

The database is made by ``apiwatch scan`` over ``examples/logs/*`` and generated Squid logs
spanning two weeks (so the trend has a previous period), including hostile strings in host
names, URLs, user names and a file name. The JSON report exposes every figure; each one is
recomputed here with SQL written for the test, not taken from the report code.
"""

# ruff: noqa: S608 - SQL assembled from constants in this file; values are bound

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import sqlite3
import stat
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from monitor.observation import iso_day
from monitor.report import custom_window, output_path, period_window
from monitor.report.markdown import code, md
from monitor.report.tabular import spreadsheet_cell
from monitor.rows import observation_values
from monitor.store import Store, TrafficFilter
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONFIG = EXAMPLES / "apiwatch.toml"
LOGS = sorted(str(p) for p in (EXAMPLES / "logs").iterdir())

WEEK = date(2026, 11, 27)  # a day in 2026-W48 (Mon 23 – Sun 29 November); W47 before it
SINCE, UNTIL = "2026-11-23T00:00:00.000Z", "2026-11-30T00:00:00.000Z"
PSINCE = "2026-11-16T00:00:00.000Z"

HOSTILE_HOST = "\"'><script>document.title='pwned'<.workers.dev"
HOSTILE_USER = "\"><script>document.title='pwned'</script>"
HOSTILE_URL_Q = "?q=<script>document.title='pwned'</script>&x=\"'><img src=x onerror=alert(1)>"
RLO_HOST = "\u202eecnerefer.workers.dev"
LONG_HOST = "a" * 300 + ".workers.dev"
HOSTILE_FILE = "<img src=x onerror=\"document.title='pwned'\">.log"

HOSTS = [
    ("CONNECT", "api.openai.com:443"),
    ("CONNECT", "api.anthropic.com:443"),
    ("CONNECT", "generativelanguage.googleapis.com:443"),
    ("CONNECT", "api.deepseek.com:443"),
    ("CONNECT", "openrouter.ai:443"),
    ("CONNECT", "api.mistral.ai:443"),
    ("CONNECT", "chatgpt.com:443"),
    ("POST", "http://api.openai.com/v1/chat/completions"),
    ("CONNECT", "registry.npmjs.org:443"),  # not LLM traffic: never stored
]
CLIENTS = ["10.20.1.1", "10.20.1.2", "10.20.3.3", "10.30.0.5", "10.30.0.6", "10.40.5.7"]
USERS = ["-", "-", "alice", "bob", HOSTILE_USER]


def native(ts, client, method, url, status=200, size=5000, code="TCP_TUNNEL", user="-"):
    return f"{ts:.3f}    120 {client} {code}/{status:03d} {size} {method} {url} {user} HIER_DIRECT/162.159.140.245 -"


def generated_log(seed: int = 7) -> str:
    """Two weeks and a bit of traffic (9 Nov – 1 Dec 2026), deterministic."""
    rnd = random.Random(seed)
    start = datetime(2026, 11, 9, tzinfo=UTC).timestamp()
    end = datetime(2026, 12, 2, tzinfo=UTC).timestamp()
    lines = []
    ts = start
    while ts < end:
        ts += rnd.expovariate(1 / 1500)
        method, url = rnd.choice(HOSTS)
        denied = rnd.random() < 0.1
        lines.append(
            native(
                ts,
                rnd.choice(CLIENTS),
                method,
                url,
                status=403 if denied else 200,
                size=rnd.randint(300, 90000),
                code="TCP_DENIED" if denied else ("TCP_MISS" if method == "POST" else "TCP_TUNNEL"),
                user=rnd.choice(USERS),
            )
        )
    return "\n".join(lines) + "\n"


def hostile_log() -> str:
    t = datetime(2026, 11, 25, 9, tzinfo=UTC).timestamp()
    return (
        "\n".join(
            [
                native(t, "10.20.1.16", "POST", f"http://{HOSTILE_HOST}/v1/chat", code="TCP_MISS"),
                native(t + 1, "10.20.1.16", "POST", f"http://{RLO_HOST}/v1/chat", code="TCP_MISS"),
                native(t + 2, "10.20.1.16", "POST", f"http://{LONG_HOST}/v1/x", code="TCP_MISS"),
                native(
                    t + 3,
                    "10.20.1.16",
                    "POST",
                    f"http://x.workers.dev/v1/chat{HOSTILE_URL_Q}".replace(" ", "%20"),
                    code="TCP_MISS",
                    user=HOSTILE_USER,
                ),
                native(t + 4, "10.20.1.16", "CONNECT", "api.openai.com:443", user="mallory\u202e"),
                "1795741912.118     88 10.20.1.15 TCP_TUNNEL/200",  # malformed: truncated
            ]
        )
        + "\n"
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(db path, workdir): real scans, then some incidents acknowledged and resolved."""
    tmp = tmp_path_factory.mktemp("report")
    db = tmp / "apiwatch.db"
    gen = tmp / "generated.log"
    gen.write_text(generated_log())
    rotated = tmp / "generated.log.1"  # overlaps the live file: nothing may count twice
    rotated.write_text("".join(gen.read_text().splitlines(keepends=True)[:400]))
    evil = tmp / HOSTILE_FILE
    evil.write_text(hostile_log())
    run("--config", CONFIG, "--db", db, "scan", *LOGS, "-q", ok=(0,))
    run("--config", CONFIG, "--db", db, "scan", rotated, gen, "-q", "--jobs", "1")
    run("--config", CONFIG, "--db", db, "scan", evil, "-q", "--jobs", "1")
    run("--config", CONFIG, "--db", db, "scan", gen, "-q", "--jobs", "1")  # a re-scan
    con = sqlite3.connect(db)
    ids = [r[0] for r in con.execute("SELECT id FROM incidents ORDER BY id")]
    con.close()
    for iid in ids[:6]:
        run(
            "--db",
            db,
            "ack",
            iid[:10],
            "--note",
            "ticket SEC-1 <b>bold</b> | pipe",
            "--actor",
            "ana",
        )
    for iid in ids[3:9]:
        run("--db", db, "resolve", iid, "--note", "fixed\u202e", "--actor", "bo")
    # status changes happen now, not in the report week: date them into it for the trail
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE incident_events SET at = '2026-11-26T10:00:00Z' WHERE id % 2 = 0")
    con.close()
    return db, tmp


def report_json(db, *args):
    out = run("--config", CONFIG, "--db", db, "report", "--format", "json", *args).stdout
    return json.loads(out)


def q(con, sql, params=()):
    return con.execute(sql, params).fetchall()


def one(con, sql, params=()):
    return con.execute(sql, params).fetchone()[0]


# --------------------------------------------------------------------------- figures = SQL


def _obs_where(since, until, sites=(), providers=()):
    where = "ts >= ? AND ts < ?"
    params = [_epoch(since), _epoch(until)]
    if sites:
        where += f" AND site IN ({','.join('?' * len(sites))})"
        params += list(sites)
    if providers:
        where += f" AND provider IN ({','.join('?' * len(providers))})"
        params += list(providers)
    return where, params


def _epoch(iso):
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _inc_filter(sites=(), providers=()):
    where, params = "", []
    if sites:
        where += f" AND site IN ({','.join('?' * len(sites))})"
        params += list(sites)
    if providers:
        where += f" AND provider IN ({','.join('?' * len(providers))})"
        params += list(providers)
    return where, params


def check_against_sql(con, rep, since, until, psince, sites=(), providers=()):
    """Every figure of ``rep`` (the JSON report) against SQL written here."""
    cur_w, cur_p = _obs_where(since, until, sites, providers)
    prev_w, prev_p = _obs_where(psince, since, sites, providers)
    inc_f, inc_p = _inc_filter(sites, providers)

    def totals(w, p):
        row = con.execute(
            f"""SELECT count(*), sum(outcome = 'blocked'), sum(bytes_out), sum(bytes_in),
                   count(DISTINCT client_ip), count(DISTINCT provider), count(DISTINCT site),
                   count(DISTINCT egress_country), sum(provider_kind = 'relay')
                FROM observations WHERE {w}""",
            p,
        ).fetchone()
        keys = ["requests", "blocked", "bytes_out", "bytes_in", "clients", "providers", "sites",
                "egress_countries", "relay_requests"]  # fmt: skip
        out = dict(zip(keys, row, strict=True))
        out["blocked"] = out["blocked"] or 0
        out["relay_requests"] = out["relay_requests"] or 0
        return out

    cur, prev = totals(cur_w, cur_p), totals(prev_w, prev_p)
    for window, store in ((since, until), cur), ((psince, since), prev):
        store["incidents_new"] = one(
            con,
            f"SELECT count(*) FROM incidents WHERE first_seen >= ? AND first_seen < ?{inc_f}",
            [*window, *inc_p],
        )
        store["incidents_new_high"] = one(
            con,
            f"""SELECT count(*) FROM incidents WHERE first_seen >= ? AND first_seen < ?
                AND severity IN ('high', 'critical'){inc_f}""",
            [*window, *inc_p],
        )
    checked = 0
    for t in rep["totals"]:
        assert t["current"] == cur[t["metric"]], t
        assert t["previous"] == prev[t["metric"]], t
        if t["current"] is not None and t["previous"] is not None:
            assert t["change"] == t["current"] - t["previous"]
        checked += 2
    assert {t["metric"] for t in rep["totals"]} == set(cur)

    # breakdowns by provider, site, egress country
    for section, column in (
        ("by_provider", "provider"),
        ("by_site", "site"),
        ("by_egress_country", "egress_country"),
    ):
        expect = {
            r[0]: r[1:]
            for r in q(
                con,
                f"""SELECT {column}, count(*), sum(outcome = 'blocked'), sum(bytes_out),
                       sum(bytes_in), count(DISTINCT client_ip)
                    FROM observations WHERE {cur_w} GROUP BY 1""",
                cur_p,
            )
        }
        previous = dict(
            q(con, f"SELECT {column}, count(*) FROM observations WHERE {prev_w} GROUP BY 1", prev_p)
        )
        rows = rep[section]
        assert {r[column] for r in rows} == set(expect) | set(previous)
        total = sum(v[0] for v in expect.values())
        for r in rows:
            n, blocked, bout, bin_, clients = expect.get(r[column], (0, 0, None, None, 0))
            assert (r["requests"], r["blocked"], r["bytes_out"], r["bytes_in"], r["clients"]) == (
                n, blocked or 0, bout, bin_, clients,
            ), r  # fmt: skip
            assert r["previous_requests"] == previous.get(r[column], 0)
            assert r["change"] == r["requests"] - r["previous_requests"]
            assert r["share_pct"] == pytest.approx(round(n * 100 / total, 1) if total else 0)
            checked += 7
        counts = [r["requests"] for r in rows]
        assert counts == sorted(counts, reverse=True)

    # timeline: requests per day and provider
    tl = rep["timeline"]
    unit = {"day": "date(ts, 'unixepoch')", "hour": "strftime('%Y-%m-%dT%H:00Z', ts, 'unixepoch')"}
    per = {
        (p, d): n
        for p, d, n in q(
            con,
            f"""SELECT provider, {unit[tl["bucket"]]}, count(*) FROM observations
                WHERE {cur_w} GROUP BY 1, 2""",
            cur_p,
        )
    }
    other = next((s for s in tl["series"] if s["provider"] == "(other)"), None)
    for s in tl["series"]:
        names = s.get("providers", [s["provider"]]) if s is other else [s["provider"]]
        for i, bucket in enumerate(tl["buckets"]):
            assert s["values"][i] == sum(per.get((p, bucket), 0) for p in names)
            checked += 1
    assert sum(sum(s["values"]) for s in tl["series"]) == cur["requests"]

    # incidents by rule and severity
    resolved_sub = "SELECT incident_id FROM incident_events WHERE status_to = 'resolved' AND at >= ? AND at < ?"
    metric_sql = {
        "new": ("first_seen >= ? AND first_seen < ?", [since, until]),
        "previous_new": ("first_seen >= ? AND first_seen < ?", [psince, since]),
        "active": ("first_seen < ? AND last_seen >= ?", [until, since]),
        "open": ("first_seen < ? AND status = 'open'", [until]),
        "acknowledged": ("first_seen < ? AND status = 'acknowledged'", [until]),
        "resolved": (f"id IN ({resolved_sub})", [since, until]),
    }
    inc = rep["incidents"]
    for row in inc["by_rule"]:
        for metric, (cond, params) in metric_sql.items():
            n = one(
                con,
                f"SELECT count(*) FROM incidents WHERE rule = ? AND severity = ? AND {cond}{inc_f}",
                [row["rule"], row["severity"], *params, *inc_p],
            )
            assert row[metric] == n, (row, metric)
            checked += 1
    for row in inc["by_severity"]:
        for metric, (cond, params) in metric_sql.items():
            n = one(
                con,
                f"SELECT count(*) FROM incidents WHERE severity = ? AND {cond}{inc_f}",
                [row["severity"], *params, *inc_p],
            )
            assert row[metric] == n, (row, metric)
            checked += 1
    for metric in ("new", "active", "open", "acknowledged", "resolved"):
        cond, params = metric_sql[metric]
        assert inc["totals"][metric] == one(
            con, f"SELECT count(*) FROM incidents WHERE {cond}{inc_f}", [*params, *inc_p]
        )
    assert inc["previous"]["new"] == prev["incidents_new"]
    lists = inc["lists"]
    assert lists["new"]["total"] == inc["totals"]["new"]
    assert lists["resolved"]["total"] == inc["totals"]["resolved"]
    for name, (cond, params) in (
        ("new", metric_sql["new"]),
        ("open", ("first_seen < ? AND status IN ('open', 'acknowledged')", [until])),
        ("resolved", metric_sql["resolved"]),
    ):
        ids = {
            r[0] for r in q(con, f"SELECT id FROM incidents WHERE {cond}{inc_f}", [*params, *inc_p])
        }
        items = lists[name]["items"]
        assert len(items) == lists[name]["shown"] == min(len(ids), max(50, rep["meta"]["top"]))
        assert {i["id"] for i in items} <= ids
        for i in items:
            assert i["count"] == one(
                con, "SELECT count(*) FROM hits WHERE incident_id = ?", [i["id"]]
            )
            checked += 1

    # audit trail
    ev_where = f"e.at >= ? AND e.at < ?{inc_f.replace(' site', ' i.site').replace(' provider', ' i.provider')}"
    join = "FROM incident_events e JOIN incidents i ON i.id = e.incident_id"
    assert rep["events"]["total"] == one(
        con, f"SELECT count(*) {join} WHERE {ev_where}", [since, until, *inc_p]
    )
    assert rep["events"]["by_action"] == dict(
        q(
            con,
            f"SELECT e.action, count(*) {join} WHERE {ev_where} GROUP BY 1",
            [since, until, *inc_p],
        )
    )

    # top clients and destinations
    for c in rep["top_clients"]:
        n, blocked, bin_ = con.execute(
            f"""SELECT count(*), sum(outcome = 'blocked'), sum(bytes_in) FROM observations
                WHERE {cur_w} AND client_ip = ?""",
            [*cur_p, c["client_ip"]],
        ).fetchone()
        assert (c["requests"], c["blocked"], c["bytes_in"]) == (n, blocked or 0, bin_)
        users = {r[0] for r in q(con, f"SELECT DISTINCT user FROM observations WHERE {cur_w} AND client_ip = ? AND user IS NOT NULL", [*cur_p, c["client_ip"]])}  # fmt: skip
        assert set(c["users"]) == users
        checked += 4
    top_n = sorted(
        (r[1] for r in q(con, f"SELECT client_ip, count(*) FROM observations WHERE {cur_w} GROUP BY 1", cur_p)),
        reverse=True,
    )[: rep["meta"]["top"]]  # fmt: skip
    assert [c["requests"] for c in rep["top_clients"]] == top_n
    for d in rep["top_destinations"] + rep["relays"]["hosts"]:
        n, blocked, clients, bin_ = con.execute(
            f"""SELECT count(*), sum(outcome = 'blocked'), count(DISTINCT client_ip), sum(bytes_in)
                FROM observations WHERE {cur_w} AND dest_host = ? AND provider = ?""",
            [*cur_p, d["dest_host"], d["provider"]],
        ).fetchone()
        assert (d["requests"], d["blocked"], d["clients"], d["bytes_in"]) == (
            n,
            blocked or 0,
            clients,
            bin_,
        )
        checked += 4
    assert rep["relays"]["requests"] == cur["relay_requests"]
    assert rep["relays"]["clients"] == one(
        con,
        f"SELECT count(DISTINCT client_ip) FROM observations WHERE {cur_w} AND provider_kind = 'relay'",
        cur_p,
    )
    assert len(rep["relays"]["hosts"]) == one(
        con,
        f"SELECT count(*) FROM (SELECT DISTINCT dest_host, provider FROM observations WHERE {cur_w} AND provider_kind = 'relay')",
        cur_p,
    )  # fmt: skip

    # methods: the scans, sources and malformed counts behind the period
    scan_ids = {
        r[0] for r in q(con, f"SELECT DISTINCT scan_id FROM observations WHERE {cur_w}", cur_p)
    } | {
        r[0]
        for r in q(
            con,
            "SELECT id FROM scans WHERE started >= ? AND started < ?",
            [since[:19] + "Z", until[:19] + "Z"],
        )
    }
    x = rep["methods"]
    assert {s["id"] for s in x["scans"]} == scan_ids
    marks = ",".join("?" * len(scan_ids))
    assert x["records"] == one(
        con, f"SELECT coalesce(sum(records), 0) FROM scans WHERE id IN ({marks})", sorted(scan_ids)
    )
    assert x["malformed"] == one(
        con,
        f"SELECT coalesce(sum(malformed), 0) FROM scans WHERE id IN ({marks})",
        sorted(scan_ids),
    )
    assert {p["source"]: p["problems"] for p in x["problems_by_source"]} == dict(
        q(con, f"SELECT source, count(*) FROM scan_problems WHERE scan_id IN ({marks}) GROUP BY 1", sorted(scan_ids))
    )  # fmt: skip
    for s in x["sources"]:
        n, lo, hi = con.execute(
            f"SELECT count(*), min(ts), max(ts) FROM observations WHERE {cur_w} AND source = ?",
            [*cur_p, s["source"]],
        ).fetchone()
        assert s["observations"] == n
        assert s["first"] == datetime.fromtimestamp(lo, UTC).isoformat(
            timespec="milliseconds"
        ).replace("+00:00", "Z")
        assert s["last"] == datetime.fromtimestamp(hi, UTC).isoformat(
            timespec="milliseconds"
        ).replace("+00:00", "Z")
        checked += 3
    assert sum(s["observations"] for s in x["sources"]) == cur["requests"]
    return checked


def test_weekly_report_figures_equal_sql(built):
    db, _ = built
    rep = report_json(db, "--period", "weekly", "--date", WEEK)
    assert rep["meta"]["since"] == SINCE and rep["meta"]["until"] == UNTIL
    assert rep["meta"]["previous"]["since"] == PSINCE
    assert rep["meta"]["complete"] is (datetime.now(UTC).isoformat() >= "2026-11-30")
    con = sqlite3.connect(db)
    # the data is what the test means it to be: both weeks have traffic and incidents
    assert one(con, "SELECT count(*) FROM observations WHERE ts >= ? AND ts < ?", [_epoch(PSINCE), _epoch(SINCE)]) > 50  # fmt: skip
    checked = check_against_sql(con, rep, SINCE, UNTIL, PSINCE)
    assert checked > 300
    totals = {t["metric"]: t for t in rep["totals"]}
    assert totals["requests"]["current"] > 0 and totals["requests"]["previous"] > 0
    assert totals["blocked"]["current"] > 0 and totals["relay_requests"]["current"] > 0
    assert rep["incidents"]["totals"]["resolved"] > 0 and rep["events"]["total"] > 0
    assert rep["methods"]["malformed"] >= 1  # the truncated records are counted


def test_filtered_and_custom_reports_equal_sql(built):
    db, _ = built
    con = sqlite3.connect(db)
    rep = report_json(db, "--period", "weekly", "--date", WEEK, "--site", "shanghai", "--provider", "openai", "--provider", "anthropic")  # fmt: skip
    assert rep["meta"]["filters"] == {"site": ["shanghai"], "provider": ["openai", "anthropic"]}
    check_against_sql(con, rep, SINCE, UNTIL, PSINCE, ("shanghai",), ("openai", "anthropic"))
    assert {r["site"] for r in rep["by_site"]} == {"shanghai"}

    since, until = "2026-11-20T06:00:00.000Z", "2026-11-27T18:00:00.000Z"
    rep = report_json(db, "--since", since, "--until", until, "--top", "3")
    psince = "2026-11-12T18:00:00.000Z"  # same length (7.5 days) just before
    assert rep["meta"]["previous"]["since"] == psince
    check_against_sql(con, rep, since, until, psince)
    assert len(rep["top_clients"]) == 3

    rep = report_json(db, "--period", "daily", "--date", "2026-11-25")
    assert rep["timeline"]["bucket"] == "hour" and len(rep["timeline"]["buckets"]) == 24
    check_hourly = sum(sum(s["values"]) for s in rep["timeline"]["series"])
    assert check_hourly == rep["totals"][0]["current"]
    check_against_sql(con, rep, "2026-11-25T00:00:00.000Z", "2026-11-26T00:00:00.000Z", "2026-11-24T00:00:00.000Z")  # fmt: skip

    rep = report_json(db, "--period", "monthly", "--date", "2026-11-03")
    assert rep["meta"]["previous"]["since"] == "2026-10-01T00:00:00.000Z"
    check_against_sql(con, rep, "2026-11-01T00:00:00.000Z", "2026-12-01T00:00:00.000Z", "2026-10-01T00:00:00.000Z")  # fmt: skip


def test_empty_period_and_empty_database(tmp_path):
    db = tmp_path / "empty.db"
    rep = report_json(db, "--period", "daily", "--date", "2020-01-01")
    assert all(t["current"] in (0, None) for t in rep["totals"])
    assert rep["by_provider"] == [] and rep["timeline"]["series"] == []
    for fmt in ("html", "md", "csv"):
        out = run("--db", db, "report", "--period", "weekly", "--format", fmt).stdout
        assert out.strip()


def test_csv_and_markdown_carry_the_same_figures(built):
    db, _ = built
    rep = report_json(db, "--period", "weekly", "--date", WEEK)
    out = run("--db", db, "--config", CONFIG, "report", "--period", "weekly", "--date", WEEK, "--format", "csv").stdout  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["since", "until", "section", "key", "subkey", "metric", "value"]
    got = {(r["section"], r["key"], r["metric"]): r["value"] for r in rows}
    for t in rep["totals"]:
        value = t["current"]
        assert got[("totals", t["metric"], "current")] == ("" if value is None else str(value))
    for p in rep["by_provider"]:
        assert got[("by_provider", p["provider"], "requests")] == str(p["requests"])
    for s in rep["incidents"]["by_severity"]:
        assert got[("incidents_by_severity", s["severity"], "new")] == str(s["new"])
    # the hostile user is written as it is for BI tools, and neutralised for spreadsheets
    assert any(r["subkey"].startswith('"><script>') for r in rows if r["section"] == "top_clients")
    safe = run("--db", db, "report", "--period", "weekly", "--date", WEEK, "--format", "csv", "--spreadsheet-safe").stdout  # fmt: skip
    for r in csv.DictReader(io.StringIO(safe)):
        for v in r.values():
            assert not v.startswith(("=", "+", "@")) or v.startswith("'")
            assert not (v.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", v))

    text = run("--db", db, "--config", CONFIG, "report", "--period", "weekly", "--date", WEEK, "--format", "md").stdout  # fmt: skip
    assert f"| LLM API requests | {rep['totals'][0]['current']:,} |" in text
    assert "\u202e" not in text and "\\u202e" in text
    # log data sits in code spans (literal text): outside them no markup from the logs is left
    outside = re.sub(r"(`+)(.+?)\1", "", text)
    assert "<script" not in outside and "<img" not in outside
    assert "`\"><script>document.title='pwned'</scrip…`" in text


def test_html_escapes_hostile_log_strings(built):
    db, _ = built
    html = run("--db", db, "--config", CONFIG, "report", "--period", "weekly", "--date", WEEK, "--format", "html").stdout  # fmt: skip
    assert "<script>document.title" not in html
    assert "&lt;script&gt;document.title=&#39;pwned&#39;" in html
    assert "onerror=alert(1)>" not in html and 'onerror="document' not in html
    assert "\u202e" not in html and "\\u202e" in html  # bidi override shown, not obeyed
    assert LONG_HOST not in re.sub(r'title="[^"]*"', "", html)  # cut, full value in title
    assert f'title="{LONG_HOST}"' in html
    assert html.count("<script>") == 1  # only the report's own sort script
    assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in html


def test_ack_resolve_and_the_audit_trail(built, tmp_path):
    db, _ = built
    con = sqlite3.connect(db)
    (iid,) = con.execute(
        "SELECT id FROM incidents WHERE status = 'open' ORDER BY id LIMIT 1"
    ).fetchone()
    out = run("--db", db, "ack", iid[:8], "--note", "looking", "--actor", "cy").stdout
    assert f"incident {iid}: open → acknowledged" in out
    run("--db", db, "resolve", iid, "-m", "done", "--actor", "cy")
    events = [e for e in json.loads(run("--db", db, "show", iid, "--json").stdout)["events"]]
    assert [(e["status_from"], e["status_to"], e["note"], e["actor"]) for e in events] == [
        ("open", "acknowledged", "looking", "cy"),
        ("acknowledged", "resolved", "done", "cy"),
    ]
    bad = run("--db", db, "ack", "ffffffffffffffff0", "--note", "x", ok=(1,))
    assert "no incident" in bad.stderr
    run("--db", db, "resolve", iid, ok=(2,))  # --note is required: an audit trail says why
    # today's report shows the changes made today
    rep = report_json(db, "--since", "1d")
    assert rep["events"]["by_action"].get("resolved", 0) >= 1
    assert iid in {e["incident_id"] for e in rep["events"]["items"]}


def test_periods_and_output_patterns():
    w = period_window("weekly", date(2026, 11, 30))  # a Monday
    assert (w.first_day, w.last_day, w.label) == ("2026-11-30", "2026-12-06", "2026-W49 (2026-11-30 – 2026-12-06)")  # fmt: skip
    assert period_window("weekly", today=date(2026, 11, 30)).first_day == "2026-11-23"  # last week
    assert period_window("daily", today=date(2026, 3, 1)).first_day == "2026-02-28"
    m = period_window("monthly", today=date(2026, 3, 1))
    assert (m.first_day, m.last_day, m.previous().first_day) == (
        "2026-02-01",
        "2026-02-28",
        "2026-01-01",
    )
    assert m.previous().last_day == "2026-01-31"
    c = custom_window("2026-11-01T00:00:00.000Z", "2026-11-03T12:00:00.000Z")
    assert c.previous().since.isoformat() == "2026-10-29T12:00:00+00:00" and c.bucket()[0] == "day"
    with pytest.raises(ValueError):
        custom_window("2026-11-03", "2026-11-01")
    p = output_path("r/{period}-{date}-{end}-{week}-{month}.{format}", w, "html")
    assert str(p) == "r/weekly-2026-11-30-2026-12-06-2026-W49-2026-11.html"


def test_report_command_line(built, tmp_path):
    db, _ = built
    target = tmp_path / "out" / "weekly-{date}.html"
    res = run("--db", db, "report", "--period", "weekly", "--date", WEEK, "-o", target)
    written = tmp_path / "out" / "weekly-2026-11-23.html"
    assert written.read_text().startswith("<!DOCTYPE html>") and "wrote" in res.stderr
    assert oct(written.stat().st_mode & 0o777) == "0o640"
    run("--db", db, "report", "--period", "weekly", "-o", tmp_path / "x.json")
    json.loads((tmp_path / "x.json").read_text())  # format from the suffix
    assert run("--db", db, "report", ok=(2,)).exit_code == 2
    assert run("--db", db, "report", "--period", "daily", "--since", "1d", ok=(2,)).exit_code == 2
    assert run("--db", db, "report", "--since", "2026-11-05", "--until", "2026-11-01", ok=(2,)).exit_code == 2  # fmt: skip


def test_a_report_into_a_device_a_pipe_or_a_link_writes_into_it(built, tmp_path):
    """``-o`` naming what is not a file writes into it: a device (``/dev/null``: renaming a
    report over it, as root, made it a file), a pipe (its reader gets the report), a
    symbolic link (its target gets the report; the link stays)."""
    db, _ = built
    args = ("--db", db, "report", "--period", "weekly", "--date", WEEK, "--format", "json")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    run(*args, "-o", fifo)
    reader.join(30)
    assert json.loads(got[0])["meta"]["period"] == "weekly"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    run(*args, "-o", link)
    assert link.is_symlink() and json.loads(target.read_text())["meta"]["period"] == "weekly"
    if os.geteuid() == 0:  # (only root makes device nodes)
        null = tmp_path / "null"
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        run(*args, "-o", null)
        assert stat.S_ISCHR(null.lstat().st_mode) and null.read_text() == ""


def test_escaping_helpers():
    assert md("a|b*c_[x](y)<z>") == "a\\|b\\*c\\_\\[x\\](y)\\<z\\>"
    assert code("a|b`c") == "``a\\|b`c``"
    assert code("\u202eevil") == "`\\u202eevil`"
    assert md("x" * 100, 10) == "x" * 9 + "…"
    assert spreadsheet_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert spreadsheet_cell("-2+3") == "'-2+3" and spreadsheet_cell(-5) == -5
    assert spreadsheet_cell("api.openai.com") == "api.openai.com"


# -- roll-ups: the report's traffic tables of whole UTC days read obs_rollup ----------------

ROWS_ROLLED_UP = """SELECT ctx, client, count(*), sum(bytes_out), sum(bytes_in), min(url), min(ts),
    max(ts) FROM obs_rows WHERE n <= ? GROUP BY ctx, client ORDER BY ctx, client"""
CONTEXTS_ROLLED_UP = """SELECT ctx, count(*), sum(bytes_out), sum(bytes_in), min(ts), max(ts)
    FROM obs_rows WHERE n <= ? GROUP BY ctx ORDER BY ctx"""
HOURS_ROLLED_UP = """SELECT ctx, CAST(ts / 3600 AS INTEGER), count(*), sum(bytes_out),
    sum(bytes_in) FROM obs_rows WHERE n <= ? GROUP BY 1, 2 ORDER BY 1, 2"""
MONTHS_ROLLED_UP = f"""SELECT substr(c.day, 1, 7), o.client, d.n, count(*), sum(o.bytes_out),
    sum(o.bytes_in), min(o.url) FROM obs_rows o JOIN obs_contexts c ON c.n = o.ctx
    JOIN obs_dests d ON {" AND ".join(f"d.{c} IS c.{c}" for c in ("dest_host", "provider",
        "provider_kind", "site", "egress_country", "outcome"))}
    WHERE o.n <= ? GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""  # fmt: skip


def copy_db(db: Path, to: Path) -> Path:
    src, dst = sqlite3.connect(db), sqlite3.connect(to)
    src.backup(dst)
    src.close()
    dst.close()
    return to


def assert_rolled_up(db: Path) -> int:
    """The roll-ups are the sums of every stored row (and the mark is the last row)."""
    con = sqlite3.connect(db)
    mark = int(one(con, "SELECT value FROM meta WHERE key = 'rolled_up_to'"))
    assert mark == one(con, "SELECT coalesce(max(n), 0) FROM obs_rows")
    for table, order, expected in (("obs_rollup", "ctx, client", ROWS_ROLLED_UP),
                                   ("obs_monthly", "1, 2, 3", MONTHS_ROLLED_UP),
                                   ("obs_context_totals", "ctx", CONTEXTS_ROLLED_UP),
                                   ("obs_hourly", "1, 2", HOURS_ROLLED_UP)):  # fmt: skip
        assert q(con, f"SELECT * FROM {table} ORDER BY {order}") == q(con, expected, [mark])
    n = one(con, "SELECT count(*) FROM obs_rollup")
    con.close()
    return n


def test_roll_ups_are_the_sums_of_their_rows_after_scans_prune_and_reevaluate(built, tmp_path):
    db = copy_db(built[0], tmp_path / "a.db")
    assert assert_rolled_up(db) > 100
    late = tmp_path / "late.log"  # a scan adding to days already rolled up
    late.write_text(
        native(
            datetime(2026, 11, 28, 9, tzinfo=UTC).timestamp(),
            "10.20.1.1",
            "CONNECT",
            "api.openai.com:443",
        )
        + "\n"  # fmt: skip
    )
    run("--config", CONFIG, "--db", db, "scan", late, "-q", "--jobs", "1")
    assert_rolled_up(db)
    run("--db", db, "db", "prune", "--keep", "2026-11-20")
    con = sqlite3.connect(db)
    assert one(con, "SELECT min(day) FROM obs_contexts") >= "2026-11-20"
    con.close()
    assert_rolled_up(db)
    # other settings (no sites): the rows of these days move to other contexts
    out = json.loads(run("--db", db, "reevaluate", "--since", "2026-11-25", "--json").stdout)
    assert out["changed"] > 0
    assert assert_rolled_up(db) > 10


def test_who_went_where_is_the_per_request_grouping(built, tmp_path):
    """Client x destination of a period, summed on destination numbers before the
    destinations' texts are grouped: what the requests give one by one, for periods of
    whole UTC months (monthly roll-ups), of local days (day roll-ups and rows at the edges)
    and with no roll-up at all."""
    from monitor.report.data import _zone
    from monitor.store import TrafficFilter

    def by_request(con, since, until):
        rows = q(con, """SELECT client_ip, dest_host, provider, provider_kind, site,
                   egress_country, count(*), sum(outcome IS 'blocked'), sum(bytes_out),
                   sum(bytes_in), min(url), json_group_array(DISTINCT user)
                 FROM observations WHERE ts >= ? AND ts < ? GROUP BY 1, 2, 3, 4, 5, 6""",
                 [since.timestamp(), until.timestamp()])  # fmt: skip
        return sorted((*r[:-1], sorted(json.loads(r[-1]), key=str)) for r in rows)

    none = copy_db(built[0], tmp_path / "none.db")
    con = sqlite3.connect(none)
    with con:
        for table in ("obs_rollup", "obs_monthly", "obs_context_totals", "obs_hourly"):
            con.execute(f"DELETE FROM {table}")
        con.execute("DELETE FROM meta WHERE key = 'rolled_up_to'")
    for db in (built[0], none):
        store = Store(db, readonly=True)
        for since, until in ((datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
                             (datetime(2026, 11, 1, tzinfo=_zone("Asia/Shanghai")),
                              datetime(2026, 12, 1, tzinfo=_zone("Asia/Shanghai"))),
                             (datetime(2026, 10, 20, 6, tzinfo=UTC),
                              datetime(2026, 11, 27, 18, tzinfo=UTC))):  # fmt: skip
            found = store.client_destinations(since, until, TrafficFilter())
            assert len(found.rows) > 10
            assert sorted(
                (*r[:-1], sorted(json.loads(r[-1]), key=str)) for r in found.rows
            ) == by_request(con, since, until), (db, since)
        store.close()
    con.close()


def test_report_is_the_same_from_roll_ups_and_from_rows(built, tmp_path):
    """Rows stored since the last roll-up (a scan still storing, or killed before it
    finished) are read from the rows: whether none, some or all of the rows are rolled up,
    every report is the same."""
    db = built[0]
    periods = [("--period", "weekly", "--date", WEEK), ("--period", "monthly", "--date", WEEK),
               ("--period", "daily", "--date", "2026-11-25"),
               ("--since", "2026-11-20T06:00:00Z", "--until", "2026-11-27T18:00:00Z"),
               ("--period", "weekly", "--date", WEEK, "--site", "shanghai", "--user", "alice"),
               ("--period", "monthly", "--date", WEEK, "--provider", "openai", "--client",
                "10.20.0.0/16"),
               ("--period", "monthly", "--date", WEEK, "--tz", "Asia/Shanghai")]  # fmt: skip

    def reports(path):
        out = []
        for args in periods:
            rep = report_json(path, *args)
            del rep["meta"]["generated"], rep["meta"]["database"]
            out.append(rep)
        return out

    expected = reports(db)
    assert expected[0]["totals"][0]["current"] > 100
    assert all(r["totals"][0]["current"] > 0 and r["top_clients"] for r in expected)
    none = copy_db(db, tmp_path / "none.db")
    con = sqlite3.connect(none)
    with con:
        for table in ("obs_rollup", "obs_monthly", "obs_context_totals", "obs_hourly"):
            con.execute(f"DELETE FROM {table}")
        con.execute("DELETE FROM meta WHERE key = 'rolled_up_to'")
    con.close()
    assert reports(none) == expected
    # a scan killed after it committed some rows: those are above the mark until the next
    killed = copy_db(db, tmp_path / "killed.db")
    store = Store(killed)
    at = datetime(2026, 11, 24, 10, tzinfo=UTC).timestamp()
    rows = [observation_values(
        id=7_000_000 + i, ts=at + 3600 * i, day=iso_day(at + 3600 * i), source="killed.log",
        line=i, client_ip=f"10.20.1.{1 + i % 3}", user="alice" if i % 2 else None,
        dest_host="api.openai.com", provider="openai", provider_kind="api", site="shanghai",
        egress_country="CN", outcome="blocked" if i % 4 == 0 else "allowed", bytes_in=10 * i,
        url=f"https://api.openai.com/v1/x{i}" if i % 3 else None, scan_id=1,
    ) for i in range(60)]  # fmt: skip
    assert store.ingest(1, [(r, []) for r in rows]).stored == 60
    store.close()
    before = reports(killed)
    assert before != expected
    Store(killed).roll_up()  # as the next scan's finish does
    assert_rolled_up(killed)
    assert reports(killed) == before


def test_client_filters_read_the_roll_ups_as_the_requests_few_or_many(tmp_path):
    """A report filtered on one client looks its key up in each context's roll-up rows; one
    on many clients (a user with many addresses, a network) reads those rows instead: both
    sum exactly the requests the filter selects, whole UTC days (roll-ups) and part days
    (rows) alike."""
    store = Store(tmp_path / "clients.db")
    sid = store.start_scan(["many.log"], {})
    day = datetime(2026, 11, 10, tzinfo=UTC).timestamp()
    rows = [observation_values(
        id=2 * i + k + 1, ts=(at := day + (i % 7) * 43_200 + i), day=iso_day(at), source="many.log",
        line=i, client_ip=f"10.30.{i % 120 // 60}.{i % 60 + 1}", user="alice" if i % 120 < 50 else "bob",
        dest_host=host, provider="openai", provider_kind="api", site="shanghai",
        egress_country="CN", outcome="allowed", bytes_out=i % 13, bytes_in=i,
        url=f"https://{host}/v1/x", scan_id=sid,
    ) for i in range(2_400) for k, host in enumerate(("api.openai.com", "chatgpt.com"))]  # fmt: skip
    assert store.ingest(sid, [(r, []) for r in rows]).stored == 4_800
    store.roll_up()
    since, until = datetime(2026, 11, 10, 6, tzinfo=UTC), datetime(2026, 11, 13, tzinfo=UTC)
    first, last = "2026-11-11", "2026-11-12"  # the whole UTC days of [since, until)
    filters = {
        "one": (TrafficFilter(clients=["10.30.0.7"]), True),
        "alice": (TrafficFilter(users=["alice"]), False),  # 50 entries, 120 rows a context
        "network": (TrafficFilter(clients=[f"10.30.1.{i}" for i in range(1, 61)]), False),
    }
    con = sqlite3.connect(tmp_path / "clients.db")
    for name, (where, probe) in filters.items():
        assert store._probe_rollup(first, last, where) is probe, name
        column, values = ("user", where.users) if where.users else ("client_ip", where.clients)
        expected = q(
            con,
            f"""SELECT w.client_ip, c.dest_host, count(*), sum(o.bytes_out), sum(o.bytes_in)
                FROM obs_rows o JOIN obs_clients w ON w.n = o.client
                JOIN obs_contexts c ON c.n = o.ctx WHERE o.ts >= ? AND o.ts < ?
                AND w.{column} IN (SELECT value FROM json_each(?))
                GROUP BY 1, 2 ORDER BY 1, 2""",
            [since.timestamp(), until.timestamp(), json.dumps(values)],
        )
        assert len(expected) > (1 if name == "one" else 50), name
        got = store.client_destinations(since, until, where)
        cols = [got.columns.index(c) for c in ("client_ip", "dest_host", "requests",
                                                "bytes_out", "bytes_in")]  # fmt: skip
        assert sorted(tuple(r[i] for i in cols) for r in got.rows) == expected, name
    con.close()
    store.close()
