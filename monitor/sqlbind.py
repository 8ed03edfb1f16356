"""Rows given column by column, inserted by one statement: sqlite3's ``executemany`` over
the zipped columns (the reference), or the same rows bound and stepped in C on the
connection's own handle (``monitor/_sqlbind.c``), without a tuple and an int or float
object made per value: for the store's ``obs_rows``, Python's per-row binding cost more
than SQLite's inserting."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any

from monitor import accel

#: the ``_sqlbind`` interface this module calls (``ABI`` of the compiled module)
_ACCEL_ABI = 2
_ACCEL = accel.load("monitor._sqlbind")
if _ACCEL is not None and getattr(_ACCEL, "ABI", 0) != _ACCEL_ABI:
    _ACCEL = None

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


def insert_columns(conn: sqlite3.Connection, sql: str, columns: list[Sequence[Any]],
                   via: list[Via]) -> int:  # fmt: skip
    """Run ``sql`` (one INSERT with a parameter per column) for each row of ``columns``
    (values of ``via``, see :data:`Via`) as ``conn.executemany`` does, with its errors;
    returns the rows changed (its ``rowcount``). The C code does the rows it can bind as
    Python's sqlite3 would, the rest (from the first it cannot) ``executemany`` does; C only
    inside a transaction (the store's), where Python's sqlite3 would open none itself."""
    cursor = conn.cursor()  # sqlite3's own checks first: the connection open, this thread
    changes, stop = 0, 0
    if (
        _ACCEL is not None
        and conn.in_transaction  # no implicit BEGIN to make, no autocommit per row
        and _BOUND.isdisjoint(sqlite3.adapters)  # no adapter for Python's sqlite3 to call
    ):
        try:
            changes, stop = _ACCEL.insert(conn, sql, columns, via)
        except sqlite3.Error as exc:  # a step's error: as sqlite3 raises it, but for the name
            exc.sqlite_errorname = _ERROR_NAMES.get(exc.sqlite_errorcode, "unknown")
            raise
    if stop is not None:
        rows = zip(*map(_values, columns, via), strict=True)
        changes += cursor.executemany(sql, islice(rows, stop, None)).rowcount
    return changes


def _values(column: Sequence[Any], via: Via) -> Iterable[Any]:
    """A column's values as bound (what the C code reads through ``via``)."""
    if via is None:
        return column
    if isinstance(via, int):
        return map(via.__add__, column)
    return map(via.__getitem__, column)
