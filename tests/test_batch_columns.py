"""A producer's batches column by column (:class:`monitor.batch.BatchBuilder` with the C
``batch_rows`` of ``monitor/_batchscan.c``) against the Python code they stand in for: from
records and from runs of known records (packed, :data:`monitor.observation.RUN_RECORD`),
the same columns (arrays where every value is of the column's type, else lists), contexts,
clients and packed record ids, value by value and type by type; and the C groups, sums,
roll-ups and hour runs of typed columns equal Python's of the same values in lists."""

from __future__ import annotations

import math
import os
import struct
from array import array
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor import accel, batch
from monitor.batch import ROW_FIELDS, ROW_IN, ROW_OUT, ROW_TS, Batch, BatchBuilder
from monitor.observation import KNOWN_CODES, RUN_RECORD, known_codes, run_records
from monitor.rows import COL, COLUMNS
from tests.test_batch_accel import _accelerated, _rollups, batches, rollup_rows

built = accel.load("monitor._batchscan")
if built is None and os.environ.get("CI") and not os.environ.get(accel.PURE_ENV):
    pytest.fail("the C accelerator was not built (hatch_build.py needs a C compiler)")
pytestmark = pytest.mark.skipif(built is None, reason="C accelerator not built")

DAY = 1795737600.0
VALUES = ROW_FIELDS[1:]


def _exact(value: Any) -> Any:
    """A value as it is: an array's typecode and bytes, a float's bits (0.0 is not -0.0, a
    NaN is itself), containers item by item, everything with its type."""
    if isinstance(value, array):
        return ("array", value.typecode, value.tobytes())
    if isinstance(value, (list, tuple)):
        return (type(value), [_exact(v) for v in value])
    if isinstance(value, float):
        return (float, struct.pack("<d", value))
    return (type(value), value)


def _context(k: int) -> SimpleNamespace:
    """A memo context whose stored row is the same whoever its first record is."""
    return SimpleNamespace(row=tuple(f"v{k}.{i}" for i in range(len(COLUMNS))))


def _row(first: Any, row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row


values_of = {
    "float": st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, -0.0, DAY])),
    "int": st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63, -(2**63) - 1, 0])),
    "odd": st.sampled_from([None, True, False, "7", 1.5, 2**70, b"x"]),
}
record_ids = st.one_of(
    st.binary(min_size=12, max_size=12).map(bytes.hex),
    st.sampled_from(["A" * 24, "g" * 24, "ab" * 11, "é" * 24, "0" * 23 + " ", "x"]),
)


@st.composite
def items(draw) -> tuple[tuple[int, ...], list[tuple[Any, ...]]]:
    """A builder's items: records (entry, values, record id, observation id) with values of
    their column's type or not, and runs of known records (entries, packed records) whose
    codes name any value (of the column's type or not), entries shared between both."""
    codes = tuple(draw(st.lists(st.sampled_from([0, *KNOWN_CODES.values()]),
                                min_size=len(VALUES), max_size=len(VALUES))))  # fmt: skip
    contexts = [_context(k) for k in range(draw(st.integers(1, 4)))]
    incs = [[{"id": "a"}], [], [{"id": "b"}, {"id": "a"}]]
    entries = [
        (draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.sampled_from(incs)),
         draw(st.sampled_from(contexts)), None)
        for _ in range(draw(st.integers(1, 5)))
    ]  # fmt: skip
    typed = draw(st.booleans())  # most batches: every value of its column's type
    found: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            run = draw(st.lists(st.sampled_from(entries), min_size=1, max_size=5))
            packed = b"".join(
                RUN_RECORD.pack(draw(values_of["float"]), draw(st.integers(0, 2**40)),
                                draw(st.integers(0, 2**62)), draw(values_of["float"]),
                                draw(st.integers(0, 2**63 - 1)), draw(st.binary(min_size=12, max_size=12)))
                for _ in run
            )  # fmt: skip
            found.append((run, packed))
            continue
        values = []
        for name in VALUES:
            kind = {int: "int", float: "float"}.get(COLUMNS[COL[name]].type)
            pick = values_of[kind] if kind and (typed or draw(st.booleans())) else values_of["odd"]
            values.append(draw(pick))
        rid = draw(record_ids) if not typed else draw(st.binary(min_size=12, max_size=12)).hex()
        oid = draw(values_of["int"] if typed or draw(st.booleans()) else values_of["odd"])
        found.append((draw(st.sampled_from(entries)), tuple(values), rid, oid))
    return codes, found


def _deltas(made: Batch) -> Any:
    return _exact([getattr(made.deltas, f) for f in batch.Deltas.__slots__])


def _built(codes: tuple[int, ...], found: list[tuple[Any, ...]], module: Any) -> Batch:
    with _accelerated(module):
        builder = BatchBuilder(_row, codes)
        builder.items += found
        return builder.batch()


def _outcome(codes: tuple[int, ...], found: list[tuple[Any, ...]], module: Any) -> Any:
    """The batch built, field by field as it is, or the type of the error building it
    raised (junk sizes: the sums raise)."""
    try:
        made = _built(codes, found, module)
    except (TypeError, ValueError, OverflowError) as exc:
        return type(exc)
    rollup = made.rollup and [getattr(made.rollup, f) for f in batch.Rollup.__slots__]
    return [_exact(getattr(made, name)) for name in ("columns", "contexts", "ctx", "clients",
            "client", "record_ids", "hours", "groups")] + [_deltas(made), _exact(rollup)]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items())
def test_batches_built_in_c_are_pythons(case):
    """Column by column, type by type: C's batch_rows is the Python builder's."""
    codes, found = case
    assert _outcome(codes, found, built) == _outcome(codes, found, None)


def test_a_run_is_its_records():
    """A run's records, read by the reference (run_records), and a batch of typed columns
    and packed ids made of them: the values the codes name, ids as pickled."""
    codes = known_codes(VALUES)
    entry = (0, 0, [], _context(0), None)
    packed = RUN_RECORD.pack(DAY, 7, 1387, 0.1, 42, bytes(range(12)))
    [(e, values, rid, oid)] = run_records(([entry], packed), codes)
    assert e is entry and rid == bytes(range(12)).hex() and oid == 42
    assert dict(zip(VALUES, values, strict=True)) == {
        name: {"ts": DAY, "line": 7, "bytes_in": 1387, "duration": 0.1}.get(name) for name in VALUES
    }
    made = _built(codes, [([entry, entry], packed * 2)], built)
    assert made.columns[0] == array("q", [42, 42]) and made.record_ids == bytes(range(12)) * 2
    assert made.columns[ROW_TS] == array("d", [DAY, DAY]) and made.columns[ROW_OUT] == [None] * 2
    with pytest.raises(ValueError):
        _built(codes, [([entry], packed * 2)], built)  # records for one entry only


def _typed(column: list[Any], code: str) -> Any:
    """A column as a built batch holds it (batch._typed)."""
    return batch._typed(code, list(column))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), batches(odd=True))
def test_typed_columns_make_pythons_groups_and_sums(rows, odd):
    """Batch.made of typed columns (arrays) in C equals Batch.made of their values in
    lists in Python: groups, deltas and hour runs (odd values: C leaves them to Python)."""
    for columns, contexts, ctx, raised in (rows, odd):
        typed = list(columns)
        for c, code in ((ROW_TS, "d"), (ROW_OUT, "q"), (ROW_IN, "q")):
            typed[c] = _typed(columns[c], code)
        want = _made([list(c) for c in columns], contexts, ctx, raised, None)
        assert _made(typed, contexts, ctx, raised, built) == want


def _made(columns: list[Any], contexts: list[tuple[Any, ...]], ctx: list[int],
          raised: list[Any], module: Any) -> Any:  # fmt: skip
    """Batch.made's groups, hour runs and deltas as they are, or its error's type."""
    ids = [f"{k:024x}" for k in range(len(ctx))]
    with _accelerated(module):
        try:
            made = Batch.made(columns, contexts, ctx, [()], [0] * len(ctx), raised, ids)
        except (TypeError, AttributeError, ValueError) as exc:
            return type(exc)
    return made.groups, _exact(made.hours), _deltas(made)


@settings(max_examples=300, deadline=None)
@given(rollup_rows())
def test_typed_columns_make_pythons_rollups(rows):
    """rollup_of of typed columns in C is rollup_of of their values in lists in Python."""
    columns, ctx, client, contexts, clients, sparse = rows
    _, want = _rollups(rows)
    typed = list(columns)
    for c, code in ((ROW_TS, "d"), (ROW_OUT, "q"), (ROW_IN, "q")):
        typed[c] = _typed(columns[c], code)
    old, batch._SPARSE = batch._SPARSE, sparse
    try:
        with _accelerated(built):
            try:
                got = batch.rollup_of(typed, ctx, client, contexts, clients)
            except (TypeError, OverflowError, IndexError, ValueError):
                got = None
    finally:
        batch._SPARSE = old
    fields = batch.Rollup.__slots__
    assert _exact(got and [getattr(got, f) for f in fields]) == (
        _exact(want and [getattr(want, f) for f in fields])
    )


@given(st.lists(st.floats(-1e16, 1e16) | st.just(math.nan), max_size=30))
def test_hour_runs_of_an_array_are_of_its_list(ts):
    """The hour runs of doubles in an array are those of the floats in a list (None: the
    Python code's, for a value far beyond any log's time)."""
    assert built.hour_runs(array("d", ts)) == built.hour_runs(list(ts))
    assert built.hour_runs(array("q", [1])) is None and built.hour_runs(array("d", [1.0])) == [
        (0, 1)
    ]


@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from([{"id": "a"}, {"id": "b"}]), max_size=3).map(
                lambda incs: incs if len(incs) % 2 else tuple(incs)
            ),
            st.lists(
                st.one_of(st.integers(0, 2**31 - 1), st.sampled_from([True, -1, 2**31])), max_size=4
            ),
        ),
        max_size=6,
    )
)
def test_groups_packed_in_c_are_pythons(groups):
    """Groups as pickled (batch._packed_groups), in C and in Python: the same incident
    rows, widths, rows and ends, arrays of ints (or the same error: a row beyond an int)."""

    def packed(module: Any) -> Any:
        with _accelerated(module):
            try:
                return _exact(list(batch._packed_groups(groups)))
            except OverflowError as exc:
                return type(exc)

    assert packed(built) == packed(None)
    assert built.packed_groups([([], [])]) == ([], bytes(4), b"", bytes(4))
    assert built.packed_groups([({"id": "a"}, [1])]) is None and built.packed_groups(()) is None


@pytest.mark.skipif(built is None, reason="the C accelerator is not built")
@pytest.mark.parametrize("change", ["clear", "grow"])
def test_a_run_changed_by_a_callback_is_read_as_it_was_given(change):
    """The callbacks that number contexts run Python code: a run's list of entries emptied
    (or a later run's grown) by one is read as it was when batch_rows was called (it
    read past the list's end, or wrote past its arrays, before)."""
    nvalues = len(batch._TYPECODES) - 1
    codes = (1,) + (0,) * (nvalues - 1)
    record = RUN_RECORD.pack(1.0, 1, 2, 0.5, 3, b"\x00" * 12)
    entry = (0, 0, [], None, None)
    first, second = [entry, entry], [entry]

    def context_of(_entry: Any) -> int:
        if change == "clear":
            first.clear()
        elif len(second) == 1:
            second.extend([entry] * 100_000)
        return 0

    out = built.batch_rows([(first, record * 2), (second, record)], batch._TYPECODES, {}, {},
                           context_of, lambda _entry: 0, codes)  # fmt: skip
    assert len(out[4]) == 3  # the rows' raised incidents: one a record given
    assert array("i", out[2]).tolist() == [0, 0, 0]
