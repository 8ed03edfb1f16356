"""The end of a scan's transaction (``Ingestion.commit``): the roll-ups folded (a first
scan's sums inserted as its roll-ups, the monthly ones added a roll-up row at a time) while
the incident rows are built, on real SQLite files, against references computed apart."""

from __future__ import annotations

import random
import sqlite3
import sys
import threading

import pytest

from monitor import store as store_module
from monitor.observation import MAX_SUM
from monitor.store import Store
from tests.test_batch import _batches_of, _records, _roll_ups
from tests.test_durability import run_ok
from tests.test_rollup_rows import DAY, _from_scratch, _squid_log

_MONTHLY = "SELECT * FROM obs_monthly ORDER BY month, client, dest"


def _monthly_of_rollup(con: sqlite3.Connection) -> list[tuple]:
    """The monthly roll-ups as summing ``obs_rollup`` in Python makes them: per UTC month,
    client and destination (a context's, numbered in ``obs_dests``), the requests summed,
    the bytes summed (None when all are, at most MAX_SUM) and the least URL."""
    dest_of = dict(con.execute(
        f"SELECT c.n, d.n FROM obs_contexts c JOIN obs_dests d ON d.key = {store_module._DEST_KEY}"  # noqa: S608
    ).fetchall())  # fmt: skip
    month_of = dict(con.execute("SELECT n, substr(day, 1, 7) FROM obs_contexts").fetchall())
    sums: dict[tuple, list] = {}
    for ctx, client, requests, sent, received, url in con.execute(
        "SELECT ctx, client, requests, bytes_out, bytes_in, url FROM obs_rollup ORDER BY 1, 2"
    ):
        row = sums.setdefault((month_of[ctx], client, dest_of[ctx]), [0, None, None, None])
        row[0] += requests
        for k, value in ((1, sent), (2, received)):
            if value is not None:
                row[k] = min((row[k] or 0) + value, MAX_SUM)
        if url is not None and (row[3] is None or url < row[3]):
            row[3] = url
    return [(*key, *row) for key, row in sorted(sums.items())]


def _same(a: list[tuple], b: list[tuple]) -> bool:
    """Equal rows, value for value of the same type (SQLite's 5 and 5.0 compare equal)."""
    return a == b and all(
        type(x) is type(y) for r, s in zip(a, b, strict=True) for x, y in zip(r, s, strict=True)
    )


def test_a_scans_monthly_roll_ups_sum_its_roll_up_rows(tmp_path):
    """Real scans through the CLI: a first one into a new database, then a second whose
    rows fall in the same month (their monthly rows meet the stored ones) and the next:
    the monthly roll-ups are those summing the roll-up rows apart makes, types included."""
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    _squid_log(logs[0], 20_000, 11)
    _squid_log(logs[1], 12_000, 12, start=DAY + 86400 * 3.5)  # 2026-11-30 to 2026-12-02
    db = tmp_path / "monthly.db"
    months = []
    for log in logs:
        run_ok(db, "scan", str(log), "--egress-country", "CN", "--json")
        con = sqlite3.connect(db)
        try:
            monthly = con.execute(_MONTHLY).fetchall()
            assert len(monthly) > 50 and _same(monthly, _monthly_of_rollup(con))
            months.append({r[0] for r in monthly})
        finally:
            con.close()
    assert months == [{"2026-11"}, {"2026-11", "2026-12"}]


def test_monthly_roll_ups_saturate_and_keep_nulls_as_sum_would(tmp_path):
    """Roll-up rows whose bytes add up past 64 bits, or are all unknown, made into the
    monthly roll-ups again (as a prune does): the sums stop at MAX_SUM and stay NULL where
    every one is, whatever the order the rows meet their monthly row in."""
    log, db = tmp_path / "a.log", tmp_path / "a.db"
    _squid_log(log, 8_000, 13)
    run_ok(db, "scan", str(log), "--egress-country", "CN", "--json")
    con = sqlite3.connect(db, isolation_level=None)
    try:
        rows = con.execute("SELECT ctx, client FROM obs_rollup ORDER BY 1, 2").fetchall()
        big = rows[::3]
        con.executemany("UPDATE obs_rollup SET bytes_out = ? WHERE ctx = ? AND client = ?",
                        [(MAX_SUM - k, ctx, client) for k, (ctx, client) in enumerate(big)])  # fmt: skip
        con.execute("UPDATE obs_rollup SET bytes_in = NULL WHERE client % 2 = 0")
        con.execute("BEGIN")
        store_module._remonth(con, "0000-00-00")
        con.execute("COMMIT")
        monthly = con.execute(_MONTHLY).fetchall()
        assert _same(monthly, _monthly_of_rollup(con))
    finally:
        con.close()
    assert sum(r[4] == MAX_SUM for r in monthly) > 5
    assert any(r[5] is None for r in monthly) and any(r[5] is not None for r in monthly)


def _folds(store: Store) -> list[str]:
    """How ``store``'s folds add roll-up rows to ``obs_rollup`` (traced by SQLite as it runs
    them, in the thread aside too): "sums" inserted straight, "rolled" from ``temp.rolled``."""
    seen: list[str] = []

    def trace(sql: str) -> None:
        if sql.startswith("INSERT INTO obs_rollup") and "VALUES" in sql:
            seen.append("sums")
        elif sql.startswith("INSERT INTO obs_rollup") and "FROM temp.rolled" in sql:
            seen.append("rolled")

    store.db.conn.set_trace_callback(trace)
    return seen


@pytest.mark.usefixtures("every_batch")
def test_a_first_transaction_stores_its_sums_as_the_roll_ups(tmp_path):
    """A new database's first rolling transaction whose batches all came with roll-up rows
    inserts their sums as the roll-ups; one that also summed stored rows (a batch without
    roll-up rows), or a later one (roll-ups stored), adds them through ``temp.rolled``:
    each leaves the roll-ups one roll-up from scratch makes of the rows."""
    records = _records(500, random.Random(41))
    seen = {}
    for name, bare in (("sums", None), ("mixed", 3)):
        db = tmp_path / f"{name}.db"
        store = Store(db)
        store.start_scan([], {})
        folds, seen[name] = _folds(store), []
        for part in (records[:300], records[280:]):
            ingestion = store.ingestion(1, roll_up=True)
            for k, batch in enumerate(_batches_of(part, 40)):
                if k == bare:
                    batch.rollup = None
                ingestion.add(batch)
            ingestion.commit()
            seen[name].append(set(folds))
            folds.clear()
        rolled = _roll_ups(store)
        store.close()
        assert rolled == _from_scratch(db, tmp_path)
    assert seen == {"sums": [{"sums"}, {"rolled"}], "mixed": [{"rolled"}, {"rolled"}]}


def test_the_fold_hands_the_gil_over_sooner_and_restores_the_switch_interval(tmp_path, monkeypatch):
    """While a scan's last fold runs aside, beside the incident rows built in Python, the
    interpreter's switch interval is the short one (each statement the fold steps waits to
    take the GIL back up to an interval); the commit restores the caller's."""
    fold, during = store_module._fold, []

    def folding(*args, **kwargs):
        during.append(sys.getswitchinterval())
        return fold(*args, **kwargs)

    monkeypatch.setattr(store_module, "_fold", folding)
    before = sys.getswitchinterval()
    store = Store(tmp_path / "gil.db")
    store.start_scan([], {})
    ingestion = store.ingestion(1, roll_up=True)
    for batch in _batches_of(_records(200, random.Random(43)), 50):
        ingestion.add(batch)
    result = ingestion.commit()
    store.close()
    assert result.new_incidents and during == [pytest.approx(store_module._ASIDE_SWITCH)]
    assert sys.getswitchinterval() == before != store_module._ASIDE_SWITCH


def test_handovers_that_overlap_restore_the_interval_once_the_last_ends():
    """Two stores handing over at once (threads of one process): the interval is the short
    one until the last is done, then the one before the first, also after an error."""
    before, seen = sys.getswitchinterval(), []
    first_in, second_out = threading.Event(), threading.Event()

    def first() -> None:
        with store_module._handing_over():
            first_in.set()
            second_out.wait(10)
            seen.append(sys.getswitchinterval())

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with pytest.raises(RuntimeError), store_module._handing_over():
        seen.append(sys.getswitchinterval())
        raise RuntimeError("the second store's commit fails")
    seen.append(sys.getswitchinterval())
    second_out.set()
    thread.join(10)
    assert seen == [pytest.approx(store_module._ASIDE_SWITCH)] * 3
    assert sys.getswitchinterval() == before
