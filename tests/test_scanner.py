"""Parallel scans give exactly what an in-process scan gives: same ids, counts, line numbers."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import patch

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import monitor.scanner as scanner
from monitor.app import App, Settings
from monitor.batch import Batch
from monitor.cli import main
from monitor.collectors import CollectOptions
from monitor.egress import EgressOptions
from monitor.ids import observation_id
from monitor.rows import observation_values
from monitor.store import Ingestion, Store, StoreError

ROOT = Path(__file__).resolve().parents[1]
HOSTS = [
    "api.openai.com",
    "api.anthropic.com",
    "openrouter.ai",
    "github.com",
    "pypi.org",
    "api.deepseek.com",
]


@pytest.fixture
def log(tmp_path):
    rnd = random.Random(3)
    lines = []
    for i in range(6000):
        host = rnd.choice(HOSTS)
        lines.append(
            f"{1795741200 + i * 0.25:.3f} {rnd.randint(1, 9999):6d} 10.20.0.{rnd.randint(1, 40)} "
            f"TCP_TUNNEL/200 {rnd.randint(100, 99999)} CONNECT {host}:443 - HIER_DIRECT/1.2.3.4 -"
        )
    lines[100] = lines[99]  # identical records stay two records
    lines[4000] = lines[4000][:30]  # truncated, in the second half
    lines[4500] = lines[10]  # a repeat of an early line, far away
    path = tmp_path / "access.log"
    path.write_text("\n".join(lines) + "\n")
    return path


def scan(db, *args):
    result = CliRunner().invoke(
        main, ["--db", str(db), "scan", *map(str, args), "--egress-country", "CN", "--json"]
    )
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout), incidents_of(db)


def incidents_of(db):
    out = CliRunner().invoke(main, ["--db", str(db), "incidents", "--json"]).stdout
    incidents = [json.loads(line) for line in out.splitlines()]
    for inc in incidents:  # evidence names the file, which differs between .log and .log.gz
        inc["evidence"] = [e.rsplit(":", 1)[1] for e in inc["evidence"]]
    return sorted(incidents, key=lambda i: i["id"])


def test_ranges_and_producers_match_in_process(tmp_path, log, monkeypatch):
    alone, alone_incidents = scan(tmp_path / "a.db", log, "-j", "1")
    monkeypatch.setattr(scanner, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(scanner, "PART_SIZE", 20_000)  # ~25 parts of a 500 KB file, 4 producers
    monkeypatch.setattr(scanner, "MIN_PART", 10_000)
    split, split_incidents = scan(tmp_path / "b.db", log, "-j", "4")
    for key in ("records", "malformed", "llm_observations", "stored", "incidents_new"):
        assert split[key] == alone[key], key
    assert split["malformed"] == 1 and split["problems"] == alone["problems"]
    assert f"{log}:4001:" in split["problems"][0]  # absolute line number from a later range
    assert split_incidents == alone_incidents


def test_small_batches_stored_as_they_come_give_the_same_database(tmp_path, log, monkeypatch):
    alone, alone_incidents = scan(tmp_path / "a.db", log, "-j", "1")
    monkeypatch.setattr(scanner, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(scanner, "PART_SIZE", 150_000)  # 4 parts of ~1,000 records
    monkeypatch.setattr(scanner, "MIN_PART", 10_000)
    monkeypatch.setattr(scanner, "BATCH", 37)  # ~27 batches a part, stored in one transaction
    split, split_incidents = scan(tmp_path / "b.db", log, "-j", "2")
    for key in ("records", "malformed", "llm_observations", "stored", "incidents_new", "problems"):
        assert split[key] == alone[key], key
    assert split_incidents == alone_incidents


def connect_lines(start: int, count: int, hosts=HOSTS[:3]) -> str:
    """Squid native CONNECT lines to ``hosts`` in turn (LLM APIs: one record each)."""
    return "".join(
        f"{1795741200 + i * 0.01:.3f} {i % 9000 + 1:6d} 10.20.{i % 7}.{i % 200 + 1} TCP_TUNNEL/200 "
        f"{i % 90000 + 100} CONNECT {hosts[i % len(hosts)]}:443 - HIER_DIRECT/1.2.3.4 -\n"
        for i in range(start, start + count)
    )


def test_standard_input_read_by_a_producer(tmp_path, log):
    """``cat access.log | apiwatch scan -``: a producer process reads the pipe (it once read
    nothing there: multiprocessing closes a child's standard input) and stores what a scan
    of the file stores."""
    _, from_file = scan(tmp_path / "a.db", log, "-j", "1")
    db = tmp_path / "b.db"
    with open(log, "rb") as stdin:
        res = subprocess.run(
            [sys.executable, "-m", "monitor", "--db", str(db), "scan", "-j", "2", "--json",
             "--egress-country", "CN", "-"],
            cwd=ROOT, stdin=stdin, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["records"] == 5999 and summary["stored"] == summary["llm_observations"] > 3000
    assert summary["problems"][0].startswith("-:4001: ")
    assert incidents_of(db) == from_file


def test_a_batch_is_stored_before_its_part_ends(tmp_path):
    """Storing does not wait for the end of a part: the first batch a producer hands over
    is committed while the producer still reads (here: stdin, kept open)."""
    db = tmp_path / "s.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "--db", str(db), "scan", "-j", "2", "--json",
         "--egress-country", "CN", "-"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        proc.stdin.write(connect_lines(0, scanner.BATCH))  # one producer batch
        # other traffic after it, so that the read blocks after the batch's last line (a
        # pipe is read in blocks of READ_CHUNK)
        proc.stdin.write(connect_lines(scanner.BATCH, 12_000, ["pypi.org"]))
        proc.stdin.flush()
        deadline, stored = time.monotonic() + 120, 0
        while not stored and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            stored = observations(db)
        assert stored == scanner.BATCH, "the batch was not stored while its part was read"
        out, err = proc.communicate(connect_lines(scanner.BATCH + 12_000, 500), timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stored"] == observations(db) == scanner.BATCH + 500


def observations(db) -> int:
    """Observations committed so far (0 while the database has none)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM observations").fetchone()[0]
    except sqlite3.OperationalError:  # no schema yet
        return 0
    finally:
        con.close()


@pytest.fixture
def split_small(monkeypatch):
    """Producers even for small logs: ~4 parts of the 6,000-line log."""
    monkeypatch.setattr(scanner, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(scanner, "PART_SIZE", 150_000)
    monkeypatch.setattr(scanner, "MIN_PART", 10_000)


def app_scan(db, path, **kwargs):
    app = App(Settings(db=db))
    try:
        return app.scan([str(path)], EgressOptions(egress_country="CN"),
                        CollectOptions(format="squid"), jobs=2, **kwargs)[1]  # fmt: skip
    finally:
        app.close()


def test_producers_start_before_the_database_is_opened(tmp_path, log, split_small):
    """The first input's producers read while the store is opened; the scan keeps them when
    the store's plan is theirs (an input not read before) and stores what -j 1 stores."""
    db = tmp_path / "early.db"
    app = App(Settings(db=db))
    pipeline = app.pipeline(EgressOptions(egress_country="CN"), CollectOptions(format="squid"))
    early = scanner.Scanner(pipeline, None, jobs=2)
    early.start(str(log))
    source, remotes = early._early
    assert len(remotes) == 2 and all(r.process.is_alive() for r in remotes)
    assert not db.exists()  # reading before the database is even created
    early.store = app.store
    assert early._started(scanner.plan(str(log), pipeline, app.store, 2)) is remotes
    for remote in remotes:
        remote.stop()
    app.close()
    summary = app_scan(tmp_path / "b.db", log)
    alone, alone_incidents = scan(tmp_path / "a.db", log, "-j", "1")
    assert (summary.stored, summary.records) == (alone["stored"], alone["records"])
    assert incidents_of(tmp_path / "b.db") == alone_incidents


def test_early_producers_of_an_input_read_before_are_stopped(tmp_path, log, split_small):
    """An input read in part before: the producers started as for a new one are stopped,
    and the scan resumes where the last one left off."""
    lines = log.read_bytes().splitlines(keepends=True)
    grown = tmp_path / "grown.log"
    grown.write_bytes(b"".join(lines[:3000]))
    db = tmp_path / "g.db"
    first = app_scan(db, grown)
    grown.write_bytes(b"".join(lines))
    second = app_scan(db, grown)
    assert not multiprocessing.active_children()  # the early ones were stopped, not left
    assert second.skipped_bytes == len(b"".join(lines[:3000]))
    assert second.duplicates == 0
    alone, alone_incidents = scan(tmp_path / "a.db", log, "-j", "1")
    assert first.stored + second.stored == alone["stored"]
    scans = ("first_scan", "last_scan")  # two scans stored these, one those
    assert [{k: v for k, v in i.items() if k not in scans} for i in incidents_of(db)] == [
        {k: v for k, v in i.items() if k not in scans} for i in alone_incidents
    ]


_BEFORE = "SELECT count(*) FROM obs_rows WHERE line <= ?"


def _commits(monkeypatch, reference: Path) -> list[tuple[int, int, int, int]]:
    """Of each commit of the scans in this process, as it is about to commit: the
    observations stored, the lines its read position covers (0: it has none), the
    observations of those lines stored, and those of ``reference`` (the same log, -j 1)."""
    commits: list[tuple[int, int, int, int]] = []
    real = Ingestion.commit

    def commit(self, source=None):
        conn, lines = self.store.db.conn, source["lines"] if source else 0
        ref = sqlite3.connect(reference)
        try:
            commits.append((conn.execute("SELECT count(*) FROM obs_rows").fetchone()[0], lines,
                            conn.execute(_BEFORE, [lines]).fetchone()[0],
                            ref.execute(_BEFORE, [lines]).fetchone()[0]))  # fmt: skip
        finally:
            ref.close()
        return real(self, source)

    monkeypatch.setattr(Ingestion, "commit", commit)
    return commits


def _parts(tmp_path: Path, log: Path) -> int:
    """The parts a scan with two producers reads ``log`` in."""
    app = App(Settings(db=tmp_path / "plan.db"))
    try:
        pipeline = app.pipeline(EgressOptions(egress_country="CN"), CollectOptions(format="squid"))
        return len(scanner.plan(str(log), pipeline, None, 2).parts)
    finally:
        app.close()


def test_one_transaction_spans_the_parts_of_an_input(tmp_path, log, split_small, monkeypatch):
    """The parts of a split log are stored in one transaction, committed at the input's end
    with the read position after its last part: what a scan in one process stores."""
    alone, alone_incidents = scan(tmp_path / "a.db", log, "-j", "1")
    assert _parts(tmp_path, log) >= 4
    commits = _commits(monkeypatch, tmp_path / "a.db")
    summary = app_scan(tmp_path / "b.db", log)
    assert commits == [(alone["stored"], 6000, alone["stored"], alone["stored"])]
    assert summary.stored == alone["stored"] and incidents_of(tmp_path / "b.db") == alone_incidents


#: the roll-up tables, each in an order of its key
ROLL_UPS = {"obs_rollup": "ctx, client", "obs_hourly": "ctx, hour", "obs_context_totals": "ctx",
            "obs_monthly": "month, client, dest", "obs_dests": "n"}  # fmt: skip


def _rows_of(db: Path, tables: dict[str, str]) -> dict[str, list[tuple]]:
    con = sqlite3.connect(db)
    try:
        sql = "SELECT * FROM {} ORDER BY {}"
        return {t: con.execute(sql.format(t, o)).fetchall() for t, o in tables.items()}
    finally:
        con.close()


def _linked_as_counted(db: Path) -> int:
    """Incidents are numbered 1, 2, … and each has a hit link for each request it counts
    (its requests linked to it, not to another): how many incidents there are."""
    con = sqlite3.connect(db)
    try:
        numbers = [n for (n,) in con.execute("SELECT n FROM incident_rows ORDER BY n")]
        assert numbers == list(range(1, len(numbers) + 1))
        assert not con.execute("""SELECT i.n FROM incident_rows i WHERE i.count !=
            (SELECT count(*) FROM hit_links h WHERE h.incident = i.n)""").fetchall()
        return len(numbers)
    finally:
        con.close()


def test_a_spanning_transaction_rolls_up_part_by_part_as_one_roll_up_would(
    tmp_path, log, split_small, monkeypatch
):
    """The transaction that spans a split log's parts sums each part's rows into the
    roll-ups as the next is read (and the rest at its commit): the roll-ups, the mark, the
    hit links and the incidents' numbers (new ones numbered when first met, before they are
    stored) are those one roll-up after a scan in one process makes."""
    scan(tmp_path / "a.db", log, "-j", "1")
    rolled, commits = [], _commits(monkeypatch, tmp_path / "a.db")
    real = Ingestion.roll_up

    def roll_up(self):
        rolled.append(self.store.db.conn.execute("SELECT count(*) FROM obs_rows").fetchone()[0])
        real(self)

    monkeypatch.setattr(Ingestion, "roll_up", roll_up)
    app_scan(tmp_path / "b.db", log)
    assert len(commits) == 1 and len(rolled) == _parts(tmp_path, log) >= 4  # one a part
    assert rolled == sorted(set(rolled)) and rolled[0] > 0 and rolled[-1] == commits[0][0]
    once = tmp_path / "once.db"  # the same rows, rolled up once
    shutil.copy(tmp_path / "b.db", once)
    con = sqlite3.connect(once)
    with con:
        for table in ROLL_UPS:
            con.execute(f"DELETE FROM {table}")  # noqa: S608
        con.execute("UPDATE meta SET value = '0' WHERE key = 'rolled_up_to'")
    con.close()
    Store(once).roll_up()
    links = {"hit_links": "incident, obs", "incident_rows": "n", "meta": "key"}
    b = _rows_of(tmp_path / "b.db", {**ROLL_UPS, **links})
    assert len(b["obs_rollup"]) > 50 and len(b["hit_links"]) > 1000
    assert b == _rows_of(once, {**ROLL_UPS, **links})
    assert {t: b[t] for t in links} == _rows_of(tmp_path / "a.db", links)
    assert _linked_as_counted(tmp_path / "b.db") > 50


def test_a_second_scan_numbers_its_new_incidents_after_the_stored_ones(tmp_path, log, split_small):
    """A scan on top of a database holding incidents numbers those it makes after them, as
    it links their requests: what a scan in one process makes."""
    lines = log.read_text().splitlines(keepends=True)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    first.write_text("".join(lines[:2000]))
    later = [
        f"{float(ts) + 86400:.3f} {rest}" for ts, rest in (x.split(" ", 1) for x in lines[3000:])
    ]
    second.write_text("".join(lines[1500:3000] + later))  # some stored, some of a new day
    tables = {"hit_links": "incident, obs", "incident_rows": "n", **ROLL_UPS}
    for db, jobs in ((tmp_path / "a.db", "1"), (tmp_path / "b.db", "2")):
        scan(db, first, "-j", jobs)
        before = _linked_as_counted(db)
        scan(db, second, "-j", jobs)
        assert _linked_as_counted(db) > before > 10  # new ones, after those stored
    a = _rows_of(tmp_path / "a.db", tables)
    assert _rows_of(tmp_path / "b.db", tables) == a


@pytest.mark.parametrize("bound", ["HOLD", "HOLD_PARTS"])
def test_a_spanning_transaction_commits_at_its_bounds(tmp_path, log, split_small, monkeypatch,
                                                      bound):  # fmt: skip
    """Past ``HOLD`` observations (at a batch's end) or ``HOLD_PARTS`` parts (at a part's
    end) the transaction commits, with the read position of the last part that ended in it:
    each position committed with all the observations of the lines before it."""
    alone, alone_incidents = scan(tmp_path / "a.db", log, "-j", "1")
    monkeypatch.setattr(scanner, "BATCH", 400)  # ~3 batches a part
    monkeypatch.setattr(scanner, bound, 1)  # HOLD: after each batch; HOLD_PARTS: each part
    commits = _commits(monkeypatch, tmp_path / "a.db")
    summary = app_scan(tmp_path / "b.db", log)
    parts = _parts(tmp_path, log)
    # HOLD_PARTS: a commit a part; HOLD: a commit a batch (a part's last one is short)
    assert len(commits) == parts if bound == "HOLD_PARTS" else len(commits) > 2 * parts
    for held, _, before, expected in commits:
        assert before == expected and (bound == "HOLD" or held == before)
    positions = [lines for _, lines, _, _ in commits if lines]
    assert positions == sorted(positions) and positions[-1] == commits[-1][1] == 6000
    assert summary.stored == alone["stored"] and incidents_of(tmp_path / "b.db") == alone_incidents


def test_a_refused_scan_stops_its_early_producers(tmp_path, log, split_small, monkeypatch):
    db = tmp_path / "p.db"
    app_scan(db, log)
    monkeypatch.setenv("APIWATCH_PSEUDONYMIZE_KEY", "k" * 32)
    with pytest.raises(StoreError, match="refused, nothing was scanned"):
        app_scan(db, log, pseudonymize=True, full=True)
    assert not multiprocessing.active_children()


def test_compressed_input_through_one_producer(tmp_path, log, monkeypatch):
    gz = tmp_path / "access.log.gz"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    alone, alone_incidents = scan(tmp_path / "a.db", log, "-j", "1")
    monkeypatch.setattr(scanner, "IN_PROCESS_BELOW", 0)
    forked, forked_incidents = scan(tmp_path / "b.db", gz, "-j", "2")
    assert (forked["records"], forked["stored"]) == (alone["records"], alone["stored"])
    assert forked_incidents == alone_incidents
    # the same content under another name is recognised: nothing is read again ...
    again, _ = scan(tmp_path / "b.db", log, "-j", "2")
    assert again["stored"] == again["records"] == 0 and again["skipped_bytes"] == log.stat().st_size
    # ... and when made to read it all, nothing is counted twice
    full, full_incidents = scan(tmp_path / "b.db", log, "-j", "2", "--full")
    assert full["stored"] == 0 and full["duplicates"] == alone["llm_observations"]
    assert full_incidents == alone_incidents


def test_split_points_are_line_starts(tmp_path, log):
    from monitor.collectors.base import split_at_lines

    data = log.read_bytes()
    ranges = split_at_lines(str(log), 0, len(data), 7)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert end == start and data[start - 1 : start] == b"\n"


@pytest.mark.parametrize("jobs", [2, 3, 4])
@pytest.mark.parametrize("mb", [10, 40, 70, 100, 150, 240, 1000])
def test_parts_end_together_with_a_short_last_round(jobs, mb):
    """Each producer reads as many parts, of at most ``PART_SIZE`` (part i by producer
    i % jobs); past one round, the last round's parts are ``PART_SIZE / TAIL_SHARE``: what
    is stored after the producers end is that much shorter (issue 15)."""
    todo = mb << 20
    cuts = scanner.part_cuts(todo, jobs)
    bounds = [0, *cuts, todo]
    sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    assert cuts == sorted(cuts) and all(s > 0 for s in sizes)
    assert max(sizes) <= scanner.PART_SIZE
    if todo < jobs * scanner.MIN_PART:  # as before: parts of PART_SIZE, if any
        assert len(sizes) == -(-todo // scanner.PART_SIZE)
        return
    assert len(sizes) % jobs == 0
    read = [sum(sizes[w::jobs]) for w in range(jobs)]
    assert max(read) - min(read) <= jobs  # rounding aside, the same bytes each
    tail = scanner.PART_SIZE // scanner.TAIL_SHARE
    if len(sizes) > jobs:
        assert sizes[-jobs:] == [tail] * jobs and min(sizes[:-jobs]) > tail
    else:
        assert todo < jobs * (scanner.PART_SIZE + tail)


def test_a_split_log_ends_with_its_short_parts(tmp_path, log, monkeypatch):
    """plan() cuts the log where part_cuts says, at line starts, covering it all."""
    monkeypatch.setattr(scanner, "PART_SIZE", 100_000)
    monkeypatch.setattr(scanner, "MIN_PART", 10_000)
    monkeypatch.setattr(scanner, "IN_PROCESS_BELOW", 0)
    app = App(Settings(db=tmp_path / "plan.db"))
    try:
        pipeline = app.pipeline(EgressOptions(egress_country="CN"), CollectOptions(format="squid"))
        parts = scanner.plan(str(log), pipeline, None, 2).parts
    finally:
        app.close()
    data = log.read_bytes()
    ranges = [p.byte_range for p in parts]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data) and len(ranges) % 2 == 0
    for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert end == start and data[start - 1 : start] == b"\n"
    sizes = [b - a for a, b in ranges]
    assert all(abs(s - 12_500) < 200 for s in sizes[-2:]) and min(sizes[:-2]) > 50_000


def test_occurrences_number_identical_records_and_forget_old_hours():
    seen = scanner.Occurrences()
    assert [seen.next("a", 3600.5), seen.next("a", 3600.5), seen.next("b", 3600.5)] == [0, 1, 0]
    for hour in range(2, 40):  # a long log: only the last few hours stay in memory
        seen.next("x", hour * 3600.0)
    assert len(seen._hours) <= scanner.Occurrences.HOURS_KEPT + 1
    assert seen.next("a", 39 * 3600.0) == 0  # another hour: another record


def _reference_numbering(stream: list[tuple[int, str]]) -> list[int]:
    """The nth of each (hour, record id) of a stream as it is defined: the copies of it seen
    before in its hour, an hour being forgotten once one more than ``HOURS_KEPT`` hours
    later is first seen (a dict of counts: no sets, no arrays, no runs)."""
    hours: dict[int, dict[str, int]] = {}
    out = []
    for hour, record_id in stream:
        if hour not in hours:
            hours[hour] = {}
            for old in [h for h in hours if h < hour - scanner.Occurrences.HOURS_KEPT]:
                del hours[old]
        out.append(hours[hour].get(record_id, 0))
        hours[hour][record_id] = out[-1] + 1
    return out


def _numbered(stream: list[tuple[int, str]], sizes: list[int]) -> list[int]:
    """The nth of each (hour, record id) of a stream as :meth:`Occurrences.repeated` numbers
    it over batches of the given sizes (in turn)."""
    items = [(record_id, observation_values(id=observation_id(record_id), ts=hour * 3600.0 + 1,
                                             line=k, day="x"), [])
             for k, (hour, record_id) in enumerate(stream)]  # fmt: skip
    got, seen, start = [0] * len(stream), scanner.Occurrences(), 0
    for k in range(len(stream)):
        end = min(start + sizes[k % len(sizes)], len(stream))
        for i, nth in seen.repeated(Batch.of(items[start:end])):
            got[start + i] = nth
        if (start := end) == len(stream):
            break
    return got


@settings(max_examples=300, deadline=None)
@given(
    runs=st.lists(st.tuples(st.integers(0, 9), st.lists(st.integers(0, 20), min_size=1, max_size=70)),
                  min_size=1, max_size=12),
    sizes=st.lists(st.integers(1, 90), min_size=1, max_size=4),
    compact_from=st.integers(1, 40),
)  # fmt: skip
def test_numbering_is_the_reference_numbering(runs, sizes, compact_from):
    """Identical records numbered batch by batch, or one by one, are numbered as defined
    (:func:`_reference_numbering`) whatever the batches' sizes, with copies within a run and
    across runs, hours going back and forth (some forgotten), and hours past a compaction
    threshold made small, so that sets, arrays beside sets, sets turned arrays on the way
    and long runs numbered as a whole all count."""
    stream = [(hour, f"r{n}") for hour, ns in runs for n in ns]
    with patch.object(scanner._Hour, "COMPACT_FROM", compact_from):
        by_batch = _numbered(stream, sizes)
        seen = scanner.Occurrences()
        one_by_one = [seen.next(record_id, hour * 3600.0) for hour, record_id in stream]
    assert by_batch == one_by_one == _reference_numbering(stream)


def test_busy_hours_are_numbered_as_defined_in_arrays_from_their_start():
    """At the real threshold, in producer-sized batches: busy hours of new ids with copies
    near and far (and an hour seen again after another) are numbered as defined; a long run
    of an hour that began after a busy one goes to an array (no set of its ids), and a
    quiet hour after the busy one is forgotten is a set again."""
    rng = random.Random(15)
    threshold = scanner._Hour.COMPACT_FROM
    stream = []
    for hour in (3, 4, 3):
        fresh = [(hour, f"{hour}-{k}") for k in range(threshold + 3000)]
        stream += fresh + rng.sample(fresh, 300)  # copies within and across batches
    edge = 2 * (threshold + 3300)  # where hour 4's records end and hour 3's begin again
    stream[edge - 1000 : edge + 1000] = rng.sample(stream[edge - 1000 : edge + 1000], 2000)
    assert {h for h, _ in stream[edge - 1000 : edge - 900]} == {3, 4}  # the hours interleaved
    got = _numbered(stream, [scanner.BATCH, 777, scanner.BATCH - 1])
    expected = _reference_numbering(stream)
    wrong = [(k, n, m) for k, (n, m) in enumerate(zip(got, expected, strict=True)) if n != m]
    assert not wrong and max(got) >= 3, wrong[:5]  # (not a diff of lists this long: slow)

    seen = scanner.Occurrences()
    for k in range(threshold):
        seen.next(f"a{k}", 3600.0)
    hours = seen._hours
    assert len(hours[1].array) == threshold and not hours[1].ids
    long = [(f"b{k}", observation_values(id=observation_id(f"b{k}"), ts=7200.0, line=k, day="x"), [])
            for k in range(threshold // 16)]  # fmt: skip
    assert list(seen.repeated(Batch.of(long))) == []
    assert len(hours[2].array) == threshold // 16 and not hours[2].ids  # after a busy hour
    for hour in range(3, 3 + scanner.Occurrences.HOURS_KEPT):
        assert seen.next("c", hour * 3600.0) == 0
    assert 1 not in hours and hours[max(hours)].array is None
    assert hours[max(hours)].ids == {observation_id("c")}


@pytest.mark.parametrize(
    ("text", "size"),
    [("200000", 200000), ("512K", 512 << 10), ("2MB", 2 << 20), ("64MiB", 64 << 20),
     (" 3 g ", 3 << 30), ("1kb", 1 << 10), ("7B", 7)],
)  # fmt: skip
def test_part_size_takes_bytes_or_a_binary_unit(text, size):
    assert scanner.byte_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-5", "1.5M", "2XB", "2iB", "2 T", "\u0663", "9" * 40])
def test_a_part_size_that_is_not_one_is_refused_naming_it(text):
    with pytest.raises(ValueError, match="is not a size") as caught:
        scanner.byte_size(text)
    assert repr(text) in str(caught.value)


def test_a_bad_part_size_stops_a_scan_before_anything_is_written(tmp_path, log):
    """The knob is read when the module loads: a value that is no size stops each scan
    with one line naming it (exit 1, nothing written), and leaves other commands alone."""
    db = tmp_path / "x.db"
    env = {**os.environ, "APIWATCH_PART_SIZE": "2XB\x1b[31m"}
    run = [sys.executable, "-m", "monitor", "--db", str(db)]
    scan = subprocess.run([*run, "scan", str(log)], env=env, capture_output=True, text=True)
    assert scan.returncode == 1 and scan.stdout == ""
    assert scan.stderr == (
        "Error: APIWATCH_PART_SIZE: '2XB\\x1b[31m' is not a size"
        " (bytes, or a number with K, M or G: 2M, 512K)\n"
    )
    assert not db.exists()
    parse = subprocess.run([*run, "parse", str(log)], env=env, capture_output=True, text=True)
    assert parse.returncode == 0 and len(parse.stdout.splitlines()) == 5999
