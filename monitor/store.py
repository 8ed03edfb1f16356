"""SQLite storage (through sqlite-utils): scans, LLM observations, incidents.

Why it is idempotent: every stored observation has a deterministic id (a digest of the
raw record, plus its occurrence number when a file holds identical lines), and incidents
are only ever advanced by observations that were not stored before. Scanning a file twice,
or two files that overlap (a rotated copy), adds nothing the second time.

Tables:
  scans          one row per scan run: files, options, counters, problems
  scan_problems  malformed records and unreadable files (file:line, reason)
  observations   LLM-API traffic (one row per request/flow) with its enrichment: a view
                 over obs_rows (per request) and its dictionaries obs_contexts, obs_clients
  hits           which observation raised which incident: a view over hit_links, itself
                 a view over hit_packs (per incident and block of rows, as offsets)
  incidents      one row per (rule, provider, dest_host, client, egress, UTC day)
  outbox         finding events (monitor.events), written in the transaction of their change
  alert_sinks    per configured sink: how far through the outbox it is, its last failure
  finding_alerts per finding: when its last event was raised (the digest window)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import ipaddress
import json
import os
import sqlite3
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from itertools import islice
from operator import itemgetter
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from monitor.batch import (
    CLIENT_OF,
    CONTEXT_OF,
    CTX_DAY,
    EVIDENCE_SAMPLES,
    PACK_ROWS,
    ROW_FIELDS,
    ROW_ID,
    ROW_LINE,
    Batch,
    Deltas,
    LinkPacks,
    RollupSums,
    _add,
    distinct_ids,
    incident_deltas,
    link_packs,
    link_pairs,
    merge_deltas,
    merge_fact_lists,
    merge_facts,
    merged_facts,
    shared_facts,
)
from monitor.errors import ApiwatchError
from monitor.events import DEFAULT_DIGEST_SECONDS, FindingEvent
from monitor.findings import ACTIVE_STATUSES, ExceptionEntry, clients_in, finding_id
from monitor.observation import MAX_SUM, iso_datetime, iso_day, iso_utc
from monitor.rows import CLIENT, COL, CONTEXT, PER_REQUEST, TYPES
from monitor.sqlbind import PendingCall, PendingInsert, Via, insert_columns, join_steps

if TYPE_CHECKING:
    import sqlite_utils
from monitor.policy import SEVERITY_RANK

SCHEMA_VERSION = 14
INCIDENT_STATUSES = ("open", "acknowledged", "resolved")
_IN_CHUNK = 500  # bound on SQL parameters per IN (...) query
_LOCK_RETRIES = 5  # after the busy timeout, before giving up on the write lock
_BUSY_SECONDS = 30  # the busy timeout: how long a connection waits for another's lock
_CACHED = 1 << 16  # entries of each in-memory dictionary cache before it starts over
#: incidents whose evidence and facts are remembered (about 1 KB each) before it starts
#: over: a scan of one busy day holds tens of thousands, of which a transaction touches a
#: few thousand; a long log's earlier days need not stay in memory
_INCIDENTS_CACHED = 1 << 14
#: new incident rows inserted by one statement's steps (at least; those built meanwhile), in
#: a thread of their own while the next ones are built (see :meth:`Store._store_incidents`)
_INCIDENT_CHUNK = 1024
_CACHE_KB = 65536  # SQLite page cache per connection: index pages stay in memory
#: page cache while reading the whole history (see :meth:`Store._sorting`)
_SORT_CACHE_KB = 4096

#: stored observation columns (name -> type, in row order): see :mod:`monitor.rows`
OBSERVATION_COLUMNS = TYPES
_ID, _TS, _DAY, _SOURCE, _LINE = COL["id"], COL["ts"], COL["day"], COL["source"], COL["line"]
_OUT, _IN, _OUTCOME = COL["bytes_out"], COL["bytes_in"], COL["outcome"]
_SCAN = COL["scan_id"]


def saturated_sum(column: str, where: str = "") -> str:
    """SQL: ``sum(column)`` of byte counts (of the rows ``where`` selects, a FILTER), but at
    most MAX_SUM. SQLite's ``sum`` stops the statement ("integer overflow") past 64 bits, and
    a scan's or a report's one statement is all of it: the stored counts are bounded
    (:data:`monitor.observation.MAX_COUNT`), their sums are not. The high and low 24 bits
    are summed apart, then added, where SQLite's ``*`` and ``+`` turn to a REAL past 64
    bits, which ``min`` makes MAX_SUM: the exact ``sum`` below it (same value, same type: an
    integer), saturated above, as ``_batchscan.Sums`` and :func:`monitor.batch._add` add in
    memory. Neither part can overflow: each needs 2**39 stored requests (a roll-up row at
    MAX_SUM stands for 2**15 at least), and a database holds fewer than 2**37 (4 KiB pages,
    at most 2**30 of them, 32 bytes a request at the least). One more aggregate costs a
    ``GROUP BY`` of 2 M rows about 10 %; the scans' roll-ups sum in memory (same figures)."""
    f = f" FILTER (WHERE {where})" if where else ""
    return f"min(sum({column} >> 24){f} * 16777216 + sum({column} & 16777215){f}, {MAX_SUM})"


def _sums(alias: str = "") -> str:
    """SQL: the saturated sums of ``alias``'s bytes_out and bytes_in, named so."""
    return ", ".join(f"{saturated_sum(alias + c)} AS {c}" for c in ("bytes_out", "bytes_in"))


# How observations are kept (schema step 9). A stored request is one narrow row of
# ``obs_rows`` holding what varies per request (:data:`monitor.rows.PER_REQUEST`) and two
# integers: its context (``obs_contexts``: source, scan, UTC day, destination, the whole
# enrichment: what repeats across requests) and its client (``obs_clients``: address and
# user). ``observations`` is a view that joins them back into the stored row, column for
# column; ``hits`` likewise over ``hit_links`` (integer pairs, unpacked from ``hit_packs``:
# see :func:`_schema_v14`) and ``incident_rows``.
# Rows are appended in arrival order (``n``), so the rows of recent days are at the end:
# each context records the first row that may use it, which bounds day-range reads.
# Scans hand the store :class:`monitor.batch.Batch` es, shaped so by their producers.
#: the observations view's join, driven by the rows (the dictionaries are looked up by key)
_OBS = (
    "obs_rows o CROSS JOIN obs_contexts c ON c.n = o.ctx CROSS JOIN obs_clients w ON w.n = o.client"
)
_ALIAS = {**dict.fromkeys(PER_REQUEST, "o"), **dict.fromkeys(CLIENT, "w")}
#: the view's columns, qualified: what ``SELECT *`` of ``observations`` gives
_OBS_COLUMNS = ", ".join(f"{_ALIAS.get(c, 'c')}.{c}" for c in OBSERVATION_COLUMNS)


def _key(values: Sequence[Any]) -> bytes:
    """The dictionary key of a context or client: a digest of its values (as stored)."""
    text = repr(tuple([int(v) if isinstance(v, bool) else v for v in values]))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class _Dictionary:
    """One dictionary table (``obs_contexts`` or ``obs_clients``): value tuples to their
    entry number, remembered for the life of the connection (entries are never renumbered;
    the cache is dropped when a transaction rolls back or another connection wrote)."""

    def __init__(self, conn: sqlite3.Connection, table: str, columns: Sequence[str],
                 ranged: bool):  # fmt: skip
        self.conn, self.table, self.ranged = conn, table, ranged
        self.known: dict[tuple[Any, ...], int] = {}
        self.created: dict[int, tuple[Any, ...]] = {}  # by the batch in progress
        extra = ", first_row" if ranged else ""
        self._insert = (
            f"INSERT INTO {table} (key{extra}, {', '.join(columns)}) "  # noqa: S608 - constants
            f"VALUES (?{', ?' if ranged else ''}, {', '.join('?' * len(columns))})"
        )
        self._find = f"SELECT n FROM {table} WHERE key = ?"  # noqa: S608

    def number(self, values: tuple[Any, ...], first_row: int) -> int:
        n = self.known.get(values)
        if n is not None:
            return n
        key = _key(values)
        found = self.conn.execute(self._find, [key]).fetchone()
        if found is not None:
            n = found[0]
        else:
            head = [key, first_row] if self.ranged else [key]
            n = self.conn.execute(self._insert, [*head, *values]).lastrowid
            self.created[n] = values
        if len(self.known) > _CACHED:  # entries of earlier days: looked up again if needed
            self.known.clear()
        self.known[values] = n
        return n

    def numbers(self, values: Sequence[tuple[Any, ...]], wanted: Iterable[int],
                first_row: int) -> list[int]:  # fmt: skip
        """:meth:`number` of the values at the indexes ``wanted``, in their order (the
        others: 0). Most are known: a batch's thousand clients are looked up here, one
        call of :meth:`number` made for each of the few that are not."""
        known, number = self.known.get, self.number
        found = [0] * len(values)
        for i in wanted:
            found[i] = known(values[i]) or number(values[i], first_row)
        return found

    def settle(self, first_use: dict[int, int]) -> None:
        """The batch is stored (``first_use``: entry -> the first row stored with it, for
        the entries its rows use): entries it made that no stored row uses go again, the
        others record their first row (where day-range reads start)."""
        if not self.created:
            return
        unused = [n for n in self.created if n not in first_use]
        for n in unused:
            self.known.pop(self.created[n], None)
        for chunk, marks in _chunks(unused):
            self.conn.execute(f"DELETE FROM {self.table} WHERE n IN ({marks})", chunk)  # noqa: S608
        if self.ranged:
            self.conn.executemany(
                f"UPDATE {self.table} SET first_row = ? WHERE n = ?",  # noqa: S608
                [(first_use[n], n) for n in self.created if n in first_use],
            )
        self.created.clear()

    def forget(self) -> None:
        self.known.clear()
        self.created.clear()


_INCIDENT_COLUMNS_V1: dict[str, type] = {
    "id": str,
    "rule": str,
    "severity": str,
    "severity_rank": int,
    "title": str,
    "provider": str,
    "provider_kind": str,
    "dest_host": str,
    "client_ip": str,
    "site": str,
    "egress_ip": str,
    "egress_country": str,
    "egress_source": str,
    "day": str,
    "first_seen": str,
    "last_seen": str,
    "count": int,
    "blocked": int,
    "bytes_out": int,
    "bytes_in": int,
    "outcome": str,
    "status": str,
    "evidence": str,
    "facts": str,  # JSON {field: [distinct values]}: what the rule's evidence fields showed
    "first_scan": int,
    "last_scan": int,
}
INCIDENT_COLUMNS: dict[str, type] = {**_INCIDENT_COLUMNS_V1, "user": str, "finding_id": str}

#: Fields of an incident that a caller supplies (the rest is aggregated here).
INCIDENT_IDENTITY = (
    "id",
    "rule",
    "severity",
    "title",
    "provider",
    "provider_kind",
    "dest_host",
    "client_ip",
    "site",
    "egress_ip",
    "egress_country",
    "egress_source",
    "day",
    "user",
    "finding_id",
)


def _sqlite_utils() -> ModuleType:
    """sqlite-utils, imported without pandas and numpy: it loads them, when installed, only
    to map their scalar types to column types, and apiwatch stores plain Python values.
    That is 0.2 s off every command that opens a database; imported later (reports),
    pandas and numpy work as usual."""
    if "sqlite_utils" not in sys.modules:
        blocked = [m for m in ("pandas", "numpy") if m not in sys.modules]
        for name in blocked:
            sys.modules[name] = None  # type: ignore[assignment]  # `import name` fails
        try:
            import sqlite_utils  # noqa: F401
        finally:
            for name in blocked:
                if sys.modules.get(name, ...) is None:
                    del sys.modules[name]
    return sys.modules["sqlite_utils"]


class _Database:
    """The store's connection, with what of sqlite-utils' ``Database`` the store uses on
    every command (``execute``, ``query``, ``conn``) done here, the same way, and the rest
    (``db["table"]`` and the migrations' table helpers) handed to a real one made when
    first needed: importing sqlite-utils costs 30 ms of CPU, more than a whole scan of a
    small log spends in SQLite, and a scan, a query or a report needs none of it."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    @functools.cached_property
    def utils(self) -> sqlite_utils.Database:
        return _sqlite_utils().Database(self.conn, execute_plugins=False)

    def execute(self, sql: str, parameters: Any = None) -> sqlite3.Cursor:
        if parameters is None:
            return self.conn.execute(sql)
        return self.conn.execute(sql, parameters)

    def query(self, sql: str, params: Any = None) -> Iterator[dict[str, Any]]:
        """Rows as dicts (a name repeated among the columns gets ``_2``, ``_3``…)."""
        cursor = self.execute(sql, params)
        keys = _unique_names([d[0] for d in cursor.description])
        return (dict(zip(keys, row, strict=True)) for row in cursor)

    def __getitem__(self, table: str) -> sqlite_utils.db.Table:
        return self.utils[table]


def _unique_names(names: list[str]) -> list[str]:
    """Column names made unique as sqlite-utils' ``query`` makes them."""
    if len(set(names)) == len(names):
        return names
    taken, seen, unique = set(names), set(), []
    for name in names:
        if name in seen:
            new, suffix = name, 2
            while new in seen or new in taken:
                new, suffix = f"{name}_{suffix}", suffix + 1
            name = new
        seen.add(name)
        unique.append(name)
    return unique


def _sql_value(value: Any) -> Any:
    """A Python value as sqlite-utils stores it: containers as JSON, dates in ISO 8601."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=repr, ensure_ascii=False)
    if isinstance(value, (datetime, date, dt_time)):
        return value.isoformat()
    return value


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


class StoreError(ApiwatchError, RuntimeError):
    """The database cannot be opened or is not an apiwatch database."""


@dataclass
class IngestResult:
    stored: int = 0  # observations new to the database
    duplicates: int = 0  # observations already stored (re-scan, overlapping files)
    expired: int = 0  # older than a prune: skipped, since their twins may be gone
    new_incidents: set[str] = field(default_factory=set)
    updated_incidents: set[str] = field(default_factory=set)
    rule_of: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (rule, severity)
    finding_requests: Counter[str] = field(default_factory=Counter)  # finding -> new requests
    new_findings: set[str] = field(default_factory=set)
    reopened_findings: set[str] = field(default_factory=set)


@dataclass
class _IngestState:
    """What an ingest transaction gathered so far (see :class:`Ingestion`)."""

    scan_id: int
    pruned: str | None  # the first day kept (older observations are not stored)
    top: int  # the largest row number stored: this transaction's rows come after it
    result: IngestResult = field(default_factory=IngestResult)
    deltas: dict[str, dict[str, Any]] = field(default_factory=dict)  # per incident
    #: which rows of the batch being stored raised which incident (see :func:`_link`),
    #: added to the transaction's hit links once it is stored
    links: list[tuple[list[str], array, array, int]] = field(default_factory=list)
    #: the transaction's hit links (incident number, row number), in pairs, inserted as
    #: packs at its end (see :meth:`Store._ingest_end`)
    linked: tuple[array, array] = field(default_factory=lambda: (array("q"), array("q")))
    #: the row number (``incident_rows.n``) of each incident the transaction touched: a
    #: new one's is the one it will be inserted under (see :meth:`Store._store_links`)
    numbers: dict[str, int] = field(default_factory=dict)
    last_incident: int | None = None  # the number the last new incident was given
    #: the largest number of an incident stored before the transaction (set as it meets
    #: its first new one): those numbered above are new, with nothing to read back
    stored_incidents: int | None = None
    rolling: bool = False  # roll up as it goes (see :meth:`Ingestion.roll_up`)
    gathered: int | None = None  # the last row gathered for the roll-ups (None: none yet)
    #: the roll-up rows of the batches stored as they came with them, summed as they come
    #: (see :meth:`Store._to_roll`), and the stored rows none covers, to gather, as ranges
    #: ``(after, upto]`` of row numbers (after None: the mark; at first the rows earlier
    #: transactions left above it)
    sums: RollupSums = field(default_factory=RollupSums)
    unsummed: list[list[int | None]] = field(default_factory=list)
    # context/client -> first row, of those made in this transaction (the others are in use)
    first_use: tuple[dict[int, int], dict[int, int]] = field(default_factory=lambda: ({}, {}))


@dataclass
class _Storing:
    """A batch of an ingest transaction whose rows are being inserted (see
    :meth:`Store._ingest_batch`)."""

    batch: Batch
    top: int  # the largest row number stored before its rows
    ctx: list[int]  # the numbers of its contexts and clients (see Store._numbers)
    client: list[int]
    kept: list[int] | None  # the rows inserted, when not all (see Store._kept)
    insert: PendingInsert | None  # (None: no row to insert)


class Ingestion:
    """One :meth:`Store.ingest_batches` transaction, fed batch by batch (:meth:`add`) as a
    scan's producers hand them over, so that the rows, dictionary entries and incident
    deltas, hit links of a batch are stored while the next batch is read; :meth:`commit`
    does the per-transaction work (incidents, findings, the read position) once and
    commits. The write lock is held from its creation on; nothing is committed
    before :meth:`commit`, and :meth:`abort` (or an error) rolls it all back.

    ``roll_up``: the transaction also sums its rows into the roll-ups and moves the mark,
    gathering them part by part (:meth:`roll_up`) and adding them up at the commit, so that
    a scan's last work is not to read all it stored again; a kill loses them with the rows
    they sum, as it loses the whole transaction."""

    def __init__(self, store: Store, scan_id: int, roll_up: bool = False):
        self.store = store
        store._begin()
        try:
            store._refresh_in_full.clear()
            # the unique index on id skips observations stored before; rows are appended
            # after the largest row number (SQLite picks them at random only past 2**63 - 1
            # rows), so the ones a batch added are those above it, looked up only when some
            # were skipped
            top = store.db.conn.execute("SELECT max(n) FROM obs_rows").fetchone()[0] or 0
            self._state: _IngestState | None = _IngestState(
                scan_id, store._meta("pruned_before"), top, rolling=roll_up, unsummed=[[None, top]]
            )
            self._storing: _Storing | None = None  # the batch whose rows are being inserted
        except BaseException:
            store._rollback()
            raise

    def add(self, batch: Batch) -> None:
        """Add a batch. Its rows are inserted while the caller goes on (reads the next
        batch): the next call (:meth:`add`, :meth:`roll_up`, :meth:`commit`) waits for
        them, and raises their error if there was one, before it uses the connection.
        Meanwhile this adds the incident deltas of the batch before, which need the insert
        of its rows done but not the connection."""
        tx = self._state
        assert tx is not None, "committed or aborted"
        try:
            inserted = self._inserted()
            self.store._store_links(tx)
            self._storing = self.store._ingest_batch(tx, batch)
            if inserted is not None:
                self.store._ingest_deltas(tx, inserted)
        except BaseException:
            self.abort()
            raise

    def _inserted(self) -> _Storing | None:
        """Wait for the insert of the batch added last, if any, and account for it
        (:meth:`Store._ingest_inserted`); that batch, when its deltas are left to add."""
        storing, self._storing = self._storing, None
        if storing is not None and self.store._ingest_inserted(self._state, storing):
            return storing
        return None

    def settle(self) -> None:
        """Wait until every batch added is stored, with its deltas and links (raising what
        storing it raised): from then until the next :meth:`add`, the connection is free
        for other work in the transaction (:meth:`roll_up` and :meth:`commit` settle first
        themselves)."""
        tx = self._state
        assert tx is not None, "committed or aborted"
        try:
            inserted = self._inserted()
            if inserted is not None:
                self.store._ingest_deltas(tx, inserted)
            self.store._store_links(tx)
        except BaseException:
            self.abort()
            raise

    def roll_up(self) -> None:
        """Sum the rows stored since the last call (the first time: since the mark, rows of
        earlier transactions not rolled up yet too) for the roll-ups, while the producers
        read on (:func:`_gather`); the commit adds them to the roll-ups and moves the mark:
        what one roll-up at the commit would make."""
        tx = self._state
        assert tx is not None and tx.rolling, "a rolling transaction, open"
        self.settle()
        try:
            self.store._gather(tx)
        except BaseException:
            self.abort()
            raise

    def commit(self, source: dict[str, Any] | None = None) -> IngestResult:
        """Store the incidents and findings of what was added, and ``source`` (how far its
        input has been read, see :meth:`Store.source_state`), and commit."""
        tx, store = self._state, self.store
        assert tx is not None, "committed or aborted"
        self.settle()
        try:
            result = store._ingest_end(tx)
            if source is not None:
                store._upsert("sources", {**source, "updated": _now()}, "key")
        except BaseException:
            self.abort()
            raise
        self._state = None
        store._commit()
        return result

    def abort(self) -> None:
        """Roll back what was added (nothing when already committed or aborted), once the
        insert under way, if any, has ended (its error dropped: nothing of it is kept)."""
        if self._state is not None:
            self._state = self._storing = None
            try:
                join_steps(self.store.db.conn)
            finally:
                self.store._rollback()


@dataclass
class ReevaluationResult:
    observations: int = 0  # stored observations re-evaluated
    changed: int = 0  # whose enrichment (site, egress, destination, outcome, …) changed
    removed: int = 0  # no longer LLM traffic under the current catalogue
    incidents: int = 0  # detail rows rebuilt
    new: set[str] = field(default_factory=set)  # findings raised
    superseded: set[str] = field(default_factory=set)  # findings whose basis disappeared
    reopened: set[str] = field(default_factory=set)  # superseded findings whose basis came back


class Rows(NamedTuple):
    """A query's result as it came: column names and value tuples (for a data frame)."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class TrafficFilter:
    """Report filters on the site and provider of observations and incidents, and on their
    user and client (``clients``: the addresses chosen, see :meth:`Store.clients_matching`;
    None: any client)."""

    sites: Sequence[str] = ()
    providers: Sequence[str] = ()
    users: Sequence[str] = ()
    clients: Sequence[str] | None = None

    def sql(self, alias: str | None = None, who: bool = True) -> tuple[str, list[Any]]:
        """`` AND site IN (?, …) AND provider IN (…)`` (and, with ``who``, ``user`` and
        ``client_ip``: for tables that have them), every value a bound parameter."""
        prefix = f"{alias}." if alias else ""
        terms: list[tuple[str, Sequence[str] | None]] = [
            ("site", self.sites or None), ("provider", self.providers or None)]  # fmt: skip
        if who:
            terms += [("user", self.users or None), ("client_ip", self.clients)]
        sql, params = "", []
        for column, values in terms:
            if values is not None:
                sql += f" AND {prefix}{column} IN ({_marks(values)})" if values else " AND 0"
                params.extend(values)
        return sql, params

    @property
    def names_clients(self) -> bool:
        """Whether it chooses users or clients (roll-ups without a client do not serve it)."""
        return bool(self.users) or self.clients is not None

    def finding_sql(self, alias: str) -> tuple[str, list[Any]]:
        """:meth:`sql` for the findings table ``alias``: its site and provider, and (with a
        user or client filter) findings with detail of those users and clients."""
        sql, params = self.sql(alias, who=False)
        if self.names_clients:
            who, who_params = TrafficFilter(users=self.users, clients=self.clients).sql()
            sql += f" AND {alias}.id IN (SELECT finding_id FROM incidents WHERE 1 = 1{who})"  # noqa: S608
            params += who_params
        return sql, params


@dataclass(frozen=True)
class IncidentQuery:
    since: str | None = None  # ISO 8601 UTC; incidents last seen at or after
    until: str | None = None  # ISO 8601 UTC; incidents first seen before
    rule: Sequence[str] = ()
    min_severity: str | None = None
    provider: Sequence[str] = ()
    site: Sequence[str] = ()
    client: Sequence[str] = ()  # addresses or CIDRs
    status: Sequence[str] = ()
    limit: int | None = None
    user: Sequence[str] = ()
    finding: str | None = None  # incidents: of this finding (id or unique prefix)


#: findings take the same filters; those on detail (client, user) select and count detail
FindingQuery = IncidentQuery

#: a finding's figures, rolled up from its detail rows (findings are never counted apart)
_ROLLUP = f"""SELECT finding_id AS id, min(rule) AS rule, min(provider) AS provider,
      min(site) AS site, max(severity_rank) AS severity_rank, max(title) AS title,
      min(first_seen) AS first_seen, max(last_seen) AS last_seen, sum(count) AS count,
      sum(blocked) AS blocked, {_sums()},
      count(DISTINCT client_ip) AS clients, count(DISTINCT user) AS users,
      count(DISTINCT dest_host) AS hosts, count(DISTINCT day) AS days,
      group_concat(DISTINCT egress_country) AS egress_country,
      min(first_scan) AS first_scan, max(last_scan) AS last_scan
    FROM incidents WHERE {{where}} GROUP BY finding_id"""  # noqa: S608 - constants
_ROLLUP_COLUMNS = ("rule", "provider", "site", "severity", "severity_rank", "title", "first_seen",
                   "last_seen", "count", "blocked", "bytes_out", "bytes_in", "clients", "users",
                   "hosts", "days", "egress_country", "first_scan", "last_scan")  # fmt: skip
_SEVERITY_OF_RANK = {rank: name for name, rank in SEVERITY_RANK.items()}


class _StoredIncident(NamedTuple):
    """What the store remembers of an incident it holds (see :meth:`Store._store_incidents`)."""

    evidence: list[str]
    evidence_text: str | None
    facts: dict[str, list[Any]] | None
    facts_text: str | None
    #: its first and last timestamps as this connection wrote them (None: read back)
    first: float | None = None
    last: float | None = None
    finding_id: str | None = None  # the finding it is stored under


#: the columns of a new incident row, in the order :meth:`Store._store_incidents` gives them
_NEW_INCIDENT_COLUMNS = ("n", "id", "rule", "severity", "title", "provider", "provider_kind",
                         "egress_source", "severity_rank", "dest_host", "client_ip", "site",
                         "egress_ip", "egress_country", "day", "user", "finding_id",
                         "first_seen", "last_seen", "count", "blocked", "bytes_out", "bytes_in",
                         "outcome", "evidence", "facts", "first_scan", "last_scan")  # fmt: skip
#: (``n`` None: the next number, as SQLite picks it)
_INSERT_INCIDENT = (
    f"INSERT INTO incident_rows ({', '.join(_NEW_INCIDENT_COLUMNS)})"  # noqa: S608 - constants
    f" VALUES ({', '.join('?' * len(_NEW_INCIDENT_COLUMNS))})"
)


def _insert_all(table: str, columns: Sequence[str], tail: str = "") -> str:
    """SQL: the INSERT of ``columns`` (then ``tail``: an ``ON CONFLICT`` clause) that puts
    all the rows the C code read in ``table`` by one statement (see sqlbind.PendingInsert:
    ``OR FAIL``, ``WHERE true``)."""
    rows = ", ".join(f"c{i}" for i in range(len(columns)))
    return (f"INSERT OR FAIL INTO {table} ({', '.join(columns)}) SELECT {rows}"  # noqa: S608 - constants
            f" FROM apiwatch_rows(?) WHERE true{tail}")  # fmt: skip


_INSERT_ALL_INCIDENTS = _insert_all("incident_rows", _NEW_INCIDENT_COLUMNS)
#: what new observations add to a stored incident (parameters: first_seen, last_seen (None:
#: within the stored ones), count, blocked, bytes_out, bytes_in, evidence, facts,
#: first_scan, last_scan, row number)
_UPDATE_INCIDENT = f"""UPDATE incident_rows SET
  first_seen = coalesce(min(first_seen, ?1), first_seen),
  last_seen = coalesce(max(last_seen, ?2), last_seen),
  count = count + ?3,
  blocked = blocked + ?4,
  bytes_out = CASE WHEN bytes_out IS NULL AND ?5 IS NULL THEN NULL
              ELSE min(coalesce(bytes_out, 0) + coalesce(?5, 0), {MAX_SUM}) END,
  bytes_in = CASE WHEN bytes_in IS NULL AND ?6 IS NULL THEN NULL
             ELSE min(coalesce(bytes_in, 0) + coalesce(?6, 0), {MAX_SUM}) END,
  outcome = CASE WHEN blocked + ?4 = 0 THEN 'allowed'
                 WHEN blocked + ?4 = count + ?3 THEN 'blocked' ELSE 'mixed' END,
  evidence = ?7,
  facts = ?8,
  first_scan = min(coalesce(first_scan, ?9), ?9),
  last_scan = max(coalesce(last_scan, ?10), ?10)
WHERE n = ?11"""  # noqa: S608 - constants


class Store:
    """One apiwatch database file. Open it, ingest batches, query incidents."""

    def __init__(self, path: str | Path, readonly: bool = False):
        """Open (or create) the database. ``readonly``: open an existing file for queries
        only (SQLite ``mode=ro``, and ``immutable`` when no WAL index can be made there: a
        read-only mount, a directory the user cannot write, an auditor's copy)."""
        self.path = Path(path).expanduser()
        self.readonly = readonly
        self._ro_uri = f"{self.path.resolve().as_uri()}?mode=ro"
        #: write finding events to the outbox (on when sinks are configured: see App)
        self.emit_events = False
        self.digest_seconds = DEFAULT_DIGEST_SECONDS
        #: called after each commit that added events (a dispatcher's wake-up), like hooks
        self.listeners: list[Callable[[], None]] = []
        self._emitted = 0  # events written by the transaction in progress
        self._checkpointer: Any = None  # a thread copying the log into the file (see close)
        try:
            if readonly:
                conn = self._connect_readonly()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if not self.path.exists():  # create it private: it holds addresses and users
                    os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
                # other threads: the end of an ingest folds the roll-ups in one while this
                # one builds the incident rows, keeping off the connection (PendingCall)
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                       check_same_thread=False)  # fmt: skip
            self.db = _Database(conn)
            self._contexts = _Dictionary(conn, "obs_contexts", CONTEXT, ranged=True)
            self._clients = _Dictionary(conn, "obs_clients", CLIENT, ranged=False)
            self._incident_keys: dict[str, int] = {}
            self._incident_state: dict[str, _StoredIncident] = {}  # see _store_incidents
            #: the incident rows being inserted, or the roll-ups being folded, meanwhile
            self._incident_insert: PendingInsert | PendingCall | None = None
            #: per finding: the distinct clients, users, hosts and days of its detail (see
            #: :meth:`_add_to_findings`), as far as this connection knows them
            self._finding_detail: dict[str, tuple[set[Any], ...]] = {}
            self._refresh_in_full: set[str | None] = set()  # see _store_incidents
            self._texts: dict[str, int] = {}
            #: an incident's identity texts -> as stored (see :meth:`_identity_texts`)
            self._identities: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            self._fact_numbers: dict[str, int] = {}
            self._insert_sql: dict[tuple[bool, ...], tuple[str, str]] = {}  # by the columns present
            self._data_version = -1
            self.db.execute(f"PRAGMA busy_timeout = {_BUSY_SECONDS * 1000}")
            self.db.execute(f"PRAGMA cache_size = -{_CACHE_KB}")
            if not readonly:  # (NORMAL first: a new file's switch to WAL syncs less)
                self.db.execute("PRAGMA synchronous = NORMAL")
                self._switch_to_wal()
                self.db.execute("PRAGMA wal_autocheckpoint = 16384")  # fewer, larger checkpoints
                # one sorter thread (SQLite's default): _packs_of relies on its merges
                # keeping equal keys in the order they came, which worker threads' do not
                self.db.execute("PRAGMA threads = 0")
            self._migrate()
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreError(database_problem(self.path, exc, "cannot open database")) from exc

    def _switch_to_wal(self) -> None:
        """Put the file in WAL mode. A new file's switch needs the file to itself, and SQLite
        answers "database is locked" at once rather than wait for it (the busy timeout is
        not consulted), so first scans started together would fail: wait here as the busy
        timeout would."""
        deadline, pause = time.monotonic() + _BUSY_SECONDS, 0.002
        while True:
            try:
                self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _connect_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no such database")
        for uri in (self._ro_uri, self._ro_uri + "&immutable=1"):
            conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:  # a WAL index (-shm) cannot be made here
                conn.close()
                if uri.endswith("immutable=1"):
                    raise
                continue
            self._ro_uri = uri  # the report's worker connections open it the same way
            return conn
        raise AssertionError("unreachable")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction, taken with the write lock up front (no upgrade deadlocks)."""
        self._begin()
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        self._commit()

    def _begin(self) -> None:
        conn = self.db.conn
        for attempt in range(_LOCK_RETRIES):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:  # another writer kept the lock past the timeout
                contended = "locked" in str(exc) or "busy" in str(exc)
                if not contended or attempt == _LOCK_RETRIES - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
        self._emitted = 0
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:  # another connection wrote: entries may be gone
            self._forget()
            self._data_version = version

    def _rollback(self) -> None:
        self._incident_insert = None  # (its outcome dropped with the transaction)
        join_steps(self.db.conn)  # an insert's steps under way end first
        try:  # SQLite rolls back by itself on some errors (a full disk): the error is that one
            if self.db.conn.in_transaction:
                self.db.conn.execute("ROLLBACK")
        finally:
            self._forget()  # numbers handed out in the transaction were not kept

    def _commit(self) -> None:
        self.db.conn.execute("COMMIT")
        if self._emitted:  # finding events were committed: tell the listeners (hooks)
            for listener in self.listeners:
                listener()

    def _forget(self) -> None:
        self._contexts.forget()
        self._clients.forget()
        self._forget_incidents()
        self._texts.clear()
        self._identities.clear()
        self._fact_numbers.clear()

    # -- schema -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Create the schema, or bring an older apiwatch database up to date."""
        # read together (one statement, one snapshot): read apart, a first scan committing
        # in between would make a new file look like someone else's (tables, no version)
        version, has_tables = self.db.execute(
            "SELECT (SELECT user_version FROM pragma_user_version),"
            " EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table')"
        ).fetchone()
        if self.readonly and version == 0 and not has_tables:
            version = self._created_meanwhile()  # a first scan has just created the file
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this apiwatch ({SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            raise StoreError(
                f"{self.path}: schema version {version}, this apiwatch reads {SCHEMA_VERSION}: "
                "a scan with write access upgrades it"
                if version
                else f"{self.path}: not an apiwatch database"
            )
        if version == 0 and has_tables:
            raise StoreError(
                f"{self.path}: not an apiwatch database (has tables, no schema version)"
            )
        with self._tx():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and not self._has_tables():  # a new file (no one made it meanwhile)
                version = _create_schema(self.db.conn)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[step](self.db.utils)  # each runs in this one transaction
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _has_tables(self) -> bool:
        return (
            self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone()
            is not None
        )

    def _created_meanwhile(self, wait: float = 10.0) -> int:
        """The schema version of a database file without any schema yet, once the process
        creating it (a first scan, started a moment ago) has committed it; 0 if none does
        within ``wait`` seconds (at once when no writer has the file open: no WAL). A query
        run alongside the first scan answers, not fails."""
        if not self.path.with_name(self.path.name + "-wal").exists():
            return 0
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(0.05)
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version:
                return version
        return 0

    # -- scans ------------------------------------------------------------------------------

    def start_scan(self, files: Sequence[str], options: dict[str, Any]) -> int:
        row = {"started": _now(), "files": json.dumps(list(files)), "options": json.dumps(options)}
        with self._tx():
            return self._insert("scans", [row])

    def finish_scan(
        self, scan_id: int, summary: dict[str, Any], problems: Iterable[dict[str, Any]]
    ) -> None:
        row = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in summary.items()}
        row["finished"] = _now()
        sets = ", ".join(f'"{k}" = ?' for k in row)
        sql = f"UPDATE scans SET {sets} WHERE id = ?"  # noqa: S608 - the summary's own keys
        with self._tx():
            self.db.execute(sql, [*map(_sql_value, row.values()), scan_id])
            self._insert("scan_problems", [{"scan_id": scan_id, **p} for p in problems])
            self._drop_unused_facts()  # what the scan's facts were on the way
            with self._sorting():
                _roll_up(self.db.conn)  # rows not rolled up yet (a scan rolls up as it stores)

    def roll_up(self) -> None:
        """Sum the requests stored since the last roll-up into ``obs_rollup`` (a scan does
        in the transactions that store them; a long-running watch calls this as it goes)."""
        with self._tx(), self._sorting():
            _roll_up(self.db.conn)

    # -- ingest -----------------------------------------------------------------------------

    def ingest(
        self,
        scan_id: int,
        batch: Sequence[tuple[list[Any], Sequence[dict[str, Any]]]],
        source: dict[str, Any] | None = None,
    ) -> IngestResult:
        """Store one batch of (observation row, incident identities) in one transaction:
        :meth:`ingest_batches` of it."""
        return self.ingest_batches(scan_id, [Batch.of([(None, *item) for item in batch])], source)

    def ingest_batches(
        self, scan_id: int, batches: Sequence[Batch], source: dict[str, Any] | None = None
    ) -> IngestResult:
        """Store batches of observations in one transaction, together with how far their
        source has been read (``source``, see :meth:`source_state`).

        Observations already in the database are skipped, and so are their contributions
        to incidents: this is what makes re-scans, overlapping files and a re-run after a
        crash safe. Committing the read position with the data it produced is what lets a
        re-run resume where the last commit left off.
        """
        ingestion = self.ingestion(scan_id)
        for batch in batches:
            ingestion.add(batch)
        return ingestion.commit(source)

    def ingestion(self, scan_id: int, roll_up: bool = False) -> Ingestion:
        """An :meth:`ingest_batches` transaction fed batch by batch as they come (its
        per-transaction work done once, at :meth:`Ingestion.commit`; ``roll_up``: see
        :class:`Ingestion`)."""
        return Ingestion(self, scan_id, roll_up)

    def _insert(self, table: str, rows: Sequence[dict[str, Any]]) -> int:
        """Insert ``rows`` as sqlite-utils' ``insert_all`` does (every column one of them
        names, NULL where another lacks it); the rowid of the first (of the only one)."""
        if not rows:
            return 0
        cols = list(dict.fromkeys(c for row in rows for c in row))
        sql = f"INSERT INTO {table} ({_quoted(cols)}) VALUES ({_marks(cols)})"  # noqa: S608
        values = [[_sql_value(row.get(c)) for c in cols] for row in rows]
        first = self.db.execute(sql, values[0]).lastrowid
        self.db.conn.executemany(sql, values[1:])
        return first

    def _upsert(self, table: str, row: dict[str, Any], pk: str) -> None:
        """Insert ``row``, or update the row with its ``pk`` (sqlite-utils' ``upsert``)."""
        sets = ", ".join(f'"{c}" = excluded."{c}"' for c in row if c != pk)
        act = f"UPDATE SET {sets}" if sets else "NOTHING"
        sql = f'INSERT INTO {table} ({_quoted(row)}) VALUES ({_marks(row)}) ON CONFLICT ("{pk}") DO {act}'  # noqa: S608
        self.db.execute(sql, [_sql_value(v) for v in row.values()])

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def claim_privacy_mode(self, mode: str) -> str:
        """The privacy mode of the database's data (see :func:`monitor.privacy.privacy_mode`),
        recorded by its first scan: one database never mixes pseudonyms with real addresses,
        or the pseudonyms of two keys. Returns the recorded mode (``mode`` if it was none)."""
        with self._tx():
            recorded = self._meta("privacy")
            if recorded is None:  # a database older than the record: what its rows hold
                seen = self.db.execute(
                    "SELECT client_ip LIKE 'anon:%' FROM obs_clients"
                    " WHERE client_ip IS NOT NULL LIMIT 1"
                ).fetchone()
                if seen is not None and bool(seen[0]) != (mode != "plain"):
                    return "pseudonymized:(key not recorded)" if seen[0] else "plain"
                self._upsert("meta", {"key": "privacy", "value": mode}, "key")
                return mode
        return recorded

    def pruned_before(self) -> str | None:
        """The first UTC day whose traffic detail is still kept (None: never pruned)."""
        return self._meta("pruned_before")

    def source_state(self, key: str) -> dict[str, Any] | None:
        """What an earlier scan read of the source whose content starts with ``key``."""
        rows = list(self.db.query("SELECT * FROM sources WHERE key = ?", [key]))
        return rows[0] if rows else None

    def _ingest_batch(self, tx: _IngestState, batch: Batch) -> _Storing | None:
        """Begin storing one batch of an ingest transaction: its dictionary entries made and
        the insert of its rows begun (None: an empty batch), for :meth:`_ingest_inserted`
        once it is done (see :meth:`Ingestion.add`)."""
        if batch.refs is not None:  # a stream's batch not decoded (see BatchTable): fail
            raise batch.refs.undecoded()
        size = len(batch)
        if not size:
            return None
        top = tx.top
        expired = bool(tx.pruned) and any(c[CTX_DAY] < tx.pruned for c in batch.contexts)
        # rows stored before (by an earlier transaction or batch) are skipped by the unique
        # index on id: then fewer are added than given, and those added are looked up
        if not expired and distinct_ids(batch.columns[ROW_ID]):  # the common case
            kept: list[int] | None = None
            ctx, client = self._numbers(batch, range(len(batch.contexts)),
                                        range(len(batch.clients)), top + 1)  # fmt: skip
        else:
            kept = self._kept(batch, tx.pruned, tx.result)
            ctx, client = self._numbers(batch, dict.fromkeys(batch.ctx[i] for i in kept),
                                        dict.fromkeys(batch.client[i] for i in kept), top + 1)  # fmt: skip
        return _Storing(batch, top, ctx, client, kept, self._insert_rows(batch, ctx, client, kept))

    def _ingest_inserted(self, tx: _IngestState, storing: _Storing) -> bool:
        """Account for a batch whose rows' insert (:meth:`_ingest_batch`) is done: its rows
        counted, its roll-up kept, and, when some were not stored as given (skipped, or
        stored before), its incident deltas and hit links, from the rows stored. Whether
        they were all stored as given: then its deltas and links are
        :meth:`_ingest_deltas`', which need the connection no more (so another batch's
        insert may run meanwhile)."""
        batch, top, ctx, client, kept = (storing.batch, storing.top, storing.ctx,
                                         storing.client, storing.kept)  # fmt: skip
        added = 0 if storing.insert is None else storing.insert.wait()
        as_given = kept is None and added == len(batch)
        if not as_given:
            result = tx.result
            if kept is None:
                kept = list(range(len(batch)))
            new_ids = dict(self.db.conn.execute("SELECT id, n FROM obs_rows WHERE n > ?", [top]))
            row_ids = batch.columns[ROW_ID]
            number = {i: new_ids[row_ids[i]] for i in kept if row_ids[i] in new_ids}
            result.duplicates += len(kept) - len(number)
            for i, n in number.items():
                tx.first_use[0].setdefault(ctx[batch.ctx[i]], n)
                tx.first_use[1].setdefault(client[batch.client[i]], n)
            groups = [(incs, [i for i in rows if i in number]) for incs, rows in batch.grouped()]
            deltas = incident_deltas(batch, groups)
            self._add_batch_deltas(tx.deltas, batch, deltas, tx.scan_id)
            _link(tx, (deltas.ids, deltas.of, array("q", map(number.__getitem__, deltas.row))), 0)
        if tx.rolling:
            self._to_roll(tx, batch, ctx, client, added, as_given)
        tx.result.stored += added
        tx.top = top + added
        return as_given

    def _ingest_deltas(self, tx: _IngestState, storing: _Storing) -> None:
        """Add the incident deltas and hit links of a batch whose rows were all stored as
        given (:meth:`_ingest_inserted`) to the transaction's: no use of the connection."""
        batch, first = storing.batch, storing.top + 1
        self._first_use(tx.first_use, batch, storing.ctx, storing.client, first)
        self._add_batch_deltas(tx.deltas, batch, batch.deltas, tx.scan_id)
        _link(tx, batch.links(), first)

    def _ingest_end(self, tx: _IngestState) -> IngestResult:
        """The per-transaction work of an ingest, once its batches (and their hit links) are
        stored: incidents, findings, and the roll-up of what is left when it rolls up."""
        result, deltas = tx.result, tx.deltas
        # the dictionary entries this transaction made: kept with the first row that uses them
        self._contexts.settle(tx.first_use[0])
        self._clients.settle(tx.first_use[1])
        fold = None
        if tx.rolling and (result.stored or tx.gathered is not None):  # (gathered: folded)
            self._gather(tx)
            fold = functools.partial(_fold, self.db.conn, tx.sums)
        links = tx.linked if tx.linked[0] else None
        if result.stored and deltas:  # folded while the incident rows are built
            with _handing_over() if fold is not None else nullcontext():
                self._store_incidents(deltas, result, tx.numbers, tx.stored_incidents, fold,
                                      links)  # fmt: skip
        else:
            if fold is not None:
                fold()
            if links is not None:
                _insert_packs(self.db.conn, link_packs(*links))
        if result.rule_of:
            self._advance_findings(tx.scan_id, result, deltas)
        return result

    @staticmethod
    def _to_roll(tx: _IngestState, batch: Batch, ctx: list[int], client: list[int], added: int,
                 as_given: bool) -> None:  # fmt: skip
        """Keep what a batch just stored (``added`` rows after ``tx.top``) adds to the
        roll-ups: its :class:`monitor.batch.Rollup` added to the transaction's sums when
        all its rows were stored as given (``as_given``: then ``ctx`` and ``client`` number
        all its contexts and clients), else the range of the rows it added, to be summed
        from ``obs_rows`` (:meth:`_gather`)."""
        if as_given and batch.rollup is not None:
            tx.sums.add(batch.rollup, ctx, client)
        elif added:
            last = tx.unsummed[-1] if tx.unsummed else None
            if last is not None and last[1] == tx.top:  # rows that follow: one range
                last[1] = tx.top + added
            else:
                tx.unsummed.append([tx.top, tx.top + added])

    def _gather(self, tx: _IngestState) -> None:
        """Gather the rows the transaction stored since it last did that no batch's
        roll-up rows cover (see :meth:`_to_roll`) for the roll-ups: the first time, in a
        new ``temp.rolled``."""
        conn = self.db.conn
        if tx.gathered is None:
            _gathering(conn)
        elif not tx.unsummed:
            return
        for after, upto in tx.unsummed:
            _gather(conn, after, upto)
        tx.unsummed.clear()
        tx.gathered = tx.top

    def _store_links(self, tx: _IngestState) -> None:
        """Add the hit links of the batch just stored (:func:`_link`) to the transaction's
        pairs, inserted as packs at its end (a row per incident and block of rows: the
        pairs of every batch, inserted as they came, kept SQLite busy on the connection
        the rows' inserts need, in the middle of a scan, when the storing process is what
        the producers wait for). They name incidents by row number, so an incident new to the
        database is given its number as soon as the transaction meets it: the next after
        the last, in the order :meth:`_store_incidents` will insert the new ones (that of
        ``tx.deltas``, to which the batch's incidents were just added)."""
        numbers, deltas = tx.numbers, tx.deltas
        if len(deltas) > len(numbers):  # the incidents the batch added, in order
            met = list(islice(reversed(deltas), len(deltas) - len(numbers)))[::-1]
            stored = self._incident_numbers(met)
            for iid in met:
                n = stored.get(iid)
                if n is None:
                    if tx.last_incident is None:
                        tx.last_incident = tx.stored_incidents = self.db.conn.execute(
                            "SELECT coalesce(max(n), 0) FROM incident_rows"
                        ).fetchone()[0]
                    n = tx.last_incident = tx.last_incident + 1
                numbers[iid] = n
        for ids, of, row, first in tx.links:
            link_pairs([numbers[iid] for iid in ids], of, row, first, tx.linked)
        tx.links.clear()

    @staticmethod
    def _kept(batch: Batch, pruned: str | None, result: IngestResult) -> list[int]:
        """The rows of a batch to store, when some are older than a prune (their twins may
        have been pruned: never counted again) or repeat an earlier row of the batch."""
        ids: set[int] = set()
        kept = []
        for i, oid in enumerate(batch.columns[ROW_ID]):
            if pruned and batch.contexts[batch.ctx[i]][CTX_DAY] < pruned:
                result.expired += 1
            elif oid in ids:
                result.duplicates += 1
            else:
                ids.add(oid)
                kept.append(i)
        return kept

    def _numbers(self, batch: Batch, contexts: Iterable[int], clients: Iterable[int],
                 first_row: int) -> tuple[list[int], list[int]]:  # fmt: skip
        """The dictionary entries of the batch's contexts and clients (by their index in
        the batch; those not asked for: 0), made as needed in order of first use."""
        return (self._contexts.numbers(batch.contexts, contexts, first_row),
                self._clients.numbers(batch.clients, clients, 0))  # fmt: skip

    def _first_use(self, first_use: tuple[dict[int, int], dict[int, int]], batch: Batch,
                   ctx: list[int], client: list[int], first_row: int) -> None:  # fmt: skip
        """Record the first row (all of the batch's rows stored from ``first_row`` on) of
        the dictionary entries made in this transaction that the batch uses (clients: that
        they are used)."""
        made, used = self._contexts.created, first_use[0]
        new = [(i, n) for i, n in enumerate(ctx) if n in made and n not in used] if made else []
        if new:
            rows = batch.ctx
            # a pass over the rows costs about a dozen look-ups (a transaction's first
            # batch: all its contexts are new)
            first = (dict(zip(reversed(rows), range(len(rows) - 1, -1, -1), strict=True)) if len(new) > 12
                     else {i: rows.index(i) for i, _ in new})  # fmt: skip
            for i, n in new:
                used.setdefault(n, first_row + first[i])
        made, used = self._clients.created, first_use[1]
        if made:
            for n in client:
                if n in made:
                    used.setdefault(n, first_row)

    def _insert_rows(self, batch: Batch, ctx: list[int], client: list[int],
                     kept: list[int] | None) -> PendingInsert | None:  # fmt: skip
        """Begin appending the batch's rows (``kept``: those of these indexes; None: all) to
        ``obs_rows``, but those whose id is stored already: how many were added is the
        insert's to say once done (None: no row to add). Columns no row has a value in
        are left out of the statement (NULL either way)."""
        columns, ctxs, clients = batch.columns, batch.ctx, batch.client
        if kept is not None:
            if not kept:
                return None
            columns = [[col[i] for i in kept] for col in columns]
            ctxs, clients = [ctxs[i] for i in kept], [clients[i] for i in kept]
        present = tuple(isinstance(col, array) or col.count(None) != len(col) for col in columns)
        sqls = self._insert_sql.get(present)
        if sqls is None:
            names = ["ctx", "client", *(c for c, p in zip(ROW_FIELDS, present, strict=True) if p)]
            skip = " ON CONFLICT(id) DO NOTHING"
            sqls = self._insert_sql[present] = (  # a row's, and all of them as one statement's
                f"INSERT INTO obs_rows ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}){skip}",  # noqa: S608 - constants
                _insert_all("obs_rows", names, skip),
            )
        values = [col for col, p in zip(columns, present, strict=True) if p]
        via: list[Via] = [ctx, client, *[None] * len(values)]  # numbers by index; lines + base
        if batch.line_base and present[ROW_LINE]:
            via[2 + sum(present[:ROW_LINE])] = batch.line_base
        return PendingInsert(self.db.conn, sqls[0], [ctxs, clients, *values], via, sqls[1])

    def _add_batch_deltas(self, deltas: dict[str, dict[str, Any]], batch: Batch, parts: Deltas,
                          scan_id: int) -> None:  # fmt: skip
        """Add a batch's deltas (:func:`monitor.batch.incident_deltas`) to the transaction's
        (a dict per incident, in order of first appearance: see :meth:`_store_incidents`).
        Incidents stored with all their evidence samples keep them
        (:meth:`_store_incidents`): none are made.

        This runs for each incident of each batch (a hundred thousand times a part at 25 %
        LLM lines), mostly for incidents the transaction has already: their sums are added
        in place, in C when it is built (:func:`monitor.batch.merge_deltas`); only those new
        to the transaction (their incident row) and those with room for evidence samples
        need more, here."""
        stored, sample, facts_of = self._incident_state, batch.sample, shared_facts(parts.facts)
        split = merge_deltas(deltas, parts, facts_of, stored)
        if split is None:  # the reference: in Python
            split = fresh, roomy = [], []
            found = deltas.get
            for k, (iid, count, blocked, sent, received, first, last, facts) in enumerate(zip(
                parts.ids, parts.count, parts.blocked, parts.bytes_out, parts.bytes_in,
                parts.first, parts.last, facts_of, strict=True,
            )):  # fmt: skip
                d = found(iid)
                if d is None:
                    fresh.append(k)
                    continue
                if len(d["evidence"]) < EVIDENCE_SAMPLES:
                    old = stored.get(iid)
                    if old is None or len(old.evidence) < EVIDENCE_SAMPLES:
                        roomy.append(k)
                d["count"] += count
                d["blocked"] += blocked
                if sent is not None:
                    d["bytes_out"] = _add(d["bytes_out"], sent)
                if received is not None:
                    d["bytes_in"] = _add(d["bytes_in"], received)
                if first < d["first"]:
                    d["first"] = first
                if last > d["last"]:
                    d["last"] = last
                if facts is not None and facts is not d["facts"]:
                    d["facts"] = merged_facts(d["facts"], facts)
        fresh, roomy = split
        for k in roomy:
            d = deltas[parts.ids[k]]
            evidence = d["evidence"]
            d["evidence"] = evidence + [
                sample(i) for i in parts.evidence[k][: EVIDENCE_SAMPLES - len(evidence)]
            ]
        for k in fresh:
            iid, inc = parts.ids[k], parts.incs[k]
            old = stored.get(iid)
            full = old is not None and len(old.evidence) >= EVIDENCE_SAMPLES
            deltas[iid] = {"inc": inc, "count": parts.count[k], "blocked": parts.blocked[k],
                           "bytes_out": parts.bytes_out[k], "bytes_in": parts.bytes_in[k],
                           "first": parts.first[k], "last": parts.last[k],
                           "evidence": [] if full else [sample(i) for i in parts.evidence[k]],
                           "facts": facts_of[k],
                           "finding_id": inc.get("finding_id") or _finding_of(inc),
                           "first_scan": scan_id, "last_scan": scan_id}  # fmt: skip

    def _store_incidents(self, deltas: dict[str, dict[str, Any]], result: IngestResult,
                         new_numbers: dict[str, int] | None = None,
                         stored_upto: int | None = None,
                         aside: Callable[[], None] | None = None,
                         links: tuple[array, array] | None = None) -> None:  # fmt: skip
        """Add what new observations brought (``deltas``, per incident) to the incidents
        (``new_numbers``: the row numbers new ones are given, see :meth:`_store_links`;
        those above ``stored_upto`` are new to the database, not looked up in it).
        ``aside``: other work on the connection (SQL: a scan's roll-ups folded), run in a
        thread while the rows are built, before they are inserted; ``links``: hit links
        (incident and row numbers), packed (C, :func:`link_packs`) once the rows are built,
        while the connection inserts them, and inserted after them: packed before all
        else, they kept the connection idle at a scan's end (25 ms of 25 % LLM lines).

        The evidence samples and facts of the incidents this connection stored are
        remembered (:meth:`_forget_incidents`), so an incident that recurs from one
        transaction to the next is neither read back nor rewritten whole, nor its first and
        last times when the new observations are within them. This runs once per incident
        and transaction (thousands per scan): rows are built as tuples, texts numbered and
        facts serialised through caches, and the new rows are inserted a chunk at a time,
        each while the next is built (:meth:`_insert_incidents`): at the end of a scan,
        when no other work is left to overlap, building and inserting them took a third
        of a second one after the other (25 % LLM lines, 14,000 incidents). A chunk is
        what was built while the connection was busy (at least :data:`_INCIDENT_CHUNK`
        rows): the build waits for it only at the end."""
        stored = self._incident_state
        if len(stored) > _INCIDENTS_CACHED:
            stored.clear()
        unknown = [iid for iid in deltas if iid not in stored]
        if stored_upto is not None and new_numbers is not None:
            unknown = [iid for iid in unknown if new_numbers[iid] <= stored_upto]
        stored.update(self._evidence_of(unknown))
        # updates name rows by number, in their order (pages in turn, no index look-up)
        numbers = self._incident_numbers([iid for iid in deltas if iid in stored])
        rule_of, requests = result.rule_of, result.finding_requests
        new_ids, updated_ids = result.new_incidents, result.updated_incidents
        identity, facts_entry = self._identity_texts, self._facts
        new, updates = [], []
        facts_texts: dict[int, str | None] = {}  # by the id of a delta's facts (held by it)
        if aside is not None:
            self._enter_texts(deltas, stored, facts_texts)
            self._incident_insert = PendingCall(self.db.conn, aside)
        for iid, d in deltas.items():
            inc = d["inc"]
            rule_of[iid] = (inc["rule"], inc["severity"])
            requests[d["finding_id"]] += d["count"]
            old = stored.get(iid)
            first, last = d["first"], d["last"]
            if old is None:  # new: its samples and facts are the delta's (merged with none)
                new_ids.add(iid)
                evidence = d["evidence"][:EVIDENCE_SAMPLES]
                evidence_text = _json_strings(evidence)
                facts = d.get("facts") or None  # (facts are replaced, never changed)
                facts_text = _delta_facts_text(facts, facts_texts)
                stored[iid] = _StoredIncident(
                    evidence, evidence_text, facts, facts_text, first, last, d["finding_id"]
                )
                blocked, count = d["blocked"], d["count"]
                n = None if new_numbers is None else new_numbers[iid]
                new.append((n, iid, *identity(inc), inc.get("dest_host"), inc.get("client_ip"),
                            inc.get("site"), inc.get("egress_ip"), inc.get("egress_country"),
                            inc.get("day"), inc.get("user"), d["finding_id"], iso_utc(first),
                            iso_utc(last), count, blocked, d["bytes_out"], d["bytes_in"],
                            _outcome(blocked, count), evidence_text, facts_entry(facts_text),
                            d["first_scan"], d["last_scan"]))  # fmt: skip
                if len(new) >= _INCIDENT_CHUNK and self._incidents_free():
                    self._insert_incidents(new, new_numbers is not None)
                    new = []
                continue
            if len(old.evidence) >= EVIDENCE_SAMPLES:
                evidence, evidence_text = old.evidence, old.evidence_text
            else:
                samples = old.evidence
                evidence = (samples + [e for e in d["evidence"] if e not in samples])[
                    :EVIDENCE_SAMPLES
                ]
                evidence_text = _json_strings(evidence)
            # the transaction's few facts into the stored ones (the lists keep the first few
            # values in a fixed order: merging is the same either way round)
            facts = merge_fact_lists(old.facts, d.get("facts"))
            if facts == old.facts:
                facts_text = old.facts_text
            else:
                facts_text = _facts_json(facts) if facts else None
            updated_ids.add(iid)
            if old.finding_id != d["finding_id"]:  # stored under another (sites changed)
                self._refresh_in_full.update((old.finding_id, d["finding_id"]))
            # times formatted only when they move the stored span (None: it stays)
            lo = None if old.first is None else min(old.first, first)
            hi = None if old.last is None else max(old.last, last)
            stored[iid] = _StoredIncident(evidence, evidence_text, facts, facts_text, lo, hi,
                                          old.finding_id)  # fmt: skip
            updates.append((iso_utc(first) if lo is None or lo != old.first else None,
                            iso_utc(last) if hi is None or hi != old.last else None,
                            d["count"], d["blocked"],
                            d["bytes_out"], d["bytes_in"], evidence_text,
                            facts_entry(facts_text), d["first_scan"], d["last_scan"],
                            numbers[iid]))  # fmt: skip
        packs = None if links is None else link_packs(*links)
        self._insert_incidents(new, new_numbers is not None)
        self._incidents_inserted()
        if packs is not None:
            _insert_packs(self.db.conn, packs)
        updates.sort(key=_LAST)
        self.db.conn.executemany(_UPDATE_INCIDENT, updates)

    def _enter_texts(self, deltas: dict[str, dict[str, Any]], stored: dict[str, Any],
                     facts_texts: dict[int, str | None]) -> None:  # fmt: skip
        """Make the text and facts entries that the rows of the new incidents among
        ``deltas`` take (see :meth:`_store_incidents`; ``facts_texts`` as it keeps them),
        in the order it meets them, up to the first incident ``stored`` already (whose
        facts it merges with the stored ones): it then builds those rows off the
        connection, entries numbered as it would number them."""
        for iid, d in deltas.items():
            if iid in stored:
                return
            self._identity_texts(d["inc"])
            self._facts(_delta_facts_text(d.get("facts") or None, facts_texts))

    def _insert_incidents(self, rows: list[tuple[Any, ...]], numbered: bool) -> None:
        """Begin inserting these new incident rows (``numbered``: their numbers are given,
        and remembered) once the rows begun before are inserted: the caller builds the next
        ones meanwhile, and uses the connection only after :meth:`_incidents_inserted`."""
        self._incidents_inserted()
        if rows:
            columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
            via: list[Via] = [None] * len(columns)
            self._incident_insert = PendingInsert(
                self.db.conn, _INSERT_INCIDENT, columns, via, _INSERT_ALL_INCIDENTS
            )
            if numbered:
                self._incident_keys.update((row[1], row[0]) for row in rows)

    def _incidents_free(self) -> bool:
        """Whether the connection is free of incident rows being inserted and of the work
        aside (see :meth:`_incidents_inserted`), without waiting."""
        return self._incident_insert is None or self._incident_insert.done()

    def _incidents_inserted(self) -> None:
        """Wait for the incident rows being inserted (:meth:`_insert_incidents`), or the
        work aside (see :meth:`_store_incidents`), if any, raising their error: the
        connection is free again."""
        pending, self._incident_insert = self._incident_insert, None
        if pending is not None:
            pending.wait()

    def _identity_texts(self, inc: dict[str, Any]) -> tuple[Any, ...]:
        """Rule, severity, title, provider, kind, egress source and severity rank of an
        incident row, as ``incident_rows`` holds them (texts as their entries): the
        columns of :data:`_INSERT_INCIDENT` that few distinct values fill."""
        key = (inc["rule"], inc["severity"], inc.get("title"), inc.get("provider"),
               inc.get("provider_kind"), inc.get("egress_source"))  # fmt: skip
        values = self._identities.get(key)
        if values is None:
            self._incidents_inserted()  # (the texts' entries are looked up on the connection)
            if len(self._identities) > _CACHED:
                self._identities.clear()
            rule, severity, title, provider, kind, source = key
            text = self._text
            values = (text(rule), text(severity), text(title), provider, text(kind),
                      text(source), SEVERITY_RANK[severity])  # fmt: skip
            self._identities[key] = values
        return values

    def _forget_incidents(self) -> None:
        """Drop what is remembered of stored incidents (after writing them otherwise)."""
        self._incident_keys.clear()
        self._incident_state.clear()
        self._finding_detail.clear()
        self._refresh_in_full.clear()

    def _incident_numbers(self, ids: Sequence[str]) -> dict[str, int]:
        """The row numbers (``incident_rows.n``) of these stored incidents."""
        known = self._incident_keys
        if len(known) > _CACHED:  # a long scan touches ever more incidents: memory stays flat
            known.clear()
        missing = [i for i in ids if i not in known]
        for chunk, marks in _chunks(missing):
            sql = f"SELECT id, n FROM incident_rows WHERE id IN ({marks})"  # noqa: S608
            known.update(self.db.conn.execute(sql, chunk))
        return known

    def _incident_values(self, d: dict[str, Any], cols: Sequence[str]) -> list[Any]:
        """An ``incident_rows`` row: the values of ``cols``, texts as their entries."""
        return [
            self._text(d.get(c))
            if c in _TEXT_COLUMNS
            else self._facts(d.get(c))
            if c == "facts"
            else d.get(c)
            for c in cols
        ]

    def _facts(self, text: str | None) -> int | None:
        """The ``incident_facts`` entry of a facts text, made as needed. Facts grow as a
        scan goes, so their entries are numbered by a digest of the text (the same however
        a scan is cut into transactions) and those left unused go at its end."""
        if text is None:
            return None
        n = self._fact_numbers.get(text)
        if n is None:
            self._incidents_inserted()  # (looked up on the connection)
            if len(self._fact_numbers) > _CACHED:
                self._fact_numbers.clear()
            n = self._fact_numbers[text] = _fact_entry(self.db.conn, text)
        return n

    def _drop_unused_facts(self) -> None:
        self.db.execute(
            "DELETE FROM incident_facts WHERE n NOT IN"
            " (SELECT facts FROM incident_rows WHERE facts IS NOT NULL)"
        )
        self._fact_numbers.clear()

    def _text(self, text: str | None) -> int | None:
        """The ``incident_texts`` entry of a title or facts text (made as needed)."""
        if text is None:
            return None
        n = self._texts.get(text)
        if n is None:
            conn = self.db.conn
            found = conn.execute("SELECT n FROM incident_texts WHERE text = ?", [text]).fetchone()
            n = found[0] if found else conn.execute(
                "INSERT INTO incident_texts (text) VALUES (?)", [text]).lastrowid  # fmt: skip
            self._texts[text] = n
        return n

    def _evidence_of(self, ids: list[str]) -> dict[str, _StoredIncident]:
        """Evidence samples and facts of the incidents among ``ids`` that already exist (and
        their row numbers, remembered as :meth:`_incident_numbers` does)."""
        found: dict[str, _StoredIncident] = {}
        numbers = self._incident_keys
        for chunk, marks in _chunks(ids):
            sql = (
                "SELECT i.id, i.n, i.evidence, f.text, i.finding_id FROM incident_rows i"  # noqa: S608
                f" LEFT JOIN incident_facts f ON f.n = i.facts WHERE i.id IN ({marks})"
            )
            for iid, n, evidence, facts, fid in self.db.execute(sql, chunk):
                numbers[iid] = n
                found[iid] = _StoredIncident(json.loads(evidence or "[]"), evidence,
                                             json.loads(facts) if facts else None, facts,
                                             finding_id=fid)  # fmt: skip
        return found

    # -- findings ---------------------------------------------------------------------------

    def _advance_findings(self, scan_id: int, result: IngestResult,
                          deltas: dict[str, dict[str, Any]] | None = None) -> None:  # fmt: skip
        """Roll the new detail up into its findings: raise new ones, reopen resolved (or
        superseded) ones, and record new activity on acknowledged ones. ``deltas``: what a
        scan's transaction added to the detail (:meth:`_store_incidents`), added to the
        findings' figures rather than recounting them from all their detail."""
        fids = list(result.finding_requests)
        ranks = self._finding_ranks(fids)
        before = self._finding_statuses(fids)
        if deltas is None:
            self._refresh_findings(fids)
        else:
            self._add_to_findings(fids, deltas, result.new_incidents)
        active = []  # findings that stay open or acknowledged: ``updated`` (digested) alerts
        for fid in fids:
            requests = result.finding_requests[fid]
            status = before.get(fid)
            if status is None:
                result.new_findings.add(fid)
                self._event(fid, "new", None, "open", scan_id=scan_id, requests=requests)
                continue
            if status in ("resolved", "superseded"):
                result.reopened_findings.add(fid)
                self.transition(fid, "reopened", "reopened", scan_id=scan_id, requests=requests,
                                note=f"{requests} new request(s) in scan {scan_id}")  # fmt: skip
                continue
            if not self._add_to_last_event(fid, scan_id, requests) and status == "acknowledged":
                self._event(fid, "activity", status, status, scan_id=scan_id, requests=requests)
            active.append(fid)
        if self.emit_events and active:
            self._alert_activity(active, ranks)
        result.finding_requests.clear()

    def _finding_statuses(self, fids: Sequence[str]) -> dict[str, str]:
        return self._finding_column(fids, "status")

    def _finding_ranks(self, fids: Sequence[str]) -> dict[str, int]:
        return self._finding_column(fids, "severity_rank")

    def _finding_column(self, fids: Sequence[str], column: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for chunk, marks in _chunks(fids):
            sql = f"SELECT id, {column} FROM findings WHERE id IN ({marks})"  # noqa: S608
            found.update(self.db.execute(sql, chunk).fetchall())
        return found

    def _refresh_findings(self, fids: Sequence[str]) -> set[str]:
        """Recompute the figures of these findings from their detail (new ones are inserted,
        open); returns those that have detail."""
        cols = ["id", *_ROLLUP_COLUMNS]
        rows = []
        for chunk, marks in _chunks(fids):
            where = f"finding_id IN ({marks})"
            for r in self.db.query(_ROLLUP.format(where=where), chunk):  # noqa: S608 - constants
                rows.append([_rolled(r)[c] for c in cols])
        self._upsert_findings(rows)
        for fid in fids:  # what is known of their detail may be out of date
            self._finding_detail.pop(fid, None)
        return {r[0] for r in rows}

    def _upsert_findings(self, rows: list[list[Any]]) -> None:
        """Write findings' figures (``id`` and :data:`_ROLLUP_COLUMNS`, in order)."""
        cols = ["id", *_ROLLUP_COLUMNS]
        updates = ", ".join(f"{c} = excluded.{c}" for c in _ROLLUP_COLUMNS)
        self.db.conn.executemany(
            f"INSERT INTO findings ({', '.join(cols)}) VALUES ({_marks(cols)}) "  # noqa: S608
            f"ON CONFLICT(id) DO UPDATE SET {updates}",
            rows,
        )

    def _add_to_findings(self, fids: Sequence[str], deltas: dict[str, dict[str, Any]],
                         new: set[str]) -> None:  # fmt: skip
        """What :meth:`_refresh_findings` makes of these findings, worked out from their
        stored figures and what the transaction added (``deltas``; ``new``: the incidents
        it made): a scan's transaction then costs its own detail, not the findings' whole
        history (recounted in every transaction, that grew with the days kept: 10 s of a
        25 % scan on top of 30 days). The distinct clients, users, hosts and days are
        read once per finding and connection, then followed. Findings not stored yet, or
        whose detail moved from one finding to another, are recounted."""
        cols = ["id", *_ROLLUP_COLUMNS]
        stored: dict[str, dict[str, Any]] = {}
        for chunk, marks in _chunks(fids):
            sql = f"SELECT {', '.join(cols)} FROM findings WHERE id IN ({marks})"  # noqa: S608
            stored.update((r["id"], r) for r in self.db.query(sql, chunk))
        again = self._refresh_in_full
        added: dict[str, dict[str, Any]] = {}
        for iid, d in deltas.items():
            fid = d["finding_id"]
            f = added.get(fid)
            if f is None:
                if fid not in stored or fid in again:
                    continue
                f = added[fid] = {**stored[fid], "new": []}
                f["first"], f["last"] = d["first"], d["last"]
            if d["first_scan"] is None or d["last_scan"] is None:
                again.add(fid)
            f["count"] += d["count"]
            f["blocked"] = (f["blocked"] or 0) + d["blocked"]
            f["bytes_out"] = _add(f["bytes_out"], d["bytes_out"])
            f["bytes_in"] = _add(f["bytes_in"], d["bytes_in"])
            f["first"], f["last"] = min(f["first"], d["first"]), max(f["last"], d["last"])
            f["first_scan"] = _least(f["first_scan"], d["first_scan"])
            f["last_scan"] = _greatest(f["last_scan"], d["last_scan"])
            if iid in new:
                f["new"].append(d["inc"])
        rows = []
        for fid, f in added.items():
            if fid in again:
                continue
            f["first_seen"] = _least(f["first_seen"], iso_utc(f["first"]))
            f["last_seen"] = _greatest(f["last_seen"], iso_utc(f["last"]))
            if f["new"] and not self._add_detail(f):
                again.add(fid)
                continue
            rows.append([f[c] for c in cols])
        self._upsert_findings(rows)
        # recounted: those not added to, and those whose detail moved to another finding
        moved = sorted(f for f in again if f is not None and f not in added and f not in fids)
        self._refresh_findings([fid for fid in fids if fid not in added or fid in again] + moved)
        again.clear()

    def _add_detail(self, f: dict[str, Any]) -> bool:
        """Add new incidents' rule, provider, site, severity, title, egress country and
        distinct detail to the figures of their finding ``f``; False when a value is one
        a recount would read otherwise (a country list with a comma)."""
        incs = f["new"]
        listed = [c for c in (f["egress_country"] or "").split(",") if c]
        countries = set(listed)
        if len(countries) < len(listed):
            return False
        for inc in incs:
            country = inc.get("egress_country")
            if country is not None and "," in country:
                return False
            countries.add(country)
            for name, take in (("rule", _least), ("provider", _least), ("site", _least),
                               ("title", _greatest)):  # fmt: skip
                f[name] = take(f[name], inc.get(name))
            f["severity_rank"] = _greatest(f["severity_rank"], SEVERITY_RANK[inc["severity"]])
        countries.discard(None)
        countries.discard("")
        f["egress_country"] = ",".join(sorted(countries)) or None
        f["severity"] = _SEVERITY_OF_RANK[f["severity_rank"]]
        detail = self._finding_detail.get(f["id"])
        if detail is None:  # read once: this transaction's new incidents are stored already
            if len(self._finding_detail) > 64:
                self._finding_detail.clear()
            detail = self._finding_detail[f["id"]] = (set(), set(), set(), set())
            sql = "SELECT client_ip, user, dest_host, day FROM incident_rows WHERE finding_id = ?"
            for row in self.db.execute(sql, [f["id"]]):
                for values, value in zip(detail, row, strict=True):
                    values.add(value)
        else:
            for inc in incs:
                for values, name in zip(detail, _DETAIL, strict=True):
                    values.add(inc.get(name))
        for values, name in zip(detail, ("clients", "users", "hosts", "days"), strict=True):
            f[name] = len(values) - (None in values)
        return True

    def _add_to_last_event(self, fid: str, scan_id: int, requests: int) -> bool:
        """Later batches of one scan add to the event its first batch recorded."""
        last = self.db.execute(
            "SELECT id, action, scan_id FROM finding_events WHERE finding_id = ? ORDER BY id DESC LIMIT 1",
            [fid],
        ).fetchone()
        if last is None or last[2] != scan_id or last[1] not in ("new", "reopened", "activity"):
            return False
        self.db.execute(
            "UPDATE finding_events SET requests = requests + ? WHERE id = ?", [requests, last[0]]
        )
        return True

    def _event(self, fid: str, action: str, status_from: str | None, status_to: str | None,
               **fields: Any) -> dict[str, Any]:  # fmt: skip
        """Record one lifecycle event (the audit trail of findings; sinks read it from here)."""
        event = {"finding_id": fid, "at": _now(), "action": action, "status_from": status_from,
                 "status_to": status_to, "note": None, "actor": None, "scan_id": None,
                 "requests": None, **fields}  # fmt: skip
        event["id"] = self._insert("finding_events", [event])
        if self.emit_events and action in _ALERTED_ACTIONS:  # the alert, in its transaction
            self._outbox([self._finding_event(
                fid, action, event["requests"] or 0, actor=event["actor"], note=event["note"],
                until=fields.get("until"))])  # fmt: skip
        return event

    def _finding_event(
        self, fid: str, kind: str, new_count: int = 0, **change: Any
    ) -> FindingEvent:
        """An alert about finding ``fid`` as it is now; where, who and which host come from
        its most recent detail row (the finding spans many); ``change``: who, why, until."""
        (row,) = self.db.query("SELECT * FROM findings WHERE id = ?", [fid])
        latest = list(self.db.query(
            "SELECT egress_ip, dest_host, client_ip FROM incidents WHERE finding_id = ?"
            " ORDER BY last_seen DESC, id LIMIT 1", [fid]))  # fmt: skip
        return FindingEvent.of_finding(
            {**row, **(latest[0] if latest else {})}, kind, new_count, **change
        )

    def _alert_activity(self, fids: Sequence[str], ranks: dict[str, int]) -> None:
        """Alerts for new traffic on findings that stay open or acknowledged: ``escalated``
        when the finding's severity rose, otherwise ``updated`` at most once per digest
        window per finding (the next one carries the requests since: a flood is one alert
        plus counts)."""
        now = time.time()
        state = {
            r["finding_id"]: r
            for r in self._rows_in("SELECT * FROM finding_alerts WHERE finding_id IN ({})", fids)
        }
        risen = self._finding_ranks(fids)
        events = []
        for fid in fids:
            last = state.get(fid)
            if risen.get(fid, 0) > ranks.get(fid, 0):
                kind = "escalated"
            elif last is None or now - last["last_event_at"] >= self.digest_seconds:
                kind = "updated"
            else:
                continue
            event = self._finding_event(fid, kind)
            since = event.count - (last or {}).get("last_count", 0)
            events.append(dataclasses.replace(event, new_count=max(since, 0)))
        self._outbox(events)

    def transition(
        self, fid: str, status: str, action: str, cascade: bool = True, **fields: Any
    ) -> dict[str, Any]:
        """The one place a finding's status changes: the row, its detail rows (``cascade``)
        and the audit trail, in the caller's transaction. Reopening touches only resolved
        detail."""
        (current,) = self.db.execute("SELECT status FROM findings WHERE id = ?", [fid]).fetchone()
        self.db.execute(
            "UPDATE findings SET status = ?, changed = ? WHERE id = ?", [status, _now(), fid]
        )
        if cascade:
            self.db.execute(
                "UPDATE incident_rows SET status = ? WHERE finding_id = ?"
                " AND (? != 'reopened' OR status = 'resolved')",
                [status, fid, status],
            )
        return self._event(fid, action, current, status, **fields)

    def resolve_finding_id(self, id_or_prefix: str) -> str:
        """The finding an id or unique id prefix names; KeyError otherwise."""
        rows = self.db.execute(
            "SELECT id FROM findings WHERE id LIKE ? || '%' ESCAPE '\\' LIMIT 2",
            [_like_escape(id_or_prefix)],
        ).fetchall()
        if len(rows) != 1:
            raise KeyError(
                f"finding id prefix {id_or_prefix!r} is ambiguous"
                if rows
                else f"no finding with id {id_or_prefix!r}"
            )
        return rows[0][0]

    def set_finding_status(
        self, ids: Sequence[str], status: str, note: str, actor: str | None = None,
        until: str | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Acknowledge or resolve findings (ids, or unique prefixes), with who and why; ``until``
        (acknowledge only) makes it an exception that expires after that day. A finding
        already in that state (and with that exception) is left alone. KeyError: unknown id."""
        if status not in ("acknowledged", "resolved", "open"):
            raise ValueError("status must be acknowledged, resolved or open")
        if not note or not note.strip():
            raise ValueError("a non-empty note is required")
        events = []
        with self._tx():
            for fid in self.would_change(ids, status, until):
                (current,) = self.db.execute(
                    "SELECT status FROM findings WHERE id = ?", [fid]
                ).fetchone()
                if until is not None:
                    self.db.execute(
                        "UPDATE findings SET exception_until = ?, exception_reason = ?,"
                        " exception_by = ?, exception_source = 'ack' WHERE id = ?",
                        [until, note, actor, fid],
                    )
                elif current == "acknowledged" or status != "acknowledged":
                    self._clear_exception(fid, "ack")
                action = "excepted" if until is not None else status
                events.append(self.transition(fid, status, action, note=note, actor=actor,
                                              until=until))  # fmt: skip
        return events

    def would_change(self, ids: Sequence[str], status: str, until: str | None = None) -> list[str]:
        """The findings among ``ids`` (or unique prefixes) that setting ``status`` (with an
        exception ``until``) changes: not already so. KeyError: unknown or ambiguous id."""
        changing = []
        for fid in dict.fromkeys(self.resolve_finding_id(i) for i in ids):
            current, holds = self.db.execute(
                "SELECT status, exception_until FROM findings WHERE id = ?", [fid]
            ).fetchone()
            if current != status or (until is not None and holds != until):
                changing.append(fid)
        return changing

    def _clear_exception(self, fid: str, source: str | None = None) -> None:
        self.db.execute(
            "UPDATE findings SET exception_until = NULL, exception_reason = NULL, exception_by = NULL,"
            " exception_source = NULL WHERE id = ? AND (? IS NULL OR exception_source = ?)",
            [fid, source, source],
        )

    def apply_exceptions(
        self, entries: Sequence[ExceptionEntry], today: str
    ) -> list[dict[str, Any]]:
        """Bring exceptions up to date on ``today`` (YYYY-MM-DD): ``ack --until`` ones that
        ran out reopen their finding; config entries in force mark the findings they cover,
        and those that ran out or no longer cover it are removed. Returns the events."""
        events: list[dict[str, Any]] = []
        with self._tx():
            for fid, until, by in self.db.execute(
                "SELECT id, exception_until, exception_by FROM findings"
                " WHERE exception_source = 'ack' AND exception_until < ?",
                [today],
            ).fetchall():
                self._clear_exception(fid)
                events.append(self.transition(
                    fid, "open", "exception-expired", until=until,
                    note=f"exception (ack by {by or '?'}) ran out after {until}"))  # fmt: skip
            in_force = [e for e in entries if e.holds(today)]
            lapsed = {f"config:{e.key}": e.until for e in entries if not e.holds(today)}
            rows = list(self.db.query(
                "SELECT * FROM findings WHERE status != 'superseded'"
                " AND (exception_source IS NULL OR exception_source != 'ack')"))  # fmt: skip
            detail = self._detail_who([r["id"] for r in rows]) if in_force else {}
            for row in rows:
                clients, users = detail.get(row["id"], ((), ()))
                entry = next((e for e in in_force if e.covers(row, clients, users)), None)
                source = f"config:{entry.key}" if entry else None
                same = entry is not None and (row["exception_source"] or "").startswith(
                    "config:") and (row["exception_until"], row["exception_reason"],
                    row["exception_by"]) == (entry.until, entry.reason, entry.approver)  # fmt: skip
                if source == row["exception_source"] and (entry is None or same):
                    continue
                if same:  # the same exception, moved within the register: nothing to say
                    self.db.execute("UPDATE findings SET exception_source = ? WHERE id = ?",
                                    [source, row["id"]])  # fmt: skip
                    continue
                if entry is None:
                    self._clear_exception(row["id"])
                    was = lapsed.get(row["exception_source"])
                    why = f"ran out after {was}" if was else "was withdrawn from the config"
                    events.append(self._event(
                        row["id"], "exception-expired", row["status"], row["status"],
                        until=was or row["exception_until"],
                        note=f"{row['exception_source']}: exception {why}"))  # fmt: skip
                    continue
                self.db.execute(
                    "UPDATE findings SET exception_until = ?, exception_reason = ?,"
                    " exception_by = ?, exception_source = ? WHERE id = ?",
                    [entry.until, entry.reason, entry.approver, source, row["id"]],
                )
                events.append(self._event(row["id"], "excepted", row["status"], row["status"],
                                          note=f"{entry.key} until {entry.until}: {entry.reason}",
                                          actor=entry.approver))  # fmt: skip
        return events

    def _detail_who(self, fids: Sequence[str]) -> dict[str, tuple[list[str], list[str]]]:
        """Distinct clients and users of each finding's detail."""
        who: dict[str, tuple[list[str], list[str]]] = {}
        for chunk, marks in _chunks(fids):
            for fid, client, user in self.db.execute(
                "SELECT DISTINCT finding_id, client_ip, user FROM incidents"  # noqa: S608
                f" WHERE finding_id IN ({marks})",
                chunk,
            ):
                clients, users = who.setdefault(fid, ([], []))
                clients.append(client)
                users.append(user)
        return who

    def raised_findings(
        self, scan_ids: Sequence[int], min_severity: str, today: str, since: str | None = None,
        also: Sequence[str] = (),
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Findings ``fail_on`` counts: open or reopened, at or above ``min_severity``, not
        under an exception on ``today``, that these scans raised, reopened or added detail to,
        or whose exception ran out (open again) at or after ``since`` (ISO 8601 UTC), or
        among ``also``."""
        marks = _marks(scan_ids)
        sql = f"""SELECT * FROM findings
            WHERE status IN ({_marks(ACTIVE_STATUSES)}) AND severity_rank >= ?
              AND (exception_until IS NULL OR exception_until < ?)
              AND (id IN (SELECT finding_id FROM incidents WHERE first_scan IN ({marks}))
                   OR id IN (SELECT finding_id FROM finding_events
                             WHERE action = 'reopened' AND scan_id IN ({marks}))
                   OR id IN (SELECT finding_id FROM finding_events
                             WHERE action = 'exception-expired' AND at >= ?)
                   OR id IN ({_marks(also)}))
            ORDER BY severity_rank DESC, id"""  # noqa: S608 - placeholders only
        params = [*ACTIVE_STATUSES, SEVERITY_RANK[min_severity], today, *scan_ids, *scan_ids,
                  since or "~", *also]  # fmt: skip
        return [_finding_out(r) for r in self.db.query(sql, params)]

    def findings(self, q: FindingQuery) -> Iterator[dict[str, Any]]:
        """Findings, newest activity first (superseded ones only when asked for by status);
        with a client or user filter, their figures count only that detail."""
        where, params = self._filters(q, "f.")
        if not q.status:
            where.append("f.status != 'superseded'")
        detail_where, detail_params = self._detail_filters(q)
        if detail_where:
            cols = ", ".join(f"d.{c}" for c in _ROLLUP_COLUMNS if c != "severity")
            rollup = _ROLLUP.format(where=" AND ".join(detail_where))
            sql = (
                f"SELECT f.id, f.severity, f.status, f.exception_until, f.exception_reason, "  # noqa: S608
                f"f.exception_by, f.exception_source, f.changed, {cols} "
                f"FROM findings f JOIN ({rollup}) d ON d.id = f.id"
            )
            params = detail_params + params
        else:
            sql = "SELECT * FROM findings f"
        sql += f" WHERE {' AND '.join(where)} ORDER BY f.last_seen DESC, f.id"
        if q.limit:
            sql += " LIMIT ?"
            params.append(q.limit)
        for row in self.db.query(sql, params):
            yield _finding_out(row)

    def _filters(self, q: IncidentQuery, alias: str = "") -> tuple[list[str], list[Any]]:
        """WHERE terms shared by findings and incidents (bound parameters only)."""
        where, params = ["1 = 1"], []
        if q.since:
            where.append(f"{alias}last_seen >= ?")
            params.append(q.since)
        if q.until:
            where.append(f"{alias}first_seen < ?")
            params.append(q.until)
        if q.min_severity:
            where.append(f"{alias}severity_rank >= ?")
            params.append(SEVERITY_RANK[q.min_severity])
        for column, values in (
            ("rule", q.rule), ("provider", q.provider), ("site", q.site), ("status", q.status)
        ):  # fmt: skip
            if values:
                where.append(f"{alias}{column} IN ({_marks(values)})")
                params.extend(values)
        return where, params

    def _detail_filters(self, q: IncidentQuery) -> tuple[list[str], list[Any]]:
        """WHERE terms on detail rows for ``--client`` (addresses or CIDRs) and ``--user``."""
        where: list[str] = []
        params: list[Any] = []
        if q.client:
            known = [r[0] for r in self.db.execute("SELECT DISTINCT client_ip FROM incident_rows")]
            chosen = _chosen_clients(known, q.client)
            where.append(f"client_ip IN ({_marks(chosen)})" if chosen else "0")
            params.extend(chosen)
        if q.user:
            where.append(f"user IN ({_marks(q.user)})")
            params.extend(q.user)
        if where:
            where.insert(0, "finding_id IS NOT NULL")
        return where, params

    def finding(self, id_or_prefix: str, top: int = 10, samples: int = 20) -> dict[str, Any] | None:
        """One finding with its top clients, users, hosts and days, its detail rows'
        evidence, sample records and audit trail. KeyError: ambiguous prefix."""
        try:
            fid = self.resolve_finding_id(id_or_prefix)
        except KeyError as exc:
            if "ambiguous" in exc.args[0]:
                raise
            return None
        (row,) = self.db.query("SELECT * FROM findings WHERE id = ?", [fid])
        out = _finding_out(row)
        for name, column in (("top_clients", "client_ip"), ("top_users", "user"),
                             ("top_hosts", "dest_host"), ("top_days", "day")):  # fmt: skip
            out[name] = [
                {"value": r[0], "count": r[1], "incidents": r[2]}
                for r in self.db.execute(
                    f"SELECT {column}, sum(count) AS n, count(*) FROM incidents"  # noqa: S608
                    f" WHERE finding_id = ? AND {column} IS NOT NULL GROUP BY {column}"
                    " ORDER BY n DESC, 1 LIMIT ?",
                    [fid, top],
                )
            ]
        evidence: list[str] = []
        for (ev,) in self.db.execute(
            "SELECT evidence FROM incidents WHERE finding_id = ? ORDER BY first_seen, id", [fid]
        ):
            evidence.extend(e for e in json.loads(ev or "[]") if e not in evidence)
            if len(evidence) >= samples:
                break
        out["evidence"] = evidence[:samples]
        out["events"] = self.finding_events(fid)
        out["records"] = self._sample_records("finding_id", fid, samples)
        return out

    def _sample_records(
        self, column: Literal["finding_id", "id"], value: str, samples: int
    ) -> list[dict[str, Any]]:
        """The first ``samples`` stored records of the incidents whose ``column`` (their
        finding's id, or their own) is ``value``, oldest first."""
        return [
            {**r, "ts": iso_utc(r["ts"])}
            for r in self.db.query(
                f"""SELECT {_OBS_COLUMNS} FROM incident_rows i CROSS JOIN hit_links l
                   ON l.incident = i.n CROSS JOIN {_OBS}
                   WHERE o.n = l.obs AND i.{column} = ? ORDER BY o.ts, c.source, o.line LIMIT ?""",  # noqa: S608
                [value, samples],
            )
        ]

    def finding_events(
        self, fid: str | None = None, since: str | None = None
    ) -> list[dict[str, Any]]:
        """The findings' audit trail, oldest first (of one finding, or all since a time)."""
        if fid is not None:
            return list(self.db.query(
                "SELECT * FROM finding_events WHERE finding_id = ? ORDER BY id", [fid]))  # fmt: skip
        return list(self.db.query(
            "SELECT * FROM finding_events WHERE at >= ? ORDER BY id", [since or ""]))  # fmt: skip

    # -- re-evaluation ----------------------------------------------------------------------

    def evaluation_start(self, since_day: str | None) -> str:
        """The first UTC day a re-evaluation can recompute: ``since_day``, but never before
        the traffic detail that is still kept (pruned days have no observations)."""
        return max(since_day or "", self._meta("pruned_before") or "")

    def _days(self, first_day: str, last_day: str) -> tuple[str, list[Any]]:
        """A WHERE term on :data:`_OBS` for the observations of UTC days ``[first_day,
        last_day]``: their row numbers' lower bound narrows the read to the recent rows."""
        return _DAYS, [first_day, last_day, first_day, last_day]

    def _temp_table(self, name: str, columns: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """A temporary table of ``rows``: a row group (context, client, URL), indexed, and
        ``columns`` (see :meth:`_temp_rows`)."""
        self._temp_rows(name, f"ctx INTEGER, client INTEGER, url TEXT, {columns}",
                        "ctx, client, url", rows)  # fmt: skip

    def _rows_in_span(
        self, since: datetime, until: datetime, where: TrafficFilter, late: int | None = None
    ) -> tuple[str, list[Any]]:
        """A WHERE term on ``obs_rows o`` alone for the observations of ``[since, until)``
        that ``where`` selects: with a site or provider, their contexts are chosen first (a
        few per day), so a report groups the rows by their context number and looks each
        context up once. Without one, the times alone choose the rows (a row's context is
        of its UTC day), and are compared before the clients are looked up: a row's probe
        of the period's contexts cost a third of a month's client-filtered rows in a
        non-UTC zone (10 M requests: 5.2 s -> 3.5 s). With ``late``, only the rows that
        many seconds or more into their UTC day."""
        first, last = _day_span(since, until)
        rows = f"{_FROM_ROW} AND o.ts >= ? AND o.ts < ?"
        params = [first, last, since.timestamp(), until.timestamp()]
        if late is not None:
            rows += " AND CAST(o.ts AS INTEGER) % 86400 >= ?"
            params.append(late)
        if where.sites or where.providers:
            chosen, chosen_params = _chosen("o", first, last, where)
            return f"{rows} AND {chosen}", params + chosen_params
        who, who_params = _clients_chosen("o", where)
        return rows + who, params + who_params

    def _grouped(
        self, since: datetime, until: datetime, where: TrafficFilter, clients: bool = True,
        hours: bool = False,
    ) -> tuple[str, list[Any]]:  # fmt: skip
        """A query of the requests of ``[since, until)`` that ``where`` selects, summed per
        context and client (``ctx, client, requests, bytes_out, bytes_in, url, first_ts,
        last_ts``; a pair may come in several rows): the whole UTC days in it from their
        roll-ups (and the rows stored since the last roll-up), part days from their rows.
        Without ``clients`` (and no filter on them), the whole days come from the contexts'
        totals, with null for client and URL; with ``hours`` too, part days whose bounds
        fall on the hour from their hourly totals, with null first_ts and last_ts too (a month of
        Asia/Shanghai: the rows of two days read to find those of 16 hours took 0.7 s)."""
        start, end = _day_ceil(since), _day_floor(until)
        if start >= end:  # no whole day in it
            return self._rows_grouped(since, until, where)
        first, last = _day_span(start, end)
        rolled, params = _chosen("r", first, last, where, self._probe_rollup(first, last, where))
        if clients or where.names_clients:
            rolled = f"SELECT {_ROLLUP_ROW} FROM obs_rollup r WHERE {rolled}"  # noqa: S608
        else:
            rolled = (
                "SELECT r.ctx, NULL, r.requests, r.bytes_out, r.bytes_in, NULL, r.first_ts,"  # noqa: S608
                f" r.last_ts FROM obs_context_totals r WHERE {rolled}"
            )
        recent, recent_params = self._recent(first, last, where)
        parts = [rolled, recent]
        params += recent_params
        hourly = hours and not clients and not where.names_clients
        for a, b in ((since, start), (end, until)):
            if a < b:
                if hourly and a.timestamp() % 3600 == 0 and b.timestamp() % 3600 == 0:
                    rows, rows_params = _hourly(a, b, where)
                    rows = f"SELECT ctx, NULL, requests, bytes_out, bytes_in, NULL, NULL, NULL FROM ({rows})"  # noqa: S608
                else:
                    rows, rows_params = self._rows_grouped(a, b, where)
                parts.append(rows)
                params += rows_params
        return " UNION ALL ".join(parts), params

    def _probe_rollup(self, first: str, last: str, where: TrafficFilter) -> bool:
        """Whether a roll-up read of UTC days ``[first, last]`` should look up each client
        ``where`` chooses in each context (its (ctx, client) key: a probe per pair) rather
        than read the contexts' rows and keep those of the chosen clients. A probe costs
        about what ten rows read do (measured on 10 M requests: a probe 0.85 µs, a row
        0.09 µs), so it pays while the chosen entries are under a tenth of the rows of a
        context, counted on a sample of the period's contexts. Alice's 5,000 addresses
        probed took 40 s for two months where reading the rows took 1.2 s; one address 0.02
        s where reading took 0.49 s."""
        who, params = TrafficFilter(users=where.users, clients=where.clients).sql()
        if not who:
            return True
        sample = "SELECT n FROM obs_contexts WHERE day >= ? AND day <= ? LIMIT 16"
        ((chosen, contexts, rows),) = self._read_only(
            f"""SELECT (SELECT count(*) FROM obs_clients WHERE 1 = 1{who}),
                       (SELECT count(*) FROM ({sample})),
                       (SELECT count(*) FROM obs_rollup WHERE ctx IN ({sample}))""",  # noqa: S608
            [*params, first, last, first, last],
        ).rows
        return chosen * _PROBE_ROWS <= rows / max(contexts, 1)

    def _recent(self, first: str, last: str, where: TrafficFilter) -> tuple[str, list[Any]]:
        """:meth:`_grouped` of the rows of UTC days ``[first, last]`` stored since the last
        roll-up (the roll-ups hold the others)."""
        rows, params = _chosen("o", first, last, where)
        sql = f"SELECT {_ROLLED_ROWS} FROM obs_rows o WHERE o.n > {_MARK} AND {rows} GROUP BY 1, 2"  # noqa: S608
        return sql, params

    def _by_dest(
        self, since: datetime, until: datetime, where: TrafficFilter, summed: bool = False
    ) -> tuple[str, list[Any]]:
        """A query of the requests of ``[since, until)`` that ``where`` selects, summed per
        client and destination (``client``, :data:`_DEST_COLUMNS`, ``requests, bytes_out,
        bytes_in, url``; a pair may come in several rows): whole UTC months from their
        monthly roll-ups, the rest as :meth:`_grouped` reads it (``summed``: see
        :func:`_dest_rows`)."""

        def days(a: datetime, b: datetime) -> tuple[str, str] | None:  # the UTC days of [a, b)
            return _day_span(a, b) if summed else None

        start = _day_floor(since).replace(day=1)
        if start != since:
            start = (start + timedelta(days=31)).replace(day=1)
        end = _day_floor(until).replace(day=1)
        if start >= end:  # no whole month in it
            return _dest_rows(*self._grouped(since, until, where), days(since, until))
        first, last = start.strftime("%Y-%m"), (end - timedelta(days=1)).strftime("%Y-%m")
        f, params = where.sql("d", who=False)
        who, who_params = _clients_chosen("m", where)
        dests = ", ".join(f"d.{c}" for c in _DEST_COLUMNS)
        parts = [
            f"SELECT m.client, {dests}, m.requests, m.bytes_out, m.bytes_in, m.url"  # noqa: S608
            f" FROM obs_monthly m CROSS JOIN obs_dests d ON d.n = m.dest"
            f" WHERE m.month >= ? AND m.month <= ?{f}{who}"
        ]
        params = [first, last, *params, *who_params]
        recent, recent_params = _dest_rows(
            *self._recent(first, last + "~", where), (first, last + "~") if summed else None
        )
        parts.append(recent)
        params += recent_params
        for a, b in ((since, start), (end, until)):
            if a < b:
                rest, rest_params = _dest_rows(*self._grouped(a, b, where), days(a, b))
                parts.append(rest)
                params += rest_params
        return " UNION ALL ".join(parts), params

    def _rows_grouped(
        self, since: datetime, until: datetime, where: TrafficFilter
    ) -> tuple[str, list[Any]]:
        """:meth:`_grouped` of ``[since, until)`` from the rows."""
        rows, params = self._rows_in_span(since, until, where)
        return f"SELECT {_ROLLED_ROWS} FROM obs_rows o WHERE {rows} GROUP BY 1, 2", params  # noqa: S608

    def _first_row(self, first_day: str, last_day: str = "9999") -> int:
        """A lower bound of the row numbers of observations of these UTC days."""
        found = self.db.conn.execute(
            "SELECT min(first_row) FROM obs_contexts WHERE day >= ? AND day <= ?",
            [first_day, last_day],
        ).fetchone()[0]
        return 1 << 62 if found is None else found

    def scan_options(self) -> dict[int, dict[str, Any]]:
        """Each scan's recorded options (``egress``, ``pseudonymize``, …) by id."""
        return {
            r[0]: json.loads(r[1] or "{}") for r in self.db.execute("SELECT id, options FROM scans")
        }

    def scans_with_observations(self, start_day: str) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT scan_id FROM obs_contexts WHERE day >= ? ORDER BY scan_id",
            [start_day])]  # fmt: skip

    def reevaluate(
        self,
        start_day: str,
        evaluate: Callable[
            [list[Any]], tuple[list[tuple[int, Any]], Sequence[dict[str, Any]]] | None
        ],
        digest: str | None = None,
        actor: str = "apiwatch reevaluate",
        batch: int = 20000,
        correlated: Sequence[str] = (),
    ) -> ReevaluationResult:
        """Recompute everything stored from ``start_day`` on, in one transaction. The record
        path reads nothing per request but the URL, so the stored rows go through
        ``evaluate`` once per group of one context, client and URL (a client calls the same
        host from the same egress all day): it returns the changes to the row's columns as
        (position, value) pairs and its incident rows, or None when it is no longer LLM
        traffic. The rows move to their new context and the incidents are summed per group
        in SQL, exactly as a scan stores them; detail statuses and finding lifecycles are
        kept, findings left without detail are superseded and findings that appear are
        raised, with events. The detail of the ``correlated`` rules (computed from the
        history, not per record) is left to the correlation step that follows
        (:meth:`replace_correlated`)."""
        out = ReevaluationResult()
        agg = IngestResult()
        conn = self.db.conn
        context, client = self._contexts.number, self._clients.number
        per_record = f"day >= ? AND rule NOT IN ({_marks(correlated)})"
        # the same on incident_rows, whose rules are text entries
        own_rows = (
            "day >= ? AND rule NOT IN"  # noqa: S608 - placeholders
            f" (SELECT n FROM incident_texts WHERE text IN ({_marks(correlated)}))"
        )
        with self._tx():
            old_status = dict(conn.execute(
                f"SELECT id, status FROM incidents WHERE {per_record} AND status != 'open'",  # noqa: S608
                [start_day, *correlated]))  # fmt: skip
            old_fids = {r[0] for r in conn.execute(
                f"SELECT DISTINCT finding_id FROM incidents WHERE {per_record}",  # noqa: S608
                [start_day, *correlated])}  # fmt: skip
            lo = self._first_row(start_day)
            rows = "o.n >= ? AND o.ctx IN (SELECT n FROM obs_contexts WHERE day >= ?)"
            span = [lo, start_day]
            # every row summed; the roll-ups of these days are made again once rows have moved
            _roll_up(conn)
            recent = "ctx IN (SELECT n FROM obs_contexts WHERE day >= ?)"
            for table in ("obs_rollup", "obs_context_totals", "obs_hourly"):
                conn.execute(f"DELETE FROM {table} WHERE {recent}", [start_day])  # noqa: S608
            _unlink(conn, f"SELECT o.n FROM obs_rows o WHERE {rows}", span)  # noqa: S608
            conn.execute(
                f"DELETE FROM hit_packs WHERE incident IN (SELECT n FROM incident_rows WHERE {own_rows})",  # noqa: S608
                [start_day, *correlated],
            )
            conn.execute(f"DELETE FROM incident_rows WHERE {own_rows}", [start_day, *correlated])  # noqa: S608
            self._forget_incidents()
            # the groups of rows the record path cannot tell apart: one context, client, URL
            groups = conn.execute(
                f"""SELECT g.ctx, g.client, g.url, g.first, g.rows, g.bytes_out, g.bytes_in,
                      g.first_ts, g.last_ts, {_OBS_COLUMNS}
                    FROM (SELECT o.ctx, o.client, o.url, min(o.n) AS first, count(*) AS rows,
                            {_sums("o.")},
                            min(o.ts) AS first_ts, max(o.ts) AS last_ts
                          FROM obs_rows o WHERE {rows} GROUP BY o.ctx, o.client, o.url) g
                    CROSS JOIN {_OBS} WHERE o.n = g.first ORDER BY g.first""",  # noqa: S608
                span,
            ).fetchall()
            samples: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
            for ctx, who, url, n, line in conn.execute(
                f"""SELECT ctx, client, url, n, line FROM (SELECT o.ctx, o.client, o.url, o.n,
                      o.line, row_number() OVER (PARTITION BY o.ctx, o.client, o.url
                                                 ORDER BY o.n) AS k
                    FROM obs_rows o WHERE {rows}) WHERE k <= ? ORDER BY n""",  # noqa: S608
                [*span, EVIDENCE_SAMPLES],
            ):
                samples.setdefault((ctx, who, url), []).append((n, line))
            regroup: list[tuple[Any, ...]] = []  # (ctx, client, url, new ctx, new client, gone)
            moved: list[tuple[int, int]] = []  # (first row, context it moves to)
            links: list[tuple[Any, ...]] = []  # (ctx, client, url, incident id), as stored
            deltas: dict[str, dict[str, Any]] = {}
            for g in groups:
                key, first, count = g[:3], g[3], g[4]
                row = list(g[9:])
                out.observations += count
                new = evaluate(row)
                if new is None:
                    out.removed += count
                    regroup.append((*key, None, None, 1))
                    continue
                changes, incs = new
                ctx, who = key[0], key[1]
                if changes:  # of the context and client: per-request values come from the row
                    out.changed += count
                    for i, v in changes:
                        row[i] = v
                    ctx, who = context(CONTEXT_OF(row), first), client(CLIENT_OF(row), 0)
                    if (ctx, who) != (key[0], key[1]):
                        regroup.append((*key, ctx, who, 0))
                        moved.append((first, ctx))
                source, blocked = row[_SOURCE], count if row[_OUTCOME] == "blocked" else 0
                evidence = [(n, f"{source}:{line}") for n, line in samples[key]]
                for inc in incs:
                    d = deltas.get(inc["id"])
                    if d is None:
                        d = deltas[inc["id"]] = _delta(inc, g[7], row[_SCAN])
                    links.append((ctx, who, key[2], inc["id"]))
                    facts = inc.get("facts")
                    if facts and facts is not d.get("facts_of"):
                        d["facts_of"] = facts
                        d["facts"] = merge_facts(d.get("facts"), facts)
                    d["count"] += count
                    d["blocked"] += blocked
                    d["bytes_out"] = _add(d["bytes_out"], g[5])
                    d["bytes_in"] = _add(d["bytes_in"], g[6])
                    d["first"], d["last"] = min(d["first"], g[7]), max(d["last"], g[8])
                    if row[_SCAN] is not None:
                        d["first_scan"] = min(d["first_scan"] or row[_SCAN], row[_SCAN])
                        d["last_scan"] = max(d["last_scan"] or row[_SCAN], row[_SCAN])
                    d["evidence"].extend(evidence)
            self._contexts.created.clear()
            self._clients.created.clear()
            for d in deltas.values():  # the first samples in arrival order, as a scan takes them
                d["evidence"] = [e for _, e in sorted(d["evidence"])[:EVIDENCE_SAMPLES]]
            by_group = (
                "r.ctx = obs_rows.ctx AND r.client = obs_rows.client AND r.url IS obs_rows.url"
            )
            self._temp_table(
                "regroup", "new_ctx INTEGER, new_client INTEGER, gone INTEGER", regroup
            )
            conn.execute(
                f"DELETE FROM obs_rows WHERE n >= ? AND EXISTS (SELECT 1 FROM temp.regroup r"  # noqa: S608
                f" WHERE r.gone AND {by_group})",
                [lo],
            )
            conn.execute(
                "UPDATE obs_rows SET ctx = r.new_ctx, client = r.new_client FROM temp.regroup r"  # noqa: S608
                f" WHERE obs_rows.n >= ? AND NOT r.gone AND {by_group}",
                [lo],
            )
            conn.executemany(
                "UPDATE obs_contexts SET first_row = min(first_row, ?) WHERE n = ?", moved
            )
            conn.execute(
                "DELETE FROM obs_contexts WHERE day >= ? AND n NOT IN"
                " (SELECT DISTINCT ctx FROM obs_rows WHERE n >= ?)",
                [start_day, lo],
            )
            self._contexts.forget()
            conn.execute(
                f"{_ROLLUP_INSERT} SELECT {_ROLLED_ROWS} FROM obs_rows o WHERE {rows}"  # noqa: S608
                " GROUP BY o.ctx, o.client",
                span,
            )
            _by_context(conn, "obs_rollup", f"g.{recent}", [start_day])
            _by_hour(conn, rows, span)
            _remonth(conn, start_day)
            _set_mark(conn)
            if deltas:
                self._store_incidents(deltas, agg)
                keys = self._incident_numbers(list(deltas))
                self._temp_table("group_links", "incident INTEGER",
                                 [(*k, keys[iid]) for *k, iid in links])  # fmt: skip
                linked = (  # (the rows' links went with _unlink: no pack holds them)
                    "SELECT DISTINCT r.incident AS incident,"  # noqa: S608
                    f" obs_rows.n AS obs FROM obs_rows JOIN temp.group_links r ON {by_group}"
                    " WHERE obs_rows.n >= ?"
                )
                conn.execute(
                    f"INSERT INTO hit_packs (incident, first, obs) {_packs_of(linked)}{_MERGE_PACKS}",  # noqa: S608
                    [lo],
                )
            self._drop_unused_facts()
            conn.executemany(
                "UPDATE incident_rows SET status = ? WHERE id = ?",
                [(status, iid) for iid, status in old_status.items()],
            )
            affected = old_fids | set(agg.finding_requests)
            before = self._finding_statuses(list(affected))
            alive = self._refresh_findings(list(affected))
            for fid in sorted(affected - alive):
                if before.get(fid) != "superseded":
                    out.superseded.add(fid)
                    self.transition(fid, "superseded", "superseded", cascade=False, actor=actor,
                                    note="no stored traffic raises it under the current settings")  # fmt: skip
            for fid in sorted(alive):
                if fid not in before:
                    out.new.add(fid)
                    self._event(fid, "new", None, "open", actor=actor,
                                requests=agg.finding_requests[fid])  # fmt: skip
                elif before[fid] == "superseded":
                    out.reopened.add(fid)
                    self.transition(fid, "reopened", "reopened", actor=actor,
                                    requests=agg.finding_requests[fid])  # fmt: skip
            out.incidents = len(agg.rule_of)
            if digest is not None:
                conn.execute(
                    "UPDATE scans SET settings_digest = ? WHERE id IN"
                    " (SELECT DISTINCT scan_id FROM obs_contexts WHERE day >= ?)"
                    " OR (? = '' AND id NOT IN (SELECT DISTINCT scan_id FROM obs_contexts))",
                    [digest, start_day, start_day],
                )
        return out

    # -- finding events and the outbox -----------------------------------------------------

    def emit_digests(self) -> int:
        """``updated`` events for findings that gained requests inside a digest window that
        has now passed (``watch`` calls this periodically, so the counts are not held back
        until the next request)."""
        if not self.emit_events:
            return 0
        cutoff = time.time() - self.digest_seconds
        with self._tx():
            due = self.db.execute(
                """SELECT f.id, a.last_count FROM finding_alerts a
                   JOIN findings f ON f.id = a.finding_id
                   WHERE a.last_event_at <= ? AND f.count > a.last_count
                     AND f.status NOT IN ('resolved', 'superseded')""",
                [cutoff],
            ).fetchall()
            events = [
                dataclasses.replace(e, new_count=e.count - last)
                for fid, last in due
                for e in [self._finding_event(fid, "updated")]
            ]
            return self._outbox(events)

    def _outbox(self, events: Sequence[FindingEvent]) -> int:
        if not events:
            return 0
        now = time.time()
        self.db.conn.executemany(
            "INSERT INTO outbox (event_id, finding_id, event_type, at, payload)"
            " VALUES (?, ?, ?, ?, ?)",
            [(e.event_id, e.finding_id, e.event_type, e.time, e.to_json()) for e in events],
        )
        self.db.conn.executemany(
            "INSERT INTO finding_alerts (finding_id, last_event_at, last_count) VALUES (?, ?, ?)"
            " ON CONFLICT(finding_id) DO UPDATE SET last_event_at = excluded.last_event_at,"
            " last_count = excluded.last_count",
            [(e.finding_id, now, e.count) for e in events],
        )
        self._emitted += len(events)
        return len(events)

    def _rows_in(self, sql: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        """``sql`` with its one ``IN ({})`` filled with ``ids``, in chunks."""
        rows: list[dict[str, Any]] = []
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i : i + _IN_CHUNK]
            rows.extend(self.db.query(sql.format(", ".join("?" * len(chunk))), chunk))
        return rows

    def register_sink(self, name: str, kind: str) -> None:
        """A sink starts with the events raised after it was first configured (a new sink
        is not flooded with the history)."""
        with self._tx():
            self.db.execute(
                """INSERT INTO alert_sinks (name, kind, cursor, registered, delivered, attempts)
                   VALUES (?, ?, (SELECT coalesce(max(seq), 0) FROM outbox), ?, 0, 0)
                   ON CONFLICT(name) DO UPDATE SET kind = excluded.kind""",
                [name, kind, _now()],
            )

    def lease_sink(self, sink: str, owner: str, seconds: float,
                   owner_gone: Callable[[str], bool]) -> bool:  # fmt: skip
        """Take (or renew) the right to deliver to ``sink`` for ``seconds``: two processes
        (``watch`` and a cron ``daily``) must not send the same events at once. A lease
        whose holder has died (``owner_gone``) is taken over at once."""
        now = time.time()
        with self._tx():
            row = self.db.execute(
                "SELECT lease_owner, lease_until FROM alert_sinks WHERE name = ?", [sink]
            ).fetchone()
            if row is None:
                return False
            holder, until = row
            if holder not in (None, owner) and (until or 0) > now and not owner_gone(holder):
                return False
            self.db.execute(
                "UPDATE alert_sinks SET lease_owner = ?, lease_until = ? WHERE name = ?",
                [owner, now + seconds, sink],
            )
        return True

    def release_sink(self, sink: str, owner: str) -> None:
        with self._tx():
            self.db.execute(
                "UPDATE alert_sinks SET lease_owner = NULL, lease_until = NULL"
                " WHERE name = ? AND lease_owner = ?",
                [sink, owner],
            )

    def pending_events(self, sink: str, limit: int = 100) -> list[tuple[int, FindingEvent]]:
        """Events after the sink's cursor, oldest first, as (sequence number, event)."""
        rows = self.db.execute(
            """SELECT seq, payload FROM outbox
               WHERE seq > (SELECT cursor FROM alert_sinks WHERE name = ?) ORDER BY seq LIMIT ?""",
            [sink, limit],
        )
        return [(seq, FindingEvent.from_json(payload)) for seq, payload in rows]

    def sink_state(self, sink: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM alert_sinks WHERE name = ?", [sink]))
        return rows[0] if rows else None

    def advance_sink(self, sink: str, seq: int, delivered: int) -> None:
        """The sink is done with every event up to ``seq`` (``delivered`` of them were sent,
        the others filtered out): committed right after the receiver accepted, so an event
        is sent again only if apiwatch dies between the two."""
        with self._tx():
            self.db.execute(
                """UPDATE alert_sinks SET cursor = max(cursor, ?), delivered = delivered + ?,
                   attempts = 0, next_at = NULL, last_error = NULL,
                   last_success = CASE WHEN ? > 0 THEN ? ELSE last_success END WHERE name = ?""",
                [seq, delivered, delivered, _now(), sink],
            )

    def sink_failed(self, sink: str, error: str, next_at: float) -> int:
        """Record a failed attempt; returns how many attempts have failed in a row."""
        with self._tx():
            self.db.execute(
                """UPDATE alert_sinks SET attempts = attempts + 1, last_error = ?,
                   last_failure = ?, next_at = ? WHERE name = ?""",
                [error, _now(), next_at, sink],
            )
            return self.db.execute(
                "SELECT attempts FROM alert_sinks WHERE name = ?", [sink]
            ).fetchone()[0]

    def outbox_status(self) -> list[dict[str, Any]]:
        """Per registered sink: events waiting, delivered, and the last failure."""
        return list(
            self.db.query(
                """SELECT s.*, (SELECT count(*) FROM outbox o WHERE o.seq > s.cursor) AS pending,
                   (SELECT min(at) FROM outbox o WHERE o.seq > s.cursor) AS oldest_pending
                   FROM alert_sinks s ORDER BY s.name"""
            )
        )

    def outbox_events(self, after: int = 0, limit: int = 50) -> list[tuple[int, FindingEvent]]:
        """The newest events (after sequence number ``after``), oldest first."""
        rows = self.db.execute(
            "SELECT seq, payload FROM outbox WHERE seq > ? ORDER BY seq DESC LIMIT ?",
            [after, limit],
        ).fetchall()
        return [(seq, FindingEvent.from_json(p)) for seq, p in reversed(rows)]

    # -- queries ----------------------------------------------------------------------------

    def incidents(self, q: IncidentQuery) -> Iterator[dict[str, Any]]:
        fid = self.resolve_finding_id(q.finding) if q.finding else None
        yield from self._incidents_of(q, self._incident_where(q), fid)

    def finding_detail(
        self, q: IncidentQuery, fids: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """:meth:`incidents` of each finding ``fids`` (full ids; ``q.finding`` aside), with
        ``q``'s filters resolved once: a report's findings list asked for each finding's
        detail, and resolved ``--client`` again each time (a month's 20 findings of
        ``10.0.0.0/8`` over 10 M requests: 0.9 s of 1.6)."""
        where = self._incident_where(q)
        return {fid: list(self._incidents_of(q, where, fid)) for fid in fids}

    def _incident_where(self, q: IncidentQuery) -> tuple[list[str], list[Any]]:
        """The WHERE terms of :meth:`incidents` but the finding (bound parameters only)."""
        where, params = self._filters(q)  # every value is a bound parameter
        detail_where, detail_params = self._detail_filters(q)
        return where + detail_where, params + detail_params

    def _incidents_of(
        self, q: IncidentQuery, terms: tuple[list[str], list[Any]], fid: str | None
    ) -> Iterator[dict[str, Any]]:
        where, params = list(terms[0]), list(terms[1])
        if fid is not None:
            where.append("finding_id = ?")
            params.append(fid)
        sql = f"SELECT * FROM incidents WHERE {' AND '.join(where)} ORDER BY last_seen DESC, id"  # noqa: S608
        if q.limit:
            sql += " LIMIT ?"
            params.append(q.limit)
        for row in self.db.query(sql, params):
            yield _incident_out(row)

    def discovered(
        self, since: float | None = None, host: str | None = None, samples: int = 5
    ) -> list[dict[str, Any]]:
        """Hosts outside the catalogue reached with LLM-shaped requests (provider kind
        ``unknown``), newest first: when, how often, from which clients, and why (the
        signatures that matched, the User-Agents, URLs and addresses seen; ``samples`` of
        each)."""
        where, params = ["provider_kind = 'unknown'"], []
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if host is not None:
            where.append("dest_host = ?")
            params.append(host)
        sql = f"""SELECT dest_host AS host, min(ts) AS first, max(ts) AS last,
                    count(*) AS requests, count(DISTINCT client_ip) AS client_count,
                    json_group_array(DISTINCT client_ip) AS clients,
                    json_group_array(DISTINCT match_pattern) AS evidence,
                    json_group_array(DISTINCT user_agent) AS user_agents,
                    json_group_array(DISTINCT url) AS urls,
                    json_group_array(DISTINCT dest_ip) AS addresses,
                    json_group_array(DISTINCT ja4) AS ja4
                  FROM observations WHERE {" AND ".join(where)}
                  GROUP BY dest_host ORDER BY last DESC, host"""  # noqa: S608 - constants
        out = []
        for row in self.db.query(sql, params):
            item = {"host": row["host"], "first_seen": iso_utc(row["first"]),
                    "last_seen": iso_utc(row["last"]), "requests": row["requests"],
                    "client_count": row["client_count"]}  # fmt: skip
            for key in ("clients", "evidence", "user_agents", "urls", "addresses", "ja4"):
                values = sorted(v for v in json.loads(row[key]) if v is not None)
                item[key] = values[:samples]
            out.append(item)
        return out

    def present(self, column: str, values: Sequence[str]) -> set[str]:
        """Which of ``values`` some incident holds in ``column`` (to tell a typo from a quiet
        week)."""
        if column not in INCIDENT_COLUMNS:
            raise ValueError(f"not an incident column: {column}")
        found: set[str] = set()
        for i in range(0, len(values), _IN_CHUNK):
            chunk = list(values[i : i + _IN_CHUNK])
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT DISTINCT {column} FROM incidents WHERE {column} IN ({marks})"  # noqa: S608
            found.update(r[0] for r in self.db.execute(sql, chunk))
        return found

    # -- correlation (monitor.correlate) --------------------------------------------------

    def scan_days(self, scan_ids: Sequence[int]) -> list[str]:
        """The UTC days the scans ``scan_ids`` stored observations for."""
        days: set[str] = set()
        for chunk, marks in _chunks(scan_ids):
            sql = f"SELECT DISTINCT day FROM obs_contexts WHERE scan_id IN ({marks})"  # noqa: S608
            days.update(r[0] for r in self.db.execute(sql, chunk))
        return sorted(days)

    def egress_countries(self, first_day: str, last_day: str) -> dict[str, set[str]]:
        """The egress countries each provider was reached through on UTC days ``[first_day,
        last_day]``, as their contexts say (a superset of what :meth:`egress_groups` reads
        of them: one query of a small table, where that one reads every client's roll-ups)."""
        found: dict[str, set[str]] = {}
        for provider, country in self.db.execute(
            "SELECT DISTINCT provider, egress_country FROM obs_contexts"
            " WHERE day >= ? AND day <= ? AND egress_country IS NOT NULL"
            " AND provider_kind IN ('api', 'consumer')",
            [first_day, last_day],
        ):
            found.setdefault(provider, set()).add(country)
        return found

    def egress_groups(self, start: float, end: float) -> list[tuple[str, str, int, str]]:
        """Who (the user, else the client address) reached which provider in ``[start,
        end)``: (who, provider, how many egress countries, the first of them). Contexts
        whose rolled-up requests all fall in the span are read from their roll-ups (one row
        per client, not per request); the requests of the others, and those not rolled up
        yet, one by one."""
        first, last = iso_day(start), iso_day(end)
        inside = (
            "SELECT t.ctx FROM obs_context_totals t CROSS JOIN obs_contexts c ON c.n = t.ctx"
            " WHERE c.day >= ? AND c.day <= ? AND t.first_ts >= ? AND t.last_ts < ?"
        )
        edge = f"day >= ? AND day <= ? AND n NOT IN ({inside})"  # contexts read row by row
        span = [first, last, start, end]  # the parameters of each part below
        rows = f"""SELECT coalesce(user, client_ip) AS who, provider, egress_country
                   FROM {_OBS} WHERE {{}} AND day >= ? AND day <= ? AND {_EGRESS_HISTORY}"""  # noqa: S608
        with self._sorting():
            return [tuple(r) for r in self.db.execute(
                f"""SELECT who, provider, count(DISTINCT egress_country), min(egress_country) FROM (
                     SELECT coalesce(w.user, w.client_ip) AS who, c.provider, c.egress_country
                     FROM obs_rollup r CROSS JOIN obs_contexts c ON c.n = r.ctx
                       CROSS JOIN obs_clients w ON w.n = r.client
                     WHERE r.ctx IN ({inside}) AND {_EGRESS_WHO}
                     UNION ALL {rows.format(f"o.n > {_MARK}")}
                     UNION ALL {rows.format(
                         f"o.n >= (SELECT coalesce(min(first_row), 1 << 62) FROM obs_contexts"
                         f" WHERE {edge}) AND o.n <= {_MARK} AND o.ctx NOT IN ({inside})")})
                   GROUP BY who, provider ORDER BY who, provider""",  # noqa: S608 - constants
                [*span, *span, first, last, *span, *span, *span])]  # fmt: skip

    def egress_buckets(
        self, start: float, end: float, who: Sequence[str]
    ) -> list[tuple[str, str, str, float, float, int, str | None, str | None, str | None]]:
        """For the clients ``who``: which provider they reached through which egress country,
        per hour of ``[start, end)``: (who, provider, country, first ts, last ts, records,
        site, user, client address), the last three the least of the records'. One pass
        over the span's rows for all of them (their client entries looked up first): a pass
        per few hundred clients read every row of the span each time."""
        days, params = self._days(iso_day(start), iso_day(end))
        self._temp_rows("egress_who", "who TEXT", "who", [(w,) for w in set(who)])
        with self._sorting():
            found = [tuple(r) for r in self.db.execute(
                f"""SELECT coalesce(user, client_ip) AS who, provider, egress_country,
                          min(ts), max(ts), count(*), min(site), min(user), min(client_ip)
                   FROM {_OBS} WHERE {days} AND {_EGRESS_HISTORY}
                     AND o.client IN ({_CLIENTS_OF.format("SELECT who FROM temp.egress_who")})
                   GROUP BY who, provider, egress_country, CAST(ts / 3600 AS INTEGER)
                   ORDER BY who, provider, min(ts)""",  # noqa: S608 - constants
                [*params, start, end])]  # fmt: skip
        self.db.execute("DROP TABLE temp.egress_who")
        return found

    def _temp_rows(
        self, name: str, columns: str, key: str, rows: Iterable[tuple[Any, ...]]
    ) -> None:
        """A temporary table ``name`` of ``rows`` (``columns``, typed as the stored columns
        they are compared with: an index serves only comparisons of one affinity), indexed
        on ``key``."""
        conn = self.db.conn
        conn.execute(f"DROP TABLE IF EXISTS temp.{name}")
        conn.execute(f"CREATE TEMP TABLE {name} ({columns})")
        conn.execute(f"CREATE INDEX temp.{name}_key ON {name} ({key})")
        marks = ", ".join("?" * len(columns.split(", ")))
        conn.executemany(f"INSERT INTO temp.{name} VALUES ({marks})", rows)  # noqa: S608

    @contextmanager
    def _sorting(self) -> Iterator[None]:
        """Statements that sort what a scan stored (the correlation's history, the roll-up
        of a scan's rows): SQLite sorts in up to the page cache's size of memory, on top of
        the cache, which a long scan has filled; with a small cache it sorts in a few MB
        (spilling to a temporary file), at no cost in CPU, and the cache's pages go too.
        Measured after a 10 M-line scan: 133 MB of SQLite memory at the peak with the
        64 MB cache, 8 MB with this one."""
        self.db.execute(f"PRAGMA cache_size = -{_SORT_CACHE_KB}")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA cache_size = -{_CACHE_KB}")

    def replace_correlated(
        self,
        rule: str,
        first_day: str,
        last_day: str,
        rows: Sequence[dict[str, Any]],
        scan_id: int | None,
    ) -> tuple[int, IngestResult]:
        """Make the incidents ``rule`` raised on ``[first_day, last_day]`` exactly ``rows``
        (recomputed from the history): counts and facts are replaced, not added, so running
        the correlation again changes nothing; open incidents it no longer raises go (the
        acknowledged and resolved stay, with their audit trail). Their findings follow as a
        scan's do: raised, reopened, given the new activity, or superseded when no detail is
        left. Returns (removed, new and updated incidents, findings raised and reopened)."""
        result = IngestResult()
        with self._tx():
            old = {r[0]: (r[1], r[2]) for r in self.db.execute(
                "SELECT id, count, finding_id FROM incidents WHERE rule = ? AND day >= ? AND day <= ?",
                [rule, first_day, last_day])}  # fmt: skip
            ids = {r["id"] for r in rows}
            stale = sorted(set(old) - ids)
            removed = 0
            for chunk, marks in _chunks(stale):
                gone = f"SELECT n FROM incident_rows WHERE status = 'open' AND id IN ({marks})"  # noqa: S608
                self.db.execute(f"DELETE FROM hit_packs WHERE incident IN ({gone})", chunk)  # noqa: S608
                removed += self.db.execute(
                    f"DELETE FROM incident_rows WHERE n IN ({gone})",  # noqa: S608
                    chunk,
                ).rowcount
            self._forget_incidents()
            cols = [*INCIDENT_IDENTITY, "severity_rank", "first_seen", "last_seen", "count",
                    "blocked", "outcome", "evidence", "facts", "first_scan", "last_scan"]  # fmt: skip
            values = []
            hits: list[tuple[str, int]] = []
            behind = self._records_behind([r["span"] for r in rows])
            for r, found in zip(rows, behind, strict=True):
                self.db.execute(
                    "DELETE FROM hit_packs WHERE incident ="
                    " (SELECT n FROM incident_rows WHERE id = ?)", [r["id"]])  # fmt: skip
                hits.extend((r["id"], n) for n in found)
                r = {**r, "count": len(found)}
                d = {**r, "severity_rank": SEVERITY_RANK[r["severity"]], "blocked": 0,
                     "outcome": "allowed", "evidence": "[]",
                     "facts": json.dumps(r.get("facts") or {}, sort_keys=True),
                     "first_scan": scan_id, "last_scan": scan_id}  # fmt: skip
                values.append(self._incident_values(d, cols))
                result.rule_of[r["id"]] = (r["rule"], r["severity"])
                before, was_in = old.get(r["id"], (0, None))
                if r["id"] not in old:
                    result.new_incidents.add(r["id"])
                elif before != r["count"] or was_in != r["finding_id"]:
                    result.updated_incidents.add(r["id"])  # (recomputed the same: nothing)
                if r["count"] > before or was_in != r["finding_id"]:
                    result.finding_requests[r["finding_id"]] += r["count"] - (
                        before if was_in == r["finding_id"] else 0)  # fmt: skip
            self.db.conn.executemany(
                f"""INSERT INTO incident_rows ({", ".join(cols)}) VALUES ({", ".join("?" * len(cols))})
                ON CONFLICT(id) DO UPDATE SET first_seen = excluded.first_seen,
                  last_seen = excluded.last_seen, count = excluded.count,
                  facts = excluded.facts, last_scan = excluded.last_scan,
                  finding_id = excluded.finding_id, site = excluded.site, user = excluded.user,
                  client_ip = excluded.client_ip,
                  egress_country = excluded.egress_country""",  # noqa: S608
                values,
            )
            keys = self._incident_numbers([r["id"] for r in rows])
            _insert_packs(self.db.conn, link_packs(array("q", [keys[i] for i, _ in hits]),
                                                   array("q", [n for _, n in hits])))  # fmt: skip
            touched = {fid for _count, fid in old.values() if fid} - set(result.finding_requests)
            if result.finding_requests:
                self._advance_findings(scan_id, result)
            self._settle(sorted(touched), "the correlation no longer finds it in the history")
        return removed, result

    def _records_behind(
        self, spans: Sequence[tuple[str, str, float, float, Sequence[str]]]
    ) -> list[list[int]]:
        """The rows behind each correlated incident's span (who, provider, first ts, last ts,
        egress countries): the client's, with the provider, through one of the countries,
        within the span. One pass over the rows of the spans' days for all (a query per
        incident read every row of its days: minutes for a few thousand hopping clients)."""
        found: list[list[int]] = [[] for _ in spans]
        if not spans:
            return found
        self._temp_rows(
            "spans",
            "k INTEGER, who TEXT, provider TEXT, country TEXT, first REAL, last REAL,"
            " first_day TEXT, last_day TEXT",
            "who, provider, country",
            ((k, who, provider, country, first, last, iso_day(first), iso_day(last))
             for k, (who, provider, first, last, countries) in enumerate(spans)
             for country in countries),
        )  # fmt: skip
        days, params = self._days(
            min(iso_day(s[2]) for s in spans), max(iso_day(s[3]) for s in spans)
        )
        for k, n in self.db.execute(
            f"""SELECT s.k, o.n FROM {_OBS} CROSS JOIN temp.spans s
                 ON s.who = coalesce(w.user, w.client_ip) AND s.provider = c.provider
                 AND s.country = c.egress_country
               WHERE {days} AND o.client IN ({_CLIENTS_OF.format("SELECT who FROM temp.spans")})
                 AND o.ts >= s.first AND o.ts <= s.last AND c.day >= s.first_day
                 AND c.day <= s.last_day""",  # noqa: S608 - constants
            params,
        ):
            found[k].append(n)
        self.db.execute("DROP TABLE temp.spans")
        return found

    def _settle(self, fids: Sequence[str], why: str, actor: str | None = None) -> set[str]:
        """Refresh findings whose detail shrank; those left without any are superseded (kept,
        with an event). Returns the superseded."""
        alive = self._refresh_findings(fids)
        gone = set()
        for fid, status in sorted(
            self._finding_statuses([f for f in fids if f not in alive]).items()
        ):
            if status != "superseded":
                gone.add(fid)
                self.transition(fid, "superseded", "superseded", cascade=False, actor=actor,
                                note=why)  # fmt: skip
        return gone

    def incident(self, id_or_prefix: str, samples: int = 20) -> dict[str, Any] | None:
        """One incident by id or unique id prefix, with its sample records."""
        rows = list(
            self.db.query(
                "SELECT * FROM incidents WHERE id LIKE ? || '%' ESCAPE '\\' LIMIT 2",
                [_like_escape(id_or_prefix)],
            )
        )
        if len(rows) != 1:
            if len(rows) > 1:
                raise KeyError(f"incident id prefix {id_or_prefix!r} is ambiguous")
            return None
        inc = _incident_out(rows[0])
        inc["events"] = self.events(inc["id"])
        inc["records"] = self._sample_records("id", inc["id"], samples)
        return inc

    def set_status(self, incident_id: str, status: str, note: str | None = None,
                   actor: str | None = None) -> dict[str, Any] | None:  # fmt: skip
        """Move an incident to ``status`` (open | acknowledged | resolved), recording who, when
        and why in ``incident_events``; None when it already has that status (nothing is
        logged). Raises KeyError for an unknown or ambiguous id."""
        if status not in INCIDENT_STATUSES:
            raise ValueError(f"status must be one of {', '.join(INCIDENT_STATUSES)}")
        with self._tx():
            rows = list(self.db.query("SELECT id, status, finding_id FROM incidents WHERE id LIKE ? || '%' ESCAPE '\\' LIMIT 2",
                                      [_like_escape(incident_id)]))  # fmt: skip
            if len(rows) != 1:
                raise KeyError(
                    f"incident id prefix {incident_id!r} is ambiguous"
                    if rows
                    else f"no incident with id {incident_id!r}"
                )
            (row,) = rows
            if row["status"] == status:  # nothing changes: nothing to log
                return None
            event = {"incident_id": row["id"], "at": _now(), "action": status, "status_from": row["status"],
                     "status_to": status, "note": note, "actor": actor}  # fmt: skip
            self.db.execute("UPDATE incident_rows SET status = ? WHERE id = ?", [status, row["id"]])
            self._insert("incident_events", [event])
            self._follow_detail(row["finding_id"], note, actor)  # its alerts: the finding's
        return event

    def _follow_detail(self, fid: str | None, note: str | None, actor: str | None) -> None:
        """A finding whose detail was all acknowledged or resolved one by one follows it."""
        if fid is None:
            return
        (current,) = self.db.execute("SELECT status FROM findings WHERE id = ?", [fid]).fetchone()
        statuses = {r[0] for r in self.db.execute(
            "SELECT DISTINCT status FROM incidents WHERE finding_id = ?", [fid])}  # fmt: skip
        follows = "resolved" if statuses == {"resolved"} else (
            "acknowledged" if statuses <= {"acknowledged", "resolved"} else None)  # fmt: skip
        if follows and follows != current:
            self.transition(fid, follows, follows, cascade=False, note=note, actor=actor)

    def events(self, incident_id: str | None = None) -> list[dict[str, Any]]:
        """The audit trail, oldest first (of one incident, or all)."""
        if incident_id is None:
            return list(self.db.query("SELECT * FROM incident_events ORDER BY at, id"))
        return list(
            self.db.query(
                "SELECT * FROM incident_events WHERE incident_id = ? ORDER BY at, id", [incident_id]
            )
        )

    def prune(self, before_day: str) -> dict[str, int]:
        """Delete traffic detail (observations and their hits) of UTC days before
        ``before_day``, and the alert events of those days that every sink has had;
        incidents, their counts and evidence are kept."""
        with self._tx():
            old = "SELECT n FROM obs_contexts WHERE day < ?"
            _roll_up(self.db.conn)  # every row summed: the roll-ups of the days pruned go
            for table in ("obs_rollup", "obs_context_totals", "obs_hourly"):
                self.db.execute(f"DELETE FROM {table} WHERE ctx IN ({old})", [before_day])  # noqa: S608
            observed = f"SELECT n FROM obs_rows WHERE ctx IN ({old})"  # noqa: S608 - constants
            hits = _unlink(self.db.conn, observed, [before_day])
            observations = self.db.execute(
                f"DELETE FROM obs_rows WHERE ctx IN ({old})",  # noqa: S608 - constants
                [before_day],
            ).rowcount
            _remonth(self.db.conn, "", before_day)  # their months, from the days left
            self.db.execute("DELETE FROM obs_contexts WHERE day < ?", [before_day])
            _set_mark(self.db.conn)
            self._contexts.forget()
            if before_day > (self._meta("pruned_before") or ""):
                self._upsert("meta", {"key": "pruned_before", "value": before_day}, "key")
            # alert events every sink is done with (a sink that is down keeps its own)
            alert_events = self.db.execute(
                """DELETE FROM outbox WHERE at < ? AND seq <= coalesce(
                   (SELECT min(cursor) FROM alert_sinks), (SELECT max(seq) FROM outbox))""",
                [before_day],
            ).rowcount
        return {"observations": observations, "hits": hits, "alert_events": alert_events}

    def checkpoint_aside(self) -> None:
        """Copy what the write-ahead log holds into the database file now, on a connection
        of its own in a thread (SQLite does it without the GIL), while this one goes on
        (a scan's correlation and summary): else closing does it, fsyncs and all, after
        everything else (a third of the closing of a 3 % scan's 9 MB database). Passive:
        it never waits for, nor blocks, a writer."""
        if self.readonly or (self._checkpointer is not None and self._checkpointer.is_alive()):
            return

        def run() -> None:
            with suppress(sqlite3.Error):
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                finally:
                    conn.close()

        self._checkpointer = threading.Thread(target=run, name="checkpoint", daemon=True)
        self._checkpointer.start()

    def damage(self) -> str | None:
        """What SQLite's quick check finds wrong (None: nothing). It reads every page once,
        so a scan runs it before writing, not each query."""
        try:
            found = [r[0] for r in self.db.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return None if found == ["ok"] else "; ".join(found).replace("\n", " ")

    def check(self) -> dict[str, Any]:
        """Integrity, schema version and table sizes, for ``apiwatch db check``."""
        try:
            integrity = [r[0] for r in self.db.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:  # too damaged to walk
            integrity = [str(exc)]
        counts: dict[str, int | str] = {}
        orphans: int | None = None
        unrolled: int | None = None
        try:  # a damaged database may not answer these: what it says is the report
            for t in ("scans", "observations", "hits", "incidents", "incident_events", "sources",
                      "findings", "finding_events"):  # fmt: skip
                counts[t] = self.db[t].count
            orphans = self.db.execute(
                "SELECT count(*) FROM hit_links WHERE incident NOT IN (SELECT n FROM"
                " incident_rows) OR obs NOT IN (SELECT n FROM obs_rows)"
            ).fetchone()[0]
            unrolled = self.db.execute(
                "SELECT count(*) FROM incidents WHERE finding_id IS NULL"
                " OR finding_id NOT IN (SELECT id FROM findings)"
            ).fetchone()[0]
        except sqlite3.DatabaseError as exc:
            counts[t] = f"unreadable ({exc})"
        return {
            "path": str(self.path),
            "schema_version": self.db.execute("PRAGMA user_version").fetchone()[0],
            "expected_schema_version": SCHEMA_VERSION,
            "integrity": "ok" if integrity == ["ok"] else "; ".join(integrity[:20]),
            "orphan_hits": orphans,
            "incidents_without_finding": unrolled,
            "tables": counts,
        }

    def scans_evaluated_otherwise(self, digest: str) -> list[int]:
        """Scans whose stored data was evaluated with settings other than ``digest``."""
        return [r[0] for r in self.db.execute(
            "SELECT id FROM scans WHERE settings_digest IS NULL OR settings_digest != ?", [digest])]  # fmt: skip

    # -- report and daily queries ---------------------------------------------------------
    # The traffic queries run side by side in report threads, each on its own read-only
    # connection (SQLite releases the GIL while it works); the rest use this connection.

    def traffic_cube(
        self, since: datetime, until: datetime, previous: datetime, origin: datetime, width: int,
        where: TrafficFilter,
    ) -> Rows:  # fmt: skip
        """Requests of the period ``[since, until)`` (``prev`` 0) and of the one before it,
        from ``previous`` (``prev`` 1), by time bucket (``width`` seconds from ``origin``; -1
        for the previous period), provider, kind, site and egress country. Buckets of whole
        UTC days are counted from the contexts' totals (a context's requests are of its
        day), buckets of whole hours from their hourly totals, finer ones from the requests."""
        cut = [since.timestamp(), since.timestamp(), origin.timestamp(), width]
        bounds = (previous, since, until, origin)
        hours = not where.names_clients  # hourly totals name no client
        at = None  # when the requests of a totals row were made, to the bucket's grain
        if all(_utc_midnight(t) for t in bounds) and width % 86400 == 0:
            grouped, params = self._grouped(previous, until, where, clients=False)
            at = "CAST(strftime('%s', c.day) AS INTEGER)"
            rows = f"""SELECT g.ctx AS ctx, sum(g.requests) AS requests, {_sums("g.")}
                       FROM ({grouped}) g GROUP BY 1"""  # noqa: S608 - constants
        elif hours and all(t.timestamp() % 3600 == 0 for t in bounds) and width % 3600 == 0:
            at = "g.hour * 3600"
            rows, params = _hourly(previous, until, where)
        if at is not None:
            prev, bucket = _period_bucket(at)
            return self._read_only(
                _CUBE.format(prev=prev, bucket=bucket, rows=rows, unsure=""), [*cut, *params]
            )
        if not hours and width == 86400 and (late := _late_second(bounds)) is not None:
            found = self._cube_of_day_parts(cut, previous, until, late, where)
            if found is not None:
                return found
        split = _split_hours(previous, since, until, origin, width) if hours else []
        with self._reader(_SORT_CACHE_KB) as con:
            self._cube_rows(con, cut, previous, until, where, split)
            return _rows(con.execute(_CUBE.format(**_CUBE_OF_ROWS)))

    def cube_counts_processing(
        self, since: datetime, until: datetime, previous: datetime, origin: datetime, width: int,
        where: TrafficFilter,
    ) -> bool:  # fmt: skip
        """Whether :meth:`traffic_cube` of these arguments reads the rows of hours that
        bounds of its buckets split (days of a zone whose midnights are not on the hour:
        Asia/Kolkata), and so counts :meth:`processing_locations` of ``[since, until)`` as
        well from the same rows (:meth:`traffic_cube_processing`): read on their own, the
        rows of the period's part days cost that much again (0.9 s of CPU for a month over
        10 M requests)."""
        bounds = (previous, since, until, origin)
        return not (
            where.names_clients
            or (all(_utc_midnight(t) for t in bounds) and width % 86400 == 0)
            or (all(t.timestamp() % 3600 == 0 for t in bounds) and width % 3600 == 0)
            or not _split_hours(previous, since, until, origin, width)
        )

    def traffic_cube_processing(
        self, since: datetime, until: datetime, previous: datetime, origin: datetime, width: int,
        where: TrafficFilter,
    ) -> tuple[Rows, Rows]:  # fmt: skip
        """:meth:`traffic_cube` and :meth:`processing_locations` of ``[since, until)``, in
        one read of the rows where :meth:`cube_counts_processing` says so."""
        if not self.cube_counts_processing(since, until, previous, origin, width, where):
            raise ValueError("the cube reads no rows of split hours here")
        cut = [since.timestamp(), since.timestamp(), origin.timestamp(), width]
        split = _split_hours(previous, since, until, origin, width)
        with self._reader(_SORT_CACHE_KB) as con:
            self._cube_rows(con, cut, previous, until, where, split)
            cube = _rows(con.execute(_CUBE.format(**_CUBE_OF_ROWS)))
            return cube, _rows(con.execute(_PROCESSING.format(grouped=_CUBE_OF_PERIOD)))

    def _cube_rows(
        self, con: sqlite3.Connection, cut: list[Any], previous: datetime, until: datetime,
        where: TrafficFilter, split: list[int],
    ) -> None:  # fmt: skip
        """:meth:`traffic_cube`'s requests of ``[previous, until)`` by period, bucket and
        context (``temp.cube``) from the rows: of the hours ``split`` alone (the others
        whole hours of one bucket: their hourly totals), or all of them."""
        span, params = self._rows_in_span(previous, until, where)
        marks = ", ".join("?" * len(split))
        if split:  # the hours a bound splits first: a test far cheaper than the others
            span = f"CAST(o.ts / 3600 AS INTEGER) IN ({marks}) AND {span}"
        rows = f"""SELECT {", ".join(_period_bucket("o.ts"))}, o.ctx AS ctx,
                     count(*) AS requests, {_sums("o.")}
                   FROM obs_rows o WHERE {span} GROUP BY 1, 2, 3"""  # noqa: S608
        params = [*cut, *split, *params]
        if split:  # days from a part hour (Asia/Kolkata): the other hours' totals
            hourly, hourly_params = _hourly(previous, until, where)
            rows += f"""
                UNION ALL SELECT {", ".join(_period_bucket("g.hour * 3600"))}, g.ctx,
                  g.requests, g.bytes_out, g.bytes_in FROM ({hourly}) g
                WHERE g.hour NOT IN ({marks})"""  # noqa: S608
            params += [*cut, *hourly_params, *split]
        con.execute(f"CREATE TEMP TABLE cube AS {rows}", params)

    def _cube_of_day_parts(
        self, cut: list[Any], previous: datetime, until: datetime, late: int,
        where: TrafficFilter,
    ) -> Rows | None:  # fmt: skip
        """:meth:`traffic_cube` by days of a zone whose midnights (and the periods' bounds)
        are ``late`` seconds into each UTC day, for a filter on users or clients (the hourly
        totals name no client): a UTC day's requests after that instant (its late part) are
        read from the rows, those before it are the day's roll-ups less them. One pass over
        the rows compares their times first and looks up the client of a third of them,
        where counting each in its bucket looked up every client and sorted the chosen
        rows (a user's 5,000 addresses, a month of Asia/Shanghai over 10 M requests: 4.1 s
        -> 3.2 s CPU on a shared machine). None when the chosen clients are few (the
        roll-ups are probed per client, and the rows that count them are few: counting those
        costs no more), or when bytes would come to 0 in a part less its late part (they may
        be null there, not 0): the caller counts the rows."""
        first, last = _day_span(previous, until)
        if self._probe_rollup(first, last, where):
            return None
        grouped, params = self._grouped(previous, until, where, clients=False)
        span, span_params = self._rows_in_span(previous, until, where, late)
        parts = f"""SELECT t.ctx, t.day + ? - 1 AS at, t.r - coalesce(l.r, 0) AS requests,
                      {_LESS.format(c="o")} AS bytes_out, {_LESS.format(c="i")} AS bytes_in,
                      t.r > coalesce(l.r, 0) AND (t.o = l.o OR t.i = l.i) AS unsure
                    FROM t LEFT JOIN l ON l.ctx = t.ctx WHERE t.r > coalesce(l.r, 0)
                    UNION ALL SELECT l.ctx, t.day + ?, l.r, l.o, l.i, 0
                    FROM l CROSS JOIN t ON t.ctx = l.ctx"""  # noqa: S608
        rows = f"""WITH t AS MATERIALIZED (SELECT g.ctx, CAST(strftime('%s', c.day) AS INTEGER)
                      AS day, sum(g.requests) AS r, {saturated_sum("g.bytes_out")} AS o,
                      {saturated_sum("g.bytes_in")} AS i
                      FROM ({grouped}) g CROSS JOIN obs_contexts c ON c.n = g.ctx GROUP BY 1),
                    l AS MATERIALIZED (SELECT o.ctx, count(*) AS r,
                      {saturated_sum("o.bytes_out")} AS o, {saturated_sum("o.bytes_in")} AS i
                      FROM obs_rows o WHERE {span} GROUP BY 1)
                    {parts}"""  # noqa: S608
        prev, bucket = _period_bucket("g.at")
        found = self._read_only(
            _CUBE.format(prev=prev, bucket=bucket, rows=rows, unsure=", max(g.unsure) AS unsure"),
            [*cut, *params, *span_params, late, late],
        )
        if any(r[-1] for r in found.rows):
            return None
        return Rows(found.columns[:-1], [r[:-1] for r in found.rows])

    def client_destinations(self, since: datetime, until: datetime, where: TrafficFilter) -> Rows:
        """Who went where: client x destination in ``[since, until)``, users as a JSON array.
        A month of another time zone is read as the nearest UTC month, less and plus the
        requests of the hours at its edges (:meth:`_month_edges`)."""
        month = self._month_edges(since, until)
        if month is None:
            grouped, params = self._by_dest(since, until, where, summed=True)
            return self._read_only(_WHO.format(grouped=grouped), params)
        with self._reader(_SORT_CACHE_KB) as con:  # it reads the month and edges once
            grouped, params = self._edge_pairs(con, since, until, month, where)
            return _rows(con.execute(_WHO.format(grouped=grouped), params))

    def _month_edges(
        self, since: datetime, until: datetime
    ) -> tuple[datetime, datetime, list[tuple[int, datetime, datetime]]] | None:
        """``[since, until)`` as the UTC month ``[start, end)`` less than a day from it, less
        (1) and plus (2) the spans between their bounds (``edges``, each within one UTC
        day, at one of its ends): a month of Asia/Shanghai is the
        UTC month less its last 8 hours, plus the 8 before it; its monthly roll-ups and the
        rows of 16 hours rather than the roll-ups of 29 days and the rows of 2 (who went
        where over 10 M requests: 5.3 -> 2.3 s CPU). None when the period is no such month,
        is the UTC month, or the monthly roll-ups do not know the destination of every
        context of its days (stored since the last roll-up: the day roll-ups serve)."""
        since, until = since.astimezone(UTC), until.astimezone(UTC)
        start, end = _month_near(since), _month_near(until)
        if (
            start is None
            or end != (start + timedelta(days=31)).replace(day=1)
            or (start, end) == (since, until)
        ):
            return None
        edges = [
            (1 if a < b else 2, min(a, b), max(a, b))
            for a, b in ((start, since), (until, end))
            if a != b
        ]
        ((unknown,),) = self._read_only(
            f"""SELECT count(*) FROM obs_contexts c WHERE c.day >= ? AND c.day <= ?
                AND NOT EXISTS (SELECT 1 FROM obs_dests d WHERE d.key = {_DEST_KEY})""",  # noqa: S608
            _day_span(min(since, start), max(until, end)),
        ).rows
        return None if unknown else (start, end, edges)

    def _edge_pairs(
        self, con: sqlite3.Connection, since: datetime, until: datetime,
        month: tuple[datetime, datetime, list[tuple[int, datetime, datetime]]],
        where: TrafficFilter,
    ) -> tuple[str, list[Any]]:  # fmt: skip
        """:meth:`_by_dest` of ``[since, until)``, read as ``month`` (see
        :meth:`_month_edges`): the month's roll-ups as they are, but those of the pairs
        (client and destination) an edge takes requests off, and what the edges add and the
        rows stored since the last roll-up (part 0); those are summed first on ``con`` per
        pair (``temp.delta``), then the pairs taken off (``temp.taken``). Sums are exact; a
        minimum URL, or bytes that come to 0, that an edge taken off holds may or may not
        be in the rest of the month: the rest of those pairs (``unsure``) is counted again
        from the day roll-ups (``temp.again``)."""
        start, end, edges = month
        name = start.strftime("%Y-%m")
        parts, params = [], []
        for part, (sql, more), span in (
            (0, self._recent(name, name + "~", where), _day_span(start, end)),
            *((part, self._rows_grouped(a, b, where), _day_span(a, b)) for part, a, b in edges),
        ):
            parts.append(f"SELECT {part} AS part, * FROM ({_dest_numbers(sql)})")  # noqa: S608
            params += [*more, *span]
        sums = ", ".join(
            f"{agg(f'g.{column}', f'g.part = {p}')} AS {n}{p}"
            for p in (0, 1, 2)
            for agg, column, n in _EDGE_SUMS
        )
        con.execute(
            f"""CREATE TEMP TABLE delta AS SELECT g.client, g.dest, {sums}
                FROM ({" UNION ALL ".join(parts)}) g GROUP BY 1, 2""",  # noqa: S608
            params,
        )
        con.execute("CREATE UNIQUE INDEX temp.delta_key ON delta (client, dest)")
        con.execute(
            f"""CREATE TEMP TABLE taken AS SELECT *, rest > 0 AND u1 = u AS su,
                  rest > 0 AND o1 = o AS so, rest > 0 AND i1 = i AS si
                FROM (SELECT *, r - r1 AS rest FROM (
                  SELECT e.*, coalesce(m.requests, 0) + coalesce(e.r0, 0) AS r,
                    {_plus("m.bytes_out", "e.o0")} AS o, {_plus("m.bytes_in", "e.i0")} AS i,
                    {_plus("m.url", "e.u0", "min")} AS u
                  FROM temp.delta e LEFT JOIN obs_monthly m ON m.month = ?
                    AND m.client = e.client AND m.dest = e.dest WHERE e.r1 IS NOT NULL))""",  # noqa: S608
            [name],
        )
        a, b = max(since, start), min(until, end)  # the rest of the month
        if self._still_unsure(con, a, b, [(x, y) for part, x, y in edges if part == 1]):
            rest, rest_params = _dest_rows(*self._grouped(a, b, where), _day_span(a, b))
            con.execute(
                f"""CREATE TEMP TABLE again AS SELECT g.client, d.n AS dest, g.requests,
                      g.bytes_out, g.bytes_in, g.url FROM ({rest}) g
                    CROSS JOIN obs_dests d ON d.key = {_DEST_KEY.replace("c.", "g.")}
                    WHERE (g.client, d.n) IN (SELECT client, dest FROM temp.taken
                      WHERE su OR so OR si)""",  # noqa: S608
                rest_params,
            )
        else:
            con.execute(
                "CREATE TEMP TABLE again (client, dest, requests, bytes_out, bytes_in, url)"
            )
        lost = (
            "CASE WHEN unsure OR rest = 0 THEN NULL WHEN {c}1 IS NULL THEN {c} ELSE {c} - {c}1 END"
        )
        taken = f"""SELECT client, dest,
              CASE WHEN unsure THEN r2 ELSE rest + coalesce(r2, 0) END AS requests,
              {_plus(lost.format(c="o"), "o2")} AS bytes_out,
              {_plus(lost.format(c="i"), "i2")} AS bytes_in,
              {_plus("CASE WHEN unsure OR rest = 0 THEN NULL ELSE u END", "u2", "min")} AS url
            FROM (SELECT *, su OR so OR si AS unsure FROM temp.taken)
            WHERE unsure OR rest + coalesce(r2, 0) > 0"""  # noqa: S608
        f, params = where.sql("d", who=False)
        who, who_params = _clients_chosen("m", where)
        dests = ", ".join(f"d.{c}" for c in _DEST_COLUMNS)
        added = " UNION ALL ".join(
            f"SELECT client, dest, r{p} AS requests, o{p} AS bytes_out, i{p} AS bytes_in,"  # noqa: S608
            f" u{p} AS url FROM temp.delta"
            f" WHERE r1 IS NULL AND r{p} IS NOT NULL"
            for p in (0, 2)
        )
        return (
            f"""SELECT m.client, {dests}, m.requests, m.bytes_out, m.bytes_in, m.url
                FROM obs_monthly m CROSS JOIN obs_dests d ON d.n = m.dest
                WHERE m.month = ?{f}{who} AND NOT EXISTS (SELECT 1 FROM temp.delta e
                  WHERE e.client = m.client AND e.dest = m.dest AND e.r1 IS NOT NULL)
                UNION ALL
                SELECT g.client, {dests}, g.requests, g.bytes_out, g.bytes_in, g.url
                FROM ({added} UNION ALL {taken} UNION ALL SELECT * FROM temp.again) g
                CROSS JOIN obs_dests d ON d.n = g.dest""",  # noqa: S608
            [name, *params, *who_params],
        )

    def _still_unsure(
        self, con: sqlite3.Connection, since: datetime, until: datetime,
        taken_off: list[tuple[datetime, datetime]], days: int = 3,
    ) -> bool:  # fmt: skip
        """Settle what :meth:`_edge_pairs` is unsure of (``temp.taken``), where a day roll-up
        of a whole UTC day of the rest of the month ``[since, until)`` shows it: the pair's
        minimum URL there (``su``), bytes there (``so``, ``si``: those left come to 0, not
        null). A pair seen every day settles on the day next to the edge; True when some
        are still unsure after ``days`` days (nearest the edges ``taken_off`` first)."""
        unsure = "SELECT 1 FROM temp.taken WHERE su OR so OR si LIMIT 1"
        if not taken_off or not con.execute(unsure).fetchone():
            return False
        first = _day_ceil(since)
        whole = [first + timedelta(days=k) for k in range((_day_floor(until) - first).days)]
        whole.sort(key=lambda d: min(abs(d - a) for a, _ in taken_off))
        con.execute("CREATE TEMP TABLE day_dests (ctx INTEGER PRIMARY KEY, dest INTEGER)")
        con.execute("CREATE INDEX temp.day_dests_dest ON day_dests (dest)")
        for day in whole[:days]:
            con.execute("DELETE FROM temp.day_dests")
            con.execute(
                f"""INSERT INTO temp.day_dests SELECT c.n, d.n FROM obs_contexts c
                    CROSS JOIN obs_dests d ON d.key = {_DEST_KEY} WHERE c.day = ?""",  # noqa: S608
                [day.strftime("%Y-%m-%d")],
            )
            for flag, seen in (("su", "r.url = t.u"), ("so", "r.bytes_out IS NOT NULL"),
                               ("si", "r.bytes_in IS NOT NULL")):  # fmt: skip
                con.execute(
                    f"""UPDATE temp.taken AS t SET {flag} = 0 WHERE {flag} AND EXISTS (
                          SELECT 1 FROM temp.day_dests x CROSS JOIN obs_rollup r
                            ON r.ctx = x.ctx AND r.client = t.client
                          WHERE x.dest = t.dest AND {seen})"""  # noqa: S608
                )
            if not con.execute(unsure).fetchone():
                return False
        return True

    def processing_locations(self, since: datetime, until: datetime, where: TrafficFilter) -> Rows:
        """Where the requests of ``[since, until)`` were processed: by site, processing geo,
        residency basis and region."""
        grouped, params = self._grouped(since, until, where, clients=False, hours=True)
        return self._read_only(_PROCESSING.format(grouped=grouped), params)

    def traffic_sources(self, since: datetime, until: datetime, where: TrafficFilter) -> Rows:
        """The scans and input files behind the observations of ``[since, until)``. The
        requests are summed per context before their context is looked up: a filter on
        clients reads a row per client (2.6 M for a month of 10 M requests), and looking
        each up took 1.9 s of the 3.0 s. Without such a filter it reads the contexts' totals
        and the rows of part days once, in a small page cache (see :meth:`_reader`)."""
        grouped, params = self._grouped(since, until, where, clients=False)
        return self._read_only(
            f"""SELECT c.scan_id, c.source, c.format, sum(g.requests) AS observations,
                       min(g.first_ts) AS first_ts, max(g.last_ts) AS last_ts
                FROM (SELECT ctx, sum(requests) AS requests, min(first_ts) AS first_ts,
                        max(last_ts) AS last_ts FROM ({grouped}) GROUP BY ctx) g
                  CROSS JOIN obs_contexts c ON c.n = g.ctx
                GROUP BY 1, 2, 3""",  # noqa: S608
            params,
            _CACHE_KB if where.names_clients else _SORT_CACHE_KB,
        )

    def context_figures(
        self, since: datetime, until: datetime, where: TrafficFilter
    ) -> tuple[Rows, Rows]:
        """:meth:`traffic_sources` and :meth:`processing_locations` of ``[since, until)`` in
        one read: with a filter on users or clients both sum the same roll-up rows per
        client and the rows of part days (a month of a user's 5,000 addresses over 10 M
        requests: 1.0 s each in UTC, 1.5 s in Asia/Shanghai), here once per context."""
        grouped, params = self._grouped(since, until, where, clients=False)
        found = self._read_only(
            f"""WITH g AS MATERIALIZED (SELECT ctx, sum(requests) AS requests,
                  min(first_ts) AS first_ts, max(last_ts) AS last_ts FROM ({grouped})
                  GROUP BY ctx)
                SELECT 0, c.scan_id, c.source, c.format, NULL, sum(g.requests),
                       min(g.first_ts), max(g.last_ts)
                FROM g CROSS JOIN obs_contexts c ON c.n = g.ctx GROUP BY 2, 3, 4
                UNION ALL
                SELECT 1, c.site, c.processing_geo, c.residency_basis, c.processing_region,
                       sum(g.requests),
                       sum(CASE WHEN c.outcome IS 'blocked' THEN g.requests ELSE 0 END), NULL
                FROM g CROSS JOIN obs_contexts c ON c.n = g.ctx GROUP BY 2, 3, 4, 5""",  # noqa: S608
            params,
        ).rows
        sources = [r[1:4] + r[5:] for r in found if r[0] == 0]
        processing = [r[1:7] for r in found if r[0] == 1]
        return (
            Rows(["scan_id", "source", "format", "observations", "first_ts", "last_ts"], sources),
            Rows(["site", "geo", "basis", "region", "requests", "blocked"], processing),
        )

    def distinct_clients(self, since: datetime, until: datetime, where: TrafficFilter) -> int:
        distinct = (
            "SELECT count(DISTINCT w.client_ip) AS n FROM ({grouped}) g"
            " CROSS JOIN obs_clients w ON w.n = g.client"
        )
        month = self._month_edges(since, until)
        if month is None:
            grouped, params = self._by_dest(since, until, where)
            return int(self._read_only(distinct.format(grouped=grouped), params).rows[0][0])
        grouped, params = self._month_clients(*month, where)
        found = self._read_only(distinct.format(grouped=grouped), params, _SORT_CACHE_KB)
        return int(found.rows[0][0])

    def _month_clients(
        self, start: datetime, end: datetime, edges: list[tuple[int, datetime, datetime]],
        where: TrafficFilter,
    ) -> tuple[str, list[Any]]:  # fmt: skip
        """A query of the clients with requests in the month ``[start, end)`` less and plus
        ``edges`` (see :meth:`_month_edges`), from roll-ups alone: an edge lies at one end
        of a UTC day, so a day roll-up row (of a context and client) that starts and ends
        in an edge taken off has all its requests there (it is taken off), and one that
        does not has some outside, in the month; one that ends (or starts) in an edge
        added has some requests there. The rows of 16 hours took 0.9 s to read."""
        month = start.strftime("%Y-%m")
        f, params = where.sql("d", who=False)
        who, who_params = _clients_chosen("m", where)
        recent, recent_params = self._recent(month, month + "~", where)
        parts = [
            "SELECT m.client, m.requests FROM obs_monthly m CROSS JOIN obs_dests d"  # noqa: S608
            f" ON d.n = m.dest WHERE m.month = ?{f}{who}",
            f"SELECT client, requests FROM ({recent})",  # noqa: S608
        ]
        params = [month, *params, *who_params, *recent_params]
        for part, a, b in edges:
            day = a.strftime("%Y-%m-%d")
            rolled, rolled_params = _chosen(
                "r", day, day, where, self._probe_rollup(day, day, where)
            )
            recent, recent_params = self._recent(day, day, where)
            within, value = ("first_ts >= ? AND last_ts < ?", "-requests") if part == 1 else (
                "last_ts >= ? AND first_ts < ?", "1")  # fmt: skip
            parts.append(
                f"""SELECT client, {value} FROM (SELECT {_ROLLUP_ROW} FROM obs_rollup r
                      WHERE {rolled} UNION ALL {recent}) WHERE {within}"""  # noqa: S608
            )
            params += [*rolled_params, *recent_params, a.timestamp(), b.timestamp()]
        return (
            f"SELECT client FROM ({' UNION ALL '.join(parts)}) GROUP BY 1 HAVING sum(requests) > 0",  # noqa: S608
            params,
        )

    def incident_counts(
        self, since: datetime, until: datetime, previous: datetime, where: TrafficFilter
    ) -> Rows:
        """Per rule and severity: incidents new, active, open, acknowledged and resolved in
        ``[since, until)``, and new in the period before it (from ``previous``)."""
        s, u, ps = iso_datetime(since), iso_datetime(until), iso_datetime(previous)
        f, fparams = where.sql()
        cursor = self.db.execute(
            f"""SELECT rule, severity, severity_rank AS rank,
                   sum(first_seen >= ? AND first_seen < ?) AS new,
                   sum(first_seen < ? AND last_seen >= ?) AS active,
                   sum(first_seen < ? AND status = 'open') AS open,
                   sum(first_seen < ? AND status = 'acknowledged') AS acknowledged,
                   sum({_RESOLVED_IN}) AS resolved,
                   sum(first_seen >= ? AND first_seen < ?) AS previous_new
                FROM incidents WHERE 1 = 1{f}
                GROUP BY rule, severity, severity_rank""",  # noqa: S608 - constants only
            [s, u, u, s, u, u, s, u, ps, s, *fparams],
        )
        return _rows(cursor)

    def incident_list(
        self, which: str, since: datetime, until: datetime, where: TrafficFilter, limit: int
    ) -> list[dict[str, Any]]:
        """The first ``limit`` incidents ``new`` in ``[since, until)``, ``open`` (or
        acknowledged) at its end, or ``resolved`` during it, the most severe first."""
        s, u = iso_datetime(since), iso_datetime(until)
        by_severity = "severity_rank DESC, count DESC, first_seen, id"
        cond, params, order = {
            "new": ("first_seen >= ? AND first_seen < ?", [s, u], by_severity),
            "open": ("first_seen < ? AND status IN ('open', 'acknowledged')", [u], by_severity),
            "resolved": (_RESOLVED_IN, [s, u], "severity_rank DESC, last_seen DESC, id"),
        }[which]
        f, fparams = where.sql()
        sql = f"SELECT {_INCIDENT_LIST_COLUMNS} FROM incidents WHERE {cond}{f}"  # noqa: S608
        return list(self.db.query(f"{sql} ORDER BY {order} LIMIT ?", [*params, *fparams, limit]))

    def status_changes(
        self, since: datetime, until: datetime, where: TrafficFilter, limit: int
    ) -> dict[str, Any]:
        """The audit trail of ``[since, until)``: total, count by action, the first ``limit``;
        the changes of incidents and of findings (``incident_id`` holds the finding's id,
        ``F-…``), with who made each and why."""
        fi, fparams = where.sql("i")
        ff, ffparams = where.finding_sql("f")
        span = [iso_datetime(since), iso_datetime(until)]
        union = f"""SELECT e.id AS seq, 0 AS kind, e.at, e.incident_id, i.rule, i.severity,
                   i.provider, i.site, e.action, e.status_from, e.status_to, e.actor, e.note
              FROM incident_events e JOIN incidents i ON i.id = e.incident_id
              WHERE e.at >= ? AND e.at < ?{fi}
            UNION ALL
            SELECT e.id, 1, e.at, e.finding_id, f.rule, f.severity, f.provider, f.site, e.action,
                   e.status_from, e.status_to, e.actor, e.note
              FROM finding_events e JOIN findings f ON f.id = e.finding_id
              WHERE e.at >= ? AND e.at < ? AND e.action NOT IN ('new', 'activity'){ff}"""  # noqa: S608 - constants
        params = [*span, *fparams, *span, *ffparams]
        (total,) = self.db.execute(f"SELECT count(*) FROM ({union})", params).fetchone()  # noqa: S608
        items = list(
            self.db.query(
                f"""SELECT at, incident_id, rule, severity, provider, site, action, status_from,
                           status_to, actor, note FROM ({union})
                    ORDER BY at, kind, seq LIMIT ?""",  # noqa: S608
                [*params, limit],
            )
        )
        by_action = dict(
            self.db.execute(f"SELECT action, count(*) FROM ({union}) GROUP BY action", params)  # noqa: S608
        )
        return {"total": total, "shown": len(items), "by_action": by_action, "items": items}

    def clients_matching(self, specs: Sequence[str]) -> list[str]:
        """The client addresses ``specs`` (addresses, CIDRs, pseudonyms) choose among those
        of every observation and incident stored. An address chosen that has no traffic in
        a report's period selects nothing there, so the client dictionary (one entry per
        address and user) stands for the period's clients: reading those of a month and
        the one before it in a non-UTC zone took 3.3 s on 10 M requests."""
        known = [r[0] for r in self.db.execute(
            "SELECT DISTINCT client_ip FROM obs_clients UNION SELECT client_ip FROM incidents")]  # fmt: skip
        return _chosen_clients(known, specs)

    def traffic_filter(
        self, where: TrafficFilter, since: datetime, until: datetime
    ) -> TrafficFilter:
        """``where`` for the traffic of ``[since, until)``: without its clients when they
        are every client with traffic there (``--client 10.0.0.0/8`` on a store of private
        addresses), which reads the unfiltered totals instead of every client's roll-ups
        (12 s -> 3 s for a month over 10 M requests). Checked on the UTC months around the
        span (their roll-ups and the rows stored since) with no user filter."""
        if where.clients is None or where.users:
            return where
        first, last = (day[:7] for day in _day_span(since, until))
        last += "~"
        chosen, params = TrafficFilter(clients=where.clients).sql()
        others = f"NOT IN (SELECT n FROM obs_clients WHERE 1 = 1{chosen})"  # noqa: S608
        found = self._read_only(
            f"""SELECT EXISTS (SELECT 1 FROM obs_monthly m WHERE m.month >= ?
                  AND m.month <= ? AND +m.client {others})
                OR EXISTS (SELECT 1 FROM obs_rows o WHERE o.n > {_MARK} AND o.client {others})""",  # noqa: S608
            [first, last, *params, *params],
        ).rows
        return where if found[0][0] else dataclasses.replace(where, clients=None)

    def report_findings(
        self, since: datetime, until: datetime, where: TrafficFilter, limit: int, top_users: int = 3,
        tz: str = "UTC",
    ) -> dict[str, Any]:  # fmt: skip
        """Findings with activity in ``[since, until)``, their figures over that period, the
        most severe and busiest first, each with its top users; and which were reopened
        during the period. A period of whole UTC days reads the detail rows (one per UTC
        day); any other (whole days of another time zone ``tz``, or a custom span) counts
        the observations in it, with ``days`` counted in ``tz``."""
        s, u = iso_datetime(since), iso_datetime(until)
        if tz == "UTC" and _utc_midnight(since) and _utc_midnight(until):
            return self._findings_of_detail(since, until, where, limit, top_users)
        f, fparams = where.sql("i")
        # the observations of the period under the detail rows that overlap it
        sparams = [u, s, since.timestamp(), until.timestamp()]
        o = {c: f"{_ALIAS.get(c, 'c')}.{c}" for c in ("ts", "outcome", "bytes_out", "bytes_in",
                                                     "client_ip", "user", "dest_host")}  # fmt: skip
        day, dparams = _local_day(o["ts"], since, until, tz)
        cols = ", ".join({"first_seen": "d.first_ts AS first_seen", "last_seen": "d.last_ts AS last_seen"}
                         .get(c, f"d.{c}") for c in _ROLLUP_COLUMNS if c != "severity")  # fmt: skip
        joined = (
            "FROM incidents i CROSS JOIN incident_rows r ON r.id = i.id"
            " CROSS JOIN hit_links l ON l.incident = r.n CROSS JOIN obs_rows o ON o.n = l.obs"
            " CROSS JOIN obs_contexts c ON c.n = o.ctx CROSS JOIN obs_clients w ON w.n = o.client"
            f" WHERE i.first_seen < ? AND i.last_seen >= ? AND o.ts >= ? AND o.ts < ?{f}"
        )
        activity = f"""SELECT i.finding_id AS id, min(i.rule) AS rule, min(i.provider) AS provider,
                  min(i.site) AS site, max(i.severity_rank) AS severity_rank,
                  max(i.title) AS title, min(o.ts) AS first_ts, max(o.ts) AS last_ts,
                  count(*) AS count, sum({o["outcome"]} IS 'blocked') AS blocked,
                  {saturated_sum(o["bytes_out"])} AS bytes_out,
                  {saturated_sum(o["bytes_in"])} AS bytes_in,
                  count(DISTINCT {o["client_ip"]}) AS clients,
                  count(DISTINCT {o["user"]}) AS users,
                  count(DISTINCT {o["dest_host"]}) AS hosts, count(DISTINCT {day}) AS days,
                  group_concat(DISTINCT i.egress_country) AS egress_country,
                  min(i.first_scan) AS first_scan, max(i.last_scan) AS last_scan
                {joined} GROUP BY i.finding_id"""  # noqa: S608 - constants and bound values
        sql = (
            "SELECT f.id, f.status, f.exception_until, f.exception_reason, f.exception_by, "  # noqa: S608
            f"f.exception_source, {cols} FROM findings f JOIN ({activity}) d"
            " ON d.id = f.id ORDER BY d.severity_rank DESC, d.count DESC, f.id"
        )
        rows = []
        with self._sorting():  # each request of the period read once: a small page cache
            for r in self.db.query(sql, [*dparams, *sparams, *fparams]):
                r["first_seen"], r["last_seen"] = iso_utc(r["first_seen"]), iso_utc(r["last_seen"])
                rows.append(_rolled(r))

        def users_of(marks: str, chunk: list[Any]) -> Iterable[tuple[str, str, int]]:
            return self.db.execute(
                f"""SELECT i.finding_id, {o["user"]}, count(*) AS n {joined}
                    AND i.finding_id IN ({marks}) AND {o["user"]} IS NOT NULL
                    GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2""",  # noqa: S608 - constants
                [*sparams, *fparams, *chunk],
            )

        return self._report_rows(rows, s, u, limit, top_users, users_of)

    def _findings_of_detail(
        self, since: datetime, until: datetime, where: TrafficFilter, limit: int, top_users: int
    ) -> dict[str, Any]:
        """:meth:`report_findings` of whole UTC days: the roll-up of their detail rows."""
        s, u = iso_datetime(since), iso_datetime(until)
        f, fparams = where.sql()
        detail = f"first_seen < ? AND last_seen >= ?{f}"
        cols = ", ".join(f"d.{c}" for c in _ROLLUP_COLUMNS if c != "severity")
        sql = (
            "SELECT f.id, f.status, f.exception_until, f.exception_reason, f.exception_by, "  # noqa: S608
            f"f.exception_source, {cols} FROM findings f JOIN ({_ROLLUP.format(where=detail)}) d"
            " ON d.id = f.id ORDER BY d.severity_rank DESC, d.count DESC, f.id"
        )
        rows = [_rolled(r) for r in self.db.query(sql, [u, s, *fparams])]

        def users_of(marks: str, chunk: list[Any]) -> Iterable[tuple[str, str, int]]:
            return self.db.execute(
                f"""SELECT finding_id, user, sum(count) AS n FROM incidents
                    WHERE finding_id IN ({marks}) AND user IS NOT NULL AND {detail}
                    GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2""",  # noqa: S608 - constants
                [*chunk, u, s, *fparams],
            )

        return self._report_rows(rows, s, u, limit, top_users, users_of)

    def _report_rows(
        self, rows: list[dict[str, Any]], s: str, u: str, limit: int, top_users: int,
        users_of: Callable[[str, list[Any]], Iterable[tuple[str, str, int]]],
    ) -> dict[str, Any]:  # fmt: skip
        """The shown findings' top users and which findings were reopened in ``[s, u)``."""
        reopened = {r[0] for r in self.db.execute(
            "SELECT DISTINCT finding_id FROM finding_events WHERE action = 'reopened'"
            " AND at >= ? AND at < ?", [s, u])}  # fmt: skip
        shown = rows[:limit]
        users: dict[str, list[dict[str, Any]]] = {}
        for chunk, marks in _chunks([r["id"] for r in shown]):
            for fid, user, n in users_of(marks, chunk):
                if len(users.setdefault(fid, [])) < top_users:
                    users[fid].append({"user": user, "count": n})
        for r in rows:
            r.pop("severity_rank", None)
            r["reopened_in_period"] = r["id"] in reopened
            r["top_users"] = users.get(r["id"], [])
        return {"total": len(rows), "shown": len(shown), "items": shown, "all": rows}

    def report_exceptions(
        self, since: datetime, until: datetime, where: TrafficFilter
    ) -> dict[str, Any]:
        """Exceptions in force at the end of ``[since, until)`` (or now, when that is earlier)
        and those that ran out in it."""
        s, u = iso_datetime(since), iso_datetime(until)
        f, fparams = where.finding_sql("f")
        end = min(until - timedelta(microseconds=1), datetime.now(UTC))
        last_day = end.astimezone(UTC).strftime("%Y-%m-%d")
        in_force = list(self.db.query(
            "SELECT f.id, f.rule, f.severity, f.provider, f.site, f.egress_country, f.status,"  # noqa: S608
            " f.exception_until AS until, f.exception_reason AS reason, f.exception_by AS approver,"
            f" f.exception_source AS source FROM findings f WHERE f.exception_until >= ?{f}"
            " ORDER BY f.exception_until, f.id", [last_day, *fparams]))  # fmt: skip
        expired = list(self.db.query(
            "SELECT e.at, f.id, f.rule, f.severity, f.provider, f.site, f.egress_country,"  # noqa: S608
            " e.note FROM finding_events e JOIN findings f ON f.id = e.finding_id"
            f" WHERE e.action = 'exception-expired' AND e.at >= ? AND e.at < ?{f}"
            " ORDER BY e.at, e.id", [s, u, *fparams]))  # fmt: skip
        return {"in_force": in_force, "expired": expired}

    def scans_started(self, since: datetime, until: datetime) -> list[int]:
        """Ids of the scans started in ``[since, until)``."""
        bounds = [since.strftime("%Y-%m-%dT%H:%M:%SZ"), until.strftime("%Y-%m-%dT%H:%M:%SZ")]
        sql = "SELECT id FROM scans WHERE started >= ? AND started < ?"
        return [r[0] for r in self.db.execute(sql, bounds)]

    def scans(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The ``scans`` rows of ``ids``, by id (JSON columns as stored)."""
        return [
            row
            for chunk, marks in _chunks(ids)
            for row in self.db.query(
                f"SELECT * FROM scans WHERE id IN ({marks}) ORDER BY id",  # noqa: S608
                chunk,
            )
        ]

    def problem_counts(self, scan_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Malformed records and unreadable files of these scans, per input."""
        return [
            row
            for chunk, marks in _chunks(scan_ids)
            for row in self.db.query(
                f"""SELECT source, count(*) AS problems FROM scan_problems
                    WHERE scan_id IN ({marks}) GROUP BY source ORDER BY source""",  # noqa: S608
                chunk,
            )
        ]

    def problem_samples(self, scan_ids: Sequence[int], limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` problems of these scans, in scan and input order."""
        found: list[dict[str, Any]] = []
        for chunk, marks in _chunks(scan_ids):
            if len(found) >= limit:
                break
            found += self.db.query(
                f"""SELECT scan_id, source, line, reason, excerpt FROM scan_problems
                    WHERE scan_id IN ({marks}) ORDER BY scan_id, rowid LIMIT ?""",  # noqa: S608
                [*chunk, limit - len(found)],
            )
        return found

    def _read_only(self, sql: str, params: Sequence[Any], cache_kb: int = _CACHE_KB) -> Rows:
        """One query on its own read-only connection (safe to run in a worker thread)."""
        with self._reader(cache_kb) as con:
            return _rows(con.execute(sql, list(params)))

    @contextmanager
    def _reader(self, cache_kb: int = _CACHE_KB) -> Iterator[sqlite3.Connection]:
        """A read-only connection of its own (for a worker thread), closed after use. A
        query that reads rows once in their order (no index it would look up again) takes
        a small page cache (``cache_kb``): the big one would only fill up with them."""
        con = sqlite3.connect(self._ro_uri, uri=True, timeout=30)
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            con.execute(f"PRAGMA cache_size = -{cache_kb}")
            yield con
        finally:
            con.close()

    @contextmanager
    def reading(self) -> Iterator[Store]:
        """This store on a read-only connection of its own, for the worker thread that
        opens it: a report's incident, finding and audit reads run there side by side with
        its traffic reads (run one after the other, they took a second of a month's report
        over 10 M requests while the other core idled)."""
        with self._reader() as con:
            view = copy.copy(self)
            view.db = _Database(con)
            yield view

    def close(self) -> None:
        """Close the database (after the checkpoint :meth:`checkpoint_aside` started, and
        any insert or fold an interrupted ingestion left running on the connection)."""
        join_steps(self.db.conn)
        if self._checkpointer is not None:  # this connection closes last: it ends the log
            self._checkpointer.join()
            self._checkpointer = None
        self.db.conn.close()


#: the observation columns as version 1 created them: a landed step never changes, so
#: columns added to :mod:`monitor.rows` since come with a later step
_V1_OBSERVATION_COLUMNS: dict[str, type] = {
    "id": int,
    "ts": float,
    "day": str,
    "source": str,
    "line": int,
    "format": str,
    "client_ip": str,
    "client_port": int,
    "user": str,
    "method": str,
    "dest_host": str,
    "dest_port": int,
    "dest_ip": str,
    "url": str,
    "status": int,
    "result": str,
    "bytes_out": int,
    "bytes_in": int,
    "host_source": str,
    "duration": float,
    "ts_end": float,
    "packets_out": int,
    "packets_in": int,
    "ech": int,
    "provider": str,
    "provider_kind": str,
    "match_pattern": str,
    "site": str,
    "egress_ip": str,
    "egress_country": str,
    "egress_source": str,
    "dest_country": str,
    "dest_asn": int,
    "outcome": str,
    "scan_id": int,
}


def _schema_v1(db: sqlite_utils.Database) -> None:
    """Scans, observations, hits, incidents and their audit trail."""
    db["scans"].create(
        {
            "id": int,
            "started": str,
            "finished": str,
            "files": str,
            "options": str,
            "records": int,
            "malformed": int,
            "llm_observations": int,
            "stored": int,
            "duplicates": int,
            "incidents_new": int,
            "incidents_updated": int,
            "by_rule": str,
            "file_errors": str,
            "catalog_version": str,
            "geodata": str,
            "exit_code": int,
        },
        pk="id",
    )
    db["scan_problems"].create(
        {"scan_id": int, "source": str, "line": int, "reason": str, "excerpt": str}
    )
    # rows are appended in rowid order (page locality); the random-looking content id
    # gets its own compact unique index
    db["observations"].create(_V1_OBSERVATION_COLUMNS, not_null={"id", "ts", "day"})
    db["observations"].create_index(["id"], unique=True)
    # a clustered (WITHOUT ROWID) table: one B-tree per link instead of a table plus its key
    db.execute(
        "CREATE TABLE hits (incident_id TEXT NOT NULL, observation_id INTEGER NOT NULL,"
        " PRIMARY KEY (incident_id, observation_id)) WITHOUT ROWID"
    )
    db["incidents"].create(
        _INCIDENT_COLUMNS_V1,
        pk="id",
        not_null={"rule", "severity", "day", "first_seen", "last_seen", "count", "status"},
        defaults={"status": "open", "count": 0, "blocked": 0, "evidence": "[]"},
    )
    db["observations"].create_index(["day", "provider"])
    for cols in (
        ["last_seen"],
        ["first_seen"],
        ["rule"],
        ["severity_rank"],
        ["provider"],
        ["site"],
        ["client_ip"],
        ["status"],
        ["day"],
    ):
        db["incidents"].create_index(cols)
    db["scan_problems"].create_index(["scan_id"])
    db["incident_events"].create(
        {"id": int, "incident_id": str, "at": str, "action": str, "status_from": str,
         "status_to": str, "note": str, "actor": str},
        pk="id",
        not_null={"incident_id", "at", "action"},
    )  # fmt: skip
    db["incident_events"].create_index(["incident_id", "at"])


def _schema_v2(db: sqlite_utils.Database) -> None:
    """Incremental scanning: what was read of each source; hits by observation (prune)."""
    db["sources"].create(
        {
            "key": str,  # sha256 of the first bytes of the (decompressed) content
            "head_len": int,
            "path": str,
            "device": int,
            "inode": int,
            "size": int,
            "offset": int,  # bytes of (decompressed) content already processed
            "lines": int,  # lines before that offset
            "updated": str,
        },
        pk="key",
    )
    db["hits"].create_index(["observation_id"])
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["scans"].add_column("expired", int)
    db["scans"].add_column("skipped_bytes", int)


def _schema_v3(db: sqlite_utils.Database) -> None:
    """Where each LLM request is processed (monitor.residency): region, geo, basis, caveat."""
    for name in ("processing_region", "processing_geo", "residency_basis", "residency_caveat"):
        db["observations"].add_column(name, str)


def _schema_v4(db: sqlite_utils.Database) -> None:
    """Alerts: the outbox of finding events, each sink's progress through it, digests."""
    # AUTOINCREMENT: a sequence number is never reused, so a sink's cursor stays valid
    db.execute(
        """CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL
           UNIQUE, finding_id TEXT NOT NULL, event_type TEXT NOT NULL, at TEXT NOT NULL,
           payload TEXT NOT NULL)"""
    )
    db["outbox"].create_index(["finding_id"])
    db["alert_sinks"].create(
        {"name": str, "kind": str, "cursor": int, "registered": str, "delivered": int,
         "attempts": int, "next_at": float, "last_error": str, "last_failure": str,
         "last_success": str, "lease_owner": str, "lease_until": float},
        pk="name",
    )  # fmt: skip
    db["finding_alerts"].create(
        {"finding_id": str, "last_event_at": float, "last_count": int}, pk="finding_id"
    )


def _schema_v5(db: sqlite_utils.Database) -> None:
    """Captures: the outer SNI of an ECH ClientHello, the tunnel a flow was carried in."""
    have = db["observations"].columns_dict
    for name in ("ech_outer", "tunnel", "tunnel_src", "tunnel_dst"):
        if name not in have:  # only where missing: a copy made for tests may hold them
            db["observations"].add_column(name, str)


def _schema_v6(db: sqlite_utils.Database) -> None:
    """Findings: the roll-up an analyst works, its audit trail and exceptions; who (user) in
    the detail; both egress countries; the settings digest each scan was evaluated with.
    Every incident is kept, linked to its finding; a finding's status is derived from
    its incidents' (all resolved: resolved; none open: acknowledged; else open)."""
    for table, name in (("observations", "egress_geo_country"), ("observations", "egress_logged"),
                        ("incidents", "user"), ("incidents", "finding_id"),
                        ("scans", "settings_digest")):  # fmt: skip
        if name not in db[table].columns_dict:  # only where missing, as in step 5
            db[table].add_column(name, str)
    db.conn.create_function("apiwatch_finding_id", 4, finding_id, deterministic=True)
    db.execute(
        "UPDATE incidents SET finding_id = apiwatch_finding_id(rule, provider, site, egress_country)"
    )
    db["incidents"].create_index(["finding_id"])
    db["incidents"].create_index(["user"])
    db["findings"].create(
        {"id": str, "rule": str, "provider": str, "site": str, "egress_country": str,
         "severity": str, "severity_rank": int, "title": str, "status": str, "first_seen": str,
         "last_seen": str, "count": int, "blocked": int, "bytes_out": int, "bytes_in": int,
         "clients": int, "users": int, "hosts": int, "days": int, "first_scan": int,
         "last_scan": int, "changed": str, "exception_until": str, "exception_reason": str,
         "exception_by": str, "exception_source": str},
        pk="id",
        not_null={"rule", "severity", "status", "count"},
        defaults={"status": "open", "count": 0, "blocked": 0},
    )  # fmt: skip
    for cols in (["last_seen"], ["status"], ["rule"], ["provider"], ["site"], ["severity_rank"]):
        db["findings"].create_index(cols)
    db["finding_events"].create(
        {"id": int, "finding_id": str, "at": str, "action": str, "status_from": str,
         "status_to": str, "note": str, "actor": str, "scan_id": int, "requests": int,
         "until": str},
        pk="id",
        not_null={"finding_id", "at", "action"},
    )  # fmt: skip
    db["finding_events"].create_index(["finding_id", "id"])
    db["finding_events"].create_index(["at"])
    db["finding_events"].create_index(["scan_id"])
    cols = ["id", *_ROLLUP_COLUMNS]
    db.conn.executemany(
        f"INSERT INTO findings ({', '.join(cols)}) VALUES ({_marks(cols)})",  # noqa: S608
        ([_rolled(r)[c] for c in cols] for r in db.query(_ROLLUP.format(where="1 = 1"))),
    )
    db.execute(
        """UPDATE findings SET status = CASE
             WHEN NOT EXISTS (SELECT 1 FROM incidents i WHERE i.finding_id = findings.id
                              AND i.status != 'resolved') THEN 'resolved'
             WHEN NOT EXISTS (SELECT 1 FROM incidents i WHERE i.finding_id = findings.id
                              AND i.status = 'open') THEN 'acknowledged'
             ELSE 'open' END"""
    )


def _schema_v7(db: sqlite_utils.Database) -> None:
    """Who is calling (the ClientHello's JA4, the User-Agent) and what the rules saw."""
    for table, name in (("observations", "ja4"), ("observations", "user_agent"),
                        ("incidents", "facts")):  # fmt: skip
        if name not in db[table].columns_dict:  # v1 creates incidents as they are now
            db[table].add_column(name, str)


def _schema_v8(db: sqlite_utils.Database) -> None:
    """Correlated detail (egress-hopping) rolls up into findings like every other rule's: its
    rows, which had no finding, get one (rule, provider, the first country the provider does
    not serve, from their facts), with the status of their detail as in step 6."""
    adopted: dict[str, str] = {}
    for iid, rule, provider, facts in db.execute(
        "SELECT id, rule, provider, facts FROM incidents WHERE finding_id IS NULL"
    ).fetchall():
        seen = json.loads(facts or "{}")
        countries = {c for v in seen.get("history.unserved") or [] for c in v or ()}
        countries = countries or {c for v in seen.get("history.countries") or [] for c in v or ()}
        country = min(countries, default=None)
        fid = finding_id(rule, provider, None, country)
        db.execute(
            "UPDATE incidents SET finding_id = ?, egress_country = ? WHERE id = ?",
            [fid, country, iid],
        )
        adopted[fid] = iid
    cols = ["id", *_ROLLUP_COLUMNS]
    for chunk, marks in _chunks(sorted(adopted)):
        rows = db.query(_ROLLUP.format(where=f"finding_id IN ({marks})"), chunk)  # noqa: S608
        db.conn.executemany(
            f"INSERT OR IGNORE INTO findings ({', '.join(cols)}) VALUES ({_marks(cols)})",  # noqa: S608
            [[_rolled(r)[c] for c in cols] for r in rows],
        )
        db.execute(
            f"""UPDATE findings SET status = CASE
                 WHEN NOT EXISTS (SELECT 1 FROM incidents i WHERE i.finding_id = findings.id
                                  AND i.status != 'resolved') THEN 'resolved'
                 WHEN NOT EXISTS (SELECT 1 FROM incidents i WHERE i.finding_id = findings.id
                                  AND i.status = 'open') THEN 'acknowledged'
                 ELSE 'open' END WHERE id IN ({marks})""",  # noqa: S608
            chunk,
        )


#: the stored observation as step 9 lays it out: per request, client, context (in this
#: order the ``observations`` view shows them, as :mod:`monitor.rows` at the time)
_V9_PER_REQUEST: dict[str, type] = {
    "id": int, "ts": float, "line": int, "bytes_out": int, "bytes_in": int, "duration": float,
    "url": str, "client_port": int, "ts_end": float, "packets_out": int, "packets_in": int,
}  # fmt: skip
_V9_CLIENT: dict[str, type] = {"client_ip": str, "user": str}
_V9_CONTEXT: dict[str, type] = {
    "day": str, "source": str, "format": str, "method": str, "dest_host": str, "dest_port": int,
    "dest_ip": str, "status": int, "host_source": str, "result": str, "ech": int,
    "ech_outer": str, "tunnel": str, "tunnel_src": str, "tunnel_dst": str, "ja4": str,
    "user_agent": str, "processing_region": str, "processing_geo": str,
    "residency_basis": str, "residency_caveat": str, "provider": str, "provider_kind": str,
    "match_pattern": str, "site": str, "egress_ip": str, "egress_country": str,
    "egress_source": str, "egress_geo_country": str, "egress_logged": str, "dest_country": str,
    "dest_asn": int, "outcome": str, "scan_id": int,
}  # fmt: skip
_V9_VIEW_ORDER = (
    "id", "day", "ts", "source", "line", "format", "client_ip", "client_port", "user", "method",
    "dest_host", "dest_port", "dest_ip", "url", "status", "bytes_out", "bytes_in",
    "host_source", "result", "duration", "ts_end", "packets_out", "packets_in", "ech",
    "ech_outer", "tunnel", "tunnel_src", "tunnel_dst", "ja4", "user_agent",
    "processing_region", "processing_geo", "residency_basis", "residency_caveat", "provider",
    "provider_kind", "match_pattern", "site", "egress_ip", "egress_country", "egress_source",
    "egress_geo_country", "egress_logged", "dest_country", "dest_asn", "outcome", "scan_id",
)  # fmt: skip


def _create_views(db: sqlite_utils.Database, order: Sequence[str]) -> None:
    """``observations`` (columns in ``order``, each from the table that holds it) and
    ``hits``, over the tables of step 9; a later step that adds a column creates them again."""
    where = {c: a for a, t in (("o", "obs_rows"), ("c", "obs_contexts"), ("w", "obs_clients"))
             for c in db[t].columns_dict if c not in ("n", "key", "first_row", "ctx", "client")}  # fmt: skip
    cols = ", ".join(f"{where[c]}.{c} AS {c}" for c in order)
    db.execute("DROP VIEW IF EXISTS observations")
    db.execute(f"CREATE VIEW observations AS SELECT {cols} FROM {_OBS}")  # noqa: S608
    db.execute("DROP VIEW IF EXISTS hits")
    db.execute(
        "CREATE VIEW hits AS SELECT k.id AS incident_id, o.id AS observation_id"
        " FROM hit_links l CROSS JOIN incident_keys k ON k.n = l.incident"
        " CROSS JOIN obs_rows o ON o.n = l.obs"
    )


def _schema_v9(db: sqlite_utils.Database) -> None:
    """Compact observations (about a fifth of the bytes): what repeats across requests is
    kept once, in dictionaries of contexts and clients, and each request is a narrow row
    with its own values and two entry numbers; hits are integer pairs. ``observations``
    and ``hits`` become views with the same columns. Every row is kept, in its order; the
    indexes queries do not use go."""

    def sql_types(cols: dict[str, type]) -> str:
        return ", ".join(f"{c} {_SQL_TYPE[t]}" for c, t in cols.items())

    db.execute(
        "CREATE TABLE obs_contexts (n INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE,"
        f" first_row INTEGER NOT NULL, {sql_types(_V9_CONTEXT)})"
    )
    db.execute(
        "CREATE TABLE obs_clients (n INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE,"
        f" {sql_types(_V9_CLIENT)})"
    )
    per_request = {k: v for k, v in _V9_PER_REQUEST.items() if k not in ("id", "ts")}
    db.execute(
        "CREATE TABLE obs_rows (n INTEGER PRIMARY KEY, id INTEGER NOT NULL, ctx INTEGER NOT NULL,"
        f" client INTEGER NOT NULL, ts REAL NOT NULL, {sql_types(per_request)})"
    )
    db.execute("CREATE UNIQUE INDEX idx_obs_rows_id ON obs_rows (id)")
    db.execute("CREATE TABLE incident_keys (n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE)")
    db.execute(
        "CREATE TABLE hit_links (incident INTEGER NOT NULL, obs INTEGER NOT NULL,"
        " PRIMARY KEY (incident, obs)) WITHOUT ROWID"
    )
    db.conn.create_function("apiwatch_key", -1, lambda *v: _key(v), deterministic=True)
    ctx, client = ", ".join(_V9_CONTEXT), ", ".join(_V9_CLIENT)
    db.execute(
        f"INSERT INTO obs_clients (key, {client}) SELECT apiwatch_key({client}), {client}"  # noqa: S608
        f" FROM observations GROUP BY {client} ORDER BY min(rowid)"
    )
    db.execute(
        f"INSERT INTO obs_contexts (key, first_row, {ctx}) SELECT apiwatch_key({ctx}),"  # noqa: S608
        f" min(rowid), {ctx} FROM observations GROUP BY {ctx} ORDER BY min(rowid)"
    )
    rows = ", ".join(per_request)
    db.execute(
        f"INSERT INTO obs_rows (n, id, ctx, client, ts, {rows})"  # noqa: S608
        f" SELECT o.rowid, o.id, c.n, w.n, o.ts, {', '.join(f'o.{r}' for r in per_request)}"
        " FROM observations o JOIN obs_contexts c ON c.key = apiwatch_key("
        f"{', '.join(f'o.{c}' for c in _V9_CONTEXT)}) JOIN obs_clients w"
        f" ON w.key = apiwatch_key(o.client_ip, o.user) ORDER BY o.rowid"
    )
    db.execute(
        "INSERT INTO incident_keys (id) SELECT DISTINCT incident_id FROM hits ORDER BY incident_id"
    )
    db.execute(
        "INSERT INTO hit_links (incident, obs) SELECT k.n, o.n FROM hits h"
        " JOIN incident_keys k ON k.id = h.incident_id JOIN obs_rows o ON o.id = h.observation_id"
    )
    db.execute("DROP TABLE hits")
    db.execute("DROP TABLE observations")
    for name in ("first_seen", "rule", "severity_rank", "provider", "site", "status", "user"):
        db.execute(f"DROP INDEX IF EXISTS idx_incidents_{name}")
    _create_views(db, _V9_VIEW_ORDER)


_SQL_TYPE = {int: "INTEGER", float: "REAL", str: "TEXT"}

#: the incidents view's columns, in order, as step 10 makes it
_V10_INCIDENT_COLUMNS = (*_INCIDENT_COLUMNS_V1, "user", "finding_id")
#: incident columns of few distinct values: kept once each, in ``incident_texts``
_TEXT_COLUMNS = ("rule", "severity", "title", "provider_kind", "egress_source")


def _schema_v10(db: sqlite_utils.Database) -> None:
    """Compact incidents: rules, severities, titles, kinds and egress sources (a few
    distinct texts repeated in every detail row) are kept once, in ``incident_texts``, and
    so are facts, in ``incident_facts``; rows are numbered (``incident_rows.n``) so
    hit links name them by number; ``incidents`` becomes a view with the same columns.
    Every incident is kept; links to incidents that no longer exist (an old re-correlation
    left them; ``db check`` counted them as orphans) are not."""
    texts = " UNION ".join(f"SELECT {c} AS t FROM incidents" for c in _TEXT_COLUMNS)  # noqa: S608
    db.execute("CREATE TABLE incident_texts (n INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)")
    db.execute(
        f"INSERT INTO incident_texts (text) SELECT t FROM ({texts}) WHERE t IS NOT NULL ORDER BY t"  # noqa: S608
    )
    db.execute("CREATE TABLE incident_facts (n INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)")
    facts = [
        r[0] for r in db.execute("SELECT DISTINCT facts FROM incidents WHERE facts IS NOT NULL")
    ]
    for text in sorted(facts):
        _fact_entry(db.conn, text)
    not_null = {"rule", "severity", "day", "first_seen", "last_seen", "count", "status"}
    defaults = {"status": "'open'", "count": "0", "blocked": "0", "evidence": "'[]'"}
    types = {**INCIDENT_COLUMNS, **dict.fromkeys((*_TEXT_COLUMNS, "facts"), int)}
    cols = ", ".join(
        f"{c} {_SQL_TYPE[types[c]]}{' NOT NULL' if c in not_null else ''}"
        f"{' DEFAULT ' + defaults[c] if c in defaults else ''}"
        for c in _V10_INCIDENT_COLUMNS
        if c != "id"
    )
    db.execute(
        f"CREATE TABLE incident_rows (n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, {cols})"
    )
    names = list(_V10_INCIDENT_COLUMNS)
    entry = "(SELECT n FROM {} WHERE text = i.{})"  # noqa: S608 - constants
    values = [
        entry.format("incident_texts", c)
        if c in _TEXT_COLUMNS
        else entry.format("incident_facts", c)
        if c == "facts"
        else f"i.{c}"
        for c in names
    ]
    db.execute(
        f"INSERT INTO incident_rows (n, {', '.join(names)})"  # noqa: S608 - constants
        f" SELECT i.rowid, {', '.join(values)} FROM incidents i ORDER BY i.rowid"
    )
    db.execute(
        "CREATE TABLE links (incident INTEGER NOT NULL, obs INTEGER NOT NULL,"
        " PRIMARY KEY (incident, obs)) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO links SELECT r.n, l.obs FROM hit_links l JOIN incident_keys k"
        " ON k.n = l.incident JOIN incident_rows r ON r.id = k.id"
    )
    db.execute("DROP VIEW hits")
    for table in ("hit_links", "incident_keys", "incidents"):
        db.execute(f"DROP TABLE {table}")
    db.execute("ALTER TABLE links RENAME TO hit_links")
    db.execute("CREATE INDEX idx_incident_rows_last_seen ON incident_rows (last_seen)")
    db.execute("CREATE INDEX idx_incident_rows_finding_id ON incident_rows (finding_id)")
    shown = ", ".join(
        f"t_{c}.text AS {c}" if c in (*_TEXT_COLUMNS, "facts") else f"i.{c} AS {c}"
        for c in _V10_INCIDENT_COLUMNS
    )
    texts = " ".join(
        f"LEFT JOIN {'incident_facts' if c == 'facts' else 'incident_texts'} t_{c} ON t_{c}.n = i.{c}"
        for c in (*_TEXT_COLUMNS, "facts")
    )
    db.execute(f"CREATE VIEW incidents AS SELECT {shown} FROM incident_rows i {texts}")  # noqa: S608
    db.execute(
        "CREATE VIEW hits AS SELECT i.id AS incident_id, o.id AS observation_id"
        " FROM hit_links l JOIN incident_rows i ON i.n = l.incident"
        " JOIN obs_rows o ON o.n = l.obs"
    )


def _schema_v11(db: sqlite_utils.Database) -> None:
    """Roll-ups of the stored requests (see :data:`_ROLLUP_ROWS`): one row per context and
    client with its requests, bytes, least URL and first and last timestamps, which the
    report's traffic tables read instead of the requests of whole UTC days."""
    db.execute(
        "CREATE TABLE obs_rollup (ctx INTEGER NOT NULL, client INTEGER NOT NULL,"
        " requests INTEGER NOT NULL, bytes_out INTEGER, bytes_in INTEGER, url TEXT,"
        " first_ts REAL NOT NULL, last_ts REAL NOT NULL, PRIMARY KEY (ctx, client)) WITHOUT ROWID"
    )
    db.execute(
        f"INSERT INTO obs_rollup SELECT o.ctx, o.client, count(*), {_sums('o.')},"  # noqa: S608
        " min(o.url), min(o.ts), max(o.ts) FROM obs_rows o GROUP BY 1, 2"
    )
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('rolled_up_to', (SELECT coalesce(max(n), 0)"
        " FROM obs_rows)) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )


def _schema_v12(db: sqlite_utils.Database) -> None:
    """Coarser roll-ups: each context's totals (``obs_context_totals``: what the traffic
    tables that do not name clients read), and who reached which destination in a UTC
    month (``obs_monthly``, see :func:`_by_month`: a month's client tables read a few rows
    per client instead of one per client and day; ``obs_dests`` numbers the destinations,
    host, provider, kind, site, egress country and outcome, they are kept under). And
    indexes on the detail's users and clients, which ``--user`` and ``--client`` select."""
    db.execute(
        "CREATE TABLE obs_dests (n INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,"
        f" {', '.join(f'{c} TEXT' for c in _DEST_COLUMNS)})"
    )
    db.execute(
        "CREATE TABLE obs_monthly (month TEXT NOT NULL, client INTEGER NOT NULL,"
        " dest INTEGER NOT NULL, requests INTEGER NOT NULL, bytes_out INTEGER, bytes_in INTEGER,"
        " url TEXT, PRIMARY KEY (month, client, dest)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE obs_context_totals (ctx INTEGER PRIMARY KEY, requests INTEGER NOT NULL,"
        " bytes_out INTEGER, bytes_in INTEGER, first_ts REAL NOT NULL, last_ts REAL NOT NULL)"
    )
    _by_context(db.conn, "obs_rollup", "1 = 1", [])
    _by_month(db.conn, "obs_rollup", "1 = 1", [])
    for column in ("user", "client_ip"):  # findings and incidents --user/--client read these
        db.execute(f"CREATE INDEX idx_incident_rows_{column} ON incident_rows ({column})")


def _schema_v13(db: sqlite_utils.Database) -> None:
    """Hourly totals of each context (``obs_hourly``): the timeline of a day, or of days
    in another time zone, from a few rows per context instead of its requests."""
    db.execute(
        "CREATE TABLE obs_hourly (ctx INTEGER NOT NULL, hour INTEGER NOT NULL,"
        " requests INTEGER NOT NULL, bytes_out INTEGER, bytes_in INTEGER,"
        " PRIMARY KEY (ctx, hour)) WITHOUT ROWID"
    )
    _by_hour(db.conn, "1 = 1", [])


def _schema_v14(db: sqlite_utils.Database) -> None:
    """Hit links kept as packs (``hit_packs``): a row per incident and block of
    :data:`monitor.batch.PACK_ROWS` observation rows, the block's first row (``first``) and
    the JSON array of the incident's rows in it less that, ascending; ``hit_links``
    becomes the view of the pairs. A scan stored a row per link as it went (a 25 % scan:
    one per request in four, inserted all over the table's B-tree, on the connection its
    requests' rows are inserted on, which the producers wait for); now a row per incident
    and block, at the end of each transaction."""
    db.execute(
        "CREATE TABLE hit_packs (incident INTEGER NOT NULL, first INTEGER NOT NULL,"
        " obs TEXT NOT NULL, PRIMARY KEY (incident, first)) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO hit_packs (incident, first, obs) "  # noqa: S608 - constants
        + _packs_of("SELECT incident, obs FROM hit_links")
    )
    db.execute("DROP VIEW hits")
    db.execute("DROP TABLE hit_links")
    db.execute(
        "CREATE VIEW hit_links AS SELECT p.incident AS incident, p.first + j.value AS obs"
        " FROM hit_packs p, json_each(p.obs) j"
    )
    db.execute(
        "CREATE VIEW hits AS SELECT i.id AS incident_id, o.id AS observation_id"
        " FROM hit_links l JOIN incident_rows i ON i.n = l.incident"
        " JOIN obs_rows o ON o.n = l.obs"
    )


MIGRATIONS = {
    1: _schema_v1,
    2: _schema_v2,
    3: _schema_v3,
    4: _schema_v4,
    5: _schema_v5,
    6: _schema_v6,
    7: _schema_v7,
    8: _schema_v8,
    9: _schema_v9,
    10: _schema_v10,
    11: _schema_v11,
    12: _schema_v12,
    13: _schema_v13,
    14: _schema_v14,
}


#: What steps 1 to ``_SCHEMA_AT`` leave in a new database (its objects, in the order they
#: were made, and rows), made at once instead: on a new file the steps take 15 ms of CPU and
#: need sqlite-utils (30 ms to import). The steps after it run as on any older database.
#: ``test_store`` checks that it is what the steps make; a landed step never changes, so it
#: stays right, and moving it to a later step is a matter of speed (the test prints it).
_SCHEMA_AT = 14
_SCHEMA = (
    """CREATE TABLE "scans" (
   "id" INTEGER PRIMARY KEY,
   "started" TEXT,
   "finished" TEXT,
   "files" TEXT,
   "options" TEXT,
   "records" INTEGER,
   "malformed" INTEGER,
   "llm_observations" INTEGER,
   "stored" INTEGER,
   "duplicates" INTEGER,
   "incidents_new" INTEGER,
   "incidents_updated" INTEGER,
   "by_rule" TEXT,
   "file_errors" TEXT,
   "catalog_version" TEXT,
   "geodata" TEXT,
   "exit_code" INTEGER
, "expired" INTEGER, "skipped_bytes" INTEGER, "settings_digest" TEXT)""",
    """CREATE TABLE "scan_problems" (
   "scan_id" INTEGER,
   "source" TEXT,
   "line" INTEGER,
   "reason" TEXT,
   "excerpt" TEXT
)""",
    """CREATE INDEX "idx_scan_problems_scan_id"
    ON "scan_problems" ("scan_id")""",
    """CREATE TABLE "incident_events" (
   "id" INTEGER PRIMARY KEY,
   "incident_id" TEXT NOT NULL,
   "at" TEXT NOT NULL,
   "action" TEXT NOT NULL,
   "status_from" TEXT,
   "status_to" TEXT,
   "note" TEXT,
   "actor" TEXT
)""",
    """CREATE INDEX "idx_incident_events_incident_id_at"
    ON "incident_events" ("incident_id", "at")""",
    """CREATE TABLE "sources" (
   "key" TEXT PRIMARY KEY,
   "head_len" INTEGER,
   "path" TEXT,
   "device" INTEGER,
   "inode" INTEGER,
   "size" INTEGER,
   "offset" INTEGER,
   "lines" INTEGER,
   "updated" TEXT
)""",
    """CREATE TABLE "meta" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
)""",
    """CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL
           UNIQUE, finding_id TEXT NOT NULL, event_type TEXT NOT NULL, at TEXT NOT NULL,
           payload TEXT NOT NULL)""",
    """CREATE INDEX "idx_outbox_finding_id"
    ON "outbox" ("finding_id")""",
    """CREATE TABLE "alert_sinks" (
   "name" TEXT PRIMARY KEY,
   "kind" TEXT,
   "cursor" INTEGER,
   "registered" TEXT,
   "delivered" INTEGER,
   "attempts" INTEGER,
   "next_at" REAL,
   "last_error" TEXT,
   "last_failure" TEXT,
   "last_success" TEXT,
   "lease_owner" TEXT,
   "lease_until" REAL
)""",
    """CREATE TABLE "finding_alerts" (
   "finding_id" TEXT PRIMARY KEY,
   "last_event_at" REAL,
   "last_count" INTEGER
)""",
    """CREATE TABLE "findings" (
   "id" TEXT PRIMARY KEY,
   "rule" TEXT NOT NULL,
   "provider" TEXT,
   "site" TEXT,
   "egress_country" TEXT,
   "severity" TEXT NOT NULL,
   "severity_rank" INTEGER,
   "title" TEXT,
   "status" TEXT NOT NULL DEFAULT 'open',
   "first_seen" TEXT,
   "last_seen" TEXT,
   "count" INTEGER NOT NULL DEFAULT 0,
   "blocked" INTEGER DEFAULT 0,
   "bytes_out" INTEGER,
   "bytes_in" INTEGER,
   "clients" INTEGER,
   "users" INTEGER,
   "hosts" INTEGER,
   "days" INTEGER,
   "first_scan" INTEGER,
   "last_scan" INTEGER,
   "changed" TEXT,
   "exception_until" TEXT,
   "exception_reason" TEXT,
   "exception_by" TEXT,
   "exception_source" TEXT
)""",
    """CREATE INDEX "idx_findings_last_seen"
    ON "findings" ("last_seen")""",
    """CREATE INDEX "idx_findings_status"
    ON "findings" ("status")""",
    """CREATE INDEX "idx_findings_rule"
    ON "findings" ("rule")""",
    """CREATE INDEX "idx_findings_provider"
    ON "findings" ("provider")""",
    """CREATE INDEX "idx_findings_site"
    ON "findings" ("site")""",
    """CREATE INDEX "idx_findings_severity_rank"
    ON "findings" ("severity_rank")""",
    """CREATE TABLE "finding_events" (
   "id" INTEGER PRIMARY KEY,
   "finding_id" TEXT NOT NULL,
   "at" TEXT NOT NULL,
   "action" TEXT NOT NULL,
   "status_from" TEXT,
   "status_to" TEXT,
   "note" TEXT,
   "actor" TEXT,
   "scan_id" INTEGER,
   "requests" INTEGER,
   "until" TEXT
)""",
    """CREATE INDEX "idx_finding_events_finding_id_id"
    ON "finding_events" ("finding_id", "id")""",
    """CREATE INDEX "idx_finding_events_at"
    ON "finding_events" ("at")""",
    """CREATE INDEX "idx_finding_events_scan_id"
    ON "finding_events" ("scan_id")""",
    "CREATE TABLE obs_contexts (n INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE, first_row INTEGER NOT NULL, day TEXT, source TEXT, format TEXT, method TEXT, dest_host TEXT, dest_port INTEGER, dest_ip TEXT, status INTEGER, host_source TEXT, result TEXT, ech INTEGER, ech_outer TEXT, tunnel TEXT, tunnel_src TEXT, tunnel_dst TEXT, ja4 TEXT, user_agent TEXT, processing_region TEXT, processing_geo TEXT, residency_basis TEXT, residency_caveat TEXT, provider TEXT, provider_kind TEXT, match_pattern TEXT, site TEXT, egress_ip TEXT, egress_country TEXT, egress_source TEXT, egress_geo_country TEXT, egress_logged TEXT, dest_country TEXT, dest_asn INTEGER, outcome TEXT, scan_id INTEGER)",
    "CREATE TABLE obs_clients (n INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE, client_ip TEXT, user TEXT)",
    "CREATE TABLE obs_rows (n INTEGER PRIMARY KEY, id INTEGER NOT NULL, ctx INTEGER NOT NULL, client INTEGER NOT NULL, ts REAL NOT NULL, line INTEGER, bytes_out INTEGER, bytes_in INTEGER, duration REAL, url TEXT, client_port INTEGER, ts_end REAL, packets_out INTEGER, packets_in INTEGER)",
    "CREATE UNIQUE INDEX idx_obs_rows_id ON obs_rows (id)",
    "CREATE VIEW observations AS SELECT o.id AS id, c.day AS day, o.ts AS ts, c.source AS source, o.line AS line, c.format AS format, w.client_ip AS client_ip, o.client_port AS client_port, w.user AS user, c.method AS method, c.dest_host AS dest_host, c.dest_port AS dest_port, c.dest_ip AS dest_ip, o.url AS url, c.status AS status, o.bytes_out AS bytes_out, o.bytes_in AS bytes_in, c.host_source AS host_source, c.result AS result, o.duration AS duration, o.ts_end AS ts_end, o.packets_out AS packets_out, o.packets_in AS packets_in, c.ech AS ech, c.ech_outer AS ech_outer, c.tunnel AS tunnel, c.tunnel_src AS tunnel_src, c.tunnel_dst AS tunnel_dst, c.ja4 AS ja4, c.user_agent AS user_agent, c.processing_region AS processing_region, c.processing_geo AS processing_geo, c.residency_basis AS residency_basis, c.residency_caveat AS residency_caveat, c.provider AS provider, c.provider_kind AS provider_kind, c.match_pattern AS match_pattern, c.site AS site, c.egress_ip AS egress_ip, c.egress_country AS egress_country, c.egress_source AS egress_source, c.egress_geo_country AS egress_geo_country, c.egress_logged AS egress_logged, c.dest_country AS dest_country, c.dest_asn AS dest_asn, c.outcome AS outcome, c.scan_id AS scan_id FROM obs_rows o CROSS JOIN obs_contexts c ON c.n = o.ctx CROSS JOIN obs_clients w ON w.n = o.client",
    "CREATE TABLE incident_texts (n INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)",
    "CREATE TABLE incident_facts (n INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)",
    "CREATE TABLE incident_rows (n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, rule INTEGER NOT NULL, severity INTEGER NOT NULL, severity_rank INTEGER, title INTEGER, provider TEXT, provider_kind INTEGER, dest_host TEXT, client_ip TEXT, site TEXT, egress_ip TEXT, egress_country TEXT, egress_source INTEGER, day TEXT NOT NULL, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, count INTEGER NOT NULL DEFAULT 0, blocked INTEGER DEFAULT 0, bytes_out INTEGER, bytes_in INTEGER, outcome TEXT, status TEXT NOT NULL DEFAULT 'open', evidence TEXT DEFAULT '[]', facts INTEGER, first_scan INTEGER, last_scan INTEGER, user TEXT, finding_id TEXT)",
    "CREATE INDEX idx_incident_rows_last_seen ON incident_rows (last_seen)",
    "CREATE INDEX idx_incident_rows_finding_id ON incident_rows (finding_id)",
    "CREATE VIEW incidents AS SELECT i.id AS id, t_rule.text AS rule, t_severity.text AS severity, i.severity_rank AS severity_rank, t_title.text AS title, i.provider AS provider, t_provider_kind.text AS provider_kind, i.dest_host AS dest_host, i.client_ip AS client_ip, i.site AS site, i.egress_ip AS egress_ip, i.egress_country AS egress_country, t_egress_source.text AS egress_source, i.day AS day, i.first_seen AS first_seen, i.last_seen AS last_seen, i.count AS count, i.blocked AS blocked, i.bytes_out AS bytes_out, i.bytes_in AS bytes_in, i.outcome AS outcome, i.status AS status, i.evidence AS evidence, t_facts.text AS facts, i.first_scan AS first_scan, i.last_scan AS last_scan, i.user AS user, i.finding_id AS finding_id FROM incident_rows i LEFT JOIN incident_texts t_rule ON t_rule.n = i.rule LEFT JOIN incident_texts t_severity ON t_severity.n = i.severity LEFT JOIN incident_texts t_title ON t_title.n = i.title LEFT JOIN incident_texts t_provider_kind ON t_provider_kind.n = i.provider_kind LEFT JOIN incident_texts t_egress_source ON t_egress_source.n = i.egress_source LEFT JOIN incident_facts t_facts ON t_facts.n = i.facts",
    "CREATE TABLE obs_rollup (ctx INTEGER NOT NULL, client INTEGER NOT NULL, requests INTEGER NOT NULL, bytes_out INTEGER, bytes_in INTEGER, url TEXT, first_ts REAL NOT NULL, last_ts REAL NOT NULL, PRIMARY KEY (ctx, client)) WITHOUT ROWID",
    "CREATE TABLE obs_dests (n INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, dest_host TEXT, provider TEXT, provider_kind TEXT, site TEXT, egress_country TEXT, outcome TEXT)",
    "CREATE TABLE obs_monthly (month TEXT NOT NULL, client INTEGER NOT NULL, dest INTEGER NOT NULL, requests INTEGER NOT NULL, bytes_out INTEGER, bytes_in INTEGER, url TEXT, PRIMARY KEY (month, client, dest)) WITHOUT ROWID",
    "CREATE TABLE obs_context_totals (ctx INTEGER PRIMARY KEY, requests INTEGER NOT NULL, bytes_out INTEGER, bytes_in INTEGER, first_ts REAL NOT NULL, last_ts REAL NOT NULL)",
    "CREATE INDEX idx_incident_rows_user ON incident_rows (user)",
    "CREATE INDEX idx_incident_rows_client_ip ON incident_rows (client_ip)",
    "CREATE TABLE obs_hourly (ctx INTEGER NOT NULL, hour INTEGER NOT NULL, requests INTEGER NOT NULL, bytes_out INTEGER, bytes_in INTEGER, PRIMARY KEY (ctx, hour)) WITHOUT ROWID",
    "CREATE TABLE hit_packs (incident INTEGER NOT NULL, first INTEGER NOT NULL, obs TEXT NOT NULL, PRIMARY KEY (incident, first)) WITHOUT ROWID",
    "CREATE VIEW hit_links AS SELECT p.incident AS incident, p.first + j.value AS obs FROM hit_packs p, json_each(p.obs) j",
    "CREATE VIEW hits AS SELECT i.id AS incident_id, o.id AS observation_id FROM hit_links l JOIN incident_rows i ON i.n = l.incident JOIN obs_rows o ON o.n = l.obs",
    "INSERT INTO meta (key, value) VALUES ('rolled_up_to', '0')",
)


def _create_schema(conn: sqlite3.Connection) -> int:
    """Give a new, empty database :data:`_SCHEMA`; returns its schema version."""
    for statement in _SCHEMA:
        conn.execute(statement)
    return _SCHEMA_AT


#: the lifecycle actions of findings that alert (the ``monitor.events`` type of the same name;
#: ``activity`` alerts as ``updated``/``escalated``, digested: :meth:`Store._alert_activity`)
_ALERTED_ACTIONS = frozenset({"new", "reopened", "acknowledged", "resolved", "excepted",
                              "exception-expired", "superseded"})  # fmt: skip


_INCIDENT_LIST_COLUMNS = (
    "id, rule, severity, title, provider, dest_host, client_ip, site, egress_ip, egress_country,"
    " day, first_seen, last_seen, count, blocked, outcome, status"
)
_RESOLVED_IN = (
    "id IN (SELECT incident_id FROM incident_events"
    " WHERE status_to = 'resolved' AND at >= ? AND at < ?)"
)


def _chosen_clients(known: Sequence[str | None], specs: Sequence[str]) -> list[str]:
    """The addresses of ``known`` that ``specs`` name, as networks or as they are."""
    cidrs = [c for c in specs if _is_network(c)]
    return sorted(set(clients_in(known, cidrs)) | (set(specs) & {k for k in known if k}))


def _utc_midnight(when: datetime) -> bool:
    return when.astimezone(UTC).timetz().replace(tzinfo=None) == datetime.min.time()


def _local_day(column: str, since: datetime, until: datetime, tz: str) -> tuple[str, list[Any]]:
    """SQL for the day number in ``tz`` of the epoch seconds ``column`` over ``[since,
    until)``: the zone's UTC offsets there (daylight saving changes included, found at
    the 15-minute grain every zone's offsets keep) as a CASE."""
    from zoneinfo import ZoneInfo

    zone = UTC if tz == "UTC" else ZoneInfo(tz)
    offsets: list[tuple[float, float]] = []  # (from this instant, offset seconds)
    at = since
    while at < until or not offsets:
        offset = at.astimezone(zone).utcoffset().total_seconds()  # type: ignore[union-attr]
        if not offsets or offsets[-1][1] != offset:
            offsets.append((at.timestamp(), offset))
        at += timedelta(minutes=15)
    case = " ".join(f"WHEN {column} >= ? THEN ?" for _ in offsets[1:])
    params: list[Any] = [p for start, offset in reversed(offsets[1:]) for p in (start, offset)]
    shift = f"CASE {case} ELSE ? END" if case else "?"
    return f"CAST(({column} + {shift}) / 86400 AS INTEGER)", [*params, offsets[0][1]]


#: :meth:`Store.traffic_cube`'s figures of the rows ``{rows}`` (``ctx``, ``requests``,
#: ``bytes_out``, ``bytes_in`` and what ``{prev}`` and ``{bucket}`` read), by period, bucket,
#: provider, kind, site and egress country (and ``{unsure}``)
_CUBE = f"""SELECT {{prev}}, {{bucket}}, c.provider, c.provider_kind AS kind,
         c.site, c.egress_country AS country, sum(g.requests) AS requests,
         sum(CASE WHEN c.outcome IS 'blocked' THEN g.requests ELSE 0 END) AS blocked,
         {_sums("g.")}{{unsure}}
  FROM ({{rows}}) g CROSS JOIN obs_contexts c ON c.n = g.ctx
  GROUP BY 1, 2, 3, 4, 5, 6"""  # noqa: S608 - constants
#: :data:`_CUBE` of the rows :meth:`Store._cube_rows` made
_CUBE_OF_ROWS = {"prev": "g.prev AS prev", "bucket": "g.bucket AS bucket",
                 "rows": "SELECT * FROM temp.cube", "unsure": ""}  # fmt: skip
#: those of them of the period (not the one before)
_CUBE_OF_PERIOD = "SELECT ctx, requests FROM temp.cube WHERE prev = 0"
#: :meth:`Store.processing_locations`' figures of the rows ``{grouped}`` (``ctx``, ``requests``)
_PROCESSING = """SELECT c.site, c.processing_geo AS geo, c.residency_basis AS basis,
         c.processing_region AS region, sum(g.requests) AS requests,
         sum(CASE WHEN c.outcome IS 'blocked' THEN g.requests ELSE 0 END) AS blocked
  FROM ({grouped}) g CROSS JOIN obs_contexts c ON c.n = g.ctx
  GROUP BY 1, 2, 3, 4"""
#: the bytes ``{c}`` of a day's requests ``t`` less those of its late part ``l``
_LESS = (
    "CASE WHEN l.r IS NULL OR l.{c} IS NULL THEN t.{c} WHEN t.{c} IS NULL THEN NULL"
    " ELSE t.{c} - l.{c} END"
)


def _late_second(bounds: Sequence[datetime]) -> int | None:
    """The second of the UTC day at which all of ``bounds`` lie, when they do and it is
    not midnight (the midnights of a zone that keeps one offset through them)."""
    seconds = {t.timestamp() % 86400 for t in bounds}
    if len(seconds) != 1:
        return None
    (second,) = seconds
    return int(second) if second and second == int(second) else None


#: see :meth:`Store._days` (a constant subquery: SQLite reads the rows from that number on)
_FROM_ROW = (
    "o.n >= (SELECT coalesce(min(first_row), 1 << 62) FROM obs_contexts WHERE day >= ?"
    " AND day <= ?)"
)
_DAYS = f"{_FROM_ROW} AND day >= ? AND day <= ?"

# Roll-ups (schema step 11). ``obs_rollup`` sums the requests of ``obs_rows`` per context
# and client (a context belongs to one UTC day: a roll-up row is one day of one client's
# traffic to one destination through one egress, for one source and scan). It holds
# exactly the rows numbered up to the mark (``meta`` ``rolled_up_to``): appended rows are
# added in the scan transaction that stores them (see :class:`Ingestion`: a batch stored
# as the producer made it brings its roll-up rows, :class:`monitor.batch.Rollup`, summed
# in memory as they come, :class:`monitor.batch.RollupSums`; the others' rows are summed
# set-based from ``obs_rows`` part by part, into ``temp.rolled``; both are added to the
# roll-ups at the commit), and what else is above the mark (rows a killed
# scan committed, a watch's) when a scan finishes and while a watch runs; reads take the
# rows above the mark from ``obs_rows`` itself, so a report is exact while a scan is
# storing or after one was killed. Whatever changes or deletes rows (re-evaluation, prune) rebuilds
# or drops their contexts' roll-ups in the same transaction and sets the mark again.
_MARK = "(SELECT coalesce(max(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'rolled_up_to')"
#: a roll-up row of the requests ``o`` grouped by context and client
_ROLLED_ROWS = (
    f"o.ctx AS ctx, o.client AS client, count(*) AS requests, {_sums('o.')},"
    " min(o.url) AS url, min(o.ts) AS first_ts, max(o.ts) AS last_ts"
)
#: the hourly totals of the requests ``o`` (hours since the epoch, UTC)
_HOURLY_ROWS = (
    f"o.ctx AS ctx, CAST(o.ts / 3600 AS INTEGER) AS hour, count(*) AS requests, {_sums('o.')}"
)
_ROLLUP_FIELDS = ("ctx", "client", "requests", "bytes_out", "bytes_in", "url", "first_ts",
                  "last_ts")  # fmt: skip
_ROLLUP_INSERT = f"INSERT INTO obs_rollup ({', '.join(_ROLLUP_FIELDS)})"
_ROLLUP_ROW = ", ".join(f"r.{c}" for c in _ROLLUP_FIELDS)


def _chosen(
    alias: str, first: str, last: str, where: TrafficFilter, probe: bool = True
) -> tuple[str, list[Any]]:
    """A WHERE term on ``alias`` (``obs_rows`` or ``obs_rollup``: context and client numbers)
    for what ``where`` selects of UTC days ``[first, last]``: the contexts are chosen first
    (a few per day), the users and clients in the client dictionary (``probe``: see
    :func:`_clients_chosen`)."""
    f, params = where.sql(who=False)
    term = f"{alias}.ctx IN (SELECT n FROM obs_contexts WHERE day >= ? AND day <= ?{f})"  # noqa: S608
    who, who_params = _clients_chosen(alias, where, probe)
    return term + who, [first, last, *params, *who_params]


#: a probe of a (ctx, client) key costs about this many roll-up rows read in key order
_PROBE_ROWS = 10


def _clients_chosen(alias: str, where: TrafficFilter, probe: bool = True) -> tuple[str, list[Any]]:
    """`` AND alias.client IN (…)``: the client entries of the users and clients ``where``
    selects (nothing: any). Without ``probe``, SQLite may not look them up in an index
    that has the client after the context (``+``: it reads each chosen context's rows and
    keeps the chosen clients': see :meth:`Store._probe_rollup`)."""
    who, params = TrafficFilter(users=where.users, clients=where.clients).sql()
    if not who:
        return "", []
    column = f"{alias}.client" if probe else f"+{alias}.client"
    return f" AND {column} IN (SELECT n FROM obs_clients WHERE 1 = 1{who})", params  # noqa: S608


def _dest_rows(
    grouped: str, params: list[Any], days: tuple[str, str] | None = None
) -> tuple[str, list[Any]]:
    """:meth:`Store._grouped` rows in :meth:`Store._by_dest`'s terms. Given the UTC ``days``
    they are of, summed per client and destination, on numbers (a context of those days
    stands for its destination by its rank among theirs), so that the grouping a caller
    does next sorts one row per pair, not one per context and client (a month of a non-UTC
    zone: 3.4 M day roll-up rows for 0.4 M pairs on a 10 M-request store, 11.4 s -> 5.4 s)."""
    dests = ", ".join(f"c.{c}" for c in _DEST_COLUMNS)
    if days:
        ranked = (
            f"SELECT n, dense_rank() OVER (ORDER BY {', '.join(_DEST_COLUMNS)}) AS dest"  # noqa: S608
            " FROM obs_contexts WHERE day >= ? AND day <= ?"
        )
        grouped = (
            "SELECT g.client, min(g.ctx) AS ctx, sum(g.requests) AS requests,"  # noqa: S608
            f" {_sums('g.')}, min(g.url) AS url"
            f" FROM ({grouped}) g CROSS JOIN ({ranked}) m ON m.n = g.ctx GROUP BY g.client, m.dest"
        )
        params = [*params, *days]
    return (
        f"SELECT g.client, {dests}, g.requests, g.bytes_out, g.bytes_in, g.url"  # noqa: S608
        f" FROM ({grouped}) g CROSS JOIN obs_contexts c ON c.n = g.ctx",
        params,
    )


#: :meth:`Store.client_destinations`' query of the rows ``{grouped}`` (see :meth:`Store._by_dest`)
_WHO = f"""SELECT w.client_ip, g.dest_host, g.provider, g.provider_kind AS kind, g.site,
         g.egress_country AS country, sum(g.requests) AS requests,
         sum(CASE WHEN g.outcome IS 'blocked' THEN g.requests ELSE 0 END) AS blocked,
         {_sums("g.")},
         min(g.url) AS example_url, json_group_array(DISTINCT w.user) AS users
  FROM ({{grouped}}) g CROSS JOIN obs_clients w ON w.n = g.client
  GROUP BY 1, 2, 3, 4, 5, 6"""  # noqa: S608 - constants


#: the sums :meth:`Store._edge_pairs` keeps of each part (aggregate, column, name)
_EDGE_SUMS = (
    (lambda c, w: f"sum({c}) FILTER (WHERE {w})", "requests", "r"),
    (saturated_sum, "bytes_out", "o"),
    (saturated_sum, "bytes_in", "i"),
    (lambda c, w: f"min({c}) FILTER (WHERE {w})", "url", "u"),
)


def _hourly(since: datetime, until: datetime, where: TrafficFilter) -> tuple[str, list[Any]]:
    """A query of the hourly totals (``ctx, hour, requests, bytes_out, bytes_in``) of the
    whole hours ``[since, until)`` that ``where`` selects (no filter on clients: the hourly
    totals name none), and of the rows stored since the last roll-up."""
    first, last = _day_span(since, until)
    hourly, params = _chosen("h", first, last, where)
    recent, recent_params = _chosen("o", first, last, where)
    span = [since.timestamp(), until.timestamp()]
    return (
        f"""SELECT * FROM obs_hourly h WHERE {hourly} AND h.hour >= ? AND h.hour < ?
            UNION ALL SELECT {_HOURLY_ROWS} FROM obs_rows o WHERE o.n > {_MARK}
              AND {recent} AND o.ts >= ? AND o.ts < ? GROUP BY 1, 2""",  # noqa: S608
        [*params, *(int(t) // 3600 for t in span), *recent_params, *span],
    )


def _dest_numbers(grouped: str) -> str:
    """:meth:`Store._grouped` rows (of UTC days given as two more parameters) summed per
    client and destination number (``obs_dests``, as the monthly roll-ups keep them)."""
    return (
        f"SELECT g.client, m.dest, sum(g.requests) AS requests, {_sums('g.')},"  # noqa: S608
        f" min(g.url) AS url FROM ({grouped}) g"
        f" CROSS JOIN (SELECT c.n AS ctx, d.n AS dest FROM obs_contexts c CROSS JOIN obs_dests d"
        f" ON d.key = {_DEST_KEY} WHERE c.day >= ? AND c.day <= ?) m ON m.ctx = g.ctx"
        " GROUP BY 1, 2"
    )


def _month_near(when: datetime) -> datetime | None:
    """The start of the UTC month less than a day from ``when`` (local midnights are at
    most 14 hours from UTC's), if any."""
    first = _day_floor(when).replace(day=1)
    for start in (first, (first + timedelta(days=31)).replace(day=1)):
        if abs(start - when) < timedelta(days=1):
            return start
    return None


def _split_hours(
    previous: datetime, since: datetime, until: datetime, origin: datetime, width: int
) -> list[int]:
    """The hours (since the epoch) that a bound of :meth:`Store.traffic_cube`'s periods
    or buckets of days (``width``) splits: the rest are whole hours of one bucket, their
    hourly totals will do. None for buckets of hours (each would be split): empty."""
    if width < 86400:
        return []
    buckets = int((until - origin).total_seconds() // width) + 1
    bounds = [
        previous,
        since,
        until,
        *(origin + timedelta(seconds=k * width) for k in range(buckets)),
    ]
    return sorted({int(t.timestamp()) // 3600 for t in bounds if t.timestamp() % 3600})


def _plus(rest: str, edge: str, agg: str = "") -> str:
    """SQL: the SUM (or, with ``agg`` min, the MIN) of two parts' sums, either null."""
    both = f"min({rest}, {edge})" if agg else f"({rest}) + {edge}"
    return f"coalesce({both}, {rest}, {edge})"


def _day_span(since: datetime, until: datetime) -> tuple[str, str]:
    """The first and last UTC days of ``[since, until)``."""
    return _day_floor(since).strftime("%Y-%m-%d"), _day_floor(
        until - timedelta(microseconds=1)
    ).strftime("%Y-%m-%d")


def _rows(cursor: sqlite3.Cursor) -> Rows:
    return Rows([d[0] for d in cursor.description], cursor.fetchall())


#: the interpreter's switch interval while a thread aside runs SQL beside Python work
_ASIDE_SWITCH = 0.0002


class _Handover:
    """Hand the GIL over sooner while a thread aside (:class:`PendingCall`) runs SQL beside
    this one's Python work: each statement it steps, with the GIL released, ends waiting
    to take it back, up to a switch interval (5 ms) while this thread holds it. The
    interval is the process's (every thread's), so it is lowered once however many stores
    hand over at a time, and restored when the last is done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = 0.0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        entered = False
        try:
            with self._lock:
                if not self._depth:
                    self._saved = sys.getswitchinterval()
                    sys.setswitchinterval(_ASIDE_SWITCH)
                self._depth += 1
                entered = True
            yield
        finally:
            if entered:
                with self._lock:
                    self._depth -= 1
                    if not self._depth:
                        sys.setswitchinterval(self._saved)


_handing_over = _Handover()


def _link(tx: _IngestState, links: tuple[list[str], array, array], first: int) -> None:
    """Which of a batch's rows raised which incident (:meth:`Batch.links`), for
    :meth:`Store._store_links` (``first``: the number of the batch's first row; 0: rows
    are numbers)."""
    tx.links.append((*links, first))


def _insert_packs(conn: sqlite3.Connection, packs: LinkPacks) -> None:
    """Insert hit links as packs (:func:`monitor.batch.link_packs`), merged into a stored
    pack of the same incident and block (see :data:`_MERGE_PACKS`)."""
    columns: list[Sequence[Any]] = [packs.incidents, packs.firsts, packs.texts]
    insert_columns(conn, _INSERT_PACKS, columns, [None] * len(columns), whole_sql=_INSERT_ALL_PACKS)


#: a pack of hit links that meets one stored with the same incident and block (``first``)
#: takes its offsets in too (the union, ascending): a transaction that ends in a block and
#: the next, which goes on in it, both bring links of that block
_MERGE_PACKS = (
    " ON CONFLICT (incident, first) DO UPDATE SET obs = (SELECT json_group_array(value) FROM"
    " (SELECT value FROM json_each(hit_packs.obs) UNION SELECT value FROM json_each(excluded.obs)"
    " ORDER BY 1))"
)
_INSERT_PACKS = f"INSERT INTO hit_packs (incident, first, obs) VALUES (?, ?, ?){_MERGE_PACKS}"  # noqa: S608
_INSERT_ALL_PACKS = _insert_all("hit_packs", ("incident", "first", "obs"), _MERGE_PACKS)


def _packs_of(links: str) -> str:
    """SQL: the packs (incident, first, offsets: ``hit_packs``' columns) of ``links``, SQL
    of distinct rows ``incident`` and ``obs``, as :func:`monitor.batch.link_packs` makes
    them: one per incident and block of rows, its offsets ascending (the rows come sorted,
    and SQLite's sorter for the GROUP BY keeps rows of one group in the order they come:
    its merges take the earlier of equal keys first, with one sorter thread, as the store
    sets (``PRAGMA threads = 0``: with worker threads some packs came out unordered); a
    window's aggregate, in order by definition, made migrating a 25 % scan's links three
    times slower, its text made per row; ``json_group_array(... ORDER BY)`` needs SQLite
    3.44). The WHERE lets an INSERT of it take an ON CONFLICT clause."""
    return (
        "SELECT incident, first, json_group_array(obs - first) FROM"  # noqa: S608
        f" (SELECT incident, obs, obs & {-PACK_ROWS} AS first FROM ({links})"
        " ORDER BY incident, first, obs) WHERE 1 GROUP BY incident, first"
    )


def _unlink(conn: sqlite3.Connection, rows: str, params: Sequence[Any]) -> int:
    """Remove the hit links of the observation rows that ``rows`` (SQL, their numbers, with
    ``params``) selects; returns how many links went. Each pack holding some is written
    again without them (none left: it goes). Its work tables go first, should a failed
    call outside a transaction (which would have taken them away) have left them."""
    for table in ("unlinked", "unpacked", "repacked"):
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
    conn.execute("CREATE TEMP TABLE unlinked (n INTEGER PRIMARY KEY)")
    conn.execute(f"INSERT OR IGNORE INTO temp.unlinked {rows}", params)  # noqa: S608
    conn.execute(  # the packs that hold some, and how many
        "CREATE TEMP TABLE unpacked AS SELECT p.incident AS incident, p.first AS first,"
        " count(*) AS links FROM hit_packs p, json_each(p.obs) j"
        " WHERE p.first <= (SELECT max(n) FROM temp.unlinked)"
        " AND p.first + j.value IN temp.unlinked GROUP BY 1, 2"
    )
    removed = conn.execute("SELECT coalesce(sum(links), 0) FROM temp.unpacked").fetchone()[0]
    if removed:
        kept = (
            "SELECT p.incident AS incident, p.first + j.value AS obs"
            " FROM temp.unpacked u CROSS JOIN hit_packs p"
            " ON p.incident = u.incident AND p.first = u.first, json_each(p.obs) j"
            " WHERE p.first + j.value NOT IN temp.unlinked"
        )
        conn.execute(f"CREATE TEMP TABLE repacked AS {_packs_of(kept)}")  # noqa: S608
        conn.execute(
            "DELETE FROM hit_packs WHERE (incident, first) IN (SELECT incident, first FROM temp.unpacked)"
        )
        conn.execute("INSERT INTO hit_packs SELECT * FROM temp.repacked")
        conn.execute("DROP TABLE temp.repacked")
    conn.execute("DROP TABLE temp.unpacked")
    conn.execute("DROP TABLE temp.unlinked")
    return removed


def _day_floor(when: datetime) -> datetime:
    """The UTC midnight at or before ``when``."""
    return when.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _period_bucket(at: str) -> tuple[str, str]:
    """The :data:`_CUBE` terms (named ``prev`` and ``bucket``) of a row made at ``at`` (SQL,
    seconds): its period (0 from the period's start on, else 1: the one before) and its
    bucket (-1 in the one before); four parameters: the start twice, the origin and the
    bucket's width."""
    return (
        f"CASE WHEN {at} >= ? THEN 0 ELSE 1 END AS prev",
        f"CASE WHEN {at} >= ? THEN CAST(({at} - ?) / ? AS INTEGER) ELSE -1 END AS bucket",
    )


def _day_ceil(when: datetime) -> datetime:
    """The UTC midnight at or after ``when``."""
    floor = _day_floor(when)
    return floor if floor == when else floor + timedelta(days=1)


#: how a roll-up row takes in more of its requests (``excluded``), as SUM, MIN and MAX
#: would have over all of them (nulls included)
_SUMS = ", ".join(
    [
        "requests = requests + excluded.requests",
        *(
            f"{c} = CASE WHEN {c} IS NULL THEN excluded.{c} WHEN excluded.{c} IS NULL THEN {c}"
            f" ELSE min({c} + excluded.{c}, {MAX_SUM}) END"
            for c in ("bytes_out", "bytes_in")
        ),
    ]
)
_URL = "url = coalesce(min(url, excluded.url), url, excluded.url)"
_SPAN = "first_ts = min(first_ts, excluded.first_ts), last_ts = max(last_ts, excluded.last_ts)"
#: the destination a monthly roll-up keeps a context's requests under
_DEST_COLUMNS = ("dest_host", "provider", "provider_kind", "site", "egress_country", "outcome")
_DEST_KEY = f"json_array({', '.join(f'c.{c}' for c in _DEST_COLUMNS)})"


def _roll_up(conn: sqlite3.Connection) -> None:
    """Add the rows above the mark to their roll-ups and move the mark to the last row."""
    _gathering(conn)
    _gather(conn, None)
    _fold(conn)


def _gathering(conn: sqlite3.Connection) -> None:
    """Start a new gathering of roll-up rows: an empty ``temp.rolled``."""
    conn.execute("DROP TABLE IF EXISTS temp.rolled")
    conn.execute(
        "CREATE TEMP TABLE rolled (ctx INTEGER NOT NULL, client INTEGER NOT NULL,"
        " requests INTEGER NOT NULL, bytes_out INTEGER, bytes_in INTEGER, url TEXT,"
        " first_ts REAL NOT NULL, last_ts REAL NOT NULL, PRIMARY KEY (ctx, client)) WITHOUT ROWID"
    )


def _gather(conn: sqlite3.Connection, after: int | None, upto: int | None = None) -> None:
    """Sum the rows numbered above ``after`` (None: the mark), up to ``upto`` (None: all),
    into ``temp.rolled`` (their roll-up rows, to be added to the roll-ups by :func:`_fold`)
    and into the hourly totals. What a transaction stores part by part is gathered so, as
    it goes: the work per row is done once, and the work per roll-up row too, at the end."""
    rows = f"o.n > {_MARK if after is None else int(after)}"
    if upto is not None:
        rows += f" AND o.n <= {int(upto)}"
    conn.execute(
        f"""INSERT INTO temp.rolled SELECT {_ROLLED_ROWS} FROM obs_rows o WHERE {rows}
            GROUP BY 1, 2 ON CONFLICT (ctx, client) DO UPDATE SET {_SUMS}, {_URL}, {_SPAN}"""  # noqa: S608
    )
    _by_hour(conn, rows, [])


#: how the sums of roll-up rows made elsewhere (:class:`RollupSums`) are added to
#: ``temp.rolled`` and to the hourly totals
_ADD_ROLLED = f"""INSERT INTO temp.rolled VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (ctx, client) DO UPDATE SET {_SUMS}, {_URL}, {_SPAN}"""  # noqa: S608
_ADD_HOURLY = f"""INSERT INTO obs_hourly (ctx, hour, requests, bytes_out, bytes_in)
    VALUES (?, ?, ?, ?, ?) ON CONFLICT (ctx, hour) DO UPDATE SET {_SUMS}"""  # noqa: S608


#: the sums of roll-up rows as the roll-ups of a database that holds none, nor any gathered
_ADD_ROLLUP = f"{_ROLLUP_INSERT} VALUES (?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - constants
#: whether the roll-up rows of a fold are its sums alone, into no stored roll-up row
_SUMS_ALONE = (
    "SELECT NOT EXISTS (SELECT 1 FROM temp.rolled) AND NOT EXISTS (SELECT 1 FROM obs_rollup)"
)


def _add_sums(conn: sqlite3.Connection, sums: RollupSums, rolled: str = _ADD_ROLLED) -> None:
    """Gather the sums of batches' roll-up rows as :func:`_gather` gathers rows: what it
    would have made of those batches' rows, one statement a table, bound in C (stepped
    with the GIL released: a scan's last fold runs beside Python work). ``rolled``: the
    statement that takes the roll-up rows (:data:`_ADD_ROLLUP`: straight into the
    roll-ups)."""
    for sql, columns in ((rolled, sums.rows()), (_ADD_HOURLY, sums.hourly())):
        insert_columns(conn, sql, columns, [None] * len(columns), released=True)


def _fold(conn: sqlite3.Connection, sums: RollupSums | None = None) -> None:
    """Add what :func:`_gather` gathered, and ``sums``, to the roll-ups, and move the mark to
    the last row. When the sums are all there is, and no roll-up row is stored (a first
    scan), they are the roll-ups: inserted there, not into ``temp.rolled`` and copied (a
    25 % scan's 25,000 rows: 13 ms of the fold's 100, at a scan's end, on one core)."""
    source = "temp.rolled"
    if sums and conn.execute(_SUMS_ALONE).fetchone()[0]:
        _add_sums(conn, sums, _ADD_ROLLUP)
        source = "obs_rollup"
    else:
        if sums:
            _add_sums(conn, sums)
        conn.execute(
            f"""{_ROLLUP_INSERT} SELECT * FROM temp.rolled WHERE 1 = 1
                ON CONFLICT (ctx, client) DO UPDATE SET {_SUMS}, {_URL}, {_SPAN}"""  # noqa: S608
        )
    _by_context(conn, source, "1 = 1", [])
    _by_month(conn, source, "1 = 1", [])
    conn.execute("DROP TABLE temp.rolled")
    _set_mark(conn)


def _by_month(conn: sqlite3.Connection, source: str, where: str, params: Sequence[Any]) -> None:
    """Add the roll-up rows of ``source`` (``obs_rollup`` or rows like its, ``g``) that
    ``where`` selects to the monthly roll-ups: one row per UTC month, client and
    destination (numbered in ``obs_dests``). A context's month and destination are looked
    up once (``temp.month_dests``), not per roll-up row; new destinations are numbered in
    the order of their first context, as the roll-up rows (in context order) meet them.
    Each roll-up row is added to its monthly row as it comes (the upsert sums as SUM would),
    not grouped first: the sorter of a ``GROUP BY`` (month, client, destination) cost more
    than the upserts it spares when few roll-up rows share a monthly row, as a scan's do (a
    25 % scan's 25,000 roll-up rows of a day into 20,000 monthly ones: 66 ms grouped, 39 ms
    one by one; same rows, same types); a month's worth into its monthly rows (a prune's
    ``_remonth``: 77 k into 3 k) costs about 7 % more."""
    contexts = f"c.n IN (SELECT g.ctx FROM {source} g WHERE {where})"  # noqa: S608 - constants
    conn.execute(
        f"INSERT OR IGNORE INTO obs_dests (key, {', '.join(_DEST_COLUMNS)}) SELECT DISTINCT"  # noqa: S608
        f" {_DEST_KEY}, {', '.join(f'c.{c}' for c in _DEST_COLUMNS)} FROM obs_contexts c"
        f" WHERE {contexts}",
        params,
    )
    conn.execute(
        "CREATE TEMP TABLE month_dests (ctx INTEGER PRIMARY KEY, month TEXT, dest INTEGER)"
    )
    conn.execute(
        f"""INSERT INTO temp.month_dests SELECT c.n, substr(c.day, 1, 7), d.n
            FROM obs_contexts c CROSS JOIN obs_dests d ON d.key = {_DEST_KEY}
            WHERE {contexts}""",  # noqa: S608
        params,
    )
    conn.execute(
        f"""INSERT INTO obs_monthly (month, client, dest, requests, bytes_out, bytes_in, url)
            SELECT m.month, g.client, m.dest, g.requests, g.bytes_out, g.bytes_in, g.url
            FROM {source} g CROSS JOIN temp.month_dests m ON m.ctx = g.ctx WHERE {where}
            ON CONFLICT (month, client, dest) DO UPDATE SET {_SUMS}, {_URL}""",  # noqa: S608
        params,
    )
    conn.execute("DROP TABLE temp.month_dests")


def _by_context(conn: sqlite3.Connection, source: str, where: str, params: Sequence[Any]) -> None:
    """Add the roll-up rows of ``source`` (as :func:`_by_month`) to their contexts' totals."""
    conn.execute(
        f"""INSERT INTO obs_context_totals (ctx, requests, bytes_out, bytes_in, first_ts, last_ts)
            SELECT g.ctx, sum(g.requests), {_sums("g.")}, min(g.first_ts),
              max(g.last_ts) FROM {source} g WHERE {where} GROUP BY 1
            ON CONFLICT (ctx) DO UPDATE SET {_SUMS}, {_SPAN}""",  # noqa: S608 - constants
        params,
    )


def _by_hour(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> None:
    """Add the rows ``o`` that ``where`` selects to their contexts' hourly totals."""
    conn.execute(
        f"""INSERT INTO obs_hourly (ctx, hour, requests, bytes_out, bytes_in)
            SELECT {_HOURLY_ROWS} FROM obs_rows o WHERE {where} GROUP BY 1, 2
            ON CONFLICT (ctx, hour) DO UPDATE SET {_SUMS}""",  # noqa: S608 - constants
        params,
    )


def _remonth(conn: sqlite3.Connection, first_day: str, last_day: str = "9999") -> None:
    """Make the monthly roll-ups of the months of UTC days ``[first_day, last_day]`` again
    from the daily ones (whose rows changed or went)."""
    first, last = first_day[:7], last_day[:7] + "~"  # "~" sorts after any day of the month
    conn.execute("DELETE FROM obs_monthly WHERE month >= ? AND month <= ?", [first, last])
    days = "g.ctx IN (SELECT n FROM obs_contexts WHERE day >= ? AND day <= ?)"
    _by_month(conn, "obs_rollup", days, [first, last])


def _set_mark(conn: sqlite3.Connection) -> None:
    """The roll-ups hold every row stored: the mark is the last row's number."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('rolled_up_to', (SELECT coalesce(max(n), 0)"
        " FROM obs_rows)) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )


#: requests (or roll-up rows) that tell a client's egress country with a provider
_EGRESS_WHO = (
    "egress_country IS NOT NULL AND coalesce(user, client_ip) IS NOT NULL"
    " AND provider_kind IN ('api', 'consumer')"
)
#: such requests of a time span
_EGRESS_HISTORY = f"ts >= ? AND ts < ? AND {_EGRESS_WHO}"
#: the client entries of the users (else addresses) that a query (``{}``) gives: a request
#: of anyone else is passed over before its context and client are looked up
_CLIENTS_OF = "SELECT n FROM obs_clients WHERE coalesce(user, client_ip) IN ({})"


def _chunks(ids: Sequence[Any]) -> Iterator[tuple[list[Any], str]]:
    """``ids`` in slices small enough for one ``IN (…)``, with their placeholders."""
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = list(ids[i : i + _IN_CHUNK])
        yield chunk, ", ".join("?" * len(chunk))


def database_problem(path: Path, exc: BaseException, doing: str = "database error") -> str:
    """One line for a failure SQLite reported: the file, what is wrong, what to do."""
    text = str(exc)
    if "full" in text:
        return (
            f"{path}: {text}: what was committed is kept; free space and run the command "
            "again (a scan resumes where its last commit left off)"
        )
    if "readonly" in text or "read-only" in text:
        return f"{path}: {text}: this command needs write access to the database and its directory"
    return f"{path}: {doing}: {text}; run `apiwatch --db {path} db check`"


def _incident_out(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out.pop("severity_rank", None)
    evidence, facts = out.get("evidence"), out.get("facts")
    out["evidence"] = json.loads(evidence) if evidence and evidence != "[]" else []
    out["facts"] = json.loads(facts) if facts else {}
    return out


def _rolled(row: dict[str, Any]) -> dict[str, Any]:
    """A roll-up row in the findings table's terms."""
    out = dict(row)
    out["severity"] = _SEVERITY_OF_RANK[row["severity_rank"]]
    countries = sorted(c for c in (row["egress_country"] or "").split(",") if c)
    out["egress_country"] = ",".join(countries) or None
    return out


def _finding_out(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out.pop("severity_rank", None)
    return out


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


@functools.lru_cache(maxsize=1 << 16)  # a report asks again for each finding's detail
def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _fact_entry(conn: sqlite3.Connection, text: str) -> int:
    """The ``incident_facts`` number of ``text`` (a digest of it; on a clash, the next free
    number), entered when new."""
    n = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest()) >> 1
    while True:
        found = conn.execute("SELECT text FROM incident_facts WHERE n = ?", [n]).fetchone()
        if found is None:
            conn.execute("INSERT INTO incident_facts (n, text) VALUES (?, ?)", [n, text])
        if found is None or found[0] == text:
            return n
        n += 1


def _json_strings(items: Sequence[str]) -> str:
    """``json.dumps`` of a list of strings (evidence samples), without its per-call set-up."""
    return f"[{', '.join(map(_json_string, items))}]"


_json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _delta_facts_text(facts: dict[str, list[Any]] | None,
                      texts: dict[int, str | None]) -> str | None:  # fmt: skip
    """The JSON text of a delta's facts (None: none), made once per facts object (``texts``,
    by its id: the deltas hold the objects)."""
    if facts is None:
        return None
    text = texts.get(id(facts))
    if text is None:
        text = texts[id(facts)] = _facts_json(facts)
    return text


def _facts_json(facts: dict[str, list[Any]]) -> str:
    """``json.dumps(facts, sort_keys=True)``, remembered by the facts' ``repr`` (merged facts
    are a few distinct values: a scan of thousands of incidents has a handful; equal reprs
    of JSON values are equal JSON)."""
    key = repr(facts)
    text = _FACTS_JSON.get(key)
    if text is None:
        if len(_FACTS_JSON) > 4096:
            _FACTS_JSON.clear()
        text = _FACTS_JSON[key] = json.dumps(facts, sort_keys=True)
    return text


_FACTS_JSON: dict[str, str] = {}
_LAST = itemgetter(-1)


def _delta(inc: dict[str, Any], ts: float, scan_id: int | None) -> dict[str, Any]:
    """What new observations add to the incident ``inc`` (none yet): its identity is
    ``inc``'s (:data:`INCIDENT_IDENTITY`)."""
    return {"inc": inc, "finding_id": _finding_of(inc), "count": 0, "blocked": 0,
            "bytes_out": None, "bytes_in": None, "first": ts, "last": ts, "evidence": [],
            "first_scan": scan_id, "last_scan": scan_id}  # fmt: skip


def _finding_of(inc: dict[str, Any]) -> str:
    return inc.get("finding_id") or finding_id(
        inc["rule"], inc["provider"], inc.get("site"), inc.get("egress_country")
    )


def _least(a: Any, b: Any) -> Any:
    """SQL's ``min()`` aggregate of two values: the smaller that is not NULL."""
    return b if a is None else a if b is None else min(a, b)


def _greatest(a: Any, b: Any) -> Any:
    """SQL's ``max()`` aggregate of two values: the larger that is not NULL."""
    return b if a is None else a if b is None else max(a, b)


#: an incident's detail a finding counts distinct values of (clients, users, hosts, days)
_DETAIL = ("client_ip", "user", "dest_host", "day")


def _outcome(blocked: int, count: int) -> str:
    return "allowed" if blocked == 0 else "blocked" if blocked == count else "mixed"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
