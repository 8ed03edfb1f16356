"""Batches shaped by producers (monitor.batch) store exactly what records stored one at a
time do: the storing process's per-batch path and its per-row fall-back agree, on real
database files."""

from __future__ import annotations

import pickle
import random
import signal
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from monitor import batch as batch_module
from monitor import scanner
from monitor import store as store_module
from monitor.batch import ROW_FIELDS, ROW_ID, Batch
from monitor.ids import observation_id
from monitor.rows import COL, observation_values
from monitor.store import Store

DAY_TS = 1795737600.0  # 2026-11-27T00:00:00Z
ROOT = Path(__file__).resolve().parent.parent


def _records(n: int, rng: random.Random) -> list[tuple[str, list, list[dict]]]:
    """Records (record id, stored row, incident rows) of a small world: a few clients,
    hosts, outcomes and days, so that contexts, clients and incidents recur; one in ten
    repeats the record before it (an identical line: the same id, a second request)."""
    out: list[tuple[str, list, list[dict]]] = []
    for k in range(n):
        if out and rng.random() < 0.1:  # the next line of the file
            record_id, row, incs = out[-1]
            out.append((record_id, [*row[: COL["line"]], k + 1, *row[COL["line"] + 1 :]], incs))
            continue
        client, host = f"10.0.0.{rng.randrange(4)}", rng.choice(["api.openai.com", "api.x.ai"])
        day = rng.randrange(2)
        row = observation_values(
            ts=DAY_TS + day * 86400 + rng.randrange(5) * 3600 + k, day=f"2026-11-{27 + day}",
            source=f"{rng.choice('ab')}.log", line=k + 1, client_ip=client,
            user=rng.choice([None, "alice"]), dest_host=host, provider="p",
            bytes_in=rng.choice([None, 100]), bytes_out=rng.choice([None, 7]),
            outcome=rng.choice(["allowed", "blocked"]),
        )  # fmt: skip
        incs = [
            {"id": f"{rule}-{client}-{host}-{day}", "rule": rule, "severity": "high",
             "title": "t", "provider": "p", "dest_host": host, "client_ip": client,
             "day": row[COL["day"]], "facts": {"request.host": host} if rule == "r1" else None}
            for rule in ("r1", "r2")[: rng.randrange(3)]
        ]  # fmt: skip
        row[COL["id"]] = observation_id(f"rec{k}", 0)
        out.append((f"rec{k}", row, incs))
    return out


def _one_at_a_time(store: Store, records: list) -> list[tuple[int, int, int]]:
    seen, results = scanner.Occurrences(), []
    for record_id, row, incs in records:
        row = list(row)
        row[COL["scan_id"]] = 1
        nth = seen.next(record_id, row[COL["ts"]])
        if nth:
            row[COL["id"]] = observation_id(record_id, nth)
        r = store.ingest(1, [(row, incs)])
        results.append((r.stored, r.duplicates, r.expired))
    return [tuple(map(sum, zip(*results, strict=True)))]


def _batched(store: Store, records: list, size: int, per_tx: int) -> list[tuple[int, int, int]]:
    batches = _batches_of(records, size)
    results = [
        store.ingest_batches(1, batches[k : k + per_tx]) for k in range(0, len(batches), per_tx)
    ]
    return [tuple(sum(getattr(r, f) for r in results) for f in ("stored", "duplicates", "expired"))]


def _tables(store: Store) -> dict[str, list]:
    names = ("obs_rows", "obs_contexts", "obs_clients", "hit_links", "incident_rows",
             "incident_facts", "findings")  # fmt: skip
    return {t: store.db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in names}  # noqa: S608


def test_batches_store_what_records_one_at_a_time_store(tmp_path):
    """A file with identical records (each a request of its own), a second overlapping it
    (stored already, within one transaction too) and, after a prune, a re-read of the pruned days: every table is the
    one storing each record in a transaction of its own makes, and so are the counts."""
    records = _records(500, random.Random(15))
    one, many = Store(tmp_path / "one.db"), Store(tmp_path / "many.db")
    for store in (one, many):
        store.start_scan([], {})
    counts = _one_at_a_time(one, records)
    assert _batched(many, records, 37, 3) == counts
    assert counts == [(len(records), 0, 0)] and _tables(many) == _tables(one)  # repeats count

    overlap = records[100:160] + records[150:170]  # the second copies are new requests
    counts = _one_at_a_time(one, overlap)
    assert _batched(many, overlap, 30, 2) == counts and counts[0][1] >= 60
    assert _tables(many) == _tables(one)

    for store in (one, many):
        store.prune("2026-11-28")
    counts = _one_at_a_time(one, records[:80])
    assert _batched(many, records[:80], 25, 2) == counts
    assert counts[0][0] == 0 and counts[0][2] > 0 and counts[0][1] > 0
    assert _tables(many) == _tables(one)


def test_hit_links_packed_in_c_or_python_are_the_same(tmp_path, monkeypatch):
    """A transaction's hit links go in as packs (:func:`monitor.batch.link_packs`), one
    per incident and block of rows: the same packs built in C or in Python, for new rows and for a re-read
    whose rows were partly stored before (links by row number), and ``hit_links`` unpacks
    them to the pairs that storing each record in a transaction of its own makes."""
    records = _records(500, random.Random(7))
    tables = {}
    for way in ("C", "Python", "one at a time"):
        if way == "Python":
            monkeypatch.setattr(batch_module, "_ACCEL", None)
        store = Store(tmp_path / f"{len(tables)}.db")
        store.start_scan([], {})
        if way == "one at a time":
            _one_at_a_time(store, records[:400])
            _one_at_a_time(store, records[50:120] + records[400:])
        else:
            assert _batched(store, records[:400], 41, 3) == [(400, 0, 0)]
            assert _batched(store, records[50:120] + records[400:], 33, 2)[0][:2] == (100, 70)
        tables[way] = [store.db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()  # noqa: S608
                       for t in ("hit_links", "hit_packs")]  # fmt: skip
    assert tables["C"] == tables["Python"]
    (links, packs), (one_links, one_packs) = tables["C"], tables["one at a time"]
    assert links == one_links and len(links) > 300
    # the same packs however the transactions went: one per incident (and block of rows)
    assert packs == one_packs and len(packs) == len({k for k, _ in links}) < len(links)


def test_repeated_numbers_records_as_next_does():
    """:meth:`Occurrences.repeated` over a batch is :meth:`Occurrences.next` record by
    record: runs of one hour, hours going back, identical records within and across runs."""
    rng = random.Random(3)
    ts = [3600.0 * h + rng.random() for h in (5, 5, 5, 6, 6, 2, 2, 9, 9, 9, 5, 10, 11, 12)]
    items = []
    for k, t in enumerate(ts * 3):
        record_id = rng.choice(["a", "b", f"u{k}"])
        row = observation_values(id=observation_id(record_id), ts=t, line=k, day="x")
        items.append((record_id, row, []))  # the id as producers make it: the first copy's
    expected, seen = [], scanner.Occurrences()
    for record_id, row, _ in items:
        expected.append(seen.next(record_id, row[COL["ts"]]))
    assert _numbered(items, 10) == expected and any(expected)


def _numbered(items: list, size: int) -> list[int]:
    """The nth of each record, numbered batch by batch."""
    got = [0] * len(items)
    numbering = scanner.Occurrences()
    for start in range(0, len(items), size):
        batch = Batch.of(items[start : start + size])
        for i, nth in numbering.repeated(batch):
            got[start + i] = nth
    return got


def test_busy_hours_are_kept_compact(monkeypatch):
    """Past ``COMPACT_FROM`` ids an hour keeps them in a sorted array, not as Python
    objects, and numbers records exactly as before (repeats within a run, across runs, of
    ids compacted earlier); at most ``HOURS_KEPT + 1`` hours are kept whatever the length."""
    monkeypatch.setattr(scanner._Hour, "COMPACT_FROM", 8)
    rng = random.Random(5)
    items, expected, counts = [], [], {}
    for k in range(3000):
        hour = k // 500  # six busy hours, in order
        record_id = f"r{hour}-{rng.randrange(400)}"  # copies near and far within the hour
        ts = hour * 3600.0 + 1
        row = observation_values(id=observation_id(record_id), ts=ts, line=k, day="x")
        items.append((record_id, row, []))
        expected.append(counts.get(record_id, 0))  # the reference: copies seen before
        counts[record_id] = expected[-1] + 1
    assert _numbered(items, 37) == expected and max(expected) >= 2

    seen = scanner.Occurrences()
    for k in range(3000):
        seen.next(f"x{k}", (k // 500) * 3600.0)
    assert len(seen._hours) <= scanner.Occurrences.HOURS_KEPT + 1
    hour = seen._hours[5]
    assert len(hour.ids) < 8 and hour.array is not None and len(hour.array) >= 492
    assert seen.next("x2999", 5 * 3600.0) == 1 and seen.next("x0", 5 * 3600.0) == 0


def test_remembered_incidents_are_bounded(tmp_path, monkeypatch):
    """The store remembers at most ``_INCIDENTS_CACHED`` incidents' evidence and facts
    (memory stays flat however many a long log raises); one that recurs after it started
    over is read back, so every table is the one an unbounded memory makes."""
    records = _records(600, random.Random(8))
    full = Store(tmp_path / "full.db")
    full.start_scan([], {})
    counts = _batched(full, records, 23, 1)
    assert len(full._incident_state) > 4
    monkeypatch.setattr(store_module, "_INCIDENTS_CACHED", 4)
    small = Store(tmp_path / "small.db")
    small.start_scan([], {})
    sizes = []  # (incidents of the transaction, incidents remembered after it)
    real = small._store_incidents

    def watched(deltas, result, *numbers):
        real(deltas, result, *numbers)
        sizes.append((len(deltas), len(small._incident_state)))

    monkeypatch.setattr(small, "_store_incidents", watched)
    assert _batched(small, records, 23, 1) == counts
    assert _tables(small) == _tables(full)
    assert all(kept <= 4 + 1 + touched for touched, kept in sizes)  # over by one transaction
    assert any(kept < before for (_, before), (_, kept) in zip(sizes, sizes[1:], strict=False))


def _batches_of(records: list, size: int) -> list[Batch]:
    """Producer batches of ``records`` (``size`` each), repeated records numbered."""
    seen, batches = scanner.Occurrences(), []
    for start in range(0, len(records), size):
        batch = Batch.of([(r, list(row), incs) for r, row, incs in records[start : start + size]])
        batch.set_scan(1)
        for i, nth in seen.repeated(batch):
            batch.columns[ROW_ID][i] = observation_id(batch.record_id(i), nth)
        batches.append(batch)
    return batches


def test_a_transaction_fed_batch_by_batch_stores_what_records_one_at_a_time_store(tmp_path):
    """A part's batches added to an :class:`Ingestion` as they come, then committed with the
    read position, make the tables each record stored in its own transaction makes (and
    the same counts); on top of stored data too (duplicates skipped, incidents updated).
    (``ingest_batches`` is itself an :class:`Ingestion`: the reference is not.)"""
    records = _records(400, random.Random(8))
    once, fed = Store(tmp_path / "once.db"), Store(tmp_path / "fed.db")
    source = {"key": "k", "path": "a.log", "offset": 10, "lines": 3}
    for part in (records[:250], records[200:]):
        for store in (once, fed):
            store.start_scan([], {})
        ((stored, duplicates, _),) = _one_at_a_time(once, part)
        ingestion = fed.ingestion(1)
        for batch in _batches_of(part, 29):
            ingestion.add(batch)
        got = ingestion.commit(source)
        assert (got.stored, got.duplicates) == (stored, duplicates)
        assert _tables(fed) == _tables(once)
        assert fed.source_state("k")["offset"] == 10
    assert got.duplicates == 50


ROLL_UPS = ("obs_rollup", "obs_hourly", "obs_monthly", "obs_context_totals", "obs_dests", "meta")


def _roll_ups(store: Store) -> dict[str, list]:
    return {t: store.db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in ROLL_UPS}  # noqa: S608


def test_a_rolling_transaction_rolls_up_as_one_roll_up_at_its_end(tmp_path):
    """A transaction that rolls up as it goes (part by part, as a scan's does) makes the
    roll-ups (and destination numbers, and mark) that one roll-up after it makes: over rows
    an earlier transaction left above the mark too, with duplicates skipped, and when all
    it is given was stored before; one rolled back leaves the roll-ups as they were."""
    records = _records(600, random.Random(12))
    once, rolling = Store(tmp_path / "once.db"), Store(tmp_path / "rolling.db")
    for store in (once, rolling):
        store.start_scan([], {})
        store.ingest_batches(1, _batches_of(records[:150], 40))  # above the mark: a killed scan
    killed = _records(60, random.Random(14))
    for part in (records[100:450], records[400:], records[300:500]):  # the last: all stored
        if part[0] is records[300]:  # after a scan killed again: rows above the mark
            for store in (once, rolling):
                store.ingest_batches(1, _batches_of(killed, 25))
        once.ingest_batches(1, _batches_of(part, 37))
        once.roll_up()
        ingestion = rolling.ingestion(1, roll_up=True)
        for k, batch in enumerate(_batches_of(part, 37)):
            ingestion.add(batch)
            if k % 3 == 2:  # a part's end
                ingestion.roll_up()
        ingestion.roll_up()
        stored = ingestion.commit().stored
        assert _roll_ups(rolling) == _roll_ups(once) and _tables(rolling) == _tables(once)
    assert stored == 0
    assert len(_roll_ups(once)["obs_rollup"]) > 10
    before = _roll_ups(rolling)
    ingestion = rolling.ingestion(1, roll_up=True)
    for batch in _batches_of(_records(100, random.Random(13)), 30):
        ingestion.add(batch)
        ingestion.roll_up()
    ingestion.abort()
    assert _roll_ups(rolling) == before
    assert not rolling.db.execute("SELECT name FROM temp.sqlite_master").fetchall()


@pytest.mark.parametrize("rolling", [False, True])
def test_a_kill_before_the_commit_leaves_nothing_of_the_transaction(tmp_path, rolling):
    """``kill -9`` while batches have been added but not committed (and, rolling, their
    rows gathered for the roll-ups): the database holds what it held before, roll-ups and
    mark included, and the write lock is free for the next writer."""
    db = tmp_path / "k.db"
    records = _records(300, random.Random(9))
    store = Store(db)
    store.start_scan([], {})
    store.ingest_batches(1, _batches_of(records[:100], 40))
    store.roll_up()
    before = {**_tables(store), **_roll_ups(store)}
    store.close()
    script = (
        "import random, sys, time\n"
        "from monitor.store import Store\n"
        "from tests.test_batch import _batches_of, _records\n"
        "store = Store(sys.argv[1])\n"
        f"ingestion = store.ingestion(1, roll_up={rolling})\n"
        "for batch in _batches_of(_records(300, random.Random(9)), 40):\n"
        "    ingestion.add(batch)\n"
        f"    {'ingestion.roll_up()' if rolling else 'pass'}\n"
        "print('added', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(db)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline() == "added\n"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    after = Store(db)
    assert {**_tables(after), **_roll_ups(after)} == before
    result = after.ingest_batches(1, _batches_of(records, 40))  # the lock is free
    assert result.stored == 200 and result.duplicates == 100


def _links_of(groups: list) -> list[tuple[str, int]]:
    """(incident id, row) per incident of each group and row of it, in order."""
    return [(inc["id"], row) for incs, rows in groups for inc in incs for row in rows]


def _pairs(links: tuple) -> list[tuple[str, int]]:
    ids, of, row = links
    assert ids == list(dict.fromkeys(ids)), "each incident once"
    return [(ids[k], r) for k, r in zip(of, row, strict=True)]


def test_batches_sent_by_a_producer_store_what_batches_made_here_store(tmp_path):
    """A batch as it travels from a producer (pickled: its groups packed, its links made
    as integer arrays) unpacks to the groups it was made with, and stores every table (and
    count) the batch made in the storing process does: all rows new, some stored before
    (the per-row fall-back), and after a prune."""
    records = _records(400, random.Random(21))
    here, sent = Store(tmp_path / "here.db"), Store(tmp_path / "sent.db")
    for store in (here, sent):
        store.start_scan([], {})
    results = []
    for chunk, prune in (
        (records[:300], None),
        (records[250:], None),
        (records[:90], "2026-11-28"),
    ):
        if prune:
            for store in (here, sent):
                store.prune(prune)
        made = _batches_of(chunk, 41)
        travelled = [pickle.loads(pickle.dumps(b, pickle.HIGHEST_PROTOCOL)) for b in made]
        assert [b.grouped() for b in travelled] == [b.groups for b in made]
        assert [_pairs(b.links()) for b in travelled] == [_links_of(b.groups) for b in made]
        got = sent.ingest_batches(1, [pickle.loads(pickle.dumps(b, -1)) for b in made])
        want = here.ingest_batches(1, made)
        assert (got.stored, got.duplicates, got.expired, got.new_incidents) == (
            want.stored, want.duplicates, want.expired, want.new_incidents)  # fmt: skip
        assert _tables(sent) == _tables(here)
        results.append(got)
    # the second and third ran the per-row fall-back: rows stored before, rows pruned
    assert results[1].duplicates == 50 and results[2].expired > 0


def test_a_pickled_batch_keeps_every_value_and_stores_the_same_rows(tmp_path):
    """Columns travel as typed arrays where every value fits one (64-bit integers,
    doubles), as nothing when all are None and as they are otherwise (a None among
    numbers, texts); record ids of 24 hex digits as one bytes
    object, others as they are. Every value comes back as the store binds it (a REAL
    column's integer as the double SQLite makes of it), every record id as it was, and
    the stored rows are the in-process batch's, value by value and type by type."""
    records = _records(60, random.Random(4))
    odd = {COL["bytes_in"]: 2**62 + 5, COL["duration"]: 3, COL["client_port"]: None,
           COL["url"]: "https://api.x.ai/v1/chat"}  # fmt: skip
    items = []
    for k, (record_id, row, incs) in enumerate(records):
        row = list(row)
        row[COL["duration"]] = k / 7 if k % 3 else float(k)  # doubles, whole ones too
        row[COL["client_port"]] = 40000 + k
        for col, value in odd.items() if k == 30 else ():
            row[col] = value
        items.append((record_id if k else "not-hex", row, incs))
    made = Batch.of(items)
    travelled = pickle.loads(pickle.dumps(made, pickle.HIGHEST_PROTOCOL))
    columns = dict(zip(ROW_FIELDS, travelled.columns, strict=True))
    assert isinstance(columns["id"], array) and isinstance(columns["ts"], array)
    assert isinstance(columns["packets_in"], list) and set(columns["packets_in"]) == {None}
    assert isinstance(columns["bytes_out"], list) and None in columns["bytes_out"]
    assert isinstance(columns["client_port"], list) and columns["client_port"][30] is None
    assert isinstance(columns["duration"], array) and columns["duration"][30] == 3.0
    for name, got, want in zip(ROW_FIELDS, travelled.columns, made.columns, strict=True):
        assert list(got) == list(want), name
    assert [travelled.record_id(i) for i in range(len(items))] == [r for r, _, _ in items]
    hexed = Batch.of([(f"{k:024x}", row, incs) for k, (_, row, incs) in enumerate(items)])
    travelled_hex = pickle.loads(pickle.dumps(hexed, -1))
    assert isinstance(travelled_hex.record_ids, bytes)
    assert [travelled_hex.record_id(i) for i in range(60)] == [f"{k:024x}" for k in range(60)]
    stored = []
    for name, batch in (("here", made), ("sent", travelled)):
        store = Store(tmp_path / f"{name}.db")
        store.start_scan([], {})
        batch.set_scan(1)
        store.ingest_batches(1, [batch])
        stored.append(store.db.execute(
            "SELECT *, typeof(bytes_in), typeof(duration), typeof(client_port) FROM obs_rows"
        ).fetchall())  # fmt: skip
        stored.append(_tables(store))
    assert stored[0] == stored[2] and stored[1] == stored[3]
    assert ("real", "integer") in {(r[-2], r[-1]) for r in stored[0]}
