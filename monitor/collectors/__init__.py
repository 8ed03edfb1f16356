"""Collectors: one module per input format, all yielding :class:`~monitor.observation.Observation`.

``FORMAT_NAMES`` names every format ``--format`` accepts (``FORMATS`` describes them);
``detect`` picks one from a file's first lines, and says which formats it tried when none
fits. A format's module loads when it is first needed (see ``_REGISTRY``).
"""

from __future__ import annotations

import contextlib
import importlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.collectors import sniff
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


@dataclass(frozen=True, slots=True)
class _Registered:
    """A format as the registry knows it before its module loads: the module whose
    ``FORMAT_SPECS`` defines it, whether it is split for parallel parsing, its first-bytes
    test when that lives in :mod:`monitor.collectors.sniff`, whether it votes on lines."""

    name: str
    module: str
    splittable: bool = False
    head: Callable[[bytes], bool] | None = None
    votes: bool = False


_PCAP, _SQUID = "monitor.collectors.pcap", "monitor.collectors.squid"
_ZEEK, _SURICATA = "monitor.collectors.zeek", "monitor.collectors.suricata"
_ZSCALER, _ELFF = "monitor.collectors.zscaler", "monitor.collectors.elff"
#: every format, in detection order. A collector module loads when one of its formats is
#: made or detection asks its line vote, so that reading a Squid log loads neither the
#: capture reader nor the JSON, Zeek, W3C and mapped collectors (tests/test_startup.py
#: checks this table against the modules' FORMAT_SPECS)
_REGISTRY: tuple[_Registered, ...] = (
    _Registered("pcap", _PCAP, head=sniff.pcap_head),
    _Registered("squid", _SQUID, splittable=True, votes=True),
    _Registered("squid-common", _SQUID, splittable=True, votes=True),
    _Registered("squid-combined", _SQUID, splittable=True, votes=True),
    _Registered("squid-custom", _SQUID, splittable=True),
    _Registered("zeek", _ZEEK, head=sniff.zeek_tsv_head),
    _Registered("zeek-json", _ZEEK, votes=True),
    _Registered("suricata-eve", _SURICATA, votes=True),
    _Registered("zscaler-csv", _ZSCALER, splittable=True, votes=True),
    _Registered("zscaler-json", _ZSCALER, splittable=True, votes=True),
    _Registered("zscaler-kv", _ZSCALER, splittable=True, votes=True),
    _Registered("elff", _ELFF, head=sniff.elff_head),
    _Registered("mapped", "monitor.collectors.mapped"),
)
_BY_NAME = {f.name: f for f in _REGISTRY}
#: every format name, in detection order (``--format`` choices)
FORMAT_NAMES: tuple[str, ...] = tuple(_BY_NAME)
#: formats whose files can be split at line boundaries and parsed in parallel
LINE_FORMATS = frozenset(f.name for f in _REGISTRY if f.splittable)


def spec_of(name: str) -> FormatSpec:
    """The spec of a registered format (its module loads now if it has not yet)."""
    for spec in importlib.import_module(_BY_NAME[name].module).FORMAT_SPECS:
        if spec.name == name:
            return spec
    raise LookupError(f"{name}: not in its module's FORMAT_SPECS")


def __getattr__(name: str) -> Any:
    """``SPECS`` (name -> :class:`FormatSpec`) and ``FORMATS`` (name -> one-line
    description) load every collector module."""
    if name == "SPECS":
        return {f.name: spec_of(f.name) for f in _REGISTRY}
    if name == "FORMATS":
        return {f.name: spec_of(f.name).description for f in _REGISTRY}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_collector(name: str, options: CollectOptions, catalog: Catalog | None = None) -> Collector:
    """The collector of format ``name``; with a ``catalog``, captures and flow logs name
    destinations by its published IP ranges too."""
    if name not in _BY_NAME:
        raise InputError(f"unknown format {name!r} (known: {', '.join(FORMAT_NAMES)})")
    return spec_of(name).make(options, catalog)


def detect(opened: OpenedInput) -> str:
    """Name the format of an opened input from its first bytes (without consuming them)."""
    try:
        head = opened.stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]  # type: ignore[attr-defined]
    except DamagedInput:  # damaged at its very start: nothing to read, the parser says so
        return "squid"
    for f in _REGISTRY:
        if f.head is not None and f.head(head):
            return f.name
    voters = [f.name for f in _REGISTRY if f.votes]
    votes: Counter[str] = Counter()
    seen = 0
    for line in head.splitlines():
        if not line.strip() or line.startswith(b"#"):
            continue
        seen += 1
        for name in voters:  # in order: a later format's module loads only when asked
            if spec_of(name).sniff_line(line):  # type: ignore[misc]
                votes[name] += 1
                break
        if seen >= SNIFF_LINES:
            break
    if votes:
        return votes.most_common(1)[0][0]
    if seen == 0 and not head.strip(b"\r\n\t #"):
        return "squid"  # empty file: any line collector reads it as zero records
    tried = ", ".join(f.name for f in _REGISTRY if f.head or f.votes)
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
    "FORMAT_NAMES",
    "LINE_FORMATS",
    "CollectOptions",
    "FormatSpec",
    "Diagnostics",
    "InputError",
    "collect",
    "detect",
    "make_collector",
    "note_misread",
    "spec_of",
]
