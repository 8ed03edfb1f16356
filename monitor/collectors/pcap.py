"""Packet captures: pcap (both byte orders, micro- and nanosecond) and pcapng, gzip or not.

The files are read by hand with :mod:`struct` from large chunks of the stream (one
``read`` per few megabytes, frames handed on as offsets into the chunk, never copied), and
each frame goes to :class:`~monitor.collectors.flows.FlowTable`, which keeps the flows and
names them (see that module for what is read from the payload). gzip is undone by
:func:`~monitor.collectors.base.open_input` before this module sees the bytes.

pcapng: every Section Header Block (byte order, new interface numbering), Interface
Description Blocks (link type, ``if_tsresol``, ``if_tsoffset``), Enhanced, Simple and
obsolete Packet Blocks. Other blocks are stepped over. Interfaces of different link types
may be mixed in one file.

Damage. A record whose length is impossible (longer than 256 KiB, or than the block it sits
in) or that runs past the end of the file stops the reading of that file: what came before
is reported, the byte offset of the damage (in the uncompressed capture) goes to
:meth:`Diagnostics.file_error`, and the flows still open are reported as at the end of a
capture. A damaged gzip stream is handled the same way.

``Observation.line`` is the 1-based number of the flow's first packet in the file.
Packets are counted in ``Diagnostics.records``; frames that carry no IPv4/IPv6 TCP/UDP
in ``Diagnostics.skipped``. When a memory bound is hit (flow table, reassembly buffers,
requests per flow, IP fragments, DNS names per address) the count is given as a problem
line (line 0) so that it is visible without stopping anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from struct import Struct
from typing import Any, BinaryIO

from monitor.collectors.base import CollectOptions, Collector, FormatSpec, ParseInput
from monitor.collectors.dns import DnsMap
from monitor.collectors.flows import LINKTYPES, MAX_FRAME, FlowTable
from monitor.collectors.sniff import PCAP_MAGICS, PCAPNG_MAGIC
from monitor.collectors.sniff import pcap_head as sniff
from monitor.observation import Observation

__all__ = ["PcapCollector", "sniff", "PCAP_MAGICS", "PCAPNG_MAGIC"]

FORMAT = "pcap"
#: bytes read at a time: a chunk the C loop reads while it is still in the CPU's cache (4 MiB
#: chunks parsed the benchmark capture ~10 % slower)
CHUNK = 1 << 20
MAX_BLOCK = 16 << 20
GLUE = MAX_FRAME + 16  # enough of a new chunk to complete any record begun in the last one


_BOUND_STATS = {
    "flows_evicted_table_full": "flow table full: flows reported early",
    "reassembly_limit": "per-flow reassembly buffer full: flows no longer inspected",
    "http_requests_early": "too many requests kept for one connection: requests reported early",
    "fragment_limit": "IP fragment table full: datagrams dropped",
    "tunnel_depth_limit": "tunnels nested too deep: frames dropped",
}


class _Damage(Exception):
    pass


class PcapCollector(Collector):
    """pcap / pcapng (optionally gzip) -> one observation per flow, per request for HTTP."""

    name = FORMAT

    def __init__(
        self,
        catalog: Any = None,
        *,
        idle_timeout: float | None = None,
        max_flows: int | None = None,
    ):
        self.catalog = catalog
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.last_stats: dict[str, int] = {}  # counters of the last parse (for tests, --stats)
        self.last_dns: DnsMap | None = None  # the name map of the last parse

    def read(self, job: ParseInput) -> Iterator[Observation]:
        stream, source, diag, host_filter = job
        kw: dict[str, Any] = {}
        if self.idle_timeout is not None:
            kw["idle_timeout"] = self.idle_timeout
        if self.max_flows is not None:
            kw["max_flows"] = self.max_flows
        dns = DnsMap()
        table = FlowTable(source, FORMAT, self.catalog, host_filter, dns=dns, **kw)
        state = {"packets": 0, "offset": 0}
        try:
            head = _read(stream, 4)
            if head in PCAP_MAGICS:
                yield from self._pcap(stream, head, source, diag, table, state)
            elif head == PCAPNG_MAGIC:
                yield from self._pcapng(stream, head, source, diag, table, state)
            elif not head:
                return
            else:
                diag.file_error(source, "not a pcap or pcapng capture (unknown magic number)")
                return
        except _Damage as exc:
            diag.file_error(source, str(exc))
        except (EOFError, OSError, ValueError) as exc:  # damaged gzip stream, read errors
            diag.file_error(
                source,
                f"stopped reading after packet {state['packets']} "
                f"(byte offset {state['offset']} of the capture): {exc}",
            )
        table.finish()
        yield from table.ready
        table.ready.clear()
        stats = dict(table.stats)
        stats["dns_names"] = dns.answers
        stats["dns_dropped_names"] = dns.dropped_names
        stats["dns_dropped_addresses"] = dns.dropped_addresses
        self.last_stats = stats
        self.last_dns = dns
        diag.records += state["packets"]
        diag.skipped += (
            stats["not_ip"] + stats["not_tcp_udp"] + stats["short"] + stats["unknown_linktype"]
        )
        for key, what in _BOUND_STATS.items():
            if stats.get(key):
                diag.notice(source, 0, f"{what}: {stats[key]}")
        dropped = dns.dropped_names + dns.dropped_addresses
        if dropped:
            diag.notice(source, 0, f"DNS name map bound hit: {dropped} names dropped")
        if table.unknown_linktypes:
            lts = ", ".join(str(t) for t in sorted(table.unknown_linktypes))
            diag.notice(
                source,
                0,
                f"link type(s) {lts} not supported: {stats['unknown_linktype']} frames skipped",
            )

    # -- pcap -----------------------------------------------------------------------------

    def _pcap(self, stream, magic, source, diag, table: FlowTable, state) -> Iterator[Observation]:
        order, scale = PCAP_MAGICS[magic]
        rest = _read(stream, 20)
        if len(rest) < 20:
            raise _Damage("capture truncated in the pcap file header (byte offset 0)")
        _vmaj, _vmin, _zone, _sig, snaplen, network = Struct(order + "HHiIII").unpack(rest)
        lt = network & 0x0FFFFFF  # upper bits: FCS length flags
        if lt not in LINKTYPES:
            diag.file_error(source, f"link type {lt} not supported (supported: {_lt_list()})")
            return
        unpack = Struct(order + "IIII").unpack_from
        scan = table.scan
        ready = table.ready
        read = getattr(stream, "read1", None) or stream.read  # what is there: damage later keeps it
        base = 24  # file offset of buf[0]
        buf = b""
        pos = 0
        pktno = 0
        # The record that straddles two reads is completed in a small "glue" buffer (the end
        # of the old chunk + the bytes of the new one that complete it, at most GLUE) rather
        # than by copying the whole new chunk behind the old end: ``pending`` is then the new
        # chunk, ``glued`` the length of the old end at the front of ``buf``.
        pending = b""
        glued = 0
        try:
            while True:
                n = len(buf)
                while True:  # every complete record of the chunk (the scan stops to hand over)
                    pos, pktno = scan(buf, pos, n, pktno, order, scale, lt)
                    if not ready:
                        break
                    yield from ready
                    ready.clear()
                if pending:  # leave the glue buffer for the new chunk itself
                    if pos >= glued:
                        base += glued
                        buf, pos = pending, pos - glued
                    else:  # a damaged record in the old end: look at it in one piece
                        buf = buf[:glued] + pending
                    pending = b""
                    continue
                glue = GLUE  # what of the new chunk completes the record begun at pos
                if pos + 16 <= n:
                    incl = unpack(buf, pos)[2]
                    if incl > MAX_FRAME:
                        raise _Damage(
                            f"corrupt record at byte offset {base + pos} (after packet {pktno}): "
                            f"captured length {incl} is impossible; stopped there"
                        )
                    glue = pos + 16 + incl - n
                state["packets"], state["offset"] = pktno, base + pos
                more = read(CHUNK)
                if not more:
                    if pos < n:
                        need = 16 + unpack(buf, pos)[2] if pos + 16 <= n else 16
                        raise _Damage(
                            f"capture truncated at byte offset {base + pos} (after packet {pktno}): "
                            f"record needs {need} bytes, {n - pos} left"
                        )
                    break
                base += pos
                if pos >= n:
                    buf = more
                elif len(more) > glue:
                    glued = n - pos
                    buf = buf[pos:] + more[:glue]
                    pending = more
                else:
                    buf = buf[pos:] + more
                pos = 0
        finally:
            state["packets"] = pktno
            state["offset"] = base + pos

    # -- pcapng ---------------------------------------------------------------------------

    def _pcapng(
        self, stream, magic, source, diag, table: FlowTable, state
    ) -> Iterator[Observation]:
        packet = table.packet
        scan = table.scan
        ready = table.ready
        read = getattr(stream, "read1", None) or stream.read  # what is there: damage later keeps it
        buf = magic
        pos = 0
        base = 0
        pktno = 0
        order = "<"
        hdr = Struct("<II").unpack_from
        epb = Struct("<IIIII").unpack_from
        ifaces: list[tuple[int, float, float, int]] = []  # (link type, scale, offset, snaplen)
        warned: set[str] = set()

        def note(msg: str) -> None:
            if msg not in warned and len(warned) < 20:
                warned.add(msg)
                diag.notice(source, pktno, msg)

        def stamped(iface: int, th: int, tl: int, cap: int) -> None:
            """The frame of the packet block at ``pos`` (Enhanced or obsolete: both have it
            at 28), on its interface's clock."""
            lt, scale, tsoff, _snap = ifaces[iface]
            packet(((th << 32) | tl) * scale + tsoff, pktno, lt, buf, pos + 28, pos + 28 + cap)

        try:
            while True:
                n = len(buf)
                if ifaces:  # runs of plain Enhanced Packet Blocks
                    pos, pktno = scan(buf, pos, n, pktno, order, 0.0, 1, ifaces)
                    if ready:
                        yield from ready
                        ready.clear()
                        continue
                if n - pos < 12:
                    more = read(CHUNK)
                    if not more:
                        if pos < n:
                            raise _Damage(
                                f"capture truncated at byte offset {base + pos} (after packet {pktno}): "
                                f"block header needs 12 bytes, {n - pos} left"
                            )
                        break
                    base += pos
                    buf = buf[pos:] + more
                    pos = 0
                    continue
                btype, blen = hdr(buf, pos)
                if btype == 0x0A0D0D0A:  # Section Header Block: byte order, fresh interfaces
                    bom = buf[pos + 8 : pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        order = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        order = ">"
                    else:
                        raise _Damage(
                            f"corrupt section header at byte offset {base + pos}: bad byte-order magic"
                        )
                    hdr = Struct(order + "II").unpack_from
                    epb = Struct(order + "IIIII").unpack_from
                    btype, blen = hdr(buf, pos)
                    ifaces = []
                if blen < 12 or blen & 3 or blen > MAX_BLOCK:
                    raise _Damage(
                        f"corrupt block at byte offset {base + pos} (after packet {pktno}): "
                        f"block length {blen} is impossible; stopped there"
                    )
                if n - pos < blen:
                    state["packets"], state["offset"] = pktno, base + pos
                    more = read(max(CHUNK, blen))
                    if not more:
                        raise _Damage(
                            f"capture truncated at byte offset {base + pos} (after packet {pktno}): "
                            f"block needs {blen} bytes, {n - pos} left"
                        )
                    base += pos
                    buf = buf[pos:] + more
                    pos = 0
                    continue
                if btype == 6:  # Enhanced Packet Block
                    iface, th, tl, cap, _orig = epb(buf, pos + 8)
                    if cap > blen - 32:
                        raise _Damage(
                            f"corrupt packet block at byte offset {base + pos} (after packet {pktno}): "
                            f"captured length {cap} exceeds its block; stopped there"
                        )
                    pktno += 1
                    if iface < len(ifaces):
                        stamped(iface, th, tl, cap)
                    else:
                        note(f"packet for undeclared interface {iface}")
                elif btype == 3:  # Simple Packet Block (no timestamp: the last one seen)
                    pktno += 1
                    if ifaces:
                        orig = Struct(order + "I").unpack_from(buf, pos + 8)[0]
                        lt, _scale, _off, snap = ifaces[0]
                        cap = min(orig, blen - 16, snap or orig)
                        packet(table.now, pktno, lt, buf, pos + 12, pos + 12 + cap)
                elif btype == 2:  # obsolete Packet Block
                    iface, _drops, th, tl, cap, _orig = Struct(order + "HHIIII").unpack_from(
                        buf, pos + 8
                    )
                    pktno += 1
                    if iface < len(ifaces) and cap <= blen - 32:
                        stamped(iface, th, tl, cap)
                elif btype == 1:  # Interface Description Block
                    lt, _res, snap = Struct(order + "HHI").unpack_from(buf, pos + 8)
                    scale, tsoff = _idb_options(buf, pos + 16, pos + blen - 4, order)
                    if lt not in LINKTYPES:
                        note(f"interface {len(ifaces)}: link type {lt} not supported")
                    ifaces.append((lt, scale, tsoff, snap))
                pos += blen
                if ready:
                    yield from ready
                    ready.clear()
        finally:
            state["packets"] = pktno
            state["offset"] = base + pos


def _idb_options(buf: bytes, p: int, end: int, order: str) -> tuple[float, float]:
    """if_tsresol (9) and if_tsoffset (14) from an IDB's options."""
    scale, tsoff = 1e-6, 0.0
    opt = Struct(order + "HH").unpack_from
    while p + 4 <= end:
        code, ln = opt(buf, p)
        if code == 0:
            break
        v = p + 4
        if code == 9 and ln >= 1:
            r = buf[v]
            scale = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0**-r
        elif code == 14 and ln >= 8:
            tsoff = float(Struct(order + "q").unpack_from(buf, v)[0])
        p = v + ((ln + 3) & ~3)
    return scale, tsoff


def _read(stream: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        more = stream.read(n - len(out))
        if not more:
            break
        out += more
    return out


def _lt_list() -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(LINKTYPES.items()))


def _make(options: CollectOptions, catalog: Any = None) -> PcapCollector:
    """Captures name flows by the catalogue's published IP ranges too, when given one."""
    return PcapCollector(catalog=catalog)


FORMAT_SPECS = [
    FormatSpec(FORMAT, "pcap / pcapng capture (optionally gzip)", _make, sniff_head=sniff)
]
