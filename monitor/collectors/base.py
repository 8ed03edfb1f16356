"""What every collector shares: opening inputs, streaming lines, reporting bad records.

A collector turns one input stream into :class:`~monitor.observation.Observation` records.
It never raises on bad input: a record it cannot read is counted in :class:`Diagnostics`
with its file and line, and the scan goes on with the next one.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from monitor.errors import ApiwatchError
from monitor.observation import Known, Observation

#: Longest line a collector will look at; longer ones are reported as malformed.
MAX_LINE = 64 * 1024
#: How many problems are kept verbatim per scan (all are counted).
MAX_PROBLEMS_KEPT = 200
READ_CHUNK = 1 << 20

HostFilter = Callable[[str], bool]
#: Whether a request whose host the host filter rejected looks like an LLM API request all
#: the same (its URL path, its User-Agent): a host filter may carry one as ``.requests``,
#: with ``.markers`` (byte strings every LLM API path holds) and ``.ja4s`` (JA4 values that
#: alone make a TLS connection LLM-shaped).
RequestFilter = Callable[[str | None, str | None], bool]


#: Whether a destination address is inside a provider's published ingress ranges: a record
#: whose host the host filter rejected is kept all the same (fronted traffic). A host filter
#: may carry one as ``.ingress``, with ``.networks``: the ranges it looks in.
IngressFilter = Callable[[str], bool]


def requests_of(host_filter: HostFilter | None) -> RequestFilter | None:
    """The request filter a host filter carries, if any."""
    return getattr(host_filter, "requests", None)


def ingress_of(host_filter: HostFilter | None) -> IngressFilter | None:
    """The ingress-address filter a host filter carries, if any."""
    return getattr(host_filter, "ingress", None)


class InputError(ApiwatchError):
    """An input cannot be opened or has no recognisable format (the whole file is skipped)."""


class DamagedInput(OSError):
    """Compressed content that ends early or is corrupt; what came before it was delivered.
    An OSError, so every reader's handling of read errors covers it."""


@dataclass(slots=True)
class Problem:
    source: str
    line: int
    reason: str
    excerpt: str = ""

    def __str__(self) -> str:
        tail = f": {self.excerpt}" if self.excerpt else ""
        where = f"{self.source}:{self.line}" if self.line else self.source  # 0: the whole file
        return f"{where}: {self.reason}{tail}"


@dataclass
class Diagnostics:
    """Counters and a bounded sample of problems for one scan (across files)."""

    records: int = 0
    malformed: int = 0
    skipped: int = 0  # well-formed records that carry nothing to observe (e.g. comments)
    problems: list[Problem] = field(default_factory=list)
    file_errors: list[Problem] = field(default_factory=list)
    notices: list[Problem] = field(default_factory=list)  # resource bounds hit, skipped parts
    lines: int = 0  # physical lines read (line-based inputs)
    content_bytes: int = 0  # (decompressed) bytes read (line-based inputs)

    def malformed_record(self, source: str, line: int, reason: str, raw: bytes = b"") -> None:
        self.malformed += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(Problem(source, line, reason, excerpt(raw)))

    def file_error(self, source: str, reason: str) -> None:
        self.file_errors.append(Problem(source, 0, reason))

    def notice(self, source: str, line: int, reason: str) -> None:
        """Something was left out on purpose (a resource bound, an unsupported link type):
        not an error and not a malformed record, but the operator must hear of it."""
        if len(self.notices) < MAX_PROBLEMS_KEPT:
            self.notices.append(Problem(source, line, reason))


def excerpt(raw: bytes, limit: int = 120) -> str:
    """A printable, bounded rendering of raw bytes for error messages (never executed)."""
    text = raw[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text + ("…" if len(raw) > limit else "")


class ParseInput(NamedTuple):
    """What one :meth:`Collector.parse` call reads: the stream, its name for messages, where
    problems are counted, and the host filter (see :meth:`Collector.parse`)."""

    stream: BinaryIO
    source: str
    diag: Diagnostics
    host_filter: HostFilter | None = None


class Collector:
    """One input format. ``parse`` must never raise for bad records.

    A collector implements :meth:`read`, which receives ``parse``'s arguments as one
    :class:`ParseInput`: the call every caller makes is spelled once, here."""

    name: str

    def parse(
        self,
        stream: BinaryIO,
        source: str,
        diag: Diagnostics,
        host_filter: HostFilter | None = None,
        known: Known | None = None,
    ) -> Iterator[Observation]:
        """Yield observations. With ``host_filter``, a collector may skip building records
        whose destination host the filter rejects (they are still counted as read); with
        ``known``, it may yield what :class:`~monitor.observation.Known` says instead."""
        job = ParseInput(stream, source, diag, host_filter)
        return self.read(job) if known is None else self.read_known(job, known)

    def read(self, job: ParseInput) -> Iterator[Observation]:
        """What :meth:`parse` yields, for ``job``'s stream."""
        raise NotImplementedError

    def read_known(self, job: ParseInput, known: Known) -> Iterator[Any]:
        """What :meth:`parse` yields with ``known``: a collector that names no records
        yields Observations."""
        return self.read(job)


@dataclass(frozen=True)
class CollectOptions:
    format: str = "auto"  # "auto" or a key of FORMATS
    squid_logformat: str | None = None
    columns: str | None = None  # custom mapping, e.g. "ts=time,client=src,host=dhost"
    mapping: str | None = None  # path of a TOML/YAML mapping file


@dataclass(frozen=True)
class FormatSpec:
    """One input format: how to recognise it and how to build its collector.

    Each collector module lists its formats in ``FORMAT_SPECS``; the registry
    (:mod:`monitor.collectors`) imports a module when one of its formats is needed.
    ``sniff_head`` looks at the first bytes of a file (magic numbers, headers: kept in
    :mod:`monitor.collectors.sniff`); ``sniff_line`` votes on each of the first non-comment
    lines.
    """

    name: str
    description: str
    #: (options, catalogue or None) -> collector; the catalogue names flows by published
    #: IP ranges, for the formats that see bare addresses (it comes from the pipeline)
    make: Callable[[CollectOptions, Any], Collector]
    sniff_head: Callable[[bytes], bool] | None = None
    sniff_line: Callable[[bytes], bool] | None = None
    splittable: bool = False  # plain files can be split at line boundaries for parallel parsing


class CountingReader(io.RawIOBase):
    """Wraps the on-disk file so progress can be shown in bytes of the file itself
    (compressed bytes for .gz/.bz2), whatever layers sit above it."""

    def __init__(
        self,
        raw: BinaryIO,
        on_read: Callable[[int], None] | None = None,
        limit: int | None = None,
    ):
        self._raw = raw
        self.count = 0
        self._on_read = on_read
        self._left = limit  # bytes still to deliver when reading a byte range

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._left is not None:
            if self._left <= 0:
                return 0
            if len(buffer) > self._left:
                buffer = memoryview(buffer)[: self._left]
        n = self._raw.readinto(buffer)
        if self._left is not None and n:
            self._left -= n
        self.count += n or 0
        if n and self._on_read is not None:
            self._on_read(n)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Decompressed(io.RawIOBase):
    """A gzip, bzip2 or xz file read one decompressed chunk at a time (``read1``), so the
    content before damage is delivered before the damage is reported (a buffered ``read``
    would drop it with the error); damage is raised as :class:`DamagedInput`."""

    def __init__(self, compressed: io.BufferedIOBase):
        self._file = compressed

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            data = self._file.read1(len(buffer))
        except EOFError:
            raise DamagedInput("compressed data ends early") from None
        except (OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
            raise DamagedInput(f"compressed data is damaged ({exc})") from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


#: magic bytes -> how to decompress (``.gz``, ``.bz2``, ``.xz``; rotated logs are read as is)
_COMPRESSED = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", lambda f: bz2.BZ2File(f, "rb")),
    (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f, "rb")),  # noqa: SIM115 - closed by the reader
)


def _decompressor(magic: bytes):
    return next((make for prefix, make in _COMPRESSED if magic.startswith(prefix)), None)


@dataclass
class OpenedInput:
    stream: BinaryIO
    counter: CountingReader
    size: int | None  # bytes on disk, when known
    name: str

    def close(self) -> None:
        self.stream.close()


def open_input(
    path: str,
    on_read: Callable[[int], None] | None = None,
    byte_range: tuple[int, int] | None = None,
    skip: int = 0,
) -> OpenedInput:
    """Open a file (or ``-`` for stdin) for streaming, decompressing gzip/bzip2 by magic bytes.

    ``on_read(n)`` is told about every chunk read from disk (for progress bars).
    ``byte_range=(start, end)`` reads only that part of an uncompressed file (parallel scans
    split big files at line boundaries). ``skip`` discards that many bytes of (decompressed)
    content first: how an incremental scan resumes inside a rotated, compressed log."""
    try:
        if path == "-":
            raw: BinaryIO = sys.stdin.buffer
            size = None
        elif is_url(path):
            raw, size = _open_url(path)
        else:
            p = Path(path)
            if p.is_dir():
                raise InputError(f"{path}: is a directory")
            raw = open(p, "rb")  # noqa: SIM115 - closed by OpenedInput.close
            size = p.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    if byte_range is not None:
        raw.seek(byte_range[0])
        counter = CountingReader(raw, on_read, byte_range[1] - byte_range[0])
        return OpenedInput(io.BufferedReader(counter, READ_CHUNK), counter, size, path)  # type: ignore[arg-type]
    counter = CountingReader(raw, on_read)
    buffered = io.BufferedReader(counter, READ_CHUNK)
    make = _decompressor(buffered.peek(6)[:6])
    stream: BinaryIO = buffered  # type: ignore[assignment]
    if make is not None:
        stream = io.BufferedReader(_Decompressed(make(buffered)), READ_CHUNK)  # type: ignore[assignment]
    opened = OpenedInput(stream, counter, size, path)
    try:
        while skip > 0:
            dropped = stream.read(min(skip, READ_CHUNK))
            if not dropped:
                break
            skip -= len(dropped)
    except (EOFError, OSError, ValueError) as exc:
        opened.close()
        raise InputError(f"{path}: damaged before the part already read: {exc}") from exc
    return opened


def is_url(path: str) -> bool:
    """``s3://bucket/access.log``, ``file:///shared/access.log``: opened through fsspec."""
    return "://" in path


def _open_url(url: str) -> tuple[BinaryIO, int | None]:
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{url}: reading URLs needs fsspec (pip install fsspec)") from None
    try:
        opened = fsspec.open(url, "rb")
        size = opened.fs.size(opened.path)
        return opened.open(), size
    except (ValueError, ImportError) as exc:  # unknown protocol, or its package missing
        raise InputError(f"{url}: {exc}") from None


def is_compressed(path: str) -> bool:
    with open(path, "rb") as f:
        return _decompressor(f.read(6)) is not None


def split_at_lines(path: str, start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` byte ranges of about equal size covering [start, end), each starting right
    after a newline (``start`` is assumed to be a line start)."""
    return cut_at_lines(path, start, end, [(end - start) * i // parts for i in range(1, parts)])


def cut_at_lines(path: str, start: int, end: int, cuts: Iterable[int]) -> list[tuple[int, int]]:
    """Byte ranges covering [start, end), cut at the first line start at or after each of
    ``cuts`` (offsets from ``start``, ascending; ``start`` is assumed to be a line start).
    A range no line starts in is left out."""
    starts = [start]
    with open(path, "rb") as f:
        for cut in cuts:
            pos = _next_line_start(f, max(start + cut, starts[-1]), end)
            if pos >= end:
                break
            if pos > starts[-1]:
                starts.append(pos)
    starts.append(end)
    return list(zip(starts, starts[1:], strict=False))


def _next_line_start(f: BinaryIO, pos: int, end: int) -> int:
    """Offset just after the first newline at or after ``pos - 1`` (so a cut never falls
    inside a line, however long), or ``end``. ``pos`` itself when a line starts there."""
    if pos <= 0:
        return 0
    f.seek(pos - 1)
    while pos - 1 < end:
        block = f.read(READ_CHUNK)
        if not block:
            break
        i = block.find(b"\n")
        if i >= 0:
            return pos + i
        pos += len(block)
    return end


def last_line_end(path: str, start: int, end: int) -> int:
    """Offset just after the last newline in [start, end), or ``start`` when there is none."""
    with open(path, "rb") as f:
        pos = end
        while pos > start:
            step = min(READ_CHUNK, pos - start)
            f.seek(pos - step)
            block = f.read(step)
            i = block.rfind(b"\n")
            if i >= 0:
                return pos - step + i + 1
            pos -= step
    return start


def read_head(path: str, size: int = 4096) -> bytes:
    """The first ``size`` bytes of a file's (decompressed) content."""
    opened = open_input(path)
    try:
        return opened.stream.read(size)
    except (EOFError, OSError, ValueError):
        return b""
    finally:
        opened.close()


Batch = tuple[int, list[bytes], bool]  # (line number before the first line, lines, NUL-free)
#: (line number before the first line, whole lines each ending in a newline and perhaps,
#: after the last newline, the start of a line the next chunk holds: not to be read, NUL-free)
Chunk = tuple[int, bytes, bool]


class Counted:
    """The lines of the chunk :func:`iter_chunks` yielded last, as its reader counted them
    while reading it (``lines`` is the number of newlines up to its last): told so before
    asking for the next chunk, iter_chunks need not count them again. Any other chunk, or
    none told, and iter_chunks counts."""

    __slots__ = ("chunk", "lines")

    def __init__(self) -> None:
        self.chunk: bytes | None = None
        self.lines = 0

    def tell(self, chunk: bytes, lines: int) -> None:
        self.chunk, self.lines = chunk, lines


def iter_chunks(
    stream: BinaryIO, source: str, diag: Diagnostics, counted: Counted | None = None
) -> Iterator[Chunk]:
    """Stream a text input as the whole lines of each chunk read, not yet split, for a
    collector that reads them without making each line an object (the Squid C pre-pass);
    a reader that counts the lines of a chunk may say so through ``counted``.

    Line numbers count every physical line. A line longer than ``MAX_LINE`` that does not
    end inside its chunk is reported as malformed and skipped, so a file without newlines
    cannot exhaust memory; longer lines inside a chunk are the reader's to report (as
    :func:`lines_of` does). A damaged compressed stream is read up to the damage and
    reported as a file error. A last line without a newline is given one. Bytes after a
    chunk's last newline belong to the next chunk (not copying them off saves a copy of the
    chunk).
    """
    read = getattr(stream, "read1", None) or stream.read
    lineno = 0
    consumed = 0
    carry = b""
    skipping = False  # inside an over-long line, dropping bytes up to its newline
    try:
        while True:
            chunk = read(READ_CHUNK)
            if not chunk:
                break
            consumed += len(chunk)
            if skipping:
                nl = chunk.find(b"\n")
                if nl < 0:
                    continue
                chunk = chunk[nl + 1 :]
                skipping = False
            if carry:
                chunk = carry + chunk
                carry = b""
            end = chunk.rfind(b"\n") + 1
            if end < len(chunk):
                carry = chunk[end:]  # the chunk keeps it: readers stop at its last newline
            if len(carry) > MAX_LINE:
                lines = chunk.count(b"\n", 0, end)
                diag.malformed_record(
                    source, lineno + lines + 1, f"line longer than {MAX_LINE} bytes", carry
                )
                carry = b""
                skipping = True
            if end:
                yield lineno, chunk, b"\x00" not in chunk
                if counted is not None and counted.chunk is chunk:
                    lineno += counted.lines
                    counted.chunk = None
                else:
                    lineno += chunk.count(b"\n", 0, end)
            if skipping:
                lineno += 1
        if carry:
            yield lineno, carry + b"\n", b"\x00" not in carry
            lineno += 1
    except DamagedInput as exc:  # truncated or corrupt .gz / .bz2 / .xz
        diag.file_error(source, f"{exc} after line {lineno}")
    except (OSError, ValueError) as exc:  # a read error
        diag.file_error(source, f"stopped reading after line {lineno}: {exc}")
    finally:
        diag.lines += lineno
        diag.content_bytes += consumed


def iter_batches(stream: BinaryIO, source: str, diag: Diagnostics) -> Iterator[Batch]:
    """Stream a text input as batches of lines (no line endings), one batch per chunk read,
    so a collector's per-line loop is a plain ``for`` over a list (see :func:`iter_chunks`).
    The third item of a batch says it holds no NUL byte, so callers need not look for one
    line by line."""
    for base, chunk, clean in iter_chunks(stream, source, diag):
        yield from lines_of(base, chunk, clean, source, diag)


def lines_of(
    base: int, chunk: bytes, clean: bool, source: str, diag: Diagnostics
) -> Iterator[Batch]:
    """The batches of lines of one :data:`Chunk`, without their line endings (CRLF too);
    lines longer than ``MAX_LINE`` are reported as malformed and left out."""
    lines = chunk.split(b"\n")
    lines.pop()  # after the last newline
    if b"\r" in chunk:
        lines = [ln.rstrip(b"\r") for ln in lines]
    if max(map(len, lines)) <= MAX_LINE:
        yield base, lines, clean
        return
    start = 0
    for i, ln in enumerate(lines):  # split the batch around over-long lines
        if len(ln) > MAX_LINE:
            if i > start:
                yield base + start, lines[start:i], clean
            diag.malformed_record(source, base + i + 1, f"line longer than {MAX_LINE} bytes", ln)
            start = i + 1
    if start < len(lines):
        yield base + start, lines[start:], clean
