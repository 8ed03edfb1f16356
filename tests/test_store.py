"""The SQLite store on real files: schema guard, idempotent ingest, incident aggregation."""

from __future__ import annotations

import ipaddress
import json
import math
import sqlite3
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.batch import Batch
from monitor.rows import observation_values
from monitor.store import (
    MIGRATIONS,
    OBSERVATION_COLUMNS,
    SCHEMA_VERSION,
    IncidentQuery,
    Ingestion,
    Store,
    StoreError,
)


def obs(i, **kw):
    fields = {
        "id": 1000 + i,
        "ts": 1795741200.0 + i,  # 2026-11-27T01:00:00Z + i seconds
        "day": "2026-11-27",
        "source": "a.log",
        "line": i + 1,
        "bytes_in": 100,
        "outcome": "allowed",
    }
    return observation_values(**{**fields, **kw})


def inc(iid="i1", rule="provider-region-unsupported", severity="high"):
    return {
        "id": iid,
        "rule": rule,
        "severity": severity,
        "title": "t",
        "provider": "openai",
        "provider_kind": "api",
        "dest_host": "api.openai.com",
        "client_ip": "10.0.0.1",
        "site": None,
        "egress_ip": None,
        "egress_country": "CN",
        "egress_source": "test",
        "day": "2026-11-27",
    }


def test_ingest_is_idempotent_and_aggregates(tmp_path):
    store = Store(tmp_path / "s.db")
    sid = store.start_scan(["a.log"], {})
    batch = [(obs(i, outcome="blocked" if i == 3 else "allowed"), [inc()]) for i in range(8)]
    first = store.ingest(sid, batch)
    assert (first.stored, first.duplicates, first.new_incidents, first.updated_incidents) == (
        8,
        0,
        {"i1"},
        set(),
    )
    again = store.ingest(sid, batch + batch[:2])
    assert (again.stored, again.duplicates, again.new_incidents) == (0, 10, set())
    more = store.ingest(sid, [(obs(20, bytes_in=None), [inc()])])
    assert more.updated_incidents == {"i1"} and more.stored == 1

    (row,) = store.incidents(IncidentQuery())
    assert row["count"] == 9 and row["blocked"] == 1 and row["outcome"] == "mixed"
    assert row["bytes_in"] == 800
    assert (
        row["first_seen"] == "2026-11-27T01:00:00.000Z"
        and row["last_seen"] == "2026-11-27T01:00:20.000Z"
    )
    assert row["evidence"] == [f"a.log:{n}" for n in range(1, 6)]  # a few samples, earliest first
    shown = store.incident("i")
    assert (
        shown is not None and len(shown["records"]) == 9 and shown["records"][0]["ts"].endswith("Z")
    )


def test_severity_filter_is_a_minimum(tmp_path):
    store = Store(tmp_path / "s.db")
    sid = store.start_scan([], {})
    store.ingest(
        sid,
        [
            (obs(1), [inc("a", "relay-service", "medium"), inc("b")]),
            (obs(2), [inc("c", "x", "info")]),
        ],
    )
    assert {r["id"] for r in store.incidents(IncidentQuery(min_severity="medium"))} == {"a", "b"}
    assert {r["id"] for r in store.incidents(IncidentQuery(rule=("x",)))} == {"c"}


def test_ambiguous_prefix(tmp_path):
    store = Store(tmp_path / "s.db")
    sid = store.start_scan([], {})
    store.ingest(sid, [(obs(1), [inc("ab1"), inc("ab2", "r2")])])
    with pytest.raises(KeyError, match="ambiguous"):
        store.incident("ab")
    assert store.incident("ab2")["rule"] == "r2"
    assert store.incident("%") is None  # LIKE wildcards in ids are data


def test_refuses_foreign_and_newer_databases(tmp_path):
    foreign = tmp_path / "other.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not an apiwatch database"):
        Store(foreign)
    newer = tmp_path / "newer.db"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    with pytest.raises(StoreError, match="newer than this apiwatch"):
        Store(newer)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open database"):
        Store(garbage)


def test_reopen_keeps_data(tmp_path):
    path = tmp_path / "s.db"
    store = Store(path)
    store.ingest(store.start_scan([], {}), [(obs(1), [inc()])])
    store.close()
    assert [r["id"] for r in Store(path).incidents(IncidentQuery())] == ["i1"]


def test_schema_holds_every_stored_column(tmp_path):
    """A field added to Observation is a column of monitor.rows: it needs a schema step."""
    from monitor.rows import TYPES

    store = Store(tmp_path / "a.db")
    affinity = {int: "INTEGER", float: "REAL", str: "TEXT"}
    assert {c.name: c.type for c in store.db["observations"].columns} == {
        name: affinity[t] for name, t in TYPES.items()
    }


def test_pipeline_rows_follow_the_column_order():
    """observation_row builds lists positionally: every value must land in its column."""
    from monitor.catalog import Catalog
    from monitor.egress import Egress
    from monitor.geo import GeoAnswer
    from monitor.observation import Observation
    from monitor.pipeline import Enriched, observation_row
    from monitor.store import OBSERVATION_COLUMNS

    o = Observation(ts=1795741200.5, source="s", line=7, format="squid", client_ip="10.0.0.1", client_port=5,
                    user="u", method="CONNECT", dest_host="api.openai.com", dest_port=443, dest_ip="1.2.3.4",
                    url="http://x/", status=200, bytes_out=11, bytes_in=22, host_source="connect",
                    result="TCP_TUNNEL", duration=0.5, ts_end=9.0, packets_out=3, packets_in=4, ech=True,
                    ja4="t13d1516h2_8daaf6152771_e5627efa2ab1", user_agent="OpenAI/Python 1.54.0",
                    egress_ip="5.6.7.8", ech_outer="cloudflare-ech.com", tunnel="vxlan", tunnel_src="10.9.0.1", tunnel_dst="10.9.0.2",
                    processing_region="openai:eu", processing_geo="EU", residency_basis="hostname",
                    residency_caveat="c")  # fmt: skip
    m = Catalog.load().match_host("api.openai.com")
    dest = GeoAnswer("1.2.3.4", "public", "US", 13335, "Cloudflare", None, "x", "y", None)
    row = dict(
        zip(
            OBSERVATION_COLUMNS,
            observation_row(
                Enriched(o, m, Egress("5.6.7.8", "CN", "sh", "src", "DE"), dest, "allowed")
            ),
            strict=True,
        )
    )
    expected = {
        "id": None, "ts": 1795741200.5, "day": "2026-11-27", "source": "s", "line": 7, "format": "squid",
        "client_ip": "10.0.0.1", "client_port": 5, "user": "u", "method": "CONNECT",
        "dest_host": "api.openai.com", "dest_port": 443, "dest_ip": "1.2.3.4", "url": "http://x/",
        "status": 200, "result": "TCP_TUNNEL", "bytes_out": 11, "bytes_in": 22, "host_source": "connect",
        "duration": 0.5, "ts_end": 9.0, "packets_out": 3, "packets_in": 4, "ech": True,
        "ja4": "t13d1516h2_8daaf6152771_e5627efa2ab1", "user_agent": "OpenAI/Python 1.54.0", "provider": "openai",
        "provider_kind": "api", "match_pattern": "api.openai.com", "site": "sh", "egress_ip": "5.6.7.8",
        "egress_country": "CN", "egress_source": "src", "dest_country": "US", "dest_asn": 13335,
        "outcome": "allowed", "scan_id": None, "egress_geo_country": "DE",
        "egress_logged": "5.6.7.8", "ech_outer": "cloudflare-ech.com", "tunnel": "vxlan",
        "tunnel_src": "10.9.0.1", "tunnel_dst": "10.9.0.2", "processing_region": "openai:eu",
        "processing_geo": "EU", "residency_basis": "hostname", "residency_caveat": "c",
    }  # fmt: skip
    assert row == expected


def test_migration_to_compact_observations_keeps_every_row(tmp_path):
    """A database of schema 8 (built by the landed steps, observations and incidents as wide
    tables) comes up to date with every observation and incident, column for column, and
    every hit; what was stored stays a duplicate for a later ingest; ``db check`` passes."""
    import sqlite_utils

    path = tmp_path / "v8.db"
    db = sqlite_utils.Database(sqlite3.connect(path))
    for step in range(1, 9):
        MIGRATIONS[step](db)
    db.execute("PRAGMA user_version = 8")
    db["scans"].insert({"id": 1, "started": "2026-11-27T00:00:00Z"})
    wide = [
        {
            **dict(
                zip(
                    OBSERVATION_COLUMNS,
                    obs(
                        i,
                        client_ip=f"10.0.0.{i % 3}",
                        ech=i % 2,
                        dest_host="api.openai.com",
                        provider="openai",
                        user="alice" if i == 4 else None,
                        scan_id=1,
                    ),
                    strict=True,
                )
            ),
            "duration": 0.125 * i,
        }  # fmt: skip
        for i in range(6)
    ]
    db["observations"].insert_all(wide)
    for iid, title in (("i1", "t"), ("i2", "another title")):
        db["incidents"].insert({**inc(iid), "title": title, "severity_rank": 3,
                                "first_seen": "2026-11-27T01:00:00.000Z", "status": "open",
                                "last_seen": "2026-11-27T01:00:05.000Z", "count": 2,
                                "facts": '{"request.status": [200]}', "finding_id": "F-1"})  # fmt: skip
    db.execute("INSERT INTO hits VALUES ('i1', 1000), ('i1', 1003), ('i2', 1005)")
    db.conn.commit()
    before = db.execute(
        f"SELECT {', '.join(OBSERVATION_COLUMNS)} FROM observations ORDER BY rowid"  # noqa: S608
    ).fetchall()
    incidents = [dict(r) for r in db.query("SELECT * FROM incidents ORDER BY id")]
    db.conn.close()

    store = Store(path)  # steps 9 and 10
    after = store.db.execute(
        f"SELECT {', '.join(OBSERVATION_COLUMNS)} FROM observations ORDER BY ts"  # noqa: S608
    ).fetchall()
    assert after == before and len(after) == 6
    assert sorted(store.db.execute("SELECT * FROM hits").fetchall()) == [
        ("i1", 1000), ("i1", 1003), ("i2", 1005)]  # fmt: skip
    assert [dict(r) for r in store.db.query("SELECT * FROM incidents ORDER BY id")] == incidents
    # two contexts (ech 0 and 1), four clients (three addresses, one with a user)
    assert store.db.execute("SELECT count(*) FROM obs_contexts").fetchone() == (2,)
    assert store.db.execute("SELECT count(*) FROM obs_clients").fetchone() == (4,)
    again = store.ingest(1, [(list(r), []) for r in before])
    assert (again.stored, again.duplicates) == (0, 6)
    more = store.ingest(1, [(obs(9, client_ip="10.0.0.1", scan_id=1), [inc()])])
    assert more.stored == 1 and store.db.execute("SELECT count(*) FROM hits").fetchone() == (4,)
    report = store.check()
    assert report["integrity"] == "ok" and report["schema_version"] == SCHEMA_VERSION
    assert report["tables"]["observations"] == 7
    store.close()


def test_a_reader_waits_for_the_schema_a_first_scan_is_creating(tmp_path):
    """A query started alongside the first scan of a new database finds the file before the
    scan committed its schema: it waits for it instead of calling it no apiwatch database."""
    import sqlite_utils

    path = tmp_path / "new.db"
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("BEGIN IMMEDIATE")
    db = sqlite_utils.Database(con)
    for step in range(1, SCHEMA_VERSION + 1):
        MIGRATIONS[step](db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    timer = threading.Timer(0.5, lambda: con.execute("COMMIT"))
    timer.start()
    try:
        reader = Store(path, readonly=True)
        assert reader.check()["schema_version"] == SCHEMA_VERSION
        reader.close()
    finally:
        timer.join()
        con.close()


def test_egress_history_reads_roll_ups_and_rows_alike(tmp_path):
    """Who reached which provider through how many egress countries in a span: the same
    whether the requests are rolled up, partly in the span (a day at its edge) or not rolled
    up yet, as counted request by request."""
    store = Store(tmp_path / "s.db")
    sid = store.start_scan(["a.log"], {})
    day0 = 1795741200.0 - 3600  # 2026-11-27T00:00:00Z

    def rows(first, count):
        for i in range(first, first + count):
            ts = day0 + (i * 7919 % 4) * 86400 + i * 613 % 86400
            yield obs(i, ts=ts, day=f"2026-11-{27 + int((ts - day0) // 86400)}",
                      client_ip=f"10.0.0.{i % 5}", user="ann" if i % 7 == 0 else None,
                      provider="openai" if i % 3 else "anthropic", provider_kind="api",
                      egress_country=("CN", "HK", "SG", None)[i % 4 if i % 11 else 1])  # fmt: skip

    def by_request(lo, hi):
        return [tuple(r) for r in store.db.execute(
            """SELECT coalesce(user, client_ip) AS who, provider, count(DISTINCT egress_country),
                 min(egress_country) FROM observations WHERE ts >= ? AND ts < ?
                 AND egress_country IS NOT NULL AND coalesce(user, client_ip) IS NOT NULL
                 AND provider_kind IN ('api', 'consumer') GROUP BY 1, 2 ORDER BY 1, 2""",
            [lo, hi])]  # fmt: skip

    spans = [
        (day0 + a * 3600, day0 + b * 3600) for a, b in ((0, 96), (-30, 50), (13, 61), (30, 31))
    ]
    store.ingest(sid, [(r, []) for r in rows(0, 300)])
    store.roll_up()
    store.ingest(sid, [(r, []) for r in rows(300, 200)])  # above the roll-ups' mark
    for lo, hi in spans:
        found = store.egress_groups(lo, hi)
        assert found == by_request(lo, hi) and (found or (lo, hi) == spans[-1])
    store.roll_up()
    assert [store.egress_groups(lo, hi) for lo, hi in spans] == [by_request(*s) for s in spans]


def test_egress_history_of_many_clients_is_the_per_request_history(tmp_path):
    """Egress hopping by more clients than one IN (…) holds (1,300, some behind a user with
    several addresses): the hour-by-hour history read in one pass and the records linked
    to each hop are exactly what the requests say one by one."""
    import json
    from collections import defaultdict
    from datetime import datetime

    from monitor.catalog import bundled_catalog
    from monitor.correlate import correlate
    from monitor.observation import iso_day
    from monitor.policy import RuleSet
    from monitor.resources import rules_dir

    store = Store(tmp_path / "s.db")
    sid = store.start_scan(["a.log"], {})
    day0 = 1795737600.0  # 2026-11-27T00:00:00Z
    clients = 1300

    def rows(first, count):
        for i in range(first, first + count):
            k, j = i % clients, i // clients  # the client, its j-th record
            ts = day0 + (k * 13 + j * 7) % 72 * 3600 + (k * 31 + j * 17) % 3600
            yield obs(i, ts=ts, day=iso_day(ts), scan_id=sid, client_ip=f"10.1.{k // 250}.{k % 250}",
                      user=f"u{k % 40}" if k % 9 == 0 else None, site="sh" if k % 5 == 0 else None,
                      provider="anthropic" if j % 3 == 0 else "openai",
                      provider_kind=("api", "consumer", "api", "other")[k * j % 4],
                      egress_country=("CN", "SG", "HK", None, "SG")[(j + k) % 5])  # fmt: skip

    def by_request(lo, hi, who):
        groups = defaultdict(list)
        for r in store.db.execute(
            """SELECT coalesce(user, client_ip), provider, egress_country, ts, site, user,
                 client_ip FROM observations WHERE ts >= ? AND ts < ?
                 AND egress_country IS NOT NULL AND coalesce(user, client_ip) IS NOT NULL
                 AND provider_kind IN ('api', 'consumer')""",
            [lo, hi],
        ):
            if r[0] in who:
                groups[(*r[:3], int(r[3] / 3600))].append(r)
        return sorted(
            (*key[:3], min(r[3] for r in g), max(r[3] for r in g), len(g),
             *(min((r[c] for r in g if r[c] is not None), default=None) for c in (4, 5, 6)))
            for key, g in groups.items()
        )  # fmt: skip

    store.ingest(sid, [(r, []) for r in rows(0, 8 * clients)])
    store.roll_up()
    store.ingest(sid, [(r, []) for r in rows(8 * clients, 3 * clients)])  # above the mark
    every = {w for w, *_ in store.egress_groups(day0, day0 + 72 * 3600)}
    assert len(every) > 1000
    chosen = {w for n, w in enumerate(sorted(every)) if n % 6} | {"10.9.9.9"}  # one never seen
    for lo, hi in ((0, 72), (13, 50), (-24, 30)):
        lo, hi = day0 + lo * 3600, day0 + hi * 3600
        found = store.egress_buckets(lo, hi, sorted(chosen))
        assert [r[:2] + r[3:4] for r in found] == sorted(r[:2] + r[3:4] for r in found)
        assert sorted(found) == by_request(lo, hi, chosen) and len(found) > 1000

    # every hop's records: the client's, with the provider, through its countries, in its span
    rules = RuleSet.load([rules_dir() / "policies" / "egress-hopping.yaml"])
    done = correlate(store, bundled_catalog(), rules, [sid])
    hops = list(store.db.query("SELECT * FROM incidents WHERE rule = 'egress-hopping'"))
    assert done.incidents == len(hops) > 500
    linked, history = defaultdict(set), defaultdict(list)
    for incident, observation in store.db.execute("SELECT * FROM hits"):
        linked[incident].add(observation)
    for i, who, provider, country, ts in store.db.execute(
        "SELECT id, coalesce(user, client_ip), provider, egress_country, ts FROM observations"
    ):
        history[(who, provider)].append((i, country, ts))
    for hop in hops:
        countries = json.loads(hop["facts"])["history.countries"][0]
        first, last = (
            datetime.fromisoformat(hop[k]).timestamp() for k in ("first_seen", "last_seen")
        )
        expected = {
            i
            for i, country, ts in history[(hop["user"] or hop["client_ip"], hop["provider"])]
            if first <= ts <= last and country in countries
        }
        assert linked[hop["id"]] == expected and hop["count"] == len(expected) > 1, hop["id"]
    store.close()


def test_an_incident_spans_its_observations_whatever_order_they_come_in(tmp_path):
    """first_seen/last_seen move only outwards, from one transaction to the next, whether
    the store wrote the incident itself or reads it back (another connection)."""
    path = tmp_path / "s.db"
    t = 1795741200.0  # 2026-11-27T01:00:00Z

    def seen(store, *offsets):
        sid = store.start_scan(["a.log"], {})
        for k in offsets:  # one transaction each
            store.ingest(sid, [(obs(int(k * 1000), ts=t + k), [inc()])])
        (row,) = store.incidents(IncidentQuery())
        return row["first_seen"][11:], row["last_seen"][11:], row["count"]

    store = Store(path)
    assert seen(store, 10) == ("01:00:10.000Z", "01:00:10.000Z", 1)
    assert seen(store, 5.5, 12.25, 11, 4) == ("01:00:04.000Z", "01:00:12.250Z", 5)
    store.close()
    again = Store(path)  # what it knows of the incident is read back
    assert seen(again, 8, 3.001) == ("01:00:03.001Z", "01:00:12.250Z", 7)
    assert seen(again, 30, 2) == ("01:00:02.000Z", "01:00:30.000Z", 9)


def test_incident_texts_are_what_json_and_strftime_write(tmp_path):
    """Incident rows are built through caches (texts, facts, times) and a hand-made JSON
    list of evidence: what they hold is exactly ``json.dumps`` and ``strftime`` text, for new
    and updated incidents, whether this connection wrote them before or reads them back."""
    path = tmp_path / "s.db"
    source = 'logs "q"/é\\x.log'  # escaped in JSON, ASCII only
    facts = [{"a": True, "b": 1}, {"a": 1, "b": 1.0}, {"ü": ["x", 2], "a": None}, {"a": "é\n"}]
    day0 = 1795737600.0  # 2026-11-27T00:00:00Z
    seen: dict[str, list[float]] = {}
    for c, store in enumerate((Store(path), Store(path))):  # the second reads back
        sid = store.start_scan([source], {})
        for k in range(3):  # one transaction each
            batch = []
            for j in range(7):
                n = c * 100 + k * 10 + j
                ts = day0 + (37_003.0 * n) % 86_000 + (0.0005, 0.9996, 0.25)[j % 3]
                incident = {**inc(f"i{j % 3}"), "facts": facts[(k + j + c) % 4]}
                batch.append((obs(n, ts=ts, source=source, line=n + 1), [incident]))
                seen.setdefault(incident["id"], []).append(ts)
            store.ingest(sid, batch)
        store.close()

    def iso(ts):
        second = math.floor(ts)
        millis = min(999, round((ts - second) * 1000))
        return f"{datetime.fromtimestamp(second, UTC).strftime('%Y-%m-%dT%H:%M:%S')}.{millis:03d}Z"

    rows = sqlite3.connect(path).execute(
        "SELECT i.id, i.evidence, f.text, i.first_seen, i.last_seen, i.count FROM incident_rows i"
        " LEFT JOIN incident_facts f ON f.n = i.facts ORDER BY i.id"
    )
    found = 0
    for iid, evidence, facts_text, first, last, count in rows:
        found += 1
        assert evidence == json.dumps(json.loads(evidence)) and evidence.isascii()
        assert len(json.loads(evidence)) == 5 and json.loads(evidence)[0].startswith(source)
        assert facts_text == json.dumps(json.loads(facts_text), sort_keys=True)
        assert (first, last, count) == (iso(min(seen[iid])), iso(max(seen[iid])), len(seen[iid]))
    assert found == 3


_DETAIL_SPACE = st.tuples(
    st.sampled_from([("r1", "high", "t1"), ("r1", "high", "t0"), ("r2", "low", "t2")]),
    st.sampled_from([None, "10.0.0.1", "10.0.0.2", "10.0.0.3"]),  # client
    st.sampled_from([None, "ann", "bob"]),  # user
    st.sampled_from([None, "api.openai.com", "chat.openai.com"]),  # host
    st.sampled_from([None, "CN", "RU"]),  # egress country
    st.sampled_from([None, "hq"]),  # site: not part of the incident's id, of its finding's
    st.integers(0, 2),  # day
    st.sampled_from([None, 0, 700]),  # bytes in
    st.booleans(),  # blocked
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.lists(_DETAIL_SPACE, min_size=1, max_size=6), min_size=1,
                         max_size=3), min_size=1, max_size=3))  # fmt: skip
def test_findings_follow_their_detail_as_a_recount_would(scans):
    """A scan's transactions add what they stored to their findings' figures (distinct
    clients, users, hosts and days followed per connection) instead of recounting each
    finding's whole detail: after every transaction, every finding is what a recount of
    its detail gives, whether new, grown, read back by another connection, or left by
    detail that moved to another finding (a site that changed)."""
    from monitor.ids import incident_id
    from monitor.store import _ROLLUP, _ROLLUP_COLUMNS, _rolled

    day0 = 1795737600.0  # 2026-11-27T00:00:00Z
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/s.db"
        n = 0
        for transactions in scans:  # a scan: one connection
            store = Store(path)
            sid = store.start_scan(["a.log"], {})
            for records in transactions:
                batch = []
                for identity, client, user, host, country, site, day, sent, blocked in records:
                    rule, sev, title = identity
                    n += 1
                    ts = day0 + day * 86400 + n * 7.25
                    dayname = f"2026-11-{27 + day}"
                    incident = {
                        **inc(incident_id(rule, "openai", host, client, None, country, dayname, user),
                              rule, sev),
                        "title": title, "client_ip": client, "user": user, "dest_host": host,
                        "egress_country": country, "site": site, "day": dayname,
                    }  # fmt: skip
                    row = obs(n, ts=ts, day=dayname, bytes_in=sent,
                              outcome="blocked" if blocked else "allowed")  # fmt: skip
                    batch.append((row, [incident]))
                store.ingest(sid, batch)
                cols = ["id", *_ROLLUP_COLUMNS]
                recount = [[_rolled(r)[c] for c in cols]
                           for r in store.db.query(_ROLLUP.format(where="1 = 1"))]  # fmt: skip
                stored = [list(r) for r in store.db.execute(
                    f"SELECT {', '.join(cols)} FROM findings ORDER BY id")]  # noqa: S608  # fmt: skip
                assert stored == recount
            store.close()


def _contents(path) -> tuple[list[tuple], dict[str, list[tuple]], int]:
    """A database's schema objects (in the order they were made), every table's rows (with
    their types), and its schema version."""
    con = sqlite3.connect(path)
    objects = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid")
    objects = objects.fetchall()
    rows = {}
    for kind, name, _table, _sql in objects:
        if kind == "table":
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{name}")')]
            typed = ", ".join(f'quote("{c}")' for c in cols) or "1"
            rows[name] = sorted(con.execute(f'SELECT {typed} FROM "{name}"').fetchall())  # noqa: S608
    version = con.execute("PRAGMA user_version").fetchone()[0]
    con.close()
    return objects, rows, version


def test_a_new_database_is_what_the_schema_steps_make(tmp_path):
    """A new file gets the schema at once (``_SCHEMA``), not step by step: it must be what
    the landed steps make of an empty database, object for object (their SQL, in order) and
    row for row, and stay a database the steps after it and every command accept."""
    import sqlite_utils

    from monitor.store import _SCHEMA_AT

    stepped = tmp_path / "stepped.db"
    db = sqlite_utils.Database(sqlite3.connect(stepped, isolation_level=None))
    db.execute("BEGIN")
    for step in range(1, SCHEMA_VERSION + 1):
        MIGRATIONS[step](db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.execute("COMMIT")
    db.conn.close()
    Store(tmp_path / "new.db").close()
    made, expected = _contents(tmp_path / "new.db"), _contents(stepped)
    if made != expected:  # print what _SCHEMA should be, should a landed step have changed
        at = tmp_path / "at.db"
        db = sqlite_utils.Database(sqlite3.connect(at))
        for step in range(1, _SCHEMA_AT + 1):
            MIGRATIONS[step](db)
        print(*(r[3] for r in _contents(at)[0] if r[3] and not r[1].startswith("sqlite_")))
    assert made == expected
    assert "sqlite_sequence" in made[1]  # (the outbox's AUTOINCREMENT made it, as a step does)


def test_store_writes_rows_as_sqlite_utils_would(tmp_path):
    """What the store writes and reads without sqlite-utils (a scan never loads it) is what
    sqlite-utils' own insert, upsert and query make of the same rows."""
    import sqlite_utils

    schema = (
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER DEFAULT 7, c TEXT);"
        'CREATE TABLE m ("key" TEXT PRIMARY KEY, "offset" INTEGER, "value" TEXT)'
    )
    rows = [{"a": "x", "b": 1}, {"a": {"k": ["é", 1]}, "c": (1, "two")}, {"b": None},
            {"c": datetime(2026, 12, 5, 1, 2, 3, tzinfo=UTC)}]  # fmt: skip
    ours, theirs = Store(tmp_path / "ours.db"), sqlite_utils.Database(tmp_path / "theirs.db")
    for con in (ours.db.conn, theirs.conn):
        con.executescript(schema)
    assert ours._insert("t", rows[:1]) == theirs["t"].insert(rows[0]).last_pk == 1
    ours._insert("t", rows[1:])
    theirs["t"].insert_all(rows[1:])
    for row in ({"key": "k", "offset": 3}, {"key": "k", "value": "v"}, {"key": "j"}):
        ours._upsert("m", row, "key")
        theirs["m"].upsert(row, pk="key")
    for sql in ("SELECT * FROM t ORDER BY id", "SELECT * FROM m ORDER BY key",
                "SELECT t.id, m.*, t.a AS key, t.id AS id_2 FROM t, m ORDER BY 1, 2"):  # fmt: skip
        assert list(ours.db.query(sql)) == list(theirs.query(sql)), sql
    assert ours.db.query("SELECT * FROM t").__class__ is not list  # read as it is iterated
    assert ours.db["t"].count == 4  # the rest of sqlite-utils, when asked for


def test_finding_detail_is_each_findings_incidents(tmp_path):
    """A report's findings list reads each finding's detail with the filters resolved once
    (:meth:`Store.finding_detail`), on a worker thread's own connection
    (:meth:`Store.reading`): the same incidents, in the same order, as ``incidents
    --finding`` gives each, with and without a filter on clients (a network) and users."""
    from dataclasses import replace

    from monitor.ids import incident_id

    store = Store(tmp_path / "s.db")
    sid = store.start_scan(["a.log"], {})
    batch, n, made = [], 0, {}  # made: incident id -> (rule, client, user, last time)
    for rule in ("provider-region-unsupported", "egress-unexpected"):
        for k in range(12):
            client, user = f"10.{k % 3}.0.{k}", ("alice", "bob", None)[k % 3]
            day = f"2026-11-{27 + k % 3}"
            iid = incident_id(rule, "openai", "api.openai.com", client, None, "CN", day, user)
            for _ in range(k % 4 + 1):
                n += 1
                ts = 1795737600.0 + (k % 3) * 86400 + n
                row = obs(n, ts=ts, day=day, client_ip=client, user=user)
                batch.append((row, [{**inc(iid, rule), "client_ip": client, "user": user,
                                     "day": day}]))  # fmt: skip
                made[iid] = (rule, ipaddress.ip_address(client), user, ts)
    store.ingest(sid, batch)
    rule_of = dict(store.db.execute("SELECT id, rule FROM findings"))
    fids = sorted(rule_of)
    assert len(fids) == 2

    def expected(q: IncidentQuery, fid: str) -> list[str]:
        """The finding's incident ids the filters keep, from what was stored (not from
        the store's queries): latest first, then by id, cut to the limit."""
        nets = [ipaddress.ip_network(c) for c in q.client or ()]
        kept = [(-last, iid) for iid, (rule, ip, user, last) in made.items()
                if rule == rule_of[fid] and (not nets or any(ip in net for net in nets))
                and (not q.user or user in q.user)]  # fmt: skip
        return [iid for _, iid in sorted(kept)][: q.limit or None]

    for q in (IncidentQuery(limit=3), IncidentQuery(client=("10.1.0.0/16",), limit=10),
              IncidentQuery(user=("alice",), client=("10.0.0.0", "10.0.0.3")),
              IncidentQuery(client=("192.168.0.0/16",))):  # fmt: skip
        want = {fid: list(store.incidents(replace(q, finding=fid))) for fid in fids}
        assert {fid: [i["id"] for i in want[fid]] for fid in fids} == {
            fid: expected(q, fid) for fid in fids
        }
        assert any(want.values()) or q.client == ("192.168.0.0/16",)
        assert store.finding_detail(q, fids) == want
        found = {}

        def read(q=q, found=found):
            with store.reading() as view:
                found.update(view.finding_detail(q, fids))

        worker = threading.Thread(target=read)
        worker.start()
        worker.join()
        assert found == want
    store.close()


def _batches(scan_id: int) -> list[Batch]:
    """Three batches, the second repeating rows of the first (its rows looked up after the
    insert, the other path), of two incidents."""
    made = []
    for first, n in ((0, 300), (250, 300), (600, 40)):
        batch = Batch.of([(None, obs(i), [inc("i1" if i % 3 else "i2")])
                          for i in range(first, first + n)])  # fmt: skip
        batch.set_scan(scan_id)
        made.append(batch)
    return made


def _tables(store: Store) -> dict[str, list[tuple]]:
    return {t: store.db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()  # noqa: S608
            for t in ("obs_rows", "incident_rows", "hit_links", "obs_contexts", "obs_clients")}  # fmt: skip


def test_batches_stored_as_the_next_is_added_are_as_stored_one_by_one(tmp_path):
    """Ingestion.add returns while the batch's rows are inserted (in C, by a thread of their
    own), adding the batch before's deltas meanwhile: the database and the result are those
    of batches each stored whole (settled) before the next is added."""
    got = []
    for name, settle in (("overlap", False), ("settled", True)):
        store = Store(tmp_path / f"{name}.db")
        scan_id = store.start_scan(["a.log"], {})
        ingestion = store.ingestion(scan_id, roll_up=True)
        for batch in _batches(scan_id):
            ingestion.add(batch)
            if settle:
                ingestion.settle()
        result = ingestion.commit()
        got.append((_tables(store), result.stored, result.duplicates, result.new_incidents))
    assert got[0] == got[1]
    assert got[0][1:] == (590, 50, {"i1", "i2"}) and len(got[0][0]["hit_links"]) == 590


def test_an_insert_that_fails_in_its_thread_raises_by_the_next_call_and_keeps_nothing(tmp_path):
    """The database full mid-insert (the rows stepped in a thread of their own): the error
    as SQLite gave it, raised by the next call in the caller's thread, the transaction
    rolled back and the store usable again."""
    store = Store(tmp_path / "s.db")
    scan_id = store.start_scan(["a.log"], {})
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 2}")
    ingestion = store.ingestion(scan_id)
    big = Batch.of([(None, obs(i), [inc()]) for i in range(3000)])
    big.set_scan(scan_id)
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full") as failed:
        ingestion.add(big)
        ingestion.commit()
    assert failed.value.sqlite_errorname == "SQLITE_FULL"
    assert not store.db.conn.in_transaction
    store.db.execute("PRAGMA max_page_count = 1073741823")
    assert store.ingest(scan_id, [(obs(i), [inc()]) for i in range(5)]).stored == 5
    assert store.db.execute("SELECT count(*) FROM obs_rows").fetchone()[0] == 5


def test_an_ingestion_aborted_while_its_insert_runs_keeps_nothing(tmp_path):
    """Aborted right after a batch is added (its rows being inserted): the abort waits for
    the insert, then rolls back; nothing kept, and the same batch stored whole after."""
    store = Store(tmp_path / "s.db")
    scan_id = store.start_scan(["a.log"], {})
    ingestion = store.ingestion(scan_id, roll_up=True)
    batches = _batches(scan_id)
    ingestion.add(batches[0])
    ingestion.abort()
    assert not store.db.conn.in_transaction
    assert store.db.execute("SELECT count(*) FROM obs_rows").fetchone()[0] == 0
    assert store.ingest_batches(scan_id, batches[:1]).stored == 300


_ROLLUPS = ("obs_rollup", "obs_monthly", "obs_hourly", "obs_context_totals", "obs_dests")


def _ingested(store: Store, rolling: bool, scan_id: int | None = None) -> Ingestion:
    """An ingestion (of a new scan, or of ``scan_id``) holding :func:`_batches`, uncommitted."""
    if scan_id is None:
        scan_id = store.start_scan(["a.log"], {})
    ingestion = store.ingestion(scan_id, roll_up=rolling)
    for batch in _batches(scan_id):
        ingestion.add(batch)
    return ingestion


def test_the_last_fold_runs_beside_the_incident_rows_and_sums_the_same(tmp_path):
    """A rolling ingestion's commit folds its roll-ups in a thread of its own (SQL, the GIL
    released) while the incident rows are built: the roll-ups, incidents and mark are those
    of the same batches stored, then rolled up on their own afterwards."""
    got = []
    for name, rolling in (("beside", True), ("after", False)):
        store = Store(tmp_path / f"{name}.db")
        threads: list[int] = []
        store.db.conn.create_function("noted", 1, lambda x, threads=threads: threads.append(threading.get_ident()) or x)  # fmt: skip
        store.db.execute("CREATE TEMP TRIGGER t AFTER INSERT ON obs_monthly BEGIN"
                         " SELECT noted(new.requests); END")  # fmt: skip
        result = _ingested(store, rolling).commit()
        if not rolling:
            store.roll_up()
        tables = _tables(store)
        tables.update({t: store.db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()  # noqa: S608
                       for t in (*_ROLLUPS, "incident_texts", "meta")})  # fmt: skip
        got.append((tables, result.new_incidents, sorted(result.finding_requests.items())))
        assert threads and (threading.get_ident() in threads) != rolling
        store.close()
    assert got[0] == got[1] and got[0][0]["obs_monthly"] and len(got[0][0]["incident_rows"]) == 2


def test_a_fold_that_fails_beside_the_incident_rows_keeps_nothing(tmp_path):
    """The fold fails in its thread (a trigger aborts it) while the incident rows are built:
    the commit raises SQLite's error in the caller's thread, nothing of the transaction is
    kept, and the store stores the same batches once the cause is gone."""
    store = Store(tmp_path / "s.db")
    store.db.execute("CREATE TEMP TRIGGER t BEFORE INSERT ON obs_monthly BEGIN"
                     " SELECT RAISE(ABORT, 'no monthly rows'); END")  # fmt: skip
    scan_id = store.start_scan(["a.log"], {})
    with pytest.raises(sqlite3.IntegrityError, match="no monthly rows"):
        _ingested(store, True, scan_id).commit()
    assert not store.db.conn.in_transaction
    for table in ("obs_rows", "incident_rows", "incident_texts", *_ROLLUPS):
        assert store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0  # noqa: S608
    store.db.execute("DROP TRIGGER temp.t")
    assert _ingested(store, True, scan_id).commit().stored == 590
    assert store.db.execute("SELECT sum(requests) FROM obs_monthly").fetchone()[0] == 590
    store.close()


def _many_incidents(scan_id: int) -> list[Batch]:
    """Two batches of rows of 40 incidents, each linked to its rows (hit links)."""
    made = []
    for first, n in ((0, 200), (200, 120)):
        batch = Batch.of([(None, obs(i), [inc(f"n{i % 40}")]) for i in range(first, first + n)])
        batch.set_scan(scan_id)
        made.append(batch)
    return made


def _writes_noted(store: Store) -> list[tuple[str, bool]]:
    """The tables that ``store`` writes the roll-ups' monthly rows, hit packs and incident
    rows into, in the order of the writes, each with whether the caller's thread wrote it
    (temp triggers: this connection's)."""
    writes: list[tuple[str, bool]] = []
    caller = threading.get_ident()

    def noted(table: str) -> None:
        writes.append((table, threading.get_ident() == caller))

    store.db.conn.create_function("noted", 1, noted)
    for table in ("obs_monthly", "hit_packs", "incident_rows"):
        store.db.execute(f"CREATE TEMP TRIGGER noted_{table} AFTER INSERT ON {table}"
                         f" BEGIN SELECT noted('{table}'); END")  # fmt: skip
    return writes


@pytest.mark.parametrize("rolling", [True, False])
def test_hit_links_are_packed_while_the_incident_rows_are_inserted_and_go_after_them(
        tmp_path, monkeypatch, rolling):  # fmt: skip
    """At a transaction's end the hit links are packed once the new incident rows are built
    (while they are inserted in a thread) and inserted after them, by the caller, after
    the roll-ups folded aside: the database is the same whether the new rows go a row at
    a time or all at once."""
    from monitor import store as store_module

    got = []
    for chunk in (1, 10**6):
        monkeypatch.setattr(store_module, "_INCIDENT_CHUNK", chunk)
        store = Store(tmp_path / f"s{chunk}.db")
        scan_id = store.start_scan(["a.log"], {})
        writes = _writes_noted(store)
        ingestion = store.ingestion(scan_id, roll_up=rolling)
        for batch in _many_incidents(scan_id):
            ingestion.add(batch)
        result = ingestion.commit()
        tables = [t for t, _ in writes]
        assert tables.count("hit_packs") == 40 and tables.count("incident_rows") == 40
        assert ("obs_monthly" in tables) == rolling
        assert tables[-40:] == ["hit_packs"] * 40  # after the fold and the incident rows
        assert all(caller == (t == "hit_packs") for t, caller in writes if t != "incident_rows")
        got.append((_tables(store), {t: store.db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()  # noqa: S608
                                     for t in (*_ROLLUPS, "hit_packs", "incident_texts")},
                    result.new_incidents))  # fmt: skip
        store.close()
    assert got[0] == got[1]
    assert len(got[0][0]["incident_rows"]) == 40 and len(got[0][0]["hit_links"]) == 320


def test_hit_links_that_fail_beside_the_incident_rows_keep_nothing(tmp_path):
    """Inserting the hit packs fails (a trigger aborts it) at a transaction's end, while
    the incident rows are built: the commit raises SQLite's error in the caller's thread,
    no thread is left on the connection, nothing of the transaction is kept, and the
    store stores the same batches once the cause is gone."""
    store = Store(tmp_path / "s.db")
    store.db.execute("CREATE TEMP TRIGGER t BEFORE INSERT ON hit_packs BEGIN"
                     " SELECT RAISE(ABORT, 'no packs'); END")  # fmt: skip
    scan_id = store.start_scan(["a.log"], {})
    ingestion = store.ingestion(scan_id, roll_up=True)
    for batch in _many_incidents(scan_id):
        ingestion.add(batch)
    with pytest.raises(sqlite3.IntegrityError, match="no packs"):
        ingestion.commit()
    assert not store.db.conn.in_transaction
    assert not [t for t in threading.enumerate() if t.name.startswith("apiwatch-")]
    for table in ("obs_rows", "incident_rows", "hit_packs", "incident_texts", *_ROLLUPS):
        assert store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0  # noqa: S608
    store.db.execute("DROP TRIGGER temp.t")
    ingestion = store.ingestion(scan_id, roll_up=True)
    for batch in _many_incidents(scan_id):
        ingestion.add(batch)
    assert ingestion.commit().stored == 320
    assert store.db.execute("SELECT count(*) FROM hit_links").fetchone()[0] == 320
    store.close()


def _committed(path: Path) -> tuple[int, int]:
    """Rows committed in the database at ``path``, and those of them whose context is not."""
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT count(*), (SELECT count(*) FROM obs_rows WHERE ctx NOT IN"
                           " (SELECT n FROM obs_contexts)) FROM obs_rows").fetchone()  # fmt: skip
    finally:
        con.close()


def _many(scan_id: int, n: int) -> Batch:
    """A batch of ``n`` rows of many clients (long enough to be inserted for a while)."""
    batch = Batch.of([(None, obs(i, client_ip=f"10.{i // 60000}.{i // 250 % 240}.{i % 250}"),
                       [inc("i1" if i % 3 else "i2")]) for i in range(n)])  # fmt: skip
    batch.set_scan(scan_id)
    return batch


def _no_insert_threads() -> None:
    while any(t.name == "apiwatch-insert" for t in threading.enumerate()):
        time.sleep(0.01)


class _InterruptedStart(threading.Thread):
    """A Ctrl-C while ``start`` waits for the new thread to say it runs (raised after the
    thread was launched; until it runs, ``Thread.is_alive`` is False)."""

    def start(self) -> None:
        wait = self._started.wait  # type: ignore[attr-defined]

        def interrupted(timeout: float | None = None) -> bool:
            self._started.wait = wait  # type: ignore[attr-defined]
            raise KeyboardInterrupt

        self._started.wait = interrupted  # type: ignore[attr-defined]
        super().start()


class _InterruptedWait(threading.Event):
    """An event whose first wait is interrupted (a Ctrl-C while the caller waits)."""

    def wait(self, timeout: float | None = None) -> bool:
        if not getattr(self, "interrupted", False):
            self.interrupted = True
            raise KeyboardInterrupt
        return super().wait(timeout)


def test_a_ctrl_c_as_the_insert_thread_starts_keeps_nothing(tmp_path, monkeypatch):
    """Interrupted inside ``Thread.start`` (the insert's thread launched): the abort waits
    for the thread's steps (or cancels them) before it rolls back, so no row is committed
    on its own after the ROLLBACK (the reviewer's reproducer committed all 20,000, their
    contexts rolled back)."""
    from monitor import sqlbind

    path = tmp_path / "s.db"
    store = Store(path)
    scan_id = store.start_scan(["a.log"], {})
    ingestion = store.ingestion(scan_id)
    monkeypatch.setattr(sqlbind, "threading", SimpleNamespace(Thread=_InterruptedStart,
                                                              Event=threading.Event))
    with pytest.raises(KeyboardInterrupt):
        ingestion.add(_many(scan_id, 20000))
    _no_insert_threads()
    assert not store.db.conn.in_transaction
    assert _committed(path) == (0, 0)


def test_a_ctrl_c_while_the_insert_is_waited_for_keeps_nothing(tmp_path, monkeypatch):
    """Interrupted while the caller waits for the insert (``settle``): the wait goes on
    until the steps end, the interrupt is raised after, and the abort rolls everything
    back (3.11's ``Thread.join``, interrupted, marked a running thread stopped: the abort
    then rolled back under the steps, which committed the rest of the batch row by row)."""
    from monitor import sqlbind

    path = tmp_path / "s.db"
    store = Store(path)
    scan_id = store.start_scan(["a.log"], {})
    ingestion = store.ingestion(scan_id)
    monkeypatch.setattr(sqlbind, "threading", SimpleNamespace(Thread=threading.Thread,
                                                              Event=_InterruptedWait))
    ingestion.add(_many(scan_id, 60000))
    with pytest.raises(KeyboardInterrupt):
        ingestion.settle()
    _no_insert_threads()
    assert not store.db.conn.in_transaction
    assert _committed(path) == (0, 0)


def _incident_tables(path: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()  # noqa: S608
                for t in ("incident_rows", "incident_texts", "incident_facts")}  # fmt: skip
    finally:
        con.close()


def _new_incidents(store: Store, scan_id: int, first: int, n: int) -> None:
    """One transaction of ``n`` observations, each its own new incident: titles and facts
    new every few rows, so that their entries are looked up between chunks."""
    store.ingest(scan_id, [
        (obs(i), [{**inc(f"n{i}"), "title": f"t{i // 4}", "facts": {"k": [i // 6]}}])
        for i in range(first, first + n)
    ])  # fmt: skip


@pytest.mark.parametrize("bound_in_c", [True, False])
def test_new_incidents_inserted_a_chunk_at_a_time_make_the_same_rows(tmp_path, monkeypatch,
                                                                     bound_in_c):  # fmt: skip
    """New incident rows are inserted a chunk at a time, each while the next is built
    (their texts' and facts' entries looked up in between, on the connection the insert
    runs on): the rows, texts and facts are those one statement for all of them makes, in
    C (in a thread) or through Python's sqlite3, for a first transaction and a later one."""
    from monitor import sqlbind
    from monitor import store as store_module

    if not bound_in_c:
        monkeypatch.setattr(sqlbind, "_ACCEL", None)
    elif sqlbind._ACCEL is None:
        pytest.skip("monitor._sqlbind not built")
    tables = []
    for chunk in (3, 10**6):
        monkeypatch.setattr(store_module, "_INCIDENT_CHUNK", chunk)
        store = Store(tmp_path / f"s{chunk}.db")
        scan_id = store.start_scan(["a.log"], {})
        _new_incidents(store, scan_id, 0, 40)
        _new_incidents(store, scan_id, 40, 11)
        store.close()
        tables.append(_incident_tables(tmp_path / f"s{chunk}.db"))
    assert tables[0] == tables[1]
    assert len(tables[0]["incident_rows"]) == 51 and len(tables[0]["incident_texts"]) > 13


def test_a_chunk_of_incidents_that_fails_keeps_nothing_of_the_transaction(tmp_path,
                                                                          monkeypatch):  # fmt: skip
    """An error inserting a chunk of new incidents (here a trigger's, on the second chunk,
    while the third is built) is raised by the ingest, which rolls back all it stored once
    the steps under way have ended; the store then ingests as before."""
    from monitor import store as store_module

    monkeypatch.setattr(store_module, "_INCIDENT_CHUNK", 4)
    path = tmp_path / "s.db"
    store = Store(path)
    scan_id = store.start_scan(["a.log"], {})
    store.db.conn.execute("CREATE TRIGGER no_n5 BEFORE INSERT ON incident_rows"
                          " WHEN NEW.id = 'n5' BEGIN SELECT RAISE(ABORT, 'no n5'); END")  # fmt: skip
    with pytest.raises(sqlite3.IntegrityError, match="no n5"):
        _new_incidents(store, scan_id, 0, 12)
    _no_insert_threads()
    assert not store.db.conn.in_transaction
    assert _committed(path) == (0, 0)
    assert _incident_tables(path)["incident_rows"] == []
    store.db.conn.execute("DROP TRIGGER no_n5")
    _new_incidents(store, scan_id, 0, 12)
    store.close()
    assert _committed(path) == (12, 0) and len(_incident_tables(path)["incident_rows"]) == 12


def test_a_transaction_reads_back_only_the_incidents_stored_before_it(tmp_path, monkeypatch):
    """The incidents a transaction numbers as new are not looked up in the database when it
    stores them (a scan's thousands): only those stored before are read back, and they
    grow as before."""
    path = tmp_path / "s.db"
    store = Store(path)
    scan_id = store.start_scan(["a.log"], {})
    _new_incidents(store, scan_id, 0, 5)
    store.close()
    store = Store(path)  # remembers nothing: the stored ones are read back
    asked: list[str] = []
    read_back = Store._evidence_of
    monkeypatch.setattr(Store, "_evidence_of",
                        lambda self, ids: asked.extend(ids) or read_back(self, ids))  # fmt: skip
    result = store.ingest(scan_id, [(obs(i), [inc(f"n{i % 8}")]) for i in range(10, 26)])
    store.close()
    assert sorted(asked) == [f"n{i}" for i in range(5)]
    assert result.new_incidents == {"n5", "n6", "n7"}
    counts = dict(sqlite3.connect(path).execute("SELECT id, count FROM incident_rows"))
    assert counts == {**{f"n{i}": 3 for i in range(5)}, **{f"n{i}": 2 for i in range(5, 8)}}
