"""A part's batches sent as one stream (monitor.batch.BatchStream: each incident row once,
later batches referring to it) decode, part by part in the order the scanner stores them,
to the batches they were made from; a batch decoded out of its stream fails loudly."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import monitor.scanner as scanner
from monitor.app import App, Settings
from monitor.batch import Batch, BatchStream, BatchTable, StreamError
from monitor.collectors import CollectOptions, Diagnostics
from monitor.egress import EgressOptions
from monitor.pipeline import Part, Pipeline
from monitor.rows import observation_values
from monitor.store import Store
from tests.conftest import generated_squid_log

DAY_TS = 1795737600.0  # 2026-11-27T00:00:00Z


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[App, Path]:
    tmp = tmp_path_factory.mktemp("stream")
    log = tmp / "access.log"
    generated_squid_log(log, "--lines", "6000", "--llm-share", "0.4", "--seed", "5")
    return App(Settings(db=tmp / "unused.db")), log


def _pipeline(app: App) -> Pipeline:
    return Pipeline(app.catalog, app.geo, app.rules, app.config,
                    EgressOptions(egress_country="CN"), CollectOptions())  # fmt: skip


def _parts(app: App, log: Path, monkeypatch) -> list[Part]:
    """The log cut into four parts, as a scan with two producers cuts it."""
    monkeypatch.setattr(scanner, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(scanner, "PART_SIZE", log.stat().st_size // 4 + 1)
    parts = scanner.plan(str(log), _pipeline(app), None, jobs=2).parts
    assert len(parts) == 4
    return parts


def _sent(pipeline: Pipeline, parts: list[Part]) -> list[list[bytes]]:
    """What one producer sends of its parts, in order (its memo warm from part to part, as
    a producer's is): per part, its batches pickled."""
    return [[pickle.dumps(payload, -1) for kind, payload in scanner.part_messages(pipeline, part)
             if kind == "batch"] for part in parts]  # fmt: skip


def _made(pipeline: Pipeline, part: Part, size: int) -> list[Batch]:
    """A part's batches made without a stream, pickled and back."""
    return [
        pickle.loads(pickle.dumps(b, -1)) for b in pipeline.process(part, Diagnostics(), size=size)
    ]


def _same(got: Batch, want: Batch) -> None:
    """Every field of a decoded batch is the batch's made without a stream (pickled too)."""
    assert got.grouped() == want.grouped()
    for name in Batch.__slots__:
        assert getattr(got, name) == getattr(want, name), name


def test_parts_streams_decode_to_their_batches_in_the_scanners_order(world, monkeypatch):
    """Two producers' parts (part i by producer i % 2), each part one stream, decoded in
    file order with a table per part as the scanner does: every batch is the one made
    without a stream, pickled; each part sends an incident row once however many of its
    batches raise it, and a part whose rows its producer sent in an earlier part sends
    them again (nothing outlives a part)."""
    monkeypatch.setattr(scanner, "BATCH", 150)
    app, log = world
    parts = _parts(app, log, monkeypatch)
    producers = [_sent(_pipeline(app), parts[w::2]) for w in range(2)]
    reference = _pipeline(app)
    for i, part in enumerate(parts):
        sent = producers[i % 2][i // 2]
        want = _made(reference, part, 150)
        assert len(sent) == len(want) > 2
        table = BatchTable()
        refs, rows = 0, 0
        for data, expected in zip(sent, want, strict=True):
            travelled = pickle.loads(data)
            refs += len(travelled.refs.incs) + len(travelled.refs.flat)
            rows += len(travelled.refs.new)
            _same(table.decode(travelled), expected)
        distinct = {id(inc) for b in want for incs, _ in b.grouped() for inc in incs}
        assert rows >= len({inc["id"] for b in want for inc in b.deltas.incs})
        assert rows < refs and rows <= len(distinct) + sum(len(b.deltas) for b in want)


def test_a_stream_stores_what_batches_made_without_one_store(world, monkeypatch, tmp_path):
    """A part's decoded batches store every table a stream-less part's batches store, in
    process (never pickled: the scanner's one-process path) and pickled."""
    monkeypatch.setattr(scanner, "BATCH", 500)
    app, log = world
    part = Part(str(log))
    stores = {name: Store(tmp_path / f"{name}.db") for name in ("plain", "here", "sent")}
    batches = {"plain": list(_pipeline(app).process(part, Diagnostics(), size=500))}
    for name in ("here", "sent"):
        table, decoded = BatchTable(), []
        for kind, payload in scanner.part_messages(_pipeline(app), part):
            if kind == "batch":
                decoded.append(table.decode(payload if name == "here" else
                                            pickle.loads(pickle.dumps(payload, -1))))  # fmt: skip
        batches[name] = decoded
    tables = []
    for name, store in stores.items():
        scan_id = store.start_scan([str(log)], {})
        for b in batches[name]:
            b.set_scan(scan_id)
        store.ingest_batches(scan_id, batches[name])
        tables.append({t: store.db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()  # noqa: S608
                       for t in ("obs_rows", "incident_rows", "hit_links", "findings")})  # fmt: skip
    assert tables[0]["incident_rows"] and tables[0] == tables[1] == tables[2]


def _stream_of(app: App, log: Path) -> list[Batch]:
    """A whole-file part's batches as sent (pickled and back)."""
    return [pickle.loads(pickle.dumps(payload, -1))
            for kind, payload in scanner.part_messages(_pipeline(app), Part(str(log)))
            if kind == "batch"]  # fmt: skip


def test_a_batch_out_of_its_stream_fails_loudly(world, monkeypatch, tmp_path):
    """A batch decoded with another stream's table, after a missed batch, twice, or not
    at all fails (StreamError) instead of taking other incidents' rows; an undecoded batch
    stores nothing."""
    monkeypatch.setattr(scanner, "BATCH", 400)
    app, log = world
    first, other = _stream_of(app, log), _stream_of(app, log)
    assert len(first) > 3
    table = BatchTable()
    with pytest.raises(StreamError, match="batch 1 of stream"):
        table.decode(first[1])  # its stream's first batch missed
    table.decode(first[0])
    with pytest.raises(StreamError):
        table.decode(other[1])  # another stream's
    with pytest.raises(StreamError):
        table.decode(first[2])  # batch 1 missed
    again = pickle.loads(pickle.dumps(first[1], -1))  # (a batch is decoded in place)
    table.decode(first[1])
    with pytest.raises(StreamError):
        table.decode(again)  # the same batch twice
    undecoded = first[3]
    with pytest.raises(StreamError, match="used undecoded"):
        undecoded.grouped()
    with pytest.raises(StreamError, match="used undecoded"):
        list(undecoded.deltas.incs)
    store = Store(tmp_path / "x.db")
    scan_id = store.start_scan([], {})
    undecoded.set_scan(scan_id)
    with pytest.raises(StreamError):
        store.ingest_batches(scan_id, [undecoded])
    assert store.db.execute("SELECT count(*) FROM obs_rows").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM incident_rows").fetchone()[0] == 0


def test_a_restarted_stream_starts_a_new_table(world, monkeypatch):
    """A part produced again (a cluster task run again after its worker died) is a new
    stream: its first batch starts the table anew and it decodes whole; the batches of the
    stream it replaced no longer decode."""
    monkeypatch.setattr(scanner, "BATCH", 400)
    app, log = world
    killed, again = _stream_of(app, log), _stream_of(app, log)
    want = _made(_pipeline(app), Part(str(log)), 400)
    table = BatchTable()
    for b in killed[:2]:
        table.decode(b)
    for got, expected in zip(again, want, strict=True):
        _same(table.decode(got), expected)
    with pytest.raises(StreamError):
        table.decode(killed[2])


def test_a_long_stream_starts_its_table_again_and_keeps_it_bounded(world, monkeypatch):
    """A part read whole (a compressed input, standard input) is one long stream: past its
    limit the producer's table starts again, and so does the storing process's, both
    bounded; every batch still decodes to the one made without a stream, and a batch missed
    across a new start still fails."""
    monkeypatch.setattr(scanner, "BATCH", 150)
    monkeypatch.setattr(BatchStream, "LIMIT", 60)
    app, log = world
    sent = _stream_of(app, log)
    want = _made(_pipeline(app), Part(str(log)), 150)
    again = [b.refs.seq for b in sent[1:] if b.refs.base == 0]
    assert len(again) >= 2, "the table started again"
    assert all(b.refs.base < 60 for b in sent)
    table, largest = BatchTable(), 0
    for got, expected in zip(sent, want, strict=True):
        _same(table.decode(got), expected)
        largest = max(largest, len(table._rows))
    assert largest < 60 + max(len(b.deltas) for b in want) * 2
    missed = _stream_of(app, log)
    table = BatchTable()
    for b in missed[: again[0] - 1]:
        table.decode(b)
    with pytest.raises(StreamError):
        table.decode(missed[again[0]])  # the batch before the new start missed


def _incident(k: int, facts: int) -> dict:
    return {"id": f"i{k}", "rule": "r", "severity": "high", "provider": "openai",
            "day": "2026-11-27", "facts": {"status": facts}}  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3)), max_size=25),
                min_size=1, max_size=5),
       st.lists(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2)), max_size=3),
                min_size=8, max_size=8))  # fmt: skip
def test_any_batches_of_shared_rows_decode_to_themselves(batches, keys):
    """Batches whose records share incident rows (a memo key's list, a row in several
    lists, rows of one incident with other facts) decode, pickled, to the batches pickled
    without a stream, whatever rows recur from batch to batch."""
    rows = {pair: _incident(*pair) for pair in {p for key in keys for p in key}}
    raised = [[rows[p] for p in key] for key in keys]  # the memo's lists, shared
    stream, table = BatchStream(), BatchTable()
    line, sent = 0, 0
    for records in batches:
        items = []
        for key, ts in records:
            line += 1
            row = observation_values(id=f"o{line}", ts=DAY_TS + ts, line=line,
                                     dest_host="api.openai.com", client_ip="10.0.0.1",
                                     day="2026-11-27", outcome="allowed")  # fmt: skip
            items.append((None, row, raised[key]))
        want = pickle.loads(pickle.dumps(Batch.of(items), -1))
        encoded = stream.encode(Batch.of(items))
        sent += len(encoded.refs.new)
        got = table.decode(pickle.loads(pickle.dumps(encoded, -1)))
        _same(got, want)
        assert [inc["id"] for inc in got.deltas.incs] == got.deltas.ids
    # each row object sent once, with the first batch to raise it
    assert sent == len({id(inc) for records in batches for k, _ in records for inc in raised[k]})


def test_an_undecoded_batch_fails_even_when_it_needs_no_incident_row(tmp_path):
    """A stream's second batch raising only incidents its first raised (their sums need no
    row) still fails undecoded, before it stores anything, and stores what it should
    decoded."""
    rows = [_incident(0, 200), _incident(1, 403)]
    stream = BatchStream()

    def sent(first_line: int) -> Batch:
        items = [(None, observation_values(id=f"o{k}", ts=DAY_TS + k, line=k, source="a.log",
                                           dest_host="api.openai.com", client_ip="10.0.0.1",
                                           day="2026-11-27", outcome="allowed"), rows)
                 for k in range(first_line, first_line + 5)]  # fmt: skip
        return pickle.loads(pickle.dumps(stream.encode(Batch.of(items)), -1))

    first, second = sent(1), sent(6)
    assert len(second.refs.new) == 0  # all its rows were the first's
    store = Store(tmp_path / "x.db")
    scan_id = store.start_scan([], {})
    table = BatchTable()
    for b in (first, second):
        b.set_scan(scan_id)
    ingestion = store.ingestion(scan_id)
    ingestion.add(table.decode(first))
    undecoded = pickle.loads(pickle.dumps(second, -1))
    with pytest.raises(StreamError, match="used undecoded"):
        ingestion.add(undecoded)  # (the transaction is aborted)
    assert store.db.execute("SELECT count(*) FROM obs_rows").fetchone()[0] == 0
    result = store.ingest_batches(scan_id, [first, table.decode(second)])
    assert result.stored == 10 and result.new_incidents == {"i0", "i1"}
    counts = store.db.execute("SELECT id, count FROM incident_rows ORDER BY id").fetchall()
    assert counts == [("i0", 10), ("i1", 10)]


def test_incident_rows_travel_as_tuples_and_decode_to_equal_dicts_when_read():
    """A batch's new incident rows travel as the tuples of their values, the keys they share
    once, a row with other keys (or in another order) as it is; decoded, each reads as a
    dict equal to the row sent (the same dict however often it is read, and in the next
    batch's references), and the decoded batch pickles again as it was."""
    odd = {"rule": "r", "id": "i9", "severity": "low"}  # other keys, another order
    rows = [_incident(0, 200), _incident(1, 403), odd, _incident(2, 500)]
    stream, table = BatchStream(), BatchTable()

    def travelled(raised: list) -> Batch:
        items = [(None, observation_values(id=f"o{k}", ts=DAY_TS + k, line=k, source="a.log",
                                           day="2026-11-27", outcome="allowed"), incs)
                 for k, incs in enumerate(raised)]  # fmt: skip
        return pickle.loads(pickle.dumps(stream.encode(Batch.of(items)), -1))

    first = travelled([rows[:2], [odd], rows[3:]])
    assert first.refs.keys == tuple(rows[0])
    assert [type(r) for r in first.refs.new] == [tuple, tuple, dict, tuple]
    decoded = table.decode(first)
    incs = decoded.deltas.incs
    assert [dict(r) for r in incs] == [rows[0], rows[1], odd, rows[3]]
    assert all(type(r) is dict for r in incs) and incs[0] is incs[0] and incs[1:3] == rows[1:3]
    second = table.decode(travelled([rows[1:2], rows[3:]]))
    assert second.deltas.incs[0] is incs[1] and second.deltas.incs == [rows[1], rows[3]]
    again = pickle.loads(pickle.dumps(decoded, -1))
    assert again.deltas.incs == incs and type(again.deltas.incs) is list
    assert again.grouped() == decoded.grouped() == [(rows[:2], [0]), ([odd], [1]), (rows[3:], [2])]
