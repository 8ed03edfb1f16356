"""``apiwatch watch``: follow logs as they are written, evaluate in small batches, alert.

Following is polling with ``tail -F`` semantics over the scanner, so read positions are the
ones ``scan`` and ``daily`` keep: stopping and starting ``watch``, or alternating it with
``scan``, never counts a line twice or skips one. Every ``interval`` each followed file
whose size, inode or mtime changed is scanned from its committed position; a file that was
rotated away (the name now points at a new inode) is read to its end first, under the name
it has now (``access.log.1``), found by its inode. Committed batches raise finding events,
which are delivered right after (sinks that fail are retried with backoff). A heartbeat
line goes to the log every ``heartbeat`` seconds; under systemd ``Type=notify`` the service
reports ready, its status and stopping through ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.alerts import Dispatcher
from monitor.collectors import InputError
from monitor.collectors.base import MAX_PROBLEMS_KEPT, Problem
from monitor.config import Source
from monitor.live import LiveCapture
from monitor.pipeline import SCAN_COUNTS, Pipeline, ScanSummary, incident_counts
from monitor.scanner import Scanner
from monitor.store import COL, Store

DIGEST_CHECK = 30.0  # seconds between looks for held-back digest counts (and upkeep)
LOOK_EVERY = 2.0  # seconds between looks at the outbox for events of other processes
CORRELATE_EVERY = 300.0  # seconds between correlation runs (egress-hopping) while following


class Upkeep:
    """What a long-running ``watch`` does besides reading, as ``scan`` does after each run:
    brings exceptions up to date (one that ran out alerts without any traffic), and runs
    the correlation rules over the history — while following, over yesterday and today
    (UTC) at most every ``CORRELATE_EVERY`` seconds when something was stored; when it
    stops, once more (over every day this watch stored, if it never ran)."""

    def __init__(self, app: Any, scan_id: int, totals: WatchTotals,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.app, self.scan_id, self.totals, self.clock = app, scan_id, totals, clock
        self._correlated = (clock(), 0)  # (when, observations stored by then)

    def __call__(self) -> None:
        self.app.apply_exceptions()
        at, stored = self._correlated
        if self.totals.stored > stored and self.clock() - at >= CORRELATE_EVERY:
            self._correlate(self._recent())

    @staticmethod
    def _recent() -> list[str]:
        """Yesterday and today (UTC)."""
        now = time.time()
        return sorted({time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (now - 86400, now)})

    def finish(self) -> None:
        stored = self._correlated[1]
        if self.totals.stored > stored:  # never ran: every day read (a backlog, too)
            self._correlate(self._recent() if stored else None)

    def _correlate(self, days: list[str] | None) -> None:
        self._correlated = (self.clock(), self.totals.stored)
        self.app.correlate([self.scan_id], days)


@dataclass
class Followed:
    """One followed input: a path or glob with the pipeline of its egress options."""

    pattern: str
    pipeline: Pipeline
    label: str


@dataclass
class _Held:
    """The file a name pointed at when last read, kept open so that once rotated away it
    can still be finished (even if it was deleted)."""

    dev: int
    ino: int
    fd: int


@dataclass
class WatchTotals:
    records: int = 0
    malformed: int = 0
    llm_observations: int = 0
    stored: int = 0
    duplicates: int = 0
    incidents_new: set[str] = field(default_factory=set)
    incidents_updated: set[str] = field(default_factory=set)
    alerts_sent: int = 0
    problems: list[Problem] = field(default_factory=list)
    file_errors: list[Problem] = field(default_factory=list)

    def add(self, s: ScanSummary) -> None:
        for k in SCAN_COUNTS:
            setattr(self, k, getattr(self, k) + getattr(s, k))
        self.incidents_new |= s.incidents_new
        self.incidents_updated |= s.incidents_updated
        room = max(0, MAX_PROBLEMS_KEPT - len(self.problems))
        self.problems.extend(s.diag.problems[:room])
        self.file_errors.extend(
            s.diag.file_errors[: max(0, MAX_PROBLEMS_KEPT - len(self.file_errors))]
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in SCAN_COUNTS},
            **incident_counts(self.incidents_new, self.incidents_updated),
            "alerts_sent": self.alerts_sent,
            "file_errors": [str(p) for p in self.file_errors],
        }


class Follower:
    """Polls followed inputs and scans what changed, in this process."""

    def __init__(self, store: Store, inputs: list[Followed], scan_id: int,
                 log: Callable[[str], None]):  # fmt: skip
        self.store = store
        self.inputs = inputs
        self.scan_id = scan_id
        self.log = log
        self.totals = WatchTotals()
        self._seen: dict[str, tuple[int, int, int, int]] = {}
        self._held: dict[str, _Held] = {}
        self._reported: set[str] = set()  # errors said once, not every poll

    def poll(self) -> int:
        """One pass: returns the records read."""
        # imported here: monitor.daily loads the report stack (pandas), which every CLI
        # command (``apiwatch parse`` too) would otherwise pay for at start-up
        from monitor.daily import expand

        before = self.totals.records
        for inp in self.inputs:
            for path in expand(Source(path=inp.pattern, optional=True)):
                self._poll_file(inp, path)
        return self.totals.records - before

    def _poll_file(self, inp: Followed, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return  # between a rotation's rename and create: next time
        held = self._held.get(path)
        if held is not None and (held.dev, held.ino) != (st.st_dev, st.st_ino):
            self._finish_rotated(inp, path, held)
            held = None
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._seen.get(path) == sig:
            return
        if held is None:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                fst = os.fstat(fd)
                self._held[path] = _Held(fst.st_dev, fst.st_ino, fd)
        self._scan(inp, path)
        self._seen[path] = sig  # as stat saw it before the read: growth since is read next

    def _finish_rotated(self, inp: Followed, path: str, held: _Held) -> None:
        """Read the rest of the file ``path`` named before it was rotated away."""
        now_named = None
        directory = Path(path).parent
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.inode() == held.ino and entry.is_file():
                    now_named = entry.path
                    break
        self._scan(inp, now_named or f"/proc/self/fd/{held.fd}")
        os.close(held.fd)
        del self._held[path]

    def _scan(self, inp: Followed, path: str) -> None:
        try:
            summary = Scanner(inp.pipeline, self.store, jobs=None).run([path], self.scan_id)
        except InputError as exc:
            summary = ScanSummary()
            summary.diag.file_error(path, str(exc))
        self.totals.add(summary)
        for p in summary.diag.file_errors:
            if str(p) not in self._reported:
                self._reported.add(str(p))
                self.log(f"error: {p}")
        for p in summary.diag.problems[:5]:
            self.log(f"malformed: {p}")

    def close(self) -> None:
        for held in self._held.values():
            os.close(held.fd)
        self._held.clear()


class Notifier:
    """systemd's notify protocol (sd_notify), when ``$NOTIFY_SOCKET`` is set."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET")
        self.address = ("\0" + address[1:]) if address and address.startswith("@") else address

    def __call__(self, message: str) -> None:
        if not self.address:
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(self.address)
            s.sendall(message.encode())


def watch(
    store: Store,
    dispatcher: Dispatcher | None,
    inputs: list[Followed],
    scan_id: int,
    stop: threading.Event,
    *,
    interval: float = 0.5,
    heartbeat: float = 60.0,
    log: Callable[[str], None] = print,
    captures: Sequence[LiveCapture] = (),
    upkeep: Callable[[], object] | None = None,
    totals: WatchTotals | None = None,
) -> WatchTotals:
    """Follow until ``stop`` is set; returns the totals. Everything read is committed batch
    by batch, so stopping (or dying) at any point loses nothing and repeats nothing.
    ``upkeep`` runs with the digest check (exceptions that ran out: without traffic)."""
    follower = Follower(store, inputs, scan_id, log)
    if totals is not None:  # the caller's, to read while following (see Upkeep)
        follower.totals = totals
    notify = Notifier()
    totals = follower.totals
    last_beat = last_digest = time.monotonic()
    beat_records = 0
    notify("READY=1")
    try:
        while not stop.is_set():
            follower.poll()
            for capture in captures:
                store_live(store, capture, scan_id, totals)
                if not capture.alive:
                    log(f"error: {capture.source}: tcpdump stopped; watch stops too")
                    totals.file_errors.append(Problem(capture.source, 0, "tcpdump stopped"))
                    stop.set()
            now = time.monotonic()
            if now - last_digest >= DIGEST_CHECK:
                if upkeep is not None:
                    upkeep()
                store.emit_digests()
                last_digest = now
            if dispatcher is not None:
                delivery = dispatcher.deliver_due(LOOK_EVERY)
                totals.alerts_sent += sum(delivery.sent.values())
                for name, error in delivery.failed.items():
                    log(f"warning: alerts: sink {name} failed, retrying with backoff: {error}")
            if heartbeat and now - last_beat >= heartbeat:
                line = _heartbeat(store, totals, totals.records - beat_records, now - last_beat)
                log(line)
                notify(f"STATUS={line}")
                last_beat, beat_records = now, totals.records
            stop.wait(interval)
    finally:
        notify("STOPPING=1")
        follower.close()
        for capture in captures:  # flows still open are reported, and stored
            capture.close()
            store_live(store, capture, scan_id, totals)
    return totals


def store_live(store: Store, capture: LiveCapture, scan_id: int, totals: WatchTotals) -> None:
    """Store what a live capture found since the last call, in one transaction."""
    found = capture.drain()
    if not found:
        return
    batch = []
    for _record_id, row, incidents in capture.pipeline.records(found):
        row[COL["scan_id"]] = scan_id
        batch.append((row, incidents))
    summary = ScanSummary(llm_observations=len(batch))
    summary.account(store.ingest(scan_id, batch))
    summary.records = summary.llm_observations
    totals.add(summary)


def _heartbeat(store: Store, totals: WatchTotals, records: int, seconds: float) -> str:
    pending = sum(s["pending"] for s in store.outbox_status())
    oldest = min(
        (s["oldest_pending"] for s in store.outbox_status() if s["oldest_pending"]), default=None
    )
    lag = 0.0  # age of the oldest alert not yet delivered
    if oldest:
        lag = max(0.0, time.time() - calendar.timegm(time.strptime(oldest, "%Y-%m-%dT%H:%M:%SZ")))
    return (
        f"watch: heartbeat: {records / seconds if seconds else 0:.1f} records/s, "
        f"{totals.records} records, {totals.llm_observations} LLM, "
        f"{len(totals.incidents_new)} new incident(s), {totals.alerts_sent} alert(s) sent, "
        f"{pending} pending, lag {lag:.1f} s"
    )
