"""Roll-up rows made by the producers (:class:`monitor.batch.Rollup`) are what SQL makes of
the rows they stand for: each roll-up table a scan (or a rolling transaction) leaves is the
one a roll-up from scratch over the committed rows makes, on real SQLite files."""

from __future__ import annotations

import pickle
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from monitor import store as store_module
from monitor.batch import (
    ROW_FIELDS,
    ROW_ID,
    ROW_IN,
    ROW_OUT,
    ROW_TS,
    ROW_URL,
    RollupSums,
    rollup_of,
)
from monitor.store import Store
from tests.test_batch import ROLL_UPS, _batches_of, _records, _roll_ups, _tables
from tests.test_durability import committed, kill_once_writing, run_ok, stored

ROOT = Path(__file__).resolve().parent.parent
DAY = 1795737600  # 2026-11-27T00:00:00Z
#: how a scan in a child process makes roll-up rows of every batch, however many it makes
#: (small test files have few requests per client; see batch._SPARSE)
EVERY_BATCH = "import monitor.batch as b\nb._SPARSE = 1.0\n"


def _from_scratch(db: Path, tmp: Path) -> dict[str, list]:
    """The roll-up tables (and mark) that SQL makes of ``db``'s committed rows: a copy with
    its roll-ups emptied, rolled up again by :meth:`Store.roll_up` (``obs_dests`` kept, so
    that destinations keep their numbers)."""
    copy = tmp / f"scratch-{db.stem}.db"
    copy.unlink(missing_ok=True)
    src, dst = sqlite3.connect(db), sqlite3.connect(copy)
    try:
        src.backup(dst)
        dst.executescript(
            "DELETE FROM obs_rollup; DELETE FROM obs_hourly; DELETE FROM obs_monthly;"
            " DELETE FROM obs_context_totals;"
            " UPDATE meta SET value = '0' WHERE key = 'rolled_up_to';"
        )
    finally:
        src.close()
        dst.close()
    store = Store(copy)
    try:
        store.roll_up()
        return _roll_ups(store)
    finally:
        store.close()


def _rolled(db: Path) -> dict[str, list]:
    store = Store(db)
    try:
        return _roll_ups(store)
    finally:
        store.close()


def _sql_of(db: Path, rows: list[tuple]) -> tuple[list, list]:
    """What SQL's GROUP BY makes of rows (ctx, client, ts, bytes_out, bytes_in, url) stored
    in a real file: the roll-up and hourly rows."""
    con = sqlite3.connect(db)
    try:
        con.execute(
            "CREATE TABLE o (ctx INTEGER NOT NULL, client INTEGER NOT NULL, ts REAL NOT NULL,"
            " bytes_out INTEGER, bytes_in INTEGER, url TEXT)"
        )
        con.executemany("INSERT INTO o VALUES (?, ?, ?, ?, ?, ?)", rows)
        rolled = con.execute(
            "SELECT ctx, client, count(*), sum(bytes_out), sum(bytes_in), min(url), min(ts),"
            " max(ts) FROM o GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        hourly = con.execute(
            "SELECT ctx, CAST(ts / 3600 AS INTEGER), count(*), sum(bytes_out), sum(bytes_in)"
            " FROM o GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        return rolled, hourly
    finally:
        con.close()


def _added_up(db: Path, rollup) -> tuple[list, list]:
    """A :class:`Rollup` added up as the store adds it (:class:`RollupSums`, written by
    :func:`store._add_sums`, batch indexes as numbers) in a real file: the roll-up and
    hourly rows."""
    store = Store(db)
    try:
        conn = store.db.conn
        store_module._gathering(conn)
        numbers = list(range(max([*rollup.ctx, *rollup.hour_ctx, *rollup.client]) + 1))
        sums = RollupSums()
        sums.add(rollup, numbers, numbers)
        store_module._add_sums(conn, sums)
        return (
            conn.execute("SELECT * FROM temp.rolled ORDER BY 1, 2").fetchall(),
            conn.execute("SELECT * FROM obs_hourly ORDER BY 1, 2").fetchall(),
        )
    finally:
        store.close()


def _odd_rows(rng: random.Random, n: int) -> tuple[list, int, int]:
    """Columns of ``n`` rows that test SQL's edges: NULL bytes (some, all), URLs (some,
    none; non-ASCII, empty), times across hours and days, before 1970, on hour boundaries
    in or out of order."""
    contexts, clients = rng.randint(1, 5), rng.randint(1, 6)
    base = rng.choice([DAY, DAY - 1, 0, -7200, 3600 * 7])
    ts = [base + rng.choice([rng.uniform(-9000, 90000), 0.0, 3600.0, -3600.0, 1e-7, -1e-7, 0.5])
          for _ in range(n)]  # fmt: skip
    if rng.random() < 0.5:
        ts.sort()
    columns: list = [[None] * n for _ in ROW_FIELDS]
    columns[ROW_TS] = ts
    columns[ROW_OUT] = rng.choice([[None] * n, [rng.choice([None, rng.randrange(99)]) for _ in ts],
                                   [rng.randrange(1 << 40) for _ in ts]])  # fmt: skip
    columns[ROW_IN] = [rng.choice([None, 0, 2**50 + rng.randrange(9)]) for _ in ts]
    urls = [None, "", "b", "a", "ab", "https://api.openai.com/v1/ü", "z€", "Z"]
    columns[ROW_URL] = rng.choice([[None] * n, [rng.choice(urls) for _ in ts]])
    ctx = [rng.randrange(contexts) for _ in ts]
    client = [rng.randrange(clients) for _ in ts]
    return [columns, ctx, client], contexts, clients


def test_producer_rollup_rows_are_what_sql_makes_of_the_rows(tmp_path, every_batch):
    """Per context and client the requests, sums of bytes (NULL when all are), least URL
    (NULLs passed over) and first and last time, and per context and UTC hour (SQL's
    CAST(ts / 3600 AS INTEGER): truncated, and of the rounded quotient) the requests and
    bytes: as SQLite's GROUP BY makes them, once added up as the store adds them up."""
    rng = random.Random(15)
    for k in range(120):
        (columns, ctx, client), contexts, clients = _odd_rows(rng, rng.randint(1, 80))
        rollup = rollup_of(columns, ctx, client, contexts, clients)
        assert rollup is not None
        travelled = pickle.loads(pickle.dumps(rollup, pickle.HIGHEST_PROTOCOL))
        rows = list(zip(ctx, client, *(columns[c] for c in (ROW_TS, ROW_OUT, ROW_IN, ROW_URL)),
                        strict=True))  # fmt: skip
        want = _sql_of(tmp_path / f"sql{k}.db", rows)
        assert _added_up(tmp_path / f"made{k}.db", travelled) == want
    # before 1970 CAST truncates toward 0 where flooring would not: hours 0 and -1
    columns: list = [[None] * 5 for _ in ROW_FIELDS]
    columns[ROW_TS] = [-3600.5, -3600.0, -3599.5, -1.0, 0.5]
    rollup = rollup_of(columns, [0] * 5, [0] * 5, 1, 1)
    assert rollup is not None and list(rollup.hour) == [-1, 0]
    assert list(rollup.hour_requests) == [2, 3]
    rows = [(0, 0, t, None, None, None) for t in columns[ROW_TS]]
    assert _added_up(tmp_path / "neg.db", rollup) == _sql_of(tmp_path / "neg-sql.db", rows)


@pytest.mark.parametrize(
    ("column", "value"),
    [(ROW_OUT, 1.5), (ROW_IN, 7.0), (ROW_IN, 2**64), (ROW_URL, 42), (ROW_TS, float("inf")),
     (ROW_TS, float("nan")), (ROW_TS, "1795737600"), (ROW_TS, 1e20)],
)  # fmt: skip
def test_values_sqlite_would_store_as_another_type_make_no_rollup_rows(column, value, every_batch):
    """A value that SQLite would store as another type or that its CAST would clip (bytes
    not integers or beyond 64 bits, a URL not text, a time not a finite number or far out of
    range): no roll-up rows, the store sums that batch's rows itself."""
    (columns, ctx, client), contexts, clients = _odd_rows(random.Random(3), 30)
    assert rollup_of(columns, ctx, client, contexts, clients) is not None
    columns[column][7] = value
    assert rollup_of(columns, ctx, client, contexts, clients) is None


@pytest.mark.parametrize("none_first", [True, False])
def test_a_sum_beyond_64_bits_makes_no_rollup_rows_whatever_the_order(none_first, every_batch):
    """Rows whose bytes sum beyond 64 bits in one context, beside a context with no bytes:
    no roll-up rows (the store sums them itself, as SQLite does), with the byte-less
    context's rows first or last."""
    columns: list = [[None] * 8 for _ in ROW_FIELDS]
    columns[ROW_TS] = [1795737600.0 + i for i in range(8)]
    big, none = [2**62] * 4, [None] * 4
    columns[ROW_OUT] = none + big if none_first else big + none
    ctx = [0] * 4 + [1] * 4
    assert rollup_of(columns, ctx, [0] * 8, 2, 1) is None


def _gathers(store: Store) -> list[str]:
    """The statements of ``store``'s connection that sum stored rows for the roll-ups
    (traced by SQLite as it runs them)."""
    seen: list[str] = []
    store.db.conn.set_trace_callback(
        lambda sql: seen.append(sql) if "INSERT INTO temp.rolled SELECT" in sql else None
    )
    return seen


def test_a_rolling_ingestion_adds_what_batches_roll_up_and_sums_only_the_other_rows(
    tmp_path, every_batch
):
    """Batches stored as they came add their roll-up rows, travelled as a producer sends
    them: no row of theirs is read back. The rows of the others (stored before, repeated
    within the batch, without roll-up rows) and those a killed scan left above the mark
    are summed from ``obs_rows``, each range once: the roll-ups, the mark and every table
    are those of a transaction that sums all its rows, and those SQL makes from scratch."""
    records = _records(700, random.Random(31))
    made, summed = Store(tmp_path / "made.db"), Store(tmp_path / "summed.db")
    for store in (made, summed):
        store.start_scan([], {})
        store.ingest_batches(1, _batches_of(records[:120], 40))  # above the mark
    traced = _gathers(made)
    for part in (records[100:400], records[380:700], records[200:260] + records[650:]):
        batches = _batches_of(part, 33)
        if part[0] is records[380]:  # a batch without roll-up rows, one with a repeated id
            batches[2].rollup = None
            batches[4].columns[ROW_ID][3] = batches[4].columns[ROW_ID][2]
        for store in (made, summed):
            ingestion = store.ingestion(1, roll_up=True)
            for k, batch in enumerate(pickle.loads(pickle.dumps(b, -1)) for b in batches):
                if store is summed:
                    batch.rollup = None
                ingestion.add(batch)
                if k % 4 == 3:
                    ingestion.roll_up()
            ingestion.commit()
        assert _roll_ups(made) == _roll_ups(summed) and _tables(made) == _tables(summed)
    made.close()
    assert _rolled(tmp_path / "made.db") == _from_scratch(tmp_path / "made.db", tmp_path)
    # what was summed from rows: in each part, from the mark on, the rows left above it
    # and those of its first batch (some stored before); in the second, the batch without
    # roll-up rows and the one with a repeated id (33 rows, 32 stored); none other
    ranges = [s.split("WHERE o.n > ", 1)[1].split("GROUP BY")[0].split(" AND o.n <= ")
              for s in traced]  # fmt: skip
    assert len([after for after, _ in ranges if not after.isdigit()]) == 3
    assert [int(upto) - int(after) for after, upto in ranges if after.isdigit()] == [33, 32]


def _squid_log(path: Path, lines: int, seed: int, start: float = DAY + 0.5) -> None:
    """A Squid log over two UTC days and many hours: LLM hosts tunnelled (no URL) and in
    plain HTTP (a URL), some of unknown size ("-": NULL bytes)."""
    rng = random.Random(seed)
    hosts = ["api.openai.com", "api.anthropic.com", "openrouter.ai", "example.org"]
    with open(path, "w") as f:
        for i in range(lines):
            ts = start + i * (2 * 86400 / lines)
            host, size = rng.choice(hosts), rng.choice([str(rng.randint(1, 99999))] * 4 + ["-"])
            client = f"10.1.{rng.randint(0, 2)}.{rng.randint(1, 30)}"
            if rng.random() < 0.3:
                req = f"POST http://{host}/v1/{rng.choice(['chat', 'embed', 'ü'])}"
                code = "TCP_MISS/200"
            else:
                req, code = f"CONNECT {host}:443", "TCP_TUNNEL/200"
            f.write(f"{ts:.3f} {rng.randint(1, 999):6d} {client} {code} {size} {req} - "
                    f"HIER_DIRECT/1.2.3.4 -\n")  # fmt: skip


def test_a_scans_roll_ups_are_those_sql_makes_of_its_rows(tmp_path):
    """Real scans through the CLI, in parts across producers and in one process, then a
    second scan on top of the first with an overlapping file (duplicates mixed with new
    rows): each leaves the roll-ups a roll-up from scratch makes of what it stored."""
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    _squid_log(first, 30_000, 1)
    _squid_log(second, 20_000, 2, start=DAY + 86400 * 1.5)
    with open(second, "a") as f, open(first) as old:  # the first's lines again, at its end
        f.writelines(list(old)[-3000:])
    for jobs in ("2", "1"):
        db = tmp_path / f"j{jobs}.db"
        env = ["--egress-country", "CN", "--json", "-j", jobs]
        run = [sys.executable, "-c", f"{EVERY_BATCH}import sys, monitor.scanner as s\n"
               "s.PART_SIZE = s.MIN_PART = 1 << 19\ns.HOLD_PARTS = 2\n"
               "from monitor.cli import main\nmain(sys.argv[1:])\n"]  # fmt: skip
        out = subprocess.run([*run, "--db", str(db), "scan", str(first), *env], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr
        rolled = _rolled(db)
        assert rolled == _from_scratch(db, tmp_path)
        assert len(rolled["obs_hourly"]) > 40 and {r[5] for r in rolled["obs_rollup"]} > {None}
        assert committed(db, "SELECT count(*) FROM obs_rows WHERE bytes_in IS NULL") > 100
        again = run_ok(db, "scan", str(second), *env)
        assert again["duplicates"] > 2000 and again["stored"] > 10_000  # (example.org: not LLM)
        assert _rolled(db) == _from_scratch(db, tmp_path)


def test_a_scan_killed_mid_transaction_leaves_roll_ups_of_exactly_its_committed_rows(tmp_path):
    """``kill -9`` while a scan's transaction holds parts it rolled up: the roll-ups sum
    exactly the committed rows (those a roll-up from scratch makes), and the re-run that
    completes the scan leaves those of all its rows."""
    log = tmp_path / "big.log"
    _squid_log(log, 150_000, 7)
    db = tmp_path / "killed.db"
    script = (f"{EVERY_BATCH}import sys, monitor.scanner as s\ns.PART_SIZE = s.MIN_PART = 1 << 20\n"
              "s.HOLD_PARTS = 3\nfrom monitor.cli import main\nmain(sys.argv[1:])\n")  # fmt: skip
    args = ["--db", str(db), "scan", str(log), "--egress-country", "CN", "--json", "-j", "2"]
    rng, kills = random.Random(5), 0
    for _attempt in range(4):
        for suffix in ("", "-wal", "-shm"):  # a run that finished left all: start again
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        kills += kill_once_writing(proc, lambda: stored(db), rng, 0.4)
        proc.communicate(timeout=60)
        if committed(db, "SELECT count(*) FROM obs_rows"):
            assert _rolled(db) == _from_scratch(db, tmp_path)
        if kills:
            break
    assert kills, "every run finished before it could be killed: make the log bigger"
    run_ok(db, "scan", str(log), "--egress-country", "CN", "--json", "-j", "2")
    assert _rolled(db) == _from_scratch(db, tmp_path)
    assert set(ROLL_UPS) <= set(_rolled(db))


def test_a_batch_of_many_roll_up_rows_per_row_has_none_and_its_rows_are_summed(tmp_path):
    """Rows that make more than one roll-up row for two (few requests per client: handing
    SQLite a roll-up row costs more than its summing a row) make none; such batches' rows
    are summed from ``obs_rows``, and the roll-ups are those SQL makes from scratch."""
    (columns, _, _), _, _ = _odd_rows(random.Random(2), 40)
    sparse = [*range(40)], [0] * 40
    assert rollup_of(columns, *sparse, 40, 1) is None
    assert rollup_of(columns, [0] * 40, [0] * 40, 1, 1) is not None
    records = _records(200, random.Random(6))
    store = Store(tmp_path / "sparse.db")
    store.start_scan([], {})
    batches = _batches_of(records, 20)
    assert any(b.rollup is None for b in batches)
    ingestion = store.ingestion(1, roll_up=True)
    for batch in batches:
        ingestion.add(batch)
    ingestion.commit()
    store.close()
    assert _rolled(tmp_path / "sparse.db") == _from_scratch(tmp_path / "sparse.db", tmp_path)


def test_destinations_are_numbered_in_the_order_of_their_first_context(tmp_path):
    """The monthly roll-ups number a destination (``obs_dests``) when a roll-up first
    meets it, in context order: across a scan's transactions and a second scan, in the
    order of the first context of each (what reading every roll-up row in context order
    makes), and a prune that makes the months again keeps them."""
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    _squid_log(logs[0], 20_000, 3)
    _squid_log(logs[1], 8_000, 4, start=DAY + 86400 * 3)
    db = tmp_path / "dests.db"
    script = ("import sys, monitor.scanner as s\ns.PART_SIZE = s.MIN_PART = 1 << 19\n"
              "s.HOLD_PARTS = 1\nfrom monitor.cli import main\nmain(sys.argv[1:])\n")  # fmt: skip
    for log, country in zip(logs, ("CN", "US"), strict=True):
        out = subprocess.run(
            [sys.executable, "-c", script, "--db", str(db), "scan", str(log), "--json",
             "--egress-country", country], cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
    con = sqlite3.connect(db)
    try:
        numbered = [k for (k,) in con.execute("SELECT key FROM obs_dests ORDER BY n")]
        met = con.execute(
            f"SELECT {store_module._DEST_KEY} FROM obs_contexts c"  # noqa: S608
            " WHERE c.n IN (SELECT ctx FROM obs_rollup) ORDER BY c.n"
        ).fetchall()
    finally:
        con.close()
    assert len(numbered) > 3 and numbered == list(dict.fromkeys(k for (k,) in met))
    rolled = _rolled(db)
    run_ok(db, "db", "prune", "--keep", "2026-11-28", "--json")
    after = _rolled(db)
    assert after["obs_dests"] == rolled["obs_dests"]
    assert after["obs_monthly"] != rolled["obs_monthly"]
    assert after == _from_scratch(db, tmp_path)
