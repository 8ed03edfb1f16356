"""A batch of LLM records shaped for the store where it is produced.

A scan stores in one process and produces in several (:mod:`monitor.scanner`), so the
per-record work of storing is done here, by the producer, and the storing process works
per batch, per distinct context and per incident: a :class:`Batch` holds the per-request
values column by column (``obs_rows``' columns, see :mod:`monitor.store`), each distinct
context and client once with the rows' indexes into them, the rows grouped by the incident
rows they raise, and what the batch adds to each incident (:func:`incident_deltas`),
worked out as if every row of it were new. The store uses that as it is when every row is
new (the common case) and works the deltas out again over the rows it did store otherwise
(a re-scan, overlapping files, identical records renumbered by the scanner).
"""

from __future__ import annotations

import json
import os
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, chain, filterfalse, groupby, islice, repeat
from math import isfinite
from operator import add, eq, itemgetter, le
from typing import Any

from monitor import accel
from monitor.observation import MAX_SUM, run_records
from monitor.rows import CLIENT, COL, COLUMNS, CONTEXT, PER_REQUEST, compiled

EVIDENCE_SAMPLES = 5  # file:line samples kept per incident
#: the ``_batchscan`` interface this module calls (``ABI`` of the compiled module)
_ACCEL_ABI = 12
accel.expect("monitor._batchscan", _ACCEL_ABI)
#: the C accelerator of :meth:`Batch.made` (``monitor/_batchscan.c``), or None (a stale
#: build too: it lacks what this module calls)
_ACCEL = accel.load("monitor._batchscan")

#: ``obs_rows``' per-request columns, in row order; a batch holds one list per column
ROW_FIELDS = tuple(c.name for c in COLUMNS if c.name in PER_REQUEST)
ROW_ID, ROW_TS, ROW_LINE = (ROW_FIELDS.index(c) for c in ("id", "ts", "line"))
ROW_OUT, ROW_IN, ROW_URL = (ROW_FIELDS.index(c) for c in ("bytes_out", "bytes_in", "url"))
#: positions in a context's values
CTX_SCAN, CTX_SOURCE, CTX_DAY, CTX_OUTCOME = (
    CONTEXT.index(c) for c in ("scan_id", "source", "day", "outcome")
)
CONTEXT_OF = itemgetter(*(COL[c] for c in CONTEXT))
CLIENT_OF = itemgetter(*(COL[c] for c in CLIENT))
_COLUMN_OF = [itemgetter(COL[c]) for c in ROW_FIELDS]
#: ``obs -> values``: a record's per-request values but the id (every one an observation
#: field that pseudonymisation leaves as it is), in ROW_FIELDS order
request_values: Callable[[Any], tuple[Any, ...]] = compiled(
    "request_values", "o", f"({''.join(f'o.{COLUMNS[COL[c]].path[4:]}, ' for c in ROW_FIELDS[1:])})"
)
assert all(COLUMNS[COL[c]].path == f"obs.{c}" for c in ROW_FIELDS[1:]), "request values"

#: one group: incident rows (shared by the records of one memo key, see
#: :class:`monitor.pipeline.RecordMemo`) and the indexes of the batch's rows raising them
Group = tuple[Sequence[dict[str, Any]], list[int]]


@dataclass(slots=True)
class Deltas:
    """What a batch's rows (those of some of its groups) add to each incident they raise
    (:func:`incident_deltas`), a list per field, an item per incident in order of first
    appearance in the groups: its id and incident row (``incs``: its identity, the first
    group's), ``count``, ``blocked``, ``bytes_out``, ``bytes_in`` (None when no row has
    one), ``first``/``last`` (timestamps), ``evidence`` (the indexes of its first rows, in
    row order) and ``facts`` (the evidence facts, see :func:`merge_facts`); and which row
    raised which (:meth:`Batch.links`): per (incident, row) pair, in the groups' order,
    the index of its incident (``of``) and its row."""

    ids: list[str]
    incs: list[dict[str, Any]]
    count: Sequence[int]
    blocked: Sequence[int]
    bytes_out: list[int | None]
    bytes_in: list[int | None]
    first: Sequence[float]
    last: Sequence[float]
    evidence: list[Sequence[int]]
    facts: list[dict[str, list[Any]] | None]
    of: array
    row: array

    def __len__(self) -> int:
        return len(self.ids)

    # pickled (see Batch) with its integer and float lists as arrays, and its evidence as
    # one array cut by another: a few objects to unpickle rather than a list per incident
    # (and cut as it is read, :class:`_Slices`)

    def __getstate__(self) -> tuple[Any, ...]:
        # (an array made of a list: a fifth less than of an iterator, item by item)
        ends = array("i", list(accumulate(map(len, self.evidence))))
        flat = array("i", list(chain.from_iterable(self.evidence)))
        return (self.ids, self.incs, _packed(self.count, int), _packed(self.blocked, int),
                self.bytes_out, self.bytes_in, _packed(self.first, float),
                _packed(self.last, float), flat, ends, self.facts, self.of, self.row)  # fmt: skip

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.ids, self.incs, self.count, self.blocked, self.bytes_out, self.bytes_in,
         self.first, self.last, flat, ends, self.facts, self.of, self.row) = state  # fmt: skip
        self.evidence = _Slices(flat, ends)


@dataclass(slots=True)
class Batch:
    columns: list[Sequence[Any]]  # per-request values, one list (or array) per ROW_FIELDS column
    contexts: list[tuple[Any, ...]]  # distinct context values (CONTEXT), in order of first use
    ctx: Sequence[int]  # per row: its context's index in ``contexts``
    clients: list[tuple[Any, ...]]  # distinct client values (CLIENT)
    client: Sequence[int]  # per row: its client's index
    groups: list[Group]
    deltas: Deltas  # what all rows add to the incidents they raise (incident_deltas)
    #: per row (the scanner numbers identical records by them): a list, or as pickled
    #: (:func:`_packed_ids`); see :meth:`record_id`
    record_ids: list[str] | bytes | None
    hours: list[tuple[int, int]]  # runs of rows in one UTC hour: (hour, end index)
    line_base: int = 0  # lines before the part's first (the scanner's)
    #: the groups as pickled (see :meth:`__getstate__`): unpacked when asked for
    packed: tuple[list[dict[str, Any]], array, array, array] | None = None
    #: what the rows add to the roll-ups (a scanner's batch: see :func:`rollup_of`)
    rollup: Rollup | None = None
    #: a batch of a producer's stream as sent (:meth:`BatchStream.encode`): its incident
    #: rows are references into its stream's table until :meth:`BatchTable.decode`
    refs: StreamRefs | None = None

    @classmethod
    def of(cls, items: Sequence[tuple[str | None, list[Any], Sequence[dict[str, Any]]]]) -> Batch:
        """The batch of (record id, stored row, incident rows) items (the :data:`Produced`
        of :meth:`monitor.pipeline.Pipeline.records`; record ids may be None)."""
        record_ids, rows, raised = zip(*items, strict=True) if items else ((), (), ())
        columns: list[Sequence[Any]] = [list(map(get, rows)) for get in _COLUMN_OF]
        contexts, ctx = _distinct(map(CONTEXT_OF, rows))
        clients, client = _distinct(map(CLIENT_OF, rows))
        return cls.made(columns, contexts, ctx, clients, client, raised, record_ids)

    @classmethod
    def made(cls, columns: list[Sequence[Any]], contexts: list[tuple[Any, ...]],
             ctx: Sequence[int], clients: list[tuple[Any, ...]], client: Sequence[int],
             raised: Sequence[Sequence[dict[str, Any]]],
             record_ids: Sequence[str | None] | bytes) -> Batch:  # fmt: skip
        """The batch of rows given column by column, with the incident rows each raises
        (grouped here by identity: records of one memo key share theirs). Its columns are
        held as they are pickled where every value is of the column's type (arrays, see
        :func:`_typed`), its record ids packed (:func:`_packed_ids`), and so are its rows'
        context and client indexes (arrays of ints)."""
        columns = list(map(_typed, _TYPECODES, columns))
        ctx, client = _indexes(ctx), _indexes(client)
        found = _group_tally(columns, contexts, ctx, raised)
        if found is None:
            grouped: dict[int, Group] = {}
            for i, incs in enumerate(raised):
                if incs:
                    group = grouped.get(id(incs))
                    if group is None:
                        group = grouped[id(incs)] = (incs, [])
                    group[1].append(i)
            groups = list(grouped.values())
            deltas = _tally(columns, contexts, ctx, groups, "i")  # indexes in the batch: 4 bytes
        else:
            groups, deltas = found
        batch = cls(columns, contexts, ctx, clients, client, groups, deltas, None, [])
        if record_ids and record_ids[0] is not None:
            batch.record_ids = _packed_ids(
                record_ids if type(record_ids) is bytes else list(record_ids)  # type: ignore[arg-type]
            )
            batch.hours = _hour_runs(columns[ROW_TS])
            batch.rollup = rollup_of(columns, ctx, client, len(contexts), len(clients))
        return batch

    def __len__(self) -> int:
        return len(self.ctx)

    def set_scan(self, scan_id: int) -> None:
        self.contexts = [(*c[:CTX_SCAN], scan_id, *c[CTX_SCAN + 1 :]) for c in self.contexts]

    def record_id(self, row: int) -> str:
        """The record id of a row (the batch has them: ``record_ids`` is not None)."""
        ids = self.record_ids
        if isinstance(ids, bytes):
            return ids[row * _ID_BYTES : (row + 1) * _ID_BYTES].hex()
        assert ids is not None, "record ids"
        return ids[row]

    def grouped(self) -> list[Group]:
        """The groups (unpacked from how they were pickled, if need be)."""
        if self.refs is not None:
            raise self.refs.undecoded()
        if self.packed is not None:
            flat, widths, rows, ends = self.packed
            incs = _cut(flat, accumulate(widths))
            self.groups = list(zip(incs, (r.tolist() for r in _cut(rows, ends)), strict=True))
            self.packed = None
        return self.groups

    def links(self) -> tuple[list[str], array, array]:
        """Which row raised which incident: the incident ids, in order of first appearance,
        and per (incident, row) pair, in the groups' order, the index of its incident among
        them and the row's index (made with the deltas, see :class:`Deltas`)."""
        deltas = self.deltas
        return deltas.ids, deltas.of, deltas.row

    # How a batch travels from a producer to the storing process (pickled): its columns as
    # typed arrays where they can be (:func:`_packed`), its record ids as one bytes object
    # (:func:`_packed_ids`), its groups as the list of their incident rows (the dicts are
    # the deltas', pickled once; a stream's batch: references, see :class:`BatchStream`),
    # cut by an array, and their rows as one integer array, cut by another; and its deltas
    # as arrays (see :class:`Deltas`): a few objects to pickle and unpickle where a list
    # has one per row or incident.

    def __getstate__(self) -> tuple[Any, ...]:
        packed = self.packed if self.packed is not None else _packed_groups(self.groups)
        columns = [_packed(col, COLUMNS[COL[name]].type) for col, name in zip(self.columns, ROW_FIELDS, strict=True)]  # fmt: skip
        return (columns, self.contexts, array("i", self.ctx), self.clients,
                array("i", self.client), packed, self.deltas, _packed_ids(self.record_ids),
                self.hours, self.line_base, self.rollup, self.refs)  # fmt: skip

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (columns, self.contexts, self.ctx, self.clients, self.client, self.packed,
         self.deltas, self.record_ids, self.hours, self.line_base, self.rollup,
         self.refs) = state  # fmt: skip
        size = len(self.ctx)
        self.columns = [[None] * size if col is None else col for col in columns]
        self.groups = []

    def sample(self, row: int) -> str:
        """The evidence ``file:line`` of a row."""
        line = self.columns[ROW_LINE][row]
        if self.line_base:
            line += self.line_base
        return f"{self.contexts[self.ctx[row]][CTX_SOURCE]}:{line}"


def _packed_groups(groups: list[Group]) -> tuple[list[dict[str, Any]], array, array, array]:
    """Groups as pickled (:attr:`Batch.packed`): their incident rows in one list, cut by
    an array of their widths, and their rows in one array, cut by another (in C,
    ``_batchscan.packed_groups``, but for values it leaves to this code: no int object a
    row read into an array here)."""
    found = _ACCEL.packed_groups(groups) if _ACCEL is not None else None
    if found is not None:
        flat, widths, rows, ends = found
        return flat, array("i", widths), array("i", rows), array("i", ends)
    incs, rows = zip(*groups, strict=True) if groups else ((), ())  # (no Python code a group)
    ends = array("i", accumulate(map(len, rows)))
    return (list(chain.from_iterable(incs)), array("i", map(len, incs)),
            array("i", chain.from_iterable(rows)), ends)  # fmt: skip


# A producer sends the batches of a part as one stream (:func:`monitor.scanner.part_messages`),
# each incident row once: a busy incident recurs in every batch of a part (a 2 M line log
# at 25 % LLM lines: 174k incident rows pickled in 26 batches for 14k incidents, 23 of their
# 80 MB; a stream a part: 54k). The first batch of the stream to hold a row sends it; later
# ones refer to it by its number in the stream's table, which the storing process rebuilds
# batch by batch. A stream is one part's, so nothing outlives the part: parts are stored
# in file order whichever producer (or cluster task, or a retry of one) made them.


class StreamError(RuntimeError):
    """A stream's batch decoded out of its stream (another stream's table, a batch missed
    or repeated): its incident references would name other incidents."""


@dataclass(slots=True)
class StreamRefs:
    """What makes a sent batch's incident references its stream's (:class:`BatchStream`):
    the stream (a random token), the batch's number in it, the size of the stream's table
    before it, the rows it adds to the table, and its references: the deltas' incident
    rows' and the groups' (``Deltas.incs`` and the flat list of :attr:`Batch.packed`).

    The rows travel as tuples of their values, with the keys they share once (``keys``;
    a row with other keys as it is): a tuple is unpickled for a sixth of a dict's cost, and
    the storing process makes the dicts of few of them (:class:`BatchTable`)."""

    stream: bytes
    seq: int
    base: int
    new: list[Any]  # dicts; as received, the tuples of the values of ``keys`` (or dicts)
    incs: array
    flat: array
    keys: tuple[str, ...] | None = None  # (None: the rows as made, dicts)

    def __getstate__(self) -> tuple[Any, ...]:
        new, keys = self.new, self.keys
        if new and keys is None:
            keys = tuple(new[0])
            new = _row_values(new, keys)
        return self.stream, self.seq, self.base, new, self.incs, self.flat, keys

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.stream, self.seq, self.base, self.new, self.incs, self.flat, self.keys = state

    def undecoded(self) -> StreamError:
        return StreamError(f"batch {self.seq} of stream {self.stream.hex()} used undecoded: "
                           "its incident rows are references into its stream's table")  # fmt: skip


def _row_values(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[Any]:
    """Incident rows as a stream sends them: the tuple of a row's values when its keys are
    ``keys`` in order, else the row (in C, ``_batchscan.row_values``, but for values it
    leaves to this code: a producer's 35k new rows at l25, in its queue's feeder thread)."""
    found = _ACCEL.row_values(rows, keys) if _ACCEL is not None else None
    if found is not None:
        return found
    return [tuple(row.values()) if tuple(row) == keys else row for row in rows]


class _Undecoded(Sequence[Any]):
    """``Deltas.incs`` of a sent batch until it is decoded: any use raises."""

    __slots__ = ("refs",)

    def __init__(self, refs: StreamRefs) -> None:
        self.refs = refs

    def __getitem__(self, index: Any) -> Any:
        raise self.refs.undecoded()

    def __len__(self) -> int:
        raise self.refs.undecoded()

    def __reduce__(self) -> tuple[Any, ...]:
        return _Undecoded, (self.refs,)


class BatchStream:
    """A producer's side of a stream: numbers the incident rows it sends (by identity: the
    memo's rows are shared and never changed, see :class:`monitor.pipeline.RecordMemo`,
    and kept here while they are numbered, so that no other object takes an id). The
    table is bounded, as the memo is: past :attr:`LIMIT` rows the next batch starts it
    again (its ``base`` 0), so a part read whole (compressed, standard input) keeps memory
    flat in both processes."""

    LIMIT = 1 << 14

    def __init__(self) -> None:
        self.token = os.urandom(8)
        self._seq = 0
        self._number: dict[int, int] = {}
        self._rows: list[dict[str, Any]] = []

    def encode(self, batch: Batch) -> Batch:
        """``batch`` (made here: its groups unpacked) as sent: its incident rows replaced
        by references, the rows new to the stream with them (:class:`StreamRefs`)."""
        flat, widths, rows, ends = _packed_groups(batch.grouped())
        if len(self._rows) >= self.LIMIT:
            self._number, self._rows = {}, []
        base, new = len(self._rows), []
        refs = StreamRefs(self.token, self._seq, base, new, self._refs(batch.deltas.incs, new),
                          self._refs(flat, new))  # fmt: skip
        self._seq += 1
        batch.refs, batch.groups, batch.packed = refs, [], (None, widths, rows, ends)  # type: ignore[assignment]
        batch.deltas.incs = _Undecoded(refs)  # type: ignore[assignment]
        return batch

    def _refs(self, objects: list[dict[str, Any]], new: list[dict[str, Any]]) -> array:
        """The numbers of rows in the stream's table, those not in it yet added (to ``new``);
        in C (``_batchscan.stream_refs``: the same dict and lists) when it is built."""
        number, table = self._number, self._rows
        found = _ACCEL.stream_refs(objects, number, table, new) if _ACCEL is not None else None
        if found is not None:
            return array("i", found)
        ids = list(map(id, objects))
        first = dict(zip(ids, objects, strict=True))  # (no Python code but a new row's)
        for key in filterfalse(number.__contains__, first):
            number[key] = len(table)
            table.append(first[key])
            new.append(first[key])
        return array("i", map(number.__getitem__, ids))


class BatchTable:
    """The storing process's side of a stream: its table, rebuilt as its batches come in
    order. A batch of another stream, or out of order, fails (:class:`StreamError`) rather
    than take another incident's row; a stream that starts again (its first batch) starts
    a new table, and so does a batch whose table starts again (``base`` 0: bounded)."""

    def __init__(self) -> None:
        self.stream: bytes | None = None
        self._seq = 0
        self._rows = _TableRows()

    def decode(self, batch: Batch) -> Batch:
        """``batch`` with its incident rows, when sent as a stream's (else as it is)."""
        refs = batch.refs
        if refs is None:
            return batch
        if refs.seq == 0:
            self.stream, self._seq = refs.stream, 0
        if refs.base == 0:
            self._rows = _TableRows()
        table = self._rows
        if refs.stream != self.stream or refs.seq != self._seq or refs.base != len(table):
            raise StreamError(
                f"batch {refs.seq} of stream {refs.stream.hex()} (table of {refs.base} rows) "
                f"decoded as batch {self._seq} of stream "
                f"{self.stream.hex() if self.stream else 'none'} (table of {len(table)})"
            )
        table.sent.extend(refs.new)
        table.keys.extend(repeat(refs.keys, len(refs.new)))
        self._seq += 1
        _, widths, rows, ends = batch.packed  # type: ignore[misc]
        batch.packed = (_Rows(table, refs.flat), widths, rows, ends)  # type: ignore[assignment]
        batch.deltas.incs = _Rows(table, refs.incs)  # type: ignore[assignment]
        batch.refs = None
        return batch


class _TableRows:
    """A stream's table as received (:class:`BatchTable`): per row, as sent (a dict, or the
    tuple of its values) and the keys of its values; a row is made a dict once, when asked
    for (:meth:`row`), and is that dict from then on."""

    __slots__ = ("sent", "keys")

    def __init__(self) -> None:
        self.sent: list[dict[str, Any] | tuple[Any, ...]] = []
        self.keys: list[tuple[str, ...] | None] = []

    def __len__(self) -> int:
        return len(self.sent)

    def row(self, number: int) -> dict[str, Any]:
        row = self.sent[number]
        if type(row) is tuple:
            row = self.sent[number] = dict(zip(self.keys[number] or (), row, strict=True))
        return row  # type: ignore[return-value]


class _Made(Sequence[Any]):
    """A sequence whose items are made as they are read: equal to any sequence of equal
    items, pickled as the list of them."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return list, (list(self),)


class _Rows(_Made):
    """A decoded batch's incident rows (``Deltas.incs``, the flat list of
    :attr:`Batch.packed`): the rows of its stream's table its references name, each made a
    dict when it is read (the store reads few: those of incidents new to its transaction);
    a list of them when sliced or pickled, and equal to any sequence of equal rows."""

    __slots__ = ("table", "refs")

    def __init__(self, table: _TableRows, refs: array) -> None:
        self.table, self.refs = table, refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return list(map(self.table.row, self.refs[k]))
        return self.table.row(self.refs[k])


_ID_BYTES = 12  # a record id (monitor.ids.record_id): 24 hex digits
_ARRAY_OF = {int: "q", float: "d"}


def _cut(items: Sequence[Any], ends: Iterable[int]) -> list[Any]:
    """``items`` cut into consecutive slices ending at ``ends``."""
    ends = list(ends)
    return [items[a:b] for a, b in zip([0, *ends], ends, strict=False)]


class _Slices(_Made):
    """``items`` cut into consecutive slices ending at ``ends`` (:func:`_cut`), each made
    when it is read: a received batch's evidence (:class:`Deltas`), of which the store
    reads that of few incidents (those new to its transaction or with room for samples),
    where cutting it all made an array per incident of every batch."""

    __slots__ = ("items", "ends")

    def __init__(self, items: Sequence[Any], ends: Sequence[int]) -> None:
        self.items, self.ends = items, ends

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self.ends)
        if not 0 <= k < len(self.ends):
            raise IndexError("slice index out of range")
        return self.items[self.ends[k - 1] if k else 0 : self.ends[k]]


def _packed(values: Sequence[Any], kind: type) -> Sequence[Any] | None:
    """A column as pickled: None when every value is None (the receiver makes the list),
    an array of 64-bit integers or of doubles when the column's type (``kind``) is int or
    float and every value is one (an int within 64 bits), else as it is. The store binds
    what SQLite stores: a REAL column makes an integer a double, an INTEGER column keeps
    a bool as 1, and so does the array."""
    if isinstance(values, array):
        return values
    code = _ARRAY_OF.get(kind)
    if code is not None:
        try:
            return array(code, values)
        except (TypeError, OverflowError):  # a None, or not a number of its type
            pass
    return None if values and values.count(None) == len(values) else values


def _packed_ids(ids: list[str] | bytes | None) -> list[str] | bytes | None:
    """Record ids as pickled: one bytes object of 12 bytes each, when every id is 24
    lowercase hex digits (:func:`monitor.ids.record_id`), else as they are."""
    if not isinstance(ids, list):
        return ids
    try:  # (a None among them, or ids of other shapes: kept as they are)
        if set(map(len, ids)) != {2 * _ID_BYTES}:
            return ids
        joined = "".join(ids)
        packed = bytes.fromhex(joined)
    except (TypeError, ValueError):
        return ids
    return packed if packed.hex() == joined else ids


class BatchBuilder:
    """Builds a producer's batches from its records as the Squid pre-pass names those of a
    known line key (:class:`monitor.observation.Known`), without a row per record: the
    caller (:meth:`monitor.pipeline.Pipeline.process`) appends to :attr:`items` per record
    the tuple (entry, :data:`request_values`, record id, observation id), the entry being
    (slot, client number, incident rows, :class:`monitor.pipeline.Context`, the key's
    first Observation), and per run of known records the run as the pre-pass gives it (its
    entries, its records packed: :func:`monitor.observation.run_records`, whose values
    ``codes`` name): a run of any length costs the caller one append, and no object per
    record is made of it. A batch finds the indexes of its contexts and clients per slot
    and client number (see :class:`monitor.pipeline.RecordMemo`): only the first record of
    each hands its row (``row(first, context.row)``, the memo's
    :meth:`~monitor.pipeline.RecordMemo.row`). In C, the columns whose every value is of
    the column's type are written into arrays, the record ids packed, as the batch holds
    them (:meth:`Batch.made`): no object per record of a run is made."""

    def __init__(self, row: Callable[[Any, tuple[Any, ...]], Sequence[Any]],
                 codes: tuple[int, ...] = ()) -> None:  # fmt: skip
        self._row = row
        self._codes = codes
        self.items: list[tuple[Any, ...]] = []

    def batch(self) -> Batch:
        """The batch of the records appended so far (at least one); starts the next."""
        items, self.items = self.items, []
        if _ACCEL is None:
            return self._batch(items)
        row, slots, clients = self._row, {}, {}
        contexts: dict[tuple[Any, ...], int] = {}
        client_rows: dict[tuple[Any, ...], int] = {}

        def context_of(e: tuple[Any, ...]) -> int:
            c = slots[e[0]] = contexts.setdefault(CONTEXT_OF(row(e[4], e[3].row)), len(contexts))
            return c

        def client_of(e: tuple[Any, ...]) -> int:
            w = clients[e[1]] = client_rows.setdefault(CLIENT_OF(e[3].row), len(client_rows))
            return w

        ids, columns, ctx, client, raised, record_ids = _ACCEL.batch_rows(
            items, _TYPECODES, slots, clients, context_of, client_of, self._codes
        )
        columns = [array(code, c) if type(c) is bytes else c
                   for code, c in zip(_TYPECODES, [ids, *columns], strict=True)]  # fmt: skip
        return Batch.made(columns, list(contexts), array("i", ctx), list(client_rows),
                          array("i", client), raised, record_ids)  # fmt: skip

    def _batch(self, items: list[tuple[Any, ...]]) -> Batch:
        """:meth:`batch` in Python: per distinct slot and client number, in first use order."""
        codes = self._codes
        records = [r for item in items
                   for r in (run_records(item, codes) if len(item) == 2 else (item,))]  # fmt: skip
        entries, values, record_ids, ids = zip(*records, strict=True)
        slots, numbers = list(map(_SLOT, entries)), list(map(_CLIENT_NO, entries))
        row = self._row
        contexts: dict[tuple[Any, ...], int] = {}
        of_slot = _first_uses(slots)
        for slot, i in of_slot.items():  # in order of first use, as the records come
            e = entries[i]
            of_slot[slot] = contexts.setdefault(CONTEXT_OF(row(e[4], e[3].row)), len(contexts))
        clients: dict[tuple[Any, ...], int] = {}
        of_number = _first_uses(numbers)
        for number, i in of_number.items():
            of_number[number] = clients.setdefault(CLIENT_OF(entries[i][3].row), len(clients))
        columns = [list(ids), *map(list, zip(*values, strict=True))]
        return Batch.made(columns, list(contexts), list(map(of_slot.__getitem__, slots)),
                          list(clients), list(map(of_number.__getitem__, numbers)),
                          list(map(_RAISED, entries)), record_ids)  # fmt: skip


#: per ROW_FIELDS column, the typecode of the array :func:`_typed` makes of it ("": none)
_TYPECODES = tuple(_ARRAY_OF.get(COLUMNS[COL[c]].type, "") for c in ROW_FIELDS)
_EXACT = {code: kind for kind, code in _ARRAY_OF.items()}


def _indexes(values: Sequence[int]) -> array:
    """Rows' context or client indexes as a batch holds and pickles them."""
    return values if type(values) is array else array("i", values)


def _typed(code: str, values: Sequence[Any]) -> Sequence[Any]:
    """A column of a batch as it holds it: a list of values exactly of its type (a float;
    an int within 64 bits) as an array of ``code``, else as it is (a list is pickled as
    :func:`_packed` makes it: an array too, when the array takes its values)."""
    kind = _EXACT.get(code)
    if kind is None or type(values) is not list or not all(type(v) is kind for v in values):
        return values
    try:
        return array(code, values)
    except OverflowError:
        return values


def _first_uses(keys: list[Any]) -> dict[Any, int]:
    """The index of the first use of each distinct key, in order of first use (dicts and
    sorts in C: no Python code per key)."""
    n = len(keys)
    first = dict(zip(reversed(keys), range(n - 1, -1, -1), strict=True))  # the first wins
    return dict(sorted(first.items(), key=itemgetter(1)))


_SLOT, _CLIENT_NO, _RAISED = itemgetter(0), itemgetter(1), itemgetter(2)


def _distinct(keys: Iterable[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[int]]:
    """The distinct keys, in order of first appearance, and each key's index among them
    (each key hashed once: a context is a long tuple)."""
    index: dict[tuple[Any, ...], int] = {}
    numbers = [index.setdefault(k, len(index)) for k in keys]
    return list(index), numbers


def _hour_runs(ts: list[float]) -> list[tuple[int, int]]:
    """Runs of consecutive rows in one UTC hour: (hour, end index), in row order."""
    found = _ACCEL.hour_runs(ts) if _ACCEL is not None else None
    if found is not None:
        return found
    if not ts:
        return []
    hours = [int(t // 3600) for t in ts]
    runs = [(hours[i - 1], i) for i in range(1, len(hours)) if hours[i] != hours[i - 1]]
    runs.append((hours[-1], len(hours)))
    return runs


def _group_tally(columns: Sequence[Sequence[Any]], contexts: Sequence[tuple[Any, ...]],
                 ctx: Sequence[int], raised: Sequence[Sequence[dict[str, Any]]]
                 ) -> tuple[list[Group], Deltas] | None:  # fmt: skip
    """What :meth:`Batch.made` makes of its rows, the groups and :func:`_tally` of them,
    made in C (``_batchscan.group_tally``: per row and per group, a producer's biggest
    per-batch cost at 25 % LLM lines) but the facts, merged here as :func:`_tally` merges
    them; None without the accelerator or for values it leaves to the Python code."""
    if _ACCEL is None:
        return None
    blocked = bytes(c[CTX_OUTCOME] == "blocked" for c in contexts)
    found = _ACCEL.group_tally(raised, columns[ROW_TS], columns[ROW_OUT], columns[ROW_IN],
                               ctx, blocked)  # fmt: skip
    if found is None:
        return None
    groups, ids, incs, count, blocks, sent, received, first, last, evidence, raw, merges, of, row = found  # fmt: skip
    facts = [None if f is None else _facts_listed(f) for f in raw]
    for k, f in merges:
        listed = _facts_listed(f)
        if listed is not facts[k]:
            facts[k] = merged_facts(facts[k], listed)
    deltas = Deltas(ids, incs, count, blocks, sent, received, first, last, evidence, facts,
                    array("i", of), array("i", row))  # fmt: skip
    return groups, deltas


def incident_deltas(batch: Batch, groups: Iterable[Group], typecode: str = "q") -> Deltas:
    """What the rows of ``groups`` add to each incident they raise, and which row raised
    which (see :class:`Deltas`; its ``of`` and ``row`` arrays of ``typecode``)."""
    return _tally(batch.columns, batch.contexts, batch.ctx, groups, typecode)


def _tally(columns: Sequence[Sequence[Any]], contexts: Sequence[tuple[Any, ...]],
           ctx: Sequence[int], groups: Iterable[Group], typecode: str) -> Deltas:  # fmt: skip
    """:func:`incident_deltas` of the rows given column by column (run by the producer over
    every batch: a third of a group per LLM record at 25 %)."""
    ts, out, in_ = (columns[c] for c in (ROW_TS, ROW_OUT, ROW_IN))
    blocked_ctx = [int(c[CTX_OUTCOME] == "blocked") for c in contexts]
    blocking = any(blocked_ctx)
    sum_out, sum_in = _summing(out), _summing(in_)
    d = Deltas([], [], [], [], [], [], [], [], [], [], array(typecode), array(typecode))
    ids, incs_of, counts, blocks, sent_of, received_of = d.ids, d.incs, d.count, d.blocked, d.bytes_out, d.bytes_in  # fmt: skip
    firsts, lasts, evidence, facts_of, of, linked = d.first, d.last, d.evidence, d.facts, d.of, d.row  # fmt: skip
    index: dict[str, int] = {}
    found = index.get
    for incs, rows in groups:
        if len(rows) == 1:  # the common case: groups are small
            i = rows[0]
            count, blocked, sent, received = 1, blocked_ctx[ctx[i]], out[i], in_[i]
            first = last = ts[i]
        elif rows:
            count, pick = len(rows), itemgetter(*rows)  # a tuple of a column's values
            blocked = sum(map(blocked_ctx.__getitem__, pick(ctx))) if blocking else 0
            sent, received = sum_out(pick(out)), sum_in(pick(in_))
            times = pick(ts)
            first, last = min(times), max(times)
        else:
            continue
        for inc in incs:
            facts = inc.get("facts")
            if facts:  # memo keys share theirs, batch after batch
                facts = _facts_listed(facts)
            iid = inc["id"]
            k = found(iid)
            if k is None:
                k = index[iid] = len(ids)
                ids.append(iid)
                incs_of.append(inc)
                counts.append(count)
                blocks.append(blocked)
                sent_of.append(sent)
                received_of.append(received)
                firsts.append(first)
                lasts.append(last)
                evidence.append(rows[:EVIDENCE_SAMPLES])
                facts_of.append(facts or None)
            else:
                samples = evidence[k]
                if rows[0] > samples[-1]:  # the rows follow the samples: no sort
                    if len(samples) < EVIDENCE_SAMPLES:
                        evidence[k] = samples + rows[: EVIDENCE_SAMPLES - len(samples)]
                else:
                    evidence[k] = sorted({*samples, *rows[:EVIDENCE_SAMPLES]})[:EVIDENCE_SAMPLES]
                counts[k] += count
                blocks[k] += blocked
                if sent is not None:
                    sent_of[k] = _add(sent_of[k], sent)
                if received is not None:
                    received_of[k] = _add(received_of[k], received)
                if first < firsts[k]:
                    firsts[k] = first
                if last > lasts[k]:
                    lasts[k] = last
                if facts and facts is not facts_of[k]:
                    facts_of[k] = merged_facts(facts_of[k], facts)
            if len(rows) == 1:
                of.append(k)
                linked.append(rows[0])
            else:
                of.extend(repeat(k, len(rows)))
                linked.extend(rows)
    return d


def _facts_listed(facts: dict[str, Any]) -> dict[str, list[Any]]:
    """:func:`_listed` of an incident row's facts, found by their id first (memo keys
    share theirs, batch after batch)."""
    hit = _LISTED.get(id(facts))
    return hit[1] if hit is not None and hit[0] is facts else _listed(facts)


def _listed(facts: dict[str, Any]) -> dict[str, list[Any]]:
    """An incident row's facts in :func:`merge_facts`' form (field -> values), remembered
    (:data:`_LISTED`) and the same object for equal facts (facts in that form are never
    changed, only replaced)."""
    if len(_LISTED) >= _LISTED_KEPT:
        _LISTED.clear()
        _EQUAL.clear()
    kinds = tuple(map(type, facts.values()))
    if _SHARED.issuperset(kinds):
        key = (kinds, *facts.items())  # by type too: 1 and True are equal, not alike
        found = _EQUAL.get(key)
        if found is None:
            found = _EQUAL[key] = {name: [value] for name, value in facts.items()}
    else:  # unhashable, or equal but not alike (0.0 and -0.0)
        found = {name: [value] for name, value in facts.items()}
    _LISTED[id(facts)] = (facts, found)
    return found


def merged_facts(
    old: dict[str, list[Any]] | None, new: dict[str, list[Any]]
) -> dict[str, list[Any]] | None:
    """:func:`merge_fact_lists` of listed facts, remembered by their ids (:data:`_MERGED`):
    an incident's rows of several memo keys (another status, say) merge the same facts
    batch after batch, and the merged facts are the same object each time, so a chain of
    merges is found again too (in the storing process too: a batch's incidents share a few
    facts objects, and so do a transaction's deltas)."""
    key = (id(old), id(new))
    hit = _MERGED.get(key)
    if hit is not None and hit[0] is old and hit[1] is new:
        return hit[2]
    if len(_MERGED) >= _LISTED_KEPT:
        _MERGED.clear()
    merged = merge_fact_lists(old, new)
    _MERGED[key] = (old, new, merged)
    return merged


def merge_deltas(deltas: dict[str, dict[str, Any]], parts: Deltas,
                 facts: list[dict[str, list[Any]] | None], stored: dict[str, Any]
                 ) -> tuple[list[int], list[int]] | None:  # fmt: skip
    """The sums of :meth:`monitor.store.Store._add_batch_deltas`, in C
    (``_batchscan.merge_deltas``): a batch's deltas (``parts``, with ``facts`` for theirs)
    added to the transaction's (``deltas``) for the incidents it has, facts merged by
    :func:`merged_facts`; the indexes of the incidents new to it and of those with room for
    evidence samples (``stored``: the store's stored incidents) for the caller. None
    without the accelerator or for lists it leaves to the Python code."""
    if _ACCEL is None:
        return None
    return _ACCEL.merge_deltas(deltas, parts.ids, parts.count, parts.blocked, parts.bytes_out,
                               parts.bytes_in, parts.first, parts.last, facts, stored,
                               merged_facts)  # fmt: skip


def merged_new(hour: array, ids: Sequence[int]) -> array | None:
    """``hour``'s ids (int64, sorted, distinct: :class:`monitor.scanner._Hour`'s) and
    ``ids``, sorted, in a new array, when those are distinct and none is in ``hour``; None
    when one is a copy. In C when it is built (``_batchscan.merged_new``: the run sorted
    and merged with no Python object per id)."""
    run = _int64_ids(ids)
    if _ACCEL is not None:
        return _ACCEL.merged_new(hour, run)
    ordered = sorted(run)
    if any(map(eq, ordered, islice(ordered, 1, None))) or any(known_in(hour, ordered)):
        return None
    return array("q", sorted(chain(hour, ordered)))  # two sorted runs: merged in linear time


def known_in(hour: array, ids: Sequence[int]) -> list[bool]:
    """Whether ``hour`` (see :func:`merged_new`) has each of ``ids`` (in C when it is
    built: ``_batchscan.known_in``)."""
    run = _int64_ids(ids)
    if _ACCEL is not None:
        return _ACCEL.known_in(hour, run)
    size, at = len(hour), partial(bisect_left, hour)
    return [i < size and hour[i] == k for k, i in zip(run, map(at, run), strict=True)]


def distinct_ids(ids: Sequence[Any]) -> bool:
    """Whether no value of a batch's id column is there twice: in C
    (``_batchscan.distinct_ids``: a hash set of int64, no Python object per id; the set of
    a batch's ids made here cost the storing process nearly half as much as unpickling
    the batch) when it is an array of int64, as a producer's batch's is, else (or when C
    finds ids chosen to collide in its table) by a set."""
    if _ACCEL is not None and type(ids) is array and ids.typecode == "q":
        found = _ACCEL.distinct_ids(ids)
        if found is not None:
            return found
    return len(set(ids)) == len(ids)


def _int64_ids(ids: Sequence[int]) -> array:
    """Ids as an array of int64 (OverflowError beyond; a batch's id column is one)."""
    return ids if type(ids) is array and ids.typecode == "q" else array("q", ids)


@dataclass(frozen=True, slots=True)
class LinkPacks:
    """Hit links as the store keeps them (``hit_packs``, see :func:`link_packs`): pack
    ``k`` links incident ``incidents[k]`` and the rows ``firsts[k] + o`` for each number
    ``o`` of the JSON array ``texts[k]`` (ascending, below :data:`PACK_ROWS`)."""

    incidents: list[int]
    firsts: list[int]
    texts: list[str]


def link_pairs(key: list[int], of: Sequence[int], row: Sequence[int], first: int,
               pairs: tuple[array, array]) -> None:  # fmt: skip
    """Append the hit links (``key[of[i]]``, ``first + row[i]``) of a batch to ``pairs``
    (incidents and rows, arrays of int64), for :func:`link_packs` at the end of the
    transaction. In C when it is built (``_batchscan.link_pairs``: Python's maps cost the
    storing process a tenth of a second in a 25 % scan, in its busiest part)."""
    incidents, obs = pairs
    found = None  # (C writes int64 values: into arrays of that typecode only)
    if _ACCEL is not None and incidents.typecode == obs.typecode == "q":
        found = _ACCEL.link_pairs(key, of, row, first)
    if found is not None:
        incidents.frombytes(found[0])
        obs.frombytes(found[1])
        return
    incidents.extend(map(key.__getitem__, of))
    obs.extend(map(first.__add__, row))


#: a pack of hit links holds one incident's rows of one block of this many rows (numbered
#: from 0: ``first`` is a multiple): which pack a link goes to depends on the link alone,
#: not on where a scan's transactions commit, so that the same links make the same table
PACK_ROWS = 1 << 20


def link_packs(incidents: Sequence[int], obs: Sequence[int]) -> LinkPacks:
    """The hit links (``incidents[i]``, ``obs[i]``) of a transaction as packs: its
    distinct pairs, sorted, one pack per incident and block of :data:`PACK_ROWS` rows
    (SQLite inserts a row per incident instead of one per link). In C when it is built
    (``_batchscan.link_packs``, for arrays: a radix sort, the texts written at once: it
    runs at the end of a scan, when little else runs beside it), else
    :func:`_link_packs`."""
    if _ACCEL is not None:
        found = _ACCEL.link_packs(incidents, obs)
        if found is not None:
            return LinkPacks(*found)
    return _link_packs(incidents, obs)


def _link_packs(incidents: Sequence[int], obs: Sequence[int]) -> LinkPacks:
    """:func:`link_packs` in Python (the reference)."""
    packs = LinkPacks([], [], [])
    pairs = sorted(set(zip(incidents, obs, strict=True)))
    for (incident, first), pack in groupby(pairs, lambda p: (p[0], p[1] & -PACK_ROWS)):
        packs.incidents.append(incident)
        packs.firsts.append(first)
        packs.texts.append(json.dumps([n - first for _, n in pack], separators=(",", ":")))
    return packs


def shared_facts(facts: list[dict[str, list[Any]] | None]) -> list[dict[str, list[Any]] | None]:
    """A batch's deltas' facts (:attr:`Deltas.facts`) with equal ones one object, the same
    from batch to batch (:data:`_SHARED_FACTS`): each batch the storing process unpickles
    brings its own objects, yet the transaction's facts are merged with a batch's only when
    they are other objects, and :func:`merged_facts` remembers merges by identity."""
    ids = list(map(id, facts))
    distinct = dict(zip(ids, facts, strict=True))
    if len(_SHARED_FACTS) >= _LISTED_KEPT:
        _SHARED_FACTS.clear()
    for k, f in distinct.items():
        if f is not None and _SHARED.issuperset(type(v) for values in f.values() for v in values):
            key = tuple((name, *((v.__class__, v) for v in values)) for name, values in f.items())
            distinct[k] = _SHARED_FACTS.setdefault(key, f)  # (by type too, as _listed)
    return list(map(distinct.__getitem__, ids))


#: id of an incident row's facts -> (the facts, kept so that the id is theirs, in lists)
_LISTED: dict[int, tuple[dict[str, Any], dict[str, list[Any]]]] = {}
_EQUAL: dict[tuple[Any, ...], dict[str, list[Any]]] = {}  # facts alike -> in lists
#: ids of listed facts merged -> (them, kept so that the ids are theirs, the merged facts)
_MERGED: dict[tuple[int, int], tuple[Any, Any, dict[str, list[Any]] | None]] = {}
_LISTED_KEPT = 1 << 14
#: listed facts of plain values (by name, type and value) -> one of them (shared_facts)
_SHARED_FACTS: dict[tuple[Any, ...], dict[str, list[Any]]] = {}
_SHARED = frozenset((str, int, bool, type(None)))  # fact values equal only when alike


def merge_fact_lists(
    old: dict[str, list[Any]] | None, new: dict[str, list[Any]] | None
) -> dict[str, list[Any]] | None:
    """Facts in :func:`merge_facts`' form (field -> values) merged with more of them."""
    if not new or new is old or new == old:  # merging is idempotent
        return old
    if not old:
        return {name: list(values) for name, values in new.items()}
    for name, values in new.items():
        have = old.get(name, ())
        for value in values:
            if value not in have:  # (merge_facts would return old as it is)
                old = merge_facts(old, {name: value})
                have = old[name]
    return old


def merge_facts(
    old: dict[str, list[Any]] | None, new: dict[str, Any], limit: int = EVIDENCE_SAMPLES
) -> dict[str, list[Any]]:
    """``old`` with the values of ``new`` added: per field, distinct values, the ``limit``
    first in a fixed order (whatever order records arrive in: scans are deterministic)."""
    if not old:
        return {name: [value] for name, value in new.items()}
    if all(value in old.get(name, ()) for name, value in new.items()):
        return old  # nothing new (merged facts are only ever replaced, never changed)
    out = {k: list(v) for k, v in old.items()}
    for name, value in new.items():
        seen = out.setdefault(name, [])
        if value not in seen:
            seen.append(value)
            if len(seen) > 1:
                seen.sort(key=_fact_key)
                del seen[limit:]
    return out


def _fact_key(value: Any) -> str:
    """A fact value's sort key (its JSON), remembered for plain values (by type too: 1,
    1.0 and True are equal keys of a dict but not equal JSON)."""
    try:
        return _FACT_KEYS[value.__class__, value]
    except (KeyError, TypeError):  # not seen yet, or unhashable (a list)
        key = json.dumps(value, sort_keys=True, default=str)
        if isinstance(value, (str, int, float)) and len(_FACT_KEYS) < 4096:
            _FACT_KEYS[value.__class__, value] = key
        return key


_FACT_KEYS: dict[tuple[type, Any], str] = {}


def _sum(values: Sequence[int | None]) -> int | None:
    """The sum of the values given (None: none is), saturated (see :func:`_add`)."""
    if None in values:
        values = [v for v in values if v is not None]
    return _sum_all(values) if values else None


def _sum_all(values: Sequence[int]) -> int:
    """The sum of the values given, none None, saturated (see :func:`_add`)."""
    return min(sum(values), MAX_SUM)


def _none(values: Sequence[Any]) -> None:
    return None


def _summing(column: Sequence[int | None]) -> Callable[[Sequence[int | None]], int | None]:
    """:func:`_sum` for values of ``column``: :func:`_sum_all` when it has no None, nothing
    when it has nothing else (a log format without the field)."""
    nones = column.count(None)
    return _sum_all if not nones else _none if nones == len(column) else _sum


def _add(a: int | None, b: int | None) -> int | None:
    """The sum of two nullable byte sums, saturating at MAX_SUM (see
    :data:`monitor.observation.MAX_COUNT`), as :func:`monitor.store.saturated_sum` and
    ``_batchscan.Sums`` add them. The counts are not negative, so a sum saturated on the way
    is the whole sum saturated, however it is split into parts (batches, transactions, the
    roll-up levels): every path to a stored total gives the same value. (Below 64 bits,
    which no count reaches, as ``_batchscan`` does: its least value.)"""
    if b is None:
        return a
    if a is None:
        return b
    total = a + b
    return total if _INT64_MIN <= total <= MAX_SUM else MAX_SUM if total > 0 else _INT64_MIN


# A batch's roll-up rows, made where the batch is: the storing process adds them to the
# roll-ups (:mod:`monitor.store`) instead of reading the rows it stored back out of SQLite.
# They are what SQL makes of the rows (GROUP BY; a sum of NULLs is NULL, a minimum passes
# NULL over, CAST(ts / 3600 AS INTEGER) is the hour): rows of a key counted by Counter,
# summed with one dictionary look-up a row (cheaper than sorting them by key, measured).


@dataclass(slots=True)
class Rollup:
    """What a batch's rows add to the roll-ups: per context, client and UTC hour (batch
    indexes: the store adds the hours of a context and client up), the requests, the sums
    of their bytes (None: all NULL), the least URL and the first and last time; and per
    context and hour (``obs_hourly``) the requests and bytes."""

    ctx: Sequence[int]
    client: Sequence[int]
    requests: Sequence[int]
    bytes_out: Sequence[int | None] | None
    bytes_in: Sequence[int | None] | None
    url: Sequence[str | None] | None
    first_ts: Sequence[float]
    last_ts: Sequence[float]
    hour_ctx: Sequence[int]
    hour: Sequence[int]
    hour_requests: Sequence[int]
    hour_out: Sequence[int | None] | None
    hour_in: Sequence[int | None] | None

    def __len__(self) -> int:
        return len(self.ctx)


class _NotAsStored(Exception):
    """A value SQLite would store as another type (the store sums such rows itself)."""


#: times whose hours SQLite's CAST gives as Python's int() does (far within 64 bits)
_TS_BOUND = 1e18
#: roll-up rows per row beyond which a batch has none, its rows summed by the store from
#: ``obs_rows`` (about 1 us of the storing process's CPU a row): adding a roll-up row to
#: the transaction's sums (:class:`RollupSums`) costs it tens of ns, and making and sending
#: them the producer little more than at 0.5 (l25's 26 batches: 18 ms in C either way),
#: so all but batches of nearly a key a row (nothing summed) have them (a log of many
#: clients' few requests each: at 3 % LLM lines a batch has 0.7 per row, at 25 % 0.4-0.55)
_SPARSE = 0.9


def _hour(ts: float) -> int:
    """The UTC hour of a time as ``CAST(ts / 3600 AS INTEGER)`` (truncated, not floored)."""
    return int(ts / 3600.0)


def rollup_of(columns: Sequence[Sequence[Any]], ctx: Sequence[int], client: Sequence[int],
              contexts: int, clients: int) -> Rollup | None:  # fmt: skip
    """The :class:`Rollup` of rows given column by column (``contexts`` and ``clients``:
    how many distinct ones), or None when a value is not what SQLite stores (a time that
    is not a finite number, bytes that are not integers, a URL that is not text) or when
    the rows would make too many roll-up rows (:data:`_SPARSE`): the store sums such a
    batch's rows itself. Made in C (``_batchscan.rollup``: a Python loop a row here, as much
    CPU in the producers as the roll-up rows save the storing process) but for values it
    leaves to this code."""
    if _ACCEL is not None:
        found = _ACCEL.rollup(columns[ROW_TS], columns[ROW_OUT], columns[ROW_IN],
                              columns[ROW_URL], ctx, client, contexts, clients, _SPARSE)  # fmt: skip
        if found is not None:
            return Rollup(*map(_unpacked, _ROLLUP_TYPES, found)) if found else None
    n = len(ctx)
    try:
        ts = array("d", columns[ROW_TS])
    except TypeError:  # not a number
        return None
    try:
        if not n or not isfinite(sum(ts)):
            return None
        out, in_, url = columns[ROW_OUT], columns[ROW_IN], columns[ROW_URL]
        if not all(map(le, ts, islice(ts, 1, None))):  # rows in time order: hours are runs
            pick = itemgetter(*sorted(range(n), key=ts.__getitem__))
            ts, ctx, client = array("d", pick(ts)), pick(ctx), pick(client)
            out, in_, url = (col if col.count(None) == n else pick(col) for col in (out, in_, url))
        if not -_TS_BOUND < ts[0] <= ts[-1] < _TS_BOUND:
            return None
        out, in_, url = _as_stored(out, _INTEGER), _as_stored(in_, _INTEGER), _as_stored(url, _TEXT)
        # key: (run of an hour, context, client), in that order of significance
        key = [c * clients + w for c, w in zip(ctx, client, strict=True)]
        per_hour, hours, start, last = contexts * clients, [], 0, _hour(ts[-1])
        while start < n:
            hour = _hour(ts[start])
            end = n if hour == last else bisect_left(ts, hour + 1, start, n, key=_hour)
            if hours:
                key[start:end] = map(add, key[start:end], repeat(len(hours) * per_hour))
            hours.append(hour)
            start = end
        counts = Counter(key)
        if len(counts) > n * _SPARSE:
            return None
        # per key: bytes out and in, least URL, first and last time (rows in time order)
        rows: dict[int, list[Any]] = {}
        found = rows.get
        for k, t, sent, received, link in zip(
            key, ts, nulls(out, n), nulls(in_, n), nulls(url, n), strict=True
        ):
            row = found(k)
            if row is None:
                rows[k] = [sent, received, link, t, t]
                continue
            if sent is not None:
                row[0] = sent if row[0] is None else row[0] + sent
            if received is not None:
                row[1] = received if row[1] is None else row[1] + received
            if link is not None and (row[2] is None or link < row[2]):
                row[2] = link
            row[4] = t
        keys, values = list(rows), list(rows.values())
        requests = list(map(counts.__getitem__, keys))
        # per (run of an hour, context): the hourly rows
        hourly: dict[int, list[Any]] = {}
        for k, q, (sent, received, *_) in zip(keys, requests, values, strict=True):
            row = hourly.get(k // clients)
            if row is None:
                hourly[k // clients] = [q, sent, received]
                continue
            row[0] += q
            if sent is not None:
                row[1] = sent if row[1] is None else row[1] + sent
            if received is not None:
                row[2] = received if row[2] is None else row[2] + received
        pairs = [k % per_hour for k in keys]
        return Rollup(
            array("i", [p // clients for p in pairs]),
            array("i", [p % clients for p in pairs]),
            array("q", requests),
            None if out is None else _sums([v[0] for v in values]),
            None if in_ is None else _sums([v[1] for v in values]),
            None if url is None else [v[2] for v in values],
            array("d", [v[3] for v in values]),
            array("d", [v[4] for v in values]),
            array("i", [k % contexts for k in hourly]),
            array("q", [hours[k // contexts] for k in hourly]),
            array("q", [v[0] for v in hourly.values()]),
            None if out is None else _sums([v[1] for v in hourly.values()]),
            None if in_ is None else _sums([v[2] for v in hourly.values()]),
        )
    except (_NotAsStored, OverflowError):
        return None


#: the typecodes of the :class:`Rollup` fields ``_batchscan.rollup`` gives as bytes
_ROLLUP_TYPES = ("i", "i", "q", "q", "q", "", "d", "d", "i", "q", "q", "q", "q")


def _unpacked(typecode: str, values: Any) -> Any:
    """A :class:`Rollup` field as made in C: an array of bytes, else as it is."""
    return array(typecode, values) if type(values) is bytes else values


_INTEGER = frozenset((int, bool, type(None)))  # what SQLite sums as integers
_TEXT = frozenset((str, type(None)))


def _sums(values: list[int | None]) -> Sequence[int | None]:
    """Sums as a :class:`Rollup` holds them: 64-bit integers (OverflowError: beyond, as
    SQLite's sum), or a list when some are NULL."""
    try:
        return array("q", values)
    except TypeError:  # a None among them (and none beyond 64 bits, whatever the order)
        if any(v is not None and not _INT64_MIN <= v <= _INT64_MAX for v in values):
            raise OverflowError("a roll-up sum beyond 64 bits") from None
        return values


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _as_stored(column: Sequence[Any], kinds: frozenset[type]) -> Sequence[Any] | None:
    """A column of a type SQLite stores as it is (None: all NULL)."""
    if column.count(None) == len(column):
        return None
    if not kinds.issuperset(map(type, column)):
        raise _NotAsStored(column)
    return column


class RollupSums:
    """The roll-up rows of a transaction's batches (:class:`Rollup`, each with the numbers
    of its batch's contexts and clients) summed in the storing process's memory as they
    come, per context and client number and per context number and hour, as adding them
    one by one to a roll-up would (requests and bytes summed, NULL when all are; the least
    URL, the first and last time): the store writes each roll-up table once from them at
    the commit (see :func:`monitor.store._fold`) rather than SQLite's upserting every
    batch's rows. Sums per key, not per row: as big as the roll-ups the transaction adds
    to. In C (``_batchscan.Sums``: a Python loop a roll-up row here) but for the
    reference. Byte sums saturate at MAX_SUM (:func:`_add`), as SQLite's are made to (see
    :func:`monitor.store.saturated_sum`): a count of requests beyond 64 bits (no database
    holds that many rows) raises OverflowError."""

    def __init__(self) -> None:
        self._made = _ACCEL.Sums() if _ACCEL is not None else None
        # key -> [requests, bytes_out, bytes_in, url, first_ts, last_ts]; (ctx, hour) ->
        # [requests, bytes_out, bytes_in]
        self._rows: dict[tuple[int, int], list[Any]] = {}
        self._hours: dict[tuple[int, int], list[Any]] = {}

    def __len__(self) -> int:
        """How many sums it holds (roll-up and hourly rows): none when nothing was added."""
        return len(self._made) if self._made is not None else len(self._rows) + len(self._hours)

    def add(self, r: Rollup, ctx: list[int], client: list[int]) -> None:
        """Add the roll-up rows of a batch whose context and client indexes ``ctx`` and
        ``client`` number."""
        if self._made is not None:
            self._made.add(r, ctx, client)
            return
        size, rows = len(r), self._rows
        for key, requests, sent, received, url, first, last in zip(
            zip(map(ctx.__getitem__, r.ctx), map(client.__getitem__, r.client), strict=True),
            r.requests,
            nulls(r.bytes_out, size), nulls(r.bytes_in, size), nulls(r.url, size),
            r.first_ts, r.last_ts, strict=True):  # fmt: skip
            row = rows.get(key)
            if row is None:
                rows[key] = [requests, sent, received, url, first, last]
                continue
            row[0] += requests
            row[1] = _add(row[1], sent)
            row[2] = _add(row[2], received)
            if url is not None and (row[3] is None or url < row[3]):
                row[3] = url
            if first < row[4]:
                row[4] = first
            if last > row[5]:
                row[5] = last
        hours, size = self._hours, len(r.hour)
        for key, requests, sent, received in zip(
            zip(map(ctx.__getitem__, r.hour_ctx), r.hour, strict=True), r.hour_requests,
            nulls(r.hour_out, size), nulls(r.hour_in, size), strict=True):  # fmt: skip
            row = hours.get(key)
            if row is None:
                hours[key] = [requests, sent, received]
            else:
                row[:] = row[0] + requests, _add(row[1], sent), _add(row[2], received)

    def rows(self) -> list[Sequence[Any]]:
        """The sums per context and client, in key order, as columns to bind (see
        :func:`_filled`): ctx, client and requests (arrays of int64), bytes_out and
        bytes_in (as :func:`_sums` makes them), url (a list), first_ts and last_ts (arrays
        of doubles)."""
        if self._made is not None:
            return _filled(list(map(_unpacked, _SUMS_TYPES, self._made.rows())))
        keys = sorted(self._rows)
        values = list(map(self._rows.__getitem__, keys))
        urls = [v[3] for v in values]
        return _filled([
            *_keys(keys),
            _int64([v[0] for v in values]),
            _summed([v[1] for v in values]),
            _summed([v[2] for v in values]),
            None if urls.count(None) == len(urls) else urls,
            array("d", [v[4] for v in values]),
            array("d", [v[5] for v in values]),
        ])  # fmt: skip

    def hourly(self) -> list[Sequence[Any]]:
        """The sums per context and hour, in key order, as columns to bind: ctx, hour and
        requests (arrays of int64), bytes_out and bytes_in (see :meth:`rows`)."""
        if self._made is not None:
            return _filled(list(map(_unpacked, _SUMS_TYPES, self._made.hourly())))
        keys = sorted(self._hours)
        values = list(map(self._hours.__getitem__, keys))
        return _filled([*_keys(keys), _int64([v[0] for v in values]),
                        _summed([v[1] for v in values]), _summed([v[2] for v in values])])  # fmt: skip


#: the typecodes of the :meth:`RollupSums.rows` (and ``hourly``) columns C gives as bytes
_SUMS_TYPES = ("q", "q", "q", "q", "q", "", "d", "d")


def _keys(keys: list[tuple[int, int]]) -> list[array]:
    """The two columns of sorted keys, as arrays of int64."""
    return [_int64([k[0] for k in keys]), _int64([k[1] for k in keys])]


def _int64(values: list[int]) -> array:
    """64-bit integers (OverflowError: a sum beyond)."""
    try:
        return array("q", values)
    except OverflowError:
        raise OverflowError("a roll-up sum beyond 64 bits") from None


def _summed(values: list[int | None]) -> Sequence[int | None] | None:
    """A column of nullable sums: None when all are NULL, else as :func:`_sums` makes it."""
    return None if values.count(None) == len(values) else _sums(values)


def _filled(columns: list[Any]) -> list[Sequence[Any]]:
    """Columns of the length of the first, a column None (all NULL, as C and the sums
    make it) a list of NULLs."""
    size = len(columns[0])
    return [[None] * size if c is None else c for c in columns]


def nulls(values: Sequence[Any] | None, size: int) -> Iterable[Any]:
    """A :class:`Rollup` column (None: all NULL) of ``size`` values."""
    return repeat(None, size) if values is None else values
