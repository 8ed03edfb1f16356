"""A month of a time zone other than UTC, read as the nearest UTC month's roll-ups less and
plus the requests of the hours at its edges (issue 15: a Shanghai month over 10 M requests
took 7.4 s, the UTC month 3.0 s).

A real store (ingested rows, rolled up as a scan's finish does) of requests spread over
October to early December 2026, with requests exactly on every zone's month edges and just
either side of them, and pairs (client and destination) made to catch each way the edge
arithmetic can go wrong: a minimum URL or bytes only in the hours taken off, bytes that
come to 0, a pair only in an edge. Every figure is compared with what the requests give
one by one (the ``observations`` view), in zones east and west of UTC, across daylight
saving changes, at half-hour offsets, with filters, and with rows stored since the last
roll-up.
"""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from monitor import store as store_module
from monitor.observation import iso_day
from monitor.rows import observation_values
from monitor.store import Store, TrafficFilter

#: east and west of UTC, daylight saving changes in the month (New York and Los Angeles end
#: it on 1 November 2026, Auckland starts it on 27 September), half-hour and +14 h offsets
ZONES = ("Asia/Shanghai", "America/New_York", "America/Los_Angeles", "Pacific/Auckland",
         "Asia/Kolkata", "Pacific/Kiritimati", "America/St_Johns")  # fmt: skip
MONTHS = ((2026, 10), (2026, 11))
#: the zones whose midnights are not on the hour
HALF_HOURS = {"Asia/Kolkata", "America/St_Johns"}
HOSTS = (("api.openai.com", "openai", "api"), ("api.anthropic.com", "anthropic", "api"),
         ("chatgpt.com", "openai", "consumer"))  # fmt: skip
URLS = (None, None, "https://x/a", "https://x/b", "https://x/c")
SITES = {"10.20": ("shanghai", "CN"), "10.40": ("newyork", "US")}


def month(zone: str, year: int, mon: int) -> tuple[datetime, datetime]:
    """The local calendar month, as UTC instants."""
    tz = ZoneInfo(zone)
    nxt = (year + mon // 12, mon % 12 + 1)
    return (datetime(year, mon, 1, tzinfo=tz).astimezone(UTC),
            datetime(*nxt, 1, tzinfo=tz).astimezone(UTC))  # fmt: skip


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


#: (ts, client, user, host index, outcome, bytes_out, bytes_in, url): pairs made to test the
#: edges of a Shanghai month of November (taken off: 30 Nov 16:00-24:00 UTC; added: 31 Oct
#: 16:00-24:00) and a New York one (taken off: 1 Nov 00:00-04:00; added: 1 Dec 00:00-05:00)
MADE = [
    # the minimum URL and the only bytes in the hours taken off: the rest has neither
    (utc(2026, 11, 10, 3), "10.20.9.1", None, 0, "allowed", None, None, None),
    (utc(2026, 11, 30, 20), "10.20.9.1", None, 0, "allowed", None, 50, "https://x/a"),
    # the same minimum URL both sides; the bytes left come to 0
    (utc(2026, 11, 10, 3), "10.20.9.2", "zoe", 1, "allowed", 0, 0, "https://x/a"),
    (utc(2026, 11, 30, 23, 59, 59), "10.20.9.2", "zoe", 1, "allowed", 4, 7, "https://x/a"),
    # only in the hours taken off, then only in the hours added
    (utc(2026, 11, 30, 16), "10.20.9.3", None, 0, "blocked", 1, 1, "https://x/b"),
    (utc(2026, 10, 31, 16), "10.20.9.4", None, 2, "allowed", 1, 1, "https://x/c"),
    # west of UTC: the minimum URL in the first hours of the UTC month only
    (utc(2026, 11, 1, 0), "10.40.9.1", "yan", 0, "allowed", 3, None, "https://x/a"),
    (utc(2026, 11, 1, 3, 59, 59), "10.40.9.1", "yan", 0, "allowed", None, None, None),
    (utc(2026, 11, 20, 12), "10.40.9.1", "yan", 0, "allowed", None, None, "https://x/b"),
    (utc(2026, 12, 1, 4, 59, 59), "10.40.9.2", None, 1, "blocked", 2, 2, "https://x/a"),
]


def requests() -> list[tuple]:
    """A request every 41 minutes or so, and some exactly on and around each zone's month
    edges and the UTC midnights, by clients of two sites to three destinations."""
    rng = random.Random(15)
    stamps = [utc(2026, 9, 30) + i * 2459.5 for i in range(int(64 * 86400 / 2459.5))]
    for zone in (*ZONES, "UTC"):
        for year, mon in ((2026, 10), (2026, 11), (2026, 12)):
            edge = month(zone, year, mon)[0].timestamp()
            stamps += [edge - 1, edge - 0.001, edge, edge + 0.001, edge + 3599]
    clients = [(f"{net}.0.{k}", user) for net in SITES for k, user in
               ((1, "alice"), (2, "alice"), (3, None), (4, "bob"), (5, None))]  # fmt: skip
    made = []
    for ts in stamps:
        for _ in range(rng.choice((1, 1, 2, 3))):
            ip, user = rng.choice(clients)
            made.append((ts, ip, user, rng.randrange(len(HOSTS)), rng.choice(("allowed", "allowed", "blocked")),
                         rng.choice((None, 0, 5, 9)), rng.choice((None, 0, 100, 7, 3)), rng.choice(URLS)))  # fmt: skip
    return made + MADE


def rows(made: list[tuple], scan_id: int, first_id: int) -> list[list]:
    out = []
    for i, (ts, ip, user, h, outcome, b_out, b_in, url) in enumerate(made):
        host, provider, kind = HOSTS[h]
        site, country = SITES[ip[:5]]
        out.append(observation_values(
            id=first_id + i, ts=ts, day=iso_day(ts), source="edges.log", line=i + 1,
            client_ip=ip, user=user, dest_host=host, provider=provider, provider_kind=kind,
            site=site, egress_country=country, outcome=outcome, bytes_out=b_out,
            bytes_in=b_in, url=url, processing_geo="US", residency_basis="global",
            scan_id=scan_id))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = tmp_path_factory.mktemp("edges") / "edges.db"
    store = Store(path)
    sid = store.start_scan(["edges.log"], {})
    made = requests()
    assert store.ingest(sid, [(r, []) for r in rows(made, sid, 1)]).stored == len(made)
    store.roll_up()
    store.close()
    return path


FILTERS = {
    "all": TrafficFilter(),
    "site": TrafficFilter(sites=["shanghai"]),
    "provider": TrafficFilter(providers=["openai"]),
    "clients": TrafficFilter(clients=["10.20.0.1", "10.40.0.3", "10.20.9.2", "10.40.9.1"]),
    "user": TrafficFilter(users=["alice", "yan"]),
}


def selected(where: TrafficFilter) -> tuple[str, list]:
    sql, params = where.sql()
    return sql, params


def who_by_request(con, since: datetime, until: datetime, where: TrafficFilter) -> list:
    f, params = selected(where)
    found = con.execute(
        f"""SELECT client_ip, dest_host, provider, provider_kind, site, egress_country,
              count(*), sum(outcome IS 'blocked'), sum(bytes_out), sum(bytes_in), min(url),
              json_group_array(DISTINCT user)
            FROM observations WHERE ts >= ? AND ts < ?{f} GROUP BY 1, 2, 3, 4, 5, 6""",  # noqa: S608
        [since.timestamp(), until.timestamp(), *params],
    ).fetchall()
    return sorted((*r[:-1], sorted(json.loads(r[-1]), key=str)) for r in found)


def who(store: Store, since: datetime, until: datetime, where: TrafficFilter) -> list:
    found = store.client_destinations(since, until, where).rows
    return sorted((*r[:-1], sorted(json.loads(r[-1]), key=str)) for r in found)


def clients_by_request(con, since: datetime, until: datetime, where: TrafficFilter) -> int:
    f, params = selected(where)
    return con.execute(
        f"SELECT count(DISTINCT client_ip) FROM observations WHERE ts >= ? AND ts < ?{f}",  # noqa: S608
        [since.timestamp(), until.timestamp(), *params],
    ).fetchone()[0]


def processing_by_request(con, since: datetime, until: datetime, where: TrafficFilter) -> list:
    f, params = selected(where)
    return sorted(con.execute(
        f"""SELECT site, processing_geo, residency_basis, processing_region, count(*),
              sum(outcome IS 'blocked') FROM observations WHERE ts >= ? AND ts < ?{f}
            GROUP BY 1, 2, 3, 4""",  # noqa: S608
        [since.timestamp(), until.timestamp(), *params],
    ).fetchall(), key=str)  # fmt: skip


def cube_by_request(con, since: datetime, until: datetime, previous: datetime,
                    where: TrafficFilter) -> list:  # fmt: skip
    """A monthly report's cube (daily buckets from ``since``) counted per request."""
    f, params = selected(where)
    s = since.timestamp()
    return sorted(con.execute(
        f"""SELECT CASE WHEN ts >= ? THEN 0 ELSE 1 END,
              CASE WHEN ts >= ? THEN CAST((ts - ?) / 86400 AS INTEGER) ELSE -1 END,
              provider, provider_kind, site, egress_country, count(*),
              sum(outcome IS 'blocked'), sum(bytes_out), sum(bytes_in)
            FROM observations WHERE ts >= ? AND ts < ?{f} GROUP BY 1, 2, 3, 4, 5, 6""",  # noqa: S608
        [s, s, s, previous.timestamp(), until.timestamp(), *params],
    ).fetchall(), key=str)  # fmt: skip


def check(path, zones=ZONES, filters=FILTERS, edges=True, months=MONTHS) -> int:
    """Who went where, the clients and where requests were processed, of each zone's
    months, equal what the requests give one by one; returns the pairs compared."""
    store, con = Store(path, readonly=True), sqlite3.connect(path)
    compared, split_cubes = 0, set()
    for zone in zones:
        for year, mon in months:
            since, until = month(zone, year, mon)
            assert (store._month_edges(since, until) is not None) is edges, (zone, mon)
            for name, where in filters.items():
                expected = who_by_request(con, since, until, where)
                assert who(store, since, until, where) == expected, (zone, mon, name)
                assert store.distinct_clients(since, until, where) == clients_by_request(
                    con, since, until, where
                ), (zone, mon, name)
                processing = store.processing_locations(since, until, where)
                assert sorted(processing.rows, key=str) == (
                    processing_by_request(con, since, until, where)
                ), (zone, mon, name)
                compared += len(expected)
                # a monthly report's cube (the month before, daily buckets) counts them too
                # in zones whose midnights are not on the hour: the same rows, in order
                cube_args = (since, until, month(zone, year, mon - 1)[0], since, 86400, where)
                if store.cube_counts_processing(*cube_args):
                    assert not where.names_clients and zone in HALF_HOURS, (zone, name)
                    cube, found = store.traffic_cube_processing(*cube_args)
                    assert found == processing and cube == store.traffic_cube(*cube_args)
                    assert sorted(cube.rows, key=str) == cube_by_request(con, *cube_args[:3], where)
                    split_cubes.add(zone)
                else:
                    with pytest.raises(ValueError):
                        store.traffic_cube_processing(*cube_args)
    store.close()
    con.close()
    assert split_cubes == (HALF_HOURS & set(zones) if edges else set()), split_cubes
    return compared


def test_the_data_has_what_the_edges_can_get_wrong(stored):
    """Shanghai's November: pairs whose minimum URL lies in the hours taken off, with and
    without that URL in the rest of the month, bytes only there, bytes that come to 0."""
    con = sqlite3.connect(stored)
    cut = utc(2026, 11, 30, 16)
    pairs = con.execute(
        """SELECT client_ip, dest_host, outcome,
             min(url) FILTER (WHERE ts >= ?) = min(url) AS url_at_edge,
             count(*) FILTER (WHERE ts < ?) AS rest,
             min(url) FILTER (WHERE ts < ?) = min(url) AS url_in_rest,
             sum(bytes_in) FILTER (WHERE ts < ?) AS rest_in, sum(bytes_in) FILTER (WHERE ts >= ?) AS edge_in
           FROM observations WHERE ts >= ? AND ts < ? GROUP BY 1, 2, 3""",
        [cut, cut, cut, cut, cut, utc(2026, 11, 1), utc(2026, 12, 1)],
    ).fetchall()  # fmt: skip
    con.close()
    at_edge = [p for p in pairs if p[3] and p[4]]
    assert any(p[5] for p in at_edge) and any(not p[5] for p in at_edge)
    assert any(p[4] and p[6] is None and p[7] for p in pairs)  # bytes only at the edge
    assert any(p[4] and p[6] == 0 and p[7] for p in pairs)  # bytes that come to 0
    assert len(pairs) > 50


def test_months_of_other_zones_equal_the_requests(stored):
    assert check(stored) > 1000


def test_utc_months_and_other_periods_keep_their_reads(stored):
    """UTC months read the monthly roll-ups as they are; weeks, days and spans of part
    months are no month of another zone."""
    store = Store(stored, readonly=True)
    for since, until in (
        (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        (datetime(2026, 11, 2, 16, tzinfo=UTC), datetime(2026, 11, 9, 16, tzinfo=UTC)),
        (datetime(2026, 10, 20, 6, tzinfo=UTC), datetime(2026, 11, 27, 18, tzinfo=UTC)),
        (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
    ):
        assert store._month_edges(since, until) is None
    store.close()
    assert check(stored, zones=("UTC",), edges=False) > 100


def test_rows_stored_since_the_roll_up_count_too(stored, tmp_path):
    """Rows above the roll-up mark (a scan still storing, or killed): of destinations the
    monthly roll-ups know they join the month's sums; one they do not know sends the month
    back to the day roll-ups (and rows). Either way the figures are the requests'."""
    path = tmp_path / "recent.db"
    src, dst = sqlite3.connect(stored), sqlite3.connect(path)
    src.backup(dst)
    src.close()
    dst.close()
    store = Store(path)
    sid = store.start_scan(["late.log"], {})
    late = [(ts, ip, user, h, "allowed", 1, 2, url) for ts, ip, user, h, url in (
        (utc(2026, 11, 30, 20), "10.20.0.1", "alice", 0, "https://x/0"),  # taken off
        (utc(2026, 11, 30, 15, 59, 59), "10.20.0.1", "alice", 0, None),
        (utc(2026, 10, 31, 18), "10.20.9.5", None, 1, "https://x/z"),  # added, a new pair
        (utc(2026, 11, 15), "10.40.0.3", None, 2, "https://x/0"),
        (utc(2026, 11, 1, 2), "10.40.9.1", "yan", 0, "https://x/0"),  # New York's edge
    )]  # fmt: skip
    assert store.ingest(sid, [(r, []) for r in rows(late, sid, 10_000_000)]).stored == 5
    store.close()
    assert check(path, zones=ZONES[:2]) > 300
    store = Store(path)  # a destination the monthly roll-ups do not know yet
    sid = store.start_scan(["new.log"], {})
    new = observation_values(
        id=20_000_000, ts=utc(2026, 11, 12), day="2026-11-12", source="new.log", line=1,
        client_ip="10.20.0.3", dest_host="api.mistral.ai", provider="mistral",
        provider_kind="api", site="shanghai", egress_country="CN", outcome="allowed",
        scan_id=sid)  # fmt: skip
    assert store.ingest(sid, [(new, [])]).stored == 1
    store.close()
    november = {"months": [(2026, 11)], "filters": {"all": TrafficFilter()}}
    assert check(path, zones=ZONES[:1], edges=False, **november) > 30


def test_pairs_seen_every_day_settle_without_recounting_the_month(tmp_path, monkeypatch):
    """Pairs of a real proxy send the same URL all day, every day: the minimum URL of the
    hours taken off is the month's, but the day roll-up next to the edge shows it in the
    rest of the month, so the month is not counted again from the day roll-ups. Bytes that
    come to 0 settle the same way (0, not null)."""
    path = tmp_path / "daily.db"
    store = Store(path)
    sid = store.start_scan(["daily.log"], {})
    hourly = [(utc(2026, 10, 25) + 3600 * h + k, f"10.20.0.{k + 1}", None, k % 3, "allowed",
               None, 0 if k == 2 else 100, f"https://x/{k}") for h in range(24 * 40) for k in range(4)]  # fmt: skip
    assert store.ingest(sid, [(r, []) for r in rows(hourly, sid, 1)]).stored == len(hourly)
    store.roll_up()
    store.close()
    recounted = []  # the day roll-ups read again (as client x destination rows)
    dest_rows = store_module._dest_rows
    monkeypatch.setattr(store_module, "_dest_rows", lambda *a: recounted.append(a) or dest_rows(*a))
    for zone in ZONES:
        assert check(path, zones=(zone,), filters={"all": TrafficFilter()}) > 5, zone
    assert recounted == []


def test_cube_of_days_from_a_part_hour_equals_the_requests(stored):
    """The timeline and traffic tables of a month in Asia/Kolkata or America/St_Johns
    (days from half past an hour): the hours a bound splits come from the rows, the others
    from their hourly totals."""
    from monitor.report.data import _floor, period_window

    store, con = Store(stored, readonly=True), sqlite3.connect(stored)
    for zone in ZONES:
        win = period_window("monthly", datetime(2026, 11, 15).date(), tz=zone)
        prev = win.previous()
        _, width = win.bucket()
        origin = _floor(win.since, width, zone)
        s, u, p, o = (t.timestamp() for t in (win.since, win.until, prev.since, origin))
        expected = con.execute(
            """SELECT ts < ?, CASE WHEN ts >= ? THEN CAST((ts - ?) / ? AS INTEGER) ELSE -1 END,
                 provider, provider_kind, site, egress_country, count(*),
                 sum(outcome IS 'blocked'), sum(bytes_out), sum(bytes_in)
               FROM observations WHERE ts >= ? AND ts < ? GROUP BY 1, 2, 3, 4, 5, 6""",
            [s, s, o, width, p, u],
        ).fetchall()
        got = store.traffic_cube(win.since, win.until, prev.since, origin, width, TrafficFilter())
        assert sorted(got.rows, key=str) == sorted(expected, key=str), zone
        assert len(expected) > 100
    store.close()
    con.close()
