"""Collectors: one module per input format, all yielding :class:`~monitor.observation.Observation`.

``FORMATS`` names every format ``--format`` accepts; ``detect`` picks one from a file's
first lines, and says which formats it tried when none fits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from monitor.collectors.base import (
    Collector,
    Diagnostics,
    HostFilter,
    InputError,
    OpenedInput,
    open_input,
)
from monitor.collectors.squid import SquidCollector
from monitor.collectors.squid import sniff as squid_sniff
from monitor.observation import Observation

#: format name -> one-line description (for --help and errors)
FORMATS: dict[str, str] = {
    "squid": "Squid native access.log (logformat squid)",
    "squid-common": "Squid/Apache common log format (logformat common)",
    "squid-combined": "Squid/Apache combined log format (logformat combined)",
    "squid-custom": "Squid with a custom logformat (--squid-logformat)",
    "pcap": "pcap / pcapng capture (optionally gzip)",
}
SNIFF_LINES = 20
#: pcap (both byte orders, micro- and nanosecond) and pcapng magic numbers
_CAPTURE_MAGICS = frozenset(
    {
        b"\xd4\xc3\xb2\xa1",
        b"\xa1\xb2\xc3\xd4",
        b"\x4d\x3c\xb2\xa1",
        b"\xa1\xb2\x3c\x4d",
        b"\x0a\x0d\x0d\x0a",
    }
)


@dataclass(frozen=True)
class CollectOptions:
    format: str = "auto"  # "auto" or a key of FORMATS
    squid_logformat: str | None = None


_CATALOG: list = []


def _catalog():
    """The bundled catalogue, loaded once (captures name flows by published IP ranges)."""
    if not _CATALOG:
        from monitor.catalog import Catalog

        _CATALOG.append(Catalog.load())
    return _CATALOG[0]


def make_collector(name: str, options: CollectOptions) -> Collector:
    if name == "pcap":
        from monitor.collectors.pcap import PcapCollector

        return PcapCollector(catalog=_catalog())
    if name == "squid-custom" or options.squid_logformat:
        if not options.squid_logformat:
            raise InputError("format squid-custom needs --squid-logformat")
        return SquidCollector(logformat=options.squid_logformat)
    variants = {"squid": "native", "squid-common": "common", "squid-combined": "combined"}
    if name not in variants:
        raise InputError(f"unknown format {name!r} (known: {', '.join(FORMATS)})")
    return SquidCollector(variant=variants[name])


def detect(opened: OpenedInput) -> str:
    """Name the format of an opened input from its first non-empty lines (without consuming them)."""
    head = opened.stream.peek(64 * 1024)[: 64 * 1024]  # type: ignore[attr-defined]
    if head[:4] in _CAPTURE_MAGICS:
        return "pcap"
    votes: dict[str, int] = {}
    seen = 0
    for line in head.splitlines():
        if not line.strip() or line.startswith(b"#"):
            continue
        seen += 1
        name = squid_sniff(line)
        if name:
            votes[name] = votes.get(name, 0) + 1
        if seen >= SNIFF_LINES:
            break
    if votes:
        return max(votes, key=votes.__getitem__)
    if seen == 0:
        return "squid"  # empty file: any line collector reads it as zero records
    tried = ", ".join(n for n in FORMATS if n != "squid-custom")
    raise InputError(
        f"{opened.name}: unrecognised log format (tried {tried}); "
        "force one with --format, or give --squid-logformat for a custom Squid logformat"
    )


#: formats whose files can be split at line boundaries and parsed in parallel
LINE_FORMATS = frozenset({"squid", "squid-common", "squid-combined", "squid-custom"})


def format_of(path: str, options: CollectOptions) -> str:
    """The format ``collect`` would use for ``path`` (opens and closes a regular file)."""
    if options.squid_logformat:
        return "squid-custom"
    if options.format != "auto":
        return options.format
    opened = open_input(path)
    try:
        return detect(opened)
    finally:
        opened.close()


def collect(
    path: str,
    options: CollectOptions,
    diag: Diagnostics,
    host_filter: HostFilter | None = None,
    on_read=None,
    *,
    fmt: str | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[Observation]:
    """Open, detect and parse one input (or one byte range of it, in format ``fmt``).

    Raises :class:`InputError` before yielding anything when the file cannot be opened or
    its format is unknown."""
    opened = open_input(path, on_read, byte_range)
    try:
        if fmt is not None:
            name = fmt
        elif options.squid_logformat:
            name = "squid-custom"
        elif options.format == "auto":
            name = detect(opened)
        else:
            name = options.format
        collector = make_collector(name, options)
    except BaseException:
        opened.close()
        raise
    return _parse_and_close(collector, opened, diag, host_filter)


def _parse_and_close(collector, opened, diag, host_filter) -> Iterator[Observation]:
    try:
        yield from collector.parse(opened.stream, opened.name, diag, host_filter)
    finally:
        opened.close()


__all__ = [
    "FORMATS",
    "CollectOptions",
    "Diagnostics",
    "InputError",
    "collect",
    "detect",
    "make_collector",
]
