"""Hit links kept as packs (``hit_packs``, schema step 14; ``hit_links`` their view): what
the store's links were as one row per link, they are as packs, through scans in several
transactions, prunes, re-evaluation and the migration of a database of step 13."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from array import array

import pytest
from click.testing import CliRunner

from monitor import sqlbind
from monitor.batch import PACK_ROWS, LinkPacks, link_packs
from monitor.cli import main
from monitor.store import _SCHEMA, SCHEMA_VERSION, Store, _insert_packs
from tests.test_findings import CLIENTS, HOSTS, squid_line

DAY = 1795392000.0  # 2026-11-23T00:00:00Z

#: what main (links one row per link, schema 13) made of :func:`_story`: hits (count and
#: digest) after each step, and the links ``db prune`` reported deleting
MAIN = {"scanned": (240, "e432484280774ed3"), "pruned": 80, "after prune": (160, "1f1709853f224176"),
        "reevaluated": (400, "0ef814d8a1e4b233"), "pruned again": 200,
        "after the second prune": (200, "7db38b940b6d6b51")}  # fmt: skip


def _logs(tmp) -> list:
    """Five days of requests in two files (days 0-2, 2-4, the second's an hour later in
    the day): two scans, two transactions; day 2's incidents have links of both."""
    paths = []
    for part, days in enumerate(((0, 1, 2), (2, 3, 4))):
        lines = []
        for day in days:
            for n, client in enumerate(CLIENTS[:30]):
                for k, provider in enumerate(HOSTS):
                    if (n + k + day) % 3:
                        ts = DAY + day * 86400 + part * 3600 + n * 60 + k
                        lines.append(squid_line(ts, client, provider, f"u{n}" if n % 2 else None))
        paths.append(tmp / f"access{part}.log")
        paths[-1].write_text("".join(lines))
    return paths


def _run(*args) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output + res.stderr
    return res.stdout


def _hits(db) -> tuple[int, str]:
    """The ``hits`` view's rows: how many, and a digest of them in order."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT incident_id, observation_id FROM hits ORDER BY 1, 2").fetchall()
    con.close()
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def _pruned(db, keep: str) -> int:
    """``db prune --keep``: the links it deleted, as it says."""
    return json.loads(_run("--db", db, "db", "prune", "--keep", keep, "--json"))["hits"]


def _story(tmp) -> dict:
    """Two scans, a prune of the first two days, a re-evaluation under another site
    country, a prune of one more day: the hits after each, and what the prunes deleted."""
    db, cfg = tmp / "s.db", tmp / "c.toml"
    cfg.write_text('[organisation]\nallowed_providers = ["openai"]\n\n[sites.sh]\n'
                   'client_cidrs = ["10.20.0.0/16"]\ncountry = "DE"\n')  # fmt: skip
    for log in _logs(tmp):
        _run("--db", db, "--config", cfg, "scan", log)
    out = {"scanned": _hits(db)}
    out["pruned"] = _pruned(db, "2026-11-25")
    out["after prune"] = _hits(db)
    cfg.write_text(cfg.read_text().replace('"DE"', '"CN"'))
    _run("--db", db, "--config", cfg, "reevaluate", "--json")
    out["reevaluated"] = _hits(db)
    out["pruned again"] = _pruned(db, "2026-11-26")
    out["after the second prune"] = _hits(db)
    return out


def _packs(con: sqlite3.Connection) -> set[tuple[int, int]]:
    """The links of ``hit_packs``, checked as the store keeps them: each pack's first row
    the first of a block, its offsets ascending within the block, no link in two packs,
    ``hit_links`` the same pairs."""
    links: set[tuple[int, int]] = set()
    for incident, first, text in con.execute("SELECT * FROM hit_packs"):
        offsets = json.loads(text)
        assert first % PACK_ROWS == 0 and offsets[0] >= 0 and offsets[-1] < PACK_ROWS
        assert offsets == sorted(set(offsets))
        pack = {(incident, first + o) for o in offsets}
        assert not pack & links
        links |= pack
    assert sorted(links) == con.execute("SELECT * FROM hit_links ORDER BY 1, 2").fetchall()
    return links


def test_scans_prunes_and_reevaluation_keep_the_hits_main_kept(tmp_path):
    """Scans in two transactions, two prunes and a re-evaluation leave the hits (and the
    prunes' counts of links deleted) that main left keeping one row per link; the packs
    stay well formed, the links of one day's incidents in packs of both scans."""
    assert _story(tmp_path) == MAIN
    con = sqlite3.connect(tmp_path / "s.db")
    _packs(con)
    con.close()


def test_scanned_packs_one_per_incident_and_block_whichever_transactions_brought_them(
    tmp_path,
):
    """Two scans (two transactions) keep one pack per incident and block of rows: an
    incident of the day both files hold has one pack, its links from both."""
    db = tmp_path / "s.db"
    for log in _logs(tmp_path):
        _run("--db", db, "scan", log, "--egress-country", "CN")
    con = sqlite3.connect(db)
    links = _packs(con)
    per_incident = dict(con.execute("SELECT incident, count(*) FROM hit_packs GROUP BY 1"))
    con.close()
    assert len(per_incident) == len({k for k, _ in links}) and set(per_incident.values()) == {1}


@pytest.mark.parametrize("accelerated", [True, False])
def test_a_pack_meeting_a_stored_one_merges_into_it(tmp_path, monkeypatch, accelerated):
    """Links inserted as a pack whose incident and block a stored pack has (a transaction
    going on in the block the one before ended in) merge into it: the union of their
    rows, ascending, once each; bound in C or by sqlite3."""
    if not accelerated:
        monkeypatch.setattr(sqlbind, "_ACCEL", None)
    store = Store(tmp_path / "m.db")
    con = store.db.conn
    with store._tx():
        _insert_packs(con, LinkPacks([7, 9], [0, 0], ["[100,102,105]", "[5]"]))
        more = link_packs(array("q", [7, 7, 7, 9, 8]), array("q", [100, 101, 105, 6, 3]))
        _insert_packs(con, more)
    assert con.execute("SELECT * FROM hit_packs ORDER BY 1, 2").fetchall() == [
        (7, 0, "[100,101,102,105]"), (8, 0, "[3]"), (9, 0, "[5,6]")]  # fmt: skip
    assert _packs(con) == {(7, 100), (7, 101), (7, 102), (7, 105), (8, 3), (9, 5), (9, 6)}
    store.close()


def test_unlinking_rows_rewrites_the_packs_holding_them(tmp_path):
    """Rows unlinked (a prune's, a re-evaluation's) leave every other link, each pack that
    held some written again without them (gone when nothing is left), and their count is
    the links that went."""
    from monitor.store import _unlink

    rng = __import__("random").Random(3)
    store = Store(tmp_path / "u.db")
    con = store.db.conn
    pairs = {(rng.randrange(1, 40), rng.randrange(1, 3000)) for _ in range(4000)}
    with store._tx():
        for part in (range(1, 1000), range(1000, 2000), range(2000, 3000)):  # 3 transactions
            inside = [(k, n) for k, n in pairs if n in part]
            _insert_packs(con, link_packs(array("q", [k for k, _ in inside]),
                                          array("q", [n for _, n in inside])))  # fmt: skip
    before = con.execute("SELECT count(*) FROM hit_packs").fetchone()[0]
    firsts = [n for (n,) in con.execute("SELECT first FROM hit_packs")]
    gone = set(rng.sample(range(1, 3000), 900)) | set(firsts[:10]) | set(range(1000, 2000))
    with store._tx():
        removed = _unlink(con, "SELECT value FROM json_each(?)", [json.dumps(sorted(gone))])
    kept = {(k, n) for k, n in pairs if n not in gone}
    assert removed == len(pairs) - len(kept) and _packs(con) == kept
    after = con.execute("SELECT count(*) FROM hit_packs").fetchone()[0]
    assert after == len({k for k, _ in kept}) and before == len({k for k, _ in pairs})
    with store._tx():
        assert _unlink(con, "SELECT value FROM json_each(?)", ["[]"]) == 0
    assert _packs(con) == kept
    store.close()


def test_unlinking_after_a_failed_unlinking_outside_a_transaction_works(tmp_path):
    """A call that fails outside a transaction leaves its work tables (nothing takes them
    away); the next call works all the same."""
    from monitor.store import _unlink

    store = Store(tmp_path / "f.db")
    con = store.db.conn
    with store._tx():
        _insert_packs(con, link_packs(array("q", [1, 1, 2]), array("q", [5, 6, 5])))
    with pytest.raises(sqlite3.OperationalError, match="no such column"):
        _unlink(con, "SELECT nope", [])
    assert con.execute("SELECT count(*) FROM temp.sqlite_master").fetchone()[0] > 0
    with store._tx():
        assert _unlink(con, "SELECT value FROM json_each(?)", ["[5]"]) == 2
    assert _packs(con) == {(1, 6)}
    assert con.execute("SELECT count(*) FROM temp.sqlite_master").fetchone()[0] == 0
    assert con.execute("PRAGMA threads").fetchone()[0] == 0  # (see _packs_of)
    store.close()


def test_a_database_of_schema_13_migrates_its_links_into_packs(tmp_path):
    """A database whose links are rows (schema step 13) opened: its links become packs
    (one per incident), the same hits; its schema is a new database's."""
    db = tmp_path / "old.db"
    for log in _logs(tmp_path):
        _run("--db", db, "scan", log, "--egress-country", "CN")
    hits = _hits(db)
    con = sqlite3.connect(db, isolation_level=None)
    pairs = con.execute("SELECT * FROM hit_links ORDER BY 1, 2").fetchall()
    con.executescript(  # back to step 13: the table of pairs (as step 10 made it)
        "BEGIN; DROP VIEW hits; DROP VIEW hit_links; DROP TABLE hit_packs;"
        "CREATE TABLE links (incident INTEGER NOT NULL, obs INTEGER NOT NULL,"
        " PRIMARY KEY (incident, obs)) WITHOUT ROWID; ALTER TABLE links RENAME TO hit_links;"
        "CREATE VIEW hits AS SELECT i.id AS incident_id, o.id AS observation_id"
        " FROM hit_links l JOIN incident_rows i ON i.n = l.incident"
        " JOIN obs_rows o ON o.n = l.obs; PRAGMA user_version = 13; COMMIT"
    )
    con.executemany("INSERT INTO hit_links VALUES (?, ?)", pairs)
    assert con.execute("SELECT count(*) FROM hits").fetchone()[0] == hits[0] > 100
    con.close()
    Store(db).close()
    assert _hits(db) == hits
    con = sqlite3.connect(db)
    assert sorted(_packs(con)) == pairs
    assert con.execute("SELECT count(DISTINCT incident) = count(*) FROM hit_packs").fetchone()[0]
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    schema = {r[0] for r in con.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")}
    con.close()
    assert {s for s in _SCHEMA if s.startswith(("CREATE TABLE hit", "CREATE VIEW hit"))} <= schema
