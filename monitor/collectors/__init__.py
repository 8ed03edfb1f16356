"""Collectors: one module per input format, all yielding :class:`~monitor.observation.Observation`.

``FORMATS`` names every format ``--format`` accepts; ``detect`` picks one from a file's
first lines, and says which formats it tried when none fits.
"""

from __future__ import annotations

import contextlib
import importlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.collectors.base import (
    CollectOptions,
    Collector,
    DamagedInput,
    Diagnostics,
    FormatSpec,
    HostFilter,
    InputError,
    OpenedInput,
    open_input,
)
from monitor.observation import Known, Observation

if TYPE_CHECKING:
    from monitor.catalog import Catalog

SNIFF_LINES = 20
SNIFF_BYTES = 64 * 1024


#: modules that define FORMAT_SPECS, in detection order
_SPEC_MODULES = (
    "monitor.collectors.pcap",
    "monitor.collectors.squid",
    "monitor.collectors.zeek",
    "monitor.collectors.suricata",
    "monitor.collectors.zscaler",
    "monitor.collectors.elff",
    "monitor.collectors.mapped",
)


def _load_specs() -> dict[str, FormatSpec]:
    specs: dict[str, FormatSpec] = {}
    for module in _SPEC_MODULES:
        for spec in importlib.import_module(module).FORMAT_SPECS:
            specs[spec.name] = spec
    return specs


SPECS = _load_specs()
#: format name -> one-line description (for --help and errors)
FORMATS: dict[str, str] = {name: spec.description for name, spec in SPECS.items()}
#: formats whose files can be split at line boundaries and parsed in parallel
LINE_FORMATS = frozenset(name for name, spec in SPECS.items() if spec.splittable)


def make_collector(name: str, options: CollectOptions, catalog: Catalog | None = None) -> Collector:
    """The collector of format ``name``; with a ``catalog``, captures and flow logs name
    destinations by its published IP ranges too."""
    spec = SPECS.get(name)
    if spec is None:
        raise InputError(f"unknown format {name!r} (known: {', '.join(FORMATS)})")
    return spec.make(options, catalog)


def detect(opened: OpenedInput) -> str:
    """Name the format of an opened input from its first bytes (without consuming them)."""
    try:
        head = opened.stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]  # type: ignore[attr-defined]
    except DamagedInput:  # damaged at its very start: nothing to read, the parser says so
        return "squid"
    for spec in SPECS.values():
        if spec.sniff_head is not None and spec.sniff_head(head):
            return spec.name
    voters = [spec for spec in SPECS.values() if spec.sniff_line is not None]
    votes: Counter[str] = Counter()
    seen = 0
    for line in head.splitlines():
        if not line.strip() or line.startswith(b"#"):
            continue
        seen += 1
        for spec in voters:
            if spec.sniff_line(line):  # type: ignore[misc]
                votes[spec.name] += 1
                break
        if seen >= SNIFF_LINES:
            break
    if votes:
        return votes.most_common(1)[0][0]
    if seen == 0 and not head.strip(b"\r\n\t #"):
        return "squid"  # empty file: any line collector reads it as zero records
    tried = ", ".join(n for n, spec in SPECS.items() if spec.sniff_head or spec.sniff_line)
    raise InputError(
        f"{opened.name}: unrecognised log format (tried {tried}); "
        "force one with --format, give --squid-logformat for a custom Squid logformat, "
        "or --columns/--mapping to map any CSV, JSON or key=value log"
    )


def format_of(path: str, options: CollectOptions) -> str:
    """The format ``collect`` would use for ``path`` (opens and closes a regular file)."""
    if options.squid_logformat:
        return "squid-custom"
    if options.format != "auto":
        return options.format
    if _zeek_directory(path, options):
        return "zeek"
    opened = open_input(path)
    try:
        return detect(opened)
    finally:
        opened.close()


def note_misread(
    path: str, diag: Diagnostics, before: tuple[int, int], options: CollectOptions, fmt: str | None
) -> None:
    """If every record of ``path`` was malformed (``before``: ``diag``'s records and malformed
    counts before it was read), it was most likely read in the wrong format: a file error
    that says which format it looks like. ``fmt``: the format it was read as."""
    records, malformed = diag.records - before[0], diag.malformed - before[1]
    if records or not malformed or any(e.source == path for e in diag.file_errors):
        return
    read_as = fmt or (options.format if options.format != "auto" else None)
    looks = None
    if path != "-":
        with contextlib.suppress(InputError, OSError):
            looks = format_of(path, CollectOptions())
    message = f"all {malformed} records are malformed" + (f" read as {read_as}" if read_as else "")
    if looks and looks != read_as:
        message += f"; it looks like {looks} (try --format {looks})"
    diag.file_error(path, message)


def collect(
    path: str,
    options: CollectOptions,
    diag: Diagnostics,
    host_filter: HostFilter | None = None,
    on_read=None,
    *,
    fmt: str | None = None,
    byte_range: tuple[int, int] | None = None,
    skip: int = 0,
    catalog: Catalog | None = None,
    known: Known | None = None,
) -> Iterator[Observation]:
    """Open, detect and parse one input (or one byte range of it, in format ``fmt``);
    ``catalog`` as for :func:`make_collector` (the pipeline passes its own), ``known`` as
    for :meth:`Collector.parse`.

    Raises :class:`InputError` before yielding anything when the file cannot be opened or
    its format is unknown. A directory is read as one day of Zeek logs."""
    if byte_range is None and _zeek_directory(path, options):
        from monitor.collectors.zeek import collect_directory

        return collect_directory(path, catalog, diag, host_filter, on_read)
    opened = open_input(path, on_read, byte_range, skip)
    try:
        if fmt is not None:
            name = fmt
        elif options.squid_logformat:
            name = "squid-custom"
        elif options.format == "auto":
            name = detect(opened)
        else:
            name = options.format
        collector = make_collector(name, options, catalog)
    except BaseException:
        opened.close()
        raise
    return _parse_and_close(collector, opened, diag, host_filter, known)


def _zeek_directory(path: str, options: CollectOptions) -> bool:
    """A directory given with ``--format`` auto, zeek or zeek-json: its Zeek logs are read
    together (joined across files, see :func:`monitor.collectors.zeek.collect_directory`);
    with any other format ``open_input`` rejects it."""
    return (
        path != "-"
        and options.format in ("auto", "zeek", "zeek-json")
        and not options.squid_logformat
        and Path(path).is_dir()
    )


def _parse_and_close(collector, opened, diag, host_filter, known) -> Iterator[Observation]:
    try:
        yield from collector.parse(opened.stream, opened.name, diag, host_filter, known)
    finally:
        opened.close()


__all__ = [
    "FORMATS",
    "CollectOptions",
    "FormatSpec",
    "Diagnostics",
    "InputError",
    "collect",
    "detect",
    "make_collector",
    "note_misread",
]
