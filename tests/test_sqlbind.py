"""The C accelerator of :func:`monitor.sqlbind.insert_columns` (``monitor/_sqlbind.c``)
against sqlite3's ``executemany`` of the same rows, the reference: the same rows stored,
cell by cell with their SQLite types, the same count of changes, and the same exception
(class, message, SQLite result code and name) leaving the same rows, for any columns, odd
values, conflicts, constraint failures, a read-only database, a full one, a full disk, a
closed connection; and a real scan stores the same database with and without it."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor import accel, sqlbind
from tests.conftest import generated_squid_log

MODULE = "monitor._sqlbind"
built = accel.load(MODULE)
if built is None and os.environ.get("CI") and not os.environ.get(accel.PURE_ENV):
    pytest.fail("the C accelerator was not built (hatch_build.py needs a C compiler)")
pytestmark = pytest.mark.skipif(built is None, reason="C accelerator not built")

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = (
    "CREATE TABLE t (n INTEGER PRIMARY KEY, id INTEGER NOT NULL, a, b REAL, c TEXT, d INTEGER)",
    "CREATE UNIQUE INDEX t_id ON t (id)",
)
INSERT = "INSERT INTO t (id, a, b, c, d) VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING"
TABLE = [7, -3, 2**63 - 1, None, 1.5, "x", 2**64]  # a via's list (of the store's numbers)
I64 = st.integers(-(2**63), 2**63 - 1)
NUMBERS = st.one_of(I64, st.integers(-5, 5))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)


def _database(path: str = ":memory:") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    if not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        for sql in SCHEMA:
            conn.execute(sql)
    return conn


def _stored(conn: sqlite3.Connection) -> list[tuple]:
    """Every cell of ``t`` with its SQLite type (a NaN is no REAL: SQLite stores NULL)."""
    return conn.execute(
        "SELECT n, id, typeof(id), a, typeof(a), b, typeof(b), c, typeof(c), d, typeof(d)"
        " FROM t ORDER BY n"
    ).fetchall()


def _exact(rows: list[tuple]) -> list[tuple]:
    """Rows with each cell as its type and repr: -0.0 is not 0.0, 1 not True (what ``==``
    and SQLite's own ``quote()``, which prints -0.0 as 0.0, would not tell apart)."""
    return [tuple((type(cell).__name__, repr(cell)) for cell in row) for row in rows]


def _outcome(run: Callable[[], int]) -> tuple:
    """What a call gives: its count of changes, or its exception's class, message and
    SQLite code and name (when it has them)."""
    try:
        return ("changes", run())
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        code = getattr(exc, "sqlite_errorcode", None), getattr(exc, "sqlite_errorname", None)
        return (type(exc), str(exc), *code)


def _waited(conn: sqlite3.Connection, sql: str, columns: list, via: list) -> int:
    """insert_columns as the store runs it: begun (the C steps in a thread of their own),
    then waited for."""
    return sqlbind.PendingInsert(conn, sql, columns, via).wait()


def _insert(conn, columns, via, sql=INSERT, module=None, call=sqlbind.insert_columns) -> tuple:
    """The outcome of insert_columns (or ``call``, done as it) with the accelerator
    ``module`` (None: executemany)."""
    old, sqlbind._ACCEL = sqlbind._ACCEL, module
    try:
        return _outcome(lambda: call(conn, sql, list(columns), list(via)))
    finally:
        sqlbind._ACCEL = old


def _results(columns: Sequence[Any], via: Sequence[Any], sql: str = INSERT, before=(),
             begin: str | None = "BEGIN IMMEDIATE", open_db=_database,
             call=sqlbind.insert_columns) -> list[tuple]:  # fmt: skip
    """The outcome, rows stored, transaction state and rows stored exactly (:func:`_exact`)
    of C's insert and of Python's, each on a database made by ``open_db`` holding the rows
    ``before``, in a transaction begun by ``begin`` (``call``: see :func:`_insert`)."""
    results = []
    for module in (built, None):
        conn = open_db()
        if before:
            conn.executemany(INSERT, before)
        if begin:
            conn.execute(begin)
        outcome = _insert(conn, columns, via, sql, module, call)
        rows = _stored(conn)
        results.append((outcome, rows, conn.in_transaction, _exact(rows)))
        conn.close()
    return results


def _both(columns: Sequence[Any], via: Sequence[Any], **how: Any) -> tuple:
    """C's outcome, rows and transaction state from :func:`_results` (``how`` its
    options), asserted equal to Python's, the rows exactly."""
    c_result, python_result = _results(columns, via, **how)
    assert c_result == python_result
    return c_result[:3]


def _bound(value: Any, via: Any) -> Any:
    """A value as bound through its via (what ``sqlbind._values`` makes of it)."""
    if via is None:
        return value
    return via + value if isinstance(via, int) else via[value]


def _first_unbindable(columns: Sequence[Any], via: Sequence[Any]) -> int | None:
    """The first row with a value C leaves to Python (an int beyond 64 bits, as bound)."""
    for i, row in enumerate(zip(*columns, strict=True)):
        for value, how in zip(row, via, strict=True):
            bound = _bound(value, how)
            if isinstance(bound, int) and not -(2**63) <= bound < 2**63:
                return i
    return None


@st.composite
def columns(draw, odd: bool = False):
    """Five columns of one length for ``t`` (id, a, b, c, d) and their vias: typed arrays
    (q, d, i) and lists of None, ints to 64 bits, bools, floats with NaN and infinities,
    text, bytes; ids that repeat and meet stored rows (conflicts) or are NULL (a NOT NULL
    failure mid-batch); indexes into a list (negative too) and offsets that may leave 64
    bits; ``odd``: also what Python's sqlite3 rejects (ints beyond 64 bits, lone
    surrogates, a type it cannot bind, an index out of range, a column shorter)."""
    n = draw(st.integers(0, 30))
    plain = [st.none(), NUMBERS, st.booleans(), FLOATS, st.text(max_size=8), st.binary(max_size=8)]
    if odd:
        plain += [st.integers(2**63, 2**65), st.just("a\udc80"), st.just(object()),
                  st.just(bytearray(b"z")), st.just(Path("p"))]  # fmt: skip

    def one(kind: str):
        if kind == "q":
            return array("q", draw(st.lists(I64, min_size=n, max_size=n))), None
        if kind == "d":
            return array("d", draw(st.lists(FLOATS, min_size=n, max_size=n))), None
        if kind == "i":  # indexes into TABLE
            top = len(TABLE) + (2 if odd else 0)
            return array(
                "i", draw(st.lists(st.integers(-top, top - 1), min_size=n, max_size=n))
            ), TABLE
        if kind == "offset":
            base = draw(st.sampled_from([1, -(2**40), 2**63 - 10]))
            values = st.integers(-20, 20) if not odd else st.one_of(st.integers(-20, 20), st.none())
            col = draw(st.lists(values, min_size=n, max_size=n))
            return (col if odd or draw(st.booleans()) else array("q", col)), base
        return draw(st.lists(st.one_of(*plain), min_size=n, max_size=n)), None

    ids = st.integers(0, max(3, n)) if not odd else st.one_of(st.integers(0, 9), st.none())
    id_col = draw(st.lists(ids, min_size=n, max_size=n))
    made = [
        (array("q", id_col), None) if None not in id_col and draw(st.booleans()) else (id_col, None)
    ]
    made += [one(draw(st.sampled_from(["q", "d", "i", "offset", "list"]))) for _ in range(4)]
    cols, via = [c for c, _ in made], [v for _, v in made]
    if odd and n and draw(st.booleans()):
        cols[draw(st.integers(0, 4))] = list(cols[0])[:-1]  # one column a row short
    return cols, via


BEFORE = [(1, "stored", 0.5, "s", 1), (3, None, None, None, None)]  # rows met by conflicts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns())
def test_inserted_rows_are_pythons(drawn):
    """Python's rows and changes, and C did them all itself up to the first value it
    leaves to Python (stop None when there is none), counting the changes it made."""
    cols, via = drawn
    outcome, rows, _ = _both(cols, via, before=BEFORE)
    if outcome[0] == "changes":
        assert len(rows) == len(BEFORE) + outcome[1]
    conn = _database()
    conn.executemany(INSERT, BEFORE)
    conn.execute("BEGIN IMMEDIATE")
    changes, stop = built.insert(conn, INSERT, list(cols), list(via))
    assert stop == _first_unbindable(cols, via)
    assert changes == len(_stored(conn)) - len(BEFORE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns(odd=True))
def test_odd_values_insert_or_fail_as_in_python(drawn):
    cols, via = drawn
    c_result, python_result = _results(cols, via, before=BEFORE)
    assert c_result == python_result


def test_c_binds_the_stores_columns_itself():
    """The store's kinds of columns (ids and times as arrays, numbers through a list,
    lines plus a base, a list with NULLs and text) are done in C, stop None, with the
    changes counted as executemany counts them (conflicting rows not)."""
    conn = _database()
    conn.execute("BEGIN IMMEDIATE")
    cols = [array("q", [5, 6, 5, 1]), array("i", [0, 1, 0, -7]), array("d", [1.5, math.nan, 0.0, -0.0]),
            [None, "ü", None, "x"], array("q", [1, 2, 3, 4])]  # fmt: skip
    via = [None, TABLE, None, None, 100]
    assert built.insert(conn, INSERT, cols, via) == (3, None)
    assert _stored(conn) == [
        (1, 5, "integer", 7, "integer", 1.5, "real", None, "null", 101, "integer"),
        (2, 6, "integer", -3, "integer", None, "null", "ü", "text", 102, "integer"),
        (3, 1, "integer", 7, "integer", -0.0, "real", "x", "text", 104, "integer"),
    ]
    assert _both(cols, via)[0] == ("changes", 3)


def test_what_c_leaves_to_python_is_pythons():
    """C stops at the first row it cannot bind as Python would and returns it: the rows
    before are stored by C, the rest by executemany (which raises what it raises)."""
    conn = _database()
    conn.execute("BEGIN IMMEDIATE")
    cols = [[1, 2, 3], [0, 2**70, 0], [None] * 3, [None] * 3, [None] * 3]
    assert built.insert(conn, INSERT, cols, [None] * 5) == (1, 1)
    assert [r[1] for r in _stored(conn)] == [1]
    outcome, rows, _ = _both(cols, [None] * 5)
    assert outcome == (
        OverflowError,
        "Python int too large to convert to SQLite INTEGER",
        None,
        None,
    )
    assert [r[1] for r in rows] == [1]


@pytest.mark.parametrize("sql", [
    "SELECT ?, ?, ?, ?, ?",  # not DML
    "INSERT INTO t (id, a, b, c, d) VALUES (?, ?, ?, ?, ?); SELECT 1",  # two statements
    "INSERT INTO t (id, a, b, c) VALUES (?, ?, ?, ?)",  # fewer parameters than columns
    "INSERT INTO nowhere VALUES (?, ?, ?, ?, ?)",  # no such table
    "INSERT INTO t (id, a, b, c, d) VALUES (?, ?, ?, ?, ?) RETURNING n",  # rows back
    "INSERT INTO t (id, a, b, c, d) VALUES (?, ?, ?, ?, ?)\0 junk",  # a NUL in it
    "INSERT INTO t (id, a, b, c, d) VALUES (?, ?, ?, ?, ?) -- \udc80",  # not UTF-8
    "-- a comment first\nINSERT INTO t (id, a, b, c, d) VALUES (?, ?, ?, ?, ?)",
])  # fmt: skip
def test_statements_c_does_not_run_fail_as_in_python(sql):
    cols = [[1, 2], [1, 2], [1.0, 2.0], ["a", "b"], [1, 2]]
    conn = _database()
    assert built.insert(conn, sql, cols, [None] * 5) == (0, 0)
    _both(cols, [None] * 5, sql=sql)


def test_constraint_failure_mid_batch_is_pythons():
    """A NOT NULL id in row 3: sqlite3_step's error, raised by C as _sqlite3 raises it."""
    cols = [[10, 11, None, 12], [1, 2, 3, 4], [None] * 4, [None] * 4, [None] * 4]
    outcome, rows, in_tx = _both(cols, [None] * 5)
    assert outcome == (sqlite3.IntegrityError, "NOT NULL constraint failed: t.id", 1299,
                       "SQLITE_CONSTRAINT_NOTNULL")  # fmt: skip
    assert [r[1] for r in rows] == [10, 11] and in_tx


def test_a_full_database_fails_as_in_python():
    """PRAGMA max_page_count reached mid-batch: SQLITE_FULL, the same exception, the same
    rows left and the same transaction state."""

    def small():
        conn = _database()
        conn.execute("PRAGMA max_page_count = 8")
        return conn

    n = 400
    cols = [list(range(n)), ["v" * 200] * n, [None] * n, [None] * n, [None] * n]
    outcome, _, _ = _both(cols, [None] * 5, open_db=small)
    assert outcome == (sqlite3.OperationalError, "database or disk is full", 13, "SQLITE_FULL")


@pytest.mark.parametrize("begin", [None, "BEGIN"])  # Python's (autocommit), C's
def test_a_read_only_database_fails_as_in_python(tmp_path, begin):
    path = tmp_path / "ro.db"
    _database(str(path)).close()
    uri = f"{path.as_uri()}?mode=ro"
    cols = [[1, 2], [1, 2], [None] * 2, [None] * 2, [None] * 2]
    outcome, rows, _ = _both(cols, [None] * 5, begin=begin,
                             open_db=lambda: sqlite3.connect(uri, uri=True, isolation_level=None))  # fmt: skip
    assert outcome == (sqlite3.OperationalError, "attempt to write a readonly database", 8,
                       "SQLITE_READONLY")  # fmt: skip
    assert rows == []


def test_a_full_disk_fails_as_in_python(small_fs):
    """A real 1 MB tmpfs filling up mid-batch (a small cache spills pages to the WAL)."""
    if small_fs is None:
        pytest.skip("cannot mount a tmpfs here (not root)")
    results = []
    for module in (built, None):
        path = small_fs / "x.db"
        conn = _database(str(path))
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA cache_size = 10")
        conn.execute("BEGIN IMMEDIATE")
        n = 3000
        cols = [list(range(n)), [os.urandom(400).hex()] * n, [None] * n, [None] * n, [None] * n]
        outcome = _insert(conn, cols, [None] * 5, module=module)
        results.append((outcome, conn.in_transaction))
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        results.append(conn.execute("SELECT count(*) FROM t").fetchone())
        conn.close()
        for leftover in small_fs.iterdir():
            leftover.unlink()
    assert results[0][0][:2] == (sqlite3.OperationalError, "database or disk is full")
    assert results[:2] == results[2:]


def test_a_closed_connection_raises_as_in_python():
    cols = [[1], [1], [None], [None], [None]]
    got = []
    for module in (built, None):
        conn = _database()
        conn.close()
        got.append(_insert(conn, cols, [None] * 5, module=module))
    assert got[0] == got[1]
    assert got[0][:2] == (sqlite3.ProgrammingError, "Cannot operate on a closed database.")


def test_another_thread_is_refused_as_in_python():
    cols = [[1], [1], [None], [None], [None]]
    got = []
    for module in (built, None):
        conn = _database()
        worker = threading.Thread(target=lambda c, m: got.append(_insert(c, cols, [None] * 5, module=m)),
                                  args=(conn, module))  # fmt: skip
        worker.start()
        worker.join()
        assert _stored(conn) == []
    assert (
        got[0][0] is sqlite3.ProgrammingError
        and got[0][1].split(" The object")[0] == (got[1][1].split(" The object")[0])
    )  # (the messages name the threads' ids, which differ)


def test_an_implicit_begin_and_adapters_stay_pythons():
    """A connection with an isolation level (Python's sqlite3 begins a transaction before
    an INSERT) and an adapter registered for int: C leaves both to Python."""
    cols = [[1, 2], [5, 6], [None] * 2, [None] * 2, [None] * 2]
    result = _both(cols, [None] * 5, begin=None, open_db=lambda: _with_schema(sqlite3.connect(":memory:")))  # fmt: skip
    assert result[0] == ("changes", 2) and result[2] is True  # the implicit BEGIN
    sqlite3.register_adapter(int, lambda v: v * 10)
    try:
        outcome, rows, _ = _both(cols, [None] * 5)
    finally:
        del sqlite3.adapters[(int, sqlite3.PrepareProtocol)]
    assert outcome == ("changes", 2) and [r[3] for r in rows] == [50, 60]


def _with_schema(conn: sqlite3.Connection) -> sqlite3.Connection:
    for sql in SCHEMA:
        conn.execute(sql)
    return conn


def _tables(path: Path) -> dict[str, list[tuple]]:
    """Every row of the tables a scan's rows go into, each cell with its SQLite type."""
    conn = sqlite3.connect(path)
    found = {}
    for table in ("obs_rows", "obs_contexts", "obs_clients", "obs_hourly", "obs_rollup"):
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        typed = ", ".join(f'"{c}", typeof("{c}")' for c in cols)
        found[table] = sorted(conn.execute(f"SELECT {typed} FROM {table}"), key=repr)  # noqa: S608
    conn.close()
    return found


def test_a_scan_stores_the_same_with_and_without_c(tmp_path):
    """A real scan through the CLI (two producers, a line base on the second part) stores
    the same rows with the accelerators as in pure Python."""
    log = tmp_path / "access.log"
    generated_squid_log(log, "--lines", "6000", "--llm-share", "0.3", "--seed", "5")
    stored = []
    for pure in ("0", "1"):
        db = tmp_path / f"pure{pure}.db"
        subprocess.run(
            [sys.executable, "-m", "monitor", "--db", str(db), "scan", "-j", "2", str(log),
             "--egress-country", "CN"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), accel.PURE_ENV: pure},
            check=True, capture_output=True,
        )  # fmt: skip
        stored.append(_tables(db))
    assert len(stored[0]["obs_rows"]) > 1000
    assert stored[0] == stored[1]


def _sqlite_library() -> Path:
    """The SQLite library file this process's _sqlite3 has mapped."""
    sqlite3.connect(":memory:").close()
    maps = Path("/proc/self/maps").read_text().splitlines()
    found = {line.split()[-1] for line in maps if "libsqlite3" in line}
    if len(found) != 1:
        pytest.skip(f"no single shared SQLite library mapped: {found}")
    return Path(found.pop())


def test_a_second_sqlite_in_the_process_keeps_c_out(tmp_path):
    """A copy of SQLite (renamed, so loaded beside the system's) preloaded into the global
    scope, where _sqlite3's calls go: C's look-up through _sqlite3's own libraries would
    find the other instance, so the module does not load, and the insert is Python's."""
    lib = _sqlite_library()
    copy = tmp_path / "libsqlitX.so"
    data = lib.read_bytes()
    assert data.count(b"libsqlite3.so.0\0") == 1  # its SONAME
    copy.write_bytes(data.replace(b"libsqlite3.so.0\0", b"libsqlitX3.so.\0\0"))
    script = (
        "import sqlite3; from monitor import sqlbind\n"
        "assert sqlbind._ACCEL is None\n"
        "c = sqlite3.connect(':memory:', isolation_level=None)\n"
        "c.execute('CREATE TABLE t (a, b)')\n"
        "print(sqlbind.insert_columns(c, 'INSERT INTO t VALUES (?, ?)', [[1, 2], ['x', None]],"
        " [None, None]), c.execute('SELECT * FROM t').fetchall())\n"
        "import monitor._sqlbind\n"
    )
    preload = " ".join(filter(None, [os.environ.get("LD_PRELOAD"), str(copy)]))
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "LD_PRELOAD": preload})  # fmt: skip
    assert run.stdout == "2 [(1, 'x'), (2, None)]\n"
    assert run.stderr.strip().endswith(
        "ImportError: sqlite3_prepare_v2: another SQLite is in the global scope"
    ), run.stderr


def _in_a_new_process(script: str, *args: str) -> str:
    """``script`` run by a new Python with this tree first on its path: what it printed."""
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_memory_statistics_go_off_only_where_nothing_of_sqlite_is_in_use():
    """``quiet_memory`` turns SQLite's memory counting off in a process that has nothing of
    SQLite's in use and one thread; C still proves the instance Python's (its VFS) and
    binds the rows itself. It changes nothing beside an open connection, beside another
    thread (Python's, or one only the system counts), or where a shutdown would forget a
    setting: a heap limit, a temporary directory, another default VFS."""
    script = (
        "import ctypes, sqlite3, sys, threading\n"
        "from monitor import sqlbind\n"
        "lib = ctypes.CDLL(sys.argv[1]); lib.sqlite3_memory_used.restype = ctypes.c_int64\n"
        "lib.sqlite3_soft_heap_limit64.restype = ctypes.c_int64\n"
        "lib.sqlite3_soft_heap_limit64.argtypes = [ctypes.c_int64]\n"
        "if sys.argv[2] == 'open':\n"
        "    held = sqlite3.connect(':memory:')\n"
        "if sys.argv[2] == 'thread':\n"
        "    stop = threading.Event(); threading.Thread(target=stop.wait).start()\n"
        "if sys.argv[2] == 'limit':\n"
        "    lib.sqlite3_soft_heap_limit64(1 << 30)\n"
        "if sys.argv[2] == 'native':  # a thread threading does not count\n"
        "    import _thread; stop = threading.Event(); _thread.start_new_thread(stop.wait, ())\n"
        "if sys.argv[2] == 'directory':\n"
        "    place = ctypes.c_char_p.in_dll(lib, 'sqlite3_temp_directory'); place.value = b'/tmp'\n"
        "if sys.argv[2] == 'vfs':\n"
        "    lib.sqlite3_vfs_find.restype = ctypes.c_void_p\n"
        "    lib.sqlite3_vfs_register.argtypes = [ctypes.c_void_p, ctypes.c_int]\n"
        "    lib.sqlite3_vfs_register(lib.sqlite3_vfs_find(b'unix-dotfile'), 1)\n"
        "quiet = sqlbind.quiet_memory()\n"
        "if sys.argv[2] in ('thread', 'native'):\n"
        "    stop.set()\n"
        "c = sqlite3.connect(':memory:', isolation_level=None)\n"
        "c.execute('CREATE TABLE t (a, b)'); c.execute('BEGIN')\n"
        "done = sqlbind._ACCEL.insert(c, 'INSERT INTO t VALUES (?, ?)', [[1, 2], ['x', None]],"
        " [None, None])\n"
        "print(quiet, sqlbind.quiet_memory(), lib.sqlite3_memory_used() > 0, done,"
        " c.execute('SELECT * FROM t').fetchall() == [(1, 'x'), (2, None)])\n"
    )
    library = str(_sqlite_library())
    off, on = "True True False (2, None) True", "False False True (2, None) True"
    assert _in_a_new_process(script, library, "alone") == off
    for case in ("open", "thread", "native", "limit", "directory", "vfs"):
        assert _in_a_new_process(script, library, case) == on, case


def test_a_command_turns_memory_statistics_off_and_stores_the_same(tmp_path):
    """A command (here a scan through the CLI's entry) starts with SQLite's memory counting
    off, so nothing is counted afterwards with a connection open; it stores the same rows
    as the same scan in a process where a connection open at its start keeps it on."""
    log = tmp_path / "access.log"
    generated_squid_log(log, "--lines", "3000", "--llm-share", "0.3", "--seed", "9")
    script = (
        "import ctypes, sqlite3, sys\n"
        "held = sqlite3.connect(':memory:') if sys.argv[4] == 'held' else None\n"
        "from monitor.cli import main\n"
        "main(args=['--db', sys.argv[2], 'scan', '-q', '-j', '1', sys.argv[3], '--egress-country',"
        " 'CN'], prog_name='apiwatch', standalone_mode=False)\n"
        "lib = ctypes.CDLL(sys.argv[1]); lib.sqlite3_memory_used.restype = ctypes.c_int64\n"
        "c = sqlite3.connect(sys.argv[2])\n"
        "print(c.execute('SELECT count(*) FROM obs_rows').fetchone()[0] > 500,"
        " lib.sqlite3_memory_used() > 0)\n"
    )
    library = str(_sqlite_library())
    counted = {}
    for held in ("held", "none"):
        db = tmp_path / f"{held}.db"
        counted[held] = _in_a_new_process(script, library, str(db), str(log), held)
    assert counted == {"held": "True True", "none": "True False"}
    assert _tables(tmp_path / "held.db") == _tables(tmp_path / "none.db")


def test_a_step_waiting_on_a_lock_lets_its_holder_commit(tmp_path):
    """Another thread holds the write lock and needs the GIL to commit: C's step waits for
    the lock with the GIL released (as _sqlite3's does), so it gets it well within the
    busy timeout instead of failing with SQLITE_BUSY after it."""
    path = tmp_path / "busy.db"
    _database(str(path)).execute("PRAGMA journal_mode = WAL").fetchone()
    holding = threading.Event()

    def hold_then_commit() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        holding.set()
        time.sleep(0.3)  # (Python work: the GIL needed again before the COMMIT)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold_then_commit)
    holder.start()
    holding.wait()
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    conn.execute("BEGIN")  # (deferred: the INSERT's step takes the write lock)
    started = time.monotonic()
    cols = [[1, 2, 3], [1, 2, 3], [None] * 3, [None] * 3, [None] * 3]
    try:
        result = built.insert(conn, INSERT, cols, [None] * 5)
    finally:
        holder.join()
    assert result == (3, None)
    assert time.monotonic() - started < 4


class _Plus(int):
    """An int whose addition is its own (a via Python's sqlite3 path calls)."""

    def __add__(self, other: object) -> int:
        return int(self) + int(other) + 1000  # type: ignore[call-overload]


@pytest.mark.parametrize("via", [2**70, True, _Plus(5), 1.5, "x", {0: 1}])
def test_a_via_c_does_not_take_leaves_the_array_as_it_was(via):
    """A via C does not take (an int beyond 64 bits, a bool, an int subclass, a float, a
    str, a dict) on an array column: C leaves the rows to Python with the array's buffer
    released (it can grow again) and its reference count as before; the rows Python's."""
    conn = _database()
    conn.execute("BEGIN")
    column = array("q", [1, 2])
    cols = [array("q", [1, 2]), column, [None] * 2, [None] * 2, [None] * 2]
    refs = sys.getrefcount(column)
    assert built.insert(conn, INSERT, cols, [None, via, None, None, None]) == (0, 0)
    assert sys.getrefcount(column) == refs
    column.append(3)
    column.pop()
    c_result, python_result = _results(cols, [None, via, None, None, None])
    assert c_result == python_result


class _Reversed(array):
    """An array iterated backwards (what Python's sqlite3 reads of it)."""

    def __iter__(self):
        return reversed(list(super().__iter__()))


@pytest.mark.parametrize("make", [
    lambda: memoryview(array("q", [4, 5])),  # a 1-D view
    lambda: memoryview(array("q", range(4))).cast("B").cast("q", (2, 2)),  # 2-D
    lambda: memoryview(array("q", [7])).cast("B").cast("q", ()),  # 0-d
    lambda: memoryview(bytearray(17))[1:].cast("q"),  # misaligned items
    lambda: _Reversed("q", [4, 5]),  # a subclass with its own __iter__
])  # fmt: skip
def test_buffers_other_than_an_array_are_pythons(make):
    """C reads only an array.array itself: other buffers of typecode q are Python's."""
    conn = _database()
    conn.execute("BEGIN")
    assert built.insert(conn, INSERT, [make()], [None]) == (0, 0)
    assert built.insert(conn, "INSERT INTO t (id) VALUES (?)", [make()], [None]) == (0, 0)
    c_result, python_result = _results([make()], [None], sql="INSERT INTO t (id) VALUES (?)")
    assert c_result == python_result


@pytest.mark.parametrize(("sql", "c_does_it"), [
    ("INSERT INTO t (id, a) VALUES (:x, :y)", False),
    ("INSERT INTO t (id, a) VALUES (@x, $y)", False),
    ("INSERT INTO t (id, a) VALUES (?, :y)", False),
    ("INSERT INTO t (id, a) VALUES (?1, ?2)", True),
    ("INSERT INTO t (id, a) VALUES (?2, ?1)", True),
])  # fmt: skip
def test_named_parameters_are_pythons(sql, c_does_it):
    """Named parameters bound from a sequence: Python's sqlite3 warns (3.12 on), so C
    leaves them to it; numbered ones (?NNN) C binds by their numbers as Python does."""
    cols = [[1, 2], [3, 4]]
    conn = _database()
    conn.execute("BEGIN")
    assert built.insert(conn, sql, cols, [None, None]) == ((2, None) if c_does_it else (0, 0))
    results = []
    for module in (built, None):
        conn = _database()
        conn.execute("BEGIN")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome = _insert(conn, cols, [None, None], sql, module)
        results.append((outcome, _exact(_stored(conn)), [w.category for w in caught]))
    assert results[0] == results[1]


def test_a_list_grown_by_a_trigger_is_done_to_its_end():
    """A SQL function a trigger calls replaces the column's values by more of them during
    a step: C stops after its rows (stop n) and Python's iteration does the rest, as
    executemany over the same list would."""
    stored = []
    for module in (built, None):
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute("CREATE TABLE t (a)")
        conn.execute("CREATE TABLE u (a)")
        column = [1, 2, 3, 4, 5]

        def grow(x: Any, column: list = column) -> Any:
            if x == 2:
                column[:] = ["a", "b", "c", "d", "e", "f"]
            return x

        conn.create_function("grow", 1, grow)
        conn.execute("CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (grow(new.a)); END")  # fmt: skip
        conn.execute("BEGIN")
        if module is not None:
            stepped = built.insert(conn, "INSERT INTO t VALUES (?)", [column], [None])
            assert stepped == (5, 5)  # (the trigger's rows not counted, as in executemany)
            conn.execute("DELETE FROM t")
            conn.execute("DELETE FROM u")
            column[:] = [1, 2, 3, 4, 5]
        outcome = _insert(conn, [column], [None], "INSERT INTO t VALUES (?)", module)
        stored.append((outcome, conn.execute("SELECT a FROM t").fetchall()))
    assert stored[0] == stored[1]
    assert stored[0][1][-1] == ("f",)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns(odd=True))
def test_a_pending_insert_inserts_or_fails_as_in_python(drawn):
    """Begun, its rows stepped in another thread, then waited for: Python's rows, changes
    and exceptions, raised by wait in the caller's thread."""
    cols, via = drawn
    c_result, python_result = _results(cols, via, before=BEFORE, call=_waited)
    assert c_result == python_result


def _released(conn: sqlite3.Connection, sql: str, columns: list, via: list) -> int:
    """insert_columns with its rows stepped with the GIL released (the store's fold)."""
    return sqlbind.insert_columns(conn, sql, columns, via, released=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns(odd=True))
def test_an_insert_stepped_with_the_gil_released_inserts_or_fails_as_in_python(drawn):
    """Read first, then stepped with the GIL released, in the caller's thread: Python's
    rows, changes and exceptions."""
    cols, via = drawn
    c_result, python_result = _results(cols, via, before=BEFORE, call=_released)
    assert c_result == python_result


#: INSERT as one statement over all the rows C reads (see sqlbind.PendingInsert)
WHOLE = ("INSERT OR FAIL INTO t (id, a, b, c, d) SELECT c0, c1, c2, c3, c4 FROM"
         " apiwatch_rows(?) WHERE true ON CONFLICT(id) DO NOTHING")  # fmt: skip


def _whole(conn: sqlite3.Connection, sql: str, columns: list, via: list) -> int:
    """A pending insert of the rows as one statement (as the store's of ``obs_rows``)."""
    assert sql == INSERT
    return sqlbind.PendingInsert(conn, sql, columns, via, WHOLE).wait()


def _whole_here(conn: sqlite3.Connection, sql: str, columns: list, via: list) -> int:
    """insert_columns of the rows as one statement (as the store's of hit packs)."""
    assert sql == INSERT
    return sqlbind.insert_columns(conn, sql, columns, via, whole_sql=WHOLE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns(odd=True))
def test_a_whole_insert_is_pythons(drawn):
    """The rows C reads inserted by one statement (``OR FAIL``), begun aside or in the
    caller's thread, into a table without triggers (what it is for): Python's rows (cell
    by cell, types too), changes, exceptions and transaction, a failing row's included (the
    rows before it kept, as ``executemany`` keeps them)."""
    cols, via = drawn
    for call in (_whole, _whole_here):
        c_result, python_result = _results(cols, via, before=BEFORE, call=call)
        assert c_result == python_result


def test_a_whole_insert_is_one_statement_and_leaves_no_table_behind(tmp_path):
    """One statement steps every row (SQLite's trace sees one, reading ``apiwatch_rows``);
    a failing row (a NULL id) ends it with Python's error, the rows before it kept, as
    Python keeps them; the table it reads is in nobody's schema (another connection sees
    only ``t``)."""
    conn = _database(str(tmp_path / "w.db"))
    traced: list[str] = []
    conn.set_trace_callback(traced.append)
    conn.execute("BEGIN IMMEDIATE")
    cols = [array("q", range(100, 150)), list(range(50)), [0.5] * 50, ["x"] * 50, [None] * 50]
    assert _whole(conn, INSERT, cols, [None] * 5) == 50
    inserts = [t for t in traced if t.startswith("INSERT")]
    assert len(inserts) == 1 and " FROM apiwatch_rows(" in inserts[0], traced
    failing = [[*range(200, 210), None, 211], *[[1] * 12 for _ in range(4)]]
    python = _database()
    python.execute("BEGIN IMMEDIATE")
    c_outcome = _outcome(lambda: _whole(conn, INSERT, failing, [None] * 5))
    assert c_outcome == _insert(python, failing, [None] * 5)
    assert c_outcome[0] is sqlite3.IntegrityError
    stored = "SELECT id, a, b, c, d FROM t WHERE id >= 200 ORDER BY n"
    assert conn.execute(stored).fetchall() == python.execute(stored).fetchall()
    assert len(conn.execute(stored).fetchall()) == 10
    conn.execute("COMMIT")
    other = sqlite3.connect(tmp_path / "w.db")
    names = [r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert names == ["t"] and other.execute("SELECT count(*) FROM t").fetchone() == (60,)


def test_a_pending_call_runs_in_its_own_thread_and_raises_in_the_callers():
    """A PendingCall runs its SQL in a thread of its own (a connection that allows it),
    gives its result by wait, or raises its error there, SQLite's as Python's sqlite3
    names it; join_steps waits for it (the connection free for a rollback)."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    threads: list[int] = []
    conn.create_function("noted", 1, lambda x: threads.append(threading.get_ident()) or x)
    conn.execute("CREATE TABLE t (a NOT NULL)")
    conn.execute("BEGIN")
    sql = "INSERT INTO t SELECT noted(value) FROM json_each('[1, 2]')"
    pending = sqlbind.PendingCall(conn, lambda: conn.execute(sql).rowcount)
    sqlbind.join_steps(conn)
    assert pending.done() and pending.wait() == 2
    assert len(threads) == 2 and threading.get_ident() not in threads
    failing = sqlbind.PendingCall(conn, lambda: conn.execute("INSERT INTO t VALUES (NULL)"))
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL") as failed:
        failing.wait()
    assert failed.value.sqlite_errorname == "SQLITE_CONSTRAINT_NOTNULL"
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    conn.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns())
def test_started_steps_stop_where_insert_stops(drawn):
    """start reads the rows insert would bind (up to the same first row left to Python);
    run steps them once, counting the changes it made."""
    cols, via = drawn
    conn = _database()
    conn.executemany(INSERT, BEFORE)
    conn.execute("BEGIN IMMEDIATE")
    steps = built.start(conn, INSERT, list(cols), list(via))
    changes, stop = steps.run()
    assert stop == _first_unbindable(cols, via)
    assert changes == len(_stored(conn)) - len(BEFORE)
    with pytest.raises(RuntimeError, match="run already"):
        steps.run()


def test_pending_inserts_errors_are_pythons():
    """A NOT NULL failure mid-batch, a full database, a read-only one: raised by wait as
    executemany raises them, the same rows left, the transaction as it leaves it."""
    cols = [[10, 11, None, 12], [1, 2, 3, 4], [None] * 4, [None] * 4, [None] * 4]
    outcome, rows, in_tx = _both(cols, [None] * 5, call=_waited)
    assert outcome[0] is sqlite3.IntegrityError and outcome[3] == "SQLITE_CONSTRAINT_NOTNULL"
    assert [r[1] for r in rows] == [10, 11] and in_tx

    many = [list(range(500)), ["w" * 300] * 500, *[[None] * 500] * 3]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ro.db"
        _database(str(path)).close()
        for open_db, begin, error in (
            (lambda: _limited(_database(), 8), "BEGIN IMMEDIATE", "database or disk is full"),
            (lambda: sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None),
             "BEGIN", "attempt to write a readonly database"),
        ):  # fmt: skip
            outcome, rows, _ = _both(many, [None] * 5, begin=begin, open_db=open_db, call=_waited)
            assert outcome[:2] == (sqlite3.OperationalError, error) and len(rows) < 500


def _limited(conn: sqlite3.Connection, pages: int) -> sqlite3.Connection:
    """``conn`` with room for ``pages`` pages only (SQLITE_FULL past them)."""
    conn.execute(f"PRAGMA max_page_count = {pages}")
    return conn


def test_a_pending_insert_steps_in_its_own_thread_what_it_read_at_its_start():
    """The rows are stepped in a thread of their own (a trigger's SQL function runs there),
    and they are the columns' values when the insert began, whatever the caller does to
    its lists meanwhile; join_steps waits for them to end. An insert C does not take is
    done at once, in the caller's thread."""
    seen: dict[str, list[int]] = {}
    for name, module in (("c", built), ("python", None)):
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute("CREATE TABLE t (a)")
        conn.execute("CREATE TABLE u (a)")
        threads = seen[name] = []
        conn.create_function("noted", 1, lambda x, threads=threads: threads.append(threading.get_ident()) or x)  # fmt: skip
        conn.execute("CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (noted(new.a)); END")  # fmt: skip
        conn.execute("BEGIN")
        column = ["a", "b", "c"]
        old, sqlbind._ACCEL = sqlbind._ACCEL, module
        try:
            pending = sqlbind.PendingInsert(conn, "INSERT INTO t VALUES (?)", [column], [None])
        finally:
            sqlbind._ACCEL = old
        column[:] = ["x"]  # after the start: not what is inserted
        sqlbind.join_steps(conn)  # the steps over: the connection free, before wait
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 3
        assert pending.wait() == 3 and pending.wait() == 3
        assert conn.execute("SELECT a FROM t").fetchall() == [("a",), ("b",), ("c",)]
        assert conn.execute("SELECT a FROM u").fetchall() == [("a",), ("b",), ("c",)]
        conn.close()
    here = threading.get_ident()
    assert len(seen["c"]) == 3 and len(set(seen["c"])) == 1 and here not in seen["c"]
    assert seen["python"] == [here] * 3


def test_steps_never_run_leave_the_connection_as_it_was():
    """A Steps dropped unrun (its thread never started) finalizes its statement: nothing
    inserted, the transaction and the connection usable."""
    conn = _database()
    conn.execute("BEGIN IMMEDIATE")
    steps = built.start(conn, INSERT, [[1, 2], [1, 2], [None] * 2, [None] * 2, [None] * 2], [None] * 5)
    assert steps is not None
    del steps
    conn.execute("COMMIT")
    assert _stored(conn) == []


def test_a_pending_insert_meeting_a_held_write_lock_fails_as_in_python(tmp_path):
    """Another connection holds the write lock past the busy timeout: SQLITE_BUSY, raised
    by wait as executemany raises it, nothing inserted."""
    path = tmp_path / "busy.db"
    _database(str(path)).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        outcome, rows, _ = _both([[1, 2], [1, 2], *[[None] * 2] * 3], [None] * 5, begin="BEGIN",
                                 open_db=lambda: sqlite3.connect(path, timeout=0.05, isolation_level=None),
                                 call=_waited)  # fmt: skip
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert outcome == (sqlite3.OperationalError, "database is locked", 5, "SQLITE_BUSY")
    assert rows == []


def test_a_pending_insert_interrupted_fails_as_in_python():
    """conn.interrupt() during the steps (by a trigger's SQL function, at the second row,
    in the thread that steps; the trigger's next loop sees it): SQLITE_INTERRUPT, raised by
    wait as executemany raises it, the transaction rolled back as it rolls it back."""

    def interrupted_at_2() -> sqlite3.Connection:
        conn = _database()
        conn.create_function("stop", 1, lambda x: conn.interrupt() if x == 2 else None)
        conn.execute("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT stop(new.id);"
                     " SELECT sum(id) FROM t; END")
        return conn

    outcome, rows, in_tx = _both([[1, 2, 3], [1, 2, 3], *[[None] * 3] * 3], [None] * 5,
                                 open_db=interrupted_at_2, call=_waited)  # fmt: skip
    assert outcome == (sqlite3.OperationalError, "interrupted", 9, "SQLITE_INTERRUPT")
    assert rows == [] and not in_tx  # (SQLite rolls an interrupted insert's transaction back)
