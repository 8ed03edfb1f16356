"""A big database's quick check runs beside the scan, on its own connection (issue 15):
nothing is committed before its verdict; a sound database then holds exactly what a scan
checked first stores; a damaged one is refused and left as it was."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

import monitor.store as store_module
from monitor.app import App, Settings
from monitor.collectors import CollectOptions
from monitor.egress import EgressOptions
from monitor.store import Ingestion, StoreError

HOSTS = ("api.openai.com", "api.anthropic.com", "github.com", "api.deepseek.com")


def squid_log(path: Path, start: int, count: int) -> Path:
    path.write_text(
        "".join(
            f"{1795741200 + i * 0.5:.3f} {i % 900 + 1:6d} 10.20.{i % 7}.{i % 50 + 1} TCP_TUNNEL/200 "
            f"{i % 9000 + 100} CONNECT {HOSTS[i % len(HOSTS)]}:443 - HIER_DIRECT/1.2.3.4 -\n"
            for i in range(start, start + count)
        )
    )
    return path


def scan(db: Path, log: Path, jobs: int = 1) -> None:
    app = App(Settings(db=db))
    try:
        app.scan([str(log)], EgressOptions(egress_country="CN"), CollectOptions(format="squid"),
                 jobs=jobs)  # fmt: skip
    finally:
        app.close()


def outside(db: Path, sql: str) -> list[tuple]:
    """What another connection sees (committed data only)."""
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def stored(db: Path) -> dict[str, list[tuple]]:
    return {
        "observations": outside(db, "SELECT * FROM observations ORDER BY id"),
        "incidents": outside(db, "SELECT * FROM incidents ORDER BY id"),
        "hits": outside(db, "SELECT * FROM hits ORDER BY incident_id, observation_id"),
        "findings": outside(db, "SELECT id, status, severity FROM findings ORDER BY id"),
        "sources": outside(db, "SELECT key, size, offset, lines FROM sources ORDER BY key"),
        "scans": outside(db, "SELECT records, llm_observations, stored, incidents_new FROM scans"),
    }


@pytest.fixture
def logs(tmp_path):
    return squid_log(tmp_path / "1.log", 0, 3000), squid_log(tmp_path / "2.log", 3000, 3000)


@pytest.mark.parametrize("jobs", [1, 2])
def test_nothing_is_committed_before_the_verdict(tmp_path, logs, monkeypatch, jobs):
    first, second = logs
    db, ref = tmp_path / "aside.db", tmp_path / "first.db"
    for path in (db, ref):
        scan(path, first)
    scan(ref, second, jobs)  # checked first, as below CHECK_ASIDE_FROM
    before = outside(db, "SELECT (SELECT count(*) FROM scans), (SELECT count(*) FROM obs_rows)")

    monkeypatch.setattr(store_module, "CHECK_ASIDE_FROM", 0)
    gate, started, seen = threading.Event(), threading.Event(), []
    quick_check = store_module._quick_check

    def held_check(conn):  # the check runs until the scan has "committed" its data
        started.set()
        assert threading.current_thread() is not threading.main_thread()
        assert gate.wait(60)
        return quick_check(conn)

    commit = Ingestion.commit

    def seen_commit(self, source=None):
        result = commit(self, source)
        seen.append(outside(db, "SELECT (SELECT count(*) FROM scans), "
                                "(SELECT count(*) FROM obs_rows)"))  # fmt: skip
        gate.set()
        return result

    monkeypatch.setattr(store_module, "_quick_check", held_check)
    monkeypatch.setattr(Ingestion, "commit", seen_commit)
    scan(db, second, jobs)
    assert started.is_set() and seen and seen[0] == before  # held: not even the scan's row
    assert stored(db) == stored(ref)  # committed at the verdict: all of it


def test_a_damaged_database_is_refused_and_left_as_it_was(tmp_path, logs, monkeypatch):
    first, second = logs
    db = tmp_path / "d.db"
    scan(db, first)
    with sqlite3.connect(db) as con:  # fold the WAL in, then overwrite a page in the middle
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    pages = db.stat().st_size // 4096
    with open(db, "r+b") as f:
        f.seek((pages // 2) * 4096)
        f.write(bytes(range(256)) * 16)
    before = db.read_bytes()
    monkeypatch.setattr(store_module, "CHECK_ASIDE_FROM", 0)
    with pytest.raises(StoreError) as refused:
        scan(db, second, 2)
    message = str(refused.value)
    assert message.startswith(f"{db}: ") and f"run `apiwatch --db {db} db check`" in message
    assert db.read_bytes() == before  # nothing added, not even the scan's row


def test_the_verdict_of_a_sound_database_is_kept_for_the_next_scan(tmp_path, logs, monkeypatch):
    """``daily`` scans several inputs with one App: the database is checked once."""
    first, second = logs
    db = tmp_path / "a.db"
    scan(db, first)
    monkeypatch.setattr(store_module, "CHECK_ASIDE_FROM", 0)
    checks = []
    quick_check = store_module._quick_check
    monkeypatch.setattr(store_module, "_quick_check", lambda conn: checks.append(1) or
                        quick_check(conn))  # fmt: skip
    app = App(Settings(db=db))
    try:
        for log in (first, second):
            app.scan([str(log)], EgressOptions(egress_country="CN"),
                     CollectOptions(format="squid"), jobs=1)  # fmt: skip
    finally:
        app.close()
    assert checks == [1]
    assert outside(db, "SELECT count(*) FROM scans") == [(3,)]


def test_the_log_is_copied_into_the_file_beside_the_scan(tmp_path, logs):
    """checkpoint_aside: what was committed reaches the database file itself (read here
    while ignoring the log) before the store is closed, and closing ends the log."""
    from monitor.store import Store

    first, _ = logs
    db = tmp_path / "c.db"
    scan(db, first)
    committed = outside(db, "SELECT count(*) FROM obs_rows")
    store = Store(db)
    try:
        with store._tx():  # something new in the log, committed
            store.db.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
        file_only = f"{db.resolve().as_uri()}?mode=ro&immutable=1"
        assert sqlite3.connect(file_only, uri=True).execute(
            "SELECT count(*) FROM meta WHERE key = 'x'").fetchall() == [(0,)]  # fmt: skip
        store.checkpoint_aside()
        store._checkpointer.join()
        con = sqlite3.connect(file_only, uri=True)
        assert con.execute("SELECT count(*) FROM meta WHERE key = 'x'").fetchall() == [(1,)]
        assert con.execute("SELECT count(*) FROM obs_rows").fetchall() == committed
        con.close()
    finally:
        store.close()
    assert not db.with_name(db.name + "-wal").exists()
