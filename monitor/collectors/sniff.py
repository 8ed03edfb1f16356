"""The first-bytes tests of the formats recognised by their start (magic numbers, headers),
apart from their collectors: :func:`monitor.collectors.detect` runs them before any line
vote, so that recognising a Squid log loads neither the capture reader nor the Zeek and
W3C collectors (each module uses its test from here in its ``FORMAT_SPECS``)."""

from __future__ import annotations

__all__ = ["PCAP_MAGICS", "PCAPNG_MAGIC", "elff_head", "pcap_head", "zeek_tsv_head"]

#: first four bytes -> (struct byte order, seconds per timestamp fraction unit)
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

_ELFF_DIRECTIVES = (b"#Software:", b"#Version:", b"#Fields:", b"#Date:", b"#Remark:",
                    b"#Start-Date:")  # fmt: skip


def pcap_head(head: bytes) -> bool:
    """True when ``head`` starts like a pcap or pcapng file."""
    return head[:4] in PCAP_MAGICS or head[:4] == PCAPNG_MAGIC


def zeek_tsv_head(head: bytes) -> bool:
    """A Zeek TSV header within the first lines (``### …`` lines before it are allowed)."""
    for line in head.split(b"\n", 8)[:8]:
        if line.startswith(b"###"):
            continue
        return line.startswith(b"#separator ")
    return False


def elff_head(head: bytes) -> bool:
    """A W3C file starts with its directives (after an optional UTF-8 BOM)."""
    h = head.lstrip(b"\xef\xbb\xbf").lstrip(b"\r\n")
    return h.startswith(_ELFF_DIRECTIVES)
