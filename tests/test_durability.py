"""Crash safety and concurrency with real processes on one real SQLite file."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import monitor.scanner as scanner
from monitor.store import Store

ROOT = Path(__file__).resolve().parents[1]
HOSTS = [
    "api.openai.com",
    "api.anthropic.com",
    "openrouter.ai",
    "github.com",
    "pypi.org",
    "example.org",
]


def make_log(path: Path, lines: int, seed: int, hosts: list[str] = HOSTS) -> None:
    rnd = random.Random(seed)
    with open(path, "w") as f:
        for i in range(lines):
            host = rnd.choice(hosts)
            f.write(
                f"{1795741200 + i * 0.05:.3f} {rnd.randint(1, 9999):6d} 10.1.{rnd.randint(0, 3)}.{rnd.randint(1, 50)} "
                f"TCP_TUNNEL/200 {rnd.randint(100, 99999)} CONNECT {host}:443 - HIER_DIRECT/1.2.3.4 -\n"
            )


def apiwatch(db: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "--db", str(db), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def incidents(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return sorted(
            con.execute("SELECT id, count, bytes_in, first_seen, last_seen, blocked FROM incidents")
        )
    finally:
        con.close()


def committed(db: Path, sql: str) -> int:
    """What ``sql`` counts of what is committed (0 while the database or its schema does
    not exist yet)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(sql).fetchone()[0] or 0
    except sqlite3.OperationalError:  # no schema yet
        return 0
    finally:
        con.close()


def stored(db: Path) -> int:
    """Observations committed so far."""
    return committed(db, "SELECT count(*) FROM observations")


def run_ok(db: Path, *args: str) -> dict:
    proc = apiwatch(db, *args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out)


# Small parts, so that kills land between commit points.
SMALL_PARTS = {"APIWATCH_PART_SIZE": "200000"}


def kill_once_writing(proc: subprocess.Popen, progress: Callable[[], int], rnd: random.Random,
                      within: float, poll: float = 0.02, wait: float = 120) -> bool:  # fmt: skip
    """SIGKILL a scan at a random moment ``within`` seconds after ``progress()`` (what it
    committed) first changes; whether it was killed (it may have finished first)."""
    before, deadline = progress(), time.monotonic() + wait
    while proc.poll() is None and time.monotonic() < deadline and progress() == before:
        time.sleep(poll)
    time.sleep(rnd.uniform(0.0, within))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    return True


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("logs")
    paths = [d / "a.log", d / "b.log"]
    make_log(paths[0], 60_000, 1)
    make_log(paths[1], 30_000, 2)
    return paths


@pytest.fixture(scope="module")
def reference(tmp_path_factory, logs):
    db = tmp_path_factory.mktemp("ref") / "ref.db"
    run_ok(db, "scan", *map(str, logs), "--egress-country", "CN", "--json", "-j", "1")
    return incidents(db)


def test_kill_minus_nine_then_rerun_equals_uninterrupted(tmp_path, logs, reference):
    db = tmp_path / "crash.db"
    rnd = random.Random(7)
    kills = 0
    for _attempt in range(6):
        proc = apiwatch(
            db,
            "scan",
            *map(str, logs),
            "--egress-country",
            "CN",
            "--json",
            "-j",
            "2",
            env=SMALL_PARTS,
        )
        # kill once the scan is really writing, at a random moment after that: these scans
        # end about 0.13 s after their first commit on a quiet machine (batches made in C)
        kills += kill_once_writing(proc, lambda: stored(db), rnd, 0.1, poll=0.05, wait=60)
        proc.communicate(timeout=60)
    summary = run_ok(db, "scan", *map(str, logs), "--egress-country", "CN", "--json")
    assert kills >= 1, "every run finished before it could be killed: make the logs bigger"
    assert incidents(db) == reference
    # the last run resumed rather than re-reading everything
    assert summary["skipped_bytes"] > 0 or summary["duplicates"] > 0
    check = run_ok(db, "db", "check", "--json")
    assert check["integrity"] == "ok"


def sources(db: Path) -> int:
    """Read positions committed so far."""
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM sources").fetchone()[0]
    finally:
        con.close()


def test_kill_between_the_transactions_of_a_part_then_rerun_resumes_exactly(tmp_path):
    """A big part's batches are committed every ``FLUSH`` observations, its read position
    with the last: killed after some were, a re-run reads the part again, skips exactly what
    was stored and ends where an uninterrupted scan ends."""
    log = tmp_path / "llm.log"
    make_log(log, 100_000, 3, HOSTS[:3])  # 9 MB, all LLM: one part, a producer, 5 batches
    ref = tmp_path / "ref.db"
    whole = run_ok(ref, "scan", str(log), "--egress-country", "CN", "--json", "-j", "1")
    killed_after = 0
    for attempt in range(5):
        db = tmp_path / f"crash{attempt}.db"
        proc = apiwatch(db, "scan", str(log), "--egress-country", "CN", "--json", "-j", "2")
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not stored(db):
            time.sleep(0.02)
        if proc.poll() is None and not sources(db):
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        killed_after = stored(db)
        if proc.returncode == -signal.SIGKILL and killed_after and not sources(db):
            break  # batches of the part committed, its read position not
    else:
        pytest.fail("no kill landed between the first batch and the end of the part")
    assert 0 < killed_after < whole["stored"]
    again = run_ok(db, "scan", str(log), "--egress-country", "CN", "--json", "-j", "2")
    assert again["skipped_bytes"] == 0  # no read position: the part is read again ...
    assert again["duplicates"] == killed_after  # ... and what was stored is skipped
    assert again["stored"] + killed_after == whole["stored"] == stored(db)
    assert incidents(db) == incidents(ref)


def test_kill_while_a_transaction_spans_parts_then_rerun_resumes_exactly(tmp_path):
    """One transaction spans a split log's parts, committed every ``HOLD_PARTS`` of them
    with the read position after the last: killed while parts that ended are held
    uncommitted, every committed position has exactly the observations of the lines
    before it, and a re-run reads on from there to where an uninterrupted scan ends."""
    log = tmp_path / "llm.log"
    make_log(log, 240_000, 4)  # 20 MB: 20 parts of 1 MB, a commit every 3
    ref = tmp_path / "ref.db"
    whole = run_ok(ref, "scan", str(log), "--egress-country", "CN", "--json", "-j", "1")
    script = (
        "import sys, monitor.scanner as s\n"
        "s.PART_SIZE = s.MIN_PART = 1 << 20\n"
        "s.HOLD_PARTS = 3\n"
        "from monitor.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    rnd, kills = random.Random(11), 0
    db = tmp_path / "crash.db"
    for _attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, "--db", str(db), "scan", str(log), "--egress-country",
             "CN", "--json", "-j", "2"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        kills += kill_once_writing(proc, lambda: read_lines(db), rnd, 0.5)
        proc.communicate(timeout=60)
        lines = read_lines(db)
        assert lines > 0 and stored(db) == observations_before(ref, lines)
        assert rolled_up(db) == stored(db)  # part by part in the transactions: those committed
    assert kills >= 1, "every run finished before it could be killed: make the log bigger"
    again = run_ok(db, "scan", str(log), "--egress-country", "CN", "--json", "-j", "2")
    assert again["skipped_bytes"] > 0 and again["duplicates"] == 0
    assert stored(db) == whole["stored"] and incidents(db) == incidents(ref)
    assert rolled_up(db) == stored(db)


def rolled_up(db: Path) -> int:
    """The requests the roll-ups sum (the same in each), all numbered up to the mark."""
    con = sqlite3.connect(db)
    try:
        mark = con.execute("SELECT value FROM meta WHERE key = 'rolled_up_to'").fetchone()[0]
        assert int(mark) == con.execute("SELECT coalesce(max(n), 0) FROM obs_rows").fetchone()[0]
        sums = {t: con.execute(f"SELECT sum(requests) FROM {t}").fetchone()[0]  # noqa: S608
                for t in ("obs_rollup", "obs_hourly", "obs_context_totals", "obs_monthly")}  # fmt: skip
        assert len(set(sums.values())) == 1, sums
        return sums["obs_rollup"]
    finally:
        con.close()


def read_lines(db: Path) -> int:
    """The lines of the read position committed (0: none yet)."""
    return committed(db, "SELECT max(lines) FROM sources")


def observations_before(db: Path, lines: int) -> int:
    """The observations ``db`` holds of the first ``lines`` lines."""
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM obs_rows WHERE line <= ?", [lines]).fetchone()[0]
    finally:
        con.close()


def test_concurrent_scans_of_the_same_and_different_files(tmp_path, logs, reference):
    db = tmp_path / "shared.db"
    procs = [
        apiwatch(db, "scan", str(logs[0]), "--egress-country", "CN", "--json", "--full"),
        apiwatch(
            db, "scan", str(logs[0]), str(logs[1]), "--egress-country", "CN", "--json", "--full"
        ),
        apiwatch(db, "scan", str(logs[1]), "--egress-country", "CN", "--json", "--full"),
    ]
    # a query during the scans answers promptly (WAL readers do not wait for writers)
    time.sleep(0.5)
    started = time.monotonic()
    query = apiwatch(db, "incidents", "--json", "--limit", "5")
    query.communicate(timeout=60)
    assert query.returncode == 0 and time.monotonic() - started < 20
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert incidents(db) == reference


def test_part_size_knob_is_honoured(monkeypatch):
    # the crash test relies on small parts: the knob must reach the scanner
    monkeypatch.setenv("APIWATCH_PART_SIZE", "12345")
    import importlib

    reloaded = importlib.reload(scanner)
    try:
        assert reloaded.PART_SIZE == 12345
    finally:
        monkeypatch.delenv("APIWATCH_PART_SIZE")
        importlib.reload(scanner)


def _open_when_told(path: Path, go, answers) -> None:
    go.wait()
    try:
        Store(path)
        answers.put("ok")
    except Exception as exc:  # noqa: BLE001 - the answer is what the test reads
        answers.put(f"{type(exc).__name__}: {exc}")


def test_processes_creating_one_database_together_all_open_it(tmp_path):
    """First scans started together on a new file all get the database: the switch to WAL
    (which SQLite refuses at once, without the busy timeout, while another process has the
    new file) is waited for, and a schema committed between two reads is not taken for
    someone else's file. Six processes, released at once, thirty new files."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    failures = []
    for trial in range(30):
        path = tmp_path / f"new{trial}.db"
        go, answers = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open_when_told, args=(path, go, answers)) for _ in range(6)]
        for proc in procs:
            proc.start()
        go.set()
        got = [answers.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        failures += [g for g in got if g != "ok"]
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert failures == []
