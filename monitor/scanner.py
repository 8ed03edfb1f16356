"""Running the pipeline over files, in parallel where it pays, storing as it goes.

Parsing is the expensive part and storing must happen in one process, so a scan forks
producer processes that run collect → identify → geolocate → evaluate, and the main process
stores what they send. A big uncompressed log is split at line boundaries into one range
per producer; anything else (compressed, stdin, captures) gets one producer, which still
overlaps parsing with storing. Ranges are consumed in file order, so observation ids (and
hence de-duplication) are the same whatever the number of producers.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.collectors import LINE_FORMATS, Diagnostics, InputError, format_of
from monitor.collectors.base import (
    MAX_PROBLEMS_KEPT,
    count_lines_before,
    is_compressed,
    split_at_lines,
)
from monitor.observation import Observation
from monitor.pipeline import Pipeline, ScanSummary, account, incident_rows, observation_row
from monitor.store import Store

BATCH = 5000
#: files smaller than this are parsed in the main process: forking would cost more
IN_PROCESS_BELOW = 8 << 20
#: each producer range is at least this big
MIN_RANGE = 32 << 20
_QUEUE_BATCHES = 8  # bounded hand-over: producers wait rather than fill memory

Produced = tuple[str, dict[str, Any], list[dict[str, Any]]]  # (record id, row, incidents)


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Part:
    """One unit of producer work: a whole input, or a byte range of a plain log."""

    path: str
    fmt: str | None = None
    byte_range: tuple[int, int] | None = None


def plan(path: str, pipeline: Pipeline, jobs: int) -> tuple[list[Part], bool]:
    """Split one input into parts; the flag says whether to fork producers for it."""
    if path == "-":
        return [Part(path)], jobs > 1
    p = Path(path)
    if not p.is_file():
        return [Part(path)], False  # open_input reports the error
    size = p.stat().st_size
    if jobs <= 1 or size < IN_PROCESS_BELOW:
        return [Part(path)], False
    fmt = format_of(path, pipeline.collect_options)
    if fmt not in LINE_FORMATS or is_compressed(path) or size < 2 * MIN_RANGE:
        return [Part(path, fmt)], True
    ranges = split_at_lines(path, min(jobs, size // MIN_RANGE))
    return [Part(path, fmt, r) for r in ranges], True


def produce(pipeline: Pipeline, part: Part, diag: Diagnostics, on_read=None) -> Iterator[Produced]:
    """Stages 1–4 over one part: (record id, observation row, incident rows) per LLM record."""
    offset = count_lines_before(part.path, part.byte_range[0]) if part.byte_range else 0
    enrich, evaluate = pipeline.enricher.enrich, pipeline.evaluator.evaluate
    for obs, match in pipeline.observe(
        part.path, diag, only_llm=True, on_read=on_read, fmt=part.fmt, byte_range=part.byte_range
    ):
        obs.line += offset
        enriched = enrich(obs, match)  # type: ignore[arg-type]
        row = observation_row(enriched)
        yield (
            obs.record_id or fallback_id(obs),
            row,
            incident_rows(enriched, evaluate(enriched), row["day"]),
        )
    if offset:
        for problem in (*diag.problems, *diag.notices):
            problem.line += offset


def fallback_id(obs: Observation) -> str:
    """Identity of a record whose collector gave none: its observed values."""
    key = "\x1f".join(
        str(v)
        for v in (obs.ts, obs.source, obs.client_ip, obs.client_port, obs.method, obs.dest_host,
                  obs.dest_port, obs.url, obs.status, obs.bytes_out, obs.bytes_in)
    )  # fmt: skip
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def observation_id(record_id: str, nth: int) -> int:
    """63-bit integer id (SQLite rowid) of the nth identical record in one input."""
    key = record_id if nth == 0 else f"{record_id}/{nth}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


# -- producer processes -------------------------------------------------------------------


def _producer(pipeline: Pipeline, part: Part, out: mp.Queue, progress) -> None:
    """Child process body: stream batches, then the diagnostics, then exit."""
    diag = Diagnostics()

    def on_read(n: int) -> None:
        with progress.get_lock():
            progress.value += n

    try:
        batch: list[Produced] = []
        for item in produce(pipeline, part, diag, on_read):
            batch.append(item)
            if len(batch) >= BATCH:
                out.put(("batch", batch))
                batch = []
        if batch:
            out.put(("batch", batch))
        out.put(("done", diag))
    except InputError as exc:
        out.put(("input-error", str(exc)))
    except BaseException:  # a bug: report it to the parent rather than die silently
        out.put(("crash", traceback.format_exc()))


class _Remote:
    """The parent's view of one producer process."""

    def __init__(self, ctx, pipeline: Pipeline, part: Part):
        self.queue = ctx.Queue(_QUEUE_BATCHES)
        self.progress = ctx.Value("q", 0)
        self.seen_progress = 0
        self.process = ctx.Process(
            target=_producer, args=(pipeline, part, self.queue, self.progress), daemon=True
        )
        self.process.start()

    def messages(self, on_read: Callable[[int], None] | None) -> Iterator[tuple[str, Any]]:
        while True:
            try:
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

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)


# -- the scan -------------------------------------------------------------------------------


class ScanError(RuntimeError):
    """A producer process failed: a bug, reported with its traceback."""


class Scanner:
    def __init__(self, pipeline: Pipeline, store: Store, jobs: int | None = None):
        self.pipeline = pipeline
        self.store = store
        self.jobs = default_jobs() if jobs is None else max(1, jobs)

    def run(self, paths: Iterable[str], scan_id: int,
            on_read: Callable[[int], None] | None = None) -> ScanSummary:  # fmt: skip
        summary = ScanSummary()
        self._batch: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        self._rule_of: dict[str, tuple[str, str]] = {}
        for path in paths:
            summary.files.append(path)
            seen: Counter[str] = Counter()  # identical records within one input stay distinct
            try:
                parts, fork = plan(path, self.pipeline, self.jobs)
            except InputError as exc:
                summary.diag.file_error(path, str(exc).removeprefix(f"{path}: "))
                continue
            if fork:
                self._run_forked(parts, seen, scan_id, summary, on_read)
            else:
                for part in parts:
                    try:
                        for item in produce(self.pipeline, part, summary.diag, on_read):
                            self._take(item, seen, scan_id, summary)
                    except InputError as exc:
                        summary.diag.file_error(path, str(exc).removeprefix(f"{path}: "))
            self._flush(scan_id, summary)
        summary.records, summary.malformed = summary.diag.records, summary.diag.malformed
        return summary

    def _run_forked(self, parts: list[Part], seen: Counter[str], scan_id: int, summary: ScanSummary,
                    on_read: Callable[[int], None] | None) -> None:  # fmt: skip
        ctx = mp.get_context("fork")
        remotes = [_Remote(ctx, self.pipeline, part) for part in parts]
        try:
            for part, remote in zip(parts, remotes, strict=True):
                for kind, payload in remote.messages(on_read):
                    if kind == "batch":
                        for item in payload:
                            self._take(item, seen, scan_id, summary)
                    elif kind == "done":
                        _merge(summary.diag, payload)
                    elif kind == "input-error":
                        summary.diag.file_error(part.path, payload.removeprefix(f"{part.path}: "))
                    else:
                        raise ScanError(f"{part.path}: {payload}")
        finally:
            for remote in remotes:
                remote.stop()

    def _take(self, item: Produced, seen: Counter[str], scan_id: int, summary: ScanSummary) -> None:
        record_id, row, incs = item
        nth = seen[record_id]
        seen[record_id] = nth + 1
        row["id"] = observation_id(record_id, nth)
        row["scan_id"] = scan_id
        summary.llm_observations += 1
        for inc in incs:
            self._rule_of[inc["id"]] = (inc["rule"], inc["severity"])
        self._batch.append((row, incs))
        if len(self._batch) >= BATCH:
            self._flush(scan_id, summary)

    def _flush(self, scan_id: int, summary: ScanSummary) -> None:
        if self._batch:
            account(summary, self.store.ingest(scan_id, self._batch), self._rule_of)
            self._batch = []


def _merge(into: Diagnostics, other: Diagnostics) -> None:
    into.records += other.records
    into.malformed += other.malformed
    into.skipped += other.skipped
    into.problems.extend(other.problems[: max(0, MAX_PROBLEMS_KEPT - len(into.problems))])
    into.file_errors.extend(other.file_errors)
    into.notices.extend(other.notices[: max(0, MAX_PROBLEMS_KEPT - len(into.notices))])
