"""Reports filtered on many clients (issue 15): every figure equals the sum of the requests
the filter selects, counted here per request with SQL written for the test.

The store holds two UTC months of traffic of IPv4, IPv6 and pseudonymised clients and
three users, some of it near the local midnights of Asia/Shanghai, some stored after the
last roll-up. A filter that chooses every client with traffic in both periods reads the
unfiltered totals (:meth:`Store.traffic_filter`); one address outside it keeps the filter.
"""

# ruff: noqa: S608 - SQL assembled from constants in this file; values are bound

from __future__ import annotations

import ipaddress
import json
import sqlite3
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from monitor.observation import iso_day
from monitor.privacy import Pseudonymizer
from monitor.rows import observation_values
from monitor.store import Store, TrafficFilter
from tests.conftest import run

PSEUDONYMS = [Pseudonymizer("k" * 32)(f"10.9.0.{i}") for i in range(3)]
CLIENTS = (
    [f"10.1.{i // 20}.{i % 20 + 1}" for i in range(60)]
    + [f"2001:db8::{i + 1:x}" for i in range(8)]
    + PSEUDONYMS
)
USERS = ("alice", "bob", None)
HOSTS = (("api.openai.com", "openai"), ("api.anthropic.com", "anthropic"))
SH = ZoneInfo("Asia/Shanghai")


def _rows(ids, start, days, clients=CLIENTS):
    """Requests of ``clients`` every ~50 minutes from ``start`` for ``days`` days (some
    within minutes of 16:00 UTC, Shanghai's midnight)."""
    out = []
    for i in range(days * 29):
        ts = start + i * 2_980 + (i % 5) * 7
        for k, client in enumerate(clients[i % 7 :: 7]):
            host, provider = HOSTS[(i + k) % 2]
            out.append((ts + k, client, USERS[(i + k) % 3], host, provider))
    return [
        observation_values(
            id=next(ids), ts=ts, day=iso_day(ts), source="many.log", line=n,
            client_ip=client, user=user, dest_host=host, provider=provider,
            provider_kind="api", site="shanghai" if n % 3 else "la",
            egress_country="CN" if n % 2 else "US",
            outcome="blocked" if n % 11 == 0 else "allowed",
            bytes_out=n % 17 or None, bytes_in=100 + n, url=f"https://{host}/v1/{n % 4}",
            scan_id=1,
        )
        for n, (ts, client, user, host, provider) in enumerate(out)
    ]  # fmt: skip


def _store(path, outsider_at=None):
    """Oct–Nov 2026 (the last two days stored after the roll-up); ``outsider_at``: a UTC
    day from which 192.168.7.7 has requests for three days."""
    store = Store(path)
    sid = store.start_scan(["many.log"], {})
    assert sid == 1
    ids = iter(range(1, 10**9))
    start = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
    rows = _rows(ids, start, 59)
    if outsider_at:
        rows += _rows(ids, outsider_at.timestamp(), 3, ["192.168.7.7"])
    store.ingest(sid, [(r, []) for r in rows])
    store.roll_up()
    late = _rows(ids, datetime(2026, 11, 29, 3, tzinfo=UTC).timestamp(), 2)
    store.ingest(sid, [(r, []) for r in late])  # above the mark: read from the rows
    store.close()
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clients")
    return {
        "far": _store(tmp / "far.db", datetime(2026, 8, 3, tzinfo=UTC)),  # outside both months
        "in": _store(tmp / "in.db", datetime(2026, 11, 20, 15, tzinfo=UTC)),
    }


def _names(spec, client):
    """Whether ``--client spec`` names ``client`` (an address in a network, or itself)."""
    try:
        return ipaddress.ip_address(client) in ipaddress.ip_network(spec, strict=False)
    except ValueError:  # a pseudonym, or an address of the other IP version
        return spec == client


def _report(db, *args):
    out = run("--db", db, "report", "--period", "monthly", "--date", "2026-11-15", *args,
              "--format", "json").stdout  # fmt: skip
    return json.loads(out)


def _expected(db, since, until, chosen, users, tz):
    """Per request: totals, requests per site and per local day, clients and sources."""
    con = sqlite3.connect(db)
    where = "ts >= ? AND ts < ?"
    params = [since.timestamp(), until.timestamp()]
    if chosen is not None:
        where += " AND client_ip IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(chosen))
    if users:
        where += " AND user IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(users))
    rows = con.execute(
        f"SELECT ts, site, client_ip, outcome, bytes_out, bytes_in FROM observations WHERE {where}",
        params,
    ).fetchall()
    con.close()
    by_day: dict[str, int] = {}
    by_site: dict[str, int] = {}
    for ts, site, *_ in rows:
        day = datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%Y-%m-%d")
        by_day[day] = by_day.get(day, 0) + 1
        by_site[site] = by_site.get(site, 0) + 1
    sums = [sum(r[i] for r in rows if r[i] is not None) for i in (4, 5)]
    return {
        "requests": len(rows),
        "blocked": sum(r[3] == "blocked" for r in rows),
        "bytes_out": sums[0] if rows else None,
        "bytes_in": sums[1] if rows else None,
        "clients": len({r[2] for r in rows}),
        "by_day": by_day,
        "by_site": by_site,
        "sources": (len(rows), *(_iso(f(r[0] for r in rows)) for f in (min, max))),
    }


def _iso(ts):
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _figures(rep, period):
    """The same figures as the report shows them (``period``: current or previous)."""
    totals = {t["metric"]: t[period] for t in rep["totals"]}
    out = {k: totals[k] for k in ("requests", "blocked", "bytes_out", "bytes_in", "clients")}
    if period == "current":
        tl = rep["timeline"]
        per_day = [sum(s["values"][i] for s in tl["series"]) for i in range(len(tl["buckets"]))]
        out["by_day"] = {b: n for b, n in zip(tl["buckets"], per_day, strict=True) if n}
        out["by_site"] = {r["site"]: r["requests"] for r in rep["by_site"] if r["requests"]}
        sources = rep["methods"]["sources"]
        out["sources"] = (sum(s["observations"] for s in sources),
                          min(s["first"] for s in sources), max(s["last"] for s in sources))  # fmt: skip
    return out


@pytest.mark.parametrize(
    "store, args, tz",
    [
        ("far", ("--client", "10.0.0.0/8", "--client", "2001:db8::/32",
                 *(a for p in PSEUDONYMS for a in ("--client", p))), "UTC"),  # every client
        ("far", ("--client", "10.0.0.0/8", "--client", "::/0",
                 *(a for p in PSEUDONYMS for a in ("--client", p))), "Asia/Shanghai"),
        ("in", ("--client", "10.0.0.0/8"), "Asia/Shanghai"),  # many clients, not all
        ("in", ("--client", "10.0.0.0/8"), "UTC"),
        ("in", ("--user", "alice"), "Asia/Shanghai"),
        ("in", ("--client", "2001:db8::/125"), "Asia/Shanghai"),  # IPv6: 7 of the 8
        ("far", ("--client", "2001:db8::3",), "UTC"),
        ("in", ("--client", PSEUDONYMS[1], "--client", "10.1.0.0/24"), "Asia/Shanghai"),
        ("in", ("--client", "10.0.0.0/8", "--user", "bob"), "Asia/Shanghai"),
    ],
)  # fmt: skip
def test_filtered_report_figures_equal_the_requests(stores, store, args, tz):
    db = stores[store]
    rep = _report(db, *args, "--tz", tz)
    specs = [v for k, v in zip(args[::2], args[1::2], strict=True) if k == "--client"]
    users = [v for k, v in zip(args[::2], args[1::2], strict=True) if k == "--user"]
    con = sqlite3.connect(db)
    known = [r[0] for r in con.execute("SELECT DISTINCT client_ip FROM obs_clients")]
    con.close()
    chosen = sorted({c for c in known if any(_names(s, c) for s in specs)}) if specs else None
    since = datetime.fromisoformat(rep["meta"]["since"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(rep["meta"]["until"].replace("Z", "+00:00"))
    psince = datetime.fromisoformat(rep["meta"]["previous"]["since"].replace("Z", "+00:00"))
    expected = _expected(db, since, until, chosen, users, tz)
    assert expected["requests"] > 100 and expected["clients"] >= 1
    assert _figures(rep, "current") == expected
    previous = _expected(db, psince, since, chosen, users, tz)
    del previous["by_day"], previous["by_site"], previous["sources"]
    assert _figures(rep, "previous") == previous
    top = {c["client_ip"] for c in rep["top_clients"]}
    assert top and top <= set(chosen if chosen is not None else known)


def test_every_client_reads_the_unfiltered_totals_only_when_no_other_has_traffic(stores):
    """``traffic_filter`` drops the clients exactly when no other client has traffic in
    the UTC months around the span (nor stored since the roll-up)."""
    since, until = datetime(2026, 10, 1, tzinfo=SH), datetime(2026, 12, 1, tzinfo=SH)
    for name, kept in (("far", False), ("in", True)):
        store = Store(stores[name], readonly=True)
        every = TrafficFilter(clients=store.clients_matching(["10.0.0.0/8", "::/0", *PSEUDONYMS]))
        assert "192.168.7.7" not in every.clients
        assert (store.traffic_filter(every, since, until).clients is not None) is kept, name
        august = store.traffic_filter(every, datetime(2026, 8, 1, tzinfo=UTC),
                                      datetime(2026, 8, 2, tzinfo=UTC))  # fmt: skip
        assert (august.clients is not None) is (name == "far"), name
        assert store.traffic_filter(TrafficFilter(clients=["10.1.0.1"]), since, until).clients
        users = TrafficFilter(users=["alice"], clients=every.clients)
        assert store.traffic_filter(users, since, until) == users
        store.close()


def test_sources_and_processing_read_once_equal_their_own_reads(stores):
    """``context_figures`` (a filtered report's sources and processing locations in one
    read) gives what ``traffic_sources`` and ``processing_locations`` give, row for row."""
    store = Store(stores["in"], readonly=True)
    spans = [(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
             (datetime(2026, 11, 1, tzinfo=SH), datetime(2026, 12, 1, tzinfo=SH)),
             (datetime(2026, 10, 20, 6, 30, tzinfo=UTC), datetime(2026, 11, 30, 1, tzinfo=UTC))]  # fmt: skip
    filters = [TrafficFilter(users=["alice"]), TrafficFilter(clients=["10.1.0.3", "2001:db8::2"]),
               TrafficFilter(sites=["la"], clients=store.clients_matching(["10.0.0.0/8"]))]  # fmt: skip
    for since, until in spans:
        for where in filters:
            sources, processing = store.context_figures(since, until, where)
            assert sources == store.traffic_sources(since, until, where)
            assert processing == store.processing_locations(since, until, where)
            assert sum(r[3] for r in sources.rows) == sum(r[4] for r in processing.rows) > 10
    store.close()


def _cube_by_request(db, since, until, previous, origin):
    """The cube (see ``Store.traffic_cube``) of daily buckets counted per request."""
    con = sqlite3.connect(db)
    cube = con.execute(
        """SELECT CASE WHEN ts >= :s THEN 0 ELSE 1 END, CASE WHEN ts >= :s
                    THEN CAST((ts - :o) / 86400 AS INTEGER) ELSE -1 END,
                  provider, provider_kind, site, egress_country, count(*),
                  sum(outcome = 'blocked'), sum(bytes_out), sum(bytes_in)
           FROM observations WHERE ts >= :p AND ts < :u AND user = 'alice'
           GROUP BY 1, 2, 3, 4, 5, 6""",
        {"s": since.timestamp(), "o": origin.timestamp(), "p": previous.timestamp(),
         "u": until.timestamp()},
    ).fetchall()  # fmt: skip
    con.close()
    return cube


@pytest.mark.parametrize("unsure", [False, True])
def test_cube_of_local_days_from_day_roll_ups_less_their_late_rows(tmp_path, unsure):
    """A cube by days of Asia/Shanghai filtered on many clients takes each UTC day's
    roll-ups less the rows after 16:00 UTC. Bytes that come to 0 that way may be null (no
    request before 16:00 had any): then the rows are counted instead, as ``unsure`` makes
    happen on one local day; the figures equal the requests' either way."""
    db = _store(tmp_path / "cube.db")
    con = sqlite3.connect(db)
    with con:  # every request has an upload size, but (unsure) alice's on one local day
        con.execute("UPDATE obs_rows SET bytes_out = coalesce(bytes_out, 3)")
        if unsure:
            con.execute(
                """UPDATE obs_rows SET bytes_out = NULL WHERE client IN (SELECT n FROM
                   obs_clients WHERE user = 'alice') AND ts >= ? AND ts < ?""",
                [datetime(2026, 11, 10, tzinfo=SH).timestamp(),
                 datetime(2026, 11, 11, tzinfo=SH).timestamp()],
            )  # fmt: skip
        for table in ("obs_rollup", "obs_monthly", "obs_context_totals", "obs_hourly"):
            con.execute(f"DELETE FROM {table}")  # made again from the rows, as they are
        con.execute("DELETE FROM meta WHERE key = 'rolled_up_to'")
    con.close()
    Store(db).roll_up()
    store = Store(db, readonly=True)
    previous, since, until = (datetime(2026, m, 1, tzinfo=SH) for m in (10, 11, 12))
    cut = [since.timestamp(), since.timestamp(), since.timestamp(), 86400]
    alice = TrafficFilter(users=["alice"])
    parts = store._cube_of_day_parts(cut, previous, until, 16 * 3600, alice)
    assert (parts is None) is unsure
    cube = store.traffic_cube(since, until, previous, since, 86400, alice)
    expected = _cube_by_request(db, since, until, previous, since)
    assert sorted(cube.rows, key=str) == sorted(expected, key=str)
    assert len(expected) > 60 and any(r[8] is None for r in expected) is unsure
    store.close()
