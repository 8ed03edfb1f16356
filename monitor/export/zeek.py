"""Zeek Intelligence Framework file (``Intel::DOMAIN`` items).

Layout as documented by Zeek: tab-separated, a ``#fields`` header naming ``indicator``,
``indicator_type`` and the ``meta.*`` fields of ``Intel::MetaData`` (``source``, ``desc``,
``url``), ``-`` for an unset field. Sources: https://docs.zeek.org/en/lts/frameworks/intel.html
("Loading Intelligence") and
https://docs.zeek.org/en/current/scripts/base/frameworks/intel/main.zeek.html
(``Intel::MetaData``), read 2026-12-04. ``Intel::DOMAIN`` items match whole names only, so
catalogue patterns cannot be expressed and are listed in the comments above the header.
"""

from __future__ import annotations

from monitor.export.model import EXACT, Export, Format, commented

FIELDS = ("indicator", "indicator_type", "meta.source", "meta.desc", "meta.url")
SOURCE = "apiwatch"


def _field(value: str | None) -> str:
    """A cell: no tab or line break; unset (``-``) when empty."""
    text = " ".join((value or "").split())
    return text or "-"


def render(export: Export) -> str:
    patterns = [e.host for e in export.entries if e.shape != EXACT]
    lines = commented(
        export,
        "#",
        'Zeek: redef Intel::read_files += { "/path/to/this/file" }; and @load frameworks/intel/seen',
        *(f"not expressible (Intel::DOMAIN matches whole names only): {h}" for h in patterns),
    )
    lines.append("#fields\t" + "\t".join(FIELDS))
    for e in export.entries:
        if e.shape != EXACT:
            continue
        url = e.provider.sources[0] if e.provider.sources else None  # where the host is from
        row = (e.host, "Intel::DOMAIN", SOURCE, e.label(), url)
        lines.append("\t".join(_field(v) for v in row))
    return "\n".join(lines) + "\n"


FORMAT = Format("zeek-intel", "Zeek Intelligence Framework file (Intel::DOMAIN)", render, "#")
