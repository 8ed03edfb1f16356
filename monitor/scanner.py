"""Running the pipeline over inputs: incrementally, in parallel where it pays, crash-safe.

**Incremental.** Each source is known by a digest of its first bytes of content, so a log
keeps its identity when it is renamed by rotation or compressed (``access.log`` →
``access.log.1`` → ``access.log.1.gz``). The store remembers how much of that content was
read; a re-scan reads only what is new. A file truncated in place (copytruncate) starts
with new content, hence a new identity, and is read from the start. ``full=True`` ignores
what was read before. Either way nothing is counted twice: observation ids are digests of
the records, and the store skips ids it already holds.

**Parallel.** Parsing is the expensive part and storing must happen in one process, so
producer processes run the record path (:meth:`monitor.pipeline.Pipeline.process`) and the
main process stores. A big plain log is cut at line boundaries into parts of at most ``PART_SIZE``
bytes, as many for each producer and the last ones short (:func:`part_cuts`); at most ``jobs``
producers run ahead of the part being stored. Parts are stored in file
order, so ids, line numbers and de-duplication do not depend on ``jobs``.

**Crash-safe.** The read position after a part is committed in the same transaction as
the data that part produced, never before it. ``kill -9`` at any moment loses at most what
the open transaction holds, which the next run reads again (and de-duplicates).

**Storing as batches come.** Batches are stored as they come, in one transaction
(:class:`monitor.store.Ingestion`): rows, dictionary entries, incident deltas and hit links
at once, while the producers read on; a batch's rows are inserted (by SQLite, in a thread of
their own) while the batch before's incident deltas are added and the next batch is
received; the batches' roll-up rows are summed in memory as they come, and each part's rows
no batch's roll-up rows cover gathered as the next is read; the per-transaction work (each
incident touched, findings, the roll-ups' totals) once, at the commit, so that little is
left after the last part. One transaction spans the parts of an input: each incident it
touches is rewritten once, however many parts brought it requests (a busy incident recurs in
every part), and so are the indexes' pages. It commits at the end of the input, or once it
holds ``HOLD`` observations (what memory and a kill may lose are bounded by that) or
``HOLD_PARTS`` parts ended in it (so are the bytes a re-run reads again); an input read as
one part, whose end may be far, every ``FLUSH`` observations; a part whose end is not known
(standard input, a compressed input) also whenever no other message waits, so that what was
read is stored while the input stays open.
"""

from __future__ import annotations

import gc
import hashlib
import io
import multiprocessing as mp
import os
import queue
import re
import signal
import sys
import traceback
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from monitor.batch import ROW_ID, Batch, BatchStream, BatchTable, known_in, merged_new
from monitor.collectors import (
    FORMAT_NAMES,
    LINE_FORMATS,
    Diagnostics,
    InputError,
    format_of,
    note_misread,
    spec_of,
)
from monitor.collectors.base import (
    MAX_PROBLEMS_KEPT,
    cut_at_lines,
    is_compressed,
    is_url,
    last_line_end,
    read_head,
)
from monitor.errors import ApiwatchError
from monitor.ids import observation_id
from monitor.pipeline import Part, Pipeline, ScanSummary

if TYPE_CHECKING:  # the store loads after the producers have started (see Scanner.start)
    from monitor.store import Ingestion, Store

BATCH = 20_000  # records per producer message: the store works per batch, per incident
GC_THRESHOLD = 50_000  # allocations between young collections during a scan (default 700)
#: observations per store transaction: an incident recurs in fewer of them (see above)
HOLD = 500_000
HOLD_PARTS = 8  # parts one transaction may span (512 MB of a plain log)
FLUSH = 50_000  # observations per transaction of an input read as one part
HEAD_BYTES = 4096  # identity of a source: a digest of this much of its content
#: inputs smaller than this are parsed in the main process: forking would cost more
IN_PROCESS_BELOW = 8 << 20
PART_ENV = "APIWATCH_PART_SIZE"
_DEFAULT_PART_SIZE = 64 << 20
_SIZE = re.compile(r"\s*([0-9]{1,15})\s*(?:([KMG])(?:I?B)?|B)?\s*", re.IGNORECASE)


def byte_size(text: str) -> int:
    """A positive size in bytes from ``text``: a whole number, optionally followed by K, M or
    G (powers of 1024, as in Squid's and rsync's settings; ``B`` or ``iB`` may follow, any
    case: ``200000``, ``512K``, ``2MB``, ``64MiB``). ValueError names what is wrong."""
    m = _SIZE.fullmatch(text)
    if m is None or int(m[1]) == 0:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M or G: 2M, 512K)")
    return int(m[1]) << {None: 0, "K": 10, "M": 20, "G": 30}[m[2] and m[2].upper()]


def _part_size() -> tuple[int, str | None]:
    """``APIWATCH_PART_SIZE`` (default 64 MiB) and what is wrong with it, if anything: a
    scan then stops with that one line (:class:`Scanner`), any other command is unaffected."""
    text = os.environ.get(PART_ENV)
    if text is None:
        return _DEFAULT_PART_SIZE, None
    try:
        return byte_size(text), None
    except ValueError as exc:
        return _DEFAULT_PART_SIZE, f"{PART_ENV}: {exc}"


#: bytes of a big plain log between commit points (``APIWATCH_PART_SIZE`` to tune)
PART_SIZE, PART_SIZE_PROBLEM = _part_size()
TAIL_SHARE = 8  # see part_cuts
MIN_PART = 16 << 20
_QUEUE_BATCHES = 2  # bounded hand-over: producers wait rather than fill memory


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class SourcePlan:
    path: str
    parts: list[Part]
    fork: bool
    key: str | None = None  # identity (None: stdin, unreadable, or not resumable)
    state: dict[str, Any] | None = None  # what to commit, advanced part by part
    complete_end: int | None = None  # plain files: offset after the last complete line


def part_cuts(todo: int, jobs: int) -> list[int]:
    """Where to cut ``todo`` bytes read by ``jobs`` producers (offsets, ascending): parts of
    at most ``PART_SIZE``, as many for each producer (part i is read by producer i % jobs),
    so that they end together (unless a line longer than a part drops a cut: balance only);
    and, when there are several rounds of them, a last round of
    parts of ``PART_SIZE / TAIL_SHARE``: what is stored after the producers end (their last
    parts, which the storing process takes only then) is that much shorter."""
    if todo < jobs * MIN_PART:  # too little for all: parts of PART_SIZE
        n = -(-todo // PART_SIZE)
        return [todo * i // n for i in range(1, n)]
    body, tail = todo, 0
    if todo >= jobs * (PART_SIZE + PART_SIZE // TAIL_SHARE):
        tail = jobs * (PART_SIZE // TAIL_SHARE)
        body -= tail
    rounds = -(-body // (jobs * PART_SIZE))
    n = rounds * jobs
    cuts = [body * i // n for i in range(1, n)]
    if tail:
        cuts += [body + tail * i // jobs for i in range(jobs)]
    return cuts


def source_key(head: bytes) -> str:
    return hashlib.sha256(head).hexdigest()


def plan(
    path: str, pipeline: Pipeline, store: Store | None, jobs: int, full: bool = False
) -> SourcePlan:
    """Decide what to read of one input and how to split it."""
    if path == "-":  # a producer reads it when it is a file descriptor it can inherit
        return SourcePlan(path, [Part(path)], fork=jobs > 1 and _stdin_fd() is not None)
    if is_url(path):  # read whole, where the producer runs (no resume position yet)
        return SourcePlan(path, [Part(path)], fork=jobs > 1)
    p = Path(path)
    if not p.is_file():
        return SourcePlan(path, [Part(path)], fork=False)  # open_input reports the error
    st = p.stat()
    fmt = format_of(path, pipeline.collect_options)
    if fmt not in LINE_FORMATS:  # captures: read whole (ids de-duplicate a re-read)
        return SourcePlan(path, [Part(path, fmt)], fork=jobs > 1 and st.st_size >= IN_PROCESS_BELOW)
    # a file shorter than HEAD_BYTES is known by all of it: once it grows, it is a new
    # identity and is read whole again (ids de-duplicate), but unchanged it is not re-read
    head = read_head(path, HEAD_BYTES)
    key = source_key(head)
    state = None if (store is None or full) else store.source_state(key)
    compressed = is_compressed(path)
    start, lines = 0, 0
    if state and (compressed or state["offset"] <= st.st_size):
        start, lines = state["offset"], state["lines"]
    new_state = {"key": key, "head_len": len(head), "path": str(p.resolve()), "device": st.st_dev,
                 "inode": st.st_ino, "size": st.st_size, "offset": start, "lines": lines}  # fmt: skip
    if compressed:
        return SourcePlan(path, [Part(path, fmt, skip=start)], jobs > 1 and st.st_size >= IN_PROCESS_BELOW // 4,
                          key, new_state)  # fmt: skip
    size = st.st_size
    end_complete = last_line_end(path, start, size)
    todo = size - start
    if jobs <= 1 or todo < IN_PROCESS_BELOW:
        ranges = [(start, size)]
    else:
        ranges = cut_at_lines(path, start, size, part_cuts(todo, jobs))
    parts = [Part(path, fmt, r) for r in ranges]
    return SourcePlan(
        path, parts, jobs > 1 and todo >= IN_PROCESS_BELOW, key, new_state, end_complete
    )


class Occurrences:
    """Numbers identical records (the 2nd copy of a line is a second request), remembering
    only the last few hours of log time: identical records share their timestamp and logs
    run in time order, so memory stays flat however long the file is.

    Records are known by their observation id (``observation_id(record_id)``, which the
    producers computed: the stored id of a first copy), so an hour holds integers, not the
    record ids' strings, and a busy hour holds them compactly (see :class:`_Hour`)."""

    HOURS_KEPT = 3

    def __init__(self) -> None:
        self._hours: dict[int, _Hour] = {}

    def _hour(self, hour: int) -> _Hour:
        seen = self._hours.get(hour)
        if seen is None:
            for old in [h for h in self._hours if h < hour - self.HOURS_KEPT]:
                del self._hours[old]
            # in a busy log (an hour kept is busy), an array from the start
            seen = self._hours[hour] = _Hour(any(h.busy for h in self._hours.values()))
        return seen

    def next(self, record_id: str, ts: float) -> int:
        """How many copies of this record came before it (0: the first)."""
        repeats = self._hour(int(ts // 3600)).number([observation_id(record_id)])
        return repeats[0][1] if repeats else 0

    def repeated(self, batch: Batch) -> Iterator[tuple[int, int]]:
        """:meth:`next` of each record of a batch, in order: (index, nth) of those with
        an nth (a run of one hour at a time)."""
        if batch.record_ids is None:
            return
        ids = batch.columns[ROW_ID]  # as produced: the first copy's, for every record
        start = 0
        for hour, end in batch.hours:
            for i, nth in self._hour(hour).number(ids[start:end]):
                yield start + i, nth
            start = end


class _Hour:
    """The records of one hour of log time seen so far, by observation id: a set while it
    is small, then (from :attr:`COMPACT_FROM` ids on, or from its start in a busy log) a
    sorted array of int64, 8 bytes an id outside Python's small-object heap, whose arenas
    the ids of a busy hour (arriving batch by batch among short-lived rows) would otherwise
    keep from being freed, beside a set of those added since it was last merged. A long
    run (a sixteenth of :attr:`COMPACT_FROM` or of the array, whichever is more) on an
    array is numbered as a whole (:func:`monitor.batch.merged_new`, in C when it is built):
    one of all new ids (the common case) is sorted and merged with no Python object per
    id. Ids seen more than once also count their copies."""

    COMPACT_FROM = 1 << 14
    __slots__ = ("ids", "array", "copies")

    def __init__(self, compact: bool = False) -> None:
        self.ids: set[int] = set()  # those not in the array (fewer than COMPACT_FROM)
        self.array: array | None = None  # (made only for hours this busy)
        self.copies: dict[int, int] = {}  # id -> copies seen (of ids seen twice or more)
        if compact:
            self._compact()

    @property
    def busy(self) -> bool:
        """Whether the hour holds :attr:`COMPACT_FROM` ids or more."""
        return self.array is not None and len(self.array) >= self.COMPACT_FROM

    def number(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """Add a run of records: (index, nth) of those that are not the first copy."""
        # a run merged into the array costs the array's length: runs of a sixteenth of it or
        # more, so that an hour costs a bounded multiple of its ids (shorter ones: the set)
        size = 0 if self.array is None else len(self.array)
        if len(ids) * 16 >= max(self.COMPACT_FROM, size) and (
            self.array is not None or len(self.ids) + len(ids) >= self.COMPACT_FROM
        ):
            return self._number_long(ids)
        known = [False] * len(ids) if self.array is None else known_in(self.array, ids)
        fresh = set(ids)
        if len(fresh) == len(ids) and self.ids.isdisjoint(fresh) and not any(known):
            self._add(fresh)  # the common case: all new
            return []
        return self._numbered(ids, known)

    def _number_long(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """:meth:`number` of a long run, as a whole (the hour is an array from now on)."""
        self._compact()
        assert self.array is not None
        merged = merged_new(self.array, ids)
        if merged is not None:  # the common case: all new
            self.array = merged
            return []
        return self._numbered(ids, known_in(self.array, ids))

    def _numbered(self, ids: Sequence[int], known: list[bool]) -> list[tuple[int, int]]:
        """:meth:`number` record by record (the run has copies); ``known``: whether each
        id is in the array."""
        repeats, first = [], set()
        for i, oid in enumerate(ids):
            nth = self.copies.get(oid)
            if nth is None:
                if oid not in self.ids and not known[i] and oid not in first:
                    first.add(oid)
                    continue
                nth = 1
            self.copies[oid] = nth + 1
            repeats.append((i, nth))
        self._add(first)
        return repeats

    def _add(self, ids: set[int]) -> None:
        self.ids.update(ids)
        if len(self.ids) >= self.COMPACT_FROM:
            self._compact()

    def _compact(self) -> None:
        """Merge the set into the array (made if there is none)."""
        if self.array is None or self.ids:
            merged = merged_new(array("q") if self.array is None else self.array, self.ids)
            assert merged is not None, "the set's ids are not in the array"
            self.array, self.ids = merged, set()


def part_messages(pipeline: Pipeline, part: Part, on_read=None) -> Iterator[tuple[str, Any]]:
    """What a producer says about one part: ("batch", :class:`Batch`)… then ("done",
    diagnostics), or ("input-error", message). The same stream whether produced here, in a
    child or on a cluster: the per-record work of storing is done here (see
    :mod:`monitor.batch`), and each incident row is sent once (the batches are one
    :class:`BatchStream`'s: the storing process decodes them in order with a
    :class:`BatchTable` of the part's own)."""
    diag = Diagnostics()
    stream = BatchStream()
    try:
        for batch in pipeline.process(part, diag, on_read, BATCH):
            yield "batch", stream.encode(batch)
        yield "done", diag
    except InputError as exc:
        yield "input-error", str(exc)


# -- producer processes -------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """A producer must not outlive a killed scan (it would wait forever on a full queue)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _stdin_fd() -> int | None:
    """The file descriptor behind ``sys.stdin`` (None: not a file, as under a test runner)."""
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return None


def _put(out: mp.Queue, item: Any, parent: int) -> None:
    while True:
        try:
            out.put(item, timeout=1)
            return
        except queue.Full:
            if os.getppid() != parent:
                os._exit(1)


def _producer(pipeline: Pipeline, parts: list[Part], out: mp.Queue, progress, parent: int,
              stdin: int | None = None) -> None:  # fmt: skip
    """Child process body: forward :func:`part_messages` of each part, in order, to the
    parent, then exit. One process reads several parts so that its caches stay warm.
    ``stdin``: a copy of the parent's standard input, which multiprocessing closes in a
    child (reading ``-`` there would otherwise find nothing).

    Without the cycle collector: the record path makes no cycles (a few dozen unreachable
    objects over a million lines), yet with it on, each collection walks the memo and the
    collector's caches, which grow with the input (a tenth of a producer's CPU at 25 % LLM
    lines); the process exits when the scan ends."""
    _die_with_parent(parent)
    gc.disable()
    if stdin is not None:
        sys.stdin = open(stdin)  # noqa: SIM115 - the process's standard input until it exits

    def on_read(n: int) -> None:
        with progress.get_lock():
            progress.value += n

    try:
        for part in parts:
            for message in part_messages(pipeline, part, on_read):
                _put(out, message, parent)
    except BaseException:  # a bug: report it to the parent rather than die silently
        _put(out, ("crash", traceback.format_exc()), parent)


class _Remote:
    """The parent's view of one producer process and the parts it reads, in order."""

    def __init__(self, ctx, pipeline: Pipeline, parts: list[Part]):
        self.queue = ctx.Queue(_QUEUE_BATCHES)
        self.progress = ctx.Value("q", 0)
        self.seen_progress = 0
        fd = _stdin_fd() if any(part.path == "-" for part in parts) else None
        stdin = None if fd is None else os.dup(fd)
        self.process = ctx.Process(
            target=_producer,
            args=(pipeline, parts, self.queue, self.progress, os.getpid(), stdin),
            daemon=True,
        )
        try:
            self.process.start()
        finally:
            if stdin is not None:
                os.close(stdin)  # the child's now

    def messages(self, on_read: Callable[[int], None] | None) -> Iterator[tuple[str, Any]]:
        """The messages of its next part."""
        while True:
            try:
                with _uncollected():
                    kind, payload = self.queue.get(timeout=0.5)
            except queue.Empty:
                if not self.process.is_alive() and self.queue.empty():
                    yield "crash", f"producer exited with code {self.process.exitcode}"
                    return
                kind, payload = "tick", None
            if on_read is not None:
                now = self.progress.value
                if now > self.seen_progress:
                    on_read(now - self.seen_progress)
                    self.seen_progress = now
            if kind != "tick":
                yield kind, payload
            if kind in ("done", "input-error", "crash"):
                return

    def ready(self) -> bool:
        """Whether a message is waiting (the storing process would not have to wait)."""
        return not self.queue.empty()

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)


# -- the scan -------------------------------------------------------------------------------


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """A scan allocates and frees millions of small containers (rows, batches, messages)
    that form no cycles, yet each allocation burst wakes CPython's cycle collector, which
    then walks the catalogue, geodata and rules too: about a tenth of a scan's CPU. So the
    objects built before the scan are frozen out of its view and young collections run
    less often, in this process and the producers it forks. Cycles are still collected."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], GC_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


@contextmanager
def _uncollected() -> Iterator[None]:
    """What is made inside (a producer's message, unpickled) is kept out of the cycle
    collector's view: it makes no cycles and is freed by reference counting, yet the
    collections its containers would set off mid-unpickling, and walk again while the batch
    waits to be stored, cost a twentieth of the storing process's CPU at 25 % LLM lines."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


class ScanError(RuntimeError):
    """A producer process failed: a bug, reported with its traceback."""


class ScanSettingError(ApiwatchError):
    """A scan setting from the environment that cannot be used (``APIWATCH_PART_SIZE``)."""


class Producers(Protocol):
    """Producers elsewhere (:class:`monitor.cluster.ClusterProducers`): each part's messages,
    in the order of the parts."""

    def streams(self, parts: Sequence[Part]) -> Iterator[Iterable[tuple[str, Any]]]: ...


class Scanner:
    def __init__(self, pipeline: Pipeline, store: Store | None, jobs: int | None = None,
                 full: bool = False, producers: Producers | None = None):  # fmt: skip
        if PART_SIZE_PROBLEM:  # before any producer starts or anything is written
            raise ScanSettingError(PART_SIZE_PROBLEM)
        self.pipeline = pipeline
        self.store = store  # None until :meth:`run` (see :meth:`start`)
        self.jobs = default_jobs() if jobs is None else max(1, jobs)
        self.full = full
        self.producers = producers
        self._early: tuple[SourcePlan, list[_Remote]] | None = None  # see start

    def start(self, path: str) -> None:
        """Start the producers of the first input before the store is opened, so that they
        read while the caller opens and checks the database and records the scan (about a
        tenth of a second on a new database, the whole quick check on a big one). It is
        planned as an input not read before: :meth:`run` keeps them when the store's plan
        is the same (a new input, or ``full``) and stops them otherwise; :meth:`close`
        stops them when the scan does not run."""
        if self.producers is not None or self.jobs <= 1:
            return
        try:
            source = plan(path, self.pipeline, None, self.jobs, self.full)
        except InputError:
            return  # run reports it
        if source.fork:
            self._early = (source, self._fork(source))

    def close(self) -> None:
        """Stop the producers :meth:`start` started that :meth:`run` did not take."""
        early, self._early = self._early, None
        for remote in early[1] if early else ():
            remote.stop()

    def _fork(self, source: SourcePlan) -> list[_Remote]:
        """Producer processes for a source's parts: part i is read by producer i % workers,
        so the parts arrive in order and each producer starts its next part as soon as it
        has handed over the last one."""
        workers = min(self.jobs, len(source.parts))
        if source.parts[0].fmt in FORMAT_NAMES:  # its collector's module: loaded once, inherited
            spec_of(source.parts[0].fmt)
        ctx = mp.get_context("fork")
        return [_Remote(ctx, self.pipeline, source.parts[w::workers]) for w in range(workers)]

    def _started(self, source: SourcePlan) -> list[_Remote] | None:
        """The producers :meth:`start` started, if they read what ``source`` plans."""
        early = self._early
        if early is None or early[0] != source:
            self.close()
            return None
        self._early = None
        return early[1]

    def run(
        self, paths: Iterable[str], scan_id: int, on_read: Callable[[int], None] | None = None
    ) -> ScanSummary:
        assert self.store is not None, "a scan stores"
        summary = self.summary = ScanSummary()  # what was committed, should storing fail
        self._open: Ingestion | None = None  # the transaction batches are added to
        self._queued = 0  # observations in it
        self._checkpoint: dict[str, Any] | None = None  # the read position to commit with it
        self._parts = 0  # parts that ended since the last commit
        try:
            with _fewer_collections():
                self._run(paths, scan_id, on_read, summary)
        finally:
            if self._open is not None:  # an error: nothing since the last commit is kept
                self._open.abort()
                self._open = None
        summary.records, summary.malformed = summary.diag.records, summary.diag.malformed
        return summary

    def _run(self, paths: Iterable[str], scan_id: int, on_read: Callable[[int], None] | None,
             summary: ScanSummary) -> None:  # fmt: skip
        for path in paths:
            summary.files.append(path)
            try:
                source = plan(path, self.pipeline, self.store, self.jobs, self.full)
            except InputError as exc:
                summary.diag.file_error(path, str(exc).removeprefix(f"{path}: "))
                continue
            if source.state:
                summary.skipped_bytes += source.state["offset"]
            before = summary.diag.records, summary.diag.malformed
            self._scan_source(source, scan_id, summary, on_read, self._started(source))
            note_misread(path, summary.diag, before, self.pipeline.collect_options,
                         source.parts[0].fmt)  # fmt: skip

    def _scan_source(self, source: SourcePlan, scan_id: int, summary: ScanSummary,
                     on_read: Callable[[int], None] | None,
                     remotes: list[_Remote] | None) -> None:  # fmt: skip
        seen = Occurrences()  # identical records within one input stay distinct
        base = source.state["lines"] if source.state else 0  # lines before the part at hand
        parts = source.parts
        elsewhere = None
        if self.producers is not None and source.path != "-":
            elsewhere = self.producers.streams(parts)
        elif remotes is None and source.fork:
            remotes = self._fork(source)
        remotes = remotes or []
        workers = len(remotes)
        limit = HOLD if len(parts) > 1 else FLUSH  # observations before a commit mid-part
        damaged = False
        try:
            for i, part in enumerate(parts):
                if elsewhere is not None:
                    messages = next(elsewhere)
                    if on_read is not None and part.byte_range:
                        on_read(part.byte_range[1] - part.byte_range[0])
                elif workers:
                    messages = remotes[i % workers].messages(on_read)
                else:
                    messages = part_messages(self.pipeline, part, on_read)
                open_ended = part.byte_range is None
                table = BatchTable()  # the part's stream (see part_messages)
                for kind, payload in messages:
                    if kind == "batch":
                        self._take(table.decode(payload), base, seen, scan_id, summary)
                        if self._queued >= limit or (
                            open_ended and workers and not remotes[i % workers].ready()
                        ):  # rather than wait: commit what came
                            self._flush(scan_id, summary)
                    elif kind == "done":
                        diag: Diagnostics = payload
                        damaged |= bool(diag.file_errors)
                        _merge(summary.diag, diag, base)
                        if source.state is not None and not damaged:
                            self._checkpoint = self._advance(source, part, diag, base)
                        base += diag.lines
                        self._parts += 1
                        if self._parts >= HOLD_PARTS or self._queued >= limit:
                            self._flush(scan_id, summary)
                        elif self._open is not None:  # the part's rows, while the next is read
                            self._open.settle()  # (all of them: see _flush)
                            self._open.roll_up()
                    elif kind == "input-error":
                        damaged = True
                        summary.diag.file_error(part.path, payload.removeprefix(f"{part.path}: "))
                    else:
                        raise ScanError(f"{part.path}: {payload}")
        finally:
            for remote in remotes:
                remote.stop()
        self._flush(scan_id, summary)

    @staticmethod
    def _advance(source: SourcePlan, part: Part, diag: Diagnostics, base: int) -> dict[str, Any]:
        """The read position after ``part``: never past the last complete line of a plain
        file, so a line still being written is read again, whole, next time."""
        state = source.state
        assert state is not None
        if part.byte_range is None:  # compressed: it was read to its end
            state["offset"] = part.skip + diag.content_bytes
            state["lines"] = base + diag.lines
        else:
            end = part.byte_range[1]
            if source.complete_end is not None and end > source.complete_end:
                state["offset"] = source.complete_end
                state["lines"] = base + diag.lines - (1 if end > source.complete_end else 0)
            else:
                state["offset"] = end
                state["lines"] = base + diag.lines
        return dict(state)

    def _take(self, batch: Batch, base: int, seen: Occurrences, scan_id: int,
              summary: ScanSummary) -> None:  # fmt: skip
        """Store a producer's batch in the open transaction: absolute line numbers, the
        scan, and the ids of repeated identical records (numbered here, across parts, in
        input order)."""
        batch.line_base = base
        batch.set_scan(scan_id)
        ids = batch.columns[ROW_ID]
        for i, nth in seen.repeated(batch):
            ids[i] = observation_id(batch.record_id(i), nth)
        batch.record_ids = None  # not needed any more
        if self._open is None:
            self._open = self.store.ingestion(scan_id, roll_up=True)
        self._open.add(batch)
        self._queued += len(batch)
        summary.llm_observations += len(batch)

    def _flush(self, scan_id: int, summary: ScanSummary) -> None:
        """Commit the open transaction with the read position after the last part stored in
        it (one is made for a read position alone)."""
        ingestion, checkpoint = self._open, self._checkpoint
        if ingestion is None and checkpoint is not None:
            ingestion = self._open = self.store.ingestion(scan_id, roll_up=True)
        if ingestion is not None:
            # every batch added stored before the commit (and a part's roll-up) is asked
            # for: what they see of the transaction is all it was given. The transaction
            # stays the open one until committed, so that an interrupt anywhere on the way
            # aborts it (run's cleanup) once its insert under way has ended
            ingestion.settle()
            summary.account(ingestion.commit(checkpoint))
        self._open, self._checkpoint, self._queued, self._parts = None, None, 0, 0


def _merge(into: Diagnostics, other: Diagnostics, line_base: int) -> None:
    into.records += other.records
    into.malformed += other.malformed
    into.skipped += other.skipped
    for problem in (*other.problems, *other.notices):
        if problem.line:
            problem.line += line_base
    into.problems.extend(other.problems[: max(0, MAX_PROBLEMS_KEPT - len(into.problems))])
    into.notices.extend(other.notices[: max(0, MAX_PROBLEMS_KEPT - len(into.notices))])
    into.file_errors.extend(other.file_errors)
