"""Rows given column by column, inserted by one statement: sqlite3's ``executemany`` over
the zipped columns (the reference), or the same rows bound and stepped in C on the
connection's own handle (``monitor/_sqlbind.c``), without a tuple and an int or float
object made per value: for the store's ``obs_rows``, Python's per-row binding cost more
than SQLite's inserting. :class:`PendingInsert` runs the C steps in another thread, the GIL
released, while the caller does other work (the store's scan: the next batch)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any

from monitor import accel

#: the ``_sqlbind`` interface this module calls (``ABI`` of the compiled module)
_ACCEL_ABI = 5
accel.expect("monitor._sqlbind", _ACCEL_ABI, exact=True)
_ACCEL = accel.load("monitor._sqlbind")

#: how a column's values are bound: as they are (None), each plus this int, or each an
#: index into this list (the store's context and client numbers)
Via = int | Sequence[Any] | None

#: the types the C code binds itself, when Python's sqlite3 would adapt none of them
_BOUND = {(t, sqlite3.PrepareProtocol) for t in (int, bool, float, str, bytes, type(None))}
#: the result codes' names that sqlite3 gives an error's ``sqlite_errorname`` (its
#: constants of result codes, primary and extended, not those of the authorizer's actions)
_PRIMARY = {"ABORT", "AUTH", "BUSY", "CANTOPEN", "CONSTRAINT", "CORRUPT", "DONE", "EMPTY",
            "ERROR", "FORMAT", "FULL", "INTERNAL", "INTERRUPT", "IOERR", "LOCKED", "MISMATCH",
            "MISUSE", "NOLFS", "NOMEM", "NOTADB", "NOTFOUND", "NOTICE", "OK", "PERM",
            "PROTOCOL", "RANGE", "READONLY", "ROW", "SCHEMA", "TOOBIG", "WARNING"}  # fmt: skip
_ERROR_NAMES = {
    code: name
    for name, code in vars(sqlite3).items()
    if name.startswith("SQLITE_") and name.split("_")[1] in _PRIMARY
}


def quiet_memory() -> bool:
    """Turn SQLite's memory statistics off for this process, when that is safe (in C, see
    ``monitor/_sqlbind.c``: nothing of SQLite's in use, nothing set that a shutdown would
    lose, only this thread); whether they are off. Each of SQLite's allocations otherwise takes a process-wide
    mutex to count itself: about a tenth of the CPU of the store's inserts. For a command's
    start, before it opens a database: later, or beside other threads, it changes nothing."""
    return _ACCEL is not None and _ACCEL.quiet_memory(_one_thread())


def _one_thread() -> bool:
    """Whether this thread is the process's only one: Python's count, and the system's where
    it tells (a thread not started by ``threading`` may use SQLite too)."""
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:  # (no /proc: Python's count alone)
        tasks = 1
    return threading.active_count() == 1 and tasks == 1


def insert_columns(conn: sqlite3.Connection, sql: str, columns: list[Sequence[Any]],
                   via: list[Via], released: bool = False, whole_sql: str | None = None) -> int:  # fmt: skip
    """Run ``sql`` (one INSERT with a parameter per column) for each row of ``columns``
    (values of ``via``, see :data:`Via`) as ``conn.executemany`` does, with its errors;
    returns the rows changed (its ``rowcount``). The C code does the rows it can bind as
    Python's sqlite3 would, the rest (from the first it cannot) ``executemany`` does; C only
    inside a transaction (the store's), where Python's sqlite3 would open none itself.
    ``released``: C reads the values first, then steps them all with the GIL released (as
    :class:`PendingInsert`'s thread, here in the caller's): for a thread beside another
    that runs Python, which would otherwise hold the GIL while this waits for it, a
    switch interval each time C takes it back (every 256 rows). ``whole_sql``: the rows C
    reads inserted by one statement, as :class:`PendingInsert` does (released then too)."""
    cursor = conn.cursor()  # sqlite3's own checks first: the connection open, this thread
    changes, stop = 0, 0
    if _c_runs(conn):
        try:
            if not released and whole_sql is None:
                changes, stop = _ACCEL.insert(conn, sql, columns, via)
            elif (steps := _ACCEL.start(conn, sql, columns, via, whole_sql)) is not None:
                changes, stop = steps.run()
        except sqlite3.Error as exc:
            _named(exc)
            raise
    return changes + _rest(cursor, sql, columns, via, stop)


def _c_runs(conn: sqlite3.Connection) -> bool:
    """Whether the C code may bind and step rows on ``conn``: inside a transaction (the
    store's), where Python's sqlite3 would open none itself, and no adapter registered."""
    return (
        _ACCEL is not None
        and conn.in_transaction  # no implicit BEGIN to make, no autocommit per row
        and _BOUND.isdisjoint(sqlite3.adapters)  # no adapter for Python's sqlite3 to call
    )


def _named(exc: sqlite3.Error) -> sqlite3.Error:
    """A step's error of the C code (as sqlite3 raises it), given its name."""
    exc.sqlite_errorname = _ERROR_NAMES.get(exc.sqlite_errorcode, "unknown")
    return exc


def _rest(cursor: sqlite3.Cursor, sql: str, columns: list[Sequence[Any]], via: list[Via],
          stop: int | None) -> int:  # fmt: skip
    """``executemany`` of the rows from ``stop`` on (None: none), which C left to Python."""
    if stop is None:
        return 0
    rows = zip(*map(_values, columns, via), strict=True)
    return cursor.executemany(sql, islice(rows, stop, None)).rowcount


#: the insert whose steps (or the call) run on each connection (by ``id``), until they end
_UNDER_WAY: dict[int, PendingCall] = {}


def join_steps(conn: sqlite3.Connection) -> None:
    """Wait until no insert's steps (nor other call) run on ``conn`` (see
    :meth:`PendingCall.join`; their outcome is left to its :meth:`~PendingCall.wait`):
    before a rollback, which may come from an interrupt at any point, even before the
    caller holds it."""
    running = _UNDER_WAY.get(id(conn))
    if running is not None:
        running.join(cancel=True)


class PendingCall:
    """A call that uses only ``conn`` (SQL that SQLite runs with the GIL released) run in
    a thread of its own while the caller does Python work that leaves the connection
    alone; :meth:`wait` ends it: its result, or its error raised, in the caller's thread.
    Until :meth:`wait` (or :meth:`join`) returns, nothing else may use the connection
    (SQLite would interleave the statements in the transaction). The store's: an insert's
    C steps (:class:`PendingInsert`), and at the end of a scan, the roll-ups folded while
    the incident rows are built (in Python, on a connection that allows other threads)."""

    def __init__(self, conn: sqlite3.Connection, work: Callable[[], Any],
                 name: str = "apiwatch-call") -> None:  # fmt: skip
        self._result: Any = None  # the work's, once it ended
        self._error: BaseException | None = None  # its error
        # one token: the thread takes it to work, join_steps to cancel; list.pop is atomic
        # under the GIL, so exactly one of them wins, whatever interrupts whom
        self._token = [None]
        self._done = threading.Event()  # set by the thread once it worked (or will not)
        self._thread = threading.Thread(target=self._run, args=(work, id(conn)),
                                        name=name, daemon=True)  # fmt: skip
        _UNDER_WAY[id(conn)] = self  # (before the work starts: see join_steps)
        self._thread.start()

    def _run(self, work: Callable[[], Any], key: int) -> None:
        """The thread's body: the work, its result or error kept for :meth:`wait`."""
        try:
            try:
                self._token.pop()
            except IndexError:  # cancelled (join_steps) before it began: nothing done
                return
            self._result = work()
        except BaseException as exc:  # noqa: BLE001 - raised again by wait, in the caller
            self._error = exc
        finally:
            if _UNDER_WAY.get(key) is self:
                del _UNDER_WAY[key]
            self._done.set()

    def done(self) -> bool:
        """Whether the work has ended (:meth:`wait` returns at once)."""
        return self._done.is_set()

    def join(self, cancel: bool = False) -> None:
        """Wait for the work to end (the connection free again), however often this wait
        is interrupted (the interrupt raised after): the caller may then roll back."""
        if cancel:
            try:
                self._token.pop()
                return  # the thread will do nothing
            except IndexError:
                pass  # it is working: wait
        interrupted: BaseException | None = None
        # (not Thread.join/is_alive: 3.11's join, interrupted, marks a running thread
        # stopped; is_alive is False until the new thread runs)
        while not self._done.is_set():
            try:
                self._done.wait()
            except BaseException as exc:  # noqa: BLE001 - raised once the thread ended
                interrupted = exc
        if interrupted is not None:
            raise interrupted

    def wait(self) -> Any:
        """The work's result, once it ended, or its error raised here (once)."""
        self.join()
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._result


class PendingInsert:
    """:func:`insert_columns` begun, the caller going on; :meth:`wait` ends it.

    The C code reads the rows' values at the start, in the caller's thread, then a thread
    of its own steps them with the GIL released (a :class:`PendingCall`): SQLite's inserting,
    most of the call's time, overlaps the caller's Python work. Until :meth:`wait` (or
    :meth:`join`) returns, nothing else may use the connection (SQLite would interleave
    the statements in the transaction), nor change the columns' lists (what is read is
    read: a list's later changes are not inserted). Without C (or when C leaves every row
    to Python) the rows are inserted at the start, as :func:`insert_columns` does.

    ``whole_sql``: the same INSERT as one statement over all the rows C read, which it
    reads from the table ``apiwatch_rows(?)`` (columns ``c0``, ``c1``... in the order of
    ``sql``'s parameters; ``WHERE true`` before an ``ON CONFLICT``, which SQLite's parser
    would read as a join's ``ON``; see ``monitor/_sqlbind.c``). SQLite then does its
    per-statement work once, not once a row: a third fewer instructions for ``obs_rows``.
    Give it ``INSERT OR FAIL``: a failing row then ends it with the rows before it kept, as
    ``executemany`` ends (``ABORT``, SQLite's default, would undo the statement, and so
    copy each page it changes aside first: 119 MB of a temporary file for 500k rows). Only
    for a table without triggers (the store's have none): what a trigger did for a failing
    row, or a trigger's own failure, ``executemany`` undoes with that row's statement, this
    does not."""

    def __init__(self, conn: sqlite3.Connection, sql: str, columns: list[Sequence[Any]],
                 via: list[Via], whole_sql: str | None = None) -> None:  # fmt: skip
        self._cursor = conn.cursor()  # sqlite3's own checks, in the connection's thread
        self._sql, self._columns, self._via = sql, columns, via
        self._changes: int | None = None  # the count, once known
        self._steps: PendingCall | None = None  # the C steps under way: their (changes, stop)
        steps = None
        if _c_runs(conn):
            steps = _ACCEL.start(conn, sql, columns, via, whole_sql)
        if steps is None:
            self._changes = insert_columns(conn, sql, columns, via)
            return
        self._steps = PendingCall(conn, steps.run, "apiwatch-insert")

    def done(self) -> bool:
        """Whether the rows are stepped (:meth:`wait` waits for no thread)."""
        return self._steps is None or self._steps.done()

    def join(self, cancel: bool = False) -> None:
        """Wait for the steps to end (see :meth:`PendingCall.join`)."""
        if self._steps is not None:
            self._steps.join(cancel)

    def wait(self) -> int:
        """The rows changed (``insert_columns``' result), or its error, raised here, in the
        connection's thread; the rows C left to Python inserted now."""
        if self._changes is None:
            assert self._steps is not None
            try:
                changes, stop = self._steps.wait()
            except sqlite3.Error as exc:  # (the C steps' error, as insert_columns names it)
                _named(exc)
                raise
            self._changes = changes + _rest(self._cursor, self._sql, self._columns, self._via, stop)
        return self._changes


def _values(column: Sequence[Any], via: Via) -> Iterable[Any]:
    """A column's values as bound (what the C code reads through ``via``)."""
    if via is None:
        return column
    if isinstance(via, int):
        return map(via.__add__, column)
    return map(via.__getitem__, column)
