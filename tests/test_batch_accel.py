"""The C accelerator of :class:`monitor.batch.BatchBuilder` and :meth:`~monitor.batch.Batch.made`
(``monitor/_batchscan.c``) against the Python code it stands in for: the same groups,
deltas and hour runs for any rows, the Python code's answer (through a None from C) for
values C leaves to it, and the same batches of a scan's records."""

from __future__ import annotations

import json
import math
import os
import random
from array import array
from contextlib import contextmanager
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor import accel, batch, scanner
from monitor import store as store_module
from monitor.app import App, Settings
from monitor.batch import ROW_FIELDS, ROW_IN, ROW_OUT, ROW_TS, ROW_URL, Batch, BatchStream, Deltas
from monitor.collectors import CollectOptions, Diagnostics
from monitor.egress import EgressOptions
from monitor.observation import MAX_SUM
from monitor.pipeline import Part, Pipeline
from monitor.privacy import Pseudonymizer
from monitor.rows import CONTEXT, observation_values
from monitor.store import Store
from tests.conftest import generated_squid_log

MODULE = "monitor._batchscan"
built = accel.load(MODULE)
if built is None and os.environ.get("CI") and not os.environ.get(accel.PURE_ENV):
    pytest.fail("the C accelerator was not built (hatch_build.py needs a C compiler)")
pytestmark = pytest.mark.skipif(built is None, reason="C accelerator not built")

OUTCOME = CONTEXT.index("outcome")
DAY = 1795737600.0


def _contexts(outcomes: list[str]) -> list[tuple]:
    return [tuple(o if i == OUTCOME else f"c{k}" for i in range(len(CONTEXT)))
            for k, o in enumerate(outcomes)]  # fmt: skip


@st.composite
def batches(draw, odd: bool = False):
    """Rows of a batch: incident rows shared by several rows (lists, tuples, empty, None),
    incidents recurring across them with facts shared, equal or different, sizes with and
    without None; ``odd``: also values C leaves to Python (a NaN or int time, a bool or
    huge size, one incident twice in one row's, facts that are no dict)."""
    n = draw(st.integers(0, 40))
    ctxs = draw(st.lists(st.sampled_from(["allowed", "blocked", "error"]), min_size=1, max_size=4))
    shared_facts = [{"request.status": 200}, {"request.status": 403, "x": [1, 2]}]
    facts = st.one_of(
        st.none(), st.just({}), st.sampled_from(shared_facts),
        st.builds(lambda v: {"request.status": v}, st.sampled_from([200, 404, 500, True])),
        *([st.just(["no", "dict"])] if odd else []),
    )  # fmt: skip

    def incident(i: int) -> dict:
        return {"id": f"i{i}", "rule": "r", "facts": draw(facts)}

    pool: list = [None, [], ()]
    for _ in range(draw(st.integers(1, 8))):
        ids = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=not odd))
        incs = [incident(i) for i in ids]
        pool.append(tuple(incs) if draw(st.booleans()) else incs)
    size = st.one_of(st.none(), st.integers(0, 10**6),
                     *([st.just(True), st.just(2**62), st.just(2**70)] if odd else []))  # fmt: skip
    ts = st.one_of(st.floats(DAY - 7200, DAY + 7200, allow_nan=False),
                   st.sampled_from([DAY, DAY - 0.0, -3600.5]),
                   *([st.just(math.nan), st.integers(0, 10**9)] if odd else []))  # fmt: skip
    columns = [[None] * n for _ in ROW_FIELDS]
    columns[0] = list(range(n))
    columns[ROW_TS] = [draw(ts) for _ in range(n)]
    for c in (ROW_OUT, ROW_IN):
        kind = draw(st.sampled_from(["none", "ints", "mixed"]))
        columns[c] = [None if kind == "none" else draw(size) if kind == "mixed"
                      else draw(st.integers(0, 10**6)) for _ in range(n)]  # fmt: skip
    ctx = [draw(st.integers(0, len(ctxs) - 1)) for _ in range(n)]
    raised = [draw(st.sampled_from(pool)) for _ in range(n)]
    return columns, _contexts(ctxs), ctx, raised


@contextmanager
def _accelerated(module):
    """batch.py with the accelerator ``module`` (None: pure Python)."""
    old, batch._ACCEL = batch._ACCEL, module
    try:
        yield
    finally:
        batch._ACCEL = old


def _made(columns, contexts, ctx, raised, accelerated) -> Batch:
    ids = [f"{k:024x}" for k in range(len(ctx))]
    with _accelerated(built if accelerated else None):
        return Batch.made([list(c) for c in columns], contexts, ctx, [()], [0] * len(ctx),
                          raised, ids)  # fmt: skip


def _outcome(columns, contexts, ctx, raised, accelerated) -> tuple:
    """The batch made (every field, and its link arrays' typecodes), or the type of the
    error making it raised (junk)."""
    try:
        made = _made(columns, contexts, ctx, raised, accelerated)
    except (TypeError, AttributeError, ValueError) as exc:
        return (type(exc),)
    typecodes = (made.deltas.of.typecode, made.deltas.row.typecode)
    return (*(getattr(made, name) for name in Batch.__slots__), typecodes)


def _same(columns, contexts, ctx, raised) -> None:
    """The batch made with C is Python's (or both raise the same error: junk)."""
    got = _outcome(columns, contexts, ctx, raised, True)
    assert got == _outcome(columns, contexts, ctx, raised, False)
    assert len(got) == 1 or got[-1] == ("i", "i")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_made_in_c_equals_made_in_python(rows):
    columns, contexts, ctx, raised = rows
    blocked = bytes(c[OUTCOME] == "blocked" for c in contexts)
    found = built.group_tally(raised, columns[ROW_TS], columns[ROW_OUT], columns[ROW_IN],
                              ctx, blocked)  # fmt: skip
    assert found is not None, "C made it"
    _same(columns, contexts, ctx, raised)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(odd=True))
def test_values_c_leaves_to_python_give_pythons_answer(rows):
    columns, contexts, ctx, raised = rows
    python = _outcome(columns, contexts, ctx, raised, False)
    assert _outcome(columns, contexts, ctx, raised, True) == python


def test_odd_values_are_left_to_python():
    """Each odd value alone makes C answer None, and the batch is Python's all the same."""
    incs = [{"id": "a", "facts": None}]
    plain = {ROW_TS: [DAY, DAY + 1], ROW_OUT: [1, 2], ROW_IN: [None, 3]}
    odd = [
        ({ROW_TS: [DAY, math.nan]}, [incs, incs]),
        ({ROW_TS: [DAY, 5]}, [incs, incs]),
        ({ROW_OUT: [1, True]}, [incs, incs]),
        ({ROW_IN: [2**63, 1]}, [incs, incs]),
        ({ROW_IN: [2**62, 2**62]}, [incs, incs]),  # the sum leaves 64 bits
        ({}, [incs, [incs[0], incs[0]]]),  # one incident twice in one row's
        ({}, [incs, [{"id": "b", "facts": ["x"]}]]),
        ({}, [incs, [["not a dict"]]]),
        ({}, [incs, [{"id": 7, "facts": None}]]),  # an id that is no str
        ({}, [incs, "ab"]),
    ]
    for values, raised in odd:
        columns = [[None, None] for _ in ROW_FIELDS]
        for c, col in {**plain, **values}.items():
            columns[c] = col
        ctx, contexts = [0, 0], _contexts(["blocked"])
        blocked = b"\x01"
        assert built.group_tally(raised, columns[ROW_TS], columns[ROW_OUT], columns[ROW_IN],
                                 ctx, blocked) is None, values  # fmt: skip
        _same(columns, contexts, ctx, raised)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.floats(-1e12, 1e12, allow_nan=False),
    st.integers(-100, 100).map(lambda h: h * 3600.0),
    st.integers(-100, 100).map(lambda h: math.nextafter(h * 3600.0, -math.inf)),
    st.integers(-100, 100).map(lambda h: math.nextafter(h * 3600.0, math.inf)),
    st.just(-0.0),
)))  # fmt: skip
def test_hour_runs_in_c_equal_pythons(ts):
    got = built.hour_runs(ts)
    with _accelerated(None):
        assert got == batch._hour_runs(ts)
    assert built.hour_runs([*ts, math.nan]) is None and built.hour_runs([1]) is None


@pytest.mark.parametrize("pseudonymize", [False, True])
def test_a_scans_batches_made_in_c_are_pythons(tmp_path, pseudonymize):
    """A part's batches (:meth:`Pipeline.process`: BatchBuilder.batch, Batch.made) made
    with the accelerator equal those made in Python, record for record, on a first pass
    and on a second one (records known by line key), with pseudonymised clients too."""
    log = tmp_path / "access.log"
    generated_squid_log(log, "--lines", "4000", "--llm-share", "0.4", "--seed", "3")
    app = App(Settings(db=tmp_path / "x.db"))
    pseud = Pseudonymizer("k" * 32) if pseudonymize else None
    made = {}
    for module in (built, None):
        with _accelerated(module):
            pipeline = Pipeline(app.catalog, app.geo, app.rules, app.config,
                                EgressOptions(egress_country="CN"), CollectOptions(), pseud)  # fmt: skip
            made[module] = [list(pipeline.process(Part(str(log)), Diagnostics(), size=400))
                            for _ in range(2)]  # fmt: skip
    got, want = made[built], made[None]
    assert len(got[0]) > 3 and [len(b) for b in got[0]] == [len(b) for b in got[1]]
    for batches, expected in zip(got, want, strict=True):
        assert len(batches) == len(expected)
        for one, other in zip(batches, expected, strict=True):
            for name in Batch.__slots__:
                assert getattr(one, name) == getattr(other, name), name


HOUR = 3600.0


@st.composite
def rollup_rows(draw, odd: bool = False):
    """Columns of a batch's rows for :func:`batch.rollup_of` (and how many contexts and
    clients, and batch._SPARSE): times across hours, before 1970, on and next to hour
    boundaries, -0.0, small ints, in or out of order; bytes with and without NULL, near
    64 bits; URLs with and without NULL, non-ASCII; ``odd``: also values rollup_of makes no
    rows of or that C leaves to it (NaN, infinite, far or huge-int times, bool, float,
    text or beyond-64-bit bytes and sums, a URL not text, an index out of range)."""
    n = draw(st.integers(0, 30))
    contexts, clients = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    hours = st.integers(-3, 3).map(lambda h: DAY + h * HOUR)
    ts = st.one_of(
        st.floats(DAY - 3 * HOUR, DAY + 3 * HOUR, allow_nan=False), hours,
        hours.map(lambda t: math.nextafter(t, -math.inf)), st.sampled_from([0.0, -0.0, -3600.5, -1e-7]),
        st.integers(-10**6, 10**6),
        *([st.sampled_from([math.nan, math.inf, -math.inf, 1e18, -1e18, 2**60, True, "1"])] if odd else []),
    )  # fmt: skip
    size = st.one_of(
        st.none(), st.integers(0, 10**6), st.just(2**50),
        *([st.sampled_from([True, 1.5, "7", 2**62, 2**63, 2**64, -(2**63)])] if odd else []),
    )  # fmt: skip
    url = st.one_of(
        st.none(), st.sampled_from(["", "a", "ab", "b", "Z", "z€", "https://api.openai.com/v1/ü"]),
        *([st.sampled_from([42, 1.5, b"a"])] if odd else []),
    )  # fmt: skip
    columns = [[None] * n for _ in ROW_FIELDS]
    columns[ROW_TS] = draw(st.lists(ts, min_size=n, max_size=n))
    if draw(st.booleans()):
        columns[ROW_TS].sort(key=float)
    for c, values in ((ROW_OUT, size), (ROW_IN, size), (ROW_URL, url)):
        if draw(st.booleans()):
            columns[c] = draw(st.lists(values, min_size=n, max_size=n))
    index = st.integers(0, contexts - 1 + odd), st.integers(0, clients - 1 + odd)
    ctx, client = (draw(st.lists(i, min_size=n, max_size=n)) for i in index)
    return columns, ctx, client, contexts, clients, draw(st.sampled_from([0.5, 1.0]))


def _rollups(rows) -> tuple:
    """rollup_of of the rows made with C and in Python, or the error Python raises (and C
    the same)."""
    columns, ctx, client, contexts, clients, sparse = rows
    old, batch._SPARSE = batch._SPARSE, sparse
    try:
        with _accelerated(None):
            try:
                want = batch.rollup_of(columns, ctx, client, contexts, clients)
            except (TypeError, OverflowError, IndexError, ValueError) as exc:
                with _accelerated(built), pytest.raises(type(exc)):
                    batch.rollup_of(columns, ctx, client, contexts, clients)
                return None, None
        with _accelerated(built):
            got = batch.rollup_of(columns, ctx, client, contexts, clients)
    finally:
        batch._SPARSE = old
    return got, want


def _as_made(rollup) -> list | None:
    """A Rollup's fields as they are: an array's typecode and bytes (0.0 is not -0.0), a
    list's values with their types."""
    if rollup is None:
        return None
    fields = (getattr(rollup, f) for f in batch.Rollup.__slots__)
    return [v if v is None else (v.typecode, v.tobytes()) if isinstance(v, array)
            else [(type(x), x) for x in v] for v in fields]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(rollup_rows())
def test_rollup_rows_made_in_c_are_pythons(rows):
    columns, ctx, client, contexts, clients, sparse = rows
    got, want = _rollups(rows)
    assert _as_made(got) == _as_made(want)
    found = built.rollup(columns[ROW_TS], columns[ROW_OUT], columns[ROW_IN], columns[ROW_URL],
                         ctx, client, contexts, clients, sparse)  # fmt: skip
    assert found is not None, "C made it (or knew there are none)"
    assert (found is False) == (want is None)


@settings(max_examples=300, deadline=None)
@given(rollup_rows(odd=True))
def test_rollup_values_c_leaves_to_python_give_pythons_answer(rows):
    got, want = _rollups(rows)
    assert _as_made(got) == _as_made(want)


def test_odd_rollup_values_c_answers_as_python_or_leaves_to_it():
    """Each odd value alone: C's answer (no rows: False) or None, and rollup_of's answer
    is Python's all the same."""
    plain = {ROW_TS: [DAY, DAY + 1, DAY + HOUR], ROW_OUT: [1, 2, None], ROW_IN: [None] * 3,
             ROW_URL: ["b", None, "a"]}  # fmt: skip
    odd = [
        (ROW_TS, math.nan, False), (ROW_TS, math.inf, False), (ROW_TS, 1e18, False),
        (ROW_TS, 2**60, None), (ROW_TS, 10**400, None), (ROW_TS, True, None), (ROW_TS, "1", None),
        (ROW_OUT, 1.5, False), (ROW_OUT, "7", False), (ROW_OUT, True, None), (ROW_OUT, 2**63, None),
        (ROW_OUT, 2**63 - 1, None),  # the sum leaves 64 bits
        (ROW_URL, 42, False), (ROW_URL, b"a", None),
    ]  # fmt: skip
    for column, value, answer in odd:
        columns = [[None] * 3 for _ in ROW_FIELDS]
        for c, col in plain.items():
            columns[c] = list(col)
        columns[column][0] = value
        found = built.rollup(columns[ROW_TS], columns[ROW_OUT], columns[ROW_IN],
                             columns[ROW_URL], [0] * 3, [0] * 3, 1, 1, 1.0)  # fmt: skip
        assert found is answer, (column, value)
        got, want = _rollups((columns, [0] * 3, [0] * 3, 1, 1, 1.0))
        assert _as_made(got) == _as_made(want), (column, value)
    assert built.rollup([DAY], [None], [None], [None], [0], [0], 1, 1, 0.5) is False  # sparse
    assert built.rollup([DAY], [None], [None], [None], [1], [0], 1, 1, 1.0) is None  # index


# -- the storing process's sums of roll-up rows (batch.RollupSums) ---------------------------


@st.composite
def batch_rollups(draw) -> list:
    """The roll-up rows of a few batches (:func:`batch.rollup_of` in Python of
    :func:`rollup_rows`), each with numbers for its context and client indexes drawn from
    a few (batches share keys, and a batch's indexes may share a number), or an out-of-range
    index."""
    made = []
    for rows in draw(st.lists(rollup_rows(), min_size=1, max_size=4)):
        columns, ctx, client, contexts, clients, _ = rows
        with _accelerated(None):
            rollup = batch.rollup_of(columns, ctx, client, contexts, clients)
        if rollup is None:
            continue
        numbers = st.integers(0, 3) | st.sampled_from([2**40, -(2**62)])
        ctx_numbers = draw(st.lists(numbers, min_size=contexts, max_size=contexts))
        client_numbers = draw(st.lists(numbers, min_size=clients, max_size=clients))
        if draw(st.integers(0, 20)) == 0:  # an index out of range
            (ctx_numbers if draw(st.booleans()) else client_numbers).pop()
        made.append((rollup, ctx_numbers, client_numbers))
    return made


def _summed_up(rollups, module) -> tuple:
    """The rows and hourly rows of a :class:`batch.RollupSums` (``module``: None, Python's)
    the rollups were added to (and its size), or the error adding them raised."""
    with _accelerated(module):
        sums = batch.RollupSums()
        try:
            for rollup, ctx, client in rollups:
                sums.add(rollup, ctx, client)
            rows, hourly = sums.rows(), sums.hourly()
        except (IndexError, OverflowError) as exc:
            return type(exc), None, None
        return len(sums), [_column(c) for c in rows], [_column(c) for c in hourly]


def _column(values) -> object:
    """A column as made: an array's typecode and bytes (0.0 is not -0.0), a list's values
    with their types."""
    if isinstance(values, array):
        return values.typecode, values.tobytes()
    return [(type(x), x) for x in values]


@settings(max_examples=300, deadline=None)
@given(batch_rollups())
def test_rollup_sums_made_in_c_are_pythons(rollups):
    """The sums of roll-up rows per key, added up in C and in Python: the same columns,
    value by value with their types (NULL sums, least URLs, -0.0 times, int64 sums), or
    the same error (an index out of range, a sum beyond 64 bits)."""
    assert _summed_up(rollups, built) == _summed_up(rollups, None)


def test_rollup_byte_sums_beyond_64_bits_saturate_in_c_and_python():
    """Batches' bytes whose sum leaves 64 bits: the sum stops at 2**63 - 1 in C and in
    Python (as SQL's saturated sums, monitor.store.saturated_sum), and later sums stay
    there, never a wrapped one; the other columns are summed on."""
    columns = [[None] * 2 for _ in ROW_FIELDS]
    columns[ROW_TS], columns[ROW_OUT] = [DAY, DAY + 1], [2**61, 2**61]
    with _accelerated(None):
        rollup = batch.rollup_of(columns, [0, 0], [0, 0], 1, 1)
    assert rollup is not None and list(rollup.bytes_out) == [2**62]
    found = []
    for module in (built, None):
        for times, want in ((1, 2**62), (2, MAX_SUM), (3, MAX_SUM)):
            size, rows, hourly = _summed_up([(rollup, [7], [9])] * times, module)
            assert rows[3] == ("q", array("q", [want]).tobytes())  # bytes_out
            assert hourly[3] == ("q", array("q", [want]).tobytes())
            assert rows[2] == ("q", array("q", [2 * times]).tobytes())  # requests
            found.append((size, rows, hourly))
    assert found[:3] == found[3:]


def test_rollup_sums_reject_columns_of_other_types():
    """A roll-up whose columns are not what rollup_of makes: an error, nothing added."""
    columns = [[None] * 2 for _ in ROW_FIELDS]
    columns[ROW_TS], columns[ROW_URL] = [DAY, DAY + 1], ["a", "b"]
    with _accelerated(None):
        rollup = batch.rollup_of(columns, [0, 0], [0, 0], 1, 1)
    sums = built.Sums()
    for field, value in (("url", [42]), ("first_ts", array("q", [1])), ("requests", [None]),
                         ("ctx", array("i", [0, 0])), ("hour", "x")):  # fmt: skip
        odd = batch.Rollup(*(getattr(rollup, f) for f in batch.Rollup.__slots__))
        setattr(odd, field, value)
        with pytest.raises((TypeError, ValueError)):
            sums.add(odd, [0], [0])
    assert len(sums) == 0
    sums.add(rollup, [0], [0])
    assert len(sums) == 2 and sums.rows()[5] == ["a"]


# -- the storing process's sums (merge_deltas, Store._add_batch_deltas) ---------------------

LISTED = [{"request.status": [200]}, {"request.status": [200, 403]}, {"request.status": [True]},
          {"request.status": [403], "x": ["a"]}]  # fmt: skip


@st.composite
def batch_deltas(draw, rows: int, odd: bool = False) -> Deltas:
    """What a batch adds to incidents (:class:`batch.Deltas`): a few of six incidents, sums
    with and without None (beyond 64 bits too), times lower, higher and equal (0.0 and
    -0.0), facts None, shared, equal but other objects, or other; evidence rows; lists or
    arrays as pickled; ``odd``: also sizes no sum takes (a text)."""
    ids = draw(st.lists(st.sampled_from([f"i{k}" for k in range(6)]), unique=True, max_size=6))
    n = len(ids)
    size = st.one_of(st.none(), st.integers(0, 10**6), st.just(2**70),
                     *([st.just("7")] if odd else []))  # fmt: skip
    ts = st.one_of(st.sampled_from([DAY, 0.0, -0.0, DAY + 1]), st.floats(DAY - 9, DAY + 9))
    facts = st.one_of(st.none(), st.sampled_from(LISTED),
                      st.sampled_from(LISTED).map(lambda f: {k: list(v) for k, v in f.items()}))
    count = draw(st.lists(st.integers(1, 2**40), min_size=n, max_size=n))
    blocked = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    first = draw(st.lists(ts, min_size=n, max_size=n))
    pack = draw(st.booleans())  # as pickled: typed arrays
    return Deltas(
        ids, [{"id": i, "rule": "r", "provider": "p", "site": None} for i in ids],
        array("q", count) if pack else count, array("q", blocked) if pack else blocked,
        draw(st.lists(size, min_size=n, max_size=n)), draw(st.lists(size, min_size=n, max_size=n)),
        array("d", first) if pack else first, [t + draw(st.sampled_from([0, 5])) for t in first],
        [sorted(draw(st.sets(st.integers(0, rows - 1), max_size=5))) for _ in ids],
        draw(st.lists(facts, min_size=n, max_size=n)), array("i"), array("i"),
    )  # fmt: skip


@st.composite
def merges(draw):
    """Batches' deltas added one after the other to a transaction's, and the incidents the
    store holds already (evidence full or not); one case in ten with odd values."""
    rows, odd = 8, draw(st.integers(0, 9)) == 0
    stored = {f"i{k}": store_module._StoredIncident(
                  [f"a.log:{j}" for j in range(draw(st.integers(0, 6)))], None, None, None)
              for k in draw(st.sets(st.integers(0, 5)))}  # fmt: skip
    return stored, draw(st.lists(batch_deltas(rows, odd), min_size=1, max_size=4))


@pytest.fixture(scope="module")
def holder(tmp_path_factory) -> Store:
    """A store whose stored incidents each case sets (what _add_batch_deltas reads)."""
    return Store(tmp_path_factory.mktemp("merge") / "x.db")


def _merged(holder, stored, parts, accelerated):
    """The transaction's deltas after each batch's (every value with its type and repr: -0.0), or the
    type of the error."""
    sample = Batch.of([(None, observation_values(ts=DAY, line=k, source="a.log"), [])
                       for k in range(8)])  # fmt: skip
    holder._incident_state = dict(stored)
    deltas: dict = {}
    with _accelerated(built if accelerated else None):
        try:
            for p in parts:
                holder._add_batch_deltas(deltas, sample, p, 1)
        except Exception as exc:  # noqa: BLE001 - compared
            return type(exc)
    return [(iid, [(k, type(v), repr(v)) for k, v in d.items()]) for iid, d in deltas.items()]


def test_only_byte_sums_take_a_none_in_c_as_in_python(holder):
    """A None the transaction holds is nothing to add to for the byte sums only: a None
    count or blocked count raises in C as in Python (Python's ``+=``), not a 0."""

    def deltas(count, blocked, size):
        return Deltas(["i0"], [{"id": "i0", "rule": "r", "provider": "p", "site": None}],
                      [count], [blocked], [size], [size], [DAY], [DAY], [[0]], [None],
                      array("i"), array("i"))  # fmt: skip

    cases = {"count": [deltas(None, 0, 1), deltas(2, 0, 1)],
             "blocked": [deltas(1, None, 1), deltas(2, 1, 1)],
             "bytes": [deltas(1, 0, None), deltas(2, 1, 7)]}  # fmt: skip
    outcomes = {name: [_merged(holder, {}, parts, c) for c in (True, False)]
                for name, parts in cases.items()}  # fmt: skip
    assert outcomes["count"] == outcomes["blocked"] == [TypeError, TypeError]
    c, python = outcomes["bytes"]
    assert c == python and ("bytes_out", int, "7") in c[0][1] and ("count", int, "3") in c[0][1]


def test_deltas_read_in_place_merge_in_c_as_in_python(holder):
    """Counts and times as pickled (arrays of int64 and doubles, which C reads in place):
    a count whose sum passes 64 bits is Python's int, a time moves past a float, an int, a
    NaN or an equal one as in Python, a count adds to a float or a bool as in Python."""
    nan, top = float("nan"), (1 << 63) - 1

    def deltas(count, first, last):
        return Deltas(["i0"], [{"id": "i0", "rule": "r", "provider": "p", "site": None}],
                      array("q", [count]), array("q", [count]), [None], [None],
                      array("d", [first]), array("d", [last]), [[0]], [None],
                      array("i"), array("i"))  # fmt: skip

    cases = [[deltas(top, DAY, DAY), deltas(top, DAY - 1, DAY + 1)],
             [deltas(1, nan, nan), deltas(2, DAY, DAY), deltas(3, -0.0, 0.0)],
             [deltas(-top - 1, 0.0, -0.0), deltas(-1, -0.0, 0.0), deltas(top, DAY, DAY)]]  # fmt: skip
    for parts in cases:
        assert _merged(holder, {}, parts, True) == _merged(holder, {}, parts, False)
    sample = Batch.of([(None, observation_values(ts=DAY, line=1, source="a.log"), [])])
    holder._incident_state = {}
    for had in ({"count": 2.5, "blocked": True, "first": DAY + 1, "last": 5},
                {"count": top, "blocked": -1, "first": nan, "last": DAY - 1}):  # fmt: skip
        got = []
        for accelerated in (True, False):
            transaction = {"i0": {**had, "bytes_out": None, "bytes_in": None,
                                  "evidence": ["a.log:1"] * 5, "facts": None}}  # fmt: skip
            with _accelerated(built if accelerated else None):
                holder._add_batch_deltas(transaction, sample, deltas(1, DAY, DAY), 1)
            got.append([(k, type(v), repr(v)) for k, v in transaction["i0"].items()])
        assert got[0] == got[1]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(merges())
def test_deltas_merged_in_c_are_pythons(holder, case):
    """A batch's deltas added to the transaction's in C (batch.merge_deltas) and in Python:
    the same deltas, key by key, value by value and type by type (or the same error)."""
    stored, parts = case
    assert _merged(holder, stored, parts, True) == _merged(holder, stored, parts, False)


@st.composite
def batch_links(draw):
    """A batch's hit links as :func:`monitor.batch.link_pairs` takes them: incident
    numbers, pairs indexing them, rows in arrays of each typecode the store passes, the
    number of the batch's first row (0: rows are numbers); and now and then one thing C
    leaves to Python: a bool or an int beyond 64 bits among the numbers, an index out of
    range or negative, one row short, another typecode, a sum beyond 64 bits."""
    key = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=6))
    n = draw(st.integers(0, 30))
    of = [draw(st.integers(0, len(key) - 1)) for _ in range(n)]
    row = [draw(st.integers(-(2**31), 2**31 - 1)) for _ in range(n)]
    first = draw(st.sampled_from([0, 1, 10**6, 2**63 - 2**31, -(2**63) + 2**31]))
    typecodes = draw(st.sampled_from(["ii", "qq", "iq", "ql"]))
    odd = draw(st.sampled_from([None] * 6 + ["key", "of", "row", "typecode", "first"]))
    if odd == "key":
        key[draw(st.integers(0, len(key) - 1))] = draw(st.sampled_from([True, 2**64]))
    elif odd == "of" and n:
        of[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1, len(key)]))
    elif odd == "row" and n:
        row.pop()
    elif odd == "typecode":
        typecodes, row = typecodes[0] + "h", [r % 30000 for r in row]
    elif odd == "first":
        first = draw(st.sampled_from([2**63 - 1, -(2**63), 2**64, True]))
    return key, array(typecodes[0], of), array(typecodes[1], row), first


def _paired(case, accelerated, typecode="q"):
    """The pairs link_pairs appends to two arrays holding a pair already (their typecodes
    and values), and the type of its error, if any."""
    pairs = (array(typecode, [1]), array(typecode, [2]))
    error = None
    with _accelerated(built if accelerated else None):
        try:
            batch.link_pairs(*case, pairs)
        except Exception as exc:  # noqa: BLE001 - compared
            error = type(exc)
    return [(a.typecode, a.tolist()) for a in pairs], error


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(batch_links())
def test_link_pairs_in_c_are_pythons(case):
    """A batch's hit links appended as pairs in C (``_batchscan.link_pairs``) and in
    Python: the same arrays, value by value, or the same error after the same pairs."""
    assert _paired(case, True) == _paired(case, False)
    assert _paired(case, True, "i") == _paired(case, False, "i")  # (C writes int64 only)


def test_c_answers_for_the_links_a_store_passes():
    """The store's shapes (int64 arrays, indexes in range, rows near their batch's first)
    are packed and paired by C itself, not left to the Python fallback."""
    key, of, row = [7, 3, 9], array("i", [2, 0, 0, 1]), array("i", [0, 1, 5, 5])
    paired = built.link_pairs(key, of, row, 40_000)
    assert paired is not None
    incidents, obs = (array("q", paired[0]), array("q", paired[1]))
    assert list(zip(incidents, obs, strict=True)) == [(9, 40_000), (7, 40_001), (7, 40_005),
                                                      (3, 40_005)]  # fmt: skip
    assert built.link_packs(incidents, obs) == ([3, 7, 9], [0, 0, 0],
                                                ["[40005]", "[40001,40005]", "[40000]"])  # fmt: skip


@st.composite
def links(draw):
    """A transaction's hit links as :func:`monitor.batch.link_packs` takes them: incident
    and row numbers in arrays of each typecode the store passes, with repeated pairs, few
    incidents or many, near or far apart (up to the ends of 64 bits); and now and then one
    thing C leaves to Python: one number short, another typecode, lists, no pair."""
    n = draw(st.integers(1, 40))
    wide = st.integers(-(2**63), 2**63 - 1)
    incidents = draw(st.lists(st.one_of(st.integers(1, 6), wide), min_size=n, max_size=n))
    obs = draw(st.lists(st.one_of(st.integers(1, 50), wide), min_size=n, max_size=n))
    repeats = draw(st.lists(st.integers(0, n - 1), max_size=5))
    incidents += [incidents[i] for i in repeats]
    obs += [obs[i] for i in repeats]
    typecodes = "qq"
    odd = draw(st.sampled_from([None] * 6 + ["short", "typecode", "lists", "none"]))
    if odd == "short":
        obs.pop()
    elif odd == "typecode":
        typecodes, obs = "qh", [v % 30000 for v in obs]
    elif odd == "none":
        incidents, obs = [], []
    elif odd == "lists":
        return incidents, obs
    if odd != "typecode" and draw(st.booleans()):  # the store's numbers fit in 32 bits too
        typecodes = draw(st.sampled_from(["ii", "il", "li"]))
        incidents, obs = [v % 2**31 for v in incidents], [v % 2**31 for v in obs]
    return array(typecodes[0], incidents), array(typecodes[1], obs)


def _packs(case, accelerated):
    """link_packs' answer (its fields, each value with its type) or the type of its error."""
    with _accelerated(built if accelerated else None):
        try:
            found = batch.link_packs(*case)
        except Exception as exc:  # noqa: BLE001 - compared
            return type(exc)
    fields = (found.incidents, found.firsts, found.texts)
    return [(type(v), [(type(x), x) for x in v]) for v in fields]


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(links())
def test_link_packs_in_c_are_pythons(case):
    """A transaction's hit links packed in C (``_batchscan.link_packs``) and in Python:
    the same incidents, first rows and JSON texts, value by value and type by type, or
    the same error."""
    assert _packs(case, True) == _packs(case, False)


def test_link_packs_in_c_unpack_to_the_distinct_pairs():
    """Packed in C, 200,000 links (a third of them repeated) over a thousand incidents
    unpack to the distinct pairs, sorted: one pack per incident and block of rows, its
    first the block's first row, its rows ascending within the block."""
    rng = __import__("random").Random(5)
    pairs = [(rng.randrange(1, 10**6), rng.randrange(1, 3 * 10**6)) for _ in range(1000)]
    pairs = [(k, rng.randrange(1, 3 * 10**6)) for k, _ in pairs for _ in range(130)]
    pairs += rng.sample(pairs, 70000)
    incidents, obs = array("q", (k for k, _ in pairs)), array("q", (n for _, n in pairs))
    assert built.link_packs(incidents, obs) is not None  # C answers, no fallback
    with _accelerated(built):
        packs = batch.link_packs(incidents, obs)
    keys = list(zip(packs.incidents, packs.firsts, strict=True))
    assert len(keys) == len(set(keys)) == len({(k, n & -batch.PACK_ROWS) for k, n in pairs})
    unpacked = []
    for incident, first, text in zip(packs.incidents, packs.firsts, packs.texts, strict=True):
        offsets = json.loads(text)
        assert first % batch.PACK_ROWS == 0 and offsets[0] >= 0 and offsets[-1] < batch.PACK_ROWS
        assert offsets == sorted(set(offsets))
        unpacked += [(incident, first + o) for o in offsets]
    assert unpacked == sorted(set(pairs))


def _stream_refs(calls: list[list[dict]], accelerated: bool) -> list[tuple]:
    """What a stream's ``_refs`` answers for each call in turn (the typecode and numbers of
    its array, the rows it adds, by identity), then its table and numbering."""
    stream, found = BatchStream(), []
    with _accelerated(built if accelerated else None):
        for objects in calls:
            new: list[dict] = []
            refs = stream._refs(objects, new)
            found.append((refs.typecode, refs.tolist(), [id(r) for r in new]))
    return [*found, [id(r) for r in stream._rows], stream._number]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30)), max_size=6))
def test_stream_references_made_in_c_are_pythons(calls):
    """A stream's incident rows numbered in C (``_batchscan.stream_refs``) and in Python:
    the same numbers, rows added in the same order and the same table, call after call,
    rows recurring within a call and across calls."""
    pool = [{"id": f"i{k}"} for k in range(31)]  # (equal rows would be numbered apart)
    lists = [[pool[k] for k in ks] for ks in calls]
    assert built.stream_refs([pool[0]], {}, [], []) is not None, "C numbers them"
    assert _stream_refs(lists, True) == _stream_refs(lists, False)


_KEYS = st.sampled_from(["id", "rule", "facts", "user", "ïd"])
_VALUES = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3),
                    st.lists(st.integers(), max_size=2), st.booleans())  # fmt: skip


def _sent(rows: list, keys: tuple, accelerated: bool) -> list[tuple]:
    """``_row_values`` of the rows, each as (its type, and the row itself when kept as it
    is, else its values with their types)."""
    with _accelerated(built if accelerated else None):
        found = batch._row_values(rows, keys)
    return [(type(r), id(r) if type(r) is dict else [(type(v), v) for v in r]) for r in found]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_KEYS, _VALUES, max_size=5), max_size=8),
       st.lists(_KEYS, max_size=5, unique=True))  # fmt: skip
def test_rows_sent_as_values_in_c_are_pythons(rows, keys):
    """A stream's new incident rows as sent (``_batchscan.row_values``) and in Python: the
    tuple of the values of a row whose keys are the keys in order (equal keys that are
    other objects too), else the row itself, type by type."""
    keys = tuple(keys)
    twins = tuple("".join(list(k)) for k in keys)  # equal keys, other objects
    assert built.row_values(rows, keys) is not None, "C sends them"
    for wanted in (keys, twins):
        assert _sent(rows, wanted, True) == _sent(rows, wanted, False)


def test_rows_sent_as_values_c_leaves_to_python():
    """Other types than a stream's, a row that is no dict or a key that is no str: C
    answers None (Python's answer then holds)."""
    row = {"id": "a"}
    for rows, keys in (((row,), ("id",)), ([row], ["id"]), ([row, ("a",)], ("id",)),
                       ([row, {1: "a"}], ("id",)), ([row], ("id", 1))):  # fmt: skip
        assert built.row_values(rows, keys) is None
    assert batch._row_values([row, {1: "a"}], ("id",)) == [("a",), {1: "a"}]


def test_stream_references_c_leaves_to_python_or_refuses_as_python():
    """Other types than the stream's make C answer None (Python's answer then holds); a
    numbering that is no int's, or beyond an int's, raises the array's error."""
    row = {"id": "a"}
    assert built.stream_refs((row,), {}, [], []) is None
    assert built.stream_refs([row], {}, (), []) is None
    for bad, error in (("1", TypeError), (2**40, OverflowError)):
        for accelerated in (True, False):
            stream = BatchStream()
            stream._number, stream._rows = {id(row): bad}, [row]
            with _accelerated(built if accelerated else None), pytest.raises(error):
                stream._refs([row], [])


def test_hour_runs_of_times_within_an_hour_and_at_its_edges():
    """Rows in the previous row's hour are found without the floor division (the hour's
    bounds, kept from the row that found it): the same runs at both edges of each hour,
    negative hours and -0.0 too."""
    ts = []
    for h in (-3, -1, 0, 1, 481_000):
        lo, hi = h * 3600.0, (h + 1) * 3600.0
        ts += [lo, lo + 1.5, math.nextafter(hi, -math.inf), hi, math.nextafter(lo, -math.inf),
               lo, -0.0, math.nextafter(hi, -math.inf)]  # fmt: skip
    got = built.hour_runs(ts)
    with _accelerated(None):
        assert got == batch._hour_runs(ts)
    assert got == built.hour_runs(array("d", ts)) and len(got) > 20


_INT64 = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-40, 40),
                   st.sampled_from([-(1 << 63), (1 << 63) - 1, 0, -1]))  # fmt: skip


@st.composite
def hour_runs(draw):
    """An hour's ids (sorted, distinct) and a run of ids: new ones, copies within the run
    and of the hour's, at the edges of int64 too; as a list or an array."""
    hour = sorted(set(draw(st.lists(_INT64, max_size=50))))
    ids = st.one_of(_INT64, st.sampled_from(hour)) if hour else _INT64
    run = draw(st.lists(ids, max_size=50))
    return array("q", hour), array("q", run) if draw(st.booleans()) else run


def _hour_outcome(case, accelerated: bool) -> tuple:
    hour, run = case
    with _accelerated(built if accelerated else None):
        merged, known = batch.merged_new(hour, run), batch.known_in(hour, run)
    return (type(merged), getattr(merged, "typecode", None), merged, [(type(k), k) for k in known])


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(hour_runs())
def test_hour_ids_merged_and_found_in_c_are_pythons(case):
    """An hour's ids and a run merged (``_batchscan.merged_new``: a new sorted array of
    int64, or None when the run has a copy) and looked up (``known_in``: a bool per id) in
    C as in Python, type by type; and what the merge gives is the sorted ids of both."""
    got = _hour_outcome(case, True)
    assert got == _hour_outcome(case, False)
    hour, run = case
    if got[2] is not None:
        assert list(got[2]) == sorted([*hour, *run]) and len(set(run)) == len(run)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_INT64, st.integers(0, 8)), max_size=60), st.booleans())
def test_batch_ids_found_distinct_in_c_as_in_python(ids, packed):
    """Whether a batch's id column has a value twice (``distinct_ids``: C's hash set for
    an array of int64, a set otherwise) is answered in C as in Python, a bool either way."""
    column = array("q", ids) if packed else ids
    answers = []
    for accelerated in (True, False):
        with _accelerated(built if accelerated else None):
            answers.append(batch.distinct_ids(column))
    assert answers == [len(set(ids)) == len(ids)] * 2
    assert all(type(a) is bool for a in answers)


def test_batch_ids_of_a_whole_batch_found_distinct_in_c():
    """A batch's worth of ids (the C set grows past its first size) is distinct, until a
    copy of any of them, first or last, is added; C given other than an array of int64
    raises TypeError."""
    rng = random.Random(9)
    ids = array("q", dict.fromkeys(rng.getrandbits(64) - (1 << 63) for _ in range(20000)))
    assert built.distinct_ids(ids) is True
    for copy in (ids[0], ids[-1], ids[9999]):
        assert built.distinct_ids(ids + array("q", [copy])) is False
    for other in ([1, 2], array("i", [1, 2]), None):
        with pytest.raises(TypeError):
            built.distinct_ids(other)


def test_batch_ids_chosen_to_collide_in_c_are_answered_by_python_in_linear_time():
    """Ids chosen so that C's multiplicative hash puts all of them in one slot (a log's
    lines would need ~2^64 tries to do it): C gives up (None) after a few probes rather
    than probing quadratically, and ``distinct_ids`` answers by a set, right either way."""
    inverse = pow(0x9E3779B97F4A7C15, -1, 1 << 64)
    values = [k * inverse % (1 << 64) for k in range(20000)]
    ids = array("q", [v - (1 << 64) if v >= 1 << 63 else v for v in values])
    assert built.distinct_ids(ids) is None
    with _accelerated(built):
        assert batch.distinct_ids(ids) is True
        assert batch.distinct_ids(ids + array("q", [ids[-1]])) is False


def test_hour_ids_beyond_int64_or_not_arrays_raise():
    """An id beyond 64 bits raises OverflowError in C as in Python (the run is made an
    array first); C given other objects than arrays of int64 raises TypeError."""
    for accelerated in (True, False):
        with _accelerated(built if accelerated else None):
            with pytest.raises(OverflowError):
                batch.merged_new(array("q"), [1 << 63])
            with pytest.raises(OverflowError):
                batch.known_in(array("q", [1]), [-(1 << 63) - 1])
    for hour, run in ([1], array("q")), (array("q"), [1]), (array("i"), array("q")):
        with pytest.raises(TypeError):
            built.merged_new(hour, run)
        with pytest.raises(TypeError):
            built.known_in(hour, run)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=st.lists(st.lists(st.integers(-3, 40), min_size=1, max_size=80), min_size=1,
                     max_size=10),
       compact_from=st.integers(1, 30))  # fmt: skip
def test_hours_numbered_in_c_are_pythons(runs, compact_from):
    """Runs of one hour numbered by the scanner (its set, its array, long runs merged as a
    whole) with the array merged and searched in C and in Python: the same copies found,
    run by run, and the same hour at the end."""

    def numbered(accelerated: bool) -> tuple:
        with _accelerated(built if accelerated else None), \
                patch.object(scanner._Hour, "COMPACT_FROM", compact_from):  # fmt: skip
            hour = scanner._Hour()
            found = [hour.number(array("q", run)) for run in runs]
        return found, hour.array, hour.ids, hour.copies

    assert numbered(True) == numbered(False)
